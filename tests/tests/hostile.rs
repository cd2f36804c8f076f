//! Issue 10's hostile peers against real `barn node` processes: while peers written to
//! attack (`barn_tests::hostile`) send re-wrapped jobs, garbage, adverts from two thousand
//! fresh keys, floods of requests and a thousand half-open connections, an honest job
//! settles, every attack is counted by reason in `/metrics`, and the attacked node's
//! memory, open files and tables stay bounded.

use std::time::{Duration, Instant};

use barn_node::net::codec::Request;
use barn_node::net::swarm::{TOPIC_ADVERTS, TOPIC_JOBS};
use barn_protocol::message::{JobAnnounce, NodeAdvert};
use barn_protocol::{SecretKey, Signed};
use barn_tests::farm::{Farm, Node};
use barn_tests::hostile::Hostile;
use barn_tests::{Project, poll};

const JOB: &str = "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"5m\"\n\
    source_date_epoch = 1700000000\nartifacts = [\"out/*\"]\n\
    [[task]]\nname = \"build\"\nrun = \"sleep 5 && mkdir -p out && cat msg.txt > out/msg\"\n";

/// How many files (sockets included) the node's process holds open.
fn open_files(node: &Node) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", node.pid()))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("open files of {}: {e}", node.name))
}

/// `ip:port` of a `/ip4/<ip>/tcp/<port>/…` multiaddr.
fn tcp_addr(multiaddr: &str) -> String {
    let parts: Vec<&str> = multiaddr.split('/').collect();
    assert!(
        parts.len() > 4 && parts[1] == "ip4" && parts[3] == "tcp",
        "{multiaddr}"
    );
    format!("{}:{}", parts[2], parts[4])
}

/// Waits for job `id`'s verdict on the submitter; returns it.
fn verdict(farm: &Farm, id: &str) -> String {
    poll(240, "the job's verdict", || {
        farm.submitter.job(id)?["job"]["verdict"]
            .as_str()
            .map(str::to_string)
    })
}

fn rejected(node: &Node, kind: &str, topic: Option<&str>, reason: &str) -> u64 {
    let series = match topic {
        Some(t) => {
            format!("barn_rejected_total{{kind=\"{kind}\",reason=\"{reason}\",topic=\"{t}\"}}")
        }
        None => format!("barn_rejected_total{{kind=\"{kind}\",reason=\"{reason}\"}}"),
    };
    node.metric(&series)
}

#[test]
fn an_honest_job_settles_while_hostile_peers_attack_and_each_attack_is_counted() {
    let farm = Farm::start("tiny-x86_64", 2, &[]);
    let target = farm.submitter.multiaddr();

    // The same job with nobody attacking, for comparison.
    let started = Instant::now();
    let quiet = farm.submit(&Project::new(JOB).file("msg.txt", "quiet\n"), 2);
    assert_eq!(verdict(&farm, &quiet), "reproducible");
    let quiet_secs = started.elapsed().as_secs_f64();
    let rss_before = farm.submitter.rss_kib();

    let started = Instant::now();
    let id = farm.submit(&Project::new(JOB).file("msg.txt", "under attack\n"), 2);
    let mut timeline = vec![format!("quiet job settled in {quiet_secs:.1} s")];
    let mut mark = |what: String| {
        timeline.push(format!("+{:6.1}s  {what}", started.elapsed().as_secs_f64()));
    };

    // 1. The job re-wrapped in a new announcement by a peer that is not its coordinator.
    let envelope = hex::decode(
        farm.submitter.job(&id).unwrap()["envelope"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let rewrapped = barn_protocol::cbor::to_vec(&JobAnnounce {
        job: envelope,
        sent: 1,
    });
    let mut h = Hostile::connect(&target);
    h.publish(TOPIC_JOBS, vec![rewrapped]);
    mark("published the job re-wrapped".into());

    // 2. Garbage on the jobs topic: after a few, the peer is graylisted and ignored.
    let mut h = Hostile::connect(&target);
    h.publish(
        TOPIC_JOBS,
        (0..20u8).map(|i| vec![0xff, i, 0x13, 0x37]).collect(),
    );
    mark("published 20 garbage messages".into());

    // 3. Adverts signed by two thousand fresh keys, all published by one peer.
    let now = barn_node::daemon::now();
    let adverts: Vec<Vec<u8>> = (0..2000)
        .map(|_| {
            let key = SecretKey::generate();
            let advert = NodeAdvert {
                node: key.node_id(),
                version: "0.1.0".into(),
                archs: vec![],
                cpus: 64,
                memory_bytes: 1 << 40,
                free_slots: 64,
                total_slots: 64,
                images: Default::default(),
                addrs: vec![],
                time: now,
                expires: now + 3600,
                unavailable: vec![],
            };
            Signed::sign(advert, &key).to_bytes()
        })
        .collect();
    let mut h = Hostile::connect(&target);
    h.publish(TOPIC_ADVERTS, adverts);
    mark("published 2000 adverts from fresh keys".into());

    // 4. A flood of requests (claims that do not even decode).
    let mut h = Hostile::connect(&target);
    let flood = h.flood(600, Duration::from_secs(30), |i| {
        Request::Claim(vec![i as u8; 64])
    });
    mark(format!("flooded 600 claims: {flood:?}"));
    let kept = h.still_connected_after(Duration::from_secs(2));

    // 5. A thousand TCP connections to the node's port, held open and never completing
    // the handshake: at most 64 wait in it at once; the rest are turned away at once, so
    // the node's open files stay bounded.
    let fds_before = open_files(&farm.submitter);
    let addr = tcp_addr(&target);
    let held: Vec<std::net::TcpStream> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let fds_flooded = open_files(&farm.submitter);
    mark(format!(
        "opened {} raw connections: the node holds {fds_flooded} files (was {fds_before})",
        held.len()
    ));

    let word = verdict(&farm, &id);
    drop(held);
    let attacked_secs = started.elapsed().as_secs_f64();
    mark(format!("verdict {word}"));
    let rss_after = farm.submitter.rss_kib();
    let nodes = farm.submitter.barn(&["nodes", "--json"]);
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    let s = &farm.submitter;
    let counts = [
        (
            "rewrapped",
            rejected(s, "gossip", Some("jobs"), "not_from_coordinator"),
        ),
        (
            "garbage",
            rejected(s, "gossip", Some("jobs"), "undecodable"),
        ),
        (
            "adverts",
            rejected(s, "gossip", Some("adverts"), "not_from_advertiser"),
        ),
        ("rate_limited", rejected(s, "peer", None, "rate_limited")),
        ("banned", rejected(s, "peer", None, "banned")),
        (
            "connection_limit",
            rejected(s, "peer", None, "connection_limit"),
        ),
    ];
    let report = format!(
        "{}\nsubmit to verdict: quiet {quiet_secs:.1} s, under attack {attacked_secs:.1} s\n\
         submitter RSS {rss_before} KiB before, {rss_after} KiB after; nodes known {}\n\
         rejections: {counts:?}; flood {flood:?}; flooder still connected: {kept}",
        timeline.join("\n"),
        nodes.as_array().map_or(0, Vec::len),
    );
    println!("{report}");

    assert_eq!(word, "reproducible", "{report}");
    let count = |name: &str| counts.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(count("rewrapped"), 1, "{report}");
    let garbage = count("garbage");
    assert!(
        (1..20).contains(&garbage),
        "garbage reached the node {garbage} times of 20: scoring did not graylist the sender\n{report}"
    );
    let adverts = count("adverts");
    assert!(
        (1..2000).contains(&adverts),
        "{adverts} of 2000 foreign adverts were checked\n{report}"
    );
    assert_eq!(
        nodes.as_array().map_or(0, Vec::len),
        3,
        "only the farm's nodes are known\n{report}"
    );
    assert!(
        flood.rate_limited > 0 && count("rate_limited") > 0,
        "{report}"
    );
    assert!(
        flood.answered <= 60 + 30 * 20,
        "more requests answered than the rate allows\n{report}"
    );
    assert_eq!(count("banned"), 1, "{report}");
    assert!(
        count("connection_limit") >= 900,
        "raw connections were not turned away\n{report}"
    );
    assert!(
        fds_flooded < fds_before + 100,
        "1000 raw connections opened {} files on the node\n{report}",
        fds_flooded.saturating_sub(fds_before)
    );
    // With the flood gone, a new peer connects again.
    let mut late = Hostile::connect(&target);
    assert!(
        late.still_connected_after(Duration::from_secs(1)),
        "a peer cannot connect after the flood\n{report}"
    );
    assert!(!kept, "the flooding peer is still connected\n{report}");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the attacked node grew by {} KiB\n{report}",
        rss_after.saturating_sub(rss_before)
    );
}
