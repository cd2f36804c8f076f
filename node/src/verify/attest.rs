//! Attestations: a job's signed results and its verdict, exported in the supply-chain
//! formats other tools read, and checked again on the way back in.
//!
//! # Formats
//!
//! - Every attestation is a [DSSE] envelope ([`Envelope`]): `payload` (base64), `payloadType`
//!   and `signatures[{keyid, sig}]`, each signature an ed25519 signature over
//!   [`pae`]`(payloadType, payload)`. The `keyid` is the signer's libp2p peer id (its
//!   [`NodeId`] as text): barn's peer ids embed the ed25519 public key, so a verifier recovers
//!   the key from the keyid and needs no key directory. A keyid that is not such a peer id is
//!   refused. barn writes standard base64 with padding and reads standard or URL-safe (DSSE
//!   asks verifiers to accept both), canonical padding required either way.
//! - The payload is an [in-toto Statement v1] (`application/vnd.in-toto+json`) whose
//!   subjects name files by path with a `blake3` digest (lowercase hex).
//! - A result becomes a statement with a [SLSA Provenance v1] predicate ([`PROVENANCE_V1`]),
//!   `buildType` [`BUILD_TYPE`]. Subjects: every file in the result's manifest (the job's
//!   id, named `barn-job`, when the build left no file). `externalParameters`: the signed job
//!   (job id, image name and hash, arch, tasks, env, artifact globs, source hash and size,
//!   resources, timeout, replicas, `SOURCE_DATE_EPOCH`, submitter key).
//!   `internalParameters`: what the volunteer ran (accelerator, QEMU version, image hash,
//!   coordinator, lease). `resolvedDependencies`: the source tar and the image, by blake3.
//!   `runDetails.builder.id` is `barn-node:<peer id>` of the volunteer; `metadata` has the
//!   job id as `invocationId` (replicas of one job share it; the builder id tells them
//!   apart), `finishedOn` from the signed result and `startedOn` = finished - total time,
//!   both RFC 3339 in UTC and left out when the result does not say.
//! - A verdict becomes a statement with a [SLSA VSA v1] predicate ([`VSA_V1`]):
//!   `verifier.id` `barn-node:<peer id>` of the exporter, `resourceUri` the job
//!   (`https://barn.invalid/job/b3:…`), `policy` [`POLICY`], `inputAttestations` the signed
//!   build results (digest and content), `verificationResult` `PASSED` only for a
//!   reproducible verdict, `verifiedLevels` `["BARN_REPRODUCIBLE"]` or `["FAILED"]`, and a
//!   `barn` extension with the verdict kind, the agreeing nodes (the majority), the others,
//!   the failures and the signed job. Subjects: the agreed files when reproducible,
//!   otherwise the job.
//!
//! barn owns no domain: its type URIs live under `barn.invalid`, a name reserved never to
//! resolve (RFC 2606), so they cannot collide with anyone's.
//!
//! # Who signs (design choice (b))
//!
//! A provenance should be signed by the node that built, but the machine exporting it holds
//! only its own key, not the volunteers'. So the exported provenance carries the
//! volunteer's own barn-signed `build-result` envelope, and the signed `job` envelope, as
//! `runDetails.byproducts` (named `barn-build-result` and `barn-job`, bytes in `content`),
//! and the DSSE signature is by the exporting node's key (`<data>/node.key`). The statement
//! is a pure function of those two envelopes: [`verify_file`] checks the DSSE signature,
//! re-verifies both embedded envelopes (the result with the volunteer's key, which must be
//! the result's own node), rebuilds the statement from them and requires it to equal the
//! one signed. So the subjects are exactly the signed manifest's files and every parameter
//! is the signed job's: the exporter vouches only for having packaged them. A node can also
//! sign its own provenance with [`sign_provenance`] (same statement, DSSE key = builder's).
//!
//! In a farm that is what happens: a volunteer that finishes a job computes its
//! [`provenance_signature`] and sends the 64 bytes with its commitment; the coordinator keeps
//! them beside the result, and `barn attest export` rebuilds the builder-signed envelope
//! ([`builder_envelope`]: the statement is a pure function of the two signed envelopes, and
//! ed25519 signatures are deterministic). Only a result without that signature (an older
//! volunteer) falls back to the exporter's signature.
//!
//! The VSA is signed by the exporter too (its verifier id must name the DSSE signer) and
//! carries every result it judged, so [`verify_file`] re-runs [`verdict::judge`] on them and
//! requires the same summary: only the verifier and the time are the exporter's word. A
//! change to how barn judges therefore makes older summaries fail to verify, on purpose.
//!
//! [DSSE]: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
//! [in-toto Statement v1]: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
//! [SLSA Provenance v1]: https://slsa.dev/spec/v1.0/provenance
//! [SLSA VSA v1]: https://slsa.dev/spec/v1.0/verification_summary

#![expect(
    clippy::result_large_err,
    clippy::large_enum_variant,
    reason = "errors and reports carry node and job ids by value; verifying a file is not a hot path"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use barn_protocol::envelope::Message;
use barn_protocol::identity::{KeyError, PublicKey};
use barn_protocol::message::{BuildResult, Job};
use barn_protocol::{ContentHash, JobId, NodeId, SecretKey, Signed, VerifyError};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::verify::verdict::{self, Kind};

/// DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// SLSA Provenance v1 predicate.
pub const PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// SLSA Verification Summary v1 predicate.
pub const VSA_V1: &str = "https://slsa.dev/verification_summary/v1";
/// The provenance `buildType` of a barn build; its `externalParameters` are this version's.
pub const BUILD_TYPE: &str = "https://barn.invalid/build/v1";
/// The VSA policy: at least two replicas built the job and every manifest root agrees.
pub const POLICY: &str = "https://barn.invalid/policy/reproducible/v1";
/// The VSA level of a reproducible verdict.
pub const LEVEL_REPRODUCIBLE: &str = "BARN_REPRODUCIBLE";
/// Media type of an embedded barn envelope (its wire bytes).
pub const ENVELOPE_MEDIA_TYPE: &str = "application/vnd.barn.envelope.v1+cbor";
/// The largest attestation file read. A file holds one provenance per replica and one
/// summary, each embedding signed results of at most 1 MiB (base64 twice: ×1.8).
pub const MAX_FILE: usize = 64 << 20;

const BYPRODUCT_JOB: &str = "barn-job";
const BYPRODUCT_RESULT: &str = "barn-build-result";
const BYPRODUCT_LOG: &str = "barn-log";
const DIGEST: &str = "blake3";

/// Why an attestation could not be made or does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    #[error("the file is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the file is neither a DSSE envelope, a JSON array of them nor JSON lines: {0}")]
    NotJson(String),
    #[error("the file holds no envelope")]
    Empty,
    #[error("envelope {index}")]
    Entry {
        /// 1-based position in the file.
        index: usize,
        #[source]
        source: Box<AttestError>,
    },
    #[error("malformed DSSE envelope: {0}")]
    MalformedEnvelope(String),
    #[error("`{field}` is not base64")]
    Base64 { field: &'static str },
    #[error("the envelope has no signature")]
    NoSignature,
    #[error("a signature has no keyid (barn needs the signer's peer id there)")]
    MissingKeyId,
    #[error("keyid `{keyid}` is not a barn peer id")]
    BadKeyId {
        keyid: String,
        #[source]
        source: KeyError,
    },
    #[error("the signature by keyid {keyid} is {len} bytes, not 64")]
    SignatureLength { keyid: String, len: usize },
    #[error("bad signature by keyid {keyid}")]
    BadSignature { keyid: String },
    #[error("wrong payloadType: expected `{expected}`, got `{got}`")]
    WrongPayloadType { expected: &'static str, got: String },
    #[error("the payload is not a JSON statement: {0}")]
    MalformedStatement(String),
    #[error("wrong statement `_type`: expected `{STATEMENT_V1}`, got `{0}`")]
    WrongStatementType(String),
    #[error("unsupported predicateType `{0}`")]
    UnknownPredicate(String),
    #[error("the statement has no embedded `{0}`")]
    MissingEmbedded(&'static str),
    #[error("the embedded `{what}` envelope does not verify")]
    Embedded {
        what: &'static str,
        #[source]
        source: VerifyError,
    },
    #[error("the result of node {node} is signed by another key, {signer}")]
    SignerMismatch { node: NodeId, signer: NodeId },
    #[error("the result of node {node} is for job {got}, not {expected}")]
    WrongJob {
        node: NodeId,
        expected: JobId,
        got: JobId,
    },
    #[error("node {node} cannot sign the provenance of a build by {builder}")]
    NotBuilder { node: NodeId, builder: NodeId },
    #[error("the subjects do not match the files of the signed manifest")]
    SubjectMismatch,
    #[error("`{field}` does not match what the embedded signed job and results say")]
    Mismatch { field: String },
    #[error("the summary's verifier `{verifier}` is not its signer")]
    VerifierMismatch { verifier: String },
    #[error("the result of node {node} for job {job} is not among the summary's inputs")]
    NotInSummary { node: NodeId, job: JobId },
    #[error("failed to encode JSON")]
    Encode(#[from] serde_json::Error),
}

// ---------------------------------------------------------------------------------------
// DSSE

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
fn decode_b64(text: &str, field: &'static str) -> Result<Vec<u8>, AttestError> {
    STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|_| AttestError::Base64 { field })
}

// ---------------------------------------------------------------------------------------
// Statements

/// An in-toto Statement v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement<P> {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: P,
}

/// An in-toto ResourceDescriptor (the fields barn uses).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digest: BTreeMap<String, String>,
    /// The bytes themselves, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, Value>,
}

impl ResourceDescriptor {
    fn named(name: &str, hash: &ContentHash) -> Self {
        Self {
            name: Some(name.to_string()),
            digest: BTreeMap::from([(DIGEST.to_string(), hash.to_hex())]),
            ..Self::default()
        }
    }

    /// A barn envelope, embedded whole.
    fn embedded(name: &str, bytes: &[u8]) -> Self {
        Self {
            content: Some(STANDARD.encode(bytes)),
            media_type: Some(ENVELOPE_MEDIA_TYPE.to_string()),
            ..Self::named(name, &ContentHash::of(bytes))
        }
    }
}

/// SLSA Provenance v1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    pub build_type: String,
    pub external_parameters: ExternalParameters,
    pub internal_parameters: InternalParameters,
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

/// What the submitter asked for: the signed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalParameters {
    pub job: String,
    pub image: String,
    pub image_hash: String,
    pub arch: String,
    pub tasks: Vec<TaskParameter>,
    pub env: BTreeMap<String, String>,
    pub artifacts: Vec<String>,
    pub source: String,
    pub source_size: u64,
    pub source_date_epoch: u64,
    pub timeout_secs: u64,
    pub replicas: u8,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// The project key that signed the job, `ed25519:<hex>`.
    pub submitter: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskParameter {
    pub name: String,
    pub run: String,
}

/// What the volunteer used, from its signed result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InternalParameters {
    pub accel: String,
    pub qemu_version: String,
    pub image_hash: String,
    pub coordinator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunDetails {
    pub builder: Builder,
    pub metadata: BuildMetadata,
    pub byproducts: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Builder {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildMetadata {
    pub invocation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_on: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_on: Option<String>,
}

/// SLSA Verification Summary v1, with barn's extension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub verifier: Verifier,
    pub time_verified: String,
    pub resource_uri: String,
    pub policy: ResourceDescriptor,
    pub input_attestations: Vec<ResourceDescriptor>,
    pub verification_result: String,
    pub verified_levels: Vec<String>,
    pub slsa_version: String,
    pub barn: SummaryDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verifier {
    pub id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub version: BTreeMap<String, String>,
}

/// barn's part of a summary: the verdict and the signed job it is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryDetail {
    /// `reproducible`, `differs`, `failed` or `pending`.
    pub verdict: String,
    /// The agreed manifest root, when reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    pub replicas: u8,
    pub compared: usize,
    /// Peer ids whose outputs agree (the strict majority of succeeded builds).
    pub agreeing: Vec<String>,
    /// Succeeded peer ids outside that majority.
    pub disagreeing: Vec<String>,
    /// Peer id → why its build failed.
    pub failed: BTreeMap<String, String>,
    /// Paths on which succeeded builds differ.
    pub differing_files: Vec<String>,
    /// The signed job.
    pub job: ResourceDescriptor,
}

/// `barn-node:<peer id>`, the builder and verifier id of a node.
pub fn node_uri(node: &NodeId) -> String {
    format!("barn-node:{node}")
}

fn job_subject(id: &JobId) -> ResourceDescriptor {
    ResourceDescriptor::named(BYPRODUCT_JOB, &id.0)
}

/// The provenance statement of `result`, a pure function of the two signed envelopes.
pub fn provenance_statement(
    job: &Signed<Job>,
    result: &Signed<BuildResult>,
) -> Statement<Provenance> {
    let id = JobId::of(job);
    let j = job.message();
    let r = result.message();
    let mut subject: Vec<ResourceDescriptor> = r
        .manifest
        .files()
        .filter_map(|e| e.hash.map(|h| ResourceDescriptor::named(&e.path, &h)))
        .collect();
    if subject.is_empty() {
        subject.push(job_subject(&id));
    }
    let external = ExternalParameters {
        job: id.to_string(),
        image: j.spec.image.clone(),
        image_hash: j.image_hash.to_string(),
        arch: j.spec.arch.clone(),
        tasks: j
            .spec
            .tasks
            .iter()
            .map(|t| TaskParameter {
                name: t.name.clone(),
                run: t.run.clone(),
            })
            .collect(),
        env: j.spec.env.clone(),
        artifacts: j.spec.artifacts.clone(),
        source: j.source.to_string(),
        source_size: j.source_size,
        source_date_epoch: j.spec.source_date_epoch,
        timeout_secs: j.spec.timeout_secs,
        replicas: j.spec.replicas,
        cpus: j.spec.resources.cpus,
        memory_bytes: j.spec.resources.memory_bytes,
        disk_bytes: j.spec.resources.disk_bytes,
        submitter: barn_protocol::SubmitterId(job.signer()).to_string(),
    };
    let internal = InternalParameters {
        accel: r.accel.to_string(),
        qemu_version: r.qemu_version.clone(),
        image_hash: r.image_hash.to_string(),
        coordinator: j.coordinator.to_string(),
        lease: r.lease.map(|l| l.to_string()),
    };
    let mut result_rd = ResourceDescriptor::embedded(BYPRODUCT_RESULT, &result.to_bytes());
    result_rd.annotations = BTreeMap::from([
        ("status".to_string(), Value::from(r.status.word())),
        (
            "manifestRoot".to_string(),
            Value::from(r.manifest_root.to_string()),
        ),
    ]);
    let mut log = ResourceDescriptor::named(BYPRODUCT_LOG, &r.log_hash);
    log.annotations = BTreeMap::from([("size".to_string(), Value::from(r.log_size))]);
    let finished = (r.finished > 0).then_some(r.finished);
    let started = finished
        .filter(|_| r.timings.total_ms > 0)
        .map(|f| f.saturating_sub(r.timings.total_ms / 1000));
    Statement {
        type_: STATEMENT_V1.to_string(),
        subject,
        predicate_type: PROVENANCE_V1.to_string(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.to_string(),
                external_parameters: external,
                internal_parameters: internal,
                resolved_dependencies: vec![
                    ResourceDescriptor::named("source", &j.source),
                    ResourceDescriptor::named(&format!("image:{}", j.spec.image), &r.image_hash),
                ],
            },
            run_details: RunDetails {
                builder: Builder {
                    id: node_uri(&r.node),
                },
                metadata: BuildMetadata {
                    invocation_id: id.to_string(),
                    started_on: started.map(rfc3339),
                    finished_on: finished.map(rfc3339),
                },
                byproducts: vec![
                    ResourceDescriptor::embedded(BYPRODUCT_JOB, &job.to_bytes()),
                    result_rd,
                    log,
                ],
            },
        },
    }
}

/// The summary statement of `results` of `job`, as `verifier` saw it at `time_verified`.
fn summary_statement(
    job: &Signed<Job>,
    results: &[Signed<BuildResult>],
    verifier: Verifier,
    time_verified: String,
) -> Statement<Summary> {
    let id = JobId::of(job);
    let pairs: Vec<(NodeId, BuildResult)> = results
        .iter()
        .map(|r| (r.message().node, r.message().clone()))
        .collect();
    let v = verdict::judge(job.message(), &pairs);
    let passed = v.verdict == Kind::Reproducible;
    let mut subject = Vec::new();
    if passed {
        // Every succeeded result in the majority has the agreed root, so any one's files.
        let agreed = results.iter().map(Signed::message).find(|r| {
            Some(r.manifest_root.to_string()) == v.root && v.majority.contains(&r.node.to_string())
        });
        if let Some(r) = agreed {
            subject.extend(
                r.manifest
                    .files()
                    .filter_map(|e| e.hash.map(|h| ResourceDescriptor::named(&e.path, &h))),
            );
        }
    }
    if subject.is_empty() {
        subject.push(job_subject(&id));
    }
    let inputs = results
        .iter()
        .map(|r| {
            let name = format!("{BYPRODUCT_RESULT}:{}", r.message().node);
            ResourceDescriptor::embedded(&name, &r.to_bytes())
        })
        .collect();
    Statement {
        type_: STATEMENT_V1.to_string(),
        subject,
        predicate_type: VSA_V1.to_string(),
        predicate: Summary {
            verifier,
            time_verified,
            resource_uri: format!("https://barn.invalid/job/{id}"),
            policy: ResourceDescriptor {
                uri: Some(POLICY.to_string()),
                ..ResourceDescriptor::default()
            },
            input_attestations: inputs,
            verification_result: if passed { "PASSED" } else { "FAILED" }.to_string(),
            verified_levels: vec![if passed { LEVEL_REPRODUCIBLE } else { "FAILED" }.to_string()],
            slsa_version: "1.0".to_string(),
            barn: SummaryDetail {
                verdict: v.verdict.word().to_string(),
                root: v.root.clone(),
                replicas: v.replicas,
                compared: v.compared,
                agreeing: v.majority.clone(),
                disagreeing: v.minority.clone(),
                failed: v.failures.clone(),
                differing_files: v.files.iter().map(|f| f.path.clone()).collect(),
                job: ResourceDescriptor::embedded(BYPRODUCT_JOB, &job.to_bytes()),
            },
        },
    }
}

// ---------------------------------------------------------------------------------------
// Export

/// Checks that `result` is its node's own and belongs to `job`.
fn check_result(job_id: &JobId, result: &Signed<BuildResult>) -> Result<(), AttestError> {
    let r = result.message();
    let signer = NodeId(result.signer());
    if signer != r.node {
        return Err(AttestError::SignerMismatch {
            node: r.node,
            signer,
        });
    }
    if r.job != *job_id {
        return Err(AttestError::WrongJob {
            node: r.node,
            expected: *job_id,
            got: r.job,
        });
    }
    Ok(())
}

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
/// verified at unix second `time_verified`.
pub fn export_summary(
    job: &Signed<Job>,
    results: &[Signed<BuildResult>],
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
        &summary_statement(job, results, verifier, rfc3339(time_verified)),
        key,
    )
}

/// Envelopes as one compact JSON array (no whitespace: every byte is significant).
pub fn to_file(envelopes: &[Envelope]) -> Result<Vec<u8>, AttestError> {
    Ok(serde_json::to_vec(envelopes)?)
}

// ---------------------------------------------------------------------------------------
// Verification

/// One envelope that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A provenance whose embedded job and result verified and match the statement.
    Provenance {
        job: JobId,
        builder: NodeId,
        /// Who made the DSSE signatures (the builder itself, or exporters).
        signers: Vec<NodeId>,
        /// `succeeded`, `failed`, …
        status: String,
        files: usize,
        /// blake3 of the embedded result envelope.
        result_digest: ContentHash,
    },
    /// A summary whose verdict was recomputed from its embedded results.
    Summary {
        job: JobId,
        signers: Vec<NodeId>,
        verdict: Kind,
        results: usize,
        subjects: usize,
        /// blake3 of each embedded result envelope.
        inputs: BTreeSet<ContentHash>,
    },
}

impl Checked {
    /// Who made the DSSE signatures.
    pub fn signers(&self) -> &[NodeId] {
        match self {
            Checked::Provenance { signers, .. } | Checked::Summary { signers, .. } => signers,
        }
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checked::Provenance {
                job,
                builder,
                signers,
                status,
                files,
                ..
            } => {
                write!(
                    f,
                    "provenance of job {} by node {builder}: {status}, {files} file(s); ",
                    job.short()
                )?;
                if signers.iter().all(|s| s == builder) {
                    write!(f, "signed by the builder")
                } else {
                    write!(
                        f,
                        "builder's barn signature checked, exported by {}",
                        join(signers)
                    )
                }
            }
            Checked::Summary {
                job,
                signers,
                verdict,
                results,
                subjects,
                ..
            } => write!(
                f,
                "summary of job {}: {} ({}) over {results} result(s), {subjects} subject(s); \
                 verdict recomputed; signed by {}",
                job.short(),
                verdict.word(),
                if *verdict == Kind::Reproducible {
                    "PASSED"
                } else {
                    "FAILED"
                },
                join(signers)
            ),
        }
    }
}

fn join(nodes: &[NodeId]) -> String {
    nodes
        .iter()
        .map(NodeId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything in a file, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checked: Vec<Checked>,
}

/// Verifies a file of attestations (one envelope, a JSON array of them, or JSON lines);
/// fails on the first envelope that does not verify, naming it.
pub fn verify_file(bytes: &[u8]) -> Result<Report, AttestError> {
    let mut checked = Vec::new();
    for (i, entry) in verify_entries(bytes)?.into_iter().enumerate() {
        match entry {
            Ok(c) => checked.push(c),
            Err(e) => {
                return Err(AttestError::Entry {
                    index: i + 1,
                    source: Box::new(e),
                });
            }
        }
    }
    Ok(Report { checked })
}

/// Verifies each envelope of a file on its own (then a provenance must be among the inputs
/// of any summary of the same job in the file). The outer error is about the file itself.
pub fn verify_entries(bytes: &[u8]) -> Result<Vec<Result<Checked, AttestError>>, AttestError> {
    let envelopes = parse_file(bytes)?;
    let mut out: Vec<Result<Checked, AttestError>> = envelopes
        .into_iter()
        .map(|e| e.and_then(|e| verify_envelope(&e)))
        .collect();
    let summaries: Vec<(JobId, BTreeSet<ContentHash>)> = out
        .iter()
        .filter_map(|c| match c {
            Ok(Checked::Summary { job, inputs, .. }) => Some((*job, inputs.clone())),
            _ => None,
        })
        .collect();
    for entry in &mut out {
        if let Ok(Checked::Provenance {
            job,
            builder,
            result_digest,
            ..
        }) = entry
            && summaries
                .iter()
                .any(|(j, inputs)| j == job && !inputs.contains(result_digest))
        {
            *entry = Err(AttestError::NotInSummary {
                node: *builder,
                job: *job,
            });
        }
    }
    Ok(out)
}

/// Splits a file into envelopes; an entry that is not an envelope is an error in its place.
fn parse_file(bytes: &[u8]) -> Result<Vec<Result<Envelope, AttestError>>, AttestError> {
    if bytes.len() > MAX_FILE {
        return Err(AttestError::TooLarge {
            size: bytes.len(),
            limit: MAX_FILE,
        });
    }
    let values: Vec<Value> = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Array(items)) => items,
        Ok(v) => vec![v],
        Err(whole) => {
            // JSON lines: one envelope per non-blank line.
            let mut items = Vec::new();
            for line in bytes.split(|b| *b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                items.push(
                    serde_json::from_slice::<Value>(line)
                        .map_err(|_| AttestError::NotJson(whole.to_string()))?,
                );
            }
            items
        }
    };
    if values.is_empty() {
        return Err(AttestError::Empty);
    }
    Ok(values
        .into_iter()
        .map(|v| {
            serde_json::from_value::<Envelope>(v)
                .map_err(|e| AttestError::MalformedEnvelope(e.to_string()))
        })
        .collect())
}

/// Verifies one envelope: DSSE signatures, statement type, then the predicate.
pub fn verify_envelope(envelope: &Envelope) -> Result<Checked, AttestError> {
    let (payload, signers) = envelope.verify(PAYLOAD_TYPE)?;
    let statement: Value = serde_json::from_slice(&payload)
        .map_err(|e| AttestError::MalformedStatement(e.to_string()))?;
    let ty = statement.get("_type").and_then(Value::as_str).unwrap_or("");
    if ty != STATEMENT_V1 {
        return Err(AttestError::WrongStatementType(ty.to_string()));
    }
    let predicate_type = statement
        .get("predicateType")
        .and_then(Value::as_str)
        .unwrap_or("");
    match predicate_type {
        PROVENANCE_V1 => verify_provenance(&statement, signers),
        VSA_V1 => verify_summary(&statement, signers),
        other => Err(AttestError::UnknownPredicate(other.to_string())),
    }
}

fn verify_provenance(statement: &Value, signers: Vec<NodeId>) -> Result<Checked, AttestError> {
    let byproducts = statement
        .pointer("/predicate/runDetails/byproducts")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let job: Signed<Job> = embedded(find_named(byproducts, BYPRODUCT_JOB), BYPRODUCT_JOB)?;
    let result: Signed<BuildResult> =
        embedded(find_named(byproducts, BYPRODUCT_RESULT), BYPRODUCT_RESULT)?;
    let id = JobId::of(&job);
    check_result(&id, &result)?;
    let expected = serde_json::to_value(provenance_statement(&job, &result))?;
    compare(statement, &expected)?;
    let r = result.message();
    Ok(Checked::Provenance {
        job: id,
        builder: r.node,
        signers,
        status: r.status.word().to_string(),
        files: r.manifest.files().count(),
        result_digest: ContentHash::of(&result.to_bytes()),
    })
}

fn verify_summary(statement: &Value, signers: Vec<NodeId>) -> Result<Checked, AttestError> {
    let predicate = statement.get("predicate").unwrap_or(&Value::Null);
    let verifier: Verifier = predicate
        .get("verifier")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| AttestError::MalformedStatement(format!("verifier: {e}")))?
        .ok_or(AttestError::MissingEmbedded("verifier"))?;
    if !signers.iter().any(|s| node_uri(s) == verifier.id) {
        return Err(AttestError::VerifierMismatch {
            verifier: verifier.id,
        });
    }
    let time = predicate
        .get("timeVerified")
        .and_then(Value::as_str)
        .ok_or(AttestError::MissingEmbedded("timeVerified"))?
        .to_string();
    let job: Signed<Job> = embedded(predicate.pointer("/barn/job"), BYPRODUCT_JOB)?;
    let id = JobId::of(&job);
    let inputs = predicate
        .get("inputAttestations")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut results = Vec::with_capacity(inputs.len());
    for input in inputs {
        let r: Signed<BuildResult> = embedded(Some(input), BYPRODUCT_RESULT)?;
        check_result(&id, &r)?;
        results.push(r);
    }
    let expected = serde_json::to_value(summary_statement(&job, &results, verifier, time))?;
    compare(statement, &expected)?;
    let pairs: Vec<(NodeId, BuildResult)> = results
        .iter()
        .map(|r| (r.message().node, r.message().clone()))
        .collect();
    Ok(Checked::Summary {
        job: id,
        signers,
        verdict: verdict::judge(job.message(), &pairs).verdict,
        results: results.len(),
        subjects: statement
            .get("subject")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        inputs: results
            .iter()
            .map(|r| ContentHash::of(&r.to_bytes()))
            .collect(),
    })
}

fn find_named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
}

/// Decodes and verifies a barn envelope embedded as a ResourceDescriptor's `content`.
fn embedded<T: Message>(
    descriptor: Option<&Value>,
    what: &'static str,
) -> Result<Signed<T>, AttestError> {
    let content = descriptor
        .and_then(|d| d.get("content"))
        .and_then(Value::as_str)
        .ok_or(AttestError::MissingEmbedded(what))?;
    if content.len() > T::MAX_SIZE.saturating_mul(2) {
        return Err(AttestError::Embedded {
            what,
            source: VerifyError::TooLarge {
                kind: T::KIND,
                size: content.len() / 4 * 3,
                limit: T::MAX_SIZE,
            },
        });
    }
    let bytes = decode_b64(content, "content")?;
    Signed::<T>::from_bytes(&bytes).map_err(|source| AttestError::Embedded { what, source })
}

/// Requires the signed statement to equal the one rebuilt from its embedded envelopes.
fn compare(got: &Value, expected: &Value) -> Result<(), AttestError> {
    if got.get("subject") != expected.get("subject") {
        return Err(AttestError::SubjectMismatch);
    }
    match first_difference(got, expected, String::new()) {
        None => Ok(()),
        Some(field) => Err(AttestError::Mismatch { field }),
    }
}

/// The path of the first place where `a` and `b` differ, e.g. `predicate.buildDefinition`.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => first_difference(p, q, at(k)),
                _ => Some(at(k)),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{path}[{i}]"))),
        _ if a == b => None,
        _ => Some(if path.is_empty() { ".".into() } else { path }),
    }
}

// ---------------------------------------------------------------------------------------
// Time

/// Unix seconds as RFC 3339 in UTC, e.g. `2023-11-14T22:13:20Z`.
pub fn rfc3339(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, on unsigned numbers (the epoch is after 0000-03-01).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use barn_protocol::manifest::{Entry, EntryKind, Manifest};
    use barn_protocol::message::{Accel, BuildStatus, JobSpec, Resources, Task, Timings};

    /// Key A of the DSSE test vectors (RFC 8032's first test key).
    const SEED_A: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed([i; 32])
    }

    fn job() -> Signed<Job> {
        let job = Job {
            spec: JobSpec {
                image: "tiny-x86_64".into(),
                arch: "x86_64".into(),
                tasks: vec![Task {
                    name: "build".into(),
                    run: "echo hi > out/a".into(),
                }],
                env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
                artifacts: vec!["out/*".into()],
                resources: Resources::default(),
                timeout_secs: 600,
                replicas: 2,
                source_date_epoch: 1_700_000_000,
                tiebreak: false,
                vary: vec![],
            },
            image_hash: ContentHash::of(b"image"),
            source: ContentHash::of(b"source"),
            source_size: 6,
            coordinator: key(9).node_id(),
            coordinator_addrs: vec![],
            created: 1_700_000_000,
            expires: 1_700_003_600,
            nonce: serde_bytes::ByteArray::new([7; 16]),
        };
        Signed::sign(job, &key(8))
    }

    fn result(job: &Signed<Job>, node: &SecretKey, content: &[u8]) -> Signed<BuildResult> {
        let manifest = Manifest::new(vec![Entry {
            path: "out/a".into(),
            kind: EntryKind::File,
            executable: false,
            size: content.len() as u64,
            hash: Some(ContentHash::of(content)),
            target: None,
        }]);
        let r = BuildResult {
            job: JobId::of(job),
            lease: None,
            node: node.node_id(),
            status: BuildStatus::Succeeded,
            tasks: vec![],
            manifest_root: manifest.root(),
            manifest,
            log_hash: ContentHash::of(b"log"),
            log_size: 3,
            timings: Timings {
                total_ms: 61_000,
                ..Timings::default()
            },
            image_hash: ContentHash::of(b"image"),
            arch: "x86_64".into(),
            accel: Accel::Tcg,
            qemu_version: "8.2.2".into(),
            finished: 1_700_000_100,
            variation: Default::default(),
        };
        Signed::sign(r, node)
    }

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

    /// A job built by nodes 1 and 2 with the same output, exported by node 3.
    fn export(contents: [&[u8]; 2]) -> (Signed<Job>, Vec<Signed<BuildResult>>, Vec<Envelope>) {
        let j = job();
        let results = vec![
            result(&j, &key(1), contents[0]),
            result(&j, &key(2), contents[1]),
        ];
        let mut envs: Vec<Envelope> = results
            .iter()
            .map(|r| export_result(&j, r, &key(3)).unwrap())
            .collect();
        envs.push(export_summary(&j, &results, &key(3), 1_700_000_200).unwrap());
        (j, results, envs)
    }

    fn statement(env: &Envelope) -> Value {
        serde_json::from_slice(&STANDARD.decode(&env.payload).unwrap()).unwrap()
    }

    #[test]
    fn an_export_verifies_and_says_what_was_checked() {
        let (j, results, envs) = export([b"x", b"x"]);
        let report = verify_file(&to_file(&envs).unwrap()).unwrap();
        assert_eq!(report.checked.len(), 3);
        let id = JobId::of(&j);
        assert_eq!(
            report.checked[0],
            Checked::Provenance {
                job: id,
                builder: key(1).node_id(),
                signers: vec![key(3).node_id()],
                status: "succeeded".into(),
                files: 1,
                result_digest: ContentHash::of(&results[0].to_bytes()),
            }
        );
        let Checked::Summary {
            verdict,
            results: n,
            subjects,
            ..
        } = &report.checked[2]
        else {
            panic!("expected a summary")
        };
        assert_eq!((*verdict, *n, *subjects), (Kind::Reproducible, 2, 1));
        assert!(report.checked[0].to_string().contains("exported by"));

        let p = statement(&envs[0]);
        assert_eq!(p["_type"], STATEMENT_V1);
        assert_eq!(p["subject"][0]["name"], "out/a");
        assert_eq!(
            p["subject"][0]["digest"]["blake3"],
            ContentHash::of(b"x").to_hex()
        );
        let run = &p["predicate"]["runDetails"];
        assert_eq!(
            run["builder"]["id"],
            format!("barn-node:{}", key(1).node_id())
        );
        assert_eq!(run["metadata"]["invocationId"], id.to_string());
        assert_eq!(run["metadata"]["finishedOn"], "2023-11-14T22:15:00Z");
        assert_eq!(run["metadata"]["startedOn"], "2023-11-14T22:13:59Z");
        let def = &p["predicate"]["buildDefinition"];
        assert_eq!(def["buildType"], BUILD_TYPE);
        assert_eq!(def["externalParameters"]["env"]["GREETING"], "hello");
        assert_eq!(def["internalParameters"]["qemuVersion"], "8.2.2");

        let v = statement(&envs[2]);
        assert_eq!(v["predicateType"], VSA_V1);
        assert_eq!(v["predicate"]["verificationResult"], "PASSED");
        assert_eq!(v["predicate"]["verifiedLevels"][0], LEVEL_REPRODUCIBLE);
        assert_eq!(
            v["predicate"]["verifier"]["id"],
            format!("barn-node:{}", key(3).node_id())
        );
        assert_eq!(v["predicate"]["timeVerified"], "2023-11-14T22:16:40Z");
        assert_eq!(
            v["predicate"]["barn"]["agreeing"].as_array().unwrap().len(),
            2
        );
        assert_eq!(
            v["predicate"]["inputAttestations"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn differing_outputs_fail_the_summary() {
        let (j, _, envs) = export([b"x", b"y"]);
        let report = verify_file(&to_file(&envs).unwrap()).unwrap();
        assert!(matches!(
            report.checked[2],
            Checked::Summary {
                verdict: Kind::Differs,
                ..
            }
        ));
        let v = statement(&envs[2]);
        assert_eq!(v["predicate"]["verificationResult"], "FAILED");
        assert_eq!(v["predicate"]["verifiedLevels"][0], "FAILED");
        assert_eq!(v["predicate"]["barn"]["differingFiles"][0], "out/a");
        // No agreed files: the subject is the job.
        assert_eq!(
            v["subject"][0]["digest"]["blake3"],
            JobId::of(&j).0.to_hex()
        );
    }

    /// Flips bits at `positions` of `file`; every change must make verification fail.
    fn assert_every_flip_fails(file: &[u8], positions: &[usize], bits: &[u8]) -> usize {
        let mut tried = 0;
        for &i in positions {
            for &bit in bits {
                let mut bad = file.to_vec();
                bad[i] ^= bit;
                assert!(
                    verify_file(&bad).is_err(),
                    "flipping {bit:#04x} at byte {i} ({:?}) still verifies",
                    char::from(file[i])
                );
                tried += 1;
            }
        }
        tried
    }

    /// Positions to flip: every byte outside base64 payloads, and every `stride`th inside
    /// (a payload is one blob under the signature; each flip there costs a slow debug-build
    /// ed25519 verification).
    fn positions(file: &[u8], stride: usize) -> (Vec<usize>, Vec<usize>) {
        let text = std::str::from_utf8(file).unwrap();
        let mut inside = vec![false; file.len()];
        for (start, _) in text.match_indices(r#""payload":""#) {
            let from = start + r#""payload":""#.len();
            let len = text[from..].find('"').unwrap();
            inside[from..from + len].iter_mut().for_each(|b| *b = true);
        }
        let (payload, rest): (Vec<usize>, Vec<usize>) = (0..file.len()).partition(|&i| inside[i]);
        (rest, payload.into_iter().step_by(stride).collect())
    }

    #[test]
    fn flipping_any_byte_of_an_export_fails_verification() {
        // Compact JSON: no insignificant whitespace, so every byte matters and the assertion
        // is exact: every flip is an error. Each envelope on its own (a file's other
        // envelopes would be re-verified at every position), then the whole file sampled.
        let (_, _, envs) = export([b"x", b"x"]);
        let mut tried = 0;
        for env in &envs {
            let file = to_file(std::slice::from_ref(env)).unwrap();
            assert!(verify_file(&file).is_ok());
            let (structure, payload) = positions(&file, 61);
            tried += assert_every_flip_fails(&file, &structure, &[0x01, 0x20]);
            tried += assert_every_flip_fails(&file, &payload, &[0x01]);
        }
        let file = to_file(&envs).unwrap();
        let sample: Vec<usize> = (0..file.len()).step_by(1499).collect();
        tried += assert_every_flip_fails(&file, &sample, &[0x01]);
        assert!(tried > 1000, "only {tried} flips tried");
    }

    /// Signs a statement edited by `edit` with the exporter's key, as a forger with a valid
    /// key but no volunteer's key would.
    fn forged(env: &Envelope, edit: impl FnOnce(&mut Value)) -> Result<Report, AttestError> {
        let mut st = statement(env);
        edit(&mut st);
        let env = Envelope::sign(PAYLOAD_TYPE, &serde_json::to_vec(&st).unwrap(), &key(3));
        verify_file(&to_file(&[env]).unwrap())
    }

    fn inner(err: AttestError) -> AttestError {
        match err {
            AttestError::Entry { source, .. } => *source,
            other => other,
        }
    }

    #[test]
    fn a_tampered_embedded_result_is_detected() {
        let (j, _, envs) = export([b"x", b"x"]);
        let content = "/predicate/runDetails/byproducts/1/content";
        // One byte of the volunteer's signed result changed.
        let err = forged(&envs[0], |st| {
            let mut bytes = STANDARD
                .decode(st.pointer(content).unwrap().as_str().unwrap())
                .unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            *st.pointer_mut(content).unwrap() = Value::from(STANDARD.encode(bytes));
        })
        .unwrap_err();
        assert!(matches!(
            inner(err),
            AttestError::Embedded {
                what: BYPRODUCT_RESULT,
                ..
            }
        ));
        // Another file claimed, with the signed result left as it was.
        let err = forged(&envs[0], |st| {
            st["subject"][0]["digest"]["blake3"] = Value::from(ContentHash::of(b"evil").to_hex());
        })
        .unwrap_err();
        assert!(matches!(inner(err), AttestError::SubjectMismatch));
        // A parameter changed.
        let err = forged(&envs[0], |st| {
            st["predicate"]["buildDefinition"]["externalParameters"]["env"]["GREETING"] =
                Value::from("bye");
        })
        .unwrap_err();
        assert_eq!(
            inner(err).to_string(),
            "`predicate.buildDefinition.externalParameters.env.GREETING` does not match what \
             the embedded signed job and results say"
        );
        // A result re-signed by the exporter under the volunteer's name.
        let mut r = result(&j, &key(1), b"evil").message().clone();
        r.node = key(1).node_id();
        let resigned = Signed::sign(r, &key(3));
        let err = forged(&envs[0], |st| {
            *st.pointer_mut(content).unwrap() = Value::from(STANDARD.encode(resigned.to_bytes()));
        })
        .unwrap_err();
        assert!(matches!(inner(err), AttestError::SignerMismatch { .. }));
        // The summary's verdict edited.
        let err = forged(&envs[2], |st| {
            st["predicate"]["verificationResult"] = Value::from("FAILED");
        })
        .unwrap_err();
        assert!(matches!(inner(err), AttestError::Mismatch { .. }));
        // A summary claiming another verifier than its signer.
        let err = forged(&envs[2], |st| {
            st["predicate"]["verifier"]["id"] = Value::from(node_uri(&key(1).node_id()));
        })
        .unwrap_err();
        assert!(matches!(inner(err), AttestError::VerifierMismatch { .. }));
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

    fn job_with_nonce(n: u8) -> Signed<Job> {
        let mut j = job().message().clone();
        j.nonce = serde_bytes::ByteArray::new([n; 16]);
        Signed::sign(j, &key(8))
    }

    #[test]
    fn a_provenance_must_be_among_the_summary_inputs() {
        let (j, results, mut envs) = export([b"x", b"x"]);
        envs[2] = export_summary(&j, &results[..1], &key(3), 0).unwrap();
        let err = inner(verify_file(&to_file(&envs).unwrap()).unwrap_err());
        assert!(matches!(err, AttestError::NotInSummary { node, .. } if node == key(2).node_id()));
    }

    #[test]
    fn files_are_arrays_single_envelopes_or_json_lines_and_bounded() {
        let (_, _, envs) = export([b"x", b"x"]);
        let lines: Vec<String> = envs
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let jsonl = format!("{}\n\n{}\n", lines[0], lines[1]);
        assert_eq!(verify_file(jsonl.as_bytes()).unwrap().checked.len(), 2);
        assert_eq!(verify_file(lines[0].as_bytes()).unwrap().checked.len(), 1);
        let pretty = serde_json::to_vec_pretty(&envs).unwrap();
        assert_eq!(verify_file(&pretty).unwrap().checked.len(), 3);
        assert!(matches!(verify_file(b"[]"), Err(AttestError::Empty)));
        assert!(matches!(verify_file(b"nope"), Err(AttestError::NotJson(_))));
        assert!(matches!(
            inner(verify_file(b"[{}]").unwrap_err()),
            AttestError::MalformedEnvelope(_)
        ));
        assert!(matches!(
            verify_file(&vec![b' '; MAX_FILE + 1]),
            Err(AttestError::TooLarge { .. })
        ));
        let err = verify_file(format!("[{},{{}}]", lines[0]).as_bytes()).unwrap_err();
        assert!(matches!(err, AttestError::Entry { index: 2, .. }));
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert!(!rfc3339(u64::MAX).is_empty());
    }
}
