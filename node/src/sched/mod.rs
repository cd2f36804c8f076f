//! Scheduling: which jobs a volunteer claims, and which claims a coordinator grants.
//!
//! Pure state machines, no I/O: the node core (`daemon::core`) feeds them checked
//! messages and the time, and turns what they decide into effects. Their rules are tested
//! through the core's in-memory farm (`daemon/core/tests.rs`), apart from libp2p and QEMU.
//!
//! ```text
//! volunteer, per job:  Waiting ──claim──▶ Claiming ──granted──▶ Running ──▶ Done
//!                         ▲                  │ denied / failed
//!                         └──── retry later ─┘
//! coordinator, per lease:  Granted ─▶ Running ─▶ Committed ─▶ Done ─▶ settled
//!                            (see `coordinator` for when a lease is lost)
//! ```

pub mod availability;
pub mod coordinator;
pub mod volunteer;
pub mod window;

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
