//! Verified streaming: a blob's BLAKE3 tree cut into 1 MiB groups, so a fetcher checks
//! every group as it arrives instead of the whole blob at the end.
//!
//! A blob of `size` bytes has [`count`]`(size)` groups: group `i` holds bytes
//! `[i × GROUP, min((i + 1) × GROUP, size))`. Because BLAKE3 always splits a tree of more
//! than one group at a power of two chunks, every group of a blob with two or more is a
//! whole subtree of its hash tree, and its chaining value (the non-root hash of that
//! subtree, 32 bytes) is what the sender lists. The fetcher merges the list up the tree and
//! compares the result with the blob's [`ContentHash`] before taking a byte; after that a
//! group whose bytes do not hash to its listed value is refused as soon as it is complete.
//! A blob of one group lists its own hash.
//!
//! ```text
//! size 3.5 MiB:        root = blake3(blob)
//!                     /                  \
//!              parent(g0, g1)        parent(g2, g3)
//!              /         \           /          \
//!        cv(g0)      cv(g1)     cv(g2)      cv(g3: 0.5 MiB)
//! ```
//!
//! The values bind the size only through the tree's shape and the last group: a size of
//! the same shape passes [`Groups::decode`], and then the last group, whose length the
//! size sets, fails [`Groups::check`]. The list costs 32 bytes per MiB (8 KiB for a
//! 256 MiB image).

use std::io::{self, Read};

use blake3::hazmat::{self, ChainingValue, HasherExt, Mode};

use crate::ContentHash;

/// Bytes per group: 1 MiB, 1024 BLAKE3 chunks.
pub const GROUP: u64 = 1 << 20;
/// Bytes of one listed value.
pub const VALUE_LEN: usize = 32;

/// How many groups a blob of `size` bytes has (one for an empty blob).
pub fn count(size: u64) -> u64 {
    size.div_ceil(GROUP).max(1)
}

/// Bytes in group `index` of a blob of `size` bytes.
pub fn len_of(size: u64, index: u64) -> u64 {
    let start = index * GROUP;
    size.saturating_sub(start).min(GROUP)
}

/// Why a list of group values was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupsError {
    #[error("{got} bytes of group values for a blob of {size} bytes; expected {expected}")]
    Length {
        size: u64,
        got: usize,
        expected: u64,
    },
    #[error("the group values merge to {actual}, not the blob's hash {expected}")]
    Root {
        expected: ContentHash,
        actual: ContentHash,
    },
}

/// The listed values of one blob, checked against its hash; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    size: u64,
    values: Vec<ChainingValue>,
}

impl Groups {
    /// Computes the values of everything `reader` yields (one pass, constant memory).
    pub fn of_reader(mut reader: impl Read) -> io::Result<Self> {
        let mut values = Vec::new();
        let mut size = 0u64;
        let mut group = vec![0u8; GROUP as usize];
        loop {
            let n = read_full(&mut reader, &mut group)?;
            if n == 0 && size > 0 {
                break;
            }
            values.push(subtree(&group[..n], size));
            size += n as u64;
            if n < group.len() {
                break;
            }
        }
        if values.len() == 1 {
            // One group: its value is the blob's own hash.
            values[0] = *blake3::hash(&group[..size as usize]).as_bytes();
        }
        Ok(Self { size, values })
    }

    /// Parses the values a peer sent for the blob `hash` of `size` bytes, and checks that
    /// they merge to `hash`.
    pub fn decode(bytes: &[u8], size: u64, hash: &ContentHash) -> Result<Self, GroupsError> {
        let expected = count(size);
        if bytes.len() as u64 != expected * VALUE_LEN as u64 {
            return Err(GroupsError::Length {
                size,
                got: bytes.len(),
                expected: expected * VALUE_LEN as u64,
            });
        }
        let values = bytes
            .chunks_exact(VALUE_LEN)
            .map(|c| {
                let mut v = [0u8; VALUE_LEN];
                v.copy_from_slice(c);
                v
            })
            .collect();
        let groups = Self { size, values };
        let actual = groups.root();
        if actual != *hash {
            return Err(GroupsError::Root {
                expected: *hash,
                actual,
            });
        }
        Ok(groups)
    }

    /// The values, concatenated, as sent on the wire.
    pub fn encode(&self) -> Vec<u8> {
        self.values.concat()
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many groups there are.
    pub fn len(&self) -> u64 {
        self.values.len() as u64
    }

    /// Never true: even an empty blob has one group.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Whether `bytes` are exactly group `index` of this blob.
    pub fn check(&self, index: u64, bytes: &[u8]) -> bool {
        let Some(want) = usize::try_from(index).ok().and_then(|i| self.values.get(i)) else {
            return false;
        };
        if bytes.len() as u64 != len_of(self.size, index) {
            return false;
        }
        let got = if self.values.len() == 1 {
            *blake3::hash(bytes).as_bytes()
        } else {
            subtree(bytes, index * GROUP)
        };
        got == *want
    }

    /// The hash the values merge to.
    pub fn root(&self) -> ContentHash {
        if self.values.len() == 1 {
            return ContentHash::from_bytes(self.values[0]);
        }
        let (left, right) = self.split(0, self.values.len());
        ContentHash::from(hazmat::merge_subtrees_root(&left, &right, Mode::Hash))
    }

    /// The children of the subtree over groups `[lo, hi)` (two or more), merged.
    fn split(&self, lo: usize, hi: usize) -> (ChainingValue, ChainingValue) {
        let start = lo as u64 * GROUP;
        let end = (hi as u64 * GROUP).min(self.size);
        // More than one group: BLAKE3 splits at a power of two chunks, a whole number of
        // groups since there are more than GROUP bytes.
        let mid = lo + (hazmat::left_subtree_len(end - start) / GROUP) as usize;
        (self.merged(lo, mid), self.merged(mid, hi))
    }

    fn merged(&self, lo: usize, hi: usize) -> ChainingValue {
        if hi - lo == 1 {
            return self.values[lo];
        }
        let (left, right) = self.split(lo, hi);
        hazmat::merge_subtrees_non_root(&left, &right, Mode::Hash)
    }
}

/// The non-root value of `bytes` at `offset` in a blob of more than one group.
fn subtree(bytes: &[u8], offset: u64) -> ChainingValue {
    if bytes.is_empty() {
        // Only an empty blob has an empty group; its value is replaced by the hash.
        return [0; VALUE_LEN];
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(bytes);
    hasher.finalize_non_root()
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    const SIZES: [u64; 10] = [
        0,
        1,
        1024,
        GROUP - 1,
        GROUP,
        GROUP + 1,
        2 * GROUP,
        3 * GROUP + GROUP / 2,
        5 * GROUP + 1024,
        9 * GROUP + 77,
    ];

    #[test]
    fn values_merge_to_the_blake3_hash_at_every_shape() {
        for size in SIZES {
            let data = blob(size as usize);
            let groups = Groups::of_reader(&data[..]).unwrap();
            assert_eq!(groups.size(), size);
            assert_eq!(groups.len(), count(size), "size {size}");
            let hash = ContentHash::of(&data);
            assert_eq!(groups.root(), hash, "size {size}");
            let decoded = Groups::decode(&groups.encode(), size, &hash).unwrap();
            assert_eq!(decoded, groups);
            for i in 0..groups.len() {
                let s = (i * GROUP) as usize;
                let e = (s + len_of(size, i) as usize).min(data.len());
                assert!(groups.check(i, &data[s..e]), "size {size} group {i}");
            }
        }
    }

    #[test]
    fn a_changed_byte_fails_only_its_group() {
        let size = 4 * GROUP + 10;
        let mut data = blob(size as usize);
        let groups = Groups::of_reader(&data[..]).unwrap();
        data[(2 * GROUP + 5) as usize] ^= 1;
        for i in 0..groups.len() {
            let s = (i * GROUP) as usize;
            let e = s + len_of(size, i) as usize;
            assert_eq!(groups.check(i, &data[s..e]), i != 2, "group {i}");
        }
        // A group checked at another index, or cut short, fails.
        let g0 = &data[..GROUP as usize];
        assert!(!groups.check(1, g0));
        assert!(!groups.check(0, &g0[..100]));
        assert!(!groups.check(99, g0));
    }

    #[test]
    fn values_that_do_not_merge_to_the_hash_are_refused() {
        let data = blob((3 * GROUP) as usize);
        let hash = ContentHash::of(&data);
        let mut bytes = Groups::of_reader(&data[..]).unwrap().encode();
        bytes[40] ^= 1;
        assert!(matches!(
            Groups::decode(&bytes, 3 * GROUP, &hash),
            Err(GroupsError::Root { .. })
        ));
        assert!(matches!(
            Groups::decode(&bytes[..64], 3 * GROUP, &hash),
            Err(GroupsError::Length { .. })
        ));
        // The right values under a size of another shape do not pass; under a size of the
        // same shape they do, and the last group is refused (its length is the size's).
        let good = Groups::of_reader(&data[..]).unwrap().encode();
        assert!(Groups::decode(&good, 5 * GROUP, &hash).is_err());
        let lied = Groups::decode(&good, 3 * GROUP - 1, &hash).unwrap();
        let last = &data[(2 * GROUP) as usize..];
        assert!(!lied.check(2, last));
        assert!(!lied.check(2, &last[..last.len() - 1]));
    }
}
