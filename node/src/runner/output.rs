//! The output disk: read as an untrusted tar stream written by the guest.
//!
//! The guest writes `status` (its own record of the tasks it ran) and `artifacts/<path>`
//! for every file its globs matched. The disk is a fixed-size file (the quota); a tar
//! that did not fit shows up as `output overflow` in the status. Nothing is unpacked
//! blindly: members are read with capped extension headers ([`barn_protocol::untar`]),
//! paths are checked by [`Manifest::read_tar`], and artifacts are written only below the
//! job's artifact directory, never more bytes than the quota: a hard link is written as a
//! copy of its original, found by path, and its bytes count against the quota again.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use barn_protocol::guest::{GuestStatus, MAX_STATUS, StatusError, parse_status};
use barn_protocol::manifest::{Manifest, ManifestError, TarLimits, TarSink};
use barn_protocol::untar::{Members, UntarError};

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

impl OutputError {
    /// True when the outputs were refused for their size alone.
    pub fn over_quota(&self) -> bool {
        matches!(self, OutputError::Manifest(ManifestError::TooLarge { .. }))
    }
}

/// Reads the status record: the first `status` member of the tar on `disk`. A disk that
/// does not start with a readable tar has no status.
pub fn read_status(disk: &Path) -> Result<GuestStatus, OutputError> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(disk)?));
    let Ok(mut members) = Members::new(&mut archive) else {
        return Err(OutputError::NoStatus);
    };
    loop {
        match members.next_member() {
            Ok(Some(m)) if m.path == b"status" => {
                let mut text = Vec::new();
                m.data.take(MAX_STATUS).read_to_end(&mut text)?;
                return Ok(parse_status(&String::from_utf8_lossy(&text))?);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(UntarError::Io(_)) => return Err(OutputError::NoStatus),
            Err(e) => return Err(ManifestError::from(e).into()),
        }
    }
}

/// Writes the artifacts below one folder.
struct Artifacts<'a> {
    dest: &'a Path,
}

impl Artifacts<'_> {
    /// `rel` is normalized by the manifest reader: relative, no `..`, no empty parts.
    fn target(&self, rel: &str) -> io::Result<PathBuf> {
        let target = self.dest.join(rel);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        Ok(target)
    }
}

impl TarSink for Artifacts<'_> {
    fn file(&mut self, path: &str) -> io::Result<Option<Box<dyn Write>>> {
        let file = File::create_new(self.target(path)?)?;
        Ok(Some(Box::new(io::BufWriter::new(file))))
    }

    fn hard_link(&mut self, path: &str, original: &str) -> io::Result<()> {
        // A copy, not a host hard link: artifacts are served and fetched one file at a
        // time, and the reader has already counted these bytes against the quota.
        let target = self.target(path)?;
        let mut from = File::open(self.dest.join(original))?;
        io::copy(&mut from, &mut File::create_new(target)?)?;
        Ok(())
    }
}

/// Reads the artifacts on `disk` into a manifest, writing each file below `dest`; at most
/// `quota` bytes are written, hard links included.
pub fn collect_artifacts(disk: &Path, dest: &Path, quota: u64) -> Result<Manifest, OutputError> {
    fs::create_dir_all(dest)?;
    let reader = BufReader::new(File::open(disk)?);
    let limits = TarLimits {
        max_total_bytes: quota,
        ..TarLimits::default()
    };
    Ok(Manifest::read_tar(
        reader,
        "artifacts",
        limits,
        &mut Artifacts { dest },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar like the guest's: a status, one file, and `links` hard links to it.
    fn disk_with_links(dir: &Path, size: usize, links: usize) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(10);
        b.append_data(&mut h, "status", &b"version 1\n"[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(size as u64);
        b.append_data(&mut h, "artifacts/big", &vec![7u8; size][..])
            .unwrap();
        for i in 0..links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, format!("artifacts/l{i}"), "artifacts/big")
                .unwrap();
        }
        let disk = dir.join("output.img");
        fs::write(&disk, b.into_inner().unwrap()).unwrap();
        disk
    }

    fn written(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn hard_links_count_against_the_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = disk_with_links(tmp.path(), 4096, 2000);
        let dest = tmp.path().join("a");
        let err = collect_artifacts(&disk, &dest, 64 * 1024).unwrap_err();
        assert!(err.over_quota(), "{err:#}");
        assert!(
            written(&dest) <= 64 * 1024,
            "{} bytes written",
            written(&dest)
        );

        // Within the quota, every link is a full copy listed in the manifest.
        let dest = tmp.path().join("b");
        let disk = disk_with_links(tmp.path(), 4096, 3);
        let m = collect_artifacts(&disk, &dest, 64 * 1024).unwrap();
        assert_eq!(m.files().count(), 4);
        assert_eq!(fs::read(dest.join("l2")).unwrap(), vec![7u8; 4096]);
        assert_eq!(read_status(&disk).unwrap().tasks, vec![]);
    }

    #[test]
    fn a_disk_without_a_tar_has_no_status() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("output.img");
        fs::write(&disk, vec![0u8; 4096]).unwrap();
        assert!(matches!(read_status(&disk), Err(OutputError::NoStatus)));
    }
}
