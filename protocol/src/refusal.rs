//! Why a coordinator refused a claim, heartbeat, commitment or result: a type, so that
//! what a volunteer does next (retry later, commit again, give up) never depends on the
//! words of a message. The words are for people ([`fmt::Display`]); the variant is for code
//! ([`Refusal::next_step`]).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A refusal, on the wire inside `Response::Refused` and `GrantDecision::Denied`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "refusal")]
#[non_exhaustive]
pub enum Refusal {
    /// The message did not decode or its signature did not verify.
    Invalid { why: String },
    /// The envelope was signed by another node than the peer that sent it, or names
    /// another node than its signer.
    WrongSigner,
    /// The message's time is too far from the coordinator's clock.
    ClockSkew { secs: u64 },
    /// The coordinator does not coordinate this job.
    UnknownJob,
    /// The job expired before it settled.
    JobExpired,
    /// The job is settled: nothing more is counted. A result is kept as late.
    Settled,
    /// Every replica of the job is leased.
    Full,
    /// This node (or another node of its operator) already holds or held a replica.
    AlreadyHeld,
    /// The node's operator certificate did not check.
    BadCertificate { why: String },
    /// Nodes of poor reputation wait until reputable nodes had their chance.
    PoorReputation,
    /// The lease is not this node's, or does not exist.
    UnknownLease,
    /// The lease lapsed or was released: the replica may be another node's now.
    LeaseLost,
    /// The lease reached its longest life (the job's timeout plus boot and collect time).
    LeaseCapped,
    /// The result contradicts its lease or its job: another image, architecture,
    /// variation, job, node or lease; `why` says which.
    Mismatch { why: String },
    /// A result came before its commitment: commit first.
    NoCommitment,
    /// The result does not match the commitment this node sent.
    CommitmentMismatch,
    /// Not every replica has committed: send the result again later.
    NotYet,
    /// The sender sent more requests than the receiver takes from one peer: send again
    /// after `secs` seconds.
    RateLimited { secs: u64 },
}

/// What the sender should do after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NextStep {
    /// Send the same message again later.
    RetryLater,
    /// Send the commitment again, then the result.
    CommitAgain,
    /// Nothing will change the answer: stop.
    GiveUp,
}

impl Refusal {
    /// What the sender should do next.
    pub fn next_step(&self) -> NextStep {
        match self {
            Refusal::NotYet | Refusal::ClockSkew { .. } | Refusal::Full => NextStep::RetryLater,
            Refusal::RateLimited { .. } => NextStep::RetryLater,
            Refusal::PoorReputation => NextStep::RetryLater,
            Refusal::NoCommitment => NextStep::CommitAgain,
            _ => NextStep::GiveUp,
        }
    }

    /// A short word for metrics and logs.
    pub fn word(&self) -> &'static str {
        match self {
            Refusal::Invalid { .. } => "invalid",
            Refusal::WrongSigner => "wrong_signer",
            Refusal::ClockSkew { .. } => "clock_skew",
            Refusal::UnknownJob => "unknown_job",
            Refusal::JobExpired => "job_expired",
            Refusal::Settled => "settled",
            Refusal::Full => "full",
            Refusal::AlreadyHeld => "already_held",
            Refusal::BadCertificate { .. } => "bad_certificate",
            Refusal::PoorReputation => "poor_reputation",
            Refusal::UnknownLease => "unknown_lease",
            Refusal::LeaseLost => "lease_lost",
            Refusal::LeaseCapped => "lease_capped",
            Refusal::Mismatch { .. } => "mismatch",
            Refusal::NoCommitment => "no_commitment",
            Refusal::CommitmentMismatch => "commitment_mismatch",
            Refusal::NotYet => "not_yet",
            Refusal::RateLimited { .. } => "rate_limited",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Invalid { why } => write!(f, "invalid message: {why}"),
            Refusal::WrongSigner => f.write_str("signed by another node than the sender"),
            Refusal::ClockSkew { secs } => {
                write!(f, "its time is {secs}s away from the coordinator's clock")
            }
            Refusal::UnknownJob => f.write_str("unknown job"),
            Refusal::JobExpired => f.write_str("the job expired"),
            Refusal::Settled => f.write_str("the job is settled; a result is kept as late"),
            Refusal::Full => f.write_str("every replica is leased"),
            Refusal::AlreadyHeld => {
                f.write_str("this node or another node of its operator already has a replica")
            }
            Refusal::BadCertificate { why } => write!(f, "operator certificate: {why}"),
            Refusal::PoorReputation => f.write_str(
                "this node disagreed with the majority too often; reputable nodes go first",
            ),
            Refusal::UnknownLease => f.write_str("no such lease for this node"),
            Refusal::LeaseLost => f.write_str("the lease is no longer held"),
            Refusal::LeaseCapped => f.write_str("the lease reached its longest life"),
            Refusal::Mismatch { why } => write!(f, "the result contradicts its lease: {why}"),
            Refusal::NoCommitment => f.write_str("no commitment from this node: commit first"),
            Refusal::CommitmentMismatch => {
                f.write_str("the result does not match this node's commitment")
            }
            Refusal::NotYet => f.write_str("not every replica has committed yet: reveal later"),
            Refusal::RateLimited { secs } => {
                write!(f, "too many requests from this node: send again in {secs}s")
            }
        }
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_and_say_what_to_do() {
        for r in [
            Refusal::NotYet,
            Refusal::NoCommitment,
            Refusal::Mismatch { why: "arch".into() },
            Refusal::ClockSkew { secs: 400 },
            Refusal::RateLimited { secs: 1 },
        ] {
            let bytes = crate::cbor::to_vec(&r);
            let back: Refusal = crate::cbor::from_slice(&bytes, 1024).unwrap();
            assert_eq!(back, r);
        }
        assert_eq!(Refusal::NotYet.next_step(), NextStep::RetryLater);
        assert_eq!(
            Refusal::RateLimited { secs: 1 }.next_step(),
            NextStep::RetryLater
        );
        assert_eq!(Refusal::NoCommitment.next_step(), NextStep::CommitAgain);
        assert_eq!(Refusal::Settled.next_step(), NextStep::GiveUp);
    }
}
