//! Verification: verdicts over a job's signed results, reputation, attestations.

pub mod attest;
pub mod diff;
pub mod verdict;
