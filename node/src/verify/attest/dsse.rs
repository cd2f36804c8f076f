//! DSSE: the envelope every attestation travels in, its pre-authentication encoding (PAE)
//! and its ed25519 signatures, each named by the signer's peer id.

use barn_protocol::identity::PublicKey;
use barn_protocol::{NodeId, SecretKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};

use super::AttestError;

/// DSSE's pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let ty = payload_type.as_bytes();
    let mut out = Vec::with_capacity(32 + ty.len() + payload.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(ty.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(ty);
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope, serialized with DSSE's JSON field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The serialized body, base64.
    pub payload: String,
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's peer id. DSSE makes it optional; barn writes and needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// The ed25519 signature over the PAE, base64.
    pub sig: String,
}

impl Envelope {
    /// Signs `payload` as `payload_type` with `key`; the keyid is the key's peer id.
    pub fn sign(payload_type: &str, payload: &[u8], key: &SecretKey) -> Self {
        let sig = key.sign(&pae(payload_type, payload));
        Self {
            payload: STANDARD.encode(payload),
            payload_type: payload_type.to_string(),
            signatures: vec![Signature {
                keyid: Some(key.node_id().to_string()),
                sig: STANDARD.encode(sig),
            }],
        }
    }

    /// Checks the payload type and every signature, each with the key its keyid names;
    /// returns the payload and the signers. Any bad signature rejects the envelope.
    pub fn verify(
        &self,
        payload_type: &'static str,
    ) -> Result<(Vec<u8>, Vec<NodeId>), AttestError> {
        let payload = self.checked_payload(payload_type)?;
        if self.signatures.is_empty() {
            return Err(AttestError::NoSignature);
        }
        let message = pae(&self.payload_type, &payload);
        let mut signers = Vec::with_capacity(self.signatures.len());
        for s in &self.signatures {
            let keyid = s.keyid.as_deref().ok_or(AttestError::MissingKeyId)?;
            let node: NodeId = keyid.parse().map_err(|source| AttestError::BadKeyId {
                keyid: keyid.to_string(),
                source,
            })?;
            check_sig(&node.0, keyid, &s.sig, &message)?;
            signers.push(node);
        }
        Ok((payload, signers))
    }

    /// Checks the payload type and that `key` made one of the signatures (keyids are
    /// ignored, as DSSE allows); returns the payload.
    pub fn verify_with(
        &self,
        payload_type: &'static str,
        key: &PublicKey,
    ) -> Result<Vec<u8>, AttestError> {
        let payload = self.checked_payload(payload_type)?;
        let message = pae(&self.payload_type, &payload);
        let keyid = NodeId(*key).to_string();
        if self
            .signatures
            .iter()
            .any(|s| check_sig(key, &keyid, &s.sig, &message).is_ok())
        {
            Ok(payload)
        } else {
            Err(AttestError::BadSignature { keyid })
        }
    }

    fn checked_payload(&self, payload_type: &'static str) -> Result<Vec<u8>, AttestError> {
        if self.payload_type != payload_type {
            return Err(AttestError::WrongPayloadType {
                expected: payload_type,
                got: self.payload_type.clone(),
            });
        }
        decode_b64(&self.payload, "payload")
    }
}

fn check_sig(key: &PublicKey, keyid: &str, sig: &str, message: &[u8]) -> Result<(), AttestError> {
    let raw = decode_b64(sig, "sig")?;
    let sig: [u8; 64] = raw
        .as_slice()
        .try_into()
        .map_err(|_| AttestError::SignatureLength {
            keyid: keyid.to_string(),
            len: raw.len(),
        })?;
    if key.verify(message, &sig) {
        Ok(())
    } else {
        Err(AttestError::BadSignature {
            keyid: keyid.to_string(),
        })
    }
}

/// Standard or URL-safe base64, canonical padding (so one text has one meaning).
pub(super) fn decode_b64(text: &str, field: &'static str) -> Result<Vec<u8>, AttestError> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|_| AttestError::Base64 { field })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::attest::PAYLOAD_TYPE;
    use crate::verify::attest::fixtures::key;

    /// Key A of the DSSE test vectors (RFC 8032's first test key).
    const SEED_A: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    #[test]
    fn pae_matches_the_dsse_specification() {
        // protocol.md, "Test Vectors".
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    /// The DSSE repository's `testvectors/vectors.json` uses ed25519 (RFC 8032's first test
    /// key as key A); ed25519 is deterministic, so barn must reproduce its signature exactly.
    #[test]
    fn dsse_ed25519_vectors() {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(SEED_A, &mut seed).unwrap();
        let a = SecretKey::from_seed(seed);
        let body = br#"{"_type":"https://in-toto.io/Statement/v1"}"#;
        // "single-signature": its PAE and signature.
        assert_eq!(
            hex::encode(pae(PAYLOAD_TYPE, body)),
            "445353457631203238206170706c69636174696f6e2f766e642e696e2d746f746f2b6a736f6e20\
             3433207b225f74797065223a2268747470733a2f2f696e2d746f746f2e696f2f53746174656d65\
             6e742f7631227d"
        );
        let env = Envelope::sign(PAYLOAD_TYPE, body, &a);
        assert_eq!(
            env.payload,
            "eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ=="
        );
        assert_eq!(
            env.signatures[0].sig,
            "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
        );
        // "url-safe-base64": verifiers accept either alphabet.
        let url_safe: Envelope = serde_json::from_str(
            r#"{"payload":"-_-_Pj8=","payloadType":"application/vnd.in-toto+json","signatures":[{"sig":"P-_KHICeR7tI6S_YyejJTRtrXhcQyQ2LYPaL8h90KjC9qN8HU_svOQ6TuDOT1HIrsGW886DbWNWcCmX5twLrAw==","keyid":"A"}]}"#,
        )
        .unwrap();
        assert_eq!(
            url_safe.verify_with(PAYLOAD_TYPE, &a.public()).unwrap(),
            vec![0xfb, 0xff, 0xbf, 0x3e, 0x3f]
        );
        // "payload-type-swapped": the signature covers the other type.
        let mut swapped = env.clone();
        swapped.payload_type = "application/vnd.example.other+json".into();
        assert!(matches!(
            swapped.verify_with("application/vnd.example.other+json", &a.public()),
            Err(AttestError::BadSignature { .. })
        ));
        // Key A's keyid "A" is no peer id: barn names the problem.
        assert!(matches!(
            url_safe.verify(PAYLOAD_TYPE),
            Err(AttestError::BadKeyId { .. })
        ));
    }

    #[test]
    fn envelope_round_trips_and_names_its_signer() {
        let k = key(1);
        let env = Envelope::sign(PAYLOAD_TYPE, b"{}", &k);
        assert_eq!(env.signatures[0].keyid, Some(k.node_id().to_string()));
        let (payload, signers) = env.verify(PAYLOAD_TYPE).unwrap();
        assert_eq!(
            (payload.as_slice(), signers),
            (&b"{}"[..], vec![k.node_id()])
        );
        assert!(matches!(
            env.verify("application/json"),
            Err(AttestError::WrongPayloadType { .. })
        ));
        let mut other = env.clone();
        other.signatures[0].keyid = Some(key(2).node_id().to_string());
        let err = other.verify(PAYLOAD_TYPE).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("bad signature by keyid {}", key(2).node_id())
        );
        other.signatures.clear();
        assert!(matches!(
            other.verify(PAYLOAD_TYPE),
            Err(AttestError::NoSignature)
        ));
    }
}
