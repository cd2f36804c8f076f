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
//!   the failures, how many distinct operators agree and which operator each certified
//!   node counts as, the signed job and, once the job is settled, the coordinator's signed
//!   settlement (`barn-settlement`). Subjects: the agreed files when reproducible,
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
//! requires the same summary: only the verifier and the time are the exporter's word. Each
//! node counts once however often it is listed. When the summary carries the settlement,
//! it must be signed by the job's coordinator and name every input (checked against its
//! lease, operators from their certificates), so the exporter cannot choose the results;
//! without one, the inputs are the exporter's choice and [`Checked::Summary`] says so. The
//! verdict is judged under no trust policy (any two distinct operators): a recipient applies
//! its own to the operators listed. A change to how barn judges therefore makes older
//! summaries fail to verify, on purpose.
//!
//! [DSSE]: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
//! [in-toto Statement v1]: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
//! [SLSA Provenance v1]: https://slsa.dev/spec/v1.0/provenance
//! [SLSA VSA v1]: https://slsa.dev/spec/v1.0/verification_summary
//! [`verdict::judge`]: super::verdict::judge
//!
//! # Layout
//!
//! - `dsse.rs`: the DSSE envelope, its pre-authentication encoding and signatures.
//! - `statement.rs`: the in-toto statement, provenance and summary types and the pure
//!   functions that build them from signed envelopes.
//! - `export.rs`: signing statements into envelopes and writing a file of them.
//! - `check.rs`: reading a file back and verifying every envelope in it.
//! - `summary_tests.rs`: summaries that list a node twice, and settled summaries.

#![expect(
    clippy::result_large_err,
    reason = "errors carry node and job ids by value; verifying a file is not a hot path"
)]

mod check;
mod dsse;
mod export;
#[cfg(test)]
mod fixtures;
mod statement;
#[cfg(test)]
mod summary_tests;

use barn_protocol::identity::KeyError;
use barn_protocol::{JobId, NodeId, VerifyError};

pub use check::{Checked, Report, verify_entries, verify_envelope, verify_file};
pub use dsse::{Envelope, Signature, pae};
pub use export::{
    builder_envelope, export_result, export_summary, provenance_signature, sign_provenance, to_file,
};
pub use statement::{
    BuildDefinition, BuildMetadata, Builder, ExternalParameters, InternalParameters, Provenance,
    ResourceDescriptor, RunDetails, Statement, Summary, SummaryDetail, TaskParameter, Verifier,
    node_uri, provenance_statement, rfc3339,
};

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
const BYPRODUCT_SETTLEMENT: &str = "barn-settlement";
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
    #[error("the summary's settlement does not check")]
    Settlement(#[source] barn_protocol::settlement::SettlementError),
    #[error("the result of node {node} does not count in the job's settlement: {why}")]
    NotSettled { node: NodeId, why: String },
    #[error("the result of node {node} for job {job} is not among the summary's inputs")]
    NotInSummary { node: NodeId, job: JobId },
    #[error("failed to encode JSON")]
    Encode(#[from] serde_json::Error),
}
