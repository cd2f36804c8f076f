//! Output manifests: the canonical description of what a build produced.
//!
//! A manifest is a list of entries sorted by path: (path, kind, executable bit, size,
//! blake3 of the content, link target). Its root is the blake3 of its canonical CBOR. Only
//! content and the executable bit reach the hash: mtimes, owners and tar metadata never do.
//!
//! Manifests are built from a directory ([`Manifest::from_dir`]) or from a tar stream
//! ([`Manifest::from_tar`]). The tar reader treats its input as hostile: it refuses paths
//! that are absolute or contain `..`, links that lead out of the tree, device files, and
//! anything over the limits in [`TarLimits`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::hash::ContentHash;
use crate::limits::{MAX_LINK_TARGET, MAX_MANIFEST_ENTRIES, MAX_PATH};
use crate::untar;

/// The manifest format version, part of the root hash.
pub const MANIFEST_VERSION: u8 = 1;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One path in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative, `/`-separated, no `.` or `..` components.
    pub path: String,
    pub kind: EntryKind,
    pub executable: bool,
    /// Content length for files; 0 otherwise.
    pub size: u64,
    /// blake3 of the content, for files.
    pub hash: Option<ContentHash>,
    /// Link target, for symlinks.
    pub target: Option<String>,
}

/// A sorted list of entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u8,
    pub entries: Vec<Entry>,
}

/// Why a tree or tar stream could not become a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("failed to read {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("unsafe path `{path}` in output: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("symbolic link `{path}` points outside the output (`{target}`)")]
    LinkEscapes { path: String, target: String },
    #[error("`{path}` is a {kind}, which outputs may not contain")]
    UnsupportedKind { path: String, kind: String },
    #[error("output has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("output is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("`{path}` appears twice in the output")]
    Duplicate { path: String },
    #[error("malformed tar stream: {0}")]
    MalformedTar(String),
    #[error("refused tar stream")]
    Untar(#[from] untar::UntarError),
}

/// Limits for reading an untrusted tar stream.
#[derive(Debug, Clone, Copy)]
pub struct TarLimits {
    pub max_entries: usize,
    pub max_total_bytes: u64,
}

impl Default for TarLimits {
    fn default() -> Self {
        Self {
            max_entries: MAX_MANIFEST_ENTRIES,
            max_total_bytes: 8 << 30,
        }
    }
}

impl Manifest {
    /// Makes a manifest from entries in any order (sorted here).
    pub fn new(mut entries: Vec<Entry>) -> Self {
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Self {
            version: MANIFEST_VERSION,
            entries,
        }
    }

    /// The root hash: blake3 of the canonical CBOR of the manifest.
    pub fn root(&self) -> ContentHash {
        let canonical = Manifest {
            version: MANIFEST_VERSION,
            entries: self.entries.clone(),
        };
        ContentHash::of(&cbor::to_vec(&canonical))
    }

    /// Files only, for tables and artifact lists.
    pub fn files(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.kind == EntryKind::File)
    }

    /// Builds the manifest of the tree under `root` (not following symbolic links).
    pub fn from_dir(root: &Path) -> Result<Self, ManifestError> {
        let mut entries = Vec::new();
        walk(root, "", &mut entries)?;
        Ok(Self::new(entries))
    }

    /// Reads an untrusted tar stream into a manifest. Only entries under `prefix` (e.g.
    /// `artifacts/`) are kept, with the prefix removed; others are skipped. Each kept file's
    /// content is also copied to the writer `sink` returns for its path, if any; hard links
    /// are only listed (see [`Manifest::read_tar`] to be told of them).
    pub fn from_tar<R: Read>(
        reader: R,
        prefix: &str,
        limits: TarLimits,
        sink: impl FnMut(&str) -> io::Result<Option<Box<dyn Write>>>,
    ) -> Result<Self, ManifestError> {
        struct Files<F>(F);
        impl<F: FnMut(&str) -> io::Result<Option<Box<dyn Write>>>> TarSink for Files<F> {
            fn file(&mut self, path: &str) -> io::Result<Option<Box<dyn Write>>> {
                (self.0)(path)
            }
            fn hard_link(&mut self, _path: &str, _original: &str) -> io::Result<()> {
                Ok(())
            }
        }
        Self::read_tar(reader, prefix, limits, &mut Files(sink))
    }

    /// Reads an untrusted tar stream into a manifest, telling `sink` of every file and
    /// hard link kept (see [`Manifest::from_tar`]).
    ///
    /// [`TarLimits::max_total_bytes`] bounds what a reader of the tar would write: a hard
    /// link counts its original's bytes again, since a host that materialises it writes
    /// them again (without that, one file and 10,000 links to it were 10,000 times the
    /// quota). Extension headers are capped and sparse members refused ([`crate::untar`]).
    pub fn read_tar<R: Read>(
        reader: R,
        prefix: &str,
        limits: TarLimits,
        sink: &mut dyn TarSink,
    ) -> Result<Self, ManifestError> {
        let mut archive = tar::Archive::new(reader);
        let mut members = untar::Members::new(&mut archive)?;
        let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
        // The folders above the entries kept, listed or implied.
        let mut folders: std::collections::BTreeSet<String> = Default::default();
        // How many of those are also entries (so that none counts twice).
        let mut listed_folders = 0usize;
        let mut total = 0u64;
        let mut seen = 0usize;
        let mut add_bytes = |size: u64| {
            total = total.saturating_add(size);
            if total > limits.max_total_bytes {
                return Err(ManifestError::TooLarge {
                    limit: limits.max_total_bytes,
                });
            }
            Ok(())
        };
        while let Some(mut item) = members.next_member()? {
            seen += 1;
            if seen > limits.max_entries.saturating_mul(2) {
                return Err(ManifestError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
            let raw = String::from_utf8(std::mem::take(&mut item.path)).map_err(|_| {
                ManifestError::UnsafePath {
                    path: "<non-UTF-8>".into(),
                    reason: "path is not UTF-8",
                }
            })?;
            let full = normalize(&raw)?;
            let Some(path) = strip(&full, prefix) else {
                continue;
            };
            if path.is_empty() {
                continue;
            }
            // Every folder a reader creates counts as an entry, listed or not: a file at
            // depth 500 makes 500 folders, so 10,000 such files would be 5 million.
            let mut at = path.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                if !folders.insert(parent.to_string()) {
                    break;
                }
                if by_path.contains_key(parent) {
                    listed_folders += 1;
                }
                at = parent;
            }
            if by_path.len() + folders.len() - listed_folders >= limits.max_entries {
                return Err(ManifestError::TooManyEntries {
                    limit: limits.max_entries,
                });
            }
            let link = || {
                item.link
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            };
            let etype = item.kind;
            let entry = if etype.is_file() || etype == tar::EntryType::Continuous {
                let size = item.size;
                add_bytes(size)?;
                let mut out = sink.file(&path).map_err(|source| ManifestError::Io {
                    path: path.clone(),
                    source,
                })?;
                let (hash, len) = hash_copy(&mut item.data, out.as_mut()).map_err(|source| {
                    ManifestError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                if len != size {
                    return Err(ManifestError::MalformedTar(format!(
                        "`{path}` is truncated"
                    )));
                }
                Entry {
                    path: path.clone(),
                    kind: EntryKind::File,
                    executable: item.mode & 0o111 != 0,
                    size,
                    hash: Some(hash),
                    target: None,
                }
            } else if etype.is_dir() {
                Entry {
                    path: path.clone(),
                    kind: EntryKind::Dir,
                    executable: false,
                    size: 0,
                    hash: None,
                    target: None,
                }
            } else if etype.is_symlink() {
                let target = link();
                check_link(&path, &target)?;
                Entry {
                    path: path.clone(),
                    kind: EntryKind::Symlink,
                    executable: false,
                    size: 0,
                    hash: None,
                    target: Some(target),
                }
            } else if etype.is_hard_link() {
                // A hard link repeats an earlier file (looked up by path, never by a
                // scan); it is listed as a copy of that file and its bytes count again.
                let target = normalize(&link())?;
                let target = strip(&target, prefix).unwrap_or_default();
                let Some(orig) = by_path.get(&target).filter(|e| e.kind == EntryKind::File) else {
                    return Err(ManifestError::LinkEscapes { path, target });
                };
                add_bytes(orig.size)?;
                sink.hard_link(&path, &target)
                    .map_err(|source| ManifestError::Io {
                        path: path.clone(),
                        source,
                    })?;
                Entry {
                    path: path.clone(),
                    ..orig.clone()
                }
            } else {
                return Err(ManifestError::UnsupportedKind {
                    path,
                    kind: format!("{etype:?}").to_lowercase(),
                });
            };
            if entry.kind == EntryKind::Dir && folders.contains(&path) {
                listed_folders += 1;
            }
            if by_path.insert(path.clone(), entry).is_some() {
                return Err(ManifestError::Duplicate { path });
            }
        }
        Ok(Self::new(by_path.into_values().collect()))
    }
}

/// Where [`Manifest::read_tar`] puts what it reads.
pub trait TarSink {
    /// A writer for the content of the file at `path` (relative, checked), or `None` to
    /// only hash it.
    fn file(&mut self, path: &str) -> io::Result<Option<Box<dyn Write>>>;
    /// `path` is a hard link to the earlier file `original` (both relative, checked; the
    /// original's bytes are already counted against the limit again).
    fn hard_link(&mut self, path: &str, original: &str) -> io::Result<()>;
}

fn hash_copy(
    reader: &mut impl Read,
    out: Option<&mut Box<dyn Write>>,
) -> io::Result<(ContentHash, u64)> {
    match out {
        Some(w) => ContentHash::copy_hashing(reader, w),
        None => ContentHash::of_reader(reader),
    }
}

fn strip(path: &str, prefix: &str) -> Option<String> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Some(path.to_string());
    }
    if path == prefix {
        return Some(String::new());
    }
    path.strip_prefix(prefix)?
        .strip_prefix('/')
        .map(str::to_string)
}

/// Checks and normalizes a relative path from an untrusted source: strips `./` and a
/// trailing `/`, refuses absolute paths, `..`, empty names and over-long paths.
pub fn normalize(raw: &str) -> Result<String, ManifestError> {
    let unsafe_path = |reason| ManifestError::UnsafePath {
        path: raw.chars().take(200).collect(),
        reason,
    };
    if raw.len() > MAX_PATH {
        return Err(unsafe_path("path is too long"));
    }
    if raw.contains('\0') {
        return Err(unsafe_path("path contains a NUL byte"));
    }
    if raw.starts_with('/') {
        return Err(unsafe_path("path is absolute"));
    }
    let mut parts = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => continue,
            ".." => return Err(unsafe_path("path contains `..`")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// Checks that a symbolic link at `path` with `target` stays inside the tree: relative,
/// not empty, no NUL, and never climbing above the tree's root.
pub fn check_link(path: &str, target: &str) -> Result<(), ManifestError> {
    let escapes = || ManifestError::LinkEscapes {
        path: path.to_string(),
        target: target.chars().take(200).collect(),
    };
    if target.is_empty()
        || target.len() > MAX_LINK_TARGET
        || target.starts_with('/')
        || target.contains('\0')
    {
        return Err(escapes());
    }
    // Depth of the link's directory, then walk the target.
    let mut depth: i64 = path.split('/').count() as i64 - 1;
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return Err(escapes());
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<Entry>) -> Result<(), ManifestError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ManifestError::Io { path, source }
    };
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(dir))?;
    names.sort();
    for name in names {
        let full = dir.join(&name);
        let name = name.into_string().map_err(|_| ManifestError::UnsafePath {
            path: full.display().to_string(),
            reason: "path is not UTF-8",
        })?;
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if out.len() >= MAX_MANIFEST_ENTRIES {
            return Err(ManifestError::TooManyEntries {
                limit: MAX_MANIFEST_ENTRIES,
            });
        }
        let meta = fs::symlink_metadata(&full).map_err(io_err(&full))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(Entry {
                path: path.clone(),
                kind: EntryKind::Dir,
                executable: false,
                size: 0,
                hash: None,
                target: None,
            });
            walk(&full, &path, out)?;
        } else if ft.is_file() {
            let file = fs::File::open(&full).map_err(io_err(&full))?;
            let (hash, size) = ContentHash::of_reader(file).map_err(io_err(&full))?;
            out.push(Entry {
                path,
                kind: EntryKind::File,
                executable: is_executable(&meta),
                size,
                hash: Some(hash),
                target: None,
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&full)
                .map_err(io_err(&full))?
                .to_string_lossy()
                .into_owned();
            out.push(Entry {
                path,
                kind: EntryKind::Symlink,
                executable: false,
                size: 0,
                hash: None,
                target: Some(target),
            });
        } else {
            return Err(ManifestError::UnsupportedKind {
                path,
                kind: "special file".into(),
            });
        }
    }
    Ok(())
}

#[cfg(unix)]
fn is_executable(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            // Write the name bytes raw, so that hostile names reach the reader unchanged.
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn no_sink(_: &str) -> io::Result<Option<Box<dyn Write>>> {
        Ok(None)
    }

    #[test]
    fn root_depends_on_content_and_exec_bit_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.txt");
        fs::write(&f, b"one").unwrap();
        let r1 = Manifest::from_dir(dir.path()).unwrap().root();
        // mtime change only
        let file = fs::File::options().write(true).open(&f).unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();
        assert_eq!(Manifest::from_dir(dir.path()).unwrap().root(), r1);
        // exec bit
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        let r2 = Manifest::from_dir(dir.path()).unwrap().root();
        assert_ne!(r2, r1);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(Manifest::from_dir(dir.path()).unwrap().root(), r1);
        // content
        fs::write(&f, b"two").unwrap();
        assert_ne!(Manifest::from_dir(dir.path()).unwrap().root(), r1);
    }

    #[test]
    fn tar_and_dir_agree() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("out")).unwrap();
        fs::write(dir.path().join("out/x"), b"xx").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        b.append_dir_all("artifacts", dir.path()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        b.append_data(&mut h, "status", &b"ok"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let from_tar =
            Manifest::from_tar(&bytes[..], "artifacts", TarLimits::default(), no_sink).unwrap();
        assert_eq!(from_tar, Manifest::from_dir(dir.path()).unwrap());
    }

    #[test]
    fn hostile_tars_are_refused() {
        let cases: Vec<Vec<u8>> = vec![
            tar_with(&[("../evil", tar::EntryType::Regular, b"x", None)]),
            tar_with(&[("/etc/passwd", tar::EntryType::Regular, b"x", None)]),
            tar_with(&[("a/../../b", tar::EntryType::Regular, b"x", None)]),
            tar_with(&[("link", tar::EntryType::Symlink, b"", Some("/etc"))]),
            tar_with(&[("d/link", tar::EntryType::Symlink, b"", Some("../../x"))]),
            tar_with(&[("dev", tar::EntryType::Char, b"", None)]),
            tar_with(&[
                ("a", tar::EntryType::Regular, b"1", None),
                ("./a", tar::EntryType::Regular, b"2", None),
            ]),
        ];
        for (i, t) in cases.iter().enumerate() {
            let r = Manifest::from_tar(&t[..], "", TarLimits::default(), no_sink);
            assert!(r.is_err(), "case {i} was accepted");
        }
        let ok = tar_with(&[("d/link", tar::EntryType::Symlink, b"", Some("../x"))]);
        assert!(Manifest::from_tar(&ok[..], "", TarLimits::default(), no_sink).is_ok());
    }

    #[test]
    fn implied_folders_count_as_entries() {
        // Two deep files: 2 entries, and the 30 folders above them.
        let deep = |leaf: &str| format!("{}/{leaf}", vec!["d"; 30].join("/"));
        let (a, b) = (deep("a"), deep("b"));
        let t = tar_with(&[
            (a.as_str(), tar::EntryType::Regular, b"1", None),
            (b.as_str(), tar::EntryType::Regular, b"2", None),
        ]);
        let limits = |max_entries| TarLimits {
            max_entries,
            max_total_bytes: 100,
        };
        // The shared folders count once.
        assert!(Manifest::from_tar(&t[..], "", limits(40), no_sink).is_ok());
        // Listed and implied, a folder counts once.
        let t = tar_with(&[
            ("d", tar::EntryType::Directory, b"", None),
            ("d/d", tar::EntryType::Directory, b"", None),
            (a.as_str(), tar::EntryType::Regular, b"1", None),
            (b.as_str(), tar::EntryType::Regular, b"2", None),
        ]);
        assert!(Manifest::from_tar(&t[..], "", limits(40), no_sink).is_ok());
        let other = format!("{}/c", vec!["e"; 30].join("/"));
        let t = tar_with(&[
            (a.as_str(), tar::EntryType::Regular, b"1", None),
            (other.as_str(), tar::EntryType::Regular, b"2", None),
        ]);
        assert!(matches!(
            Manifest::from_tar(&t[..], "", limits(40), no_sink),
            Err(ManifestError::TooManyEntries { .. })
        ));
    }

    #[test]
    fn tar_limits_hold() {
        let t = tar_with(&[
            ("a", tar::EntryType::Regular, b"12345", None),
            ("b", tar::EntryType::Regular, b"1", None),
        ]);
        let r = Manifest::from_tar(
            &t[..],
            "",
            TarLimits {
                max_entries: 10,
                max_total_bytes: 4,
            },
            no_sink,
        );
        assert!(matches!(r, Err(ManifestError::TooLarge { .. })));
        let r = Manifest::from_tar(
            &t[..],
            "",
            TarLimits {
                max_entries: 1,
                max_total_bytes: 100,
            },
            no_sink,
        );
        assert!(matches!(r, Err(ManifestError::TooManyEntries { .. })));
    }
}
