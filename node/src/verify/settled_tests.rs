//! Tests of [`super::count`]: a coordinator (seed 0) settles a job; nodes 1.. build it.

use barn_protocol::SecretKey;
use barn_protocol::message::LeaseId;
use barn_protocol::operator::OperatorCert;
use barn_protocol::settlement::{SettledReplica, VerdictKind};

use super::*;
use crate::api::types::{JobView, LeaseView, ResultView};
use crate::verify::verdict::Kind;
use crate::verify::verdict::tests_support::{job, result};

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed([i; 32])
}

fn lease(i: u8) -> LeaseId {
    LeaseId(serde_bytes::ByteArray::new([i; 16]))
}

/// A job of three replicas that varies nothing, coordinated by key 0.
fn signed_job() -> Signed<Job> {
    let mut j = job(3);
    j.spec.vary.clear();
    Signed::sign(j, &key(50))
}

/// Node `i`'s signed result for lease `i`, with one file holding `content`.
fn built(job: &Signed<Job>, i: u8, content: &[u8]) -> Signed<BuildResult> {
    let mut r = result(&[("out/a", content)]);
    r.job = JobId::of(job);
    r.node = key(i).node_id();
    r.lease = Some(lease(i));
    Signed::sign(r, &key(i))
}

fn view(r: &Signed<BuildResult>) -> ResultView {
    ResultView {
        node: r.message().node.to_string(),
        status: "succeeded".into(),
        detail: None,
        manifest_root: String::new(),
        log_hash: String::new(),
        log_size: 0,
        total_ms: 0,
        boot_ms: 0,
        run_ms: 0,
        accel: String::new(),
        image_hash: String::new(),
        envelope: hex::encode(r.to_bytes()),
        provenance_sig: None,
        received: 0,
        late: false,
    }
}

fn lease_view(i: u8, state: &str) -> LeaseView {
    LeaseView {
        node: key(i).node_id().to_string(),
        granted_ms: None,
        state: state.into(),
        granted: 0,
        expires: 0,
    }
}

fn detail(
    job: &Signed<Job>,
    results: Vec<ResultView>,
    leases: Vec<LeaseView>,
    settlement: Option<Vec<u8>>,
) -> JobDetail {
    JobDetail {
        job: JobView {
            id: JobId::of(job).to_string(),
            image: "tiny-x86_64".into(),
            arch: "x86_64".into(),
            replicas: 3,
            state: "complete".into(),
            results: results.len(),
            succeeded: results.len(),
            created: 0,
            mine: false,
            submitter: String::new(),
            waiting: None,
            verdict: None,
        },
        submitted_ms: None,
        envelope: hex::encode(job.to_bytes()),
        leases,
        results,
        settlement: settlement.map(hex::encode),
    }
}

/// The replica a coordinator names for node `i`'s result, as its own operator.
fn replica(r: &Signed<BuildResult>, i: u8) -> SettledReplica {
    SettledReplica {
        lease: lease(i),
        node: key(i).node_id(),
        variant: 0,
        operator: OperatorId::of_node(&key(i).node_id()),
        cert: None,
        result: ContentHash::of(&r.to_bytes()),
    }
}

fn settle(job: &Signed<Job>, replicas: Vec<SettledReplica>, by: &SecretKey) -> Vec<u8> {
    Signed::sign(
        Settlement {
            job: JobId::of(job),
            replicas,
            verdict: VerdictKind::Reproducible,
            root: None,
            time: 1_000,
        },
        by,
    )
    .to_bytes()
}

/// Operator `op` certifies node `i` until `expires`.
fn cert(op: u8, i: u8, expires: u64) -> serde_bytes::ByteBuf {
    serde_bytes::ByteBuf::from(
        Signed::sign(
            OperatorCert {
                operator: OperatorId(key(op).public()),
                node: key(i).node_id(),
                issued: 500,
                expires,
            },
            &key(op),
        )
        .to_bytes(),
    )
}

fn whys(c: &Count) -> Vec<(String, String)> {
    c.refused
        .iter()
        .map(|r| (r.node.clone(), r.why.to_string()))
        .collect()
}

#[test]
fn only_results_the_settlement_names_count() {
    let job = signed_job();
    let [a, b, c] = [1, 2, 3].map(|i| built(&job, i, b"same"));
    // Node 4 never held a lease; its result was gossiped all the same.
    let stray = built(&job, 4, b"same");
    let mut late = view(&built(&job, 5, b"same"));
    late.late = true;
    let settlement = settle(
        &job,
        vec![replica(&a, 1), replica(&b, 2), replica(&c, 3)],
        &key(0),
    );
    let d = detail(
        &job,
        vec![
            view(&a),
            view(&a),
            view(&b),
            view(&stray),
            view(&c),
            late.clone(),
        ],
        vec![],
        Some(settlement),
    );
    let count = count(&d).unwrap();
    assert!(count.is_settled());
    let nodes: Vec<NodeId> = count.counted.iter().map(|c| c.node).collect();
    assert_eq!(nodes, [1, 2, 3].map(|i| key(i).node_id()));
    assert!(count.missing.is_empty());
    let why = whys(&count);
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(matches!(count.refused[0].why, Why::Duplicate));
    assert!(matches!(count.refused[1].why, Why::NotSettled));
    assert!(matches!(count.refused[2].why, Why::Late));
    let v = count.verdict(&Policy::default());
    assert_eq!(v.verdict, Kind::Reproducible, "{v:?}");
    assert_eq!((v.compared, v.agreeing_operators), (3, 3));
    assert_eq!(
        v.ignored[&key(4).node_id().to_string()],
        "the settlement does not name it"
    );

    // Three strays agreeing among themselves, not named: nothing to judge.
    let strays: Vec<_> = [6, 7, 8].map(|i| view(&built(&job, i, b"forged"))).into();
    let d = detail(
        &job,
        strays,
        vec![],
        Some(settle(&job, vec![replica(&a, 1)], &key(0))),
    );
    let count = super::count(&d).unwrap();
    assert!(count.counted.is_empty());
    assert_eq!(count.missing, vec![key(1).node_id()]);
    assert_eq!(count.verdict(&Policy::default()).verdict, Kind::Pending);
}

#[test]
fn a_settlement_not_signed_by_the_coordinator_is_refused() {
    let job = signed_job();
    let a = built(&job, 1, b"x");
    // Signed by node 1 itself, naming its own result.
    let forged = settle(&job, vec![replica(&a, 1)], &key(1));
    let err = count(&detail(&job, vec![view(&a)], vec![], Some(forged))).unwrap_err();
    assert!(
        matches!(
            err,
            CountError::Settlement(SettlementError::NotCoordinator { .. })
        ),
        "{err}"
    );
    let mut d = detail(&job, vec![view(&a)], vec![], None);
    d.settlement = Some("zz".into());
    assert!(matches!(count(&d), Err(CountError::SettlementNotHex)));
}

#[test]
fn a_named_result_that_contradicts_its_lease_does_not_count() {
    let mut j = job(3);
    j.spec.vary = vec!["timezone".into(), "umask".into()];
    let job = Signed::sign(j, &key(50));
    // Node 1 held variant 0 (nothing varied) but claims it varied the time zone, so that
    // its differing output would be "explained".
    let mut r = result(&[("out/a", b"liar")]);
    r.job = JobId::of(&job);
    r.node = key(1).node_id();
    r.lease = Some(lease(1));
    r.variation.insert("timezone".into(), "KST-14".into());
    let liar = Signed::sign(r, &key(1));
    let d = detail(
        &job,
        vec![view(&liar)],
        vec![],
        Some(settle(&job, vec![replica(&liar, 1)], &key(0))),
    );
    let count = count(&d).unwrap();
    assert!(count.counted.is_empty());
    assert!(
        matches!(
            &count.refused[0].why,
            Why::Contradicts(Mismatch::Variation { .. })
        ),
        "{:?}",
        whys(&count)
    );
    // Named under another node's lease.
    let a = built(&job, 2, b"x");
    let mut wrong = replica(&a, 2);
    wrong.lease = lease(9);
    let d = detail(
        &job,
        vec![view(&a)],
        vec![],
        Some(settle(&job, vec![wrong], &key(0))),
    );
    assert!(matches!(
        super::count(&d).unwrap().refused[0].why,
        Why::Contradicts(Mismatch::Lease { .. })
    ));
}

#[test]
fn operators_come_from_certificates_checked_at_the_settlements_time() {
    let job = signed_job();
    let rs = [1, 2, 3].map(|i| built(&job, i, b"same"));
    // Operator 20 runs nodes 1 and 2; node 3 is its own operator.
    let mut replicas: Vec<SettledReplica> =
        rs.iter().zip(1..).map(|(r, i)| replica(r, i)).collect();
    for (rep, i) in replicas.iter_mut().zip(1..).take(2) {
        rep.operator = OperatorId(key(20).public());
        rep.cert = Some(cert(20, i, 2_000));
    }
    let views: Vec<ResultView> = rs.iter().map(view).collect();
    let d = detail(
        &job,
        views.clone(),
        vec![],
        Some(settle(&job, replicas.clone(), &key(0))),
    );
    let c = count(&d).unwrap();
    assert_eq!(c.counted.len(), 3);
    assert_eq!(c.counted[0].operator, OperatorId(key(20).public()));
    let v = c.verdict(&Policy::default());
    assert_eq!((v.verdict, v.agreeing_operators), (Kind::Reproducible, 2));
    assert_eq!(v.operators.len(), 2);
    // Trusting operator 20 with a quorum of two: one trusted operator is not two.
    let policy = Policy {
        builders: [OperatorId(key(20).public()), OperatorId(key(21).public())].into(),
        quorum: 2,
    };
    assert_eq!(c.verdict(&policy).verdict, Kind::Unconfirmed);

    // Node 3 claimed for operator 20 without a certificate: the settlement's word is not
    // enough.
    let mut claimed = replicas.clone();
    claimed[2].operator = OperatorId(key(20).public());
    let d = detail(
        &job,
        views.clone(),
        vec![],
        Some(settle(&job, claimed, &key(0))),
    );
    let c = count(&d).unwrap();
    assert_eq!(c.counted.len(), 2);
    assert!(matches!(c.refused[0].why, Why::OtherOperator { .. }));

    // A certificate expired at the settlement's time (1000), or for another node.
    let mut expired = replicas.clone();
    expired[0].cert = Some(cert(20, 1, 900));
    expired[1].cert = Some(cert(20, 3, 2_000));
    let d = detail(&job, views, vec![], Some(settle(&job, expired, &key(0))));
    let c = count(&d).unwrap();
    assert_eq!(c.counted.len(), 1);
    let why = whys(&c);
    assert!(why[0].1.contains("expired at 900"), "{why:?}");
    assert!(why[1].1.contains("certifies node"), "{why:?}");
}

#[test]
fn before_settlement_only_finished_leases_count_one_per_node() {
    let job = signed_job();
    let [a, b, c, d4] = [1, 2, 3, 4].map(|i| built(&job, i, b"same"));
    let a_again = built(&job, 1, b"other");
    let leases = vec![
        lease_view(1, "done"),
        lease_view(2, "committed"),
        lease_view(3, "expired"),
        lease_view(4, "active"),
    ];
    let d = detail(
        &job,
        vec![view(&a), view(&a_again), view(&b), view(&c), view(&d4)],
        leases,
        None,
    );
    let count = count(&d).unwrap();
    assert!(!count.is_settled());
    let nodes: Vec<NodeId> = count.counted.iter().map(|c| c.node).collect();
    assert_eq!(nodes, vec![key(1).node_id(), key(2).node_id()]);
    assert!(matches!(count.refused[0].why, Why::Duplicate));
    assert!(matches!(count.refused[1].why, Why::NoLease));
    assert!(matches!(count.refused[2].why, Why::NoLease));
    // Two of three replicas: pending, whatever the others say.
    assert_eq!(count.verdict(&Policy::default()).verdict, Kind::Pending);

    // An observer sees no leases: nothing counts until the settlement comes.
    let d = detail(&job, vec![view(&a), view(&b), view(&c)], vec![], None);
    assert!(super::count(&d).unwrap().counted.is_empty());
}

#[test]
fn a_tampered_result_is_invalid_and_never_counted() {
    let job = signed_job();
    let a = built(&job, 1, b"x");
    let mut bytes = a.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let mut v = view(&a);
    v.envelope = hex::encode(bytes);
    let d = detail(
        &job,
        vec![v],
        vec![lease_view(1, "done")],
        Some(settle(&job, vec![replica(&a, 1)], &key(0))),
    );
    let c = count(&d).unwrap();
    assert!(c.counted.is_empty());
    assert_eq!(c.invalid().count(), 1);
    assert_eq!(c.missing, vec![key(1).node_id()]);
    // Not repeated among the verdict's ignored results: the caller reports it.
    assert!(c.verdict(&Policy::default()).ignored.is_empty());
}
