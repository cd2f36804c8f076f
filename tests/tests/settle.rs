//! Leases follow the work (issue 9), on real `barn node` processes: a replica that has
//! committed keeps its lease until the job settles, so a volunteer that arrives after the
//! lease time (30 s) still completes the job within seconds of its own commitment; and a
//! volunteer killed with SIGKILL after it committed delivers its stored result once it
//! runs again.
//!
//! The coordinator shows a lease as `granted`, `running`, `committed`, `settled`,
//! `expired` or `failed`, and a settled job's verdict in `job.verdict`. Barn before the
//! settlement showed `active`, `done`, `expired` or `failed`, no commitment at all, and a
//! judged job as `complete`; the helpers read both, so that these tests show the bug on
//! the old node and pass on the new one. Every wait is bounded and names what it waited
//! for; a failure prints the timeline and every lease state the coordinator showed.
//!
//! `cargo nextest run -p barn-tests --test settle --no-capture` prints the timelines.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use barn_protocol::Signed;
use barn_protocol::message::BuildResult;
use barn_tests::farm::{Farm, Node};
use barn_tests::netns::{Nat, Net};
use barn_tests::{Project, poll};
use serde_json::Value;

/// A short, deterministic build with a timeout long against the lease time: a verdict that
/// waits for the timeout comes minutes late, one that follows the work comes in seconds.
const JOB: &str = "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"5m\"\n\
    source_date_epoch = 1700000000\nartifacts = [\"out/*\"]\n\
    [[task]]\nname = \"build\"\nrun = \"mkdir -p out && cat msg.txt > out/msg && echo built\"\n";

/// How long a lease lives without a heartbeat, on the coordinator.
const LEASE_SECS: u64 = 30;

/// Seconds to wait for volunteers to fetch the image and build under TCG.
const BUILD_SECS: u64 = 180;

/// The coordinator's view of one job, polled: the lease states it showed, with the second
/// each was first seen, and a timeline of what the test did and saw.
struct Watch {
    id: String,
    start: Instant,
    /// Peer id → a short name for the report (`A`, `B`, …).
    names: BTreeMap<String, String>,
    /// (node, granted) → each state the lease was shown in, with when it was first seen.
    leases: BTreeMap<(String, u64), Vec<(f64, String)>>,
    timeline: Vec<(f64, String)>,
    last: Value,
}

impl Watch {
    fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            start: Instant::now(),
            names: BTreeMap::new(),
            leases: BTreeMap::new(),
            timeline: Vec::new(),
            last: Value::Null,
        }
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn name(&mut self, node: &str, name: &str) {
        self.names.insert(node.to_string(), name.to_string());
    }

    fn name_of(&self, node: &str) -> String {
        self.names
            .get(node)
            .cloned()
            .unwrap_or_else(|| node[node.len().saturating_sub(8)..].to_string())
    }

    /// Notes a step in the timeline (and prints it); returns its time.
    fn mark(&mut self, what: &str) -> f64 {
        let t = self.secs();
        println!("settle: +{t:6.1}s  {what}");
        self.timeline.push((t, what.to_string()));
        t
    }

    /// `barn job ID --json` on the coordinator, recording every lease's state.
    fn look(&mut self, farm: &Farm) -> Value {
        let d = farm
            .submitter
            .job(&self.id)
            .unwrap_or_else(|| panic!("the submitter does not know job {}", self.id));
        let t = self.secs();
        for l in d["leases"].as_array().into_iter().flatten() {
            let key = (
                l["node"].as_str().unwrap_or_default().to_string(),
                l["granted"].as_u64().unwrap_or_default(),
            );
            let state = l["state"].as_str().unwrap_or_default().to_string();
            let seen = self.leases.entry(key).or_default();
            if seen.last().is_none_or(|(_, s)| *s != state) {
                seen.push((t, state));
            }
        }
        self.last = d.clone();
        d
    }

    /// Polls the coordinator every half second until `f` returns `Some`, for at most
    /// `secs`; then fails with `what` and the report.
    fn until<T>(
        &mut self,
        farm: &Farm,
        secs: u64,
        what: &str,
        mut f: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let d = self.look(farm);
            if let Some(t) = f(&d) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {secs}s waiting for {what}\n{}",
                self.report()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Keeps watching for `secs`.
    fn idle(&mut self, farm: &Farm, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            self.look(farm);
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Every state `node`'s leases were shown in.
    fn states_of(&self, node: &str) -> Vec<String> {
        self.leases
            .iter()
            .filter(|((n, _), _)| n == node)
            .flat_map(|(_, seen)| seen.iter().map(|(_, s)| s.clone()))
            .collect()
    }

    /// The timeline, each lease's states and the job as last seen.
    fn report(&self) -> String {
        let mut out = format!("job {}, times from submission:\n", self.id);
        let mut timeline = self.timeline.clone();
        timeline.sort_by(|x, y| x.0.total_cmp(&y.0));
        for (t, what) in &timeline {
            let _ = writeln!(out, "  +{t:6.1}s  {what}");
        }
        // In the order they were first seen.
        let mut leases: Vec<_> = self.leases.iter().collect();
        leases.sort_by(|x, y| x.1[0].0.total_cmp(&y.1[0].0));
        for ((node, granted), seen) in leases {
            let states: Vec<String> = seen.iter().map(|(t, s)| format!("{s} @{t:.1}s")).collect();
            let _ = writeln!(
                out,
                "  lease of {} (granted {granted}): {}",
                self.name_of(node),
                states.join(" → ")
            );
        }
        let results: Vec<String> = self.last["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let node = self.name_of(r["node"].as_str().unwrap_or_default());
                format!("{node} {}", r["status"])
            })
            .collect();
        let _ = write!(
            out,
            "  last seen: job {}\n  results: {}",
            self.last["job"],
            results.join(", ")
        );
        out
    }
}

/// How a test could tell that a volunteer committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// The coordinator's lease says so (`committed`, `settled`, or the old `done`).
    ByLease,
    /// The old node, whose leases show no commitment: the lease is `active` and the
    /// volunteer lists its own finished result, which it sends as its commitment in the
    /// same step.
    ByOwnResult,
}

/// The state of `node`'s latest lease in the job `d`.
fn lease_state(d: &Value, node: &str) -> Option<String> {
    d["leases"]
        .as_array()?
        .iter()
        .rfind(|l| l["node"] == node)
        .and_then(|l| l["state"].as_str())
        .map(str::to_string)
}

/// The result `volunteer` (peer id `node`) built for job `id`, from its own node.
fn own_result(volunteer: &Node, id: &str, node: &str) -> Option<Value> {
    volunteer.job(id)?["results"]
        .as_array()?
        .iter()
        .find(|r| r["node"] == node)
        .cloned()
}

/// Whether `volunteer` (peer id `node`) has committed its replica of the job `d`.
fn committed(d: &Value, volunteer: &Node, id: &str, node: &str) -> Option<Committed> {
    match lease_state(d, node)?.as_str() {
        "committed" | "settled" | "done" => Some(Committed::ByLease),
        "active" => own_result(volunteer, id, node).map(|_| Committed::ByOwnResult),
        _ => None,
    }
}

/// The job's settled verdict word: `job.verdict` once the coordinator signed a settlement;
/// the old node called a judged job `complete`, and its verdict is `barn verify`'s.
fn verdict(farm: &Farm, d: &Value) -> Option<String> {
    if let Some(v) = d["job"]["verdict"].as_str() {
        return Some(v.to_string());
    }
    if d["job"]["state"] != "complete" {
        return None;
    }
    let id = d["job"]["id"].as_str().unwrap();
    let v = verify(farm, id).1;
    Some(
        v["verdict"]["verdict"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

/// `barn verify --json ID` on the submitter: its exit code and JSON.
fn verify(farm: &Farm, id: &str) -> (Option<i32>, Value) {
    let out = farm.submitter.barn(&["verify", "--json", id]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "barn verify printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// What a user checks once the job settled: the verdict is `reproducible`, from succeeded
/// results of exactly `builders`, one each, every signature checked by `barn verify`.
fn assert_reproducible_by(farm: &Farm, w: &Watch, word: &str, builders: &BTreeSet<String>) {
    let report = w.report();
    assert_eq!(word, "reproducible", "the settled verdict\n{report}");
    let d = &w.last;
    assert_eq!(
        d["job"]["results"],
        builders.len(),
        "results counted\n{report}"
    );
    assert_eq!(d["job"]["succeeded"], builders.len(), "succeeded\n{report}");
    let (code, v) = verify(farm, &w.id);
    assert_eq!(code, Some(0), "barn verify's exit code: {v}\n{report}");
    assert_eq!(v["verdict"]["verdict"], "reproducible", "{v}\n{report}");
    let results = v["results"].as_array().unwrap();
    let nodes: Vec<String> = results
        .iter()
        .map(|r| r["node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        nodes.len(),
        builders.len(),
        "one result per builder: {v}\n{report}"
    );
    assert_eq!(
        nodes.iter().cloned().collect::<BTreeSet<_>>(),
        *builders,
        "the results' builders: {v}\n{report}"
    );
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "succeeded" && r["signature"] == "ok"),
        "{v}\n{report}"
    );
}

/// Waits until both `a` and `b` (volunteers 1 and 2) have committed; returns how each was seen.
fn wait_for_two_commitments(
    farm: &Farm,
    w: &mut Watch,
    a: &str,
    b: &str,
) -> (Committed, Committed) {
    let mut seen: [Option<(Committed, f64)>; 2] = [None, None];
    let start = w.start;
    let id = w.id.clone();
    w.until(farm, BUILD_SECS, "volunteers A and B to commit", |d| {
        for (i, node) in [a, b].into_iter().enumerate() {
            if seen[i].is_none() {
                seen[i] = committed(d, &farm.volunteers[i], &id, node)
                    .map(|how| (how, start.elapsed().as_secs_f64()));
            }
        }
        seen.iter().all(Option::is_some).then_some(())
    });
    let [Some((how_a, ta)), Some((how_b, tb))] = seen else {
        unreachable!("both were seen");
    };
    for (name, how, t) in [("A", how_a, ta), ("B", how_b, tb)] {
        w.timeline
            .push((t, format!("{name} committed (seen {how:?})")));
        println!("settle: +{t:6.1}s  {name} committed (seen {how:?})");
    }
    (how_a, how_b)
}

/// Waits until volunteer `i` (peer id `node`, named `name`) has committed, or the job has
/// settled already; returns the time.
fn wait_for_commitment(farm: &Farm, w: &mut Watch, i: usize, node: &str, name: &str) -> f64 {
    let id = w.id.clone();
    let how = w.until(
        farm,
        BUILD_SECS,
        &format!("volunteer {name} to build and commit"),
        |d| {
            committed(d, &farm.volunteers[i], &id, node)
                .map(|how| format!("{how:?}"))
                .or_else(|| verdict(farm, d).map(|_| "the job settled".to_string()))
        },
    );
    w.mark(&format!("{name} committed (seen {how})"))
}

/// The farm: a submitter that does not build, two volunteers that build and commit,
/// and a third that arrives after the lease time. The committed leases hold, and the job
/// settles within seconds of the third commitment, not at the job's timeout.
#[test]
fn late_volunteer_settles_within_seconds() {
    let mut farm = Farm::start("tiny-x86_64", 2, &[]);
    let p = Project::new(JOB).file("msg.txt", "settled in seconds\n");
    let id = farm.submit(&p, 3);
    let mut w = Watch::new(&id);
    w.mark(&format!("submitted {id} with 3 replicas, 2 volunteers"));
    let submitter = farm.submitter.peer_id();
    let a = farm.volunteers[0].peer_id();
    let b = farm.volunteers[1].peer_id();
    w.name(&submitter, "submitter");
    w.name(&a, "A");
    w.name(&b, "B");

    // A and B build and commit; the third replica has nobody yet.
    wait_for_two_commitments(&farm, &mut w, &a, &b);
    let d = w.look(&farm);
    assert_eq!(
        verdict(&farm, &d),
        None,
        "settled with two of three replicas\n{}",
        w.report()
    );

    // Longer than a lease lives without heartbeats: a committed lease must not lapse.
    w.idle(&farm, LEASE_SECS + 5);
    let (c, word) = third_volunteer_settles(&mut farm, &mut w, 20);

    let report = w.report();
    for (name, node) in [("A", &a), ("B", &b), ("C", &c)] {
        let states = w.states_of(node);
        assert!(
            !states.is_empty(),
            "{name}'s lease was never seen\n{report}"
        );
        assert!(
            !states.iter().any(|s| s == "expired" || s == "failed"),
            "{name}'s lease expired or failed: {states:?}\n{report}"
        );
    }
    assert!(
        w.states_of(&submitter).is_empty(),
        "the submitter leased a replica of its own job\n{report}"
    );
    assert_reproducible_by(
        &farm,
        &w,
        &word,
        &[a.clone(), b.clone(), c].into_iter().collect(),
    );
    // Whose agreement counts is the verifier's policy: three keys it does not know never
    // make "reproducible" for a policy that names trusted builders, and two it trusts do.
    let stranger = barn_protocol::SecretKey::from_seed([77; 32]).public();
    let strangers = format!(
        "builders = [\"{}\"]\nquorum = 1\n",
        barn_protocol::OperatorId(stranger)
    );
    let (code, v) = verify_with_policy(&farm, &w.id, &strangers);
    assert_eq!(code, Some(13), "three unknown keys under a policy: {v}");
    assert_eq!(v["verdict"]["verdict"], "unconfirmed", "{v}");
    let trusted = format!("builders = [\"{a}\", \"{b}\"]\nquorum = 2\n");
    let (code, v) = verify_with_policy(&farm, &w.id, &trusted);
    assert_eq!(code, Some(0), "two trusted builders of three agree: {v}");
    assert_eq!(v["verdict"]["verdict"], "reproducible", "{v}");
    // An observer (volunteer A, which does not coordinate the job) hears the settlement
    // and the results it names on gossip, and reaches the same verdict on its own.
    let observer = &farm.volunteers[0];
    let seen = poll(60, "volunteer A verifies the settled job", || {
        let out = observer.barn(&["verify", "--json", &w.id]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.code() == Some(0) && v["verdict"]["verdict"] == "reproducible").then_some(v)
    });
    assert_eq!(
        seen["results"].as_array().map(Vec::len),
        Some(3),
        "the observer counts the three settled results: {seen}"
    );
}

/// Starts volunteer C, waits for its commitment and then, at most `secs`, for the verdict;
/// prints how long after C's commitment it came. Returns C's peer id and the verdict.
fn third_volunteer_settles(farm: &mut Farm, w: &mut Watch, secs: u64) -> (String, String) {
    farm.add_volunteer();
    let c = farm.volunteers[2].peer_id();
    w.name(&c, "C");
    w.mark("volunteer C started");
    let tc = wait_for_commitment(farm, w, 2, &c, "C");
    let what = format!("the verdict, within {secs} s of C's result");
    let word = w.until(farm, secs, &what, |d| verdict(farm, d));
    let tv = w.mark(&format!("verdict: {word}"));
    println!(
        "settle: the verdict came {:.1}s after C committed\n{}",
        tv - tc,
        w.report()
    );
    (c, word)
}

/// `barn verify --json --policy FILE ID` on the submitter, with `policy` as the file.
fn verify_with_policy(farm: &Farm, id: &str, policy: &str) -> (Option<i32>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let out = farm
        .submitter
        .barn(&["verify", "--json", "--policy", path.to_str().unwrap(), id]);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "barn verify printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// A volunteer that committed and was then killed (its result not yet delivered: the
/// reveal waits for the third replica) delivers the result it stored, not a new build,
/// once it runs again, and the job settles with it.
#[test]
fn volunteer_killed_after_commit_delivers_after_restart() {
    let mut farm = Farm::start("tiny-x86_64", 2, &[]);
    let p = Project::new(JOB).file("msg.txt", "delivered after a restart\n");
    let id = farm.submit(&p, 3);
    let mut w = Watch::new(&id);
    w.mark(&format!("submitted {id} with 3 replicas, 2 volunteers"));
    let a = farm.volunteers[0].peer_id();
    let b = farm.volunteers[1].peer_id();
    w.name(&a, "A");
    w.name(&b, "B");

    let (_, how_b) = wait_for_two_commitments(&farm, &mut w, &a, &b);
    // What B built, as B itself keeps it: after its restart it must deliver this very
    // result, not build the job again.
    let stored = own_result(&farm.volunteers[1], &id, &b)
        .unwrap_or_else(|| panic!("B does not list the result it built\n{}", w.report()));
    let stored = result_message(&stored);
    if how_b == Committed::ByOwnResult {
        // The old node: the commitment left in the step that stored the result; give it
        // the moment it needs to cross the loopback.
        std::thread::sleep(Duration::from_secs(2));
    }

    let pid = farm.volunteers[1].pid();
    farm.volunteers[1].kill_hard();
    w.mark(&format!("B (pid {pid}) killed with SIGKILL"));
    // The reveal waits for the third replica: B's result is still only on B.
    let d = w.look(&farm);
    let taken = d["results"].as_array().unwrap();
    assert!(
        !taken.iter().any(|r| r["node"] == b.as_str()),
        "the coordinator took B's result before the third replica committed\n{}",
        w.report()
    );
    farm.volunteers[1].restart();
    w.mark(&format!("B restarted (pid {})", farm.volunteers[1].pid()));
    let (c, word) = third_volunteer_settles(&mut farm, &mut w, 30);
    assert_reproducible_by(&farm, &w, &word, &[a, b.clone(), c].into_iter().collect());
    let delivered = w.last["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == b.as_str())
        .map(result_message)
        .unwrap_or_else(|| panic!("no result from B\n{}", w.report()));
    assert!(
        delivered == stored,
        "B's result is not the one it stored before it was killed (built again?): \
         stored finished at {} in {} ms, delivered finished at {} in {} ms\n{}",
        stored.finished,
        stored.timings.total_ms,
        delivered.finished,
        delivered.timings.total_ms,
        w.report()
    );
}

/// The signed result in a `ResultView`, its signature checked here.
fn result_message(r: &Value) -> BuildResult {
    let bytes = hex::decode(r["envelope"].as_str().unwrap()).unwrap();
    Signed::<BuildResult>::from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("a result that does not verify ({e}): {r}"))
        .message()
        .clone()
}

/// Issue 10's fault on real processes: a volunteer killed with SIGKILL in the middle of a
/// 20 s build; a third volunteer starts at once. The killed node's lease lapses after 30 s
/// without heartbeats, the replica is granted to the third, and the job settles from the
/// survivor's and the third's results.
#[test]
fn volunteer_killed_mid_build_is_replaced_and_the_job_settles() {
    let mut farm = Farm::start("tiny-x86_64", 2, &[]);
    let job = JOB.replace("run = \"mkdir", "run = \"sleep 20 && mkdir");
    let p = Project::new(&job).file("msg.txt", "built after a replacement\n");
    let id = farm.submit(&p, 2);
    let mut w = Watch::new(&id);
    w.mark(&format!(
        "submitted {id} with 2 replicas, 2 volunteers, a 20 s build"
    ));
    let a = farm.volunteers[0].peer_id();
    let b = farm.volunteers[1].peer_id();
    w.name(&a, "A");
    w.name(&b, "B");
    both_running(&farm, &mut w, &a, &b);
    std::thread::sleep(Duration::from_secs(10));
    let pid = farm.volunteers[1].pid();
    farm.volunteers[1].kill_hard();
    w.mark(&format!("B (pid {pid}) killed with SIGKILL mid-build"));
    farm.add_volunteer();
    let c = farm.volunteers[2].peer_id();
    w.name(&c, "C");
    w.mark("volunteer C started");
    let word = w.until(
        &farm,
        LEASE_SECS + BUILD_SECS,
        "the verdict after B's lease lapsed and C built",
        |d| verdict(&farm, d),
    );
    w.mark(&format!("verdict: {word}"));
    let report = w.report();
    println!("{report}");
    assert!(
        w.states_of(&b).iter().any(|s| s == "expired"),
        "B's lease never lapsed\n{report}"
    );
    assert_reproducible_by(&farm, &w, &word, &[a, c].into_iter().collect());
}

/// Issue 10's coordinator faults on real processes: the coordinator is killed with
/// SIGKILL while both replicas build, stays down while they finish (they cannot deliver),
/// and comes back at its address: it resumes from its database, the volunteers deliver
/// what they kept, and the job settles with both results.
#[test]
fn coordinator_killed_mid_job_collects_every_result_when_back() {
    coordinator_killed_mid_job(Back::AtItsAddress);
}

/// The same, but the coordinator comes back on another port (a laptop that moved, a new
/// lease from the router): its volunteers still dial the old address, so it must find
/// them: it dials the peers it remembers (`peers.cbor`), and the job settles.
#[test]
fn coordinator_back_on_a_new_address_finds_its_volunteers() {
    coordinator_killed_mid_job(Back::OnANewAddress);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Back {
    AtItsAddress,
    OnANewAddress,
}

fn coordinator_killed_mid_job(back: Back) {
    let mut farm = Farm::start("tiny-x86_64", 2, &[]);
    let job = JOB.replace("run = \"mkdir", "run = \"sleep 10 && mkdir");
    let p = Project::new(&job).file("msg.txt", "delivered to a restarted coordinator\n");
    let id = farm.submit(&p, 2);
    let mut w = Watch::new(&id);
    w.mark(&format!("submitted {id} with 2 replicas, a 10 s build"));
    let a = farm.volunteers[0].peer_id();
    let b = farm.volunteers[1].peer_id();
    w.name(&a, "A");
    w.name(&b, "B");
    both_running(&farm, &mut w, &a, &b);
    // A lease is `running` from the first heartbeat, which comes while the volunteer still
    // fetches the image from the coordinator: kill it only once both have the image (under
    // load the fetch takes seconds, and a fetch cut by the kill fails the replica).
    poll(BUILD_SECS, "A and B to have the job's image", || {
        farm.volunteers
            .iter()
            .all(|v| v.status()["images"].get("tiny-x86_64").is_some())
            .then_some(())
    });
    w.mark("A and B have the image");
    let addr = farm.submitter.multiaddr();
    let pid = farm.submitter.pid();
    farm.submitter.kill_hard();
    w.mark(&format!("the coordinator (pid {pid}) killed with SIGKILL"));
    // Both finish while it is down: their results wait in their outboxes.
    poll(
        BUILD_SECS,
        "A and B finish while the coordinator is down",
        || {
            let done = |i: usize, n: &str| own_result(&farm.volunteers[i], &id, n).is_some();
            (done(0, &a) && done(1, &b)).then_some(())
        },
    );
    w.mark("A and B finished while the coordinator was down");
    match back {
        Back::AtItsAddress => {
            farm.submitter.restart_listening(&addr);
            w.mark("the coordinator restarted at its address");
        }
        Back::OnANewAddress => {
            farm.submitter.restart();
            let moved = farm.submitter.multiaddr();
            assert_ne!(moved, addr, "the coordinator came back on its old address");
            w.mark(&format!("the coordinator restarted at {moved}, not {addr}"));
        }
    }
    let word = w.until(&farm, 60, "the verdict after the restart", |d| {
        verdict(&farm, d)
    });
    w.mark(&format!("verdict: {word}"));
    println!("{}", w.report());
    assert_reproducible_by(&farm, &w, &word, &[a, b].into_iter().collect());
}

/// Waits until the leases of `a` and `b` both show their jobs running.
fn both_running(farm: &Farm, w: &mut Watch, a: &str, b: &str) {
    w.until(farm, BUILD_SECS, "both volunteers running the job", |d| {
        let running = |n: &str| lease_state(d, n).is_some_and(|s| s == "running");
        (running(a) && running(b)).then_some(())
    });
    w.mark("A and B are running the job");
}

/// Issue 10's partition on separate networks: a coordinator on the public network and
/// three volunteers behind one home NAT (`barn_tests::netns`). While two of them build
/// a 2-replica job, one (A) loses its link for longer than a lease: its lease lapses, the
/// third (C) takes the replica over and the job settles with B and C. When A's link comes
/// back, A delivers the result it finished meanwhile: the coordinator keeps it once, as
/// late, and it counts for nothing.
#[test]
fn a_partition_longer_than_a_lease_regrants_and_the_late_result_is_kept_once() {
    let Some(mut net) = Net::new() else { return };
    let coordinator = net.public_host("coord");
    let mut home = net.home("home", Nat::Masquerade);
    let hosts = (1..=3)
        .map(|i| Some(net.host_in(&mut home, &format!("v{i}"))))
        .collect();
    let farm = Farm::start_on("tiny-x86_64", Some(coordinator), hosts, &[]);
    let job = JOB.replace("run = \"mkdir", "run = \"sleep 20 && mkdir");
    let p = Project::new(&job).file("msg.txt", "built across a partition\n");
    let id = farm.submit(&p, 2);
    let mut w = Watch::new(&id);
    w.mark(&format!("submitted {id} with 2 replicas, a 20 s build"));
    let peers: Vec<String> = farm.volunteers.iter().map(Node::peer_id).collect();
    // The two the coordinator granted first are A and B; the third is C.
    let (ia, ib) = w.until(&farm, BUILD_SECS, "two volunteers running the job", |d| {
        let running: Vec<usize> = (0..3)
            .filter(|&i| lease_state(d, &peers[i]).is_some_and(|s| s == "running"))
            .collect();
        (running.len() == 2).then(|| (running[0], running[1]))
    });
    let ic = 3 - ia - ib;
    let (a, b, c) = (&peers[ia], &peers[ib], &peers[ic]);
    w.name(a, "A");
    w.name(b, "B");
    w.name(c, "C");
    w.mark("A and B are running the job");
    let host_a = farm.volunteers[ia].host.clone().unwrap();
    net.cut(&host_a);
    w.mark("A's link taken down");
    w.until(&farm, LEASE_SECS + 30, "A's lease to lapse", |d| {
        (lease_state(d, a).as_deref() == Some("expired")).then_some(())
    });
    w.mark("A's lease lapsed");
    w.until(&farm, 60, "C to take the replica over", |d| {
        lease_state(d, c)
            .is_some_and(|s| s == "running")
            .then_some(())
    });
    w.mark("C is running the job");
    let word = w.until(&farm, BUILD_SECS, "the verdict with B and C", |d| {
        verdict(&farm, d)
    });
    w.mark(&format!("verdict: {word}"));
    poll(BUILD_SECS, "A to finish its build behind the cut", || {
        own_result(&farm.volunteers[ia], &id, a).map(|_| ())
    });
    w.mark("A finished behind the cut");
    net.heal(&host_a);
    w.mark("A's link back up");
    let late = |d: &Value| -> Vec<Value> {
        d["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["node"] == *a)
            .cloned()
            .collect()
    };
    w.until(&farm, 120, "A's late result at the coordinator", |d| {
        (!late(d).is_empty()).then_some(())
    });
    w.mark("A's result arrived");
    // Its outbox may try again meanwhile: still one, and late.
    w.idle(&farm, 10);
    let report = w.report();
    let kept = late(&w.last);
    assert_eq!(kept.len(), 1, "A's result kept once\n{report}");
    assert_eq!(kept[0]["late"], true, "A's result is late\n{report}");
    println!("{report}");
    assert_reproducible_by(
        &farm,
        &w,
        &word,
        &[b.clone(), c.clone()].into_iter().collect(),
    );
    drop(farm);
}
