//! Content hashes: blake3, written `b3:` plus 64 lowercase hex digits.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The blake3 hash of some bytes: a blob, a source tree's tar stream, a manifest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    /// The textual prefix naming the hash function.
    pub const PREFIX: &'static str = "b3:";

    /// Hashes `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Hashes everything `reader` yields, in constant memory; returns the hash and the length.
    pub fn of_reader(reader: impl Read) -> io::Result<(Self, u64)> {
        Self::copy_hashing(reader, &mut io::sink())
    }

    /// Copies `reader` into `writer` in constant memory, hashing what passes; returns the
    /// hash and the length. The writer is flushed.
    pub fn copy_hashing(mut reader: impl Read, writer: &mut impl Write) -> io::Result<(Self, u64)> {
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut len = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            writer.write_all(&buf[..n])?;
            len += n as u64;
        }
        writer.flush()?;
        Ok((Self(*hasher.finalize().as_bytes()), len))
    }

    /// Wraps raw hash bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw hash bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hex digits without the prefix.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short form for logs and tables: `b3:` and the first 12 hex digits.
    pub fn short(&self) -> String {
        format!("{}{}", Self::PREFIX, &self.to_hex()[..12])
    }
}

impl From<blake3::Hash> for ContentHash {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.short())
    }
}

/// Why a string is not a content hash.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseHashError {
    #[error("a content hash starts with `b3:`")]
    MissingPrefix,
    #[error("a content hash has 64 hex digits after `b3:`, this one has {0}")]
    WrongLength(usize),
    #[error("a content hash has only hex digits 0-9 and a-f after `b3:`")]
    NotHex,
}

impl FromStr for ContentHash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s
            .strip_prefix(Self::PREFIX)
            .ok_or(ParseHashError::MissingPrefix)?;
        if hex_part.len() != 64 {
            return Err(ParseHashError::WrongLength(hex_part.len()));
        }
        if !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ParseHashError::NotHex);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut out).map_err(|_| ParseHashError::NotHex)?;
        Ok(Self(out))
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(d)?;
        Ok(Self(bytes.into_array()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_round_trip() {
        let h = ContentHash::of(b"hello");
        let s = h.to_string();
        assert!(s.starts_with("b3:"));
        assert_eq!(s.len(), 67);
        assert_eq!(s.parse::<ContentHash>().unwrap(), h);
        assert_eq!(h.short().len(), 15);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!(
            "abc".parse::<ContentHash>(),
            Err(ParseHashError::MissingPrefix)
        );
        assert_eq!(
            "b3:abc".parse::<ContentHash>(),
            Err(ParseHashError::WrongLength(3))
        );
        let upper = format!("b3:{}", "A".repeat(64));
        assert_eq!(upper.parse::<ContentHash>(), Err(ParseHashError::NotHex));
    }

    #[test]
    fn reader_hash_matches_slice_hash() {
        let data = vec![7u8; 200_000];
        let (h, n) = ContentHash::of_reader(&data[..]).unwrap();
        assert_eq!(h, ContentHash::of(&data));
        assert_eq!(n, 200_000);
    }
}
