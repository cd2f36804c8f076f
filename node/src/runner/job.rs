//! One job's run: the phase machine of the runner's header. [`Runner::run`] steps a
//! `Phase` from `Prepare` to `Done`; each step is one method that takes what the phase
//! before it made and returns what the next one needs.
//!
//! ```text
//!   (admit: a VM slot, guest memory)
//!        │
//!   Prepare ──▶ Boot ──▶ Run ──▶ Collect ──▶ Done(report)
//!      │          │        │        │
//!      └──────────┴────────┴────────┴──▶ RunError: no report could be made
//! ```
//!
//! - **Prepare**: the job's folder, the input disk, the sparse output disk, the image
//!   (linked in under a root node) and the VM's configuration.
//! - **Boot**: QEMU started confined, its console and stderr drained by tasks of their own.
//! - **Run**: the VM on the host's clock (`phases.rs`: boot, tasks, the guest writing its
//!   outputs) until it ends one of the four ways of `Ending`; unless QEMU exited by itself
//!   it is stopped (SIGTERM, [`KILL_GRACE`], SIGKILL). This phase cannot fail.
//! - **Collect**: the ending and the output disk (read as untrusted data) become the
//!   build's status, tasks, artifacts and notes; the log is hashed.
//!
//! A build that fails, times out, is cancelled while its VM runs or trips an
//! infrastructure rule (a VM that never boots) is a report, not an error: a [`RunError`]
//! means the host itself could not run the job (a full disk, no QEMU, cancelled before a
//! slot was free).

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use barn_protocol::ContentHash;
use barn_protocol::guest::{GuestStatus, Mark};
use barn_protocol::manifest::Manifest;
use barn_protocol::message::{self, Accel, BuildStatus, Failure, JobSpec, TaskOutcome, Timings};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, mpsc};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::console::{self, ConsoleSummary};
use super::output::{self, OutputError};
use super::phases::{Accepted, Phases, VmPhase};
use super::{
    BOOT_DEADLINE, Event, KILL_GRACE, OUTPUT_TASK, RunReport, RunRequest, Runner, confine, input,
    qemu,
};

/// Why a run made no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("this node cannot confine QEMU, so it runs no job: {0}")]
    Unconfined(String),
    #[error("cancelled while waiting for a free VM slot")]
    CancelledWaitingForSlot,
    #[error("cancelled while waiting for free memory")]
    CancelledWaitingForMemory,
    #[error("failed to take a VM slot")]
    Slot(#[source] AcquireError),
    #[error("failed to reserve {mib} MiB of guest memory")]
    Memory {
        mib: u32,
        #[source]
        source: AcquireError,
    },
    #[error("failed to make the job's folder")]
    JobDir(#[source] confine::ConfineError),
    #[error("failed to create {}", path.display())]
    OutDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write the input disk {}", path.display())]
    InputDisk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to create the output disk {}", path.display())]
    OutputDisk {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to link the image into the job's folder")]
    StageImage(#[source] io::Error),
    #[error("failed to start {}", qemu.display())]
    Start {
        qemu: PathBuf,
        #[source]
        source: confine::ConfineError,
    },
    #[error("failed to {what}")]
    Blocking {
        /// What the blocking task was doing, completing "failed to …".
        what: &'static str,
        #[source]
        source: JoinError,
    },
    #[error("failed to hash the log {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where a run is; each variant holds what the phase before it made.
enum Phase<'r> {
    Prepare,
    Boot(Prepared<'r>),
    Run(Vm<'r>),
    Collect(Stopped<'r>),
    Done(RunReport),
}

/// How the Run phase ended.
enum Ending {
    Exited,
    TimedOut,
    Cancelled,
    BootStuck,
}

/// What Prepare made: the job's folder with both disks, and the VM to start.
struct Prepared<'r> {
    /// Removed when the run ends, unless the node keeps work folders.
    work: confine::JobDir<'r>,
    output: PathBuf,
    vm: qemu::VmConfig,
    qemu_version: String,
    prepare_ms: u64,
}

/// A started VM and the tasks draining its console and stderr.
struct Vm<'r> {
    prepared: Prepared<'r>,
    child: Child,
    pid: Option<u32>,
    marks: mpsc::Receiver<Mark>,
    console: JoinHandle<ConsoleSummary>,
    stderr: JoinHandle<String>,
    log_path: PathBuf,
    t_boot: Instant,
}

/// A VM that is gone: how it ended, what the host's clock saw, and its console.
struct Stopped<'r> {
    prepared: Prepared<'r>,
    /// Reaped by now; kept (it is killed on drop) until the report is made, in case
    /// waiting for it failed.
    child: Child,
    ending: Ending,
    phases: Phases,
    /// Tasks as the console reported them; used when the guest is stopped before it can
    /// write its own status record.
    seen_tasks: Vec<TaskOutcome>,
    log: ConsoleSummary,
    log_path: PathBuf,
    qemu_stderr: String,
    t_boot: Instant,
    t_collect: Instant,
}

/// What the output disk said, once judged.
struct Judged {
    status: BuildStatus,
    tasks: Vec<TaskOutcome>,
    manifest: Manifest,
}

/// One run's fixed inputs, shared by its phases.
struct Job<'r> {
    runner: &'r Runner,
    confinement: &'r confine::Confinement,
    req: &'r RunRequest,
    accel: Accel,
    events: &'r mpsc::Sender<Event>,
    cancel: &'r CancellationToken,
    memory_mib: u64,
    t0: Instant,
}

impl Runner {
    /// Runs `req` to the end. Infrastructure failures become `BuildStatus::Error` in the
    /// report; an `Err` means not even a report could be made (e.g. the disk is full).
    pub async fn run(
        &self,
        req: RunRequest,
        accel: Accel,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<RunReport, RunError> {
        let confinement = match self.confinement.as_ref() {
            Ok(c) => c,
            Err(why) => return Err(RunError::Unconfined(why.clone())),
        };
        let spec = &req.spec;
        let memory_mib = (spec.resources.memory_bytes.min(self.cfg.max_memory_bytes) >> 20).max(64);
        // Held until the run returns, after its folder is gone.
        let _admitted = self.admit(memory_mib, &cancel).await?;
        let job = Job {
            runner: self,
            confinement,
            req: &req,
            accel,
            events: &events,
            cancel: &cancel,
            memory_mib,
            t0: Instant::now(),
        };
        let mut phase = Phase::Prepare;
        loop {
            phase = match phase {
                Phase::Prepare => Phase::Boot(job.prepare().await?),
                Phase::Boot(prepared) => Phase::Run(job.boot(prepared)?),
                Phase::Run(vm) => Phase::Collect(job.watch(vm).await),
                Phase::Collect(stopped) => Phase::Done(job.collect(stopped).await?),
                Phase::Done(report) => return Ok(report),
            };
        }
    }

    /// Waits for a VM slot, then for `memory_mib` of guest memory (the guest memory of all
    /// running VMs stays within the node's total), unless cancelled first.
    async fn admit(
        &self,
        memory_mib: u64,
        cancel: &CancellationToken,
    ) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), RunError> {
        let slot = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(RunError::CancelledWaitingForSlot),
            p = self.slots.clone().acquire_owned() => p.map_err(RunError::Slot)?,
        };
        let want = u32::try_from(memory_mib.min(self.memory_total_mib)).unwrap_or(u32::MAX);
        let memory = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(RunError::CancelledWaitingForMemory),
            p = self.memory.clone().acquire_many_owned(want) => {
                p.map_err(|source| RunError::Memory { mib: want, source })?
            }
        };
        Ok((slot, memory))
    }
}

impl<'r> Job<'r> {
    fn emit(&self, e: Event) {
        // Displays may lag; the VM must not: drop display events rather than block.
        let _ = self.events.try_send(e);
    }

    /// Prepare: the job's folder, both disks and the VM's configuration.
    async fn prepare(&self) -> Result<Prepared<'r>, RunError> {
        let (req, spec) = (self.req, &self.req.spec);
        self.emit(Event::Phase(message::Phase::Preparing));
        let drop_privileges = self.confinement.drops_privileges();
        let work = self.confinement.job_dir().map_err(RunError::JobDir)?;
        std::fs::create_dir_all(&req.out_dir).map_err(|source| RunError::OutDir {
            path: req.out_dir.clone(),
            source,
        })?;
        let input = work.path().join("input.tar");
        let output = work.path().join("output.img");
        {
            let (spec, src, disk) = (spec.clone(), req.source_tar.clone(), input.clone());
            let variation = req.variation.clone();
            tokio::task::spawn_blocking(move || input::write_input(&spec, &src, &disk, &variation))
                .await
                .map_err(|source| RunError::Blocking {
                    what: "write the input disk",
                    source,
                })?
                .map_err(|source| RunError::InputDisk {
                    path: input.clone(),
                    source,
                })?;
        }
        std::fs::File::create_new(&output)
            .and_then(|f| f.set_len(spec.resources.disk_bytes))
            .map_err(|source| RunError::OutputDisk {
                path: output.clone(),
                source,
            })?;
        let (kernel, initrd, root) = if drop_privileges {
            confine::stage(
                &work,
                &req.image.kernel(),
                &req.image.initrd(),
                req.image.root().as_deref(),
                &output,
            )
            .map_err(RunError::StageImage)?
        } else {
            (req.image.kernel(), req.image.initrd(), req.image.root())
        };

        let qemu_bin = PathBuf::from(qemu::qemu_binary(&spec.arch));
        let qemu_version = self.runner.qemu_version(&qemu_bin);
        let vm = qemu::VmConfig {
            qemu: qemu_bin,
            accel: self.accel,
            cpus: req
                .variation
                .cpus()
                .unwrap_or(spec.resources.cpus)
                .min(self.runner.cfg.max_cpus)
                .max(1),
            memory_mib: self.memory_mib,
            kernel,
            initrd,
            root,
            input,
            output: output.clone(),
            tsc_khz: self.runner.tsc_khz,
            no_sandbox: false,
        };
        Ok(Prepared {
            work,
            output,
            vm,
            qemu_version,
            prepare_ms: self.t0.elapsed().as_millis() as u64,
        })
    }

    /// Boot: QEMU started confined, its console and stderr drained.
    fn boot(&self, prepared: Prepared<'r>) -> Result<Vm<'r>, RunError> {
        let spec = &self.req.spec;
        self.emit(Event::Phase(message::Phase::Booting));
        let log_path = self.req.out_dir.join("log");
        let t_boot = Instant::now();
        let vm = &prepared.vm;
        let mut cmd = Command::new(&vm.qemu);
        cmd.args(vm.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.confinement.apply(
            &mut cmd,
            &prepared.work,
            vm.memory_mib << 20,
            spec.resources.disk_bytes,
            self.accel == Accel::Kvm,
        );
        debug!(?cmd, "starting qemu");
        let mut child = confine::spawn_err(cmd.spawn()).map_err(|source| RunError::Start {
            qemu: vm.qemu.clone(),
            source,
        })?;
        if let Some(pid) = child.id() {
            self.confinement.record_pid(prepared.work.path(), pid);
        }
        let pid = child.id();
        let stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let (marks_tx, marks) = mpsc::channel::<Mark>(256);
        let console = tokio::spawn(console::pump(
            stdout,
            log_path.clone(),
            self.runner.cfg.log_cap,
            marks_tx,
            self.events.clone(),
        ));
        let stderr = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(s) = stderr.as_mut() {
                let _ = s.take(64 * 1024).read_to_end(&mut buf).await;
            }
            String::from_utf8_lossy(&buf).into_owned()
        });
        Ok(Vm {
            prepared,
            child,
            pid,
            marks,
            console,
            stderr,
            log_path,
            t_boot,
        })
    }

    /// Run: the VM on the host's clock until it exits, a deadline passes or the run is
    /// cancelled; then it is stopped and its console read to the end.
    async fn watch(&self, vm: Vm<'r>) -> Stopped<'r> {
        let spec = &self.req.spec;
        let Vm {
            prepared,
            mut child,
            pid,
            mut marks,
            console,
            stderr,
            log_path,
            t_boot,
        } = vm;
        let mut phases = Phases::new(
            t_boot,
            BOOT_DEADLINE,
            Duration::from_secs(spec.timeout_secs),
        );
        let mut seen_tasks: Vec<TaskOutcome> = Vec::new();
        let ending = loop {
            let deadline = phases.deadline();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break Ending::Cancelled,
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
                    Some(Accepted::Ready) => self.emit(Event::Phase(message::Phase::Running)),
                    Some(Accepted::TaskStarted(index)) => {
                        self.emit(Event::TaskStarted { index, name: task_name(spec, index) });
                    }
                    Some(Accepted::TaskFinished { index, exit_code, duration_ms }) => {
                        seen_tasks.push(TaskOutcome { name: task_name(spec, index), exit_code: Some(exit_code), duration_ms });
                        self.emit(Event::TaskFinished { index, name: task_name(spec, index), exit_code, duration_ms });
                    }
                    Some(Accepted::Result) => self.emit(Event::Phase(message::Phase::Collecting)),
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
        let qemu_stderr = stderr.await.unwrap_or_default();
        Stopped {
            prepared,
            child,
            ending,
            phases,
            seen_tasks,
            log,
            log_path,
            qemu_stderr,
            t_boot,
            t_collect: Instant::now(),
        }
    }

    /// Collect: the build's status from how the VM ended and what its output disk says,
    /// the artifacts, the notes and the log's hash.
    async fn collect(&self, stopped: Stopped<'r>) -> Result<RunReport, RunError> {
        let (req, spec) = (self.req, &self.req.spec);
        let Stopped {
            prepared,
            child,
            ending,
            phases,
            mut seen_tasks,
            log,
            log_path,
            qemu_stderr,
            t_boot,
            t_collect,
        } = stopped;
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
                    prepared.output.clone(),
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
                .await
                .map_err(|source| RunError::Blocking {
                    what: "read the output disk",
                    source,
                })?;
                let judged = judge_output(
                    spec,
                    collected,
                    &artifacts_dir,
                    &log,
                    &qemu_stderr,
                    &mut notes,
                );
                tasks = judged.tasks;
                manifest = judged.manifest;
                judged.status
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
                barn_protocol::jobfile::show_size(self.runner.cfg.log_cap),
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
        let (log_hash, log_size) = std::fs::File::open(&log_path)
            .and_then(ContentHash::of_reader)
            .map_err(|source| RunError::Log {
                path: log_path.clone(),
                source,
            })?;
        self.emit(Event::Phase(message::Phase::Done));
        drop(child);
        let Prepared {
            work,
            qemu_version,
            prepare_ms,
            ..
        } = prepared;
        if self.runner.cfg.keep_work {
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
                total_ms: self.t0.elapsed().as_millis() as u64,
            },
            accel: self.accel,
            qemu_version,
            image_hash: req.image.hash,
            notes,
        })
    }
}

/// The status of a VM that exited by itself, from what its output disk holds: the
/// guest's status record and, when that was readable, the artifacts collected. A refused
/// output leaves nothing on the host.
fn judge_output(
    spec: &JobSpec,
    collected: (
        Result<GuestStatus, OutputError>,
        Option<Result<Manifest, OutputError>>,
    ),
    artifacts_dir: &std::path::Path,
    log: &ConsoleSummary,
    qemu_stderr: &str,
    notes: &mut Vec<String>,
) -> Judged {
    let mut tasks: Vec<TaskOutcome> = Vec::new();
    let mut manifest = Manifest::new(Vec::new());
    let status = match collected {
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
                let _ = std::fs::remove_dir_all(artifacts_dir);
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
        (Err(OutputError::NoStatus), _) => {
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
        (Err(e @ OutputError::Manifest(_)), _) => BuildStatus::Failed {
            task: OUTPUT_TASK.into(),
            exit_code: 1,
            reason: Some(Failure::OutputRefused {
                why: format!("{:#}", anyhow::Error::from(e)),
            }),
        },
        (Err(e), _) => BuildStatus::Error {
            reason: format!("{:#}", anyhow::Error::from(e)),
        },
    };
    Judged {
        status,
        tasks,
        manifest,
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
async fn stop(child: &mut Child, pid: Option<u32>) {
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

#[cfg(test)]
mod tests {
    use barn_protocol::manifest::{Entry, EntryKind, ManifestError};

    use super::*;

    /// A job with two tasks, `build` and `test`, and a 1 MiB output disk.
    fn spec() -> JobSpec {
        let mut spec = barn_protocol::jobfile::parse(
            "image = \"tiny-x86_64\"\narch = \"x86_64\"\n\
             [[task]]\nname = \"build\"\nrun = \"true\"\n\
             [[task]]\nname = \"test\"\nrun = \"true\"\n",
            "barn.toml",
        )
        .unwrap()
        .remove(0);
        spec.resources.disk_bytes = 1 << 20;
        spec
    }

    fn manifest() -> Manifest {
        Manifest::new(vec![Entry {
            path: "out/a".into(),
            kind: EntryKind::File,
            executable: false,
            size: 1,
            hash: Some(ContentHash::of(b"a")),
            target: None,
        }])
    }

    fn status(tasks: &[i32], ok: bool) -> GuestStatus {
        GuestStatus {
            tasks: tasks
                .iter()
                .enumerate()
                .map(|(i, &rc)| (i, rc, 10))
                .collect(),
            ok: Some(ok),
            ..GuestStatus::default()
        }
    }

    fn judge(
        collected: (
            Result<GuestStatus, OutputError>,
            Option<Result<Manifest, OutputError>>,
        ),
        artifacts: &std::path::Path,
        stderr: &str,
    ) -> (Judged, Vec<String>) {
        let log = ConsoleSummary {
            dropped: 0,
            last_lines: vec!["kernel panic".into()],
        };
        let mut notes = Vec::new();
        let judged = judge_output(&spec(), collected, artifacts, &log, stderr, &mut notes);
        (judged, notes)
    }

    #[test]
    fn every_task_passing_with_a_complete_record_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let (j, notes) = judge(
            (Ok(status(&[0, 0], true)), Some(Ok(manifest()))),
            dir.path(),
            "",
        );
        assert_eq!(j.status, BuildStatus::Succeeded);
        assert_eq!(j.manifest, manifest());
        assert_eq!(
            j.tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["build", "test"]
        );
        assert!(notes.is_empty(), "{notes:?}");
        // A record that stops after the first task is the infrastructure's failure.
        let (j, _) = judge(
            (Ok(status(&[0], true)), Some(Ok(manifest()))),
            dir.path(),
            "",
        );
        assert_eq!(
            j.status,
            BuildStatus::Error {
                reason: "the guest's status record is incomplete".into()
            }
        );
    }

    #[test]
    fn the_first_failing_task_is_named_with_its_oom_victim() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = status(&[0, 137], false);
        st.oom = vec![(1, "cc1".into())];
        let (j, notes) = judge((Ok(st), Some(Ok(manifest()))), dir.path(), "");
        assert_eq!(
            j.status,
            BuildStatus::Failed {
                task: "test".into(),
                exit_code: 137,
                reason: Some(Failure::OutOfMemory {
                    victim: "cc1".into()
                }),
            }
        );
        assert_eq!(
            notes,
            ["the guest ran out of memory during task test (cc1 was killed)"]
        );
    }

    #[test]
    fn a_refused_output_fails_the_output_task_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir_all(&artifacts).unwrap();
        let over = OutputError::Manifest(ManifestError::TooLarge { limit: 1 << 20 });
        let (j, notes) = judge((Ok(status(&[0, 0], true)), Some(Err(over))), &artifacts, "");
        assert_eq!(
            j.status,
            BuildStatus::Failed {
                task: OUTPUT_TASK.into(),
                exit_code: 1,
                reason: Some(Failure::OutputOverQuota),
            }
        );
        assert_eq!(j.manifest, Manifest::new(Vec::new()));
        assert!(!artifacts.exists());
        assert_eq!(
            notes,
            ["the output was refused: output over quota (quota 1MiB)"]
        );
    }

    #[test]
    fn a_guest_that_wrote_no_status_is_explained_by_qemu_or_the_console() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = judge((Err(OutputError::NoStatus), None), dir.path(), "");
        assert_eq!(
            j.status,
            BuildStatus::Error {
                reason: "the guest stopped before finishing: kernel panic".into()
            }
        );
        let (j, _) = judge(
            (Err(OutputError::NoStatus), None),
            dir.path(),
            " qemu: could not load kernel \n",
        );
        assert_eq!(
            j.status,
            BuildStatus::Error {
                reason: "the guest stopped before finishing: qemu: could not load kernel".into()
            }
        );
    }

    #[test]
    fn run_errors_name_what_failed_and_keep_their_cause() {
        let err = RunError::OutputDisk {
            path: "/w/output.img".into(),
            source: io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            format!("{:#}", anyhow::Error::new(err)),
            "failed to create the output disk /w/output.img: No space left on device (os error 28)"
        );
    }
}
