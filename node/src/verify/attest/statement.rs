//! The in-toto statements barn writes: the types of a SLSA provenance and of a verification
//! summary, and the pure functions that build each from signed barn envelopes (so a
//! verifier can rebuild them and compare).

use std::collections::BTreeMap;

use barn_protocol::message::{BuildResult, Job};
use barn_protocol::settlement::Settlement;
use barn_protocol::{ContentHash, JobId, NodeId, OperatorId, Signed};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    AttestError, BUILD_TYPE, BYPRODUCT_JOB, BYPRODUCT_LOG, BYPRODUCT_RESULT, BYPRODUCT_SETTLEMENT,
    DIGEST, ENVELOPE_MEDIA_TYPE, LEVEL_REPRODUCIBLE, POLICY, PROVENANCE_V1, STATEMENT_V1, VSA_V1,
};
use crate::verify::policy::Policy;
use crate::verify::settled;
use crate::verify::verdict::{self, Kind, Replica, Verdict};

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
    /// `reproducible`, `differs`, `failed`, `pending` or `unconfirmed`.
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
    /// Distinct operators among the agreeing nodes (a node without a certificate is its
    /// own operator): what a recipient's trust policy is applied to.
    pub agreeing_operators: usize,
    /// Peer id → operator id, for nodes certified by an operator key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub operators: BTreeMap<String, String>,
    /// The signed job.
    pub job: ResourceDescriptor,
    /// The coordinator's signed settlement, naming every input, when the job is settled.
    /// Absent: the inputs are the exporter's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<ResourceDescriptor>,
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
/// With the job's `settlement` (already checked against the job), every result must be one
/// it names, and each counts as the operator it names; without, each node is its own
/// operator. The verdict (returned with the statement) is judged under no trust policy: a
/// recipient applies its own to the operators the summary lists.
pub(super) fn summary_statement(
    job: &Signed<Job>,
    results: &[Signed<BuildResult>],
    settlement: Option<&Signed<Settlement>>,
    verifier: Verifier,
    time_verified: String,
) -> Result<(Statement<Summary>, Verdict), AttestError> {
    let id = JobId::of(job);
    let mut replicas = Vec::with_capacity(results.len());
    for r in results {
        let node = r.message().node;
        let operator = match settlement {
            None => OperatorId::of_node(&node),
            Some(s) => {
                let digest = ContentHash::of(&r.to_bytes());
                settled::operator_in(job, s.message(), &digest, r).map_err(|why| {
                    AttestError::NotSettled {
                        node,
                        why: why.to_string(),
                    }
                })?
            }
        };
        replicas.push(Replica {
            node,
            operator,
            result: r.message(),
        });
    }
    let v = verdict::judge_with(job.message(), &replicas, &Policy::default());
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
    let statement = Statement {
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
                agreeing_operators: v.agreeing_operators,
                operators: v.operators.clone(),
                job: ResourceDescriptor::embedded(BYPRODUCT_JOB, &job.to_bytes()),
                settlement: settlement
                    .map(|s| ResourceDescriptor::embedded(BYPRODUCT_SETTLEMENT, &s.to_bytes())),
            },
        },
    };
    Ok((statement, v))
}

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

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert!(!rfc3339(u64::MAX).is_empty());
    }
}
