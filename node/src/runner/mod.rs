//! The runner: one build job in one throwaway QEMU VM, as an explicit state machine.
//!
//! ```text
//!   Prepare ──▶ Boot ──▶ Run ──▶ Collect ──▶ Done(Succeeded | Failed | TimedOut | Error)
//!      │          │                  │
//!      └──────────┴──────────────────┴──▶ RunError (no report could be made)
//! ```
//!
//! [`Runner::run`] first waits for a VM slot and for guest memory, then steps a `Phase`
//! through these states, one method each (`job.rs`):
//!
//! - **Prepare**: the input disk (job control files + source, [`input`]) and a sparse
//!   output disk of the job's quota size, in a fresh work directory.
//! - **Boot**: QEMU starts ([`qemu`]); the phase ends when the guest init prints
//!   `barn: ready` on the serial console. A VM that does not get there within
//!   [`BOOT_DEADLINE`] is an infrastructure error, not a verdict on the build.
//! - **Run**: the tasks, bounded by the job's wall-clock timeout; then the guest writes its
//!   output tar and powers off (still within the job's timeout).
//! - **Collect**: the host reads the output disk as untrusted data ([`output`]) and hashes
//!   the log.
//!
//! The host owns the deadlines (`phases.rs`): each counts on the host's clock from QEMU's
//! start, and each console marker is accepted once and in order, so nothing a guest prints
//! extends a phase. A run ends with a report whenever its VM started: exited, timed out,
//! stuck at boot or cancelled. On timeout or cancellation QEMU gets SIGTERM (it exits
//! cleanly), then SIGKILL after [`KILL_GRACE`]; the child is also killed when its handle
//! drops, so no QEMU outlives its job. A [`RunError`] (one variant per thing that can fail)
//! means the host could not get that far or could not read what the VM left.
//! Concurrent VMs are bounded by a semaphore; CPUs and memory by the node's limits.

pub mod accel;
pub mod confine;
mod console;
pub mod input;
mod job;
pub mod output;
mod phases;
pub mod qemu;
pub mod variation;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use barn_protocol::ContentHash;
use barn_protocol::manifest::Manifest;
use barn_protocol::message::{Accel, BuildStatus, JobSpec, Phase, TaskOutcome, Timings};
use tokio::sync::Semaphore;
use tracing::error;

pub use job::RunError;

use crate::store::Image;

/// How long a guest may take to reach `barn: ready` under TCG before the run is an
/// infrastructure error.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(120);
/// The pseudo-task named in a `Failed` status when the job's output broke the rules (over
/// the quota, unsafe paths, links leading out).
pub const OUTPUT_TASK: &str = "output";
/// Between SIGTERM and SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(3);

/// The node's limits on what jobs may use.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Where per-job work directories are made.
    pub work_dir: PathBuf,
    /// Most VMs at once.
    pub max_vms: usize,
    pub max_cpus: u32,
    pub max_memory_bytes: u64,
    /// Most bytes of serial log kept; the rest is counted and dropped.
    pub log_cap: u64,
    /// `None`: decide with the KVM canary.
    pub accel: Option<Accel>,
    /// Keep work directories after the run (for debugging).
    pub keep_work: bool,
    /// Run QEMU without its confinement ([`confine`]): the owner's explicit choice
    /// (`node.unconfined`); otherwise a node that cannot confine QEMU runs no job.
    pub unconfined: bool,
}

impl RunnerConfig {
    /// Defaults for a work directory: 1 VM, every CPU but one, half the memory, 16 MiB of log.
    pub fn new(work_dir: PathBuf) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Self {
            work_dir,
            max_vms: 1,
            max_cpus: cpus.max(1),
            max_memory_bytes: 4 << 30,
            log_cap: 16 << 20,
            accel: None,
            keep_work: false,
            unconfined: false,
        }
    }
}

/// One job to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub spec: JobSpec,
    /// The packed source tar.
    pub source_tar: PathBuf,
    pub image: Image,
    /// Where the log (`log`) and the artifacts (`artifacts/`) are kept afterwards.
    pub out_dir: PathBuf,
    /// What this replica varies (default: nothing).
    pub variation: variation::Variation,
}

/// Progress, for displays and heartbeats.
#[derive(Debug, Clone)]
pub enum Event {
    Phase(Phase),
    /// One line of the serial console (at most 4 KiB of it).
    Log(String),
    TaskStarted {
        index: usize,
        name: String,
    },
    TaskFinished {
        index: usize,
        name: String,
        exit_code: i32,
        duration_ms: u64,
    },
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub status: BuildStatus,
    pub tasks: Vec<TaskOutcome>,
    pub manifest: Manifest,
    pub manifest_root: ContentHash,
    pub log_path: PathBuf,
    pub log_hash: ContentHash,
    pub log_size: u64,
    /// Bytes of log dropped over the cap.
    pub log_dropped: u64,
    pub artifacts_dir: PathBuf,
    pub timings: Timings,
    pub accel: Accel,
    pub qemu_version: String,
    pub image_hash: ContentHash,
    /// Things the user should know: unmatched globs, an overflowing output.
    pub notes: Vec<String>,
}

/// Runs jobs in VMs, at most `max_vms` at once.
#[derive(Debug, Clone)]
pub struct Runner {
    cfg: Arc<RunnerConfig>,
    slots: Arc<Semaphore>,
    /// The guest memory of the VMs running, in MiB, so that `max_memory_bytes` is a total.
    memory: Arc<Semaphore>,
    memory_total_mib: u64,
    /// How QEMU is confined, or why it cannot be (then no job runs).
    confinement: Arc<Result<confine::Confinement, String>>,
    tsc_khz: Option<u64>,
    /// `qemu-system-… --version`, asked once per QEMU binary rather than once per job.
    qemu_versions: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, String>>>,
}

impl Runner {
    /// A runner for `cfg`: cleans up after earlier runs of this node and prepares QEMU's
    /// confinement. A node that cannot confine QEMU still starts (it may coordinate), but
    /// [`Runner::run`] refuses every job and [`Runner::refusal`] says why.
    pub fn new(cfg: RunnerConfig) -> Self {
        let slots = Arc::new(Semaphore::new(cfg.max_vms.max(1)));
        let memory_total_mib = (cfg.max_memory_bytes >> 20).clamp(64, u64::from(u32::MAX));
        let totals = confine::Totals {
            vms: cfg.max_vms,
            cpus: cfg.max_cpus,
            memory_bytes: cfg.max_memory_bytes,
        };
        let confinement = confine::Confinement::prepare(&cfg.work_dir, totals, cfg.unconfined)
            .map_err(|e| {
                let why = format!("{:#}", anyhow::Error::from(e));
                error!(
                    "cannot confine QEMU: {why}; this node runs no job (set node.unconfined = true \
                     to run jobs without the confinement)"
                );
                why
            });
        Self {
            cfg: Arc::new(cfg),
            slots,
            memory: Arc::new(Semaphore::new(memory_total_mib as usize)),
            memory_total_mib,
            confinement: Arc::new(confinement),
            tsc_khz: qemu::host_tsc_khz(),
            qemu_versions: Default::default(),
        }
    }

    /// The version of the QEMU binary `qemu`, remembered after the first ask.
    pub fn qemu_version(&self, qemu: &std::path::Path) -> String {
        let mut known = self.qemu_versions.lock().unwrap_or_else(|e| e.into_inner());
        known
            .entry(qemu.to_path_buf())
            .or_insert_with(|| qemu::qemu_version(qemu).unwrap_or_else(|| "unknown".into()))
            .clone()
    }

    /// Why this runner refuses every job, if it does.
    pub fn refusal(&self) -> Option<&str> {
        self.confinement.as_ref().as_ref().err().map(String::as_str)
    }

    /// The node's limits.
    pub fn config(&self) -> &RunnerConfig {
        &self.cfg
    }
}
