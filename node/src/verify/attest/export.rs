//! Making attestations: a result's provenance and a job's verification summary, signed
//! into DSSE envelopes (by the exporter, or rebuilt with the builder's own signature), and
//! a file of them.

use std::collections::BTreeMap;

use barn_protocol::message::{BuildResult, Job};
use barn_protocol::settlement::Settlement;
use barn_protocol::{JobId, SecretKey, Signed};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::check::{check_result, verify_envelope};
use super::dsse::{Envelope, Signature, pae};
use super::statement::{
    Statement, Verifier, node_uri, provenance_statement, rfc3339, summary_statement,
};
use super::{AttestError, PAYLOAD_TYPE};

fn sign_statement<P: Serialize>(
    statement: &Statement<P>,
    key: &SecretKey,
) -> Result<Envelope, AttestError> {
    let body = serde_json::to_vec(statement)?;
    Ok(Envelope::sign(PAYLOAD_TYPE, &body, key))
}

/// The provenance of `result`, embedding it and `job`, DSSE-signed by the exporter's `key`
/// (design (b) in the module header).
pub fn export_result(
    job: &Signed<Job>,
    result: &Signed<BuildResult>,
    key: &SecretKey,
) -> Result<Envelope, AttestError> {
    check_result(&JobId::of(job), result)?;
    sign_statement(&provenance_statement(job, result), key)
}

/// The builder's signature over its own provenance: what a volunteer computes when it
/// finishes a job and sends with its commitment. The statement is built only from the
/// signed job and result, and ed25519 signatures are deterministic, so anyone holding the
/// two envelopes and these 64 bytes can rebuild the builder-signed DSSE envelope
/// ([`builder_envelope`]).
pub fn provenance_signature(
    job: &Signed<Job>,
    result: &Signed<BuildResult>,
    node_key: &SecretKey,
) -> Result<[u8; 64], AttestError> {
    let body = serde_json::to_vec(&provenance_statement(job, result))?;
    Ok(node_key.sign(&pae(PAYLOAD_TYPE, &body)))
}

/// The builder-signed provenance envelope from the builder's 64-byte signature; checked.
pub fn builder_envelope(
    job: &Signed<Job>,
    result: &Signed<BuildResult>,
    sig: &[u8; 64],
) -> Result<Envelope, AttestError> {
    let body = serde_json::to_vec(&provenance_statement(job, result))?;
    let env = Envelope {
        payload: STANDARD.encode(&body),
        payload_type: PAYLOAD_TYPE.to_string(),
        signatures: vec![Signature {
            keyid: Some(result.message().node.to_string()),
            sig: STANDARD.encode(sig),
        }],
    };
    verify_envelope(&env)?;
    Ok(env)
}

/// The same provenance signed by the node that built it, for a node to sign its own.
pub fn sign_provenance(
    result: &Signed<BuildResult>,
    job: &Signed<Job>,
    node_key: &SecretKey,
) -> Result<Envelope, AttestError> {
    let builder = result.message().node;
    if node_key.node_id() != builder {
        return Err(AttestError::NotBuilder {
            node: node_key.node_id(),
            builder,
        });
    }
    export_result(job, result, node_key)
}

/// The verification summary of `results` of `job`, signed by `key` (the exporting node's),
/// verified at unix second `time_verified`. With the job's `settlement` (checked against
/// the job), the summary embeds it and every result must be one it names.
pub fn export_summary(
    job: &Signed<Job>,
    results: &[Signed<BuildResult>],
    settlement: Option<&Signed<Settlement>>,
    key: &SecretKey,
    time_verified: u64,
) -> Result<Envelope, AttestError> {
    let id = JobId::of(job);
    for r in results {
        check_result(&id, r)?;
    }
    let verifier = Verifier {
        id: node_uri(&key.node_id()),
        version: BTreeMap::from([("barn".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
    };
    sign_statement(
        &summary_statement(job, results, settlement, verifier, rfc3339(time_verified))?.0,
        key,
    )
}

/// Envelopes as one compact JSON array (no whitespace: every byte is significant).
pub fn to_file(envelopes: &[Envelope]) -> Result<Vec<u8>, AttestError> {
    Ok(serde_json::to_vec(envelopes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::attest::check::verify_file;
    use crate::verify::attest::fixtures::{job, job_with_nonce, key, result};

    #[test]
    fn a_builders_64_byte_signature_rebuilds_its_own_provenance_envelope() {
        let job = job();
        let builder = key(1);
        let r = result(&job, &builder, b"out");
        let sig = provenance_signature(&job, &r, &builder).unwrap();
        let env = builder_envelope(&job, &r, &sig).unwrap();
        assert_eq!(
            env.signatures[0].keyid.as_deref(),
            Some(builder.node_id().to_string().as_str())
        );
        // The same envelope the builder would sign itself.
        assert_eq!(env, sign_provenance(&r, &job, &builder).unwrap());
        // Anyone else's signature does not pass as the builder's.
        let forged = provenance_signature(&job, &r, &key(2)).unwrap();
        assert!(builder_envelope(&job, &r, &forged).is_err());
    }

    #[test]
    fn a_node_signs_its_own_provenance() {
        let j = job();
        let r = result(&j, &key(1), b"x");
        assert!(matches!(
            sign_provenance(&r, &j, &key(2)),
            Err(AttestError::NotBuilder { .. })
        ));
        let env = sign_provenance(&r, &j, &key(1)).unwrap();
        let report = verify_file(&to_file(&[env]).unwrap()).unwrap();
        assert!(
            report.checked[0]
                .to_string()
                .ends_with("signed by the builder")
        );
        // A result of another job is refused at export.
        let other = result(&job_with_nonce(1), &key(1), b"x");
        assert!(matches!(
            export_result(&j, &other, &key(3)),
            Err(AttestError::WrongJob { .. })
        ));
    }
}
