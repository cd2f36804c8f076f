//! The confinement around QEMU. QEMU states that TCG is not a security boundary; the
//! boundary is what surrounds QEMU:
//!
//! - QEMU's own seccomp sandbox (`-sandbox on,…`, in [`super::qemu`]);
//! - resource limits set with `prlimit` before QEMU starts: no core dumps, a cap on open
//!   files, on the size of any file it writes (the output disk's size) and on its address
//!   space (guest memory plus 1 GiB: TCG's translation buffer, threads, libraries);
//! - when the node runs as root, QEMU runs as `nobody` (`setpriv`, no groups, no new
//!   privileges). Its files then live in a world-traversable scratch folder
//!   (`<tmp>/barn-vm`), the image files hard-linked (or copied) in, readable by all; only the
//!   output disk is owned by `nobody`.
//!
//! `prlimit` and `setpriv` come with util-linux, essential on Debian. If one is missing,
//! QEMU still starts, with a warning in the log: the seccomp sandbox and the wall-clock
//! kill remain.

use std::path::{Path, PathBuf};

use tracing::warn;

/// The unprivileged user and group QEMU runs as under a root node.
pub const NOBODY: u32 = 65534;

/// Address space allowed beyond the guest's memory.
const AS_MARGIN: u64 = 1 << 30;

/// True when this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// The folder under which per-job VM folders are made: `work_dir` normally, a
/// world-traversable scratch folder when QEMU will run as `nobody`.
pub fn vm_root(work_dir: &Path, drop_privileges: bool) -> std::io::Result<PathBuf> {
    if !drop_privileges {
        std::fs::create_dir_all(work_dir)?;
        return Ok(work_dir.to_path_buf());
    }
    let dir = std::env::temp_dir().join("barn-vm");
    std::fs::create_dir_all(&dir)?;
    set_mode(&dir, 0o711)?;
    Ok(dir)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Prepares a job's VM folder for an unprivileged QEMU: traversable by all, the image
/// files linked in and readable, the output disk owned by `nobody`. Returns the paths QEMU
/// should use for (kernel, initrd, root).
pub fn stage(
    job_dir: &Path,
    kernel: &Path,
    initrd: &Path,
    root: Option<&Path>,
    output: &Path,
) -> std::io::Result<(PathBuf, PathBuf, Option<PathBuf>)> {
    set_mode(job_dir, 0o711)?;
    let link = |src: &Path, name: &str| -> std::io::Result<PathBuf> {
        let dest = job_dir.join(name);
        if std::fs::hard_link(src, &dest).is_err() {
            std::fs::copy(src, &dest)?;
        }
        // A hard link shares the image file's mode: make it readable by all only if it is not.
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(&dest)?.permissions().mode() & 0o004 == 0 {
            set_mode(&dest, 0o444)?;
        }
        Ok(dest)
    };
    let k = link(kernel, "vmlinux")?;
    let i = link(initrd, "initrd.img")?;
    let r = root.map(|r| link(r, "root.squashfs")).transpose()?;
    set_mode(&job_dir.join("input.tar"), 0o444)?;
    std::os::unix::fs::chown(output, Some(NOBODY), Some(NOBODY))?;
    Ok((k, i, r))
}

/// The program and arguments that start `qemu ARGS` confined.
pub fn command(
    qemu: &Path,
    args: Vec<String>,
    memory_bytes: u64,
    max_file: u64,
    drop_privileges: bool,
) -> (PathBuf, Vec<String>) {
    let mut prefix: Vec<String> = Vec::new();
    if on_path("prlimit") {
        prefix.extend([
            "prlimit".to_string(),
            "--core=0".into(),
            "--nofile=1024".into(),
            format!("--fsize={max_file}"),
            format!("--as={}", memory_bytes + AS_MARGIN),
            "--".into(),
        ]);
    } else {
        warn!("prlimit is not installed: QEMU runs without resource limits");
    }
    if drop_privileges {
        if on_path("setpriv") {
            prefix.extend([
                "setpriv".to_string(),
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                "--clear-groups".into(),
                "--no-new-privs".into(),
                "--".into(),
            ]);
        } else {
            warn!("setpriv is not installed: QEMU runs as root");
        }
    }
    if prefix.is_empty() {
        return (qemu.to_path_buf(), args);
    }
    let program = PathBuf::from(prefix.remove(0));
    prefix.push(qemu.display().to_string());
    prefix.extend(args);
    (program, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_sets_limits_then_drops_privileges_then_runs_qemu() {
        let (program, args) = command(
            Path::new("qemu-system-x86_64"),
            vec!["-m".into(), "256M".into()],
            256 << 20,
            1 << 20,
            true,
        );
        if on_path("prlimit") && on_path("setpriv") {
            assert_eq!(program, PathBuf::from("prlimit"));
            let joined = args.join(" ");
            assert!(joined.starts_with("--core=0 --nofile=1024 --fsize=1048576 --as=1342177280 -- setpriv --reuid=65534"), "{joined}");
            assert!(
                joined.ends_with("-- qemu-system-x86_64 -m 256M"),
                "{joined}"
            );
        }
    }
}
