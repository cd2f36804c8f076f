//! Which of a job's results count.
//!
//! A node stores every result it hears of: results gossiped by nodes that never held a
//! lease, a node's result twice, results that arrived after the job settled. Only some of
//! them are votes. [`count`] picks those out of a [`JobDetail`]:
//!
//! - **Settled** (the detail carries the coordinator's signed `settlement`): the settlement
//!   is checked against the job (its signer must be the job's coordinator, see
//!   `Settlement::check`), and a listed result counts only when the settlement names it by
//!   the blake3 of its envelope. Each named result is checked again against what the
//!   settlement says of its lease ([`results::check_lease`]: node, lease, image, architecture,
//!   variation) and its operator is re-derived from the certificate at the settlement's
//!   time; a certificate that does not check, or that names another operator than the
//!   settlement does, refuses that replica.
//! - **Not settled yet**: only results of nodes whose lease, as this node's API shows it,
//!   is `done`, `committed` or `settled` count, one per node, each node its own operator.
//!   That is the coordinator's own view before it settles; anyone else sees no leases and
//!   so counts nothing until the settlement arrives. The lease list is the node's word,
//!   not signed: such a verdict says it is not settled.
//!
//! Results not counted are returned with why ([`Refused`]); a late result never counts.

use std::collections::BTreeSet;
use std::fmt;

use barn_protocol::message::{BuildResult, Job};
use barn_protocol::operator::{CertError, OperatorCert};
use barn_protocol::settlement::{Settlement, SettlementError};
use barn_protocol::{ContentHash, JobId, NodeId, OperatorId, Signed};

use super::policy::Policy;
use super::results::{self, JobError, LeaseTerms, Mismatch, ResultError};
use super::verdict::{Replica, Verdict, judge_with};
use crate::api::types::JobDetail;

/// Lease states (as `LeaseView::state` says them) whose result counts before settlement.
pub const COUNTED_LEASE_STATES: &[&str] = &["done", "committed", "settled"];

/// A result that counts.
#[derive(Debug, Clone)]
pub struct Counted {
    pub node: NodeId,
    /// The operator it counts as.
    pub operator: OperatorId,
    /// blake3 of the signed result envelope.
    pub digest: ContentHash,
    pub result: Signed<BuildResult>,
}

/// Why a listed result does not count.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Why {
    /// The envelope does not verify, or is not its node's result for this job.
    #[error(transparent)]
    Invalid(ResultError),
    /// It arrived after the job settled: kept, never counted.
    #[error("it arrived after the job settled")]
    Late,
    /// The settlement does not name it (nobody leased it, or it is not the result the
    /// coordinator accepted for the lease).
    #[error("the settlement does not name it")]
    NotSettled,
    /// Not settled yet, and the node holds no finished lease.
    #[error("the node holds no finished lease of the job")]
    NoLease,
    /// Another result of the same node, or the same result again, already counts.
    #[error("another result of the same node already counts")]
    Duplicate,
    /// It contradicts the lease the settlement names it under.
    #[error("it contradicts its lease: {0}")]
    Contradicts(Mismatch),
    /// The operator certificate the settlement carries for the node does not check.
    #[error("its operator certificate does not check: {0}")]
    BadCertificate(CertError),
    /// The certificate names another operator than the settlement does.
    #[error("the settlement counts it as {claimed} but its certificate says {certified}")]
    OtherOperator { claimed: String, certified: String },
}

/// A listed result that does not count.
#[derive(Debug)]
pub struct Refused {
    /// The node it is listed under.
    pub node: String,
    pub why: Why,
}

impl Refused {
    /// Why, with the causes underneath (`why: cause: cause`).
    pub fn reason(&self) -> String {
        let mut text = self.why.to_string();
        let mut source = std::error::Error::source(&self.why);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }

    /// Whether the result does not verify at all (tampered, or passed off as another
    /// node's), rather than verifying and not counting.
    pub fn is_invalid(&self) -> bool {
        matches!(self.why, Why::Invalid(_))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}: {}", self.node, self.why)
    }
}

/// A job's results, sorted into those that count and those that do not.
#[derive(Debug)]
pub struct Count {
    pub id: JobId,
    pub job: Signed<Job>,
    /// The checked settlement; `None`: not settled yet.
    pub settlement: Option<Signed<Settlement>>,
    /// The results that count, in the order listed.
    pub counted: Vec<Counted>,
    /// The listed results that do not count.
    pub refused: Vec<Refused>,
    /// Nodes the settlement names whose result is not listed (or did not verify).
    pub missing: Vec<NodeId>,
}

/// Why a job's results could not be sorted at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CountError {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("the settlement envelope is not hex")]
    SettlementNotHex,
    #[error("the job's settlement does not check")]
    Settlement(#[source] SettlementError),
}

/// Sorts the results of `detail` into those that count and those that do not.
pub fn count(detail: &JobDetail) -> Result<Count, CountError> {
    let job = results::check_job(detail)?;
    let id = JobId::of(&job);
    let settlement = match &detail.settlement {
        None => None,
        Some(text) => {
            let bytes = hex::decode(text).map_err(|_| CountError::SettlementNotHex)?;
            Some(
                Settlement::check(&bytes, &id, &job.message().coordinator)
                    .map_err(CountError::Settlement)?,
            )
        }
    };
    let leased: BTreeSet<&str> = detail
        .leases
        .iter()
        .filter(|l| COUNTED_LEASE_STATES.contains(&l.state.as_str()))
        .map(|l| l.node.as_str())
        .collect();
    let mut out = Count {
        id,
        job,
        settlement,
        counted: Vec::new(),
        refused: Vec::new(),
        missing: Vec::new(),
    };
    for view in &detail.results {
        let refuse = |why| Refused {
            node: view.node.clone(),
            why,
        };
        let (signed, bytes) = match results::check_view(&id, view) {
            Ok(ok) => ok,
            Err(e) => {
                out.refused.push(refuse(Why::Invalid(e)));
                continue;
            }
        };
        let node = NodeId(signed.signer());
        let digest = ContentHash::of(&bytes);
        if view.late {
            out.refused.push(refuse(Why::Late));
            continue;
        }
        if out.counted.iter().any(|c| c.node == node) {
            out.refused.push(refuse(Why::Duplicate));
            continue;
        }
        let operator = match &out.settlement {
            Some(s) => operator_in(&out.job, s.message(), &digest, &signed),
            None if leased.contains(view.node.as_str()) => Ok(OperatorId::of_node(&node)),
            None => Err(Why::NoLease),
        };
        match operator {
            Ok(operator) => out.counted.push(Counted {
                node,
                operator,
                digest,
                result: signed,
            }),
            Err(why) => out.refused.push(refuse(why)),
        }
    }
    if let Some(s) = &out.settlement {
        out.missing = s
            .message()
            .replicas
            .iter()
            .filter(|r| !out.counted.iter().any(|c| c.digest == r.result))
            .map(|r| r.node)
            .collect();
    }
    Ok(out)
}

/// The operator `result` counts as in `settlement` of `job`: the settlement must name it
/// by `digest` (blake3 of its envelope), it must match the lease the settlement names it
/// under, and the operator must follow from the certificate at the settlement's time.
/// `settlement` must already be checked against the job (`Settlement::check`).
pub fn operator_in(
    job: &Signed<Job>,
    settlement: &Settlement,
    digest: &ContentHash,
    result: &Signed<BuildResult>,
) -> Result<OperatorId, Why> {
    let replica = settlement.replica_of(digest).ok_or(Why::NotSettled)?;
    let terms = LeaseTerms {
        job: settlement.job,
        lease: replica.lease,
        node: replica.node,
        variant: replica.variant,
    };
    results::check_lease(job.message(), &terms, result.message()).map_err(Why::Contradicts)?;
    let certified = OperatorCert::operator_of(
        replica.cert.as_ref().map(|c| c.as_slice()),
        &replica.node,
        settlement.time,
    )
    .map_err(Why::BadCertificate)?;
    if certified != replica.operator {
        return Err(Why::OtherOperator {
            claimed: replica.operator.to_string(),
            certified: certified.to_string(),
        });
    }
    Ok(certified)
}

impl Count {
    /// Whether the coordinator's signed settlement decided which results count.
    pub fn is_settled(&self) -> bool {
        self.settlement.is_some()
    }

    /// The verdict over the results that count, under `policy`. Results that do not
    /// count, except those that do not verify at all, are in its `ignored`, with why.
    pub fn verdict(&self, policy: &Policy) -> Verdict {
        let replicas: Vec<Replica<'_>> = self
            .counted
            .iter()
            .map(|c| Replica {
                node: c.node,
                operator: c.operator,
                result: c.result.message(),
            })
            .collect();
        let mut v = judge_with(self.job.message(), &replicas, policy);
        for r in self.refused.iter().filter(|r| !r.is_invalid()) {
            let why = r.reason();
            v.ignored
                .entry(r.node.clone())
                .and_modify(|w| {
                    w.push_str("; ");
                    w.push_str(&why);
                })
                .or_insert(why);
        }
        v
    }

    /// The counted result of `node`.
    pub fn of(&self, node: &NodeId) -> Option<&Counted> {
        self.counted.iter().find(|c| &c.node == node)
    }

    /// The refusals of results that do not verify at all (tampered, or passed off as
    /// another node's).
    pub fn invalid(&self) -> impl Iterator<Item = &Refused> {
        self.refused.iter().filter(|r| r.is_invalid())
    }
}

#[cfg(test)]
#[path = "settled_tests.rs"]
mod tests;
