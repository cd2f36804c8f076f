//! Writes the binary part of the seed corpus: real signed envelopes of every message kind
//! (settlements and operator certificates too) for `envelope`, and small output tars (GNU long names, PAX headers, links) for
//! `output_tar`. Deterministic (a fixed key and ed25519's deterministic signatures), so a
//! rerun rewrites the same bytes. The text seeds (console, status, job files) are plain
//! files copied from `images/` and `examples/`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin seeds`

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::Path;

use barn_protocol::envelope::{Message, Signed};
use barn_protocol::manifest::{Entry, EntryKind, Manifest};
use barn_protocol::message::*;
use barn_protocol::operator::OperatorCert;
use barn_protocol::settlement::{SettledReplica, Settlement, VerdictKind};
use barn_protocol::{ContentHash, OperatorId, SecretKey, cbor};
use serde_bytes::ByteArray;

fn main() -> io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    envelopes(&corpus.join("envelope"))?;
    tars(&corpus.join("output_tar"))?;
    Ok(())
}

fn key() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

fn job_id() -> JobId {
    JobId(ContentHash::of(b"job"))
}

fn lease() -> LeaseId {
    LeaseId(ByteArray::new([2; 16]))
}

fn job() -> Job {
    Job {
        spec: JobSpec {
            image: "tiny-x86_64".into(),
            arch: "x86_64".into(),
            tasks: vec![
                Task {
                    name: "build".into(),
                    run: "mkdir -p out && echo hi > out/hello.txt".into(),
                },
                Task {
                    name: "check".into(),
                    run: "grep -q hi out/hello.txt".into(),
                },
            ],
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            artifacts: vec!["out/*".into()],
            resources: Resources::default(),
            timeout_secs: 300,
            replicas: 3,
            source_date_epoch: 1_700_000_000,
            tiebreak: true,
            vary: vec!["timezone".into(), "umask".into()],
        },
        image_hash: ContentHash::of(b"image"),
        source: ContentHash::of(b"source"),
        source_size: 10_240,
        coordinator: key().node_id(),
        coordinator_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        created: 1_700_000_000,
        expires: 1_700_003_600,
        nonce: ByteArray::new([1; 16]),
    }
}

fn manifest() -> Manifest {
    Manifest::new(vec![
        Entry {
            path: "out".into(),
            kind: EntryKind::Dir,
            executable: false,
            size: 0,
            hash: None,
            target: None,
        },
        Entry {
            path: "out/hello.txt".into(),
            kind: EntryKind::File,
            executable: false,
            size: 3,
            hash: Some(ContentHash::of(b"hi\n")),
            target: None,
        },
        Entry {
            path: "out/latest".into(),
            kind: EntryKind::Symlink,
            executable: false,
            size: 0,
            hash: None,
            target: Some("hello.txt".into()),
        },
    ])
}

fn build_result(status: BuildStatus) -> BuildResult {
    BuildResult {
        job: job_id(),
        lease: Some(lease()),
        node: key().node_id(),
        status,
        tasks: vec![TaskOutcome {
            name: "build".into(),
            exit_code: Some(0),
            duration_ms: 120,
        }],
        manifest_root: manifest().root(),
        manifest: manifest(),
        log_hash: ContentHash::of(b"log"),
        log_size: 3,
        timings: Timings {
            fetch_ms: 1,
            prepare_ms: 2,
            boot_ms: 800,
            run_ms: 120,
            collect_ms: 5,
            total_ms: 928,
        },
        image_hash: ContentHash::of(b"image"),
        arch: "x86_64".into(),
        accel: Accel::Tcg,
        qemu_version: "7.2.0".into(),
        finished: 1_700_000_100,
        variation: BTreeMap::from([("timezone".to_string(), "Asia/Tokyo".to_string())]),
    }
}

fn envelopes(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let signed = |name: &str, bytes: Vec<u8>| fs::write(dir.join(name), bytes);
    fn sign<T: Message>(m: T) -> Vec<u8> {
        Signed::sign(m, &key()).to_bytes()
    }
    let job_bytes = sign(job());
    signed("job", job_bytes.clone())?;
    signed(
        "job-announce",
        cbor::to_vec(&JobAnnounce {
            job: job_bytes,
            sent: 1_700_000_000_123,
        }),
    )?;
    signed(
        "node-advert",
        sign(NodeAdvert {
            node: key().node_id(),
            version: "0.1.0".into(),
            archs: vec![ArchInfo {
                isa: "x86_64".into(),
                endian: Endian::Little,
                data_model: "lp64".into(),
                accel: Accel::Kvm,
            }],
            cpus: 2,
            memory_bytes: 4 << 30,
            free_slots: 1,
            total_slots: 2,
            images: BTreeMap::from([("tiny-x86_64".to_string(), ContentHash::of(b"image"))]),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            time: 1_700_000_000,
            expires: 1_700_000_090,
            unavailable: vec![Unavailable::Paused],
        }),
    )?;
    signed(
        "claim",
        sign(Claim {
            job: job_id(),
            node: key().node_id(),
            accel: Accel::Tcg,
            time: 1_700_000_001,
            operator_cert: Some(serde_bytes::ByteBuf::from(vec![1u8; 40])),
        }),
    )?;
    signed(
        "grant-granted",
        sign(Grant {
            job: job_id(),
            node: key().node_id(),
            decision: GrantDecision::Granted {
                lease: lease(),
                expires: 1_700_000_060,
                heartbeat_secs: 10,
                variant: 2,
            },
            time: 1_700_000_002,
        }),
    )?;
    signed(
        "grant-denied",
        sign(Grant {
            job: job_id(),
            node: key().node_id(),
            decision: GrantDecision::Denied {
                reason: "enough replicas".into(),
                refusal: Some(barn_protocol::Refusal::Full),
            },
            time: 1_700_000_002,
        }),
    )?;
    signed(
        "heartbeat",
        sign(Heartbeat {
            job: job_id(),
            lease: lease(),
            phase: Phase::Running,
            log_bytes: 4096,
            time: 1_700_000_010,
        }),
    )?;
    signed(
        "commitment",
        sign(Commitment {
            job: job_id(),
            lease: lease(),
            node: key().node_id(),
            digest: Commitment::digest_of(&key().node_id(), &manifest().root()),
            time: 1_700_000_100,
            provenance_sig: Some(ByteArray::new([3; 64])),
        }),
    )?;
    signed(
        "build-result-succeeded",
        sign(build_result(BuildStatus::Succeeded)),
    )?;
    signed(
        "build-result-failed",
        sign(build_result(BuildStatus::Failed {
            task: "check".into(),
            exit_code: 137,
            reason: Some(Failure::OutOfMemory {
                victim: "cc1".into(),
            }),
        })),
    )?;
    signed(
        "build-result-error",
        sign(build_result(BuildStatus::Error {
            reason: "output unreadable".into(),
        })),
    )?;
    signed(
        "blob-request",
        cbor::to_vec(&BlobRequest {
            hash: ContentHash::of(b"source"),
            offset: 65_536,
        }),
    )?;
    signed("manifest", cbor::to_vec(&manifest()))?;
    // An operator (another key) certifies the node; the coordinator settles with it.
    let operator = SecretKey::from_seed([8; 32]);
    let cert = Signed::sign(
        OperatorCert {
            operator: OperatorId(operator.public()),
            node: key().node_id(),
            issued: 1_700_000_000,
            expires: 1_731_536_000,
        },
        &operator,
    )
    .to_bytes();
    signed("operator-cert", cert.clone())?;
    let result = sign(build_result(BuildStatus::Succeeded));
    signed(
        "settlement",
        sign(Settlement {
            job: job_id(),
            replicas: vec![
                SettledReplica {
                    lease: lease(),
                    node: key().node_id(),
                    variant: 1,
                    operator: OperatorId(operator.public()),
                    cert: Some(serde_bytes::ByteBuf::from(cert)),
                    result: ContentHash::of(&result),
                },
                SettledReplica {
                    lease: LeaseId(ByteArray::new([3; 16])),
                    node: operator.node_id(),
                    variant: 0,
                    operator: OperatorId::of_node(&operator.node_id()),
                    cert: None,
                    result: ContentHash::of(b"another result"),
                },
            ],
            verdict: VerdictKind::Reproducible,
            root: Some(manifest().root()),
            time: 1_700_000_200,
        }),
    )?;
    Ok(())
}

/// A tar the way the guest init writes its output: `status`, then `artifacts/…`.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }

    /// A file; a path over 100 bytes becomes a GNU long-name entry.
    fn file(mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<Self> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, path, data)?;
        Ok(self)
    }

    fn dir(mut self, path: &str) -> io::Result<Self> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, io::empty())?;
        Ok(self)
    }

    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> io::Result<Self> {
        let mut h = Self::header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// A PAX extended header (`path=…`) applying to the next entry.
    fn pax(mut self, records: &[(&str, &str)]) -> io::Result<Self> {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}={v}\n");
            // The length counts its own digits.
            let mut n = rest.len() + 1;
            while (n.to_string().len() + rest.len()) != n {
                n += 1;
            }
            body.extend_from_slice(format!("{n}{rest}").as_bytes());
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        self.0
            .append_data(&mut h, "PaxHeaders/x", body.as_slice())?;
        Ok(self)
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        self.0.into_inner()
    }
}

const STATUS: &[u8] = b"version 1\ntask 000-build 0 120\nresult ok\nartifacts 1\n";

fn tars(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let write = |name: &str, t: Tar| fs::write(dir.join(name), t.finish()?);
    write(
        "plain",
        Tar::new()
            .file("status", 0o644, STATUS)?
            .dir("artifacts/out")?
            .file("artifacts/out/hello.txt", 0o644, b"hi\n")?
            .file("artifacts/out/run.sh", 0o755, b"#!/bin/sh\necho hi\n")?,
    )?;
    let long = format!("artifacts/out/{}/file.txt", "deep".repeat(30));
    write(
        "gnu-long-name",
        Tar::new()
            .file("status", 0o644, STATUS)?
            .file(&long, 0o644, b"long\n")?
            .link(
                tar::EntryType::Symlink,
                "artifacts/out/to-long",
                &long["artifacts/out/".len()..],
            )?,
    )?;
    write(
        "pax-path",
        Tar::new()
            .file("status", 0o644, STATUS)?
            .pax(&[
                ("path", "artifacts/out/pax-name.txt"),
                ("mtime", "1700000000"),
            ])?
            .file("artifacts/out/short", 0o644, b"pax\n")?,
    )?;
    write(
        "links",
        Tar::new()
            .file("status", 0o644, STATUS)?
            .file("artifacts/out/a.bin", 0o644, b"same bytes\n")?
            .link(
                tar::EntryType::Link,
                "artifacts/out/b.bin",
                "artifacts/out/a.bin",
            )?
            .link(tar::EntryType::Symlink, "artifacts/out/latest", "a.bin")?
            .link(
                tar::EntryType::Symlink,
                "artifacts/escape",
                "../../etc/passwd",
            )?,
    )?;
    write(
        "status-only",
        Tar::new().file("status", 0o644, b"version 1\nresult ok\noutput overflow\n")?,
    )?;
    Ok(())
}
