//! Tests of verification summaries: each node counts once, and a summary of a settled job
//! carries the coordinator's settlement, names only results it settled and counts
//! operators.

use barn_protocol::message::{BuildResult, Job, LeaseId};
use barn_protocol::operator::OperatorCert;
use barn_protocol::settlement::{SettledReplica, Settlement, SettlementError, VerdictKind};
use barn_protocol::{ContentHash, JobId, OperatorId, SecretKey, Signed};

use super::fixtures::{job, key, result};
use super::{AttestError, Checked, PAYLOAD_TYPE, export_summary, to_file, verify_file};
use crate::verify::verdict::Kind;

fn lease(i: u8) -> LeaseId {
    LeaseId(serde_bytes::ByteArray::new([i; 16]))
}

/// Node `i`'s result for lease `i`.
fn leased(job: &Signed<Job>, i: u8, content: &[u8]) -> Signed<BuildResult> {
    let mut r = result(job, &key(i), content).message().clone();
    r.lease = Some(lease(i));
    Signed::sign(r, &key(i))
}

/// A settlement naming node `i`'s result for each `(i, result)`, signed by `by`; with
/// `operator`, every node certified by it.
fn settle(
    job: &Signed<Job>,
    named: &[(u8, &Signed<BuildResult>)],
    operator: Option<&SecretKey>,
    by: &SecretKey,
) -> Signed<Settlement> {
    let replicas = named
        .iter()
        .map(|(i, r)| {
            let node = key(*i).node_id();
            let (op, cert) = match operator {
                None => (OperatorId::of_node(&node), None),
                Some(op) => {
                    let cert = OperatorCert {
                        operator: OperatorId(op.public()),
                        node,
                        issued: 0,
                        expires: 2_000_000_000,
                    };
                    let bytes = Signed::sign(cert, op).to_bytes();
                    (
                        OperatorId(op.public()),
                        Some(serde_bytes::ByteBuf::from(bytes)),
                    )
                }
            };
            SettledReplica {
                lease: lease(*i),
                node,
                variant: 0,
                operator: op,
                cert,
                result: ContentHash::of(&r.to_bytes()),
            }
        })
        .collect();
    let s = Settlement {
        job: JobId::of(job),
        replicas,
        verdict: VerdictKind::Reproducible,
        root: None,
        time: 1_700_000_150,
    };
    Signed::sign(s, by)
}

/// The summary of `results`, exported by node 3 and read back.
fn summary(
    job: &Signed<Job>,
    results: &[Signed<BuildResult>],
    settlement: Option<&Signed<Settlement>>,
) -> Result<Checked, AttestError> {
    let env = export_summary(job, results, settlement, &key(3), 1_700_000_200)?;
    let mut report = verify_file(&to_file(&[env])?)?;
    report.checked.pop().ok_or(AttestError::Empty)
}

fn inner(err: AttestError) -> AttestError {
    match err {
        AttestError::Entry { source, .. } => *source,
        other => other,
    }
}

#[test]
fn a_result_listed_twice_in_a_summary_counts_once() {
    let j = job();
    let a = result(&j, &key(1), b"x");
    let Checked::Summary {
        verdict, results, ..
    } = summary(&j, &[a.clone(), a.clone()], None).unwrap()
    else {
        panic!("expected a summary")
    };
    // Two replicas asked for, one builder: not reproducible.
    assert_eq!((verdict, results), (Kind::Pending, 1));

    // A summary that says otherwise, however signed, does not verify.
    let b = result(&j, &key(2), b"x");
    let honest = export_summary(&j, &[a.clone(), b], None, &key(3), 1).unwrap();
    let mut st: serde_json::Value =
        serde_json::from_slice(&base64_decode(&honest.payload)).unwrap();
    let first = st["predicate"]["inputAttestations"][0].clone();
    st["predicate"]["inputAttestations"][1] = first;
    let forged = super::Envelope::sign(PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap(), &key(3));
    let err = inner(verify_file(&to_file(&[forged]).unwrap()).unwrap_err());
    assert!(
        matches!(
            err,
            AttestError::Mismatch { .. } | AttestError::SubjectMismatch
        ),
        "{err}"
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

#[test]
fn a_settled_summary_names_its_coordinator_and_counts_operators() {
    let j = job();
    let (a, b) = (leased(&j, 1, b"x"), leased(&j, 2, b"x"));
    let coordinator = key(9);
    assert_eq!(j.message().coordinator, coordinator.node_id());
    let s = settle(&j, &[(1, &a), (2, &b)], None, &coordinator);
    let Checked::Summary {
        verdict,
        agreeing_operators,
        settled_by,
        ..
    } = summary(&j, &[a.clone(), b.clone()], Some(&s)).unwrap()
    else {
        panic!("expected a summary")
    };
    assert_eq!(verdict, Kind::Reproducible);
    assert_eq!(agreeing_operators, 2);
    assert_eq!(settled_by, Some(coordinator.node_id()));

    // The same two nodes, both certified by one operator: one builder, unconfirmed.
    let s = settle(&j, &[(1, &a), (2, &b)], Some(&key(20)), &coordinator);
    let checked = summary(&j, &[a.clone(), b.clone()], Some(&s)).unwrap();
    let Checked::Summary {
        verdict,
        agreeing_operators,
        ..
    } = &checked
    else {
        panic!("expected a summary")
    };
    assert_eq!((*verdict, *agreeing_operators), (Kind::Unconfirmed, 1));
    assert!(
        checked.to_string().contains("unconfirmed (FAILED)"),
        "{checked}"
    );

    // Without the settlement, the exporter chose the results, and the summary says so.
    let unsettled = summary(&j, &[a, b], None).unwrap();
    assert!(
        unsettled
            .to_string()
            .contains("not settled: the exporter chose the results"),
        "{unsettled}"
    );
}

#[test]
fn a_summary_holds_only_results_its_settlement_names() {
    let j = job();
    let (a, b) = (leased(&j, 1, b"x"), leased(&j, 2, b"x"));
    let s = settle(&j, &[(1, &a)], None, &key(9));
    let err = summary(&j, &[a, b], Some(&s)).unwrap_err();
    assert!(
        matches!(&err, AttestError::NotSettled { node, .. } if *node == key(2).node_id()),
        "{err}"
    );
}

#[test]
fn a_summary_with_a_settlement_not_by_the_coordinator_does_not_verify() {
    let j = job();
    let (a, b) = (leased(&j, 1, b"x"), leased(&j, 2, b"x"));
    // Node 1 settles the job itself.
    let s = settle(&j, &[(1, &a), (2, &b)], None, &key(1));
    let err = inner(summary(&j, &[a, b], Some(&s)).unwrap_err());
    assert!(
        matches!(
            err,
            AttestError::Settlement(SettlementError::NotCoordinator { .. })
        ),
        "{err}"
    );
}
