//! Verification: which of a job's results count, verdicts over them under a verifier's
//! trust policy, attestations, and the comparisons behind `barn diff`.
//!
//! - [`results`]: checking one signed result against its job (and against its lease);
//! - [`settled`]: the results that count, from the coordinator's signed settlement;
//! - [`verdict`]: judging the results that count;
//! - [`policy`]: whose agreement counts, per verifier;
//! - [`attest`]: exporting and checking in-toto attestations;
//! - [`diff`] and [`diffoscope`]: comparing files (built in, or by running diffoscope).

pub mod attest;
pub mod diff;
pub mod diffoscope;
pub mod policy;
pub mod results;
pub mod settled;
pub mod verdict;
