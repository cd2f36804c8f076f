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

use barn_protocol::guest::{GuestStatus, MAX_STATUS, StatusError, parse_status};

/// Why the output could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("failed to read the output disk")]
    Io(#[from] io::Error),
    #[error("the output disk has no status record: the guest did not finish")]
    NoStatus,
    #[error(transparent)]
    BadStatus(#[from] StatusError),
    #[error("the guest's output was refused")]
    Manifest(#[from] ManifestError),
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
                .map_err(OutputError::Io)?;
            return Ok(parse_status(&text)?);
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
            return Err(OutputError::Io(io::Error::other(format!(
                "`{}` has no content in the output",
                e.path
            ))));
        };
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(dest.join(&orig.path), &target)?;
    }
    Ok(manifest)
}
