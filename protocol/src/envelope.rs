//! The signed envelope every barn message travels in.
//!
//! ```text
//! Envelope = { version: 1, kind: text, payload: bytes, signer: bytes(32), sig: bytes(64) }
//! signed bytes = "barn/v1/" || kind || 0x00 || payload
//! ```
//!
//! The payload is the canonical CBOR of a typed [`Message`]. The kind inside the signed
//! bytes separates domains: a signature over a claim can never pass as a signature over a
//! job. Verification checks, in order: size, CBOR shape, version, kind, signature, and
//! only then decodes the payload.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cbor::{self, DecodeError};
use crate::hash::ContentHash;
use crate::identity::{PublicKey, SecretKey};

/// The envelope format version this crate reads and writes.
pub const VERSION: u8 = 1;

/// A message type that travels in an envelope.
pub trait Message: Serialize + DeserializeOwned {
    /// The kind string, part of the signed bytes.
    const KIND: &'static str;
    /// The largest envelope of this kind accepted, in bytes.
    const MAX_SIZE: usize;
}

/// The envelope as it is on the wire.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u8,
    pub kind: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub signer: serde_bytes::ByteArray<32>,
    pub sig: serde_bytes::ByteArray<64>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("payload_len", &self.payload.len())
            .field("signer", &hex::encode(&self.signer[..8]))
            .finish()
    }
}

/// What was wrong with a signed message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("signed message is {size} bytes, over the limit of {limit} for `{kind}`")]
    TooLarge {
        kind: &'static str,
        size: usize,
        limit: usize,
    },
    #[error("malformed envelope: {0}")]
    Malformed(String),
    #[error("unknown envelope version {0} (this barn reads version {VERSION})")]
    UnknownVersion(u8),
    #[error("wrong kind: expected `{expected}`, got `{got}`")]
    WrongKind { expected: &'static str, got: String },
    #[error("bad signature on `{kind}` by {signer}")]
    BadSignature { kind: String, signer: String },
    #[error("malformed `{kind}` payload: {reason}")]
    MalformedPayload { kind: &'static str, reason: String },
}

/// The bytes a signature covers.
pub fn signed_bytes(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + kind.len() + 1 + payload.len());
    out.extend_from_slice(b"barn/v1/");
    out.extend_from_slice(kind.as_bytes());
    out.push(0);
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` as a message of `kind`.
    pub fn sign(kind: &str, payload: Vec<u8>, key: &SecretKey) -> Self {
        let sig = key.sign(&signed_bytes(kind, &payload));
        Self {
            version: VERSION,
            kind: kind.to_string(),
            payload,
            signer: serde_bytes::ByteArray::new(*key.public().as_bytes()),
            sig: serde_bytes::ByteArray::new(sig),
        }
    }

    /// The envelope's wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        cbor::to_vec(self)
    }

    /// Parses envelope bytes (without checking the signature), refusing more than `limit`.
    pub fn from_bytes(bytes: &[u8], limit: usize) -> Result<Self, VerifyError> {
        cbor::from_slice(bytes, limit).map_err(|e| match e {
            DecodeError::TooLarge { size, limit } => VerifyError::TooLarge {
                kind: "envelope",
                size,
                limit,
            },
            other => VerifyError::Malformed(other.to_string()),
        })
    }

    /// Checks version, kind and signature; returns the signer.
    pub fn verify(&self, expected_kind: &'static str) -> Result<PublicKey, VerifyError> {
        if self.version != VERSION {
            return Err(VerifyError::UnknownVersion(self.version));
        }
        if self.kind != expected_kind {
            return Err(VerifyError::WrongKind {
                expected: expected_kind,
                got: self.kind.clone(),
            });
        }
        let bad = || VerifyError::BadSignature {
            kind: self.kind.clone(),
            signer: hex::encode(&self.signer[..8]),
        };
        let signer = PublicKey::from_bytes(self.signer.as_slice()).map_err(|_| bad())?;
        if !signer.verify(&signed_bytes(&self.kind, &self.payload), &self.sig) {
            return Err(bad());
        }
        Ok(signer)
    }

    /// The blake3 hash of the payload bytes (a job's id).
    pub fn payload_hash(&self) -> ContentHash {
        ContentHash::of(&self.payload)
    }
}

/// A verified message with its envelope.
#[derive(Debug, Clone)]
pub struct Signed<T> {
    message: T,
    signer: PublicKey,
    envelope: Envelope,
}

impl<T: Message> Signed<T> {
    /// Encodes and signs `message`.
    pub fn sign(message: T, key: &SecretKey) -> Self {
        let envelope = Envelope::sign(T::KIND, cbor::to_vec(&message), key);
        Self {
            message,
            signer: key.public(),
            envelope,
        }
    }

    /// Parses and verifies envelope bytes of kind `T::KIND`, then decodes the payload.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() > T::MAX_SIZE {
            return Err(VerifyError::TooLarge {
                kind: T::KIND,
                size: bytes.len(),
                limit: T::MAX_SIZE,
            });
        }
        let envelope = Envelope::from_bytes(bytes, T::MAX_SIZE)?;
        Self::from_envelope(envelope)
    }

    /// Verifies an already parsed envelope and decodes its payload.
    pub fn from_envelope(envelope: Envelope) -> Result<Self, VerifyError> {
        let signer = envelope.verify(T::KIND)?;
        let message = cbor::from_slice(&envelope.payload, T::MAX_SIZE).map_err(|e| {
            VerifyError::MalformedPayload {
                kind: T::KIND,
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            message,
            signer,
            envelope,
        })
    }

    /// The message.
    pub fn message(&self) -> &T {
        &self.message
    }

    /// Who signed it.
    pub fn signer(&self) -> PublicKey {
        self.signer
    }

    /// The envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.envelope.to_bytes()
    }

    /// The blake3 hash of the signed payload bytes.
    pub fn payload_hash(&self) -> ContentHash {
        self.envelope.payload_hash()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }
    impl Message for Ping {
        const KIND: &'static str = "ping";
        const MAX_SIZE: usize = 1024;
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pong {
        n: u32,
    }
    impl Message for Pong {
        const KIND: &'static str = "pong";
        const MAX_SIZE: usize = 1024;
    }

    #[test]
    fn sign_and_verify() {
        let key = SecretKey::generate();
        let signed = Signed::sign(Ping { n: 3 }, &key);
        let back = Signed::<Ping>::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back.message(), &Ping { n: 3 });
        assert_eq!(back.signer(), key.public());
    }

    #[test]
    fn wrong_kind_and_version_are_named() {
        let key = SecretKey::generate();
        let bytes = Signed::sign(Ping { n: 3 }, &key).to_bytes();
        assert!(matches!(
            Signed::<Pong>::from_bytes(&bytes),
            Err(VerifyError::WrongKind { .. })
        ));
        let mut env = Envelope::from_bytes(&bytes, 1024).unwrap();
        env.version = 2;
        assert_eq!(
            Signed::<Ping>::from_envelope(env).unwrap_err(),
            VerifyError::UnknownVersion(2)
        );
        let big = vec![0u8; 2000];
        assert!(matches!(
            Signed::<Ping>::from_bytes(&big),
            Err(VerifyError::TooLarge { .. })
        ));
    }

    #[test]
    fn relabelled_kind_fails_signature() {
        // A ping re-labelled as a pong must not verify: the kind is inside the signed bytes.
        let key = SecretKey::generate();
        let mut env = Signed::sign(Ping { n: 3 }, &key).envelope().clone();
        env.kind = "pong".into();
        assert!(matches!(
            Signed::<Pong>::from_envelope(env),
            Err(VerifyError::BadSignature { .. })
        ));
    }
}
