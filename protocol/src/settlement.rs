//! A job's settlement: the coordinator's signed, final word on which results count.
//!
//! Once every replica has reported (or the job's time is up), the coordinator signs one
//! settlement: for each lease whose result it accepted, the lease, the node, the node's
//! operator (with its certificate) and the blake3 digest of the signed result envelope;
//! then the verdict it reached. Verifiers count only results named in a settlement whose
//! signature they check, so results nobody leased, duplicates and results that contradict
//! their lease never count, and a result that arrives after settlement changes nothing.

use serde::{Deserialize, Serialize};

use crate::envelope::{Message, Signed};
use crate::hash::ContentHash;
use crate::identity::NodeId;
use crate::limits::MAX_GOSSIP_MESSAGE;
use crate::message::{JobId, LeaseId};
use crate::operator::OperatorId;

/// What the replicas' results say, as rebuilderd keeps GOOD/BAD/FAIL/UNKWN apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerdictKind {
    /// At least two replicas succeeded and every manifest root agrees.
    Reproducible,
    /// The replicas succeeded but their outputs differ.
    Differs,
    /// A replica's build failed (a task exited non-zero or timed out).
    Failed,
    /// Not enough results to say (fewer than two, or the job expired first).
    Pending,
    /// The results agree, but not by enough builders the verifier trusts (its policy's
    /// quorum): never "reproducible" on the word of unknown keys.
    Unconfirmed,
}

impl VerdictKind {
    /// The word used in `--json` output and tables.
    pub fn word(self) -> &'static str {
        match self {
            VerdictKind::Reproducible => "reproducible",
            VerdictKind::Differs => "differs",
            VerdictKind::Failed => "failed",
            VerdictKind::Pending => "pending",
            VerdictKind::Unconfirmed => "unconfirmed",
        }
    }
}

/// One accepted replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledReplica {
    pub lease: LeaseId,
    pub node: NodeId,
    /// The environment variant the lease asked for.
    pub variant: u32,
    /// The operator the coordinator counted the node as.
    pub operator: OperatorId,
    /// The node's signed operator certificate, when it has one (so a verifier can check
    /// the operator without asking anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<serde_bytes::ByteBuf>,
    /// blake3 of the signed result envelope's bytes.
    pub result: ContentHash,
}

/// The settlement, signed by the job's coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub job: JobId,
    pub replicas: Vec<SettledReplica>,
    pub verdict: VerdictKind,
    /// The agreed manifest root, when reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<ContentHash>,
    /// Unix seconds.
    pub time: u64,
}

impl Message for Settlement {
    const KIND: &'static str = "settlement";
    const MAX_SIZE: usize = MAX_GOSSIP_MESSAGE;
}

/// Most replicas a settlement may name (a job's replicas plus tie-breakers, with room).
pub const MAX_SETTLED: usize = 64;

/// Why a settlement does not vouch for a job's results.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettlementError {
    #[error("the settlement does not decode or verify: {0}")]
    Invalid(String),
    #[error("the settlement is for job {found}, not {expected}")]
    OtherJob { expected: String, found: String },
    #[error("signed by {signer}, not by the job's coordinator {coordinator}")]
    NotCoordinator { signer: String, coordinator: String },
    #[error("names {0} replicas, more than {MAX_SETTLED}")]
    TooMany(usize),
    #[error("names node {0} twice")]
    DuplicateNode(String),
}

impl Settlement {
    /// Checks a signed settlement of job `id` coordinated by `coordinator`.
    pub fn check(
        bytes: &[u8],
        id: &JobId,
        coordinator: &NodeId,
    ) -> Result<Signed<Settlement>, SettlementError> {
        let signed = Signed::<Settlement>::from_bytes(bytes)
            .map_err(|e| SettlementError::Invalid(e.to_string()))?;
        let s = signed.message();
        if &s.job != id {
            return Err(SettlementError::OtherJob {
                expected: id.to_string(),
                found: s.job.to_string(),
            });
        }
        if signed.signer() != coordinator.0 {
            return Err(SettlementError::NotCoordinator {
                signer: NodeId(signed.signer()).to_string(),
                coordinator: coordinator.to_string(),
            });
        }
        if s.replicas.len() > MAX_SETTLED {
            return Err(SettlementError::TooMany(s.replicas.len()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &s.replicas {
            if !seen.insert(r.node) {
                return Err(SettlementError::DuplicateNode(r.node.to_string()));
            }
        }
        Ok(signed)
    }

    /// The replica that accepted `result_digest`, if any.
    pub fn replica_of(&self, result_digest: &ContentHash) -> Option<&SettledReplica> {
        self.replicas.iter().find(|r| &r.result == result_digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    #[test]
    fn only_the_coordinator_settles_and_each_node_counts_once() {
        let coord = SecretKey::from_seed([1; 32]);
        let node = SecretKey::from_seed([2; 32]).node_id();
        let job = JobId(ContentHash::of(b"job"));
        let replica = SettledReplica {
            lease: LeaseId(serde_bytes::ByteArray::new([1; 16])),
            node,
            variant: 0,
            operator: OperatorId::of_node(&node),
            cert: None,
            result: ContentHash::of(b"result"),
        };
        let mut s = Settlement {
            job,
            replicas: vec![replica.clone()],
            verdict: VerdictKind::Pending,
            root: None,
            time: 5,
        };
        let bytes = Signed::sign(s.clone(), &coord).to_bytes();
        assert!(Settlement::check(&bytes, &job, &coord.node_id()).is_ok());
        assert!(matches!(
            Settlement::check(&bytes, &job, &node),
            Err(SettlementError::NotCoordinator { .. })
        ));
        let other = JobId(ContentHash::of(b"other"));
        assert!(matches!(
            Settlement::check(&bytes, &other, &coord.node_id()),
            Err(SettlementError::OtherJob { .. })
        ));
        s.replicas.push(replica);
        let twice = Signed::sign(s, &coord).to_bytes();
        assert!(matches!(
            Settlement::check(&twice, &job, &coord.node_id()),
            Err(SettlementError::DuplicateNode(_))
        ));
    }
}
