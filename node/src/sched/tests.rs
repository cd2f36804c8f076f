//! An in-process harness for the scheduling rules: one coordinator, several volunteers,
//! messages routed in memory, and a fake runner that finishes a started job on the next
//! step. libp2p and QEMU are tested elsewhere; this checks the protocol logic on top.

use std::collections::{BTreeMap, BTreeSet};

use barn_protocol::message::*;
use barn_protocol::{ContentHash, NodeId, SecretKey, Signed, SubmitterId};

use super::coordinator::LEASE_SECS;
use super::volunteer::{Action, RETRY_SECS};
use super::*;

struct Harness {
    now: u64,
    submitter: SecretKey,
    coordinator: Coordinator,
    coord_id: NodeId,
    volunteers: Vec<Volunteer>,
    /// Jobs each volunteer is running (the fake runner finishes them on the next step).
    running: BTreeMap<NodeId, Vec<(JobId, LeaseId)>>,
    /// Volunteers that vanished: they neither run nor answer.
    gone: BTreeSet<NodeId>,
    /// Results the coordinator accepted, per job.
    results: BTreeMap<JobId, Vec<NodeId>>,
    /// What the fake runner reports.
    fail_with_error: BTreeSet<NodeId>,
    /// Results committed but not yet revealed.
    unrevealed: Vec<(JobId, NodeId, BuildResult)>,
    /// Nodes whose fake runner writes other bytes than the rest.
    odd: BTreeSet<NodeId>,
    reputation: BTreeMap<NodeId, coordinator::Reputation>,
    /// Volunteers' actions made between steps (by an owner's change), routed at the next.
    queued: Vec<(usize, Action)>,
}

fn caps(archs: &[&str], mem_mib: u64, slots: u32) -> Capabilities {
    Capabilities {
        archs: archs.iter().map(|s| s.to_string()).collect(),
        memory_bytes: mem_mib << 20,
        slots,
        max_disk_bytes: 8 << 30,
        max_timeout_secs: 7200,
    }
}

impl Harness {
    fn new() -> Self {
        let coord = SecretKey::from_seed([1; 32]);
        Self {
            now: 1_000,
            submitter: SecretKey::from_seed([2; 32]),
            coordinator: Coordinator::new(),
            coord_id: coord.node_id(),
            volunteers: Vec::new(),
            running: BTreeMap::new(),
            gone: BTreeSet::new(),
            results: BTreeMap::new(),
            fail_with_error: BTreeSet::new(),
            unrevealed: Vec::new(),
            odd: BTreeSet::new(),
            reputation: BTreeMap::new(),
            queued: Vec::new(),
        }
    }

    /// The owner's conditions of volunteer `i` changed (what the actor does every second).
    fn set_unavailable(&mut self, i: usize, why: Vec<Unavailable>) {
        let actions = self.volunteers[i].set_unavailable(why, self.now);
        self.queued.extend(actions.into_iter().map(|a| (i, a)));
    }

    fn trust_all(&self) -> Trust {
        Trust {
            submitters: BTreeSet::from([self.submitter.submitter_id()]),
            accept_any: false,
        }
    }

    fn add_volunteer(&mut self, seed: u8, c: Capabilities, trust: Trust) -> NodeId {
        let id = SecretKey::from_seed([100 + seed; 32]).node_id();
        self.volunteers.push(Volunteer::new(id, c, trust));
        id
    }

    fn submit(&mut self, arch: &str, mem_mib: u64, replicas: u8) -> JobId {
        let job = Job {
            spec: JobSpec {
                image: "tiny-x86_64".into(),
                arch: arch.into(),
                tasks: vec![Task {
                    name: "t".into(),
                    run: "true".into(),
                }],
                env: Default::default(),
                artifacts: vec![],
                resources: Resources {
                    cpus: 1,
                    memory_bytes: mem_mib << 20,
                    disk_bytes: 1 << 20,
                },
                timeout_secs: 60,
                replicas,
                source_date_epoch: 0,
                tiebreak: false,
                vary: vec![],
            },
            image_hash: ContentHash::of(b"img"),
            source: ContentHash::of(b"src"),
            source_size: 3,
            coordinator: self.coord_id,
            coordinator_addrs: vec![],
            created: self.now,
            expires: self.now + 3600,
            nonce: serde_bytes::ByteArray::new(random_bytes()),
        };
        let signed = Signed::sign(job.clone(), &self.submitter);
        let id = JobId::of(&signed);
        self.coordinator.add_job(id, job, vec![], self.now);
        id
    }

    /// Announces open jobs to every volunteer (what the coordinator's periodic gossip does),
    /// routes claims and grants, lets the fake runner finish jobs, advances time.
    fn step(&mut self, secs: u64) {
        self.now += secs;
        let submitter = SubmitterId(self.submitter.public());
        let open = self.coordinator.open_jobs(self.now);
        let mut actions: Vec<(usize, Action)> = std::mem::take(&mut self.queued);
        for (i, v) in self.volunteers.iter_mut().enumerate() {
            if self.gone.contains(&v.me) {
                continue;
            }
            for id in &open {
                let job = self.coordinator.job(id).unwrap().job.clone();
                actions.extend(
                    v.on_job(*id, job, submitter, self.now)
                        .into_iter()
                        .map(|a| (i, a)),
                );
            }
            actions.extend(v.poll(self.now).into_iter().map(|a| (i, a)));
        }
        // Finish what was running (fake runner), then route this step's actions.
        let running = std::mem::take(&mut self.running);
        for (node, jobs) in running {
            if self.gone.contains(&node) {
                continue;
            }
            for (job, lease) in jobs {
                let status = if self.fail_with_error.contains(&node) {
                    BuildStatus::Error {
                        reason: "vm".into(),
                    }
                } else {
                    BuildStatus::Succeeded
                };
                let result = fake_result(job, lease, node, status, self.odd.contains(&node));
                let digest = Commitment::digest_of(&node, &result.manifest_root);
                self.coordinator
                    .on_commit(&job, &lease, digest, node, self.now)
                    .unwrap();
                self.unrevealed.push((job, node, result));
                let i = self.volunteers.iter().position(|v| v.me == node).unwrap();
                actions.extend(
                    self.volunteers[i]
                        .on_finished(&job, self.now)
                        .into_iter()
                        .map(|a| (i, a)),
                );
            }
        }
        // Reveal: results are taken once every replica has committed.
        let waiting = std::mem::take(&mut self.unrevealed);
        for (job, node, result) in waiting {
            match self.coordinator.on_result(&job, &result, node, self.now) {
                Ok(coordinator::LeaseState::Done) => {
                    self.results.entry(job).or_default().push(node)
                }
                Ok(_) => {}
                Err(coordinator::Refusal::NotYet) => self.unrevealed.push((job, node, result)),
                Err(e) => panic!("result refused: {e}"),
            }
        }
        while let Some((i, action)) = actions.pop() {
            let me = self.volunteers[i].me;
            match action {
                Action::Claim { job, coordinator } => {
                    assert_eq!(coordinator, self.coord_id);
                    let decision = self.coordinator.on_claim(
                        &job,
                        me,
                        self.reputation.get(&me).copied().unwrap_or_default(),
                        self.now,
                    );
                    actions.extend(
                        self.volunteers[i]
                            .on_grant(&job, &decision, self.now)
                            .into_iter()
                            .map(|a| (i, a)),
                    );
                }
                Action::Start { job, lease, .. } => {
                    self.running.entry(me).or_default().push((job, lease))
                }
            }
        }
        self.coordinator.tick(self.now);
    }

    fn ran(&self, job: &JobId) -> Vec<NodeId> {
        self.results.get(job).cloned().unwrap_or_default()
    }
}

fn fake_result(
    job: JobId,
    lease: LeaseId,
    node: NodeId,
    status: BuildStatus,
    odd: bool,
) -> BuildResult {
    let content: &[u8] = if odd { b"odd" } else { b"even" };
    let mut r = crate::verify::verdict::tests_support::result_with(&[("out", content)], status);
    r.job = job;
    r.lease = Some(lease);
    r.node = node;
    r
}

#[test]
fn jobs_go_only_to_nodes_with_the_arch_and_the_memory() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let big = h.add_volunteer(1, caps(&["x86_64"], 2048, 1), t.clone());
    let _s390 = h.add_volunteer(2, caps(&["s390x"], 8192, 1), t.clone());
    let _small = h.add_volunteer(3, caps(&["x86_64"], 256, 1), t);
    let job = h.submit("x86_64", 1024, 3);
    for _ in 0..5 {
        h.step(1);
    }
    // One of three replicas committed: nothing is revealed until the others do, or until
    // the reveal window has passed.
    assert!(h.ran(&job).is_empty());
    assert_eq!(
        h.coordinator
            .job(&job)
            .unwrap()
            .commitments
            .keys()
            .collect::<Vec<_>>(),
        vec![&big]
    );
    h.step(60 + coordinator::REVEAL_SLACK_SECS);
    h.step(1);
    assert_eq!(h.ran(&job), vec![big]);
}

#[test]
fn never_more_grants_than_replicas_and_all_distinct() {
    let mut h = Harness::new();
    let t = h.trust_all();
    for i in 0..6 {
        h.add_volunteer(i, caps(&["x86_64"], 1024, 2), t.clone());
    }
    let job = h.submit("x86_64", 256, 3);
    for _ in 0..5 {
        h.step(1);
        assert!(h.coordinator.job(&job).unwrap().held() <= 3);
    }
    let ran = h.ran(&job);
    assert_eq!(ran.len(), 3);
    assert_eq!(
        ran.iter().collect::<BTreeSet<_>>().len(),
        3,
        "replicas went to one node twice"
    );
    assert!(h.coordinator.job(&job).unwrap().complete());
    // Once complete, the job is no longer announced and nobody else claims it.
    assert!(h.coordinator.open_jobs(h.now).is_empty());
}

#[test]
fn an_untrusted_submitter_is_ignored() {
    let mut h = Harness::new();
    let stranger = Trust {
        submitters: BTreeSet::from([SecretKey::from_seed([9; 32]).submitter_id()]),
        accept_any: false,
    };
    let v = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), stranger);
    let job = h.submit("x86_64", 256, 1);
    for _ in 0..3 {
        h.step(1);
    }
    assert!(h.ran(&job).is_empty());
    let state = h.volunteers[0].state(&job).cloned();
    assert!(
        matches!(state, Some(volunteer::State::Waiting { why: Some(ref w), .. }) if w.contains("not trusted")),
        "{state:?}"
    );
    // accept_any is an explicit opt-in that changes that.
    h.volunteers[0].trust.accept_any = true;
    h.step(RETRY_SECS);
    h.step(1);
    assert_eq!(h.ran(&job), vec![v]);
}

#[test]
fn a_job_no_node_matches_waits_and_runs_when_one_appears() {
    let mut h = Harness::new();
    let t = h.trust_all();
    h.add_volunteer(1, caps(&["aarch64"], 4096, 1), t.clone());
    let job = h.submit("x86_64", 256, 1);
    for _ in 0..10 {
        h.step(1);
    }
    assert!(h.ran(&job).is_empty());
    assert_eq!(h.coordinator.open_jobs(h.now), vec![job]);
    let late = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t);
    h.step(1);
    h.step(1);
    assert_eq!(h.ran(&job), vec![late]);
}

#[test]
fn a_vanished_volunteers_lease_expires_and_goes_to_the_next() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let first = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t.clone());
    let job = h.submit("x86_64", 256, 1);
    h.step(1); // first claims and is granted
    assert_eq!(h.coordinator.job(&job).unwrap().held(), 1);
    h.gone.insert(first);
    let second = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t);
    h.step(1);
    assert!(
        h.ran(&job).is_empty(),
        "the slot is still leased to the vanished node"
    );
    h.step(LEASE_SECS); // no heartbeat: the lease lapses
    h.step(RETRY_SECS);
    h.step(1);
    assert_eq!(h.ran(&job), vec![second]);
}

#[test]
fn an_infrastructure_error_frees_the_replica_for_another_node() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let flaky = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t.clone());
    h.fail_with_error.insert(flaky);
    let job = h.submit("x86_64", 256, 1);
    h.step(1);
    h.step(1);
    assert!(h.ran(&job).is_empty());
    let good = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t);
    for _ in 0..3 {
        h.step(1);
    }
    assert_eq!(h.ran(&job), vec![good]);
}

#[test]
fn heartbeats_keep_a_lease_and_only_its_node_may_send_them() {
    let mut h = Harness::new();
    let job = h.submit("x86_64", 256, 1);
    let c = &mut h.coordinator;
    let a = SecretKey::from_seed([5; 32]).node_id();
    let b = SecretKey::from_seed([6; 32]).node_id();
    let GrantDecision::Granted { lease, .. } = c.on_claim(&job, a, Default::default(), 0) else {
        panic!("not granted")
    };
    assert_eq!(c.on_heartbeat(&job, &lease, a, 20), Ok(20 + LEASE_SECS));
    assert_eq!(
        c.on_heartbeat(&job, &lease, b, 20),
        Err(coordinator::Refusal::UnknownLease)
    );
    assert!(c.tick(40).is_empty(), "renewed lease expired early");
    assert_eq!(c.tick(20 + LEASE_SECS).len(), 1);
}

#[test]
fn no_result_is_revealed_before_every_replica_committed() {
    let mut h = Harness::new();
    let t = h.trust_all();
    h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t.clone());
    let slow = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t);
    h.gone.insert(slow);
    let job = h.submit("x86_64", 256, 2);
    for _ in 0..4 {
        h.step(1); // the first node claims, builds and commits; the second is away
    }
    assert!(
        h.ran(&job).is_empty(),
        "a result was revealed before the other replica committed"
    );
    assert_eq!(h.coordinator.job(&job).unwrap().commitments.len(), 1);
    h.gone.remove(&slow);
    for _ in 0..3 {
        h.step(1);
    }
    assert_eq!(h.ran(&job).len(), 2);
}

#[test]
fn a_result_must_match_its_own_commitment() {
    let mut h = Harness::new();
    let job = h.submit("x86_64", 256, 1);
    let a = SecretKey::from_seed([7; 32]).node_id();
    let c = &mut h.coordinator;
    let GrantDecision::Granted { lease, .. } = c.on_claim(&job, a, Default::default(), 0) else {
        panic!()
    };
    let honest = fake_result(job, lease, a, BuildStatus::Succeeded, false);
    let copied = fake_result(job, lease, a, BuildStatus::Succeeded, true);
    assert_eq!(
        c.on_result(&job, &honest, a, 1),
        Err(coordinator::Refusal::NoCommitment)
    );
    c.on_commit(
        &job,
        &lease,
        Commitment::digest_of(&a, &honest.manifest_root),
        a,
        1,
    )
    .unwrap();
    assert_eq!(
        c.on_result(&job, &copied, a, 1),
        Err(coordinator::Refusal::CommitmentMismatch)
    );
    // Another node's digest for the same root does not pass as this node's.
    let b = SecretKey::from_seed([8; 32]).node_id();
    assert_ne!(
        Commitment::digest_of(&a, &honest.manifest_root),
        Commitment::digest_of(&b, &honest.manifest_root)
    );
    assert_eq!(
        c.on_result(&job, &honest, a, 1),
        Ok(coordinator::LeaseState::Done)
    );
}

#[test]
fn poorly_reputed_nodes_wait_while_reputable_ones_take_the_replicas() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let bad = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t.clone());
    h.reputation.insert(
        bad,
        coordinator::Reputation {
            agreements: 0,
            disagreements: 2,
        },
    );
    let job = h.submit("x86_64", 256, 1);
    h.step(1);
    h.step(1);
    assert!(
        h.ran(&job).is_empty(),
        "the poorly reputed node got the job at once"
    );
    let good = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t);
    h.step(1);
    h.step(1);
    assert_eq!(h.ran(&job), vec![good]);
    // Alone, the poorly reputed node still gets work after the preference window.
    let job2 = h.submit("x86_64", 256, 2);
    for _ in 0..(coordinator::PREFER_WINDOW_SECS + volunteer::RETRY_SECS + 2) {
        h.step(1);
    }
    assert!(h.ran(&job2).contains(&bad));
}

#[test]
fn a_tie_gets_one_more_replica_when_the_job_allows_it() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let a = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t.clone());
    let b = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t.clone());
    h.odd.insert(b);
    let mut job = h.submit("x86_64", 256, 2);
    // Resubmit with tiebreak on.
    {
        let j = &h.coordinator.job(&job).unwrap().job;
        let mut j = j.clone();
        j.spec.tiebreak = true;
        job = JobId(ContentHash::of(b"tiebreak-job"));
        h.coordinator.add_job(job, j, vec![], h.now);
    }
    for _ in 0..3 {
        h.step(1);
    }
    let mut ran = h.ran(&job);
    ran.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ran, want);
    assert!(h.coordinator.job(&job).unwrap().complete());
    assert!(h.coordinator.request_tiebreak(&job));
    assert!(
        !h.coordinator.request_tiebreak(&job),
        "only one tie-breaker"
    );
    let c = h.add_volunteer(3, caps(&["x86_64"], 1024, 1), t);
    for _ in 0..3 {
        h.step(1);
    }
    assert!(h.ran(&job).contains(&c));
    assert!(h.coordinator.job(&job).unwrap().complete());
}

#[test]
fn a_volunteer_that_is_not_taking_work_claims_nothing_until_it_is_again() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let v = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t);
    h.set_unavailable(0, vec![Unavailable::Paused, Unavailable::OutsideSchedule]);
    let job = h.submit("x86_64", 256, 1);
    for _ in 0..10 {
        h.step(1);
    }
    // The job matches and a slot is free: only the owner's conditions hold it back.
    assert_eq!(h.volunteers[0].free_slots(), 1);
    assert_eq!(h.coordinator.job(&job).unwrap().held(), 0);
    assert!(h.ran(&job).is_empty());
    let state = h.volunteers[0].state(&job).cloned();
    assert!(
        matches!(state, Some(volunteer::State::Waiting { why: Some(ref w), .. })
            if w == "not taking work: paused by its owner, outside its schedule"),
        "{state:?}"
    );
    // One reason gone is not enough.
    h.set_unavailable(0, vec![Unavailable::OutsideSchedule]);
    h.step(1);
    h.step(1);
    assert_eq!(h.coordinator.job(&job).unwrap().held(), 0);
    // Available again: it claims at once, without waiting for a retry.
    h.set_unavailable(0, vec![]);
    assert!(matches!(
        h.volunteers[0].state(&job),
        Some(volunteer::State::Claiming { .. })
    ));
    h.step(1);
    h.step(1);
    assert_eq!(h.ran(&job), vec![v]);
}

#[test]
fn a_job_its_owner_stops_goes_to_another_volunteer() {
    let mut h = Harness::new();
    let t = h.trust_all();
    let a = h.add_volunteer(1, caps(&["x86_64"], 1024, 1), t.clone());
    let b = h.add_volunteer(2, caps(&["x86_64"], 1024, 1), t);
    h.set_unavailable(1, vec![Unavailable::OverLoadLimit]);
    let job = h.submit("x86_64", 256, 1);
    h.step(1);
    assert_eq!(h.coordinator.job(&job).unwrap().leases[0].node, a);
    // `barn pause --stop` on A: no new claims, and its VM is cancelled, which the runner
    // reports as an infrastructure error. B's load has come down meanwhile.
    h.set_unavailable(0, vec![Unavailable::Paused]);
    h.fail_with_error.insert(a);
    h.set_unavailable(1, vec![]);
    for _ in 0..4 {
        h.step(1);
    }
    assert_eq!(
        h.coordinator.job(&job).unwrap().leases[0].state,
        coordinator::LeaseState::Failed
    );
    assert_eq!(h.ran(&job), vec![b]);
    assert_eq!(h.volunteers[0].state(&job), Some(&volunteer::State::Done));
}
