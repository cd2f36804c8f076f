//! The node's actor: the one task that owns the swarm, the database and both schedulers.
//!
//! Every loop turn handles one thing, in this order (`biased`): shutdown, a finished job
//! task, an internal message from a job task, a command from the API, a swarm event, the
//! one-second tick. Each becomes a call to a mostly synchronous handler; anything slow
//! (VMs, blob transfers) runs in its own task and reports back through `internal`.
//!
//! Once a second, and at once on `barn pause`/`barn resume`, the owner's conditions (the
//! paused flag, `node.schedule`, `node.max_load`) are read into
//! [`sched::availability`](crate::sched::availability); a change reaches the volunteer's
//! scheduler and is advertised at once.
//!
//! ```text
//!  gossip job ─▶ Volunteer::on_job ─▶ Claim ─rpc─▶ coordinator: Coordinator::on_claim
//!                                                     │ Grant
//!  Start ◀──────── Volunteer::on_grant ◀──────────────┘
//!    └─▶ work task: fetch source+image ─▶ VM ─▶ signed result ─rpc─▶ coordinator
//!             └─ phases ─▶ heartbeats ─rpc─▶ coordinator: Coordinator::on_heartbeat
//! ```

mod coordinate;
mod gossip;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Result;
use barn_protocol::message::*;
use barn_protocol::{ContentHash, NodeId, SecretKey, Signed, SubmitterId};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handle::Command;
use super::owner::{self, PauseFile};
use super::work::{self, Internal, WorkOutcome};
use super::{Options, now};
use crate::api::types::Event;
use crate::api::types::PauseView;
use crate::config::Config;
use crate::dirs::Dirs;
use crate::net::behaviour::{Behaviour, BehaviourEvent};
use crate::net::codec::{Request, Response};
use crate::net::swarm::{TOPIC_ADVERTS, TOPIC_JOBS, topic};
use crate::runner::Runner;
use crate::sched::availability::{self, Conditions};
use crate::sched::coordinator::{self, Lease, LeaseState, Reputation};
use crate::sched::volunteer::Action;
use crate::sched::{Capabilities, Coordinator, Trust, Volunteer};
use crate::store::ImageStore;
use crate::store::blobs::BlobStore;
use crate::store::db::{self, Db, JobRecord, ResultRecord};

/// What the actor is built from.
pub struct Parts {
    /// What happens, for `GET /api/events`.
    pub events: tokio::sync::broadcast::Sender<crate::api::types::Event>,
    pub key: SecretKey,
    pub cfg: Config,
    pub opts: Options,
    pub dirs: Dirs,
    pub db: Db,
    pub blobs: BlobStore,
    pub images: ImageStore,
    pub runner: Runner,
    pub accel: Accel,
    pub swarm: Swarm<Behaviour>,
    pub control: libp2p_stream::Control,
    /// The owner left the node paused (read from the data dir at start).
    pub paused: bool,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("node", &self.key.node_id())
            .field("accel", &self.accel)
            .finish_non_exhaustive()
    }
}

/// An RPC we sent and await the answer to.
#[derive(Debug)]
enum Pending {
    Claim(JobId),
    Heartbeat,
    Commit(JobId),
    Result(JobId),
}

/// A finished job's result on its way to the coordinator: first the commitment, then,
/// once the coordinator has every replica's commitment, the result itself.
#[derive(Debug, Clone)]
struct Outgoing {
    job: JobId,
    peer: PeerId,
    commit: Vec<u8>,
    result: Vec<u8>,
    committed: bool,
    retry_at: u64,
    in_flight: bool,
}

/// The prefix of a refusal that means "not every replica has committed: try again".
const NOT_YET: &str = "not-yet: ";

/// A job this node runs as a volunteer.
#[derive(Debug)]
struct Running {
    lease: LeaseId,
    coordinator: PeerId,
    phase: Phase,
    log_bytes: u64,
    /// This job's own token (a child of the node's): `barn pause --stop` cancels it.
    cancel: CancellationToken,
}

/// The actor.
pub struct Actor {
    p: Parts,
    me: NodeId,
    volunteer: Volunteer,
    coordinator: Coordinator,
    pending: HashMap<OutboundRequestId, Pending>,
    running: BTreeMap<JobId, Running>,
    tasks: JoinSet<WorkOutcome>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    /// Signed results not yet acknowledged by their coordinator: (job, coordinator, bytes, retry at).
    outbox: Vec<Outgoing>,
    last_advert: u64,
    last_announce: u64,
    last_heartbeat: u64,
    /// Millisecond times of submissions and grants, for dispatch-latency figures.
    pub(super) submitted_ms: HashMap<JobId, u64>,
    pub(super) granted_ms: HashMap<LeaseId, u64>,
    /// The node's shutdown; each job task gets a child.
    cancel: CancellationToken,
    /// Builders' provenance signatures from their commitments, until their results arrive.
    provenance: HashMap<(JobId, NodeId), [u8; 64]>,
    /// The owner's `barn pause`, and where it is kept across restarts.
    paused: bool,
    pause_file: PauseFile,
    /// The load average could not be read once already (said once, not every second).
    load_unreadable: bool,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("me", &self.me)
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl Actor {
    pub fn new(p: Parts) -> Self {
        let me = p.key.node_id();
        let caps = Capabilities {
            archs: vec!["x86_64".into()],
            memory_bytes: p.cfg.max_memory_bytes,
            // A node that cannot confine QEMU claims nothing (its runner refuses jobs).
            slots: if p.runner.refusal().is_some() {
                0
            } else {
                p.cfg.slots
            },
            max_disk_bytes: p.cfg.max_disk_bytes,
            max_timeout_secs: p.cfg.max_timeout.as_secs(),
        };
        let trust = Trust {
            submitters: p.cfg.trusted.iter().copied().collect(),
            accept_any: p.cfg.accept_any,
        };
        let (internal_tx, internal_rx) = mpsc::channel(256);
        let pause_file = PauseFile::new(&p.dirs.data);
        let mut actor = Self {
            paused: p.paused,
            pause_file,
            load_unreadable: false,
            volunteer: Volunteer::new(me, caps, trust),
            coordinator: Coordinator::new(),
            me,
            p,
            pending: HashMap::new(),
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            internal_tx,
            internal_rx,
            outbox: Vec::new(),
            last_advert: 0,
            last_announce: 0,
            last_heartbeat: 0,
            submitted_ms: HashMap::new(),
            granted_ms: HashMap::new(),
            cancel: CancellationToken::new(),
            provenance: HashMap::new(),
        };
        actor.restore();
        actor
    }

    /// Picks up the jobs this node coordinates, with their leases, after a restart.
    fn restore(&mut self) {
        let Ok(jobs) = self.p.db.list_jobs_in_state(db::JobState::Open) else {
            return;
        };
        for rec in jobs.into_iter().filter(|j| j.coordinated) {
            let Ok(signed) = Signed::<Job>::from_bytes(&rec.envelope) else {
                continue;
            };
            let leases = self
                .p
                .db
                .list_leases(&rec.id)
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, l)| Lease {
                    // Leases are listed in grant order, so the ordinal is the variant.
                    variant: u32::try_from(i).unwrap_or(u32::MAX),
                    id: l.id,
                    node: l.node,
                    granted: l.granted_at,
                    expires: l.expires,
                    state: match l.state {
                        db::LeaseState::Active => LeaseState::Active,
                        db::LeaseState::Completed => LeaseState::Done,
                        db::LeaseState::Expired => LeaseState::Expired,
                        _ => LeaseState::Failed,
                    },
                });
            info!(job = %rec.id.short(), "resuming coordination");
            self.coordinator
                .add_job(rec.id, signed.message().clone(), leases.collect(), now());
            // Results already taken stand for their commitments, which lived only in memory.
            for r in self.p.db.list_results(&rec.id).unwrap_or_default() {
                if let Ok(res) = Signed::<BuildResult>::from_bytes(&r.envelope) {
                    let digest = Commitment::digest_of(&r.node, &res.message().manifest_root);
                    self.coordinator.restore_commitment(&rec.id, r.node, digest);
                }
            }
        }
    }

    /// The loop.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.cancel = cancel.clone();
        self.update_availability(now());
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(outcome) => self.on_work_done(outcome),
                    Err(e) => warn!("a job task failed: {e}"),
                },
                Some(msg) = self.internal_rx.recv() => self.on_internal(msg),
                Some(cmd) = commands.recv() => self.on_command(cmd),
                // Timers before network events: a flood of gossip must not delay lease
                // expiry or heartbeats.
                _ = tick.tick() => self.on_tick(),
                event = self.p.swarm.select_next_some() => self.on_swarm(event),
            }
        }
        info!(
            "shutting down: cancelling {} running job(s)",
            self.running.len()
        );
        // Each job's token is a child of `cancel`: its VM gets the polite stop, then the
        // task ends; whatever is still running after the grace period is aborted.
        let tasks = &mut self.tasks;
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        self.tasks.shutdown().await;
        Ok(())
    }

    // ---- ticks ----

    fn on_tick(&mut self) {
        let now = now();
        for (job, lease) in self.coordinator.tick(now) {
            info!(job = %job.short(), node = %lease.node.short(), "lease expired without heartbeat");
            self.emit(Event::LeaseExpired {
                job: job.to_string(),
                node: lease.node.to_string(),
            });
            let _ = self
                .p
                .db
                .update_lease(&lease.id, db::LeaseState::Expired, lease.expires);
        }
        self.update_availability(now);
        let actions = self.volunteer.poll(now);
        self.carry_out(actions);
        if now >= self.last_heartbeat + coordinator::HEARTBEAT_SECS {
            self.last_heartbeat = now;
            self.send_heartbeats(now);
        }
        if now >= self.last_announce + self.p.cfg.announce_interval.as_secs() {
            self.last_announce = now;
            for id in self.coordinator.open_jobs(now) {
                self.announce(&id);
            }
        }
        if now >= self.last_advert + self.p.cfg.advert_interval.as_secs() {
            self.advertise();
        }
        self.flush_outbox(now);
    }

    fn advertise(&mut self) {
        let now = now();
        self.last_advert = now;
        let images = self.p.images.list().unwrap_or_default();
        let advert = NodeAdvert {
            node: self.me,
            version: env!("CARGO_PKG_VERSION").to_string(),
            archs: vec![ArchInfo {
                isa: "x86_64".into(),
                endian: Endian::Little,
                data_model: "lp64".into(),
                accel: self.p.accel,
            }],
            cpus: self.p.cfg.max_cpus,
            memory_bytes: self.p.cfg.max_memory_bytes,
            free_slots: self.volunteer.free_slots(),
            total_slots: self.p.cfg.slots,
            images: images.into_iter().map(|i| (i.name, i.hash)).collect(),
            addrs: self.p.swarm.listeners().map(|a| a.to_string()).collect(),
            time: now,
            expires: now + 3 * self.p.cfg.advert_interval.as_secs(),
            unavailable: self.volunteer.unavailable().to_vec(),
        };
        let bytes = Signed::sign(advert, &self.p.key).to_bytes();
        let _ = self.p.db.upsert_node_advert(&self.me, &bytes, now);
        self.publish(TOPIC_ADVERTS, bytes);
    }

    /// Reads the owner's conditions; a change goes to the volunteer's scheduler (which may
    /// claim at once) and into an advert at once, so that coordinators see it.
    fn update_availability(&mut self, now: u64) {
        let load = match self.p.cfg.max_load {
            None => None,
            Some(_) => match owner::load_average() {
                Ok(l) => Some(l),
                Err(e) => {
                    if !self.load_unreadable {
                        warn!("node.max_load does not apply: {:#}", anyhow::Error::new(e));
                        self.load_unreadable = true;
                    }
                    None
                }
            },
        };
        let why = availability::unavailable(&Conditions {
            paused: self.paused,
            schedule: self.p.cfg.schedule.as_ref(),
            local: owner::local_now(),
            max_load: self.p.cfg.max_load,
            load,
        });
        if why.as_slice() == self.volunteer.unavailable() {
            return;
        }
        if why.is_empty() {
            info!("taking work");
        } else {
            let words: Vec<String> = why.iter().map(|u| u.to_string()).collect();
            info!(load = ?load, "not taking work: {}", words.join(", "));
        }
        let actions = self.volunteer.set_unavailable(why, now);
        self.carry_out(actions);
        self.advertise();
    }

    /// `barn pause` (`stop`: `--stop`) and `barn resume`.
    fn set_paused(&mut self, paused: bool, stop: bool) -> Result<PauseView, String> {
        let now = now();
        self.pause_file
            .store(paused, now)
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        self.paused = paused;
        let mut stopped = Vec::new();
        if paused && stop {
            for (job, r) in &self.running {
                if !r.cancel.is_cancelled() {
                    info!(job = %job.short(), "stopped by the owner (barn pause --stop)");
                    r.cancel.cancel();
                    stopped.push(job.to_string());
                }
            }
        }
        info!(
            paused,
            stopped = stopped.len(),
            "the owner changed the paused flag"
        );
        self.update_availability(now);
        Ok(PauseView {
            paused,
            running: self
                .running
                .iter()
                .filter(|(_, r)| !r.cancel.is_cancelled())
                .map(|(job, _)| job.to_string())
                .collect(),
            stopped,
            unavailable: self.unavailable_words(),
        })
    }

    /// Why no new job is claimed now, as words (empty: the node takes work).
    pub(super) fn unavailable_words(&self) -> Vec<String> {
        self.volunteer
            .unavailable()
            .iter()
            .map(|u| u.word().to_string())
            .collect()
    }

    pub(super) fn paused(&self) -> bool {
        self.paused
    }

    fn publish(&mut self, name: &str, bytes: Vec<u8>) {
        if let Err(e) = self
            .p
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic(name), bytes)
        {
            debug!(topic = name, "gossip not sent: {e}");
        }
    }

    fn announce(&mut self, id: &JobId) {
        let Ok(Some(rec)) = self.p.db.get_job(id) else {
            return;
        };
        let ann = JobAnnounce {
            job: rec.envelope,
            sent: now_ms(),
        };
        self.publish(TOPIC_JOBS, barn_protocol::cbor::to_vec(&ann));
    }

    fn send_heartbeats(&mut self, now: u64) {
        let beats: Vec<_> = self
            .running
            .iter()
            .map(|(job, r)| (*job, r.lease, r.coordinator, r.phase, r.log_bytes))
            .collect();
        for (job, lease, peer, phase, log_bytes) in beats {
            let hb = Heartbeat {
                job,
                lease,
                phase,
                log_bytes,
                time: now,
            };
            let bytes = Signed::sign(hb, &self.p.key).to_bytes();
            if peer == *self.p.swarm.local_peer_id() {
                // Coordinating our own job: no need to go through the network.
                let _ = self.coordinator.on_heartbeat(&job, &lease, self.me, now);
                continue;
            }
            let id = self
                .p
                .swarm
                .behaviour_mut()
                .rpc
                .send_request(&peer, Request::Heartbeat(bytes));
            self.pending.insert(id, Pending::Heartbeat);
        }
    }

    fn flush_outbox(&mut self, now: u64) {
        let due: Vec<usize> = (0..self.outbox.len())
            .filter(|&i| !self.outbox[i].in_flight && self.outbox[i].retry_at <= now)
            .collect();
        for i in due {
            self.send_outgoing(i);
        }
    }

    /// Sends the commitment or, once committed, the result of outbox entry `i`.
    fn send_outgoing(&mut self, i: usize) {
        let o = self.outbox[i].clone();
        if o.peer == *self.p.swarm.local_peer_id() {
            // Coordinating our own job: the same checks, without the network.
            let outcome = if o.committed {
                self.accept_result(&o.result, self.me)
            } else {
                self.accept_commit(&o.commit, self.me)
            };
            self.on_outgoing_answer(o.job, !o.committed, outcome);
            return;
        }
        let (req, pending) = if o.committed {
            (Request::Result(o.result), Pending::Result(o.job))
        } else {
            (Request::Commit(o.commit), Pending::Commit(o.job))
        };
        let id = self.p.swarm.behaviour_mut().rpc.send_request(&o.peer, req);
        self.pending.insert(id, pending);
        self.outbox[i].in_flight = true;
    }

    /// What the coordinator said to a commitment (`commit`) or a result.
    fn on_outgoing_answer(&mut self, job: JobId, commit: bool, outcome: Result<(), String>) {
        let now = now();
        let Some(i) = self.outbox.iter().position(|o| o.job == job) else {
            return;
        };
        self.outbox[i].in_flight = false;
        match outcome {
            Ok(()) if commit => {
                self.outbox[i].committed = true;
                self.send_outgoing(i);
            }
            Ok(()) => {
                // Taken. The coordinator publishes the results once the job is settled.
                self.outbox.remove(i);
            }
            Err(why) if why.starts_with(NOT_YET) => self.outbox[i].retry_at = now + 2,
            Err(why) if !commit && why.contains("no commitment") => {
                // The coordinator restarted and forgot our commitment: commit again.
                self.outbox[i].committed = false;
                self.outbox[i].retry_at = now;
            }
            Err(why) => {
                let what = if commit { "commitment" } else { "result" };
                warn!(job = %job.short(), "the coordinator refused our {what}: {why}");
                self.outbox.remove(i);
            }
        }
    }

    /// The reputation this node holds of `node`.
    fn reputation(&self, node: &NodeId) -> Reputation {
        match self.p.db.get_node(node) {
            Ok(Some(n)) => Reputation {
                agreements: n.agreements,
                disagreements: n.disagreements,
            },
            _ => Reputation::default(),
        }
    }

    // ---- volunteer actions ----

    fn carry_out(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Claim { job, coordinator } => self.claim(job, coordinator),
                Action::Start {
                    job,
                    lease,
                    variant,
                } => self.start(job, lease, variant),
            }
        }
    }

    fn claim(&mut self, job: JobId, coordinator: NodeId) {
        let now = now();
        let claim = Claim {
            job,
            node: self.me,
            accel: self.p.accel,
            time: now,
            operator_cert: None,
        };
        let peer = coordinator.to_peer_id();
        if peer == *self.p.swarm.local_peer_id() {
            let decision = self
                .coordinator
                .on_claim(&job, self.me, self.reputation(&self.me), now);
            self.record_grant(&job, self.me, &decision, now);
            let actions = self.volunteer.on_grant(&job, &decision, now);
            self.carry_out(actions);
            return;
        }
        if let Ok(Some(rec)) = self.p.db.get_job(&job)
            && let Ok(signed) = Signed::<Job>::from_bytes(&rec.envelope)
        {
            for a in &signed.message().coordinator_addrs {
                if let Ok(addr) = a.parse::<Multiaddr>() {
                    self.p.swarm.add_peer_address(peer, addr);
                }
            }
        }
        debug!(job = %job.short(), "claiming");
        let bytes = Signed::sign(claim, &self.p.key).to_bytes();
        let id = self
            .p
            .swarm
            .behaviour_mut()
            .rpc
            .send_request(&peer, Request::Claim(bytes));
        self.pending.insert(id, Pending::Claim(job));
    }

    fn start(&mut self, job: JobId, lease: LeaseId, variant: u32) {
        let Ok(Some(rec)) = self.p.db.get_job(&job) else {
            return;
        };
        let Ok(signed) = Signed::<Job>::from_bytes(&rec.envelope) else {
            return;
        };
        let coordinator = signed.message().coordinator.to_peer_id();
        info!(job = %job.short(), lease = %lease, "granted: starting");
        self.emit(Event::JobStarted {
            job: job.to_string(),
        });
        let cancel = self.cancel.child_token();
        self.running.insert(
            job,
            Running {
                lease,
                coordinator,
                phase: Phase::Fetching,
                log_bytes: 0,
                cancel: cancel.clone(),
            },
        );
        let ctx = work::Context {
            key: self.p.key.clone(),
            blobs: self.p.blobs.clone(),
            images: self.p.images.clone(),
            runner: self.p.runner.clone(),
            control: self.p.control.clone(),
            accel: self.p.accel,
            out_dir: self.p.dirs.data.join("jobs").join(job.0.to_hex()),
            internal: self.internal_tx.clone(),
            fault_alter_outputs: self.p.opts.fault_alter_outputs,
            cancel,
        };
        let job_msg = signed.message().clone();
        self.tasks
            .spawn(work::run(ctx, job, lease, variant, job_msg));
        self.advertise();
    }

    fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::Progress {
                job,
                phase,
                log_bytes,
            } => {
                if let Some(r) = self.running.get_mut(&job) {
                    r.phase = phase;
                    r.log_bytes = log_bytes;
                }
            }
        }
    }

    fn on_work_done(&mut self, out: WorkOutcome) {
        let now = now();
        let Some(r) = self.running.remove(&out.job) else {
            return;
        };
        let bytes = out.result.to_bytes();
        let res = out.result.message();
        info!(job = %out.job.short(), status = res.status.word(), root = %res.manifest_root.short(), "finished");
        self.emit(Event::JobFinished {
            job: out.job.to_string(),
            status: res.status.word().into(),
        });
        let _ = self.p.db.insert_result(&ResultRecord {
            job: out.job,
            node: self.me,
            envelope: bytes.clone(),
            received_at: now,
        });
        // The builder's own signature over its provenance attestation travels with the
        // commitment, so that anyone can export a provenance signed by the node that built.
        let provenance_sig = self
            .p
            .db
            .get_job(&out.job)
            .ok()
            .flatten()
            .and_then(|rec| Signed::<Job>::from_bytes(&rec.envelope).ok())
            .and_then(|job| {
                crate::verify::attest::provenance_signature(&job, &out.result, &self.p.key).ok()
            });
        if let Some(sig) = &provenance_sig {
            let _ = self.p.db.set_result_provenance(&out.job, &self.me, sig);
        }
        let commitment = Commitment {
            job: out.job,
            lease: r.lease,
            node: self.me,
            digest: Commitment::digest_of(&self.me, &res.manifest_root),
            time: now,
            provenance_sig: provenance_sig.map(serde_bytes::ByteArray::new),
        };
        let commit = Signed::sign(commitment, &self.p.key).to_bytes();
        self.outbox.push(Outgoing {
            job: out.job,
            peer: r.coordinator,
            commit,
            result: bytes,
            committed: false,
            retry_at: now,
            in_flight: false,
        });
        let last = self.outbox.len() - 1;
        self.send_outgoing(last);
        let actions = self.volunteer.on_finished(&out.job, now);
        self.carry_out(actions);
        self.advertise();
    }

    fn on_request(&mut self, peer: PeerId, req: Request) -> Response {
        let _span = tracing::debug_span!("peer", peer = %peer).entered();
        let sender = match NodeId::from_peer_id(&peer) {
            Ok(n) => n,
            Err(e) => return Response::Rejected(e.to_string()),
        };
        let answer = |r: Result<(), String>| match r {
            Ok(()) => Response::Ack,
            Err(e) => Response::Rejected(e),
        };
        match &req {
            Request::Claim(b) => self.on_claim(peer, b),
            Request::Heartbeat(b) => self.on_heartbeat(peer, b),
            Request::Commit(b) => answer(self.accept_commit(b, sender)),
            Request::Result(b) => answer(self.accept_result(b, sender)),
        }
    }

    fn on_response(&mut self, peer: PeerId, id: OutboundRequestId, resp: Response) {
        let _span = tracing::debug_span!("peer", peer = %peer).entered();
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        let now = now();
        match (pending, resp) {
            (Pending::Claim(job), Response::Grant(bytes)) => {
                let decision = match Signed::<Grant>::from_bytes(&bytes) {
                    Ok(g)
                        if g.signer().to_peer_id() == peer
                            && g.message().job == job
                            && g.message().node == self.me =>
                    {
                        g.message().decision.clone()
                    }
                    Ok(_) => GrantDecision::Denied {
                        reason: "grant from the wrong coordinator or for another job".into(),
                        refusal: None,
                    },
                    Err(e) => GrantDecision::Denied {
                        reason: format!("bad grant: {e}"),
                        refusal: None,
                    },
                };
                if let GrantDecision::Denied { reason, .. } = &decision {
                    debug!(job = %job.short(), "claim denied: {reason}");
                }
                let actions = self.volunteer.on_grant(&job, &decision, now);
                self.carry_out(actions);
            }
            (Pending::Claim(job), other) => {
                let actions = self
                    .volunteer
                    .on_claim_failed(&job, format!("{other:?}"), now);
                self.carry_out(actions);
            }
            (Pending::Commit(job), Response::Ack) => self.on_outgoing_answer(job, true, Ok(())),
            (Pending::Commit(job), Response::Rejected(why)) => {
                self.on_outgoing_answer(job, true, Err(why))
            }
            (Pending::Result(job), Response::Ack) => self.on_outgoing_answer(job, false, Ok(())),
            (Pending::Result(job), Response::Rejected(why)) => {
                self.on_outgoing_answer(job, false, Err(why))
            }
            (Pending::Heartbeat, Response::Rejected(why)) => debug!("heartbeat refused: {why}"),
            _ => {}
        }
    }

    fn on_outbound_failure(&mut self, id: OutboundRequestId, error: String) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match pending {
            Pending::Claim(job) => {
                debug!(job = %job.short(), "claim failed: {error}");
                let actions = self.volunteer.on_claim_failed(&job, error, now());
                self.carry_out(actions);
            }
            Pending::Commit(job) | Pending::Result(job) => {
                // The coordinator is away: keep the result and try again later.
                debug!(job = %job.short(), "could not deliver to the coordinator: {error}");
                if let Some(o) = self.outbox.iter_mut().find(|o| o.job == job) {
                    o.in_flight = false;
                    o.retry_at = now() + 5;
                }
            }
            Pending::Heartbeat => {}
        }
    }

    // ---- swarm ----

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.last_advert = 0;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.on_gossip(propagation_source, message_id, message);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                topic: t,
                ..
            })) => {
                // A new peer hears the open jobs and this node at once, not at the next interval.
                if t.as_str() == TOPIC_JOBS {
                    self.last_announce = 0;
                } else if t.as_str() == TOPIC_ADVERTS {
                    self.last_advert = 0;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let resp = self.on_request(peer, request);
                    if self
                        .p
                        .swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, resp)
                        .is_err()
                    {
                        debug!(%peer, "response not sent: the stream closed");
                    }
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => self.on_response(peer, request_id, response),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                },
            )) => {
                self.on_outbound_failure(request_id, error.to_string());
            }
            #[cfg(feature = "mdns")]
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(libp2p::mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    debug!(%peer, %addr, "found on the local network");
                    self.p
                        .swarm
                        .behaviour_mut()
                        .add_peer_address(&peer, addr.clone());
                    self.p.swarm.add_peer_address(peer, addr);
                    if !self.p.swarm.is_connected(&peer) {
                        let _ = self.p.swarm.dial(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                self.p.swarm.behaviour_mut().on_identify(&peer_id, &info);
            }
            _ => {}
        }
    }

    // ---- API commands ----

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(super::views::status(self));
            }
            Command::Nodes(reply) => {
                let _ = reply.send(super::views::nodes(self));
            }
            Command::Jobs(reply) => {
                let _ = reply.send(super::views::jobs(self));
            }
            Command::Job(id, reply) => {
                let _ = reply.send(super::views::job(self, &id));
            }
            Command::Submit(bytes, reply) => {
                let _ = reply.send(self.submit(&bytes));
            }
            Command::Fetch { hash, node, reply } => self.fetch(hash, node, reply),
            Command::Pause { stop, reply } => {
                let _ = reply.send(self.set_paused(true, stop));
            }
            Command::Resume(reply) => {
                let _ = reply.send(self.set_paused(false, false));
            }
        }
    }

    fn submit(&mut self, bytes: &[u8]) -> Result<String, String> {
        let signed = Signed::<Job>::from_bytes(bytes).map_err(|e| e.to_string())?;
        barn_protocol::jobfile::validate(&signed.message().spec)?;
        let job = signed.message().clone();
        if job.coordinator != self.me {
            return Err(format!(
                "the job names {} as its coordinator, not this node ({})",
                job.coordinator, self.me
            ));
        }
        if !self.p.blobs.has(&job.source) {
            return Err(format!(
                "the source {} is not in this node's blob store",
                job.source
            ));
        }
        work::ensure_image_blob(&self.p.images, &self.p.blobs, &job.image_hash)
            .map_err(|e| format!("{e:#}"))?;
        let id = JobId::of(&signed);
        self.submitted_ms.insert(id, now_ms());
        let rec = JobRecord {
            id,
            envelope: bytes.to_vec(),
            submitter: SubmitterId(signed.signer()),
            state: db::JobState::Open,
            created: job.created,
            expires: job.expires,
            coordinated: true,
        };
        self.p.db.insert_job(&rec).map_err(|e| e.to_string())?;
        info!(job = %id.short(), replicas = job.spec.replicas, "coordinating a new job");
        self.emit(Event::JobSubmitted {
            job: id.to_string(),
        });
        self.coordinator.add_job(id, job.clone(), vec![], now());
        self.announce(&id);
        // This node may volunteer for its own job too.
        let actions = self
            .volunteer
            .on_job(id, job, SubmitterId(signed.signer()), now());
        self.carry_out(actions);
        Ok(id.to_string())
    }

    fn fetch(
        &mut self,
        hash: ContentHash,
        node: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<crate::api::types::FetchResponse, String>>,
    ) {
        let blobs = self.p.blobs.clone();
        let peers: Vec<PeerId> = match node {
            Some(n) => match n.parse::<PeerId>() {
                Ok(p) => vec![p],
                Err(e) => {
                    let _ = reply.send(Err(format!("{n:?} is not a peer id: {e}")));
                    return;
                }
            },
            None => self.p.swarm.connected_peers().copied().collect(),
        };
        for p in &peers {
            if *p != *self.p.swarm.local_peer_id() && !self.p.swarm.is_connected(p) {
                let _ = self.p.swarm.dial(*p);
            }
        }
        let local = *self.p.swarm.local_peer_id();
        let control = self.p.control.clone();
        tokio::spawn(async move {
            let result = work::fetch_from_any(
                control,
                &blobs,
                hash,
                peers.into_iter().filter(|p| *p != local).collect(),
                work::MAX_IMAGE,
            )
            .await;
            let _ = reply.send(result.map(|(path, size)| crate::api::types::FetchResponse {
                path: path.display().to_string(),
                size,
            }));
        });
    }

    /// Tells event subscribers (the API's `/api/events`); nobody listening is fine.
    pub(super) fn emit(&self, event: Event) {
        let _ = self.p.events.send(event);
    }

    // ---- accessors for views ----

    pub(super) fn parts(&self) -> &Parts {
        &self.p
    }
    pub(super) fn me(&self) -> NodeId {
        self.me
    }
    pub(super) fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }
    pub(super) fn volunteer(&self) -> &Volunteer {
        &self.volunteer
    }
    pub(super) fn is_connected(&self, peer: &PeerId) -> bool {
        self.p.swarm.is_connected(peer)
    }
    pub(super) fn peer_count(&self) -> usize {
        self.p.swarm.connected_peers().count()
    }
    pub(super) fn listen_addrs(&self) -> Vec<String> {
        self.p.swarm.listeners().map(|a| a.to_string()).collect()
    }
}

/// Signed requests carry their time; one far from ours is a replay or a broken clock.
const MAX_SKEW_SECS: u64 = 300;

fn fresh(time: u64, now: u64) -> Result<(), String> {
    if time.abs_diff(now) > MAX_SKEW_SECS {
        return Err(format!(
            "its time is {}s away from this node's clock (at most {MAX_SKEW_SECS}s)",
            time.abs_diff(now)
        ));
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
