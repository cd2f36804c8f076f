//! Canonical CBOR (ciborium) encoding and size-limited decoding.
//!
//! Encoding is deterministic: barn's types have a fixed field order, maps are `BTreeMap`s
//! (sorted keys) and ciborium writes the shortest form of every integer and length, so one
//! value always gives the same bytes. Decoding refuses input over a given size before
//! parsing, caps nesting depth, refuses trailing bytes, and never panics.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::MAX_CBOR_DEPTH;

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the CBOR value")]
    TrailingBytes(usize),
}

/// Encodes `value` as canonical CBOR.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail, and barn's types serialize without custom errors.
    #[expect(
        clippy::expect_used,
        reason = "serializing barn types into a Vec is infallible"
    )]
    ciborium::into_writer(value, &mut out).expect("CBOR encoding into a Vec");
    out
}

/// Decodes one `T` from `bytes`, refusing more than `limit` bytes before looking at them.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let mut reader = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_CBOR_DEPTH)
        .map_err(|e| DecodeError::Malformed(describe(e)))?;
    if !reader.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.len()));
    }
    Ok(value)
}

fn describe(e: ciborium::de::Error<std::io::Error>) -> String {
    match e {
        ciborium::de::Error::Io(e) => format!("input ended early ({e})"),
        ciborium::de::Error::Syntax(off) => format!("syntax error at byte {off}"),
        ciborium::de::Error::Semantic(Some(off), msg) => format!("{msg} at byte {off}"),
        ciborium::de::Error::Semantic(None, msg) => msg,
        ciborium::de::Error::RecursionLimitExceeded => {
            format!("nested deeper than {MAX_CBOR_DEPTH} levels")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        a: u64,
        b: String,
        m: BTreeMap<String, u32>,
    }

    #[test]
    fn round_trip_and_determinism() {
        let mut m = BTreeMap::new();
        m.insert("z".to_string(), 1);
        m.insert("a".to_string(), 2);
        let v = Sample {
            a: 5,
            b: "x".into(),
            m,
        };
        let bytes = to_vec(&v);
        assert_eq!(bytes, to_vec(&v));
        assert_eq!(from_slice::<Sample>(&bytes, 1024).unwrap(), v);
    }

    #[test]
    fn limits_and_trailing_bytes() {
        let bytes = to_vec(&7u32);
        assert!(matches!(
            from_slice::<u32>(&bytes, 0),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            from_slice::<u32>(&extra, 10),
            Err(DecodeError::TrailingBytes(1))
        );
        // 100 nested arrays.
        let deep = [vec![0x81u8; 100], vec![0x00]].concat();
        assert!(matches!(
            from_slice::<ciborium::Value>(&deep, 1000),
            Err(DecodeError::Malformed(_))
        ));
    }
}
