//! The v1 messages.
//!
//! Every message below except [`BlobRequest`] travels signed in an [`Envelope`](crate::Envelope)
//! (crate::envelope); the kind string and size limit of each are in its [`Message`] impl.
//! Fields are encoded as a CBOR map keyed by the field names below, in this order.
//! Versioning rule: within envelope version 1 a field may be added only with a default
//! (`#[serde(default)]`), and readers ignore fields they do not know; anything else (a field
//! removed, renamed or given another meaning) needs a new envelope version.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::envelope::{Message, Signed};
use crate::hash::{ContentHash, ParseHashError};
use crate::identity::NodeId;
use crate::limits::{MAX_GOSSIP_MESSAGE, MAX_REQUEST, MAX_RESPONSE};
use crate::manifest::Manifest;

/// A job's id: the blake3 hash of its signed payload bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub ContentHash);

impl JobId {
    /// The id of a signed job.
    pub fn of(job: &Signed<Job>) -> Self {
        Self(job.payload_hash())
    }

    /// A short form for logs and tables: 12 hex digits.
    pub fn short(&self) -> String {
        self.0.to_hex()[..12].to_string()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.short())
    }
}

impl FromStr for JobId {
    type Err = ParseHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

/// A lease's id, chosen at random by the coordinator.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub serde_bytes::ByteArray<16>);

impl LeaseId {
    /// A fresh random lease id.
    pub fn random() -> Self {
        Self(serde_bytes::ByteArray::new(random_bytes()))
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0.as_slice()))
    }
}

impl fmt::Debug for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseId({})", &hex::encode(self.0.as_slice())[..8])
    }
}

/// 16 random bytes for nonces and lease ids.
pub fn random_bytes() -> [u8; 16] {
    let mut out = [0u8; 16];
    #[expect(
        clippy::expect_used,
        reason = "an OS without a random source cannot run barn"
    )]
    getrandom::fill(&mut out).expect("the operating system's random source failed");
    out
}

/// How a node runs guests of one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Accel {
    /// Hardware virtualisation, proven by a canary VM.
    Kvm,
    /// QEMU's software emulator.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Byte order of an architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endian {
    Little,
    Big,
}

/// One architecture a node can build for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchInfo {
    /// Debian-style architecture name, e.g. `x86_64`, `aarch64`, `s390x`.
    pub isa: String,
    pub endian: Endian,
    /// C data model, e.g. `lp64`, `ilp32`.
    pub data_model: String,
    pub accel: Accel,
}

/// A node's advertisement, on gossip `barn/adverts/1` every 30 s and on change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdvert {
    pub node: NodeId,
    /// barn's version on that node.
    pub version: String,
    pub archs: Vec<ArchInfo>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub free_slots: u32,
    pub total_slots: u32,
    /// Images the node holds: name → image hash.
    pub images: BTreeMap<String, ContentHash>,
    /// Listen addresses (multiaddrs as text).
    pub addrs: Vec<String>,
    /// Unix seconds when made, and when it stops being valid.
    pub time: u64,
    pub expires: u64,
    /// Why the node claims no new jobs now; empty means it is taking work. Added within
    /// v1: absent (an older node, or a node taking work, which leaves it out) means
    /// available, and readers older than the field ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable: Vec<Unavailable>,
}

/// Why a node is not taking new work, as its advert says.
///
/// Encoded as a word, so that a reason added later reads as [`Unavailable::Other`] on
/// this barn instead of making the whole advert unreadable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
#[non_exhaustive]
pub enum Unavailable {
    /// Its owner ran `barn pause`.
    Paused,
    /// Outside every window of its `node.schedule`.
    OutsideSchedule,
    /// Its 1-minute load average is above its `node.max_load`.
    OverLoadLimit,
    /// A reason this version of barn does not know, as sent.
    Other(String),
}

impl Unavailable {
    /// The word on the wire, in `--json` output and tables.
    pub fn word(&self) -> &str {
        match self {
            Unavailable::Paused => "paused",
            Unavailable::OutsideSchedule => "outside_schedule",
            Unavailable::OverLoadLimit => "over_load_limit",
            Unavailable::Other(w) => w,
        }
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unavailable::Paused => "paused by its owner",
            Unavailable::OutsideSchedule => "outside its schedule",
            Unavailable::OverLoadLimit => "over its load limit",
            Unavailable::Other(w) => w,
        })
    }
}

impl From<String> for Unavailable {
    fn from(word: String) -> Self {
        match word.as_str() {
            "paused" => Unavailable::Paused,
            "outside_schedule" => Unavailable::OutsideSchedule,
            "over_load_limit" => Unavailable::OverLoadLimit,
            _ => Unavailable::Other(word),
        }
    }
}

impl From<Unavailable> for String {
    fn from(u: Unavailable) -> Self {
        u.word().to_string()
    }
}

impl Message for NodeAdvert {
    const KIND: &'static str = "node-advert";
    const MAX_SIZE: usize = MAX_GOSSIP_MESSAGE;
}

/// One step of a job, run by `sh -e` in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub run: String,
}

/// What a job may use on a volunteer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpus: u32,
    pub memory_bytes: u64,
    /// The output quota: the size of the output disk.
    pub disk_bytes: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1,
            memory_bytes: 512 << 20,
            disk_bytes: 1 << 30,
        }
    }
}

/// What to build and how, from `barn.toml` (one architecture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The image's name, e.g. `debian-12-x86_64`.
    pub image: String,
    pub arch: String,
    pub tasks: Vec<Task>,
    pub env: BTreeMap<String, String>,
    /// Globs relative to `/build/src` naming the outputs.
    pub artifacts: Vec<String>,
    pub resources: Resources,
    pub timeout_secs: u64,
    pub replicas: u8,
    pub source_date_epoch: u64,
    /// When two replicas disagree with no majority, ask one more node to break the tie.
    /// Added within v1: absent means `false`.
    #[serde(default)]
    pub tiebreak: bool,
    /// What replicas vary to find out what a build depends on (see [`VARIATIONS`]):
    /// replica 0 builds in the fixed environment, replica k ≥ 1 varies the k-th of these
    /// alone, further replicas vary all of them. Added within v1: absent means none.
    #[serde(default)]
    pub vary: Vec<String>,
}

/// The environment variations a job may ask for, as reprotest varies them on one machine.
pub const VARIATIONS: &[&str] = &[
    "build_path",
    "timezone",
    "locale",
    "umask",
    "hostname",
    "cpus",
    "file_order",
];

/// A signed build job, on gossip `barn/jobs/1`. Its id is [`JobId`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub spec: JobSpec,
    /// The exact image bytes every replica must run.
    pub image_hash: ContentHash,
    /// The deterministic tar of the source tree ([`crate::pack`]).
    pub source: ContentHash,
    pub source_size: u64,
    /// The node that coordinates this job: grants leases, collects results, serves the source.
    pub coordinator: NodeId,
    /// Where to reach the coordinator (multiaddrs as text).
    pub coordinator_addrs: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    /// Makes two submissions of the same tree distinct jobs.
    pub nonce: serde_bytes::ByteArray<16>,
}

impl Message for Job {
    const KIND: &'static str = "job";
    const MAX_SIZE: usize = MAX_GOSSIP_MESSAGE;
}

/// A job announcement on gossip `barn/jobs/1`: the signed job and when this copy was sent.
/// Not signed itself (the job inside is). The coordinator announces a job again every few
/// seconds while it wants replicas, so nodes that join later still learn of it; `sent`
/// makes each copy's bytes (and so its gossip message id) new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAnnounce {
    /// The signed `job` envelope.
    #[serde(with = "serde_bytes")]
    pub job: Vec<u8>,
    /// Unix milliseconds.
    pub sent: u64,
}

impl JobAnnounce {
    /// The largest announcement accepted.
    pub const MAX_SIZE: usize = MAX_GOSSIP_MESSAGE;
}

/// A volunteer asks the coordinator for a lease on a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub job: JobId,
    pub node: NodeId,
    pub accel: Accel,
    pub time: u64,
    /// The node's signed operator certificate ([`crate::operator::OperatorCert`]), so
    /// the coordinator grants one job's replicas to distinct operators. Added within v1:
    /// absent means the node is its own operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_cert: Option<serde_bytes::ByteBuf>,
}

impl Message for Claim {
    const KIND: &'static str = "claim";
    const MAX_SIZE: usize = MAX_REQUEST;
}

/// The coordinator's answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub job: JobId,
    pub node: NodeId,
    pub decision: GrantDecision,
    pub time: u64,
}

/// Granted with a lease, or denied with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GrantDecision {
    Granted {
        lease: LeaseId,
        /// Unix seconds after which the lease lapses unless a heartbeat renews it.
        expires: u64,
        /// How often to send heartbeats, in seconds.
        heartbeat_secs: u64,
        /// Which variant of the environment this replica builds in (see `JobSpec::vary`).
        /// Added within v1: absent means 0, the fixed environment.
        #[serde(default)]
        variant: u32,
    },
    Denied {
        /// For people.
        reason: String,
        /// For code: what the volunteer does next depends on this, never on `reason`.
        /// Added within v1: absent from older coordinators (treated as "retry later").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refusal: Option<crate::refusal::Refusal>,
    },
}

impl Message for Grant {
    const KIND: &'static str = "grant";
    const MAX_SIZE: usize = MAX_REQUEST;
}

/// Where a leased job is on its volunteer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Phase {
    Fetching,
    Preparing,
    Booting,
    Running,
    Collecting,
    Done,
}

/// Keeps a lease alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub job: JobId,
    pub lease: LeaseId,
    pub phase: Phase,
    pub log_bytes: u64,
    pub time: u64,
}

impl Message for Heartbeat {
    const KIND: &'static str = "heartbeat";
    const MAX_SIZE: usize = MAX_REQUEST;
}

/// A volunteer's commitment to its result before revealing it: the blake3 of
/// `"barn/v1/commit" || 0x00 || node id (32 bytes) || manifest root (32 bytes)`. Bound to the
/// node's id, so a lazy node cannot reuse another's commitment, and sent before any root
/// is revealed, so it cannot copy one either. The coordinator accepts results only from
/// nodes that committed, and reveals none until every replica has committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    pub job: JobId,
    pub lease: LeaseId,
    pub node: NodeId,
    pub digest: ContentHash,
    pub time: u64,
    /// The node's ed25519 signature over its provenance attestation (the DSSE
    /// pre-authentication encoding of the in-toto statement built from the signed job and
    /// this result). It reveals nothing of the root. Added within v1: absent means none.
    #[serde(default)]
    pub provenance_sig: Option<serde_bytes::ByteArray<64>>,
}

impl Commitment {
    /// The digest committing `node` to `manifest_root`.
    pub fn digest_of(node: &NodeId, manifest_root: &ContentHash) -> ContentHash {
        let mut bytes = Vec::with_capacity(15 + 64);
        bytes.extend_from_slice(b"barn/v1/commit\0");
        bytes.extend_from_slice(node.0.as_bytes());
        bytes.extend_from_slice(manifest_root.as_bytes());
        ContentHash::of(&bytes)
    }
}

impl Message for Commitment {
    const KIND: &'static str = "commitment";
    const MAX_SIZE: usize = MAX_REQUEST;
}

/// How a build ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
#[non_exhaustive]
pub enum BuildStatus {
    Succeeded,
    /// A task exited non-zero (later tasks did not run), or the job's output broke the
    /// rules (`task` is then `output`).
    Failed {
        task: String,
        exit_code: i32,
        /// Why, when the host knows more than the exit code. Absent in results from nodes
        /// before it existed, and left out of the encoding when `None`, so results without
        /// it keep their bytes and their signatures.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Failure>,
    },
    TimedOut,
    /// The infrastructure failed (VM would not boot, output unreadable, …): not a verdict
    /// on the build; the job should be retried elsewhere.
    Error {
        reason: String,
    },
}

/// Why a build failed, beyond its exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum Failure {
    /// The guest kernel's OOM killer ended a process of the task: the job asked for too
    /// little memory. `victim` is the killed process's name as the kernel reported it.
    OutOfMemory { victim: String },
    /// The outputs are larger than the job's `resources.disk` (hard links counted at their
    /// full size).
    OutputOverQuota,
    /// The outputs broke a rule other than size (unsafe path, escaping link, special file,
    /// oversized header); `why` says which.
    OutputRefused { why: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::OutOfMemory { victim } if victim.is_empty() => f.write_str("out of memory"),
            Failure::OutOfMemory { victim } => write!(f, "out of memory ({victim} was killed)"),
            Failure::OutputOverQuota => f.write_str("output over quota"),
            Failure::OutputRefused { why } => write!(f, "output refused: {why}"),
        }
    }
}

impl BuildStatus {
    /// What went wrong, in one line for tables, or `None` for a success.
    pub fn detail(&self) -> Option<String> {
        match self {
            BuildStatus::Succeeded => None,
            BuildStatus::Failed {
                task,
                exit_code,
                reason: Some(reason),
            } => Some(format!("task {task} exited {exit_code}: {reason}")),
            BuildStatus::Failed {
                task, exit_code, ..
            } => Some(format!("task {task} exited {exit_code}")),
            BuildStatus::TimedOut => Some("timed out".into()),
            BuildStatus::Error { reason } => Some(reason.clone()),
        }
    }

    /// The word used in `--json` output and tables.
    pub fn word(&self) -> &'static str {
        match self {
            BuildStatus::Succeeded => "succeeded",
            BuildStatus::Failed { .. } => "failed",
            BuildStatus::TimedOut => "timed_out",
            BuildStatus::Error { .. } => "error",
        }
    }
}

/// One task's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub name: String,
    /// `None` when the task did not finish (timeout, crash).
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
}

/// Where the time went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From the grant to the VM's preparation: fetching the source and, if missing, the
    /// image. Added within v1: absent (0) from `barn run` and from older nodes.
    #[serde(default)]
    pub fetch_ms: u64,
    pub prepare_ms: u64,
    pub boot_ms: u64,
    pub run_ms: u64,
    pub collect_ms: u64,
    pub total_ms: u64,
}

/// A volunteer's signed result, sent to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildResult {
    pub job: JobId,
    pub lease: Option<LeaseId>,
    pub node: NodeId,
    pub status: BuildStatus,
    pub tasks: Vec<TaskOutcome>,
    pub manifest_root: ContentHash,
    pub manifest: Manifest,
    pub log_hash: ContentHash,
    pub log_size: u64,
    pub timings: Timings,
    pub image_hash: ContentHash,
    pub arch: String,
    pub accel: Accel,
    pub qemu_version: String,
    pub finished: u64,
    /// The variations this replica built under: dimension → value. Empty for the fixed
    /// environment. Added within v1: absent means empty.
    #[serde(default)]
    pub variation: BTreeMap<String, String>,
}

impl Message for BuildResult {
    const KIND: &'static str = "build-result";
    const MAX_SIZE: usize = MAX_RESPONSE;
}

/// Asks a peer for a blob's bytes from `offset` on, over a blob stream. Not signed: blobs
/// are public and verified by their hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    pub hash: ContentHash,
    pub offset: u64,
}

impl BlobRequest {
    /// The largest encoded request accepted.
    pub const MAX_SIZE: usize = 128;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SecretKey;

    pub(crate) fn sample_job(coordinator: NodeId) -> Job {
        Job {
            spec: JobSpec {
                image: "tiny-x86_64".into(),
                arch: "x86_64".into(),
                tasks: vec![Task {
                    name: "build".into(),
                    run: "echo hi".into(),
                }],
                env: BTreeMap::from([("A".to_string(), "b".to_string())]),
                artifacts: vec!["out/*".into()],
                resources: Resources::default(),
                timeout_secs: 600,
                replicas: 3,
                source_date_epoch: 1_700_000_000,
                tiebreak: false,
                vary: vec![],
            },
            image_hash: ContentHash::of(b"image"),
            source: ContentHash::of(b"src"),
            source_size: 3,
            coordinator,
            coordinator_addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            created: 1,
            expires: 2,
            nonce: serde_bytes::ByteArray::new([9; 16]),
        }
    }

    fn round_trip<T: Message + PartialEq + fmt::Debug + Clone>(msg: T, key: &SecretKey) {
        let signed = Signed::sign(msg.clone(), key);
        let back = Signed::<T>::from_bytes(&signed.to_bytes()).unwrap();
        assert_eq!(back.message(), &msg);
    }

    #[test]
    fn every_message_round_trips() {
        let key = SecretKey::generate();
        let node = key.node_id();
        let job = sample_job(node);
        let job_id = JobId::of(&Signed::sign(job.clone(), &key));
        round_trip(job, &key);
        round_trip(
            NodeAdvert {
                node,
                version: "0.1.0".into(),
                archs: vec![ArchInfo {
                    isa: "x86_64".into(),
                    endian: Endian::Little,
                    data_model: "lp64".into(),
                    accel: Accel::Tcg,
                }],
                cpus: 2,
                memory_bytes: 1 << 30,
                free_slots: 1,
                total_slots: 1,
                images: BTreeMap::from([("tiny-x86_64".to_string(), ContentHash::of(b"i"))]),
                addrs: vec![],
                time: 1,
                expires: 31,
                unavailable: vec![Unavailable::Paused, Unavailable::OverLoadLimit],
            },
            &key,
        );
        round_trip(
            Claim {
                job: job_id,
                node,
                accel: Accel::Tcg,
                time: 5,
                operator_cert: None,
            },
            &key,
        );
        let lease = LeaseId::random();
        round_trip(
            Grant {
                job: job_id,
                node,
                decision: GrantDecision::Granted {
                    lease,
                    expires: 9,
                    heartbeat_secs: 5,
                    variant: 0,
                },
                time: 5,
            },
            &key,
        );
        round_trip(
            Grant {
                job: job_id,
                node,
                decision: GrantDecision::Denied {
                    reason: "full".into(),
                    refusal: Some(crate::refusal::Refusal::Full),
                },
                time: 5,
            },
            &key,
        );
        round_trip(
            Heartbeat {
                job: job_id,
                lease,
                phase: Phase::Running,
                log_bytes: 10,
                time: 6,
            },
            &key,
        );
        round_trip(
            BuildResult {
                job: job_id,
                lease: Some(lease),
                node,
                status: BuildStatus::Failed {
                    task: "build".into(),
                    exit_code: 137,
                    reason: Some(Failure::OutOfMemory {
                        victim: "cc1".into(),
                    }),
                },
                tasks: vec![TaskOutcome {
                    name: "build".into(),
                    exit_code: Some(2),
                    duration_ms: 30,
                }],
                manifest_root: Manifest::default().root(),
                manifest: Manifest::default(),
                log_hash: ContentHash::of(b"log"),
                log_size: 3,
                timings: Timings::default(),
                image_hash: ContentHash::of(b"image"),
                arch: "x86_64".into(),
                accel: Accel::Tcg,
                qemu_version: "7.2".into(),
                finished: 7,
                variation: Default::default(),
            },
            &key,
        );
        let req = BlobRequest {
            hash: ContentHash::of(b"x"),
            offset: 5,
        };
        let bytes = crate::cbor::to_vec(&req);
        assert!(bytes.len() <= BlobRequest::MAX_SIZE);
        assert_eq!(
            crate::cbor::from_slice::<BlobRequest>(&bytes, BlobRequest::MAX_SIZE).unwrap(),
            req
        );
    }

    /// `NodeAdvert` as barn wrote and read it before `unavailable` was added.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct OldNodeAdvert {
        node: NodeId,
        version: String,
        archs: Vec<ArchInfo>,
        cpus: u32,
        memory_bytes: u64,
        free_slots: u32,
        total_slots: u32,
        images: BTreeMap<String, ContentHash>,
        addrs: Vec<String>,
        time: u64,
        expires: u64,
    }

    impl Message for OldNodeAdvert {
        const KIND: &'static str = "node-advert";
        const MAX_SIZE: usize = MAX_GOSSIP_MESSAGE;
    }

    fn old_advert(node: NodeId) -> OldNodeAdvert {
        OldNodeAdvert {
            node,
            version: "0.1.0".into(),
            archs: vec![],
            cpus: 2,
            memory_bytes: 1 << 30,
            free_slots: 1,
            total_slots: 1,
            images: BTreeMap::new(),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            time: 1,
            expires: 31,
        }
    }

    fn new_advert(old: &OldNodeAdvert, unavailable: Vec<Unavailable>) -> NodeAdvert {
        NodeAdvert {
            node: old.node,
            version: old.version.clone(),
            archs: old.archs.clone(),
            cpus: old.cpus,
            memory_bytes: old.memory_bytes,
            free_slots: old.free_slots,
            total_slots: old.total_slots,
            images: old.images.clone(),
            addrs: old.addrs.clone(),
            time: old.time,
            expires: old.expires,
            unavailable,
        }
    }

    #[test]
    fn an_old_reader_reads_a_new_advert_and_ignores_why_it_is_unavailable() {
        let key = SecretKey::generate();
        let old = old_advert(key.node_id());
        let new = new_advert(
            &old,
            vec![Unavailable::Paused, Unavailable::OutsideSchedule],
        );
        let bytes = Signed::sign(new, &key).to_bytes();
        let read = Signed::<OldNodeAdvert>::from_bytes(&bytes).unwrap();
        assert_eq!(read.message(), &old);
        // An available node leaves the field out: its advert is the old encoding itself.
        let available = Signed::sign(new_advert(&old, vec![]), &key);
        assert_eq!(
            available.envelope().payload,
            Signed::sign(old.clone(), &key).envelope().payload
        );
    }

    #[test]
    fn a_new_reader_takes_an_old_advert_as_available() {
        let key = SecretKey::generate();
        let old = old_advert(key.node_id());
        let bytes = Signed::sign(old.clone(), &key).to_bytes();
        let read = Signed::<NodeAdvert>::from_bytes(&bytes).unwrap();
        assert_eq!(read.message(), &new_advert(&old, vec![]));
        assert!(read.message().unavailable.is_empty());
    }

    /// `NodeAdvert` as a later barn may write it, with a reason this one does not know.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct FutureNodeAdvert {
        node: NodeId,
        version: String,
        archs: Vec<ArchInfo>,
        cpus: u32,
        memory_bytes: u64,
        free_slots: u32,
        total_slots: u32,
        images: BTreeMap<String, ContentHash>,
        addrs: Vec<String>,
        time: u64,
        expires: u64,
        unavailable: Vec<String>,
    }

    impl Message for FutureNodeAdvert {
        const KIND: &'static str = "node-advert";
        const MAX_SIZE: usize = MAX_GOSSIP_MESSAGE;
    }

    #[test]
    fn an_unknown_unavailability_reason_reads_as_other_not_as_a_broken_advert() {
        let key = SecretKey::generate();
        let o = old_advert(key.node_id());
        let future = FutureNodeAdvert {
            node: o.node,
            version: o.version.clone(),
            archs: o.archs.clone(),
            cpus: o.cpus,
            memory_bytes: o.memory_bytes,
            free_slots: o.free_slots,
            total_slots: o.total_slots,
            images: o.images.clone(),
            addrs: o.addrs.clone(),
            time: o.time,
            expires: o.expires,
            unavailable: vec!["on_battery".into(), "paused".into()],
        };
        let bytes = Signed::sign(future, &key).to_bytes();
        let read = Signed::<NodeAdvert>::from_bytes(&bytes).unwrap();
        assert_eq!(
            read.message().unavailable,
            vec![Unavailable::Other("on_battery".into()), Unavailable::Paused]
        );
        // And this barn writes its reasons as those plain words.
        let ours = Signed::sign(new_advert(&o, vec![Unavailable::OutsideSchedule]), &key);
        let as_future = Signed::<FutureNodeAdvert>::from_bytes(&ours.to_bytes()).unwrap();
        assert_eq!(as_future.message().unavailable, vec!["outside_schedule"]);
        for u in [
            Unavailable::Paused,
            Unavailable::OutsideSchedule,
            Unavailable::OverLoadLimit,
        ] {
            assert_eq!(Unavailable::from(u.word().to_string()), u);
        }
    }

    #[test]
    fn a_failure_without_a_reason_keeps_the_encoding_it_had_before_reasons() {
        // Old reader, new data: `reason: None` is left out, so the bytes are those of a
        // status written before the field existed. New reader, old data: decodes to None.
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case", tag = "status")]
        enum OldStatus {
            Failed { task: String, exit_code: i32 },
        }
        let old = crate::cbor::to_vec(&OldStatus::Failed {
            task: "build".into(),
            exit_code: 2,
        });
        let new = BuildStatus::Failed {
            task: "build".into(),
            exit_code: 2,
            reason: None,
        };
        assert_eq!(crate::cbor::to_vec(&new), old);
        assert_eq!(
            crate::cbor::from_slice::<BuildStatus>(&old, 1024).unwrap(),
            new
        );
        let over = BuildStatus::Failed {
            task: "output".into(),
            exit_code: 1,
            reason: Some(Failure::OutputOverQuota),
        };
        assert_eq!(
            over.detail().as_deref(),
            Some("task output exited 1: output over quota")
        );
    }

    #[test]
    fn job_id_is_hash_of_signed_payload() {
        let key = SecretKey::generate();
        let signed = Signed::sign(sample_job(key.node_id()), &key);
        assert_eq!(
            JobId::of(&signed).0,
            ContentHash::of(&signed.envelope().payload)
        );
        let shown = JobId::of(&signed).to_string();
        assert_eq!(shown.parse::<JobId>().unwrap(), JobId::of(&signed));
    }
}
