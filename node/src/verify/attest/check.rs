//! Checking attestations: a file read back, each envelope's DSSE signatures verified, its
//! embedded barn envelopes re-verified and its statement rebuilt from them and compared
//! with the one signed; a summary's verdict judged again.

use std::collections::BTreeSet;
use std::fmt;

use barn_protocol::envelope::Message;
use barn_protocol::message::{BuildResult, Job};
use barn_protocol::settlement::Settlement;
use barn_protocol::{ContentHash, JobId, NodeId, Signed, VerifyError};
use serde_json::Value;

use super::dsse::{Envelope, decode_b64};
use super::statement::{Verifier, node_uri, provenance_statement, summary_statement};
use super::{
    AttestError, BYPRODUCT_JOB, BYPRODUCT_RESULT, BYPRODUCT_SETTLEMENT, MAX_FILE, PAYLOAD_TYPE,
    PROVENANCE_V1, STATEMENT_V1, VSA_V1,
};
use crate::verify::verdict::Kind;

/// Checks that `result` is its node's own and belongs to `job`.
pub(super) fn check_result(
    job_id: &JobId,
    result: &Signed<BuildResult>,
) -> Result<(), AttestError> {
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
        /// Distinct nodes among the inputs (a node listed twice counts once).
        results: usize,
        subjects: usize,
        /// blake3 of each embedded result envelope.
        inputs: BTreeSet<ContentHash>,
        /// Distinct operators among the agreeing nodes.
        agreeing_operators: usize,
        /// The coordinator whose settlement named every input; `None`: not settled, the
        /// inputs are the exporter's choice.
        settled_by: Option<NodeId>,
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
                agreeing_operators,
                settled_by,
                ..
            } => write!(
                f,
                "summary of job {}: {} ({}) over {results} result(s), {agreeing_operators} \
                 agreeing operator(s), {subjects} subject(s); {}; verdict recomputed; signed by {}",
                job.short(),
                verdict.word(),
                if *verdict == Kind::Reproducible {
                    "PASSED"
                } else {
                    "FAILED"
                },
                match settled_by {
                    Some(c) => format!("settled by its coordinator {c}"),
                    None => "not settled: the exporter chose the results".into(),
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
    let settlement = match predicate.pointer("/barn/settlement") {
        None | Some(Value::Null) => None,
        Some(d) => {
            let s: Signed<Settlement> = embedded(Some(d), BYPRODUCT_SETTLEMENT)?;
            Some(
                Settlement::check(&s.to_bytes(), &id, &job.message().coordinator)
                    .map_err(AttestError::Settlement)?,
            )
        }
    };
    let (rebuilt, v) = summary_statement(&job, &results, settlement.as_ref(), verifier, time)?;
    compare(statement, &serde_json::to_value(&rebuilt)?)?;
    let distinct: BTreeSet<NodeId> = results.iter().map(|r| r.message().node).collect();
    Ok(Checked::Summary {
        job: id,
        signers,
        verdict: v.verdict,
        results: distinct.len(),
        subjects: statement
            .get("subject")
            .and_then(Value::as_array)
            .map_or(0, Vec::len),
        inputs: results
            .iter()
            .map(|r| ContentHash::of(&r.to_bytes()))
            .collect(),
        settled_by: settlement.map(|s| NodeId(s.signer())),
        agreeing_operators: v.agreeing_operators,
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    use crate::verify::attest::fixtures::{export, key, result, statement};
    use crate::verify::attest::{BUILD_TYPE, LEVEL_REPRODUCIBLE, export_summary, to_file};

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
    fn a_provenance_must_be_among_the_summary_inputs() {
        let (j, results, mut envs) = export([b"x", b"x"]);
        envs[2] = export_summary(&j, &results[..1], None, &key(3), 0).unwrap();
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
}
