//! Verification: verdicts over a job's signed results, reputation, attestations, and the
//! comparisons behind `barn diff` (built in, or by running diffoscope).

pub mod attest;
pub mod diff;
pub mod diffoscope;
pub mod verdict;
