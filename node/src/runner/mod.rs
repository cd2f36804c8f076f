//! The runner: one build job in one throwaway QEMU VM, as an explicit state machine.
//!
//! ```text
//!   Prepare ──▶ Boot ──▶ Run ──▶ Collect ──▶ Done(Succeeded | Failed)
//!      │          │        │        │
//!      └──────────┴────────┴────────┴──▶ Error (infrastructure) | TimedOut | Cancelled
//! ```
//!
//! - **Prepare**: the input disk (job control files + source, [`input`]) and a sparse
//!   output disk of the job's quota size, in a fresh work directory.
//! - **Boot**: QEMU starts ([`qemu`]); the phase ends when the guest init prints
//!   `barn: ready` on the serial console. A VM that does not get there within
//!   [`BOOT_DEADLINE`] is an infrastructure error, not a verdict on the build.
//! - **Run**: the tasks, bounded by the job's wall-clock timeout.
//!
//! The host owns these deadlines (`phases.rs`): each counts on the host's clock from
//! QEMU's start, and each console marker is accepted once and in order, so nothing a guest
//! prints extends a phase.
//! - **Collect**: the guest writes its output tar and powers off (still within the job's
//!   timeout); the host reads the output disk as untrusted data ([`output`]) and hashes
//!   the log.
//!
//! On timeout or cancellation QEMU gets SIGTERM (it exits cleanly), then SIGKILL after
//! [`KILL_GRACE`]; the child is also killed when its handle drops, so no QEMU outlives its
//! job. Concurrent VMs are bounded by a semaphore; CPUs and memory by the node's limits.

pub mod accel;
pub mod confine;
pub mod input;
pub mod output;
mod phases;
pub mod qemu;
pub mod variation;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use barn_protocol::ContentHash;
use barn_protocol::guest::Mark;
use barn_protocol::manifest::Manifest;
use barn_protocol::message::{Accel, BuildStatus, Failure, JobSpec, Phase, TaskOutcome, Timings};
use phases::{Accepted, VmPhase};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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

/// How the VM phase ended.
enum Ending {
    Exited,
    TimedOut,
    Cancelled,
    BootStuck,
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

    /// Runs `req` to the end. Infrastructure failures become `BuildStatus::Error` in the
    /// report; an `Err` means not even a report could be made (e.g. the disk is full).
    pub async fn run(
        &self,
        req: RunRequest,
        accel: Accel,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> anyhow::Result<RunReport> {
        let confinement = match self.confinement.as_ref() {
            Ok(c) => c,
            Err(why) => anyhow::bail!("this node cannot confine QEMU, so it runs no job: {why}"),
        };
        let spec = &req.spec;
        let memory_mib = (spec.resources.memory_bytes.min(self.cfg.max_memory_bytes) >> 20).max(64);
        let _permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => anyhow::bail!("cancelled while waiting for a free VM slot"),
            p = self.slots.clone().acquire_owned() => p?,
        };
        // The guest memory of all running VMs stays within the node's total.
        let want = u32::try_from(memory_mib.min(self.memory_total_mib)).unwrap_or(u32::MAX);
        let _memory = tokio::select! {
            biased;
            _ = cancel.cancelled() => anyhow::bail!("cancelled while waiting for free memory"),
            p = self.memory.clone().acquire_many_owned(want) => p?,
        };
        let t0 = Instant::now();
        let emit = |e: Event| {
            // Displays may lag; the VM must not: drop display events rather than block.
            let _ = events.try_send(e);
        };
        emit(Event::Phase(Phase::Preparing));
        let drop_privileges = confinement.drops_privileges();
        let work = confinement.job_dir()?;
        std::fs::create_dir_all(&req.out_dir)?;
        let input = work.path().join("input.tar");
        let output = work.path().join("output.img");
        {
            let (spec, src, input) = (spec.clone(), req.source_tar.clone(), input.clone());
            let variation = req.variation.clone();
            tokio::task::spawn_blocking(move || {
                input::write_input(&spec, &src, &input, &variation)
            })
            .await??;
        }
        std::fs::File::create_new(&output)?.set_len(spec.resources.disk_bytes)?;
        let (kernel, initrd, root) = if drop_privileges {
            confine::stage(
                &work,
                &req.image.kernel(),
                &req.image.initrd(),
                req.image.root().as_deref(),
                &output,
            )?
        } else {
            (req.image.kernel(), req.image.initrd(), req.image.root())
        };

        let qemu_bin = PathBuf::from(qemu::qemu_binary(&spec.arch));
        let qemu_version = self.qemu_version(&qemu_bin);
        let vm = qemu::VmConfig {
            qemu: qemu_bin.clone(),
            accel,
            cpus: req
                .variation
                .cpus()
                .unwrap_or(spec.resources.cpus)
                .min(self.cfg.max_cpus)
                .max(1),
            memory_mib,
            kernel,
            initrd,
            root,
            input: input.clone(),
            output: output.clone(),
            tsc_khz: self.tsc_khz,
            no_sandbox: false,
        };
        let prepare_ms = t0.elapsed().as_millis() as u64;

        emit(Event::Phase(Phase::Booting));
        let log_path = req.out_dir.join("log");
        let t_boot = Instant::now();
        let mut cmd = Command::new(&qemu_bin);
        cmd.args(vm.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        confinement.apply(
            &mut cmd,
            &work,
            vm.memory_mib << 20,
            spec.resources.disk_bytes,
            accel == Accel::Kvm,
        );
        debug!(?cmd, "starting qemu");
        let mut child = confine::spawn_err(cmd.spawn())
            .map_err(|e| anyhow::anyhow!("failed to start {}: {e:#}", qemu_bin.display()))?;
        if let Some(pid) = child.id() {
            confinement.record_pid(work.path(), pid);
        }
        let pid = child.id();
        let stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let (marks_tx, mut marks) = mpsc::channel::<Mark>(256);
        let console = tokio::spawn(console::pump(
            stdout,
            log_path.clone(),
            self.cfg.log_cap,
            marks_tx,
            events.clone(),
        ));
        let stderr_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(64 * 1024).read_to_end(&mut buf).await;
            }
            String::from_utf8_lossy(&buf).into_owned()
        });

        let mut phases = phases::Phases::new(
            t_boot,
            BOOT_DEADLINE,
            Duration::from_secs(spec.timeout_secs),
        );
        // Tasks as the console reports them; used when the guest is stopped before it can
        // write its own status record.
        let mut seen_tasks: Vec<TaskOutcome> = Vec::new();
        let ending = loop {
            let deadline = phases.deadline();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break Ending::Cancelled,
                // Before the console: a flood of markers must not starve the deadline.
                _ = tokio::time::sleep_until(deadline.into()) => break match phases.phase() {
                    VmPhase::Run | VmPhase::Collect => Ending::TimedOut,
                    VmPhase::Boot => Ending::BootStuck,
                },
                status = child.wait() => {
                    debug!(?status, "qemu exited");
                    break Ending::Exited;
                }
                Some(mark) = marks.recv() => match phases.accept(mark, Instant::now()) {
                    None => {}
                    Some(Accepted::Vary) => {}
                    Some(Accepted::Ready) => emit(Event::Phase(Phase::Running)),
                    Some(Accepted::TaskStarted(index)) => {
                        emit(Event::TaskStarted { index, name: task_name(spec, index) });
                    }
                    Some(Accepted::TaskFinished { index, exit_code, duration_ms }) => {
                        seen_tasks.push(TaskOutcome { name: task_name(spec, index), exit_code: Some(exit_code), duration_ms });
                        emit(Event::TaskFinished { index, name: task_name(spec, index), exit_code, duration_ms });
                    }
                    Some(Accepted::Result) => emit(Event::Phase(Phase::Collecting)),
                },
            }
        };
        // Nobody reads markers any more: the console pump must not wait for room to send
        // them (a guest printing thousands of markers would hang the run, slot and all).
        drop(marks);
        if phases.ignored > 0 {
            info!(
                ignored = phases.ignored,
                "console markers out of order were ignored"
            );
        }
        if !matches!(ending, Ending::Exited) {
            stop(&mut child, pid).await;
        }
        let log = console.await.unwrap_or_default();
        let qemu_stderr = stderr_task.await.unwrap_or_default();
        let t_collect = Instant::now();
        let boot_ms = phases
            .ready_at()
            .map_or(0, |t| t.duration_since(t_boot).as_millis() as u64);
        let run_ms = phases.ready_at().map_or(0, |t| {
            phases
                .result_at()
                .unwrap_or(t_collect)
                .duration_since(t)
                .as_millis() as u64
        });

        // Collect.
        let artifacts_dir = req.out_dir.join("artifacts");
        let mut notes = Vec::new();
        let mut tasks: Vec<TaskOutcome> = Vec::new();
        let mut manifest = Manifest::new(Vec::new());
        let status = match ending {
            Ending::Cancelled => BuildStatus::Error {
                reason: "cancelled".into(),
            },
            Ending::BootStuck => BuildStatus::Error {
                reason: format!("the VM did not boot within {}s", BOOT_DEADLINE.as_secs()),
            },
            Ending::TimedOut => {
                // The outputs of a job that ran out of time are not read (nor written).
                tasks = std::mem::take(&mut seen_tasks);
                if let Some((index, t)) = phases.running() {
                    tasks.push(TaskOutcome {
                        name: task_name(spec, index),
                        exit_code: None,
                        duration_ms: t.elapsed().as_millis() as u64,
                    });
                }
                BuildStatus::TimedOut
            }
            Ending::Exited => {
                let (out, dest, quota) = (
                    output.clone(),
                    artifacts_dir.clone(),
                    spec.resources.disk_bytes,
                );
                let collected = tokio::task::spawn_blocking(move || {
                    let st = output::read_status(&out);
                    let m = st
                        .is_ok()
                        .then(|| output::collect_artifacts(&out, &dest, quota));
                    (st, m)
                })
                .await?;
                match collected {
                    (Ok(st), collected) => {
                        tasks = st
                            .tasks
                            .iter()
                            .map(|&(i, rc, ms)| TaskOutcome {
                                name: task_name(spec, i),
                                exit_code: Some(rc),
                                duration_ms: ms,
                            })
                            .collect();
                        for u in &st.unmatched {
                            notes.push(format!("artifact glob {u:?} matched nothing"));
                        }
                        for (i, victim) in &st.oom {
                            notes.push(format!(
                                "the guest ran out of memory during task {} ({} was killed)",
                                task_name(spec, *i),
                                if victim.is_empty() {
                                    "a process"
                                } else {
                                    victim
                                }
                            ));
                        }
                        // Why the output, if anything, broke the rules: its fault, not the
                        // infrastructure's, so a retry elsewhere would not help.
                        let mut refused = st.overflow.then_some(Failure::OutputOverQuota);
                        match collected {
                            Some(Ok(m)) => manifest = m,
                            Some(Err(e)) => {
                                refused = Some(if e.over_quota() {
                                    Failure::OutputOverQuota
                                } else {
                                    Failure::OutputRefused {
                                        why: format!("{:#}", anyhow::Error::from(e)),
                                    }
                                });
                            }
                            None => {}
                        }
                        if let Some(why) = &refused {
                            notes.push(format!(
                                "the output was refused: {why} (quota {})",
                                barn_protocol::jobfile::show_size(spec.resources.disk_bytes)
                            ));
                            // Nothing of a refused output stays on the host.
                            manifest = Manifest::new(Vec::new());
                            let _ = std::fs::remove_dir_all(&artifacts_dir);
                        }
                        match tasks
                            .iter()
                            .enumerate()
                            .find(|(_, t)| t.exit_code != Some(0))
                        {
                            Some((i, t)) => BuildStatus::Failed {
                                task: t.name.clone(),
                                exit_code: t.exit_code.unwrap_or(-1),
                                reason: st.tasks.get(i).and_then(|&(index, _, _)| {
                                    let (_, victim) = st.oom.iter().find(|(o, _)| *o == index)?;
                                    Some(Failure::OutOfMemory {
                                        victim: victim.clone(),
                                    })
                                }),
                            },
                            None if refused.is_some() => BuildStatus::Failed {
                                task: OUTPUT_TASK.into(),
                                exit_code: 1,
                                reason: refused,
                            },
                            None if st.ok == Some(true) && tasks.len() == spec.tasks.len() => {
                                BuildStatus::Succeeded
                            }
                            None => BuildStatus::Error {
                                reason: "the guest's status record is incomplete".into(),
                            },
                        }
                    }
                    (Err(output::OutputError::NoStatus), _) => {
                        let last = log.last_lines.join(" | ");
                        let why = if qemu_stderr.trim().is_empty() {
                            last
                        } else {
                            qemu_stderr.trim().to_string()
                        };
                        BuildStatus::Error {
                            reason: format!(
                                "the guest stopped before finishing: {}",
                                truncate(&why, 300)
                            ),
                        }
                    }
                    // The tar before the status was hostile (an oversized header, a
                    // sparse member): the job's doing, since only the guest wrote it.
                    (Err(e @ output::OutputError::Manifest(_)), _) => BuildStatus::Failed {
                        task: OUTPUT_TASK.into(),
                        exit_code: 1,
                        reason: Some(Failure::OutputRefused {
                            why: format!("{:#}", anyhow::Error::from(e)),
                        }),
                    },
                    (Err(e), _) => BuildStatus::Error {
                        reason: format!("{:#}", anyhow::Error::from(e)),
                    },
                }
            }
        };
        // An image whose init predates variations would build in the fixed environment
        // while the result claims otherwise: that is an infrastructure error.
        let status = if !req.variation.guest_file().is_empty()
            && !phases.varied()
            && matches!(status, BuildStatus::Succeeded | BuildStatus::Failed { .. })
        {
            BuildStatus::Error {
                reason: "the image's guest init did not apply the variations; rebuild the image"
                    .into(),
            }
        } else {
            status
        };
        if log.dropped > 0 {
            notes.push(format!(
                "the log was cut at {} ({} bytes dropped)",
                barn_protocol::jobfile::show_size(self.cfg.log_cap),
                log.dropped
            ));
        }
        // Collecting starts when the guest reports its result: writing the output tar and
        // powering off are part of it, then the host reads the disk.
        let collect_ms = phases
            .result_at()
            .unwrap_or(t_collect)
            .elapsed()
            .as_millis() as u64;
        let (log_hash, log_size) = ContentHash::of_reader(std::fs::File::open(&log_path)?)?;
        emit(Event::Phase(Phase::Done));
        if self.cfg.keep_work {
            let kept = work.keep();
            info!(dir = %kept.display(), "kept work directory");
        }
        let manifest_root = manifest.root();
        Ok(RunReport {
            status,
            tasks,
            manifest,
            manifest_root,
            log_path,
            log_hash,
            log_size,
            log_dropped: log.dropped,
            artifacts_dir,
            timings: Timings {
                fetch_ms: 0,
                prepare_ms,
                boot_ms,
                run_ms,
                collect_ms,
                total_ms: t0.elapsed().as_millis() as u64,
            },
            accel,
            qemu_version,
            image_hash: req.image.hash,
            notes,
        })
    }
}

fn task_name(spec: &JobSpec, index: usize) -> String {
    spec.tasks
        .get(index)
        .map(|t| t.name.clone())
        .unwrap_or_else(|| format!("task-{index}"))
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// SIGTERM, a grace period, then SIGKILL; waits for the process either way.
async fn stop(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
            return;
        }
        warn!(pid, "qemu ignored SIGTERM; killing it");
    }
    let _ = child.kill().await;
}

mod console;
