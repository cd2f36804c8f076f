//! Running `diffoscope` on two differing files, for `barn diff`: found on `PATH`, run on
//! copies named after the artifact's path (it picks comparators by name as well as by
//! content), under [`TIMEOUT`], its output capped at [`MAX_OUTPUT`] (and its stderr at
//! [`MAX_STDERR`]) while the rest is read and dropped so it never blocks on a full pipe.
//!
//! Exit status 0 means the contents are the same to diffoscope, 1 that they differ (its
//! report is the output), anything else a failure. When diffoscope is missing or fails,
//! `barn diff` falls back to the built-in comparison in [`super::diff`].

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use barn_protocol::jobfile::show_size;
use barn_protocol::manifest;

/// How long diffoscope may take for one pair of files.
pub const TIMEOUT: Duration = Duration::from_secs(120);
/// The most diffoscope output kept per pair of files.
pub const MAX_OUTPUT: usize = 512 * 1024;
/// The most of diffoscope's stderr kept, to say why it failed.
pub const MAX_STDERR: usize = 4 * 1024;

/// Why diffoscope gave no report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiffoscopeError {
    #[error("failed to make a temporary folder for diffoscope")]
    TempDir(#[source] io::Error),
    #[error("failed to create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to copy {} for diffoscope", path.display())]
    Copy {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to start {}", prog.display())]
    Start {
        prog: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to wait for diffoscope")]
    Wait(#[source] io::Error),
    #[error("diffoscope did not finish within {} s", limit.as_secs())]
    TimedOut { limit: Duration },
    #[error("diffoscope failed ({status}): {stderr}")]
    Failed {
        status: ExitStatus,
        /// The start of what it wrote to stderr, trimmed.
        stderr: String,
    },
}

/// diffoscope, if it is an executable file in a folder on `PATH`.
pub fn find() -> Option<PathBuf> {
    find_on_path("diffoscope")
}

/// `prog` if it is an executable file in a folder on `PATH`.
fn find_on_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(prog))
        .find(|p| is_executable(p))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file()
}

/// Output read from a child, up to a cap; the rest is read and dropped so the child never
/// blocks on a full pipe.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    cut: bool,
}

fn capture(mut r: impl Read + Send + 'static, cap: usize) -> Arc<Mutex<Captured>> {
    let out = Arc::new(Mutex::new(Captured::default()));
    let sink = Arc::clone(&out);
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let Ok(mut c) = sink.lock() else { break };
            let room = cap.saturating_sub(c.bytes.len());
            c.bytes.extend_from_slice(&buf[..n.min(room)]);
            c.cut |= n > room;
        }
    });
    out
}

fn taken(c: &Mutex<Captured>) -> (String, bool) {
    match c.lock() {
        Ok(c) => (String::from_utf8_lossy(&c.bytes).into_owned(), c.cut),
        Err(_) => (String::new(), false),
    }
}

/// Runs diffoscope (`prog`) on copies of the two files `a` and `b` named after the
/// artifact's `path`, under [`TIMEOUT`], keeping [`MAX_OUTPUT`]; returns its report.
pub fn run(prog: &Path, a: &Path, b: &Path, path: &str) -> Result<String, DiffoscopeError> {
    let name = manifest::normalize(path)
        .ok()
        .and_then(|p| p.rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "file".into());
    let tmp = tempfile::tempdir().map_err(DiffoscopeError::TempDir)?;
    for (side, src) in [("a", a), ("b", b)] {
        let dir = tmp.path().join(side);
        fs::create_dir(&dir).map_err(|source| DiffoscopeError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        fs::copy(src, dir.join(&name)).map_err(|source| DiffoscopeError::Copy {
            path: src.to_path_buf(),
            source,
        })?;
    }
    let mut child = Command::new(prog)
        .args(["--text", "-"])
        .arg(Path::new("a").join(&name))
        .arg(Path::new("b").join(&name))
        .current_dir(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DiffoscopeError::Start {
            prog: prog.to_path_buf(),
            source,
        })?;
    let stdout = child.stdout.take().map(|s| capture(s, MAX_OUTPUT));
    let stderr = child.stderr.take().map(|s| capture(s, MAX_STDERR));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(DiffoscopeError::Wait)? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(DiffoscopeError::TimedOut { limit: TIMEOUT });
        }
        thread::sleep(Duration::from_millis(50));
    };
    // The readers see the end of the pipes soon after the exit; give them a moment.
    thread::sleep(Duration::from_millis(100));
    let (mut out, cut) = stdout.map(|c| taken(&c)).unwrap_or_default();
    let (err, _) = stderr.map(|c| taken(&c)).unwrap_or_default();
    match status.code() {
        Some(0) => Ok("diffoscope found no difference in the contents\n".into()),
        Some(1) => {
            if cut {
                out.push_str(&format!(
                    "\n[diffoscope output cut at {}]\n",
                    show_size(MAX_OUTPUT as u64)
                ));
            }
            Ok(out)
        }
        _ => Err(DiffoscopeError::Failed {
            status,
            stderr: err.trim().to_string(),
        }),
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;

    /// A stand-in for diffoscope: a shell script with `body`. A child process writes it, so
    /// no writable descriptor of ours can leak into a concurrent fork and make the exec
    /// fail with "text file busy".
    fn fake(dir: &Path, body: &str) -> PathBuf {
        let prog = dir.join("diffoscope");
        let status = Command::new("sh")
            .args([
                "-c",
                r#"printf '#!/bin/sh\n%s\n' "$1" > "$0" && chmod 755 "$0""#,
            ])
            .arg(&prog)
            .arg(body)
            .status()
            .unwrap();
        assert!(status.success());
        prog
    }

    fn files(dir: &Path) -> (PathBuf, PathBuf) {
        let (a, b) = (dir.join("blob-a"), dir.join("blob-b"));
        fs::write(&a, b"one\n").unwrap();
        fs::write(&b, b"two\n").unwrap();
        (a, b)
    }

    #[test]
    fn the_copies_are_named_after_the_artifact_and_exit_codes_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = files(dir.path());
        // Exit 1: the files differ, the output is the report.
        let prog = fake(dir.path(), r#"echo "$@"; cat "$3" "$4"; exit 1"#);
        assert_eq!(
            run(&prog, &a, &b, "out/lib/x.so").unwrap(),
            "--text - a/x.so b/x.so\none\ntwo\n"
        );
        // Exit 0: the same to diffoscope.
        let prog = fake(dir.path(), "exit 0");
        assert_eq!(
            run(&prog, &a, &b, "out/x").unwrap(),
            "diffoscope found no difference in the contents\n"
        );
        // Anything else fails with its stderr.
        let prog = fake(dir.path(), "echo '  no comparator  ' >&2; exit 2");
        let err = run(&prog, &a, &b, "out/x").unwrap_err();
        assert!(matches!(err, DiffoscopeError::Failed { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "diffoscope failed (exit status: 2): no comparator"
        );
    }

    #[test]
    fn output_over_the_cap_is_cut_and_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = files(dir.path());
        let prog = fake(
            dir.path(),
            &format!("head -c {} /dev/zero | tr '\\0' x; exit 1", MAX_OUTPUT + 10),
        );
        let out = run(&prog, &a, &b, "out/x").unwrap();
        assert!(
            out.ends_with("\n[diffoscope output cut at 512KiB]\n"),
            "{}",
            &out[MAX_OUTPUT..]
        );
        assert_eq!(out.find('\n'), Some(MAX_OUTPUT));
    }

    #[test]
    fn a_missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = files(dir.path());
        let prog = dir.path().join("no-such-diffoscope");
        let err = run(&prog, &a, &b, "out/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("failed to start {}", prog.display())
        );
    }
}
