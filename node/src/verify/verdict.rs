//! Verdicts: compare a job's signed results and say whether the build is reproducible.
//!
//! Five outcomes ([`Kind`], the protocol's `VerdictKind`), kept apart as rebuilderd keeps
//! GOOD/BAD/FAIL/UNKWN:
//! - `reproducible`: at least two distinct operators succeeded, every manifest root agrees,
//!   and the verifier's [`Policy`] is met;
//! - `differs`: the replicas succeeded but their outputs differ; per file, which nodes made
//!   which hash, and which nodes are in the majority;
//! - `failed`: a replica's build failed (a task exited non-zero or timed out);
//! - `pending`: not every replica has reported yet (or only one was asked for: one build
//!   proves nothing about reproducibility);
//! - `unconfirmed`: every replica reported and the outputs agree, but the agreement is not
//!   enough: fewer than two distinct operators built them, or fewer trusted operators than
//!   the policy's quorum.
//!
//! Each builder counts once. A node listed twice counts with its first listing (the others
//! go to `ignored`, with why); agreement and the majority are counted in distinct
//! operators, so one person's three machines are one voice.
//!
//! Only results for the job's own image hash and architecture are compared; results that
//! report an infrastructure error are no verdict on the build and are left out.

use std::collections::{BTreeMap, BTreeSet};

use barn_protocol::manifest::{Entry, EntryKind};
use barn_protocol::message::{BuildResult, BuildStatus, Job};
use barn_protocol::{ContentHash, NodeId, OperatorId};
use serde::Serialize;

use super::policy::Policy;

/// The verdict: the protocol's kind, under the name callers have always used.
pub use barn_protocol::settlement::VerdictKind as Kind;

/// One result to judge, with the builder it counts as.
#[derive(Debug, Clone, Copy)]
pub struct Replica<'a> {
    /// The node that signed the result.
    pub node: NodeId,
    /// The operator the node counts as (itself, without a certificate).
    pub operator: OperatorId,
    pub result: &'a BuildResult,
}

impl<'a> Replica<'a> {
    /// The result of a node without an operator certificate: its own operator.
    pub fn own(node: NodeId, result: &'a BuildResult) -> Self {
        Self {
            node,
            operator: OperatorId::of_node(&node),
            result,
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
    /// Nodes whose root is shared by a strict majority of the operators that succeeded.
    pub majority: Vec<String>,
    /// Succeeded nodes outside that majority.
    pub minority: Vec<String>,
    /// Nodes whose build failed, with why.
    pub failures: BTreeMap<String, String>,
    /// Files that differ.
    pub files: Vec<FileDiff>,
    /// Results left out, with why (listed twice, another image or arch, infrastructure
    /// errors, and, from [`crate::verify::settled`], results that do not count).
    pub ignored: BTreeMap<String, String>,
    /// The environment variations (`vary` in the job) that split the succeeded results:
    /// every replica that applied it made one output, every replica that did not made
    /// another.
    pub explained_by: Vec<String>,
    /// Distinct operators whose succeeded results share the agreed root (when outputs
    /// differ: the majority's root; 0 without a majority).
    pub agreeing_operators: usize,
    /// How many of those operators the verifier's policy trusts.
    pub trusted_operators: usize,
    /// How many trusted operators the policy asks for (0: none).
    pub quorum: usize,
    /// The operator each compared node counts as, for nodes that are not their own
    /// operator (certified by an operator key).
    pub operators: BTreeMap<String, String>,
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

/// Notes why a listing of `node` is left out; a node left out twice keeps both reasons.
fn leave_out(ignored: &mut BTreeMap<String, String>, node: String, why: String) {
    ignored
        .entry(node)
        .and_modify(|w| {
            w.push_str("; ");
            w.push_str(&why);
        })
        .or_insert(why);
}

/// Compares `results` (already signature-checked) of `job`, each node its own operator,
/// under no trust policy.
pub fn judge(job: &Job, results: &[(NodeId, BuildResult)]) -> Verdict {
    let replicas: Vec<Replica<'_>> = results.iter().map(|(n, r)| Replica::own(*n, r)).collect();
    judge_with(job, &replicas, &Policy::default())
}

/// Compares `replicas` (already signature-checked) of `job` under `policy`.
pub fn judge_with(job: &Job, replicas: &[Replica<'_>], policy: &Policy) -> Verdict {
    let mut ignored = BTreeMap::new();
    let mut failures = BTreeMap::new();
    let mut ok: Vec<(String, &Replica<'_>)> = Vec::new();
    let mut operators = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for rep in replicas {
        let name = rep.node.to_string();
        let r = rep.result;
        if r.node != rep.node {
            leave_out(
                &mut ignored,
                name,
                format!("the result is node {}'s", r.node),
            );
            continue;
        }
        if !seen.insert(rep.node) {
            leave_out(
                &mut ignored,
                name,
                "listed more than once: counted once".into(),
            );
            continue;
        }
        if r.image_hash != job.image_hash {
            leave_out(
                &mut ignored,
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
            leave_out(
                &mut ignored,
                name,
                format!("built for {} instead of {}", r.arch, job.spec.arch),
            );
            continue;
        }
        match &r.status {
            BuildStatus::Succeeded => ok.push((name.clone(), rep)),
            BuildStatus::Failed { .. } => {
                failures.insert(name.clone(), r.status.detail().unwrap_or_default());
            }
            BuildStatus::TimedOut => {
                failures.insert(name.clone(), "timed out".into());
            }
            BuildStatus::Error { reason } => {
                leave_out(
                    &mut ignored,
                    name,
                    format!("infrastructure error: {reason}"),
                );
                continue;
            }
            _ => {
                leave_out(&mut ignored, name, "unknown status".into());
                continue;
            }
        }
        if rep.operator != OperatorId::of_node(&rep.node) {
            operators.insert(rep.node.to_string(), rep.operator.to_string());
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
        agreeing_operators: 0,
        trusted_operators: 0,
        quorum: policy.quorum,
        operators,
    };
    // Group succeeded nodes, and their distinct operators, by root.
    let mut by_root: BTreeMap<ContentHash, (Vec<String>, BTreeSet<OperatorId>)> = BTreeMap::new();
    for (n, rep) in &ok {
        let (nodes, ops) = by_root.entry(rep.result.manifest_root).or_default();
        nodes.push(n.clone());
        ops.insert(rep.operator);
    }
    let all_operators: BTreeSet<OperatorId> = ok.iter().map(|(_, rep)| rep.operator).collect();
    if let Some((_, (nodes, ops))) = by_root.iter().max_by_key(|(_, (_, ops))| ops.len())
        && ops.len() * 2 > all_operators.len()
    {
        v.majority = nodes.clone();
        v.agreeing_operators = ops.len();
        v.trusted_operators = ops.iter().filter(|o| policy.trusts(o)).count();
    }
    v.minority = ok
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !v.majority.contains(n))
        .collect();
    let results: Vec<(String, &BuildResult)> =
        ok.iter().map(|(n, rep)| (n.clone(), rep.result)).collect();
    if by_root.len() > 1 {
        v.files = file_table(&results);
        v.explained_by = explain(&results);
    }
    v.verdict = if !v.failures.is_empty() {
        Kind::Failed
    } else if by_root.len() > 1 {
        Kind::Differs
    } else if ok.len() >= 2 && compared >= usize::from(replicas) {
        // One root: every succeeded operator agrees. Two of them at least, and enough
        // that this verifier trusts.
        if v.agreeing_operators < 2 || v.trusted_operators < policy.quorum {
            Kind::Unconfirmed
        } else {
            v.root = by_root.keys().next().map(|r| r.to_string());
            Kind::Reproducible
        }
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
    use super::tests_support::{by, job, node, result_with as result};
    use super::*;

    #[test]
    fn agreeing_results_are_reproducible() {
        let r = result(&[("out/a", b"x")], BuildStatus::Succeeded);
        let v = judge(&job(3), &[by(1, r.clone()), by(2, r.clone()), by(3, r)]);
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
        let v = judge(&job(3), &[by(1, a.clone()), by(2, a), by(3, b)]);
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
        let v = judge(&job(2), &[by(1, ok.clone()), by(2, failed)]);
        assert_eq!(v.verdict, Kind::Failed);
        assert_eq!(v.failures[&node(2).to_string()], "task build exited 2");
        let v = judge(&job(2), &[by(1, ok.clone())]);
        assert_eq!(v.verdict, Kind::Pending);
        let mut other = ok.clone();
        other.image_hash = ContentHash::of(b"other");
        let err = result(
            &[],
            BuildStatus::Error {
                reason: "vm".into(),
            },
        );
        let v = judge(&job(2), &[by(1, ok), by(2, other), by(3, err)]);
        assert_eq!(v.verdict, Kind::Pending);
        assert_eq!(v.ignored.len(), 2);
    }
}

#[cfg(test)]
mod counting_tests {
    use super::tests_support::{by, job, node, result};
    use super::*;
    use barn_protocol::SecretKey;

    fn signed_by(i: u8, files: &[(&str, &[u8])]) -> BuildResult {
        let mut r = result(files);
        r.node = node(i);
        r
    }

    fn operator(i: u8) -> OperatorId {
        OperatorId(SecretKey::from_seed([100 + i; 32]).public())
    }

    #[test]
    fn a_result_listed_twice_counts_once() {
        let a = signed_by(1, &[("out/a", b"x")]);
        let b = signed_by(2, &[("out/a", b"x")]);
        // Node 1's result three times, node 2's once: two builders, not four.
        let v = judge(
            &job(3),
            &[by(1, a.clone()), by(1, a.clone()), by(2, b), by(1, a)],
        );
        assert_eq!(v.verdict, Kind::Pending, "{v:?}");
        assert_eq!(v.compared, 2);
        assert_eq!(v.majority.len(), 2);
        assert_eq!(
            v.ignored[&node(1).to_string()],
            "listed more than once: counted once; listed more than once: counted once"
        );
    }

    #[test]
    fn another_result_of_the_same_node_counts_once_too() {
        let honest = signed_by(1, &[("out/a", b"x")]);
        let again = signed_by(1, &[("out/a", b"y")]);
        let other = signed_by(2, &[("out/a", b"x")]);
        let v = judge(&job(2), &[by(1, honest), by(1, again), by(2, other)]);
        assert_eq!(v.verdict, Kind::Reproducible, "{v:?}");
        assert_eq!((v.compared, v.agreeing_operators), (2, 2));
        // A result passed off as another node's is not that node's vote.
        let stolen = signed_by(1, &[("out/a", b"x")]);
        let v = judge(&job(2), &[(node(2), stolen.clone()), (node(1), stolen)]);
        assert_eq!(v.verdict, Kind::Pending, "{v:?}");
        assert!(v.ignored[&node(2).to_string()].contains("the result is node"));
    }

    #[test]
    fn one_operator_with_three_nodes_counts_as_one() {
        let results: Vec<BuildResult> = (1..=3).map(|i| signed_by(i, &[("a", b"1")])).collect();
        let replicas: Vec<Replica<'_>> = results
            .iter()
            .map(|r| Replica {
                node: r.node,
                operator: operator(1),
                result: r,
            })
            .collect();
        let v = judge_with(&job(3), &replicas, &Policy::default());
        assert_eq!(v.verdict, Kind::Unconfirmed, "{v:?}");
        assert_eq!((v.compared, v.agreeing_operators), (3, 1));
        assert_eq!(v.operators.len(), 3);
        assert!(v.root.is_none());
        // With a second operator on one of the nodes, two operators agree.
        let mut two = replicas.clone();
        two[2].operator = operator(2);
        let v = judge_with(&job(3), &two, &Policy::default());
        assert_eq!((v.verdict, v.agreeing_operators), (Kind::Reproducible, 2));
    }

    #[test]
    fn the_majority_is_counted_in_operators() {
        // One operator's three nodes say x; two other operators say y: y is the majority.
        let results: Vec<BuildResult> = (1..=5)
            .map(|i| signed_by(i, &[("a", if i <= 3 { b"x" } else { b"y" })]))
            .collect();
        let replicas: Vec<Replica<'_>> = results
            .iter()
            .enumerate()
            .map(|(i, r)| Replica {
                node: r.node,
                operator: if i < 3 {
                    operator(1)
                } else {
                    operator(i as u8)
                },
                result: r,
            })
            .collect();
        let v = judge_with(&job(5), &replicas, &Policy::default());
        assert_eq!(v.verdict, Kind::Differs);
        assert_eq!(v.majority, vec![node(4).to_string(), node(5).to_string()]);
        assert_eq!((v.agreeing_operators, v.minority.len()), (2, 3));
    }

    #[test]
    fn three_unknown_keys_agreeing_against_a_policy_with_trusted_builders_are_unconfirmed() {
        let results: Vec<(NodeId, BuildResult)> = (1..=3)
            .map(|i| (node(i), signed_by(i, &[("a", b"1")])))
            .collect();
        let replicas: Vec<Replica<'_>> = results.iter().map(|(n, r)| Replica::own(*n, r)).collect();
        let policy = Policy {
            builders: BTreeSet::from([operator(7), operator(8)]),
            quorum: 1,
        };
        let v = judge_with(&job(3), &replicas, &policy);
        assert_eq!(v.verdict, Kind::Unconfirmed, "{v:?}");
        assert_eq!(
            (v.agreeing_operators, v.trusted_operators, v.quorum),
            (3, 0, 1)
        );
        assert!(v.root.is_none());
        // Without a policy, three distinct keys agreeing are reproducible.
        assert_eq!(judge(&job(3), &results).verdict, Kind::Reproducible);
        // One of them trusted (by its peer id, a node without certificate): reproducible.
        let policy = Policy {
            builders: BTreeSet::from([OperatorId::of_node(&node(2))]),
            quorum: 1,
        };
        let v = judge_with(&job(3), &replicas, &policy);
        assert_eq!((v.verdict, v.trusted_operators), (Kind::Reproducible, 1));
        // A quorum of two with one trusted builder among them: unconfirmed again.
        let policy = Policy {
            builders: BTreeSet::from([OperatorId::of_node(&node(2)), operator(7)]),
            quorum: 2,
        };
        assert_eq!(
            judge_with(&job(3), &replicas, &policy).verdict,
            Kind::Unconfirmed
        );
        // A trusted operator's three nodes are one trusted operator, not a quorum of three.
        let one: Vec<Replica<'_>> = replicas
            .iter()
            .map(|r| Replica {
                operator: operator(7),
                ..*r
            })
            .collect();
        let policy = Policy {
            builders: BTreeSet::from([operator(7), operator(8)]),
            quorum: 2,
        };
        let v = judge_with(&job(3), &one, &policy);
        assert_eq!((v.verdict, v.trusted_operators), (Kind::Unconfirmed, 1));
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
        let v = judge(&job(3), &[by(1, base), by(2, tz), by(3, um)]);
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

    /// `r` as node `i`'s result, listed under it.
    pub fn by(i: u8, mut r: BuildResult) -> (NodeId, BuildResult) {
        r.node = node(i);
        (node(i), r)
    }
}
