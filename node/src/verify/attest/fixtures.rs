//! Test fixtures shared by the attestation tests: keys, a signed job, signed results and
//! an export of them.

use std::collections::BTreeMap;

use barn_protocol::manifest::{Entry, EntryKind, Manifest};
use barn_protocol::message::{
    Accel, BuildResult, BuildStatus, Job, JobSpec, Resources, Task, Timings,
};
use barn_protocol::{ContentHash, JobId, SecretKey, Signed};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::{Envelope, export_result, export_summary};

pub(super) fn key(i: u8) -> SecretKey {
    SecretKey::from_seed([i; 32])
}

pub(super) fn job() -> Signed<Job> {
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

pub(super) fn result(job: &Signed<Job>, node: &SecretKey, content: &[u8]) -> Signed<BuildResult> {
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

/// A job built by nodes 1 and 2 with the same output, exported by node 3.
pub(super) fn export(
    contents: [&[u8]; 2],
) -> (Signed<Job>, Vec<Signed<BuildResult>>, Vec<Envelope>) {
    let j = job();
    let results = vec![
        result(&j, &key(1), contents[0]),
        result(&j, &key(2), contents[1]),
    ];
    let mut envs: Vec<Envelope> = results
        .iter()
        .map(|r| export_result(&j, r, &key(3)).unwrap())
        .collect();
    envs.push(export_summary(&j, &results, None, &key(3), 1_700_000_200).unwrap());
    (j, results, envs)
}

pub(super) fn statement(env: &Envelope) -> Value {
    serde_json::from_slice(&STANDARD.decode(&env.payload).unwrap()).unwrap()
}

pub(super) fn job_with_nonce(n: u8) -> Signed<Job> {
    let mut j = job().message().clone();
    j.nonce = serde_bytes::ByteArray::new([n; 16]);
    Signed::sign(j, &key(8))
}
