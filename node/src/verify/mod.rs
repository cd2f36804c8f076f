//! Verification: which of a job's results count, verdicts over them under a verifier's
//! trust policy, attestations.
//!
//! - [`results`]: checking one signed result against its job (and against its lease);
//! - [`settled`]: the results that count, from the coordinator's signed settlement;
//! - [`verdict`]: judging the results that count;
//! - [`policy`]: whose agreement counts, per verifier;
//! - [`attest`] and [`diff`]: exporting attestations and comparing files.

pub mod attest;
pub mod diff;
pub mod policy;
pub mod results;
pub mod settled;
pub mod verdict;
