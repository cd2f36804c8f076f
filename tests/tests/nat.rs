//! A farm across NATs, on real `barn node` processes in network namespaces
//! (`barn_tests::netns`): a project's submitter behind one home NAT coordinates a job that
//! volunteers behind another home NAT build. Neither home takes connections from outside;
//! the nodes meet through a relay node on the public network (`barn node --relay`), learn
//! they are not reachable (AutoNAT), reserve a slot on the relay, and punch holes through
//! both NATs (DCUtR) so that the job's source and image, which never move over a relay,
//! travel on a direct connection.
//!
//! `cargo nextest run -p barn-tests --test nat --no-capture` prints the timeline.

use std::time::Instant;

use barn_tests::farm::{Farm, Node};
use barn_tests::netns::{Nat, Net};
use barn_tests::{Project, poll};

/// A short deterministic build.
const JOB: &str = "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"5m\"\n\
    source_date_epoch = 1700000000\nartifacts = [\"out/*\"]\n\
    [[task]]\nname = \"build\"\nrun = \"mkdir -p out && cat msg.txt > out/msg && echo built\"\n";

/// Seconds for volunteers to fetch the image and build under TCG.
const BUILD_SECS: u64 = 240;

fn status_of(node: &Node, key: &str) -> serde_json::Value {
    node.status()[key].clone()
}

fn relayed_addr(node: &Node) -> Option<String> {
    node.status()["listen"]
        .as_array()?
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.contains("/p2p-circuit"))
        .map(str::to_string)
}

/// Bytes through the relay's interface (received + sent) so far.
fn relay_bytes(farm: &Farm) -> u64 {
    let Some(relay) = farm.relay.as_ref().and_then(|r| r.host.as_ref()) else {
        panic!("the farm has no relay on a namespaced host");
    };
    let (rx, tx) = relay.traffic();
    rx + tx
}

/// Most bytes a relay may carry for one small job: claims, grants, heartbeats, results,
/// gossip and hole punching for a few nodes, far below the tiny image's 55 MB.
const RELAY_BUDGET: u64 = 4 << 20;

/// The networks and the farm: a relay on the public network, the submitter behind a home
/// NAT of its own, `volunteers` volunteers behind another home NAT of kind `nat`. `None`:
/// no namespaces here (not root).
fn farm_across_nats(nat: Nat, volunteers: usize) -> Option<(Net, Farm)> {
    let mut net = Net::new()?;
    let relay = net.public_host("relay");
    let mut home_a = net.home("a", Nat::Masquerade);
    let mut home_b = net.home("b", nat);
    let submitter = net.host_in(&mut home_a, "sub");
    let hosts = (1..=volunteers)
        .map(|i| net.host_in(&mut home_b, &format!("v{i}")))
        .collect();
    let farm = Farm::start_behind_nat("tiny-x86_64", relay, submitter, hosts);
    Some((net, farm))
}

#[test]
fn a_submitter_behind_one_nat_coordinates_volunteers_behind_another() {
    let start = Instant::now();
    let t = || format!("{:5.1} s", start.elapsed().as_secs_f64());
    let Some((_net, farm)) = farm_across_nats(Nat::Masquerade, 2) else {
        return;
    };
    let relay = farm.relay.as_ref().unwrap();
    println!(
        "{}: farm up: every node heard the others through the relay",
        t()
    );
    assert_eq!(
        status_of(relay, "reachability"),
        "public",
        "the relay's own address is given"
    );

    // Behind NAT, the submitter learns it is not reachable and takes a slot on the relay;
    // the job it signs names the relayed address, through which volunteers reach it.
    let circuit = poll(90, "the submitter to reserve a slot on the relay", || {
        let relayed = status_of(&farm.submitter, "reachability") == "relayed";
        relayed_addr(&farm.submitter).filter(|_| relayed)
    });
    println!(
        "{}: submitter reachable through the relay at {circuit}",
        t()
    );

    let p = Project::new(JOB).file("msg.txt", "built across two NATs\n");
    let relayed_before = relay_bytes(&farm);
    let id = farm.submit(&p, 2);
    let submitted = Instant::now();
    println!("{}: submitted {id} with 2 replicas", t());
    let verdict = poll(
        BUILD_SECS,
        "the verdict of the job built across NATs",
        || {
            let d = farm.submitter.job(&id)?;
            d["job"]["verdict"].as_str().map(str::to_string)
        },
    );
    println!(
        "{}: verdict {verdict}, {:.1} s after the submission",
        t(),
        submitted.elapsed().as_secs_f64()
    );
    assert_eq!(verdict, "reproducible");
    let relayed = relay_bytes(&farm) - relayed_before;
    println!(
        "{}: the relay's interface carried {:.2} MiB from submission to verdict",
        t(),
        relayed as f64 / (1 << 20) as f64
    );
    assert!(
        relayed < RELAY_BUDGET,
        "{relayed} bytes crossed the relay: did a blob?"
    );
    let d = farm.submitter.job(&id).unwrap();
    let builders: Vec<&str> = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["node"].as_str())
        .collect();
    let vs: Vec<String> = farm.volunteers.iter().map(Node::peer_id).collect();
    assert_eq!(builders.len(), 2, "{d}");
    assert!(builders.iter().all(|b| vs.iter().any(|v| v == b)), "{d}");

    // The source and image came over direct connections: holes were punched through
    // both NATs (a relay carries no blob, and the relay's circuits end at 128 KiB).
    let punched: u64 = std::iter::once(&farm.submitter)
        .chain(&farm.volunteers)
        .map(|n| status_of(n, "holes_punched").as_u64().unwrap_or(0))
        .sum();
    println!("{}: {punched} hole punch(es) made a direct connection", t());
    assert!(punched >= 1, "no hole was punched, yet the blobs arrived");
    // The two volunteers share a LAN and dial back each other's 10.x addresses: that
    // proves nothing about the internet, so they stay relayed, not public.
    for v in &farm.volunteers {
        assert_eq!(status_of(v, "reachability"), "relayed", "{}", v.name);
    }
}

/// Behind a NAT that gives every connection a new port (a symmetric NAT), no hole can be
/// punched: the volunteer still claims the job and is granted a lease through the relay,
/// but the job's source, which never moves over a relay, cannot reach it. It says so and
/// gives the lease back, and the relay carried no blob byte. (The volunteer has the
/// image, and the source is a few hundred bytes, well within a circuit's 128 KiB: only
/// the rule keeps it off the relay.)
#[test]
fn behind_a_symmetric_nat_no_blob_moves_over_the_relay() {
    let Some((_net, farm)) = farm_across_nats(Nat::Random, 1) else {
        return;
    };
    let volunteer = &farm.volunteers[0];
    volunteer.give_image("tiny-x86_64");
    poll(90, "the submitter to reserve a slot on the relay", || {
        relayed_addr(&farm.submitter)
    });
    let p = Project::new(JOB).file("msg.txt", "never fetched through a relay\n");
    let id = farm.submit(&p, 1);
    let me = volunteer.peer_id();
    let d = poll(BUILD_SECS, "the volunteer's attempt to end", || {
        let d = farm.submitter.job(&id)?;
        let ended = d["results"]
            .as_array()?
            .iter()
            .any(|r| r["node"] == me.as_str());
        ended.then_some(d)
    });
    let result = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == me.as_str())
        .unwrap()
        .clone();
    assert_ne!(
        result["status"], "succeeded",
        "the source crossed the relay: {d}"
    );
    let log = std::fs::read_to_string(&volunteer.log).unwrap();
    assert!(
        log.contains("failed to fetch the source")
            && log.contains("is reached only through a relay and no hole could be punched"),
        "the volunteer's log does not say why:\n{log}"
    );
    let count = |key: &str| -> u64 {
        [&farm.submitter, volunteer]
            .iter()
            .map(|n| status_of(n, key).as_u64().unwrap_or(0))
            .sum()
    };
    // DCUtR gives up after its third try, about 20 s after the first.
    poll(60, "a hole punch to be tried and fail", || {
        (count("holes_failed") >= 1).then_some(())
    });
    assert_eq!(count("holes_punched"), 0, "a hole through a symmetric NAT?");
}

/// Blobs come from any holder: a volunteer behind a symmetric NAT, which can never reach
/// the submitter directly, gets the job's image and source from a volunteer on the public
/// network that fetched them first and announced them in the DHT (provider records), and
/// its replica agrees with the public one. Nothing moved over the relay: no hole was
/// punched for it, and the image is far over a circuit's 128 KiB.
#[test]
fn behind_a_symmetric_nat_blobs_come_from_a_holder_it_can_reach() {
    let start = Instant::now();
    let t = || format!("{:5.1} s", start.elapsed().as_secs_f64());
    let Some(mut net) = Net::new() else {
        return;
    };
    let relay = net.public_host("relay");
    let public = net.public_host("pub");
    let mut home_a = net.home("a", Nat::Masquerade);
    let mut home_b = net.home("b", Nat::Random);
    let submitter = net.host_in(&mut home_a, "sub");
    let strict = net.host_in(&mut home_b, "v2");
    let farm = Farm::start_behind_nat("tiny-x86_64", relay, submitter, vec![public, strict]);
    let (holder, behind) = (&farm.volunteers[0], &farm.volunteers[1]);
    println!("{}: farm up", t());
    poll(90, "the submitter to reserve a slot on the relay", || {
        relayed_addr(&farm.submitter)
    });

    let p = Project::new(JOB).file("msg.txt", "fetched from another holder\n");
    let relayed_before = relay_bytes(&farm);
    let id = farm.submit(&p, 2);
    let submitted = Instant::now();
    println!("{}: submitted {id} with 2 replicas", t());
    let verdict = poll(BUILD_SECS, "the verdict", || {
        let d = farm.submitter.job(&id)?;
        d["job"]["verdict"].as_str().map(str::to_string)
    });
    println!(
        "{}: verdict {verdict}, {:.1} s after the submission",
        t(),
        submitted.elapsed().as_secs_f64()
    );
    let d = farm.submitter.job(&id).unwrap();
    assert_eq!(verdict, "reproducible", "{d}");
    let relayed = relay_bytes(&farm) - relayed_before;
    println!(
        "{}: the relay's interface carried {:.2} MiB from submission to verdict",
        t(),
        relayed as f64 / (1 << 20) as f64
    );
    assert!(
        relayed < RELAY_BUDGET,
        "{relayed} bytes crossed the relay: did a blob?"
    );
    let built: Vec<&str> = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .filter_map(|r| r["node"].as_str())
        .collect();
    for v in [holder, behind] {
        assert!(
            built.contains(&v.peer_id().as_str()),
            "{} built nothing: {d}",
            v.name
        );
    }
    let log = std::fs::read_to_string(&behind.log).unwrap();
    let from_holder = format!("peer={}", holder.peer_id());
    let fetched: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("fetched a blob from another holder") && l.contains(&from_holder))
        .collect();
    println!("{}: the volunteer behind the symmetric NAT:", t());
    for l in &fetched {
        println!("    {l}");
    }
    assert!(
        fetched.len() >= 2,
        "the image and the source did not both come from the public volunteer:\n{log}"
    );
    assert_eq!(status_of(behind, "holes_punched").as_u64(), Some(0));
}
