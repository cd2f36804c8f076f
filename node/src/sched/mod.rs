//! Scheduling: which jobs a volunteer claims, and which claims a coordinator grants.
//!
//! Pure state machines, no I/O: the daemon's actor feeds them messages and the time, and
//! carries out the actions they return. That keeps the rules testable in one process
//! (see the harness in `tests.rs`), apart from libp2p and QEMU.
//!
//! ```text
//! volunteer, per job:  Waiting ──claim──▶ Claiming ──granted──▶ Running ──▶ Done
//!                         ▲                  │ denied / failed
//!                         └──── retry later ─┘
//! coordinator, per lease:  Active ──result──▶ Done
//!                            │ no heartbeat before expiry ▶ Expired (the slot is free again)
//!                            │ infrastructure error       ▶ Failed  (likewise)
//! ```

pub mod availability;
pub mod coordinator;
pub mod volunteer;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;

use barn_protocol::SubmitterId;
use barn_protocol::message::Job;

pub use coordinator::Coordinator;
pub use volunteer::Volunteer;

/// What a volunteer offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Architectures it can run guests for.
    pub archs: Vec<String>,
    /// Most memory one job may have.
    pub memory_bytes: u64,
    /// Most jobs at once.
    pub slots: u32,
    /// Largest output quota (disk) one job may have.
    pub max_disk_bytes: u64,
    /// Longest timeout one job may have, in seconds.
    pub max_timeout_secs: u64,
}

/// Whose jobs a volunteer runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pub submitters: BTreeSet<SubmitterId>,
    /// Run jobs from anyone: an explicit opt-in.
    pub accept_any: bool,
}

impl Trust {
    pub fn trusts(&self, s: &SubmitterId) -> bool {
        self.accept_any || self.submitters.contains(s)
    }
}

/// Why a volunteer does not claim a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("submitter {0} is not trusted")]
    Untrusted(String),
    #[error("architecture {0} is not offered")]
    Arch(String),
    #[error("needs {need} bytes of memory, offers {have}")]
    Memory { need: u64, have: u64 },
    #[error("the job expired")]
    Expired,
    #[error("needs an output quota of {need} bytes, allows {have}")]
    Disk { need: u64, have: u64 },
    #[error("needs a timeout of {need}s, allows {have}s")]
    Timeout { need: u64, have: u64 },
}

/// Whether a volunteer with `caps` and `trust` would run `job` (slots aside).
pub fn matches(
    job: &Job,
    submitter: &SubmitterId,
    caps: &Capabilities,
    trust: &Trust,
    now: u64,
) -> Result<(), Mismatch> {
    if !trust.trusts(submitter) {
        return Err(Mismatch::Untrusted(submitter.short()));
    }
    if job.expires <= now {
        return Err(Mismatch::Expired);
    }
    if !caps.archs.iter().any(|a| a == &job.spec.arch) {
        return Err(Mismatch::Arch(job.spec.arch.clone()));
    }
    if job.spec.resources.disk_bytes > caps.max_disk_bytes {
        return Err(Mismatch::Disk {
            need: job.spec.resources.disk_bytes,
            have: caps.max_disk_bytes,
        });
    }
    if job.spec.timeout_secs > caps.max_timeout_secs {
        return Err(Mismatch::Timeout {
            need: job.spec.timeout_secs,
            have: caps.max_timeout_secs,
        });
    }
    if job.spec.resources.memory_bytes > caps.memory_bytes {
        return Err(Mismatch::Memory {
            need: job.spec.resources.memory_bytes,
            have: caps.memory_bytes,
        });
    }
    Ok(())
}
