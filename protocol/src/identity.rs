//! Identities: ed25519 keys for nodes and for submitters (projects).
//!
//! A node's [`NodeId`] is its ed25519 public key, and its libp2p `PeerId` is derived from
//! the same key ([`SecretKey::to_libp2p`]), so a signed result is attributable to the peer
//! that sent it. Submitters sign jobs with a project key ([`SubmitterId`]) kept apart from
//! node keys.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ed25519 public key, checked to be a valid curve point.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

/// Why bytes or text are not a public key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    #[error("a public key is 32 bytes, got {0}")]
    WrongLength(usize),
    #[error("the bytes are not a valid ed25519 public key")]
    InvalidPoint,
    #[error("expected 64 hex digits, optionally after `ed25519:`")]
    NotHex,
    #[error("not a libp2p peer id of an ed25519 key: {0}")]
    BadPeerId(String),
    #[error(
        "a secret key file starts with `{}` on its first line",
        SecretKey::FILE_HEADER
    )]
    BadSecretFile,
}

impl PublicKey {
    /// Parses the 32 raw bytes of a key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        VerifyingKey::from_bytes(&arr)
            .map(Self)
            .map_err(|_| KeyError::InvalidPoint)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Checks `sig` over `msg` (strict verification: no malleable signatures).
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = Signature::from_bytes(sig);
        self.0.verify_strict(msg, &sig).is_ok() && self.0.verify(msg, &sig).is_ok()
    }

    /// The libp2p peer id of this key.
    pub fn to_peer_id(&self) -> libp2p_identity::PeerId {
        #[expect(
            clippy::expect_used,
            reason = "the bytes come from a checked VerifyingKey"
        )]
        let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(self.as_bytes())
            .expect("a checked ed25519 key");
        libp2p_identity::PublicKey::from(key).to_peer_id()
    }

    pub(crate) fn to_hex(self) -> String {
        hex::encode(self.as_bytes())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_bytes::Bytes::new(self.as_bytes()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: serde_bytes::ByteArray<32> = Deserialize::deserialize(d)?;
        Self::from_bytes(bytes.as_slice()).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", &self.to_hex()[..16])
    }
}

/// A volunteer node, named by its ed25519 public key; shown as its libp2p peer id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub PublicKey);

impl NodeId {
    /// The libp2p peer id, derived from the same key.
    pub fn to_peer_id(&self) -> libp2p_identity::PeerId {
        self.0.to_peer_id()
    }

    /// The node id of a libp2p peer id, if that peer id embeds an ed25519 key.
    pub fn from_peer_id(peer: &libp2p_identity::PeerId) -> Result<Self, KeyError> {
        // An ed25519 peer id is an identity multihash of the protobuf-encoded public key.
        let mh = peer.as_ref();
        let key = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest())
            .map_err(|e| KeyError::BadPeerId(e.to_string()))?;
        let ed = key
            .try_into_ed25519()
            .map_err(|e| KeyError::BadPeerId(e.to_string()))?;
        PublicKey::from_bytes(&ed.to_bytes()).map(Self)
    }

    /// A short form for logs and tables: the last 8 characters of the peer id.
    pub fn short(&self) -> String {
        let s = self.to_string();
        s[s.len().saturating_sub(8)..].to_string()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_peer_id())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let peer: libp2p_identity::PeerId = s
            .parse()
            .map_err(|e: libp2p_identity::ParseError| KeyError::BadPeerId(e.to_string()))?;
        Self::from_peer_id(&peer)
    }
}

/// A project's signing key, as listed in a volunteer's `trust.submitters`; shown as
/// `ed25519:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SubmitterId(pub PublicKey);

impl SubmitterId {
    /// The textual prefix.
    pub const PREFIX: &'static str = "ed25519:";

    /// A short form for logs: the prefix and 8 hex digits.
    pub fn short(&self) -> String {
        format!("{}{}", Self::PREFIX, &self.0.to_hex()[..8])
    }
}

impl fmt::Display for SubmitterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.to_hex())
    }
}

impl fmt::Debug for SubmitterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubmitterId({})", self.short())
    }
}

impl FromStr for SubmitterId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix(Self::PREFIX).unwrap_or(s);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| KeyError::NotHex)?;
        PublicKey::from_bytes(&bytes).map(Self)
    }
}

/// An ed25519 secret key. Its `Debug` shows only the public half.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// First line of a secret key file.
    pub const FILE_HEADER: &'static str = "barn-secret-key-v1";

    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        // Without an OS random source no key can be made safely; there is no fallback.
        #[expect(
            clippy::expect_used,
            reason = "an OS without a random source cannot run barn"
        )]
        getrandom::fill(&mut seed).expect("the operating system's random source failed");
        Self(SigningKey::from_bytes(&seed))
    }

    /// A key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// This key as a node id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.public())
    }

    /// This key as a submitter id.
    pub fn submitter_id(&self) -> SubmitterId {
        SubmitterId(self.public())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }

    /// The same key as a libp2p identity, so that the peer id and the signing key are one.
    pub fn to_libp2p(&self) -> libp2p_identity::Keypair {
        let mut seed = self.0.to_bytes();
        // A 32-byte ed25519 seed is always accepted.
        #[expect(
            clippy::expect_used,
            reason = "any 32-byte seed is a valid ed25519 key"
        )]
        libp2p_identity::Keypair::ed25519_from_bytes(&mut seed).expect("32-byte ed25519 seed")
    }

    /// The key from a libp2p identity (ed25519 only).
    pub fn from_libp2p(kp: &libp2p_identity::Keypair) -> Result<Self, KeyError> {
        let ed = kp
            .clone()
            .try_into_ed25519()
            .map_err(|e| KeyError::BadPeerId(e.to_string()))?;
        let bytes = ed.to_bytes(); // 64 bytes: secret then public
        let seed: [u8; 32] = bytes[..32]
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Ok(Self::from_seed(seed))
    }

    /// The text of a key file: the header line, then the seed in hex.
    pub fn to_file_text(&self) -> String {
        format!(
            "{}\n{}\n",
            Self::FILE_HEADER,
            hex::encode(self.0.to_bytes())
        )
    }

    /// Parses the text of a key file.
    pub fn from_file_text(text: &str) -> Result<Self, KeyError> {
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some(Self::FILE_HEADER) {
            return Err(KeyError::BadSecretFile);
        }
        let hex_line = lines.next().map(str::trim).unwrap_or_default();
        let mut seed = [0u8; 32];
        hex::decode_to_slice(hex_line, &mut seed).map_err(|_| KeyError::NotHex)?;
        Ok(Self::from_seed(seed))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public: {:?})", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_key_and_peer_id_are_one() {
        let key = SecretKey::generate();
        let kp = key.to_libp2p();
        assert_eq!(kp.public().to_peer_id(), key.node_id().to_peer_id());
        let back = SecretKey::from_libp2p(&kp).unwrap();
        assert_eq!(back.public(), key.public());
        let shown = key.node_id().to_string();
        assert_eq!(shown.parse::<NodeId>().unwrap(), key.node_id());
    }

    #[test]
    fn submitter_id_round_trips_as_text() {
        let key = SecretKey::generate();
        let id = key.submitter_id();
        assert_eq!(id.to_string().parse::<SubmitterId>().unwrap(), id);
        assert!(id.to_string().starts_with("ed25519:"));
    }

    #[test]
    fn key_file_round_trips_and_debug_hides_secret() {
        let key = SecretKey::generate();
        let text = key.to_file_text();
        let back = SecretKey::from_file_text(&text).unwrap();
        assert_eq!(back.public(), key.public());
        let secret_hex = hex::encode(key.0.to_bytes());
        assert!(!format!("{key:?}").contains(&secret_hex[..16]));
        assert_eq!(
            SecretKey::from_file_text("nope\n00").unwrap_err(),
            KeyError::BadSecretFile
        );
    }

    #[test]
    fn signatures_verify_and_detect_changes() {
        let key = SecretKey::generate();
        let sig = key.sign(b"message");
        assert!(key.public().verify(b"message", &sig));
        assert!(!key.public().verify(b"messagf", &sig));
    }
}
