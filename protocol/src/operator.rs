//! Operators: the people behind nodes.
//!
//! A volunteer may hold an operator key (`barn key new --operator`) and certify each of its
//! node keys with it, so that one person's ten machines count as one builder: a coordinator
//! grants the replicas of one job to distinct operators, and a verifier counts agreement by
//! operator, not by node. A node without a certificate is its own operator (its operator id
//! is its node key). Nothing stops one person from making many operator keys: whose
//! agreement counts is the verifier's trust policy (see `docs/threat-model.md`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::{Message, Signed};
use crate::identity::{KeyError, NodeId, PublicKey};
use crate::limits::MAX_REQUEST;

/// An operator, named by its ed25519 public key; shown as `operator:` and 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperatorId(pub PublicKey);

impl OperatorId {
    /// The textual prefix.
    pub const PREFIX: &'static str = "operator:";

    /// The operator of a node without a certificate: the node itself.
    pub fn of_node(node: &NodeId) -> Self {
        Self(node.0)
    }

    /// A short form for logs: the prefix and 8 hex digits.
    pub fn short(&self) -> String {
        format!("{}{}", Self::PREFIX, &self.0.to_hex()[..8])
    }
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.0.to_hex())
    }
}

impl fmt::Debug for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorId({})", self.short())
    }
}

impl FromStr for OperatorId {
    type Err = KeyError;

    /// Accepts `operator:<hex>`, a bare 64-digit hex key, or a node's peer id (a node
    /// without a certificate is its own operator).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix(Self::PREFIX).unwrap_or(s);
        let mut bytes = [0u8; 32];
        if hex::decode_to_slice(hex_part, &mut bytes).is_ok() {
            return PublicKey::from_bytes(&bytes).map(Self);
        }
        s.parse::<NodeId>()
            .map(|n| Self::of_node(&n))
            .map_err(|_| KeyError::NotHex)
    }
}

/// An operator's statement that a node key is one of its machines, signed by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorCert {
    pub operator: OperatorId,
    pub node: NodeId,
    /// Unix seconds.
    pub issued: u64,
    /// Unix seconds after which the certificate no longer counts.
    pub expires: u64,
}

impl Message for OperatorCert {
    const KIND: &'static str = "operator-cert";
    const MAX_SIZE: usize = 1024;
}

/// Why an operator certificate was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("does not decode or verify: {0}")]
    Invalid(String),
    #[error("signed by another key than the operator it names")]
    WrongSigner,
    #[error("certifies node {certified}, not {node}")]
    OtherNode { certified: String, node: String },
    #[error("expired at {expires} (now {now})")]
    Expired { expires: u64, now: u64 },
    #[error("issued in the future ({issued}, now {now})")]
    NotYetValid { issued: u64, now: u64 },
}

/// How far in the future a certificate's issue time may be (clocks differ).
const ISSUE_SKEW_SECS: u64 = 300;

impl OperatorCert {
    /// Checks a signed certificate for `node` at `now`; returns its operator.
    pub fn check(bytes: &[u8], node: &NodeId, now: u64) -> Result<OperatorId, CertError> {
        let signed = Signed::<OperatorCert>::from_bytes(bytes)
            .map_err(|e| CertError::Invalid(e.to_string()))?;
        let c = signed.message();
        if signed.signer() != c.operator.0 {
            return Err(CertError::WrongSigner);
        }
        if &c.node != node {
            return Err(CertError::OtherNode {
                certified: c.node.to_string(),
                node: node.to_string(),
            });
        }
        if c.expires <= now {
            return Err(CertError::Expired {
                expires: c.expires,
                now,
            });
        }
        if c.issued > now + ISSUE_SKEW_SECS {
            return Err(CertError::NotYetValid {
                issued: c.issued,
                now,
            });
        }
        Ok(c.operator)
    }

    /// The operator a node counts as: its certificate's, when one is given and checks, or
    /// itself.
    pub fn operator_of(
        cert: Option<&[u8]>,
        node: &NodeId,
        now: u64,
    ) -> Result<OperatorId, CertError> {
        match cert {
            Some(bytes) => Self::check(bytes, node, now),
            None => Ok(OperatorId::of_node(node)),
        }
    }
}

/// Largest certificate carried in a claim or a settlement.
pub const MAX_CERT: usize = 1024;

const _: () = assert!(MAX_CERT < MAX_REQUEST);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    fn cert(op: &SecretKey, node: NodeId, expires: u64) -> Vec<u8> {
        Signed::sign(
            OperatorCert {
                operator: OperatorId(op.public()),
                node,
                issued: 100,
                expires,
            },
            op,
        )
        .to_bytes()
    }

    #[test]
    fn a_certificate_names_its_node_and_operator() {
        let op = SecretKey::from_seed([7; 32]);
        let node = SecretKey::from_seed([8; 32]).node_id();
        let other = SecretKey::from_seed([9; 32]).node_id();
        let c = cert(&op, node, 1_000);
        assert_eq!(
            OperatorCert::check(&c, &node, 500),
            Ok(OperatorId(op.public()))
        );
        assert!(matches!(
            OperatorCert::check(&c, &other, 500),
            Err(CertError::OtherNode { .. })
        ));
        assert!(matches!(
            OperatorCert::check(&c, &node, 1_000),
            Err(CertError::Expired { .. })
        ));
        // Signed by the node itself, naming the operator: a forgery.
        let forged = Signed::sign(
            OperatorCert {
                operator: OperatorId(op.public()),
                node,
                issued: 100,
                expires: 1_000,
            },
            &SecretKey::from_seed([8; 32]),
        )
        .to_bytes();
        assert_eq!(
            OperatorCert::check(&forged, &node, 500),
            Err(CertError::WrongSigner)
        );
        assert_eq!(
            OperatorCert::operator_of(None, &node, 500),
            Ok(OperatorId::of_node(&node))
        );
    }

    #[test]
    fn operator_ids_parse_from_their_text_and_from_a_peer_id() {
        let op = OperatorId(SecretKey::from_seed([7; 32]).public());
        assert_eq!(op.to_string().parse::<OperatorId>().unwrap(), op);
        let node = SecretKey::from_seed([8; 32]).node_id();
        assert_eq!(
            node.to_string().parse::<OperatorId>().unwrap(),
            OperatorId::of_node(&node)
        );
    }
}
