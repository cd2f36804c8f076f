//! Protocol scenarios on the in-memory farm ([`super::sim`]): minutes of a farm's life in
//! milliseconds, each asserting what a user of `barn job` or `barn verify` would check.

use barn_protocol::message::*;
use barn_protocol::operator::{OperatorCert, OperatorId};
use barn_protocol::settlement::VerdictKind;
use barn_protocol::{NodeId, Refusal, SecretKey, Signed};

use super::sim::Sim;
use super::{Acceptance, Topic};
use crate::net::codec::{Request, Response};
use crate::sched::coordinator::{LEASE_OVERHEAD_SECS, LEASE_SECS, LeaseState};
use crate::view::Event;

const C: usize = 0;

/// A coordinator (not volunteering) and `n` volunteers with one slot each.
fn farm(n: u8) -> Sim {
    let mut sim = Sim::new();
    sim.add(1, 0);
    for i in 0..n {
        sim.add(10 + i, 1);
    }
    sim
}

fn settled(sim: &Sim, job: &JobId) -> bool {
    sim.settlement(C, job).is_some()
}

fn lease_states(sim: &Sim, job: &JobId) -> Vec<LeaseState> {
    sim.nodes[C]
        .core()
        .coordinator()
        .job(job)
        .map(|j| j.leases.iter().map(|l| l.state).collect())
        .unwrap_or_default()
}

fn expired_any(sim: &Sim) -> bool {
    sim.saw(C, |e| matches!(e, Event::LeaseExpired { .. }))
}

#[test]
fn volunteers_arriving_minutes_apart_settle_within_seconds_of_the_last() {
    let mut sim = farm(2);
    let job = sim.submit(C, 3, |_| {});
    // Two volunteers build and commit; the third replica has nobody.
    assert!(sim.run_until(60, |s| {
        lease_states(s, &job)
            .iter()
            .filter(|l| **l == LeaseState::Committed)
            .count()
            == 2
    }));
    let waiting = sim.nodes[C].core().waiting(&job, sim.now());
    assert_eq!(
        waiting.as_deref(),
        Some("waiting for 1 more volunteer for x86_64")
    );
    // Minutes later: committed leases are kept without heartbeats.
    sim.run_for(300);
    assert!(!expired_any(&sim), "a committed lease expired");
    assert!(!settled(&sim, &job));
    let third = sim.add(20, 1);
    let joined = sim.now();
    assert!(sim.run_until(60, |s| settled(s, &job)), "never settled");
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.verdict, VerdictKind::Reproducible);
    assert_eq!(s.replicas.len(), 3);
    assert!(s.replicas.iter().any(|r| r.node == sim.nodes[third].id()));
    // The third builds in 5 s; settlement follows within seconds of its commitment.
    let took = sim.now() - joined;
    assert!(
        took <= 5 + 5 + 3,
        "settled {took}s after the third volunteer joined"
    );
    assert!(!expired_any(&sim));
    // The first two were waiting in held polls: they hear of the reveal at once, and the
    // job settles a few network delays after the last commitment.
    let third_id = sim.nodes[third].id().to_string();
    let committed = sim
        .when(
            C,
            |e| matches!(e, Event::LeaseCommitted { node, .. } if *node == third_id),
        )
        .unwrap();
    let settled_at = sim
        .when(C, |e| matches!(e, Event::JobSettled { .. }))
        .unwrap();
    assert!(
        settled_at - committed <= 10 * sim.delay_ms,
        "settled {} ms after the last commitment",
        settled_at - committed
    );
}

#[test]
fn a_finished_replica_is_not_expired_while_it_waits_for_the_reveal() {
    let mut sim = farm(1);
    let job = sim.submit(C, 2, |_| {});
    sim.run_for(10 * LEASE_SECS);
    assert_eq!(lease_states(&sim, &job), vec![LeaseState::Committed]);
    // The volunteer's result waits in its outbox, not lost.
    assert_eq!(sim.nodes[1].core().outbox().len(), 1);
}

#[test]
fn never_more_grants_than_replicas_and_all_distinct() {
    let mut sim = farm(5);
    let job = sim.submit(C, 3, |_| {});
    assert!(sim.run_until(120, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 3);
    let nodes: std::collections::BTreeSet<NodeId> = s.replicas.iter().map(|r| r.node).collect();
    assert_eq!(nodes.len(), 3);
    let leases = lease_states(&sim, &job);
    assert_eq!(leases.len(), 3, "{leases:?}");
}

#[test]
fn a_vanished_volunteers_lease_expires_and_goes_to_the_next_with_its_variant() {
    let mut sim = farm(1);
    sim.nodes[1].runner.secs = 120;
    let job = sim.submit(C, 2, |j| j.spec.vary = vec!["timezone".into()]);
    assert!(sim.run_until(20, |s| lease_states(s, &job).len() == 1));
    let first_variant = sim.nodes[C].core().coordinator().job(&job).unwrap().leases[0].variant;
    sim.kill(1);
    sim.run_for(LEASE_SECS + 5);
    assert!(expired_any(&sim));
    let a = sim.add(30, 1);
    let b = sim.add(31, 1);
    assert!(sim.run_until(120, |s| settled(s, &job)), "never settled");
    let s = sim.settlement(C, &job).unwrap();
    let nodes: Vec<NodeId> = s.replicas.iter().map(|r| r.node).collect();
    assert!(nodes.contains(&sim.nodes[a].id()) && nodes.contains(&sim.nodes[b].id()));
    // The replacement took over the lost lease's variant: both variants are built.
    let mut variants: Vec<u32> = s.replicas.iter().map(|r| r.variant).collect();
    variants.sort();
    assert_eq!(variants, vec![0, 1]);
    assert!(variants.contains(&first_variant));
    // Both vary as their variant says, and the verdict explains the split.
    assert_eq!(s.verdict, VerdictKind::Reproducible);
}

#[test]
fn an_infrastructure_error_frees_the_replica_for_another_node() {
    let mut sim = farm(2);
    sim.nodes[1].runner.error = true;
    let job = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(120, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 1);
    assert_eq!(s.replicas[0].node, sim.nodes[2].id());
    assert!(lease_states(&sim, &job).contains(&LeaseState::Failed));
}

#[test]
fn endless_heartbeats_do_not_keep_a_lease_past_its_cap() {
    let mut sim = farm(1);
    sim.nodes[1].runner.hang = true;
    let job = sim.submit(C, 1, |j| j.spec.timeout_secs = 60);
    assert!(sim.run_until(20, |s| lease_states(s, &job) == vec![LeaseState::Running]));
    // Heartbeats go on every 5 s; the lease still ends at its cap.
    sim.run_for(60 + LEASE_OVERHEAD_SECS + 5);
    assert_eq!(lease_states(&sim, &job)[0], LeaseState::Expired);
    // A retried claim from the same node does not renew it either.
    let claim = Signed::sign(
        Claim {
            job,
            node: sim.nodes[1].id(),
            accel: Accel::Tcg,
            time: sim.now(),
            operator_cert: None,
        },
        &sim.nodes[1].cfg.key,
    );
    let answer = sim.request(1, C, Request::Claim(claim.to_bytes()));
    let Response::Grant(g) = answer else {
        panic!("no grant: {answer:?}")
    };
    let g = Signed::<Grant>::from_bytes(&g).unwrap();
    // Its old lease is gone; it may get a fresh one, with a fresh cap.
    if let GrantDecision::Granted { expires, .. } = g.message().decision {
        assert!(expires <= sim.now() + LEASE_SECS);
    }
}

/// A volunteer's result for `job` from its own store.
fn own_result(sim: &Sim, i: usize, job: &JobId) -> Vec<u8> {
    sim.nodes[i]
        .db
        .list_results(job)
        .unwrap()
        .into_iter()
        .find(|r| r.node == sim.nodes[i].id())
        .expect("the node kept its result")
        .envelope
}

#[test]
fn a_result_sent_twice_counts_once_and_a_second_one_for_the_same_lease_is_refused() {
    let mut sim = farm(2);
    let job = sim.submit(C, 2, |_| {});
    assert!(sim.run_until(60, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 2);
    // The same signed result again: after settlement it is late, never a third replica.
    let again = own_result(&sim, 1, &job);
    let answer = sim.request(1, C, Request::Result(again));
    assert_eq!(answer, Response::Refused(Refusal::Settled));
    assert_eq!(sim.settlement(C, &job).unwrap().replicas.len(), 2);
}

#[test]
fn a_result_without_a_lease_is_refused_and_never_counted() {
    let mut sim = farm(2);
    let outsider = sim.add(40, 0);
    sim.nodes[1].runner.secs = 30;
    sim.nodes[2].runner.secs = 30;
    let job = sim.submit(C, 2, |_| {});
    sim.run_for(3);
    // An outsider who holds no lease forges a commitment and a result.
    let key = sim.nodes[outsider].cfg.key.clone();
    let node = key.node_id();
    let lease = LeaseId::random();
    let commit = Signed::sign(
        Commitment {
            job,
            lease,
            node,
            digest: ContentHash::of(b"x"),
            time: sim.now(),
            provenance_sig: None,
        },
        &key,
    );
    let answer = sim.request(outsider, C, Request::Commit(commit.to_bytes()));
    assert_eq!(answer, Response::Refused(Refusal::UnknownLease));
    assert!(sim.run_until(120, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert!(s.replicas.iter().all(|r| r.node != node));
}

use barn_protocol::ContentHash;

#[test]
fn a_result_claiming_another_variation_than_its_lease_is_refused() {
    let mut sim = farm(3);
    // Node 2 builds variant 0 or 1 but claims it varied the timezone and the umask.
    sim.nodes[2].runner.lie_variation = Some(
        [("umask".to_string(), "0002".to_string())]
            .into_iter()
            .collect(),
    );
    let job = sim.submit(C, 2, |j| j.spec.vary = vec!["timezone".into()]);
    assert!(sim.run_until(200, |s| settled(s, &job)), "never settled");
    let s = sim.settlement(C, &job).unwrap();
    assert!(
        s.replicas.iter().all(|r| r.node != sim.nodes[2].id()),
        "the liar's result counted"
    );
}

#[test]
fn a_copy_committed_after_settlement_changes_neither_verdict_nor_reputation() {
    let mut sim = farm(2);
    sim.nodes[2].runner.secs = 100;
    let job = sim.submit(C, 2, |j| j.expires = j.created + 60);
    // Only one replica in time: the job expires and settles without a verdict.
    assert!(sim.run_until(120, |s| settled(s, &job)));
    let before = sim.settlement(C, &job).unwrap();
    assert_eq!(before.verdict, VerdictKind::Pending);
    // The slow one finishes later: its result is kept as late.
    sim.run_for(100);
    assert!(sim.saw(C, |e| matches!(e, Event::ResultLate { .. })));
    assert_eq!(sim.settlement(C, &job).unwrap(), before);
    let late = sim.nodes[2].id();
    assert_eq!(sim.nodes[C].db.votes_on(&job, &late).unwrap(), 0);
    assert!(sim.nodes[C].db.result_is_late(&job, &late).unwrap());
}

#[test]
fn reputation_is_counted_once_per_job_per_node() {
    let mut sim = farm(3);
    sim.nodes[3].runner.files = vec![("out/hello.txt".into(), b"other\n".to_vec())];
    let job = sim.submit(C, 3, |_| {});
    assert!(sim.run_until(120, |s| settled(s, &job)));
    let liar = sim.nodes[3].id();
    assert_eq!(sim.nodes[C].core().reputation_of(&liar).disagreements, 1);
    assert_eq!(sim.nodes[C].db.votes_on(&job, &liar).unwrap(), 1);
    // A restart reads the counts back and counts nothing again.
    sim.restart(C);
    sim.run_for(30);
    assert_eq!(sim.nodes[C].core().reputation_of(&liar).disagreements, 1);
    let rec = sim.nodes[C].db.get_node(&liar).unwrap().unwrap();
    assert_eq!(rec.disagreements, 1);
}

#[test]
fn one_operator_with_three_nodes_gets_one_replica() {
    let mut sim = Sim::new();
    sim.add(1, 0);
    let op = SecretKey::from_seed([90; 32]);
    for seed in [50u8, 51, 52] {
        let i = sim.add(seed, 1);
        let node = sim.nodes[i].id();
        let cert = Signed::sign(
            OperatorCert {
                operator: OperatorId(op.public()),
                node,
                issued: sim.now() - 10,
                expires: sim.now() + 86_400,
            },
            &op,
        )
        .to_bytes();
        let mut cfg = sim.nodes[i].cfg.clone();
        cfg.operator_cert = Some(cert);
        sim.nodes[i].cfg = cfg.clone();
        sim.nodes[i].core = Some(super::Core::new(cfg));
    }
    let independent = sim.add(60, 1);
    let job = sim.submit(C, 3, |_| {});
    sim.run_for(60);
    let j = sim.nodes[C].core().coordinator().job(&job).unwrap();
    let operators: Vec<OperatorId> = j.leases.iter().map(|l| l.operator).collect();
    assert_eq!(j.leases.len(), 2, "{operators:?}");
    assert!(operators.contains(&OperatorId(op.public())));
    assert!(operators.contains(&OperatorId::of_node(&sim.nodes[independent].id())));
    assert!(!settled(&sim, &job));
}

#[test]
fn a_forged_operator_certificate_is_refused() {
    let mut sim = farm(0);
    let i = sim.add(70, 1);
    let node = sim.nodes[i].id();
    let op = SecretKey::from_seed([91; 32]);
    // Signed by the node itself, claiming the operator.
    let forged = Signed::sign(
        OperatorCert {
            operator: OperatorId(op.public()),
            node,
            issued: sim.now(),
            expires: sim.now() + 100,
        },
        &sim.nodes[i].cfg.key,
    )
    .to_bytes();
    let job = sim.submit(C, 1, |_| {});
    let claim = Signed::sign(
        Claim {
            job,
            node,
            accel: Accel::Tcg,
            time: sim.now(),
            operator_cert: Some(serde_bytes::ByteBuf::from(forged)),
        },
        &sim.nodes[i].cfg.key,
    );
    let Response::Grant(g) = sim.request(i, C, Request::Claim(claim.to_bytes())) else {
        panic!("no grant")
    };
    let g = Signed::<Grant>::from_bytes(&g).unwrap();
    assert!(matches!(
        &g.message().decision,
        GrantDecision::Denied {
            refusal: Some(Refusal::BadCertificate { .. }),
            ..
        }
    ));
}

#[test]
fn a_claim_signed_by_another_node_or_far_from_our_clock_is_refused() {
    let mut sim = farm(1);
    let job = sim.submit(C, 1, |j| j.spec.replicas = 1);
    let key = sim.nodes[1].cfg.key.clone();
    let stale = Signed::sign(
        Claim {
            job,
            node: key.node_id(),
            accel: Accel::Tcg,
            time: sim.now() - 1000,
            operator_cert: None,
        },
        &key,
    );
    let Response::Grant(g) = sim.request(1, C, Request::Claim(stale.to_bytes())) else {
        panic!("no grant")
    };
    let g = Signed::<Grant>::from_bytes(&g).unwrap();
    assert!(matches!(
        &g.message().decision,
        GrantDecision::Denied {
            refusal: Some(Refusal::ClockSkew { secs: 1000 }),
            ..
        }
    ));
    // Sent by node 1, signed by node 2's key.
    let other = sim.add(80, 0);
    let k2 = sim.nodes[other].cfg.key.clone();
    let forged = Signed::sign(
        Claim {
            job,
            node: k2.node_id(),
            accel: Accel::Tcg,
            time: sim.now(),
            operator_cert: None,
        },
        &k2,
    );
    assert_eq!(
        sim.request(1, C, Request::Claim(forged.to_bytes())),
        Response::Refused(Refusal::WrongSigner)
    );
}

#[test]
fn no_result_is_taken_before_every_replica_committed() {
    let mut sim = farm(2);
    sim.nodes[2].runner.secs = 60;
    let job = sim.submit(C, 2, |_| {});
    sim.run_for(20);
    // Node 1 committed; its result waits: not yet.
    assert_eq!(
        lease_states(&sim, &job)
            .iter()
            .filter(|l| **l == LeaseState::Committed)
            .count(),
        1
    );
    let result = own_result(&sim, 1, &job);
    assert_eq!(
        sim.request(1, C, Request::Result(result)),
        Response::Refused(Refusal::NotYet)
    );
    assert!(sim.run_until(120, |s| settled(s, &job)));
}

#[test]
fn a_tie_gets_one_more_replica_when_the_job_allows_it() {
    let mut sim = farm(3);
    sim.nodes[2].runner.files = vec![("out/hello.txt".into(), b"two\n".to_vec())];
    sim.nodes[3].runner.secs = 30;
    let job = sim.submit(C, 2, |j| j.spec.tiebreak = true);
    assert!(sim.run_until(200, |s| settled(s, &job)), "never settled");
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 3);
    assert_eq!(s.verdict, VerdictKind::Differs);
}

#[test]
fn a_volunteer_killed_after_committing_delivers_after_it_restarts() {
    let mut sim = farm(3);
    sim.nodes[3].runner.secs = 200;
    let job = sim.submit(C, 3, |_| {});
    assert!(sim.run_until(60, |s| {
        lease_states(s, &job)
            .iter()
            .filter(|l| **l == LeaseState::Committed)
            .count()
            == 2
    }));
    sim.kill(2);
    sim.run_for(120);
    sim.restart(2);
    assert!(sim.run_until(300, |s| settled(s, &job)), "never settled");
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 3);
    assert!(s.replicas.iter().any(|r| r.node == sim.nodes[2].id()));
    sim.run_for(1);
    let left: Vec<_> = sim.nodes[2]
        .core()
        .outbox()
        .iter()
        .map(|o| (o.job, o.committed, o.retry_at, o.in_flight))
        .collect();
    assert!(left.is_empty(), "{left:?} now {}", sim.now());
}

#[test]
fn a_coordinator_restarted_at_every_step_still_settles_every_result_once() {
    // Restart the coordinator at each second of the job's life in turn.
    for at in [1u64, 3, 5, 6, 7, 9, 12] {
        let mut sim = farm(3);
        sim.nodes[3].runner.secs = 8;
        let job = sim.submit(C, 3, |_| {});
        sim.run_for(at);
        sim.restart(C);
        assert!(
            sim.run_until(300, |s| settled(s, &job)),
            "a restart at {at}s: never settled"
        );
        let s = sim.settlement(C, &job).unwrap();
        assert_eq!(s.replicas.len(), 3, "a restart at {at}s");
        assert_eq!(s.verdict, VerdictKind::Reproducible, "a restart at {at}s");
    }
}

#[test]
fn a_coordinator_down_while_a_volunteer_finishes_gets_the_result_when_back() {
    let mut sim = farm(2);
    let job = sim.submit(C, 2, |_| {});
    sim.run_for(2);
    sim.kill(C);
    sim.run_for(30);
    sim.restart(C);
    assert!(sim.run_until(120, |s| settled(s, &job)));
    assert_eq!(sim.settlement(C, &job).unwrap().replicas.len(), 2);
}

#[test]
fn observers_keep_only_settled_results_from_gossip() {
    let mut sim = farm(2);
    let observer = sim.add(99, 0);
    let job = sim.submit(C, 2, |_| {});
    assert!(sim.run_until(60, |s| settled(s, &job)));
    sim.run_for(2);
    let stored = sim.nodes[observer].db.list_results(&job).unwrap();
    assert_eq!(stored.len(), 2);
    assert!(sim.nodes[observer].db.settlement(&job).unwrap().is_some());
    // A result nobody leased, gossiped: ignored, never stored.
    let liar = SecretKey::from_seed([123; 32]);
    let mut r: BuildResult = Signed::<BuildResult>::from_bytes(&stored[0].envelope)
        .unwrap()
        .message()
        .clone();
    r.node = liar.node_id();
    let forged = Signed::sign(r, &liar).to_bytes();
    // Published by the liar: only the job's coordinator publishes its results.
    assert_eq!(
        sim.gossip(observer, liar.node_id(), Topic::Results, forged.clone()),
        Acceptance::Reject("not_from_coordinator")
    );
    // Even from the coordinator, a result no settlement names is not kept or relayed.
    let c = sim.nodes[C].id();
    assert_eq!(
        sim.gossip(observer, c, Topic::Results, forged),
        Acceptance::Ignore("not_settled")
    );
    assert_eq!(sim.nodes[observer].db.list_results(&job).unwrap().len(), 2);
}

#[test]
fn a_settlement_not_signed_by_the_coordinator_is_rejected() {
    let mut sim = farm(2);
    let observer = sim.add(99, 0);
    let job = sim.submit(C, 2, |_| {});
    sim.run_for(1);
    let liar = SecretKey::from_seed([124; 32]);
    let forged = Signed::sign(
        barn_protocol::settlement::Settlement {
            job,
            replicas: vec![],
            verdict: VerdictKind::Reproducible,
            root: None,
            time: sim.now(),
        },
        &liar,
    )
    .to_bytes();
    assert_eq!(
        sim.gossip(observer, liar.node_id(), Topic::Settlements, forged.clone()),
        Acceptance::Reject("not_from_coordinator")
    );
    let c = sim.nodes[C].id();
    assert_eq!(
        sim.gossip(observer, c, Topic::Settlements, forged),
        Acceptance::Reject("bad_settlement")
    );
    assert!(sim.nodes[observer].db.settlement(&job).unwrap().is_none());
}

#[test]
fn jobs_go_only_to_trusting_volunteers_with_the_arch() {
    let mut sim = Sim::new();
    sim.add(1, 0);
    let untrusting = sim.add(2, 1);
    sim.nodes[untrusting].cfg.trust.submitters.clear();
    let cfg = sim.nodes[untrusting].cfg.clone();
    sim.nodes[untrusting].core = Some(super::Core::new(cfg));
    let arm = sim.add(3, 1);
    let mut cfg = sim.nodes[arm].cfg.clone();
    cfg.caps.archs = vec!["aarch64".into()];
    sim.nodes[arm].cfg = cfg.clone();
    sim.nodes[arm].core = Some(super::Core::new(cfg));
    let ok = sim.add(4, 1);
    let job = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(60, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas[0].node, sim.nodes[ok].id());
}

#[test]
fn a_volunteer_that_is_not_taking_work_claims_nothing_until_it_is_again() {
    let mut sim = farm(1);
    sim.input(1, super::Input::Availability(vec![Unavailable::Paused]));
    let job = sim.submit(C, 1, |_| {});
    sim.run_for(30);
    assert!(lease_states(&sim, &job).is_empty());
    sim.input(1, super::Input::Availability(vec![]));
    assert!(sim.run_until(30, |s| settled(s, &job)));
}

#[test]
fn a_lossy_network_still_settles() {
    let mut sim = farm(3);
    sim.loss_per_mille = 200;
    let job = sim.submit(C, 3, |_| {});
    assert!(sim.run_until(600, |s| settled(s, &job)), "never settled");
    assert_eq!(sim.settlement(C, &job).unwrap().replicas.len(), 3);
}

#[test]
fn a_volunteer_restarted_at_every_step_still_gets_the_job_settled() {
    // Restart volunteer 1 at each second of the job's life in turn: before its claim,
    // while running (the VM dies with it), after finishing, after committing.
    for at in [0u64, 1, 3, 5, 6, 7, 9] {
        let mut sim = farm(3);
        sim.nodes[3].runner.secs = 8;
        let job = sim.submit(C, 3, |_| {});
        sim.run_for(at);
        sim.restart(1);
        assert!(
            sim.run_until(300, |s| settled(s, &job)),
            "a restart at {at}s: never settled"
        );
        let s = sim.settlement(C, &job).unwrap();
        assert_eq!(s.replicas.len(), 3, "a restart at {at}s");
        assert_eq!(s.verdict, VerdictKind::Reproducible, "a restart at {at}s");
        // Whatever it had finished was delivered, and nothing is left to send.
        sim.run_for(1);
        assert!(
            sim.nodes[1].core().outbox().is_empty(),
            "a restart at {at}s"
        );
    }
}

#[test]
fn a_partition_longer_than_a_lease_regrants_and_counts_the_late_result_once() {
    let mut sim = farm(3);
    sim.nodes[1].runner.secs = 60;
    let job = sim.submit(C, 2, |_| {});
    assert!(sim.run_until(10, |s| lease_states(s, &job).len() == 2));
    let cut_off = sim.nodes[C]
        .core()
        .coordinator()
        .job(&job)
        .unwrap()
        .leases
        .iter()
        .position(|l| l.node == sim.nodes[1].id())
        .is_some();
    assert!(cut_off, "node 1 holds a lease");
    sim.cut.insert((C, 1));
    sim.run_for(LEASE_SECS + 10);
    assert!(expired_any(&sim));
    assert!(sim.run_until(120, |s| settled(s, &job)));
    sim.cut.clear();
    sim.run_for(120);
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 2);
    assert!(s.replicas.iter().all(|r| r.node != sim.nodes[1].id()));
    let late = sim.nodes[1].id();
    assert!(sim.nodes[C].db.result_is_late(&job, &late).unwrap());
    assert_eq!(sim.nodes[C].db.votes_on(&job, &late).unwrap(), 0);
}

#[test]
fn a_job_its_owner_stops_goes_to_another_volunteer() {
    let mut sim = farm(2);
    sim.nodes[1].runner.secs = 100;
    sim.input(2, super::Input::Availability(vec![Unavailable::Paused]));
    let job = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(20, |s| !sim_running(s, 1).is_empty()));
    // `barn pause --stop` on node 1: its replica is handed back at once.
    sim.input(1, super::Input::Availability(vec![Unavailable::Paused]));
    sim.input(1, super::Input::StopRunning);
    sim.run_for(2);
    assert!(lease_states(&sim, &job).contains(&LeaseState::Failed));
    assert!(!expired_any(&sim));
    sim.input(2, super::Input::Availability(vec![]));
    assert!(sim.run_until(60, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas[0].node, sim.nodes[2].id());
}

fn sim_running(sim: &Sim, i: usize) -> Vec<JobId> {
    sim.nodes[i].core().running().keys().copied().collect()
}

#[test]
fn heartbeats_keep_only_their_own_nodes_lease() {
    let mut sim = farm(2);
    sim.nodes[1].runner.secs = 100;
    let job = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(20, |s| lease_states(s, &job) == vec![LeaseState::Running]));
    let lease = sim.nodes[C].core().coordinator().job(&job).unwrap().leases[0].id;
    // Node 2 heartbeats node 1's lease: refused, and it does not keep the lease alive.
    let key = sim.nodes[2].cfg.key.clone();
    let beat = |sim: &mut Sim| {
        let hb = Heartbeat {
            job,
            lease,
            phase: Phase::Running,
            log_bytes: 0,
            time: sim.now(),
        };
        sim.request(2, C, Request::Heartbeat(Signed::sign(hb, &key).to_bytes()))
    };
    assert_eq!(beat(&mut sim), Response::Refused(Refusal::UnknownLease));
    sim.kill(1);
    for _ in 0..10 {
        beat(&mut sim);
        sim.run_for(5);
    }
    assert_eq!(lease_states(&sim, &job)[0], LeaseState::Expired);
}

#[test]
fn a_result_that_does_not_match_its_commitment_loses_the_lease() {
    let mut sim = farm(3);
    sim.nodes[2].runner.secs = 30;
    let job = sim.submit(C, 2, |_| {});
    assert!(sim.run_until(20, |s| {
        lease_states(s, &job).contains(&LeaseState::Committed)
    }));
    // Node 1 committed to its root; now it sends a result with another root.
    let mine = own_result(&sim, 1, &job);
    let mut r = Signed::<BuildResult>::from_bytes(&mine)
        .unwrap()
        .message()
        .clone();
    r.manifest = barn_protocol::manifest::Manifest::new(vec![]);
    r.manifest_root = r.manifest.root();
    let other = Signed::sign(r, &sim.nodes[1].cfg.key).to_bytes();
    // Results are not taken yet, but a lie is refused whatever the moment.
    assert_eq!(
        sim.request(1, C, Request::Result(other)),
        Response::Refused(Refusal::CommitmentMismatch)
    );
    assert!(lease_states(&sim, &job).contains(&LeaseState::Failed));
    assert!(sim.run_until(200, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert!(s.replicas.iter().all(|r| r.node != sim.nodes[1].id()));
}

#[test]
fn poorly_reputed_nodes_wait_while_reputable_ones_take_the_replicas() {
    let mut sim = farm(2);
    // Node 1 disagreed with the majority before: 0 agreements, 2 disagreements.
    let liar = sim.nodes[1].id();
    let core = sim.nodes[C].core.as_mut().unwrap();
    core.reputation.insert(
        liar,
        crate::sched::coordinator::Reputation {
            agreements: 0,
            disagreements: 2,
        },
    );
    let job = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(60, |s| settled(s, &job)));
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas[0].node, sim.nodes[2].id());
    // With no reputable node about, it gets the job after the window.
    let job2 = sim.submit(C, 2, |_| {});
    assert!(sim.run_until(120, |s| settled(s, &job2)));
    let s = sim.settlement(C, &job2).unwrap();
    assert!(s.replicas.iter().any(|r| r.node == liar));
}

#[test]
fn a_tie_break_survives_a_coordinator_restart() {
    let mut sim = farm(3);
    sim.nodes[2].runner.files = vec![("out/hello.txt".into(), b"two\n".to_vec())];
    sim.nodes[3].runner.secs = 40;
    let job = sim.submit(C, 2, |j| j.spec.tiebreak = true);
    // Nodes 1 and 2 disagree: one more replica is asked for.
    assert!(sim.run_until(30, |s| {
        s.nodes[C]
            .core()
            .coordinator()
            .job(&job)
            .is_some_and(|j| j.extra == 1)
    }));
    sim.restart(C);
    assert_eq!(
        sim.nodes[C].core().coordinator().job(&job).unwrap().extra,
        1,
        "the tie-break is remembered"
    );
    assert!(sim.run_until(200, |s| settled(s, &job)), "never settled");
    let s = sim.settlement(C, &job).unwrap();
    assert_eq!(s.replicas.len(), 3);
    assert_eq!(s.verdict, VerdictKind::Differs);
}

/// A job announcement made by the job's coordinator, as gossip data.
fn announcement(envelope: Vec<u8>) -> Vec<u8> {
    barn_protocol::cbor::to_vec(&JobAnnounce {
        job: envelope,
        sent: 0,
    })
}

#[test]
fn a_job_announced_by_anyone_but_its_coordinator_is_rejected_and_not_stored() {
    let mut sim = farm(2);
    let observer = sim.add(99, 0);
    let job = sim.submit(C, 2, |_| {});
    let envelope = sim.nodes[C].db.get_job(&job).unwrap().unwrap().envelope;
    let c = sim.nodes[C].id();
    let stranger = SecretKey::from_seed([77; 32]).node_id();
    let fresh = sim.add(98, 0);
    // Re-wrapped by a stranger: rejected before it is stored, on a node that never saw it.
    assert_eq!(
        sim.gossip(fresh, stranger, Topic::Jobs, announcement(envelope.clone())),
        Acceptance::Reject("not_from_coordinator")
    );
    assert!(sim.nodes[fresh].db.get_job(&job).unwrap().is_none());
    // Replayed by a stranger to a node that knows the job: rejected too.
    sim.run_for(1);
    assert!(sim.nodes[observer].db.get_job(&job).unwrap().is_some());
    assert_eq!(
        sim.gossip(
            observer,
            stranger,
            Topic::Jobs,
            announcement(envelope.clone())
        ),
        Acceptance::Reject("not_from_coordinator")
    );
    // From its coordinator, the same bytes are a re-announcement: accepted.
    assert_eq!(
        sim.gossip(fresh, c, Topic::Jobs, announcement(envelope)),
        Acceptance::Accept
    );
    assert!(sim.nodes[fresh].db.get_job(&job).unwrap().is_some());
    let counts = sim.nodes[observer].core.as_ref().unwrap().counts().clone();
    assert_eq!(
        counts.rejected.get(&("jobs", "not_from_coordinator")),
        Some(&1)
    );
}

#[test]
fn jobs_and_adverts_from_thousands_of_fresh_keys_stay_bounded() {
    let mut sim = farm(0);
    let observer = sim.add(99, 0);
    let extra = 20;
    for i in 0..(super::MAX_UNTRUSTED_JOBS + extra) {
        let seed = [(i % 251) as u8, (i / 251) as u8, 1, 2].repeat(8);
        let key = SecretKey::from_seed(seed.try_into().unwrap());
        let job = sim.job(key.node_id(), 1);
        let envelope = Signed::sign(job, &key).to_bytes();
        let from = key.node_id();
        assert_eq!(
            sim.gossip(observer, from, Topic::Jobs, announcement(envelope)),
            Acceptance::Accept
        );
    }
    let core = sim.nodes[observer].core.as_ref().unwrap();
    assert_eq!(core.jobs.len(), super::MAX_UNTRUSTED_JOBS);
    assert_eq!(core.counts().forgotten_jobs, extra as u64);
    let stored = sim.nodes[observer].db.list_jobs().unwrap().len();
    assert_eq!(stored, super::MAX_UNTRUSTED_JOBS, "jobs in the database");

    let max = crate::store::ops::MAX_ADVERTS;
    let now = sim.now();
    for i in 0..(max + extra) {
        let seed = [(i % 251) as u8, (i / 251) as u8, 3, 4].repeat(8);
        let key = SecretKey::from_seed(seed.try_into().unwrap());
        let advert = NodeAdvert {
            node: key.node_id(),
            version: "test".into(),
            archs: vec![],
            cpus: 1,
            memory_bytes: 1 << 30,
            free_slots: 1,
            total_slots: 1,
            images: Default::default(),
            addrs: vec![],
            time: now,
            expires: now + 60,
            unavailable: vec![],
        };
        let data = Signed::sign(advert, &key).to_bytes();
        assert_eq!(
            sim.gossip(observer, key.node_id(), Topic::Adverts, data.clone()),
            Acceptance::Accept
        );
        if i == 0 {
            // Someone else's advert, relayed as if it were theirs: rejected.
            let other = SecretKey::from_seed([200; 32]).node_id();
            assert_eq!(
                sim.gossip(observer, other, Topic::Adverts, data),
                Acceptance::Reject("not_from_advertiser")
            );
        }
    }
    let nodes = sim.nodes[observer].db.list_nodes().unwrap().len();
    assert_eq!(nodes, max, "nodes known by their adverts in the database");
}

#[test]
fn jobs_past_retention_are_forgotten_but_not_while_running_here() {
    use crate::store::db::JobState;
    let mut sim = farm(2);
    let done = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(120, |s| settled(s, &done)));
    sim.nodes[1].runner.secs = 600;
    sim.nodes[2].runner.secs = 600;
    let busy = sim.submit(C, 1, |_| {});
    assert!(sim.run_until(60, |s| {
        (1..=2).any(|i| s.nodes[i].core().running().contains_key(&busy))
    }));
    let runner = (1..=2)
        .find(|&i| sim.nodes[i].core().running().contains_key(&busy))
        .expect("a volunteer runs the second job");
    let finished =
        |sim: &Sim, i: usize, id: &JobId| sim.nodes[i].db.get_job(id).unwrap().map(|r| r.state);
    assert_eq!(finished(&sim, C, &done), Some(JobState::Complete));
    // The sweep hands both to each node (the database only lists finished jobs; here the
    // running one is named too, to show the core keeps it).
    for i in [C, runner] {
        sim.input(i, super::Input::Forget(vec![done, busy]));
    }
    sim.run_for(1);
    assert!(sim.nodes[C].core().known(&done).is_none());
    assert!(sim.nodes[C].core().coordinator().job(&done).is_none());
    assert_eq!(finished(&sim, C, &done), None, "removed from the database");
    assert!(
        sim.nodes[runner].core().known(&busy).is_some(),
        "a job running here stays"
    );
    assert!(sim.nodes[runner].db.get_job(&busy).unwrap().is_some());
    // The open job stays in its coordinator's database whatever the core decided.
    assert_eq!(finished(&sim, C, &busy), Some(JobState::Open));
}
