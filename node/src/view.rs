//! What the node shows of itself: the views the daemon builds, the local API serves as
//! JSON (`serde_json`) and the CLI prints, and the events it emits. A room of its own, so
//! that the daemon and the API do not import each other: both import this.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// This node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    /// Peer id.
    pub node: String,
    pub version: String,
    pub listen: Vec<String>,
    pub peers: usize,
    pub slots: u32,
    pub free_slots: u32,
    pub accel: String,
    /// name → `b3:` hash.
    pub images: BTreeMap<String, String>,
    /// The owner ran `barn pause` (kept across restarts). Absent from older nodes: `false`.
    #[serde(default)]
    pub paused: bool,
    /// Why the node claims no new job now (`paused`, `outside_schedule`,
    /// `over_load_limit`); empty: it takes work. Absent from older nodes: empty.
    #[serde(default)]
    pub unavailable: Vec<String>,
    /// Database writes that failed since the node started (each is in the log with its
    /// cause).
    #[serde(default)]
    pub store_errors: u64,
    /// What this node turned away since it started, by kind and reason (each also in the
    /// log). Absent from older nodes: empty.
    #[serde(default)]
    pub rejected: Vec<Rejection>,
    /// How peers reach this node: `public` (an address confirmed by AutoNAT or the
    /// owner's `node.external_addrs`), `relayed` (through a relay slot, behind NAT) or
    /// `unknown` (not yet learnt). Absent from older nodes: empty.
    #[serde(default)]
    pub reachability: String,
    /// Hole punches (DCUtR) that made a direct connection, and those that failed.
    #[serde(default)]
    pub holes_punched: u64,
    #[serde(default)]
    pub holes_failed: u64,
}

/// A count of messages, requests or connections turned away for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// `gossip` (rejected: its sender penalised), `gossip_ignored` (dropped, no penalty),
    /// `request` (an RPC refused), `peer` (a peer disconnected or turned away) or `blob`
    /// (a blob stream refused or dropped).
    pub kind: String,
    /// The gossip topic, for gossip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    pub reason: String,
    pub count: u64,
}

/// A node known from its adverts (or this node itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    pub is_self: bool,
    pub connected: bool,
    pub version: String,
    /// e.g. `x86_64 (tcg)`.
    pub archs: Vec<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub free_slots: u32,
    pub total_slots: u32,
    pub images: BTreeMap<String, String>,
    pub addrs: Vec<String>,
    /// Unix seconds of the last advert.
    pub last_seen: u64,
    pub agreements: u64,
    pub disagreements: u64,
    /// Why the node's last advert says it claims no new job (`paused`, `outside_schedule`,
    /// `over_load_limit`); empty: it takes work (also for an advert from an older barn).
    #[serde(default)]
    pub unavailable: Vec<String>,
}

/// `POST /api/pause` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PauseRequest {
    /// Also stop the jobs running now instead of letting them finish.
    #[serde(default)]
    pub stop: bool,
}

/// `POST /api/pause` and `POST /api/resume` answer: where the node stands afterwards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PauseView {
    pub paused: bool,
    /// `b3:` ids of the jobs this request stopped (`barn pause --stop`).
    pub stopped: Vec<String>,
    /// `b3:` ids of the jobs still running, which are let finish.
    pub running: Vec<String>,
    /// Why the node claims no new job now; empty: it takes work.
    pub unavailable: Vec<String>,
}

/// One job, in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// `b3:` job id.
    pub id: String,
    pub image: String,
    pub arch: String,
    pub replicas: u8,
    /// `open` (wants replicas), `running` (every replica leased), `complete` (every replica
    /// has a result), `expired`, or `seen` (announced by another coordinator).
    pub state: String,
    /// Results received: all, and succeeded.
    pub results: usize,
    pub succeeded: usize,
    pub created: u64,
    /// This node coordinates the job.
    pub mine: bool,
    /// The submitter's project key.
    pub submitter: String,
    /// Why the job is not settling yet, for people ("waiting for 1 more volunteer for
    /// x86_64"); `None` when nothing is missing.
    #[serde(default)]
    pub waiting: Option<String>,
    /// The settled verdict's word, once the coordinator signed a settlement: the
    /// coordinator's, without the local trust policy (`barn verify` applies it).
    #[serde(default)]
    pub verdict: Option<String>,
}

/// A lease, as its coordinator sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    pub node: String,
    /// Unix milliseconds of the grant, when this coordinator saw it (not kept across restarts).
    #[serde(default)]
    pub granted_ms: Option<u64>,
    /// `granted`, `running`, `committed`, `done`, `settled` (done, in a settled job),
    /// `expired` or `failed`.
    pub state: String,
    pub granted: u64,
    pub expires: u64,
}

/// One node's signed result, with the fields people look at and the envelope itself so
/// that a verifier checks the signature without trusting the daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultView {
    pub node: String,
    /// `succeeded`, `failed`, `timed_out`, `error`.
    pub status: String,
    /// Failure detail: the task and exit code, or the infrastructure error.
    pub detail: Option<String>,
    pub manifest_root: String,
    pub log_hash: String,
    pub log_size: u64,
    pub total_ms: u64,
    pub boot_ms: u64,
    pub run_ms: u64,
    pub accel: String,
    pub image_hash: String,
    /// The signed `build-result` envelope, hex.
    pub envelope: String,
    /// The builder's signature over its provenance attestation, hex, if it sent one.
    #[serde(default)]
    pub provenance_sig: Option<String>,
    pub received: u64,
    /// It arrived after the job settled: kept, never counted.
    #[serde(default)]
    pub late: bool,
}

/// Everything about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    pub job: JobView,
    /// Unix milliseconds when this node accepted the submission (not kept across restarts).
    #[serde(default)]
    pub submitted_ms: Option<u64>,
    /// The signed `job` envelope, hex.
    pub envelope: String,
    pub leases: Vec<LeaseView>,
    /// Every stored result, settled or not: only those the settlement names count.
    pub results: Vec<ResultView>,
    /// The coordinator's signed `settlement` envelope, hex, once the job is settled.
    #[serde(default)]
    pub settlement: Option<String>,
}

/// `POST /api/submit` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The signed `job` envelope, hex. Its source blob must already be in this node's store.
    pub envelope: String,
}

/// `POST /api/submit` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub id: String,
}

/// `POST /api/fetch` body: fetch a blob into this node's store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchRequest {
    /// `b3:` hash.
    pub hash: String,
    /// Peer id to fetch from; `None`: any node that has it (this node first).
    pub node: Option<String>,
}

/// `POST /api/fetch` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Where the verified blob is, in this node's store.
    pub path: String,
    pub size: u64,
}

/// An error answer (any non-2xx status).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Something that happened on this node, as `GET /api/events` streams it (server-sent
/// events, the event name is the variant's name). Ids are `b3:` job ids and peer ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// This node took a job on to coordinate.
    JobSubmitted { job: String },
    /// A job announced by another coordinator was heard for the first time.
    JobAnnounced { job: String },
    /// This node, as coordinator, granted a lease.
    LeaseGranted { job: String, node: String },
    /// A lease lapsed without heartbeats.
    LeaseExpired { job: String, node: String },
    /// This node, as volunteer, started a leased job.
    JobStarted { job: String },
    /// This node, as volunteer, finished a job.
    JobFinished { job: String, status: String },
    /// This node, as coordinator, took a replica's result.
    ResultReceived {
        job: String,
        node: String,
        status: String,
        manifest_root: String,
    },
    /// A replica committed to its result (its lease is kept until settlement).
    LeaseCommitted { job: String, node: String },
    /// A result came after its job settled: kept, never counted.
    ResultLate { job: String, node: String },
    /// The job's coordinator signed its settlement: the verdict.
    JobSettled { job: String, verdict: String },
}

impl Event {
    /// The server-sent event's name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::JobSubmitted { .. } => "job_submitted",
            Event::JobAnnounced { .. } => "job_announced",
            Event::LeaseGranted { .. } => "lease_granted",
            Event::LeaseExpired { .. } => "lease_expired",
            Event::JobStarted { .. } => "job_started",
            Event::JobFinished { .. } => "job_finished",
            Event::ResultReceived { .. } => "result_received",
            Event::LeaseCommitted { .. } => "lease_committed",
            Event::ResultLate { .. } => "result_late",
            Event::JobSettled { .. } => "job_settled",
        }
    }
}
