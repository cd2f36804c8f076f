//! The output disk: read as an untrusted tar stream written by the guest.
//!
//! The guest writes `status` (its own record of the tasks it ran) and `artifacts/<path>`
//! for every file its globs matched. The disk is a fixed-size file (the quota); a tar
//! that did not fit shows up as `output overflow` in the status. Nothing is unpacked
//! blindly: paths are checked by [`Manifest::from_tar`] and artifacts are written only
//! below the job's artifact directory.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use barn_protocol::manifest::{Manifest, ManifestError, TarLimits};

use super::input::task_index;

/// The most bytes of `status` read.
const MAX_STATUS: u64 = 64 * 1024;

/// What the guest's `status` file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStatus {
    /// (task index, exit code, duration in ms), in the order run.
    pub tasks: Vec<(usize, i32, u64)>,
    /// `Some(true)` for `result ok`, `Some(false)` for `result failed …`.
    pub ok: Option<bool>,
    /// Artifact globs that matched nothing.
    pub unmatched: Vec<String>,
    /// The artifacts did not fit the output disk.
    pub overflow: bool,
}

/// Why the output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to read the output disk")]
    Io(#[from] io::Error),
    #[error("the output disk has no status record: the guest did not finish")]
    NoStatus,
    #[error("the guest's status record is malformed: {0}")]
    BadStatus(String),
    #[error("the guest's output was refused")]
    Manifest(#[from] ManifestError),
}

/// Parses the text of `status`.
pub fn parse_status(text: &str) -> Result<GuestStatus, OutputError> {
    let mut st = GuestStatus::default();
    let bad = |l: &str| OutputError::BadStatus(l.chars().take(100).collect());
    for line in text.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["version", "1"] => {}
            ["task", name, rc, ms] => {
                let idx = task_index(name).ok_or_else(|| bad(line))?;
                st.tasks.push((
                    idx,
                    rc.parse().map_err(|_| bad(line))?,
                    ms.parse().map_err(|_| bad(line))?,
                ));
            }
            ["result", "ok"] => st.ok = Some(true),
            ["result", "failed", ..] => st.ok = Some(false),
            ["unmatched", ..] => st.unmatched.push(line["unmatched ".len()..].to_string()),
            ["output", "overflow"] => st.overflow = true,
            _ => {} // "artifacts N", "rejected …" and lines from newer guests
        }
    }
    Ok(st)
}

/// Reads the status record: the first `status` entry of the tar on `disk`.
pub fn read_status(disk: &Path) -> Result<GuestStatus, OutputError> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(disk)?));
    let entries = match archive.entries() {
        Ok(e) => e,
        Err(_) => return Err(OutputError::NoStatus),
    };
    for entry in entries {
        let Ok(entry) = entry else { break };
        if entry.path_bytes().as_ref() == b"status" {
            let mut text = String::new();
            entry
                .take(MAX_STATUS)
                .read_to_string(&mut text)
                .map_err(|e| OutputError::BadStatus(e.to_string()))?;
            return parse_status(&text);
        }
    }
    Err(OutputError::NoStatus)
}

/// Reads the artifacts on `disk` into a manifest, copying each file below `dest`.
pub fn collect_artifacts(disk: &Path, dest: &Path, quota: u64) -> Result<Manifest, OutputError> {
    fs::create_dir_all(dest)?;
    let reader = BufReader::new(File::open(disk)?);
    let limits = TarLimits {
        max_total_bytes: quota,
        ..TarLimits::default()
    };
    let manifest = Manifest::from_tar(reader, "artifacts", limits, |rel| {
        // `rel` is normalized: relative, no `..`.
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let file = File::create(&target)?;
        Ok(Some(Box::new(io::BufWriter::new(file)) as Box<dyn Write>))
    })?;
    // A hard link in the tar repeats an earlier file: the manifest lists it as a copy, but
    // only the first name was written; write the copy too.
    for e in manifest.files() {
        let target = dest.join(&e.path);
        if target.exists() {
            continue;
        }
        let Some(orig) = manifest
            .files()
            .find(|o| o.hash == e.hash && dest.join(&o.path).is_file())
        else {
            return Err(OutputError::BadStatus(format!(
                "`{}` has no content in the output",
                e.path
            )));
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(dest.join(&orig.path), &target)?;
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses() {
        let st = parse_status("version 1\ntask 000-build 0 120\ntask 001-check 2 5\nresult failed 001-check\nunmatched out/*.deb\nartifacts 1\n").unwrap();
        assert_eq!(st.tasks, vec![(0, 0, 120), (1, 2, 5)]);
        assert_eq!(st.ok, Some(false));
        assert_eq!(st.unmatched, vec!["out/*.deb".to_string()]);
        assert!(parse_status("task nonsense 0 1\n").is_err());
    }
}
