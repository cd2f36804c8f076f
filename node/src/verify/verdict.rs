//! Verdicts: compare a job's signed results and say whether the build is reproducible.
//!
//! Four outcomes, kept apart as rebuilderd keeps GOOD/BAD/FAIL/UNKWN:
//! - `reproducible`: at least two replicas succeeded and every manifest root agrees;
//! - `differs`: the replicas succeeded but their outputs differ; per file, which nodes made
//!   which hash, and which nodes are in the majority;
//! - `failed`: a replica's build failed (a task exited non-zero or timed out);
//! - `pending`: not every replica has reported yet (or only one was asked for: one build
//!   proves nothing about reproducibility).
//!
//! Only results for the job's own image hash and architecture are compared; results that
//! report an infrastructure error are no verdict on the build and are left out.

use std::collections::{BTreeMap, BTreeSet};

use barn_protocol::manifest::{Entry, EntryKind};
use barn_protocol::message::{BuildResult, BuildStatus, Job};
use barn_protocol::{ContentHash, NodeId};
use serde::Serialize;

/// The verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Reproducible,
    Differs,
    Failed,
    Pending,
}

impl Kind {
    pub fn word(self) -> &'static str {
        match self {
            Kind::Reproducible => "reproducible",
            Kind::Differs => "differs",
            Kind::Failed => "failed",
            Kind::Pending => "pending",
        }
    }
}

/// One file on which the replicas disagree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileDiff {
    pub path: String,
    /// What each node produced: a `b3:` hash, `missing`, or a description such as
    /// `exec b3:…` / `symlink → target`, mapped to the nodes (peer ids) that produced it.
    pub variants: BTreeMap<String, Vec<String>>,
}

/// A verdict with its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub verdict: Kind,
    /// The agreed manifest root, when reproducible.
    pub root: Option<String>,
    /// Results compared (succeeded or failed builds for the job's image and arch).
    pub compared: usize,
    pub replicas: u8,
    /// Nodes whose root is shared by a strict majority of succeeded results.
    pub majority: Vec<String>,
    /// Succeeded nodes outside that majority.
    pub minority: Vec<String>,
    /// Nodes whose build failed, with why.
    pub failures: BTreeMap<String, String>,
    /// Files that differ.
    pub files: Vec<FileDiff>,
    /// Results left out, with why (infrastructure errors, another image or arch).
    pub ignored: BTreeMap<String, String>,
    /// The environment variations (`vary` in the job) that split the succeeded results:
    /// every replica that applied it made one output, every replica that did not made
    /// another.
    pub explained_by: Vec<String>,
}

fn describe(e: &Entry) -> String {
    let hash = e.hash.map(|h| h.to_string()).unwrap_or_default();
    match e.kind {
        EntryKind::File if e.executable => format!("exec {hash}"),
        EntryKind::File => hash,
        EntryKind::Dir => "dir".into(),
        EntryKind::Symlink => format!("symlink → {}", e.target.clone().unwrap_or_default()),
    }
}

/// Compares `results` (already signature-checked) of `job`.
pub fn judge(job: &Job, results: &[(NodeId, BuildResult)]) -> Verdict {
    let mut ignored = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let mut ok: Vec<(String, &BuildResult)> = Vec::new();
    for (node, r) in results {
        let name = node.to_string();
        if r.image_hash != job.image_hash {
            ignored.insert(
                name,
                format!(
                    "ran image {} instead of {}",
                    r.image_hash.short(),
                    job.image_hash.short()
                ),
            );
            continue;
        }
        if r.arch != job.spec.arch {
            ignored.insert(
                name,
                format!("built for {} instead of {}", r.arch, job.spec.arch),
            );
            continue;
        }
        match &r.status {
            BuildStatus::Succeeded => ok.push((name, r)),
            BuildStatus::Failed { .. } => {
                failures.insert(name, r.status.detail().unwrap_or_default());
            }
            BuildStatus::TimedOut => {
                failures.insert(name, "timed out".into());
            }
            BuildStatus::Error { reason } => {
                ignored.insert(name, format!("infrastructure error: {reason}"));
            }
            _ => {
                ignored.insert(name, "unknown status".into());
            }
        }
    }
    let compared = ok.len() + failures.len();
    let replicas = job.spec.replicas;
    let mut v = Verdict {
        verdict: Kind::Pending,
        root: None,
        compared,
        replicas,
        majority: vec![],
        minority: vec![],
        failures,
        files: vec![],
        ignored,
        explained_by: vec![],
    };
    // Group succeeded nodes by root.
    let mut by_root: BTreeMap<ContentHash, Vec<String>> = BTreeMap::new();
    for (n, r) in &ok {
        by_root.entry(r.manifest_root).or_default().push(n.clone());
    }
    if let Some((_, nodes)) = by_root.iter().max_by_key(|(_, n)| n.len())
        && nodes.len() * 2 > ok.len()
    {
        v.majority = nodes.clone();
    }
    v.minority = ok
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !v.majority.contains(n))
        .collect();
    if by_root.len() > 1 {
        v.files = file_table(&ok);
        v.explained_by = explain(&ok);
    }
    v.verdict = if !v.failures.is_empty() {
        Kind::Failed
    } else if by_root.len() > 1 {
        Kind::Differs
    } else if ok.len() >= 2 && compared >= usize::from(replicas) {
        v.root = by_root.keys().next().map(|r| r.to_string());
        Kind::Reproducible
    } else {
        Kind::Pending
    };
    v
}

/// The variation dimensions whose presence alone decides each succeeded result's root.
fn explain(ok: &[(String, &BuildResult)]) -> Vec<String> {
    let dims: BTreeSet<&String> = ok.iter().flat_map(|(_, r)| r.variation.keys()).collect();
    let mut out = Vec::new();
    for d in dims {
        let roots = |varied: bool| -> BTreeSet<ContentHash> {
            ok.iter()
                .filter(|(_, r)| r.variation.contains_key(d) == varied)
                .map(|(_, r)| r.manifest_root)
                .collect()
        };
        let (with, without) = (roots(true), roots(false));
        if with.len() == 1 && without.len() == 1 && with != without {
            out.push(d.clone());
        }
    }
    out
}

/// Per path, what each node produced, for the paths where they are not all the same.
fn file_table(ok: &[(String, &BuildResult)]) -> Vec<FileDiff> {
    let paths: BTreeSet<&str> = ok
        .iter()
        .flat_map(|(_, r)| r.manifest.entries.iter().map(|e| e.path.as_str()))
        .collect();
    let mut out = Vec::new();
    for path in paths {
        let mut variants: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (n, r) in ok {
            let d = r
                .manifest
                .entries
                .iter()
                .find(|e| e.path == path)
                .map(describe)
                .unwrap_or_else(|| "missing".into());
            variants.entry(d).or_default().push(n.clone());
        }
        if variants.len() > 1 {
            out.push(FileDiff {
                path: path.to_string(),
                variants,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::tests_support::{job, node, result_with as result};
    use super::*;

    #[test]
    fn agreeing_results_are_reproducible() {
        let r = result(&[("out/a", b"x")], BuildStatus::Succeeded);
        let v = judge(
            &job(3),
            &[(node(1), r.clone()), (node(2), r.clone()), (node(3), r)],
        );
        assert_eq!(v.verdict, Kind::Reproducible);
        assert_eq!(v.majority.len(), 3);
        assert!(v.files.is_empty());
    }

    #[test]
    fn a_differing_file_is_named_with_majority_and_minority() {
        let a = result(
            &[("out/a", b"x"), ("out/date", b"mon")],
            BuildStatus::Succeeded,
        );
        let b = result(
            &[("out/a", b"x"), ("out/date", b"tue")],
            BuildStatus::Succeeded,
        );
        let v = judge(&job(3), &[(node(1), a.clone()), (node(2), a), (node(3), b)]);
        assert_eq!(v.verdict, Kind::Differs);
        assert_eq!(v.files.len(), 1);
        assert_eq!(v.files[0].path, "out/date");
        assert_eq!(v.minority, vec![node(3).to_string()]);
        assert_eq!(v.majority.len(), 2);
    }

    #[test]
    fn failures_pending_and_ignored_are_kept_apart() {
        let ok = result(&[("a", b"1")], BuildStatus::Succeeded);
        let failed = result(
            &[],
            BuildStatus::Failed {
                task: "build".into(),
                exit_code: 2,
                reason: None,
            },
        );
        let v = judge(&job(2), &[(node(1), ok.clone()), (node(2), failed)]);
        assert_eq!(v.verdict, Kind::Failed);
        assert_eq!(v.failures[&node(2).to_string()], "task build exited 2");
        let v = judge(&job(2), &[(node(1), ok.clone())]);
        assert_eq!(v.verdict, Kind::Pending);
        let mut other = ok.clone();
        other.image_hash = ContentHash::of(b"other");
        let err = result(
            &[],
            BuildStatus::Error {
                reason: "vm".into(),
            },
        );
        let v = judge(&job(2), &[(node(1), ok), (node(2), other), (node(3), err)]);
        assert_eq!(v.verdict, Kind::Pending);
        assert_eq!(v.ignored.len(), 2);
    }
}

#[cfg(test)]
mod variation_tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn the_variation_that_splits_the_results_is_named() {
        let base = result(&[("out/date", b"Tue Nov 14 22:13:20 UTC 2023")]);
        let tz = with_variation(
            result(&[("out/date", b"Wed Nov 15 12:13:20 KST 2023")]),
            &[("timezone", "KST-14")],
        );
        let um = with_variation(base.clone(), &[("umask", "0002")]);
        let v = judge(&job(3), &[(node(1), base), (node(2), tz), (node(3), um)]);
        assert_eq!(v.verdict, Kind::Differs);
        assert_eq!(v.explained_by, vec!["timezone".to_string()]);
    }
}

/// Fixtures for unit tests across the crate: a job and results with sensible defaults.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use barn_protocol::SecretKey;
    use barn_protocol::manifest::Manifest;
    use barn_protocol::message::*;

    pub fn job(replicas: u8) -> Job {
        Job {
            spec: JobSpec {
                image: "tiny-x86_64".into(),
                arch: "x86_64".into(),
                tasks: vec![],
                env: Default::default(),
                artifacts: vec![],
                resources: Resources::default(),
                timeout_secs: 1,
                replicas,
                source_date_epoch: 0,
                tiebreak: false,
                vary: vec!["timezone".into(), "umask".into()],
            },
            image_hash: ContentHash::of(b"img"),
            source: ContentHash::of(b"s"),
            source_size: 0,
            coordinator: SecretKey::from_seed([0; 32]).node_id(),
            coordinator_addrs: vec![],
            created: 0,
            expires: 10,
            nonce: serde_bytes::ByteArray::new([0; 16]),
        }
    }

    pub fn result(files: &[(&str, &[u8])]) -> BuildResult {
        result_with(files, BuildStatus::Succeeded)
    }

    pub fn result_with(files: &[(&str, &[u8])], status: BuildStatus) -> BuildResult {
        let entries = files
            .iter()
            .map(|(p, c)| Entry {
                path: p.to_string(),
                kind: EntryKind::File,
                executable: false,
                size: c.len() as u64,
                hash: Some(ContentHash::of(c)),
                target: None,
            })
            .collect();
        let manifest = Manifest::new(entries);
        BuildResult {
            job: JobId(ContentHash::of(b"j")),
            lease: None,
            node: SecretKey::from_seed([0; 32]).node_id(),
            status,
            tasks: vec![],
            manifest_root: manifest.root(),
            manifest,
            log_hash: ContentHash::of(b""),
            log_size: 0,
            timings: Timings::default(),
            image_hash: ContentHash::of(b"img"),
            arch: "x86_64".into(),
            accel: Accel::Tcg,
            qemu_version: String::new(),
            finished: 0,
            variation: Default::default(),
        }
    }

    pub fn with_variation(mut r: BuildResult, v: &[(&str, &str)]) -> BuildResult {
        r.variation = v
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    }

    pub fn node(i: u8) -> NodeId {
        SecretKey::from_seed([i; 32]).node_id()
    }
}
