//! The confinement around QEMU. QEMU states that TCG is not a security boundary; the
//! boundary is what surrounds QEMU, and it is structural, not a matter of flags:
//!
//! - **A private scratch folder per node run.** Made with `mkdtemp` under a parent that is
//!   checked with `lstat` (a directory, not a link, owned by the node's user, writable by
//!   no one else): `<tmp>/barn-vm` for a root node (QEMU, running as a user of its own, must
//!   traverse it), `<work>/vm` otherwise. Modes and owners are changed through file
//!   descriptors opened without following links. A parent pre-created by another user
//!   is refused, so nobody can swap a job folder for a link that root writes through.
//! - **QEMU's own process** is set up between `fork` and `exec` (`pre_exec`, below), with
//!   syscalls only, in this order: it joins the node's cgroup, gets its rlimits (no core
//!   dumps, 1024 open files, the output disk's size as the largest file, guest memory plus
//!   1 GiB of address space), enters a new network namespace that has only a loopback
//!   interface (with a new user namespace when the node is not root), drops to a user of
//!   its own (one uid and gid per VM slot, [`VM_ID_BASE`])
//!   with no groups when the node is root, asks for SIGKILL when the node dies
//!   (`PR_SET_PDEATHSIG`, set after the user change, which clears it), checks that the node
//!   did not die in between, and sets no-new-privileges. QEMU's seccomp sandbox comes on
//!   top (`-sandbox on,…`, in [`super::qemu`]).
//! - **One cgroup for all the node's VMs**, capping their memory (`node.max_memory` plus
//!   QEMU's own overhead per VM), CPUs (`node.max_cpus`) and process count together. Both
//!   cgroup v1 (memory, pids and cpu controllers, as on these machines) and v2 are
//!   supported; the node's cgroup is made below the node's own.
//! - **Crash hygiene.** Each run of a node writes an `owner` file into its scratch folder
//!   (its pid, start time and work folder) and a `qemu.pid` file (pid and start time)
//!   into each job folder. At start, the scratch folders of this node's earlier runs whose
//!   owner is dead are cleaned: their VMs killed (only processes whose pid *and* start
//!   time match a pid file, never by name), their cgroups emptied and removed, their files
//!   deleted. Live runs (a `barn run` beside a `barn node` on one data folder) are left be.
//!
//! Confinement fails closed: if any part cannot be had, [`Confinement::prepare`] says why
//! and the runner refuses jobs, unless the owner set `node.unconfined = true` (then QEMU
//! runs as the node's user with its seccomp sandbox and the wall-clock kill, and the node
//! says so loudly).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};
use tracing::{info, warn};

/// The first of the user ids QEMU runs as under a root node: each VM gets its own uid
/// and gid, `VM_ID_BASE + 256 × (a number drawn from this run's scratch folder, below
/// 65,536) + a slot`, a range no account or subordinate-id map on a normal system uses,
/// so that an escape from one VM is a stranger to every other VM, to other nodes' VMs and
/// to the machine's `nobody` services.
pub const VM_ID_BASE: u32 = 0x7000_0000;

/// Address space allowed beyond the guest's memory.
const AS_MARGIN: u64 = 1 << 30;
/// Memory QEMU itself may use beyond its guest's (TCG's 128 MiB translation buffer,
/// libraries, threads), counted per VM in the node's cgroup.
pub const QEMU_OVERHEAD: u64 = 384 << 20;
/// Processes and threads one VM may have (a QEMU with TCG threads and its I/O pool).
const PIDS_PER_VM: u64 = 256;
/// The largest `owner` or `qemu.pid` file read.
const MAX_PID_FILE: u64 = 4096;

/// True when this process runs as root.
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// What the node allows all its VMs together.
#[derive(Debug, Clone, Copy)]
pub struct Totals {
    pub vms: usize,
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// Why QEMU cannot be confined.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("the scratch folder {path} is unsafe: {why}")]
    UnsafeScratch { path: PathBuf, why: String },
    #[error("failed to {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup for the node's VMs: {0}")]
    Cgroup(String),
    #[error("failed to {step} for QEMU: {source}")]
    Child {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ConfineError {
    let path = path.to_path_buf();
    move |source| ConfineError::Io { what, path, source }
}

/// How QEMU is started on this node.
#[derive(Debug)]
pub struct Confinement {
    /// This run's private scratch folder (removed when the node stops).
    scratch: tempfile::TempDir,
    /// The parent and the scratch folder as first seen, checked again before every job
    /// (the folders are reached by path: nobody may have swapped one since).
    seen: [(PathBuf, FileId); 2],
    /// `None`: unconfined (the owner's explicit choice).
    confined: Option<Confined>,
}

#[derive(Debug)]
struct Confined {
    /// QEMU runs as a user of its own (the node is root).
    drop_privileges: bool,
    /// The user ids free for VMs (one per slot), when `drop_privileges`.
    free_ids: std::sync::Mutex<Vec<u32>>,
    /// Required for a root node; a node of another user has one only where its cgroup was
    /// delegated to it.
    cgroup: Option<Cgroup>,
}

impl Confinement {
    /// Cleans what earlier runs of this node left, makes this run's scratch folder and
    /// cgroup, and checks (with a real child process) that QEMU can be confined. With
    /// `unconfined`, a failure is a warning and QEMU runs without the confinement.
    pub fn prepare(
        work_dir: &Path,
        totals: Totals,
        unconfined: bool,
    ) -> Result<Self, ConfineError> {
        let root = is_root();
        let parent = if root {
            std::env::temp_dir().join("barn-vm")
        } else {
            work_dir.join("vm")
        };
        if !root {
            fs::create_dir_all(work_dir).map_err(io_err("create", work_dir))?;
        }
        check_ancestors(&parent)?;
        ensure_private_parent(&parent, if root { 0o711 } else { 0o700 })?;
        clean_earlier_runs(&parent, work_dir);
        let scratch = tempfile::Builder::new()
            .prefix("node-")
            .tempdir_in(&parent)
            .map_err(io_err("create a scratch folder in", &parent))?;
        chmod_dir(scratch.path(), 0o711)?;
        let seen = [
            (parent.clone(), FileId::of(&parent)?),
            (scratch.path().to_path_buf(), FileId::of(scratch.path())?),
        ];
        // Written before the cgroup exists and again with it, so that a crash at any point
        // leaves the next start what it needs to clean up.
        let owner_path = scratch.path().join("owner");
        Owner::me(work_dir, None).write(&owner_path)?;
        let confined = if unconfined {
            warn!(
                "node.unconfined = true: QEMU runs WITHOUT its confinement (no network namespace, \
                 no cgroup, no parent-death signal{}); only QEMU's seccomp sandbox and the \
                 wall-clock kill remain",
                if root { ", and as root" } else { "" }
            );
            None
        } else {
            let name = scratch
                .path()
                .file_name()
                .map(|n| format!("barn-{}", n.to_string_lossy()))
                .unwrap_or_else(|| format!("barn-{}", std::process::id()));
            let cgroup = match Cgroup::create(&name, totals) {
                Ok(c) => Some(c),
                Err(e) if !root => {
                    info!(err = %e, "no cgroup for the VMs (the node is not root): node.max_memory and node.max_cpus hold per VM only");
                    None
                }
                Err(e) => return Err(e),
            };
            // Ids from this run's own block: the scratch folder's random name picks it.
            let drawn = blake3::hash(scratch.path().as_os_str().as_encoded_bytes());
            let block = u32::from(u16::from_le_bytes([
                drawn.as_bytes()[0],
                drawn.as_bytes()[1],
            ]));
            let first = VM_ID_BASE + block * 256;
            let slots = totals.vms.clamp(1, 255) as u32;
            Some(Confined {
                drop_privileges: root,
                free_ids: std::sync::Mutex::new((first..first + slots).rev().collect()),
                cgroup,
            })
        };
        let cgroups = confined
            .as_ref()
            .and_then(|c| c.cgroup.as_ref())
            .map(|c| c.dirs.clone());
        if cgroups.is_some() {
            Owner::me(work_dir, cgroups).write(&owner_path)?;
        }
        let this = Self {
            scratch,
            seen,
            confined,
        };
        this.probe()?;
        Ok(this)
    }

    /// True when QEMU runs as a user of its own and needs its files staged readable.
    pub fn drops_privileges(&self) -> bool {
        self.confined.as_ref().is_some_and(|c| c.drop_privileges)
    }

    /// The node's cgroup folders (one per controller under cgroup v1).
    fn cgroup_dirs(&self) -> &[PathBuf] {
        match self.confined.as_ref().and_then(|c| c.cgroup.as_ref()) {
            Some(c) => &c.dirs,
            None => &[],
        }
    }

    /// A fresh folder for one job, traversable by QEMU's user, and (under a root node) the
    /// user id its VM runs as, free again when the folder is dropped.
    pub fn job_dir(&self) -> Result<JobDir<'_>, ConfineError> {
        for (path, id) in &self.seen {
            if FileId::of(path).ok().as_ref() != Some(id) {
                return Err(ConfineError::UnsafeScratch {
                    path: path.clone(),
                    why: "it was replaced since the node started".into(),
                });
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("job-")
            .tempdir_in(self.scratch.path())
            .map_err(io_err("create a job folder in", self.scratch.path()))?;
        chmod_dir(dir.path(), 0o711)?;
        let id = match &self.confined {
            Some(c) if c.drop_privileges => {
                let mut free = c.free_ids.lock().unwrap_or_else(|e| e.into_inner());
                Some(free.pop().ok_or_else(|| {
                    ConfineError::Cgroup("more VMs than slots: no user id is free".into())
                })?)
            }
            _ => None,
        };
        Ok(JobDir {
            dir: Some(dir),
            id,
            confinement: self,
        })
    }

    /// Makes `cmd` start confined: `memory_bytes` of guest memory, `max_file` the largest
    /// file QEMU may write.
    /// `kvm`: QEMU will open `/dev/kvm`, so under a root node the VM's user keeps the device's
    /// group (and only that group) when the device grants its group read and write.
    pub fn apply(
        &self,
        cmd: &mut tokio::process::Command,
        job: &JobDir<'_>,
        memory_bytes: u64,
        max_file: u64,
        kvm: bool,
    ) {
        let Some(c) = &self.confined else { return };
        let groups = if kvm && c.drop_privileges {
            device_group(Path::new(KVM_DEVICE))
        } else {
            Vec::new()
        };
        let plan = ChildPlan {
            groups,
            cgroup_procs: c
                .cgroup
                .as_ref()
                .map(|g| g.procs.clone())
                .unwrap_or_default(),
            // Never above the node's own hard limits: only root could raise those.
            rlimits: [
                (Resource::RLIMIT_CORE, 0),
                (Resource::RLIMIT_NOFILE, 1024),
                (Resource::RLIMIT_FSIZE, max_file),
                (Resource::RLIMIT_AS, memory_bytes + AS_MARGIN),
            ]
            .map(|(res, limit)| {
                let hard = nix::sys::resource::getrlimit(res).map_or(limit, |(_, h)| h);
                (res, limit.min(hard))
            }),
            new_user_ns: !c.drop_privileges && !is_root(),
            drop_to: job.id,
            parent: Pid::this(),
        };
        child::pre_exec(cmd, plan);
    }

    /// Records a started QEMU in its job folder, for the next start's clean-up.
    pub fn record_pid(&self, job_dir: &Path, pid: u32) {
        let line = start_time(pid).map(|t| format!("{pid} {t}\n"));
        if let Some(line) = line
            && let Err(e) = fs::write(job_dir.join("qemu.pid"), line)
        {
            warn!(err = %e, "failed to write qemu.pid");
        }
    }

    /// Starts `true` confined, so a node that cannot confine QEMU knows at start, not at
    /// its first job.
    fn probe(&self) -> Result<(), ConfineError> {
        if self.confined.is_none() {
            return Ok(());
        }
        let mut cmd = tokio::process::Command::new("true");
        let job = self.job_dir()?;
        self.apply(&mut cmd, &job, 64 << 20, 1 << 20, false);
        let status = spawn_err(cmd.as_std_mut().status())?;
        if !status.success() {
            return Err(ConfineError::Cgroup(format!(
                "the probe exited with {status}"
            )));
        }
        Ok(())
    }
}

/// The KVM device QEMU opens.
const KVM_DEVICE: &str = "/dev/kvm";

/// The group that may read and write `device`, as the only supplementary group an
/// unprivileged QEMU keeps; none when the device grants its group nothing (then a KVM
/// canary run as the VM's user fails and the node uses TCG, as it must).
fn device_group(device: &Path) -> Vec<Gid> {
    match fs::metadata(device) {
        Ok(m) if m.mode() & 0o060 == 0o060 && is_kvm_group(m.gid()) => {
            vec![Gid::from_raw(m.gid())]
        }
        _ => Vec::new(),
    }
}

/// Only a group named `kvm` is kept: a device given to a broad group (`disk`, `users`)
/// would hand QEMU that group's other rights too.
fn is_kvm_group(gid: u32) -> bool {
    nix::unistd::Group::from_gid(Gid::from_raw(gid))
        .is_ok_and(|g| g.is_some_and(|g| g.name == "kvm"))
}

/// One job's folder and the user id its VM runs as (under a root node).
#[derive(Debug)]
pub struct JobDir<'a> {
    dir: Option<tempfile::TempDir>,
    id: Option<u32>,
    confinement: &'a Confinement,
}

impl JobDir<'_> {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// The uid and gid QEMU runs as, when it runs as a user of its own.
    pub fn vm_id(&self) -> Option<u32> {
        self.id
    }

    /// Keeps the folder after the run (for debugging) and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.dir.take().map(|d| d.keep()).unwrap_or_default()
    }
}

impl Drop for JobDir<'_> {
    fn drop(&mut self) {
        // The folder goes first (its TempDir), then the id is free for the next VM: no
        // process of this VM is alive by now (the runner waited for QEMU).
        self.dir.take();
        if let (Some(id), Some(c)) = (self.id, &self.confinement.confined) {
            c.free_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id);
        }
    }
}

/// Maps a spawn error into the confinement step that failed, when it came from
/// the confining `pre_exec`.
pub fn spawn_err<T>(r: io::Result<T>) -> Result<T, ConfineError> {
    r.map_err(|e| match e.raw_os_error().and_then(child::decode) {
        Some((step, errno)) => ConfineError::Child {
            step,
            source: errno,
        },
        None => ConfineError::Io {
            what: "start",
            path: PathBuf::from("qemu"),
            source: e,
        },
    })
}

/// What a folder is, as `lstat` sees it: device, inode, owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    uid: u32,
    mode: u32,
}

impl FileId {
    /// A directory, not a link, owned by this user and writable by no one else.
    fn of(path: &Path) -> Result<Self, ConfineError> {
        let meta = fs::symlink_metadata(path).map_err(io_err("inspect", path))?;
        let unsafe_because = |why: String| ConfineError::UnsafeScratch {
            path: path.to_path_buf(),
            why,
        };
        if meta.file_type().is_symlink() {
            return Err(unsafe_because("it is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(unsafe_because("it is not a directory".into()));
        }
        let me = Uid::effective().as_raw();
        if meta.uid() != me {
            return Err(unsafe_because(format!(
                "it is owned by uid {}, not {me} (another user made it first)",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 {
            return Err(unsafe_because(format!(
                "its mode {:o} lets others write in it",
                meta.mode() & 0o7777
            )));
        }
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            uid: meta.uid(),
            mode: meta.mode(),
        })
    }
}

/// Every folder above `path` must be owned by root or this user, and one that others may
/// write in must be sticky (as `/tmp` is), so no one else can rename the folders below.
fn check_ancestors(path: &Path) -> Result<(), ConfineError> {
    let me = Uid::effective().as_raw();
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        let meta = fs::metadata(dir).map_err(io_err("inspect", dir))?;
        let unsafe_because = |why: String| ConfineError::UnsafeScratch {
            path: dir.to_path_buf(),
            why,
        };
        if meta.uid() != 0 && meta.uid() != me {
            return Err(unsafe_because(format!(
                "it is owned by uid {}, who could swap the scratch folder below it",
                meta.uid()
            )));
        }
        if meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0 {
            return Err(unsafe_because(format!(
                "its mode {:o} lets others rename what is in it (it is not sticky)",
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Makes `path` if missing (with `mode`), then checks it with `lstat`: a directory, not a
/// link, owned by this user, writable by no one else.
fn ensure_private_parent(path: &Path, mode: u32) -> Result<(), ConfineError> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("create", path)(e)),
    }
    FileId::of(path).map(drop)
}

/// Opens `path` without following a link in its last component.
fn open_nofollow(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
}

fn chmod_dir(path: &Path, mode: u32) -> Result<(), ConfineError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_DIRECTORY).bits())
        .open(path)
        .map_err(io_err("open", path))?;
    dir.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("change the mode of", path))
}

/// Prepares a job's VM folder for an unprivileged QEMU: the image files linked in and
/// readable, the input readable, the output disk owned by the VM's own user; every change
/// made through a descriptor. Returns the paths QEMU should use for (kernel, initrd, root).
pub fn stage(
    job: &JobDir<'_>,
    kernel: &Path,
    initrd: &Path,
    root: Option<&Path>,
    output: &Path,
) -> io::Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    let job_dir = job.path();
    let link = |src: &Path, name: &str| -> io::Result<PathBuf> {
        let dest = job_dir.join(name);
        if fs::hard_link(src, &dest).is_err() {
            fs::copy(src, &dest)?;
        }
        // A hard link shares the image file's mode: make it readable by all only if it is not.
        let file = open_nofollow(&dest, false)?;
        if file.metadata()?.permissions().mode() & 0o004 == 0 {
            file.set_permissions(fs::Permissions::from_mode(0o444))?;
        }
        Ok(dest)
    };
    let k = link(kernel, "vmlinux")?;
    let i = link(initrd, "initrd.img")?;
    let r = root.map(|r| link(r, "root.squashfs")).transpose()?;
    open_nofollow(&job_dir.join("input.tar"), false)?
        .set_permissions(fs::Permissions::from_mode(0o444))?;
    let out = open_nofollow(output, true)?;
    if let Some(id) = job.vm_id() {
        std::os::unix::fs::fchown(&out, Some(id), Some(id))?;
    }
    Ok((k, i, r))
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// with its pid names it uniquely.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may hold spaces: count after the last `)`.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn alive(pid: u32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    open_nofollow(path, false)
        .ok()?
        .take(MAX_PID_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Who made a scratch folder: `pid start work_dir` on the first line, then the cgroup
/// folders it made, one a line.
#[derive(Debug, PartialEq)]
struct Owner {
    pid: u32,
    started: u64,
    work_dir: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Owner {
    fn me(work_dir: &Path, cgroups: Option<Vec<PathBuf>>) -> Self {
        let pid = std::process::id();
        Self {
            pid,
            started: start_time(pid).unwrap_or(0),
            work_dir: work_dir.to_path_buf(),
            cgroups: cgroups.unwrap_or_default(),
        }
    }

    fn write(&self, path: &Path) -> Result<(), ConfineError> {
        let mut text = format!(
            "{} {} {}\n",
            self.pid,
            self.started,
            self.work_dir.display()
        );
        for c in &self.cgroups {
            text.push_str(&format!("{}\n", c.display()));
        }
        // A new file renamed over the earlier one: the file is always whole.
        let tmp = path.with_extension("new");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(text.as_bytes())
            .map_err(io_err("write", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", &tmp))
    }

    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let mut first = lines.next()?.splitn(3, ' ');
        Some(Self {
            pid: first.next()?.parse().ok()?,
            started: first.next()?.parse().ok()?,
            work_dir: PathBuf::from(first.next()?),
            cgroups: lines
                .filter(|l| l.starts_with("/sys/fs/cgroup/"))
                .map(PathBuf::from)
                .collect(),
        })
    }
}

/// Stops the VMs and removes the scratch folders of this node's earlier runs (same work
/// folder, owner no longer alive).
fn clean_earlier_runs(parent: &Path, work_dir: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || !entry.file_name().to_string_lossy().starts_with("node-") {
            continue;
        }
        let Some(owner) = read_small(&dir.join("owner")).and_then(|t| Owner::parse(&t)) else {
            continue;
        };
        if owner.work_dir != work_dir || alive(owner.pid, owner.started) {
            continue;
        }
        let mut killed = 0;
        for job in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Some(text) = read_small(&job.path().join("qemu.pid")) else {
                continue;
            };
            let mut w = text.split_whitespace();
            let (Some(Ok(pid)), Some(Ok(started))) = (
                w.next().map(str::parse::<u32>),
                w.next().map(str::parse::<u64>),
            ) else {
                continue;
            };
            if alive(pid, started) && kill(pid) {
                killed += 1;
            }
        }
        for cg in &owner.cgroups {
            killed += Cgroup::empty_and_remove(cg);
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => info!(
                dir = %dir.display(),
                vms_stopped = killed,
                "cleaned up after an earlier run of this node"
            ),
            Err(e) => {
                warn!(dir = %dir.display(), err = %e, "failed to remove an earlier run's scratch folder")
            }
        }
    }
}

fn kill(pid: u32) -> bool {
    i32::try_from(pid)
        .is_ok_and(|p| nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL).is_ok())
}

/// The node's cgroup: one folder per controller under v1, one folder under v2.
#[derive(Debug)]
struct Cgroup {
    dirs: Vec<PathBuf>,
    /// `cgroup.procs` of each folder, opened now so the child only writes to them.
    procs: Vec<std::sync::Arc<OwnedFd>>,
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Cgroup {
    fn create(name: &str, totals: Totals) -> Result<Self, ConfineError> {
        let vms = totals.vms.max(1) as u64;
        let memory = totals.memory_bytes.saturating_add(vms * QEMU_OVERHEAD);
        let pids = vms * PIDS_PER_VM;
        let quota = u64::from(totals.cpus.max(1)) * 100_000;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| ConfineError::Cgroup(format!("cannot read /proc/self/cgroup: {e}")))?;
        let root = Path::new(CGROUP_ROOT);
        let dirs = if root.join("cgroup.controllers").exists() {
            vec![Self::create_v2(&own, name, memory, pids, quota)?]
        } else {
            let mut dirs = Vec::new();
            for (controller, files) in [
                (
                    "memory",
                    vec![("memory.limit_in_bytes", memory.to_string())],
                ),
                ("pids", vec![("pids.max", pids.to_string())]),
                (
                    "cpu",
                    vec![
                        ("cpu.cfs_period_us", "100000".to_string()),
                        ("cpu.cfs_quota_us", quota.to_string()),
                    ],
                ),
            ] {
                let base = v1_path(&own, controller).ok_or_else(|| {
                    ConfineError::Cgroup(format!(
                        "the cgroup v1 {controller} controller is not mounted at {CGROUP_ROOT}/{controller}"
                    ))
                })?;
                let dir = base.join(name);
                let made = fs::create_dir(&dir)
                    .map_err(io_err("create the cgroup", &dir))
                    .and_then(|()| {
                        for (file, value) in &files {
                            write_cg(&dir.join(file), value)?;
                        }
                        // Swap counted too where the kernel accounts it, so VMs over
                        // their memory are stopped, not swapped out.
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if controller == "memory" && memsw.exists() {
                            write_cg(&memsw, &memory.to_string())?;
                        }
                        Ok(())
                    });
                if let Err(e) = made {
                    // No half-made cgroup is left behind.
                    for d in dirs.iter().chain([&dir]).rev() {
                        let _ = fs::remove_dir(d);
                    }
                    return Err(e);
                }
                dirs.push(dir);
            }
            dirs
        };
        let procs = dirs
            .iter()
            .map(|d| {
                let p = d.join("cgroup.procs");
                open_nofollow(&p, true)
                    .map(|f| std::sync::Arc::new(OwnedFd::from(f)))
                    .map_err(io_err("open", &p))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { dirs, procs })
    }

    /// cgroup v2: controllers must be enabled in the parent's `subtree_control`, and a
    /// cgroup with processes cannot enable them (the "no internal processes" rule), so a
    /// node alone in its (delegated) cgroup first moves itself into a `barn-node` leaf.
    fn create_v2(
        own: &str,
        name: &str,
        memory: u64,
        pids: u64,
        quota: u64,
    ) -> Result<PathBuf, ConfineError> {
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or_else(|| ConfineError::Cgroup("no cgroup v2 line in /proc/self/cgroup".into()))?;
        let base = Path::new(CGROUP_ROOT).join(rel.trim_start_matches('/'));
        let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
        for c in ["memory", "pids", "cpu"] {
            if !available.split_whitespace().any(|a| a == c) {
                return Err(ConfineError::Cgroup(format!(
                    "the {c} controller is not available in {} (run the node with a delegated \
                     cgroup, e.g. systemd's Delegate=yes)",
                    base.display()
                )));
            }
        }
        let enable = base.join("cgroup.subtree_control");
        if write_cg(&enable, "+memory +pids +cpu").is_err() {
            let leaf = base.join("barn-node");
            match fs::create_dir(&leaf) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create the cgroup", &leaf)(e)),
            }
            write_cg(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            write_cg(&enable, "+memory +pids +cpu")?;
        }
        let dir = base.join(name);
        fs::create_dir(&dir).map_err(io_err("create the cgroup", &dir))?;
        let limits = || -> Result<(), ConfineError> {
            write_cg(&dir.join("memory.max"), &memory.to_string())?;
            let swap = dir.join("memory.swap.max");
            if swap.exists() {
                write_cg(&swap, "0")?;
            }
            write_cg(&dir.join("pids.max"), &pids.to_string())?;
            write_cg(&dir.join("cpu.max"), &format!("{quota} 100000"))
        };
        if let Err(e) = limits() {
            let _ = fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(dir)
    }

    /// Kills every process left in a cgroup folder and removes it; returns how many.
    fn empty_and_remove(dir: &Path) -> usize {
        let mut killed = 0;
        for _ in 0..20 {
            let pids: Vec<u32> = read_small(&dir.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                break;
            }
            killed += pids.iter().filter(|&&p| kill(p)).count();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = fs::remove_dir(dir);
        killed
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        for dir in self.cgroup_dirs() {
            Cgroup::empty_and_remove(dir);
        }
    }
}

/// The folder of this process's cgroup for a v1 `controller`.
fn v1_path(own: &str, controller: &str) -> Option<PathBuf> {
    let rel = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == controller).then_some(path)
    })?;
    let mount = Path::new(CGROUP_ROOT).join(controller);
    mount
        .join("cgroup.procs")
        .exists()
        .then(|| mount.join(rel.trim_start_matches('/')))
}

fn write_cg(path: &Path, value: &str) -> Result<(), ConfineError> {
    open_nofollow(path, true)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(io_err("write", path))
}

/// The part that runs in the child between `fork` and `exec`.
mod child {
    #![expect(
        unsafe_code,
        reason = "pre_exec: confining QEMU takes syscalls between fork and exec; the closure \
                  only makes async-signal-safe syscalls and does not allocate"
    )]

    use super::*;
    use nix::sched::CloneFlags;

    /// Everything the child needs, prepared (and allocated) before the fork.
    pub(super) struct ChildPlan {
        /// Supplementary groups kept by the VM's user (the KVM device's group, or none).
        pub groups: Vec<Gid>,
        pub cgroup_procs: Vec<std::sync::Arc<OwnedFd>>,
        pub rlimits: [(Resource, u64); 4],
        pub new_user_ns: bool,
        /// The uid and gid to drop to, when the node is root.
        pub drop_to: Option<u32>,
        pub parent: Pid,
    }

    /// The steps, numbered for the error code: `step * STEP + errno`.
    const STEPS: [&str; 7] = [
        "join the node's cgroup",
        "set resource limits",
        "enter a new network namespace",
        "drop to the VM's own user",
        "set the parent-death signal",
        "outlive the node (it died during the start)",
        "set no-new-privileges",
    ];
    const STEP: i32 = 10_000;

    fn step(n: usize, r: nix::Result<()>) -> io::Result<()> {
        r.map_err(|e| io::Error::from_raw_os_error((n as i32 + 1) * STEP + e as i32))
    }

    /// The step and the errno encoded by [`step`].
    pub(super) fn decode(code: i32) -> Option<(&'static str, nix::Error)> {
        let n = usize::try_from(code / STEP).ok()?.checked_sub(1)?;
        Some((STEPS.get(n)?, nix::Error::from_raw(code % STEP)))
    }

    impl ChildPlan {
        fn apply(&self) -> io::Result<()> {
            for fd in &self.cgroup_procs {
                step(0, nix::unistd::write(fd.as_fd(), b"0").map(drop))?;
            }
            for (res, limit) in self.rlimits {
                step(1, setrlimit(res, limit, limit))?;
            }
            let mut flags = CloneFlags::CLONE_NEWNET;
            if self.new_user_ns {
                flags |= CloneFlags::CLONE_NEWUSER;
            }
            step(2, nix::sched::unshare(flags))?;
            if let Some(id) = self.drop_to {
                let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
                step(3, nix::unistd::setgroups(&self.groups))?;
                step(3, nix::unistd::setresgid(gid, gid, gid))?;
                step(3, nix::unistd::setresuid(uid, uid, uid))?;
            }
            step(4, nix::sys::prctl::set_pdeathsig(Signal::SIGKILL))?;
            if nix::unistd::getppid() != self.parent {
                step(5, Err(nix::Error::ESRCH))?;
            }
            step(6, nix::sys::prctl::set_no_new_privs())
        }
    }

    /// Runs `plan` in the child of `cmd` before it executes its program.
    pub(super) fn pre_exec(cmd: &mut tokio::process::Command, plan: ChildPlan) {
        // SAFETY: `apply` runs in the forked child before exec: it only calls setrlimit,
        // write, unshare, setgroups, setres[ug]id, prctl and getppid, which are
        // async-signal-safe, on data prepared before the fork; it takes no lock and does
        // not allocate (the error it may return is a raw OS code).
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
    }
}

use child::ChildPlan;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_files_round_trip() {
        let o = Owner {
            pid: 42,
            started: 1234,
            work_dir: PathBuf::from("/var/lib/barn/work dir"),
            cgroups: vec![PathBuf::from("/sys/fs/cgroup/memory/barn-node-x")],
        };
        let tmp = tempfile::tempdir().unwrap();
        o.write(&tmp.path().join("owner")).unwrap();
        let back = Owner::parse(&read_small(&tmp.path().join("owner")).unwrap()).unwrap();
        assert_eq!(back, o);
        assert!(Owner::parse("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(alive(me, t));
        assert!(!alive(me, t + 1));
    }

    #[test]
    fn a_vm_user_keeps_only_a_device_group_that_may_use_the_device() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dev = tmp.path().join("kvm");
        fs::write(&dev, b"").unwrap();
        fs::set_permissions(&dev, fs::Permissions::from_mode(0o660)).unwrap();
        // A broad group (here `users`, gid 100, where this user may give files to it) is
        // never kept, even with access to the device.
        if std::os::unix::fs::chown(&dev, None, Some(100)).is_ok() {
            assert_eq!(device_group(&dev), vec![]);
        }
        // The kvm group, where the machine has one, is.
        if let Some(g) = nix::unistd::Group::from_name("kvm").ok().flatten()
            && std::os::unix::fs::chown(&dev, None, Some(g.gid.as_raw())).is_ok()
        {
            assert_eq!(device_group(&dev), vec![g.gid]);
            fs::set_permissions(&dev, fs::Permissions::from_mode(0o600)).unwrap();
            assert_eq!(device_group(&dev), vec![]);
        }
        assert!(!is_kvm_group(0), "root's group is never kept");
        assert_eq!(device_group(&tmp.path().join("missing")), vec![]);
    }

    #[test]
    fn a_scratch_folder_replaced_after_start_is_refused() {
        let work = tempfile::tempdir().unwrap();
        let totals = Totals {
            vms: 1,
            cpus: 1,
            memory_bytes: 1 << 30,
        };
        // Unconfined: no cgroup or probe, just the scratch folder.
        let c = Confinement::prepare(work.path(), totals, true).unwrap();
        drop(c.job_dir().unwrap());
        let scratch = c.scratch.path().to_path_buf();
        let moved = scratch.with_extension("moved");
        fs::rename(&scratch, &moved).unwrap();
        fs::create_dir(&scratch).unwrap();
        fs::set_permissions(&scratch, fs::Permissions::from_mode(0o711)).unwrap();
        let err = c.job_dir().unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
        fs::remove_dir(&scratch).unwrap();
        fs::rename(&moved, &scratch).unwrap();
    }

    #[test]
    fn each_vm_of_a_root_node_has_its_own_user_until_it_ends() {
        let free: Vec<u32> = (10..13).rev().collect();
        let work = tempfile::tempdir().unwrap();
        let totals = Totals {
            vms: 3,
            cpus: 1,
            memory_bytes: 1 << 30,
        };
        let mut c = Confinement::prepare(work.path(), totals, true).unwrap();
        // As a root node's: ids 10, 11, 12 (no cgroup needed for this).
        c.confined = Some(Confined {
            drop_privileges: true,
            free_ids: std::sync::Mutex::new(free),
            cgroup: None,
        });
        let a = c.job_dir().unwrap();
        let b = c.job_dir().unwrap();
        let c3 = c.job_dir().unwrap();
        assert_eq!(
            [a.vm_id(), b.vm_id(), c3.vm_id()],
            [Some(10), Some(11), Some(12)]
        );
        assert!(c.job_dir().is_err(), "a fourth VM with three slots");
        drop(b);
        assert_eq!(c.job_dir().unwrap().vm_id(), Some(11));
        drop((a, c3));
    }

    #[test]
    fn ancestors_others_may_rename_in_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = check_ancestors(&open.join("barn-vm")).unwrap_err();
        assert!(err.to_string().contains("not sticky"), "{err}");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        check_ancestors(&open.join("barn-vm")).unwrap();
    }

    #[test]
    fn step_codes_decode() {
        let e = child::decode(3 * 10_000 + nix::Error::EPERM as i32).unwrap();
        assert_eq!(e, ("enter a new network namespace", nix::Error::EPERM));
        assert!(child::decode(nix::Error::ENOENT as i32).is_none());
    }

    #[test]
    fn a_parent_owned_by_someone_else_or_open_to_all_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("barn-vm");
        ensure_private_parent(&p, 0o711).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            ensure_private_parent(&p, 0o711),
            Err(ConfineError::UnsafeScratch { .. })
        ));
        let l = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &l).unwrap();
        assert!(matches!(
            ensure_private_parent(&l, 0o711),
            Err(ConfineError::UnsafeScratch { .. })
        ));
    }
}
