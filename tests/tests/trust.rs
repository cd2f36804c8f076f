//! Whose agreement counts, on the real binary: operator keys and certificates (`barn key
//! new --operator`, `show --operator`, `certify`), and `barn verify` counting only the
//! results a settlement names, each operator once, under the verifier's trust policy.
//! The job detail comes from a stand-in for the node's API ([`barn_tests::fake`]), so the
//! results can be what no honest farm produces.
#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::fs;
use std::path::Path;
use std::process::Output;

use barn_protocol::manifest::{Entry, EntryKind, Manifest};
use barn_protocol::message::{Accel, BuildResult, BuildStatus, Job, LeaseId, Timings};
use barn_protocol::operator::OperatorCert;
use barn_protocol::settlement::{SettledReplica, Settlement, VerdictKind};
use barn_protocol::{ContentHash, JobId, NodeId, OperatorId, SecretKey, Signed};
use barn_tests::barn;
use barn_tests::fake::FakeNode;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn an_operator_key_certifies_this_nodes_key() {
    let home = tempfile::tempdir().unwrap();
    let made = barn(home.path(), &["key", "new", "--operator"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let operator = stdout(&made);
    assert!(
        operator.starts_with("operator:") && operator.len() == 9 + 64,
        "{operator}"
    );
    assert!(home.path().join("config/barn/operator.key").exists());
    let shown = barn(home.path(), &["key", "show", "--operator"]);
    assert_eq!(stdout(&shown), operator);
    let again = barn(home.path(), &["key", "new", "--operator"]);
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // No node key yet: certify says how to make one.
    let out = barn(home.path(), &["key", "certify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("make one with `barn key new --node`"),
        "{}",
        stderr(&out)
    );
    let node = stdout(&barn(home.path(), &["key", "new", "--node"]));
    let node: NodeId = node.parse().unwrap();
    let out = barn(home.path(), &["key", "certify", "--days", "30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), operator);
    let cert = home.path().join("data/barn/operator.cert");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&cert).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let bytes = fs::read(&cert).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let certified = OperatorCert::check(&bytes, &node, now).unwrap();
    assert_eq!(certified.to_string(), operator);
    let c = Signed::<OperatorCert>::from_bytes(&bytes).unwrap();
    assert_eq!(c.message().expires - c.message().issued, 30 * 86_400);

    // A second certificate does not silently replace the first.
    let out = barn(home.path(), &["key", "certify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --force"), "{}", stderr(&out));
    let out = barn(home.path(), &["key", "certify", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A node on another machine, by its peer id, to a file of one's choosing.
    let other = SecretKey::from_seed([9; 32]).node_id();
    let file = home.path().join("other.cert");
    let out = barn(
        home.path(),
        &[
            "key",
            "certify",
            "--node",
            &other.to_string(),
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = fs::read(&file).unwrap();
    assert!(OperatorCert::check(&bytes, &other, now).is_ok());
    assert!(OperatorCert::check(&bytes, &node, now).is_err());
}

fn key(i: u8) -> SecretKey {
    SecretKey::from_seed([i; 32])
}

fn lease(i: u8) -> LeaseId {
    LeaseId(serde_bytes::ByteArray::new([i; 16]))
}

/// A job of three replicas coordinated by key 0.
fn job() -> Signed<Job> {
    let spec = barn_protocol::jobfile::parse(
        "image = \"tiny-x86_64\"\narch = \"x86_64\"\nreplicas = 3\n\
         [[task]]\nname = \"build\"\nrun = \"true\"\n",
        "barn.toml",
    )
    .unwrap()
    .remove(0);
    let job = Job {
        spec,
        image_hash: ContentHash::of(b"img"),
        source: ContentHash::of(b"src"),
        source_size: 0,
        coordinator: key(0).node_id(),
        coordinator_addrs: vec![],
        created: 0,
        expires: 10,
        nonce: serde_bytes::ByteArray::new([0; 16]),
    };
    Signed::sign(job, &key(50))
}

/// Node `i`'s signed result for lease `i`: one file, `content`.
fn built(job: &Signed<Job>, i: u8, content: &[u8]) -> Signed<BuildResult> {
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
        lease: Some(lease(i)),
        node: key(i).node_id(),
        status: BuildStatus::Succeeded,
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
    };
    Signed::sign(r, &key(i))
}

/// The coordinator's settlement naming node `i`'s result for each `(i, result)`; with
/// `operator`, every node counted as that operator, with its certificate.
fn settle(
    job: &Signed<Job>,
    named: &[(u8, &Signed<BuildResult>)],
    operator: Option<&SecretKey>,
) -> Vec<u8> {
    let replicas = named
        .iter()
        .map(|(i, r)| {
            let node = key(*i).node_id();
            let (op, cert) = match operator {
                None => (OperatorId::of_node(&node), None),
                Some(op) => {
                    let cert = OperatorCert {
                        operator: OperatorId(op.public()),
                        node,
                        issued: 0,
                        expires: 10_000,
                    };
                    let bytes = Signed::sign(cert, op).to_bytes();
                    (
                        OperatorId(op.public()),
                        Some(serde_bytes::ByteBuf::from(bytes)),
                    )
                }
            };
            SettledReplica {
                lease: lease(*i),
                node,
                variant: 0,
                operator: op,
                cert,
                result: ContentHash::of(&r.to_bytes()),
            }
        })
        .collect();
    let s = Settlement {
        job: JobId::of(job),
        replicas,
        verdict: VerdictKind::Reproducible,
        root: None,
        time: 1_000,
    };
    Signed::sign(s, &key(0)).to_bytes()
}

/// A job detail as a node's API shows it.
fn detail(
    job: &Signed<Job>,
    results: &[&Signed<BuildResult>],
    settlement: &[u8],
) -> serde_json::Value {
    let results: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "node": r.message().node.to_string(),
                "status": "succeeded",
                "detail": null,
                "manifest_root": r.message().manifest_root.to_string(),
                "log_hash": r.message().log_hash.to_string(),
                "log_size": 0, "total_ms": 0, "boot_ms": 0, "run_ms": 0,
                "accel": "tcg",
                "image_hash": r.message().image_hash.to_string(),
                "envelope": hex::encode(r.to_bytes()),
                "received": 0,
            })
        })
        .collect();
    serde_json::json!({
        "job": {
            "id": JobId::of(job).to_string(),
            "image": "tiny-x86_64", "arch": "x86_64", "replicas": 3,
            "state": "complete", "results": results.len(), "succeeded": results.len(),
            "created": 0, "mine": false, "submitter": "",
        },
        "envelope": hex::encode(job.to_bytes()),
        "leases": [],
        "results": results,
        "settlement": hex::encode(settlement),
    })
}

fn verify(home: &Path, node: &FakeNode, job: &Signed<Job>, extra: &[&str]) -> Output {
    let data = node.data_dir();
    let id = JobId::of(job).to_string();
    let mut args = vec!["verify", &id, "--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    barn(home, &args)
}

#[test]
fn verify_counts_only_settled_results_each_operator_once_under_the_policy() {
    let home = tempfile::tempdir().unwrap();
    let job = job();
    let [a, b, c] = [1, 2, 3].map(|i| built(&job, i, b"same"));
    // Node 4 never held a lease; its result was gossiped anyway.
    let stray = built(&job, 4, b"same");
    let settled = settle(&job, &[(1, &a), (2, &b), (3, &c)], None);
    let node = FakeNode::serving(detail(&job, &[&a, &a, &b, &stray, &c], &settled));

    // No policy: three distinct operators agree. The duplicate and the stray are named
    // and not counted.
    let out = verify(home.path(), &node, &job, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(text.contains("settled by its coordinator"), "{text}");
    assert!(
        text.contains("verdict: reproducible (3 of 3 results agree")
            && text.contains("3 distinct operators"),
        "{text}"
    );
    assert!(
        text.contains("not counted: the settlement does not name it"),
        "{text}"
    );
    assert!(
        text.contains("not counted: another result of the same node already counts"),
        "{text}"
    );

    // A policy that trusts builders none of these three are: unconfirmed, exit 13.
    let policy = home.path().join("policy.toml");
    let trusted = OperatorId(key(70).public());
    fs::write(&policy, format!("builders = [\"{trusted}\"]\n")).unwrap();
    let out = verify(
        home.path(),
        &node,
        &job,
        &["--policy", policy.to_str().unwrap()],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(13), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("verdict: unconfirmed")
            && text.contains("3 distinct operators, 0 of them trusted (the policy asks for 1)"),
        "{text}"
    );
    let out = verify(
        home.path(),
        &node,
        &job,
        &["--json", "--policy", policy.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"]["verdict"], "unconfirmed");
    assert_eq!(v["verdict"]["agreeing_operators"], 3);
    assert_eq!(v["verdict"]["trusted_operators"], 0);
    assert_eq!(v["settled"], true);

    // The same policy from the config: node 2, trusted by its peer id, agrees.
    let config = home.path().join("config/barn");
    fs::create_dir_all(&config).unwrap();
    fs::write(
        config.join("config.toml"),
        format!(
            "[trust]\nbuilders = [\"{trusted}\", \"{}\"]\n",
            key(2).node_id()
        ),
    )
    .unwrap();
    let out = verify(home.path(), &node, &job, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("3 distinct operators, 1 of them trusted"),
        "{}",
        stdout(&out)
    );

    // A misspelt policy file is an error naming the file and the key, never an open policy.
    fs::write(&policy, "bulders = []\n").unwrap();
    let out = verify(
        home.path(),
        &node,
        &job,
        &["--policy", policy.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{}: unknown key `bulders`", policy.display())),
        "{}",
        stderr(&out)
    );
}

#[test]
fn verify_counts_one_operators_three_nodes_as_one() {
    let home = tempfile::tempdir().unwrap();
    let job = job();
    let [a, b, c] = [1, 2, 3].map(|i| built(&job, i, b"same"));
    let operator = key(60);
    let settled = settle(&job, &[(1, &a), (2, &b), (3, &c)], Some(&operator));
    let node = FakeNode::serving(detail(&job, &[&a, &b, &c], &settled));
    let out = verify(home.path(), &node, &job, &[]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(13), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("verdict: unconfirmed (3 of 3 results agree, from 1 distinct operator)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "operator {}",
            OperatorId(operator.public()).short()
        )),
        "{text}"
    );
}

#[test]
fn verify_refuses_a_settlement_not_signed_by_the_coordinator() {
    let home = tempfile::tempdir().unwrap();
    let job = job();
    let [a, b, c] = [1, 2, 3].map(|i| built(&job, i, b"forged"));
    // Three fresh keys agree on a forged root and sign a "settlement" themselves.
    let mut forged = Settlement {
        job: JobId::of(&job),
        replicas: vec![],
        verdict: VerdictKind::Reproducible,
        root: None,
        time: 1_000,
    };
    for (i, r) in [(1, &a), (2, &b), (3, &c)] {
        forged.replicas.push(SettledReplica {
            lease: lease(i),
            node: key(i).node_id(),
            variant: 0,
            operator: OperatorId::of_node(&key(i).node_id()),
            cert: None,
            result: ContentHash::of(&r.to_bytes()),
        });
    }
    let forged = Signed::sign(forged, &key(1)).to_bytes();
    let node = FakeNode::serving(detail(&job, &[&a, &b, &c], &forged));
    let out = verify(home.path(), &node, &job, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("not by the job's coordinator"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn verify_fails_on_a_tampered_result() {
    let home = tempfile::tempdir().unwrap();
    let job = job();
    let [a, b, c] = [1, 2, 3].map(|i| built(&job, i, b"same"));
    let settled = settle(&job, &[(1, &a), (2, &b), (3, &c)], None);
    let mut d = detail(&job, &[&a, &b, &c], &settled);
    // One bit of node 3's signature flipped behind the node's back.
    let mut bytes = c.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    d["results"][2]["envelope"] = serde_json::Value::from(hex::encode(bytes));
    let node = FakeNode::serving(d);
    let out = verify(home.path(), &node, &job, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
}

#[test]
fn attest_export_writes_only_settled_results_and_the_settlement() {
    let home = tempfile::tempdir().unwrap();
    let job = job();
    let [a, b, c] = [1, 2, 3].map(|i| built(&job, i, b"same"));
    let stray = built(&job, 4, b"same");
    let settled = settle(&job, &[(1, &a), (2, &b), (3, &c)], None);
    let node = FakeNode::serving(detail(&job, &[&a, &stray, &a, &b, &c], &settled));
    let data = node.data_dir();
    let data = data.to_str().unwrap();
    // The exporter signs with its own node key.
    let made = barn(home.path(), &["key", "new", "--node", "--data-dir", data]);
    assert!(made.status.success(), "{}", stderr(&made));
    let file = home.path().join("attest.json");
    let id = JobId::of(&job).to_string();
    let out = barn(
        home.path(),
        &[
            "attest",
            "export",
            &id,
            "--data-dir",
            data,
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let envs: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        envs.as_array().unwrap().len(),
        4,
        "three provenances and a summary"
    );
    let out = barn(home.path(), &["attest", "verify", file.to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("reproducible (PASSED) over 3 result(s), 3 agreeing operator(s)")
            && text.contains("settled by its coordinator"),
        "{text}"
    );
    assert!(!text.contains(&key(4).node_id().to_string()), "{text}");
}
