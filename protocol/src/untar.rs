//! Reading a tar stream written by someone barn does not trust (a guest's output disk, a
//! fetched source or image).
//!
//! The `tar` crate, left to itself, reads GNU long-name and long-link members and PAX
//! extension headers whole into memory before it hands out the entry they describe: one
//! disk-sized header is one disk-sized allocation. Here the crate is used in raw mode
//! (one 512-byte header at a time) and the extensions are applied by [`Members`] itself,
//! each refused unread when its declared size is over [`MAX_EXTENSION_HEADER`].
//!
//! What is refused, each with its own [`UntarError`]: an extension header over the cap,
//! two extensions of one kind for one member, an extension with no member after it, GNU
//! sparse members (`S`, or PAX `GNU.sparse.*` records: their apparent size is not their
//! stored size), and a PAX `size` record that disagrees with the header (two parsers
//! reading one archive differently is how hostile archives hide content).

use std::borrow::Cow;
use std::io::{self, Read};

/// The largest GNU long name, long link or PAX extension header read.
pub const MAX_EXTENSION_HEADER: u64 = 64 * 1024;

/// Why a tar stream was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UntarError {
    #[error("failed to read the tar stream")]
    Io(#[from] io::Error),
    #[error("a {kind} header of {size} bytes is over the {MAX_EXTENSION_HEADER}-byte limit")]
    HeaderTooLarge { kind: &'static str, size: u64 },
    #[error("two {kind} headers describe one member")]
    Repeated { kind: &'static str },
    #[error("a {kind} header describes no member")]
    Dangling { kind: &'static str },
    #[error("the PAX header of `{path}` has a malformed record")]
    BadPax { path: String },
    #[error("`{path}` is a sparse file, which is refused")]
    Sparse { path: String },
    #[error("`{path}` has a PAX size of {pax} bytes but a header size of {header}")]
    SizeMismatch {
        path: String,
        pax: String,
        header: u64,
    },
}

/// One member of the archive, its extensions applied.
pub struct Member<'a, R: Read> {
    /// The full path (GNU long name or PAX `path` if present), as raw bytes.
    pub path: Vec<u8>,
    /// The link target of symbolic and hard links, as raw bytes.
    pub link: Option<Vec<u8>>,
    pub kind: tar::EntryType,
    pub mode: u32,
    /// The member's data length.
    pub size: u64,
    /// The member's data (at most `size` bytes).
    pub data: tar::Entry<'a, R>,
}

impl<R: Read> std::fmt::Debug for Member<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("path", &self.display_path())
            .field("kind", &self.kind)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Member<'_, R> {
    /// The path for messages: lossy UTF-8, cut to 200 characters.
    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path)
            .chars()
            .take(200)
            .collect()
    }
}

/// The members of an untrusted tar stream, in order.
pub struct Members<'a, R: Read> {
    entries: tar::Entries<'a, R>,
}

impl<R: Read> std::fmt::Debug for Members<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Members")
    }
}

/// What the extension headers before a member said.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn first_kind(&self) -> Option<&'static str> {
        if self.long_name.is_some() {
            Some("GNU long name")
        } else if self.long_link.is_some() {
            Some("GNU long link")
        } else if self.pax.is_some() {
            Some("PAX")
        } else {
            None
        }
    }
}

impl<'a, R: Read> Members<'a, R> {
    /// Starts reading `archive` from its first header.
    pub fn new(archive: &'a mut tar::Archive<R>) -> Result<Self, UntarError> {
        Ok(Self {
            entries: archive.entries()?.raw(true),
        })
    }

    /// The next member, or `None` at the end of the archive.
    pub fn next_member(&mut self) -> Result<Option<Member<'a, R>>, UntarError> {
        let mut pending = Pending::default();
        loop {
            let Some(entry) = self.entries.next() else {
                return match pending.first_kind() {
                    Some(kind) => Err(UntarError::Dangling { kind }),
                    None => Ok(None),
                };
            };
            let mut entry = entry?;
            let kind = entry.header().entry_type();
            let size = entry.header().entry_size()?;
            let (slot, name) = match kind {
                tar::EntryType::GNULongName => (&mut pending.long_name, "GNU long name"),
                tar::EntryType::GNULongLink => (&mut pending.long_link, "GNU long link"),
                tar::EntryType::XHeader => (&mut pending.pax, "PAX"),
                tar::EntryType::XGlobalHeader => {
                    // Applies to the whole archive; nothing barn reads depends on it. Its
                    // data is skipped, never read.
                    if size > MAX_EXTENSION_HEADER {
                        return Err(UntarError::HeaderTooLarge {
                            kind: "PAX global",
                            size,
                        });
                    }
                    continue;
                }
                _ => return self.member(entry, kind, size, pending).map(Some),
            };
            if size > MAX_EXTENSION_HEADER {
                return Err(UntarError::HeaderTooLarge { kind: name, size });
            }
            if slot.is_some() {
                return Err(UntarError::Repeated { kind: name });
            }
            let mut bytes = Vec::with_capacity(size as usize);
            (&mut entry).take(size).read_to_end(&mut bytes)?;
            *slot = Some(bytes);
        }
    }

    fn member(
        &mut self,
        data: tar::Entry<'a, R>,
        kind: tar::EntryType,
        size: u64,
        pending: Pending,
    ) -> Result<Member<'a, R>, UntarError> {
        let header = data.header();
        let mut path = pending
            .long_name
            .map(trim_nul)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let mut link = pending
            .long_link
            .map(trim_nul)
            .or_else(|| header.link_name_bytes().map(Cow::into_owned));
        if let Some(pax) = &pending.pax {
            for ext in tar::PaxExtensions::new(pax) {
                let ext = ext.map_err(|_| UntarError::BadPax { path: lossy(&path) })?;
                let key = ext.key_bytes();
                if key == b"path" {
                    path = ext.value_bytes().to_vec();
                } else if key == b"linkpath" {
                    link = Some(ext.value_bytes().to_vec());
                } else if key.starts_with(b"GNU.sparse") {
                    return Err(UntarError::Sparse { path: lossy(&path) });
                } else if key == b"size" && ext.value_bytes() != size.to_string().as_bytes() {
                    return Err(UntarError::SizeMismatch {
                        path: lossy(&path),
                        pax: lossy(ext.value_bytes()),
                        header: size,
                    });
                }
            }
        }
        if kind == tar::EntryType::GNUSparse {
            return Err(UntarError::Sparse { path: lossy(&path) });
        }
        let mode = header.mode().unwrap_or(0o644);
        Ok(Member {
            path,
            link,
            kind,
            mode,
            size,
            data,
        })
    }
}

/// GNU long names end with a NUL.
fn trim_nul(mut b: Vec<u8>) -> Vec<u8> {
    while b.last() == Some(&0) {
        b.pop();
    }
    b
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(bytes: &[u8]) -> Result<Vec<(String, Option<String>, u64)>, UntarError> {
        let mut archive = tar::Archive::new(bytes);
        let mut m = Members::new(&mut archive)?;
        let mut out = Vec::new();
        while let Some(member) = m.next_member()? {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            out.push((
                text(&member.path),
                member.link.as_deref().map(text),
                member.size,
            ));
        }
        Ok(out)
    }

    /// A raw header of `kind` and `size` named `name`, followed by `data` (padded).
    fn raw(kind: tar::EntryType, name: &str, size: u64, data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn long_names_links_and_pax_paths_apply_to_the_next_member() {
        let long = "d/".repeat(200) + "file";
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "link", "t/".repeat(100) + "x")
            .unwrap();
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(bytes.len() - 1024);
        let pax = b"19 path=from-pax/x\n";
        bytes.extend(raw(tar::EntryType::XHeader, "pax", pax.len() as u64, pax));
        bytes.extend(raw(tar::EntryType::Regular, "short", 1, b"z"));
        let got = members(&bytes).unwrap();
        assert_eq!(got[0], (long, None, 3));
        assert_eq!(got[1].1, Some("t/".repeat(100) + "x"));
        assert_eq!(got[2], ("from-pax/x".into(), None, 1));
    }

    #[test]
    fn extension_headers_over_the_cap_are_refused_unread() {
        for kind in [
            tar::EntryType::GNULongName,
            tar::EntryType::GNULongLink,
            tar::EntryType::XHeader,
            tar::EntryType::XGlobalHeader,
        ] {
            // The header claims 1 GiB; the stream holds only a little of it. Reading it
            // would fail with a truncated stream, not with the cap.
            let bytes = raw(kind, "././@LongLink", 1 << 30, &[b'a'; 100]);
            let err = members(&bytes).unwrap_err();
            assert!(
                matches!(err, UntarError::HeaderTooLarge { size, .. } if size == 1 << 30),
                "{kind:?}: {err}"
            );
        }
        // At the cap it is read.
        let name = vec![b'n'; MAX_EXTENSION_HEADER as usize];
        let mut bytes = raw(
            tar::EntryType::GNULongName,
            "././@LongLink",
            MAX_EXTENSION_HEADER,
            &name,
        );
        bytes.extend(raw(tar::EntryType::Regular, "x", 0, b""));
        assert_eq!(members(&bytes).unwrap()[0].0.len(), name.len());
    }

    #[test]
    fn sparse_repeated_dangling_and_lying_sizes_are_refused() {
        let sparse = raw(tar::EntryType::GNUSparse, "s", 0, b"");
        assert!(matches!(members(&sparse), Err(UntarError::Sparse { .. })));
        let pax = b"22 GNU.sparse.major=1\n";
        let mut bytes = raw(tar::EntryType::XHeader, "p", pax.len() as u64, pax);
        bytes.extend(raw(tar::EntryType::Regular, "f", 0, b""));
        assert!(matches!(members(&bytes), Err(UntarError::Sparse { .. })));
        let pax = b"13 size=9999\n";
        let mut bytes = raw(tar::EntryType::XHeader, "p", pax.len() as u64, pax);
        bytes.extend(raw(tar::EntryType::Regular, "f", 1, b"x"));
        assert!(matches!(
            members(&bytes),
            Err(UntarError::SizeMismatch { .. })
        ));
        let mut bytes = raw(tar::EntryType::GNULongName, "l", 2, b"a\0");
        bytes.extend(raw(tar::EntryType::GNULongName, "l", 2, b"b\0"));
        bytes.extend(raw(tar::EntryType::Regular, "f", 0, b""));
        assert!(matches!(members(&bytes), Err(UntarError::Repeated { .. })));
        let pax = b"99 path=x\n";
        let mut bytes = raw(tar::EntryType::XHeader, "p", pax.len() as u64, pax);
        bytes.extend(raw(tar::EntryType::Regular, "f", 0, b""));
        assert!(matches!(members(&bytes), Err(UntarError::BadPax { .. })));
        let bytes = raw(tar::EntryType::GNULongName, "l", 2, b"a\0");
        assert!(matches!(members(&bytes), Err(UntarError::Dangling { .. })));
    }
}
