//! Deterministic source packing: a directory becomes a tar stream whose bytes depend only
//! on the paths, contents, executable bits and link targets in it.
//!
//! Entries are written depth first with each directory's names sorted by bytes; every
//! header has mode 0755 (directories and executables) or 0644 (other files) or 0777
//! (symlinks), uid and gid 0, empty owner names and the mtime [`PACK_MTIME`], so the order
//! of files on disk, their mtimes, owners and the umask change nothing. One mtime for every
//! file also keeps generated files "up to date" for make after unpacking. `.git/` at the top
//! is left out; special files are refused.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use crate::hash::ContentHash;
use crate::limits::{MAX_PATH, MAX_SOURCE_ENTRIES};

/// The mtime of every packed entry: 2000-01-01T00:00:00Z. (0 would make some tools treat
/// files as missing timestamps.)
pub const PACK_MTIME: u64 = 946_684_800;

/// Why a tree could not be packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    #[error("failed to read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to write the tar stream")]
    Write(#[source] io::Error),
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: &'static str },
    #[error("the tree has more than {MAX_SOURCE_ENTRIES} entries")]
    TooManyEntries,
}

/// What packing produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// blake3 of the tar stream: the job's source hash.
    pub hash: ContentHash,
    pub size: u64,
    pub entries: usize,
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs the tree under `root` into `out`.
pub fn pack_dir(root: &Path, out: impl Write) -> Result<Packed, PackError> {
    let writer = HashingWriter {
        inner: out,
        hasher: blake3::Hasher::new(),
        len: 0,
    };
    let mut builder = tar::Builder::new(writer);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    let mut count = 0usize;
    add_dir(&mut builder, root, "", &mut count)?;
    let mut writer = builder.into_inner().map_err(PackError::Write)?;
    writer.flush().map_err(PackError::Write)?;
    Ok(Packed {
        hash: writer.hasher.finalize().into(),
        size: writer.len,
        entries: count,
    })
}

/// Packs into memory; for small trees and tests.
pub fn pack_to_vec(root: &Path) -> Result<(Vec<u8>, Packed), PackError> {
    let mut buf = Vec::new();
    let packed = pack_dir(root, &mut buf)?;
    Ok((buf, packed))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(PACK_MTIME);
    // Empty owner names: new_gnu leaves them zeroed.
    h
}

fn add_dir<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &str,
    count: &mut usize,
) -> Result<(), PackError> {
    let read_err = |p: &Path| {
        let path = p.display().to_string();
        move |source| PackError::Read { path, source }
    };
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(read_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read_err(dir))?;
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let full = dir.join(&name);
        if rel.is_empty() && name == ".git" {
            continue;
        }
        let Some(name) = name.to_str() else {
            return Err(PackError::Unsupported {
                path: full.display().to_string(),
                reason: "file name is not UTF-8",
            });
        };
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        if path.len() > MAX_PATH {
            return Err(PackError::Unsupported {
                path,
                reason: "path is longer than 1024 bytes",
            });
        }
        *count += 1;
        if *count > MAX_SOURCE_ENTRIES {
            return Err(PackError::TooManyEntries);
        }
        let meta = fs::symlink_metadata(&full).map_err(read_err(&full))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, format!("{path}/"), io::empty())
                .map_err(PackError::Write)?;
            add_dir(b, &full, &path, count)?;
        } else if ft.is_file() {
            let exec = is_executable(&meta);
            let file = fs::File::open(&full).map_err(read_err(&full))?;
            let mut h = header(
                tar::EntryType::Regular,
                if exec { 0o755 } else { 0o644 },
                meta.len(),
            );
            // The tar crate writes exactly `size` bytes and fails if the file shrank meanwhile.
            b.append_data(&mut h, &path, file)
                .map_err(|source| PackError::Read {
                    path: full.display().to_string(),
                    source,
                })?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(read_err(&full))?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, &path, &target)
                .map_err(PackError::Write)?;
        } else {
            return Err(PackError::Unsupported {
                path: full.display().to_string(),
                reason: "special files (devices, sockets, fifos) cannot be packed",
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o100 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}
