//! The node core: all of a node's protocol logic, without I/O.
//!
//! [`Core::handle`] takes one [`Input`] and the time and returns the [`Effect`]s to carry
//! out, the shape of libp2p's own `NetworkBehaviour::poll -> ToSwarm`. The core holds the
//! volunteer's scheduler, the coordinator's scheduler, the job table and the outbox of
//! results on their way to coordinators; it checks every signature and every lease, and
//! signs what it sends. It never touches the network, the disk, a VM or the clock: the
//! actor (`super::actor`) executes its effects, and the in-memory harness (`sim`) runs
//! many cores against a simulated clock and network.
//!
//! ```text
//!  Input ──▶ Core::handle(input, now) ──▶ [Effect]
//!   gossip (jobs, adverts,        Publish, Send, Respond, Validate,
//!           results, settlements) Persist(StoreOp), Start, Cancel,
//!   request / response / failure  Judge (verdict off the loop), Advertise,
//!   tick, progress, finished,     Event, AddAddrs, Submitted
//!   judged, submit, availability
//! ```
//!
//! Restarts: everything that must survive one is written through `Persist`, and
//! [`restore`] rebuilds a core from the database.

mod coordinate;
mod gossip;
pub mod restore;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod volunteer;

use std::collections::{BTreeMap, BTreeSet};

use barn_protocol::message::{BuildResult, Job, JobId, LeaseId, Phase, Unavailable};
use barn_protocol::{ContentHash, NodeId, SecretKey, Signed, SubmitterId};

use crate::net::codec::{Request, Response};
use crate::sched::coordinator::Reputation;
use crate::sched::{Capabilities, Coordinator, Trust, Volunteer};
use crate::store::ops::StoreOp;
use crate::verify::verdict::Verdict;
use crate::view::Event;
use tracing::debug;

/// An outbound request, named by the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

/// An inbound request awaiting its response, named by the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplyId(pub u64);

/// A gossip message awaiting its validation, named by the actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgRef(pub u64);

/// The gossip topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    Jobs,
    Adverts,
    Results,
    Settlements,
}

impl Topic {
    /// A word for logs and metrics.
    pub fn word(self) -> &'static str {
        match self {
            Topic::Jobs => "jobs",
            Topic::Adverts => "adverts",
            Topic::Results => "results",
            Topic::Settlements => "settlements",
        }
    }
}

/// What gossipsub should do with a message: forward it, penalise its sender, or neither.
/// Rejections and ignores carry their reason, a snake_case word counted in [`Counts`]
/// and shown in `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid: forward.
    Accept,
    /// Invalid: drop and penalise the peer that sent it.
    Reject(&'static str),
    /// Valid but not for us, or already known: drop without penalty.
    Ignore(&'static str),
}

/// Jobs from submitters this node does not trust that it keeps (only heard of: neither
/// coordinated nor run here), the most recently announced; older ones are forgotten, in
/// memory and in the database.
pub const MAX_UNTRUSTED_JOBS: usize = 1024;

/// What the core turned away, by reason, since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Gossip rejected (its sender penalised), by topic and reason.
    pub rejected: BTreeMap<(&'static str, &'static str), u64>,
    /// Gossip dropped without penalty, by topic and reason.
    pub ignored: BTreeMap<(&'static str, &'static str), u64>,
    /// Requests refused, by [`barn_protocol::Refusal::word`].
    pub refused: BTreeMap<&'static str, u64>,
    /// Jobs from untrusted submitters forgotten to stay under [`MAX_UNTRUSTED_JOBS`].
    pub forgotten_jobs: u64,
}

/// Something that happened to the node.
#[derive(Debug, Clone)]
pub enum Input {
    /// A gossip message; `source`: the node that published it (gossipsub's signed author,
    /// not the neighbour that forwarded it).
    Gossip {
        msg: MsgRef,
        topic: Topic,
        data: Vec<u8>,
        source: Option<NodeId>,
    },
    /// A peer subscribed to a topic: it should hear the open jobs and this node soon.
    Subscribed { topic: Topic },
    /// A request from a peer.
    Request {
        from: NodeId,
        reply: ReplyId,
        request: Request,
    },
    /// The answer to a request this core sent.
    Response {
        req: ReqId,
        from: NodeId,
        response: Response,
    },
    /// A request this core sent could not be delivered or answered.
    OutboundFailure { req: ReqId, error: String },
    /// The clock moved (about once a second).
    Tick,
    /// A running job's progress, from its task.
    Progress {
        job: JobId,
        phase: Phase,
        log_bytes: u64,
    },
    /// A job this node ran ended, with its signed result and, when it could make one, the
    /// builder's signature over its provenance attestation (both made off the loop).
    Finished {
        job: JobId,
        result: Box<Signed<BuildResult>>,
        provenance_sig: Option<[u8; 64]>,
    },
    /// The verdict asked for by [`Effect::Judge`].
    Judged { job: JobId, verdict: Box<Verdict> },
    /// The owner submitted a job (already checked off the loop: signature, spec, blobs,
    /// coordinator).
    Submit { token: u64, envelope: Vec<u8> },
    /// The owner's conditions (pause, schedule, load); empty: the node takes work.
    Availability(Vec<Unavailable>),
    /// `barn pause --stop`: cancel every running job.
    StopRunning,
    /// Finished jobs past the node's retention (`node.retention`): forget them, except
    /// one still running here, being judged or with a result not yet delivered.
    Forget(Vec<JobId>),
}

/// Something the actor must do.
#[derive(Debug, Clone)]
pub enum Effect {
    Publish {
        topic: Topic,
        data: Vec<u8>,
    },
    /// Send a request; `addrs` are addresses the peer announced (may be empty).
    Send {
        to: NodeId,
        req: ReqId,
        request: Request,
        addrs: Vec<String>,
    },
    Respond {
        reply: ReplyId,
        response: Response,
    },
    Validate {
        msg: MsgRef,
        acceptance: Acceptance,
    },
    Persist(StoreOp),
    /// Run a leased job in a VM.
    Start {
        job: JobId,
        lease: LeaseId,
        variant: u32,
        spec: Box<Job>,
    },
    /// Stop a running job (its task reports it finished as an infrastructure error).
    Cancel {
        job: JobId,
    },
    /// Compute the verdict off the loop, then feed back [`Input::Judged`].
    Judge {
        job: JobId,
        spec: Box<Job>,
        results: Vec<(NodeId, BuildResult)>,
    },
    /// Sign and publish an advert now (free slots or availability changed, or it is due).
    Advertise,
    Event(Event),
    /// Peer addresses learnt from an advert.
    AddAddrs {
        node: NodeId,
        addrs: Vec<String>,
    },
    /// The answer to [`Input::Submit`].
    Submitted {
        token: u64,
        result: Result<JobId, String>,
    },
}

/// What the core is built with.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub key: SecretKey,
    /// How this node runs VMs (told in claims).
    pub accel: barn_protocol::message::Accel,
    pub caps: Capabilities,
    pub trust: Trust,
    /// The node's signed operator certificate, sent with every claim.
    pub operator_cert: Option<Vec<u8>>,
    /// Seconds between announcements of a job that still wants replicas.
    pub announce_secs: u64,
    /// Seconds between adverts.
    pub advert_secs: u64,
}

/// A job the node knows.
#[derive(Debug, Clone)]
pub struct Known {
    /// The signed job envelope, as received.
    pub envelope: Vec<u8>,
    pub job: Job,
    pub submitter: SubmitterId,
    /// This node coordinates it.
    pub coordinated: bool,
}

/// A job this node runs as a volunteer.
#[derive(Debug, Clone)]
pub struct Running {
    pub lease: LeaseId,
    pub coordinator: NodeId,
    pub phase: Phase,
    pub log_bytes: u64,
    /// Cancelled by the owner (`barn pause --stop`).
    pub stopped: bool,
}

/// A finished job's result on its way to the coordinator: first the commitment, then,
/// once the coordinator takes results, the result itself.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub job: JobId,
    pub lease: LeaseId,
    pub coordinator: NodeId,
    /// The signed result envelope.
    pub result: Vec<u8>,
    pub root: ContentHash,
    pub provenance_sig: Option<[u8; 64]>,
    /// The coordinator has the commitment.
    pub committed: bool,
    /// The coordinator takes results: send the result (else the commitment, as a poll).
    pub revealed: bool,
    pub retry_at: u64,
    pub in_flight: Option<ReqId>,
}

/// An RPC this core sent and awaits the answer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Claim(JobId),
    Heartbeat,
    Commit(JobId),
    Result(JobId),
}

/// A result this coordinator took, kept until its job settles.
#[derive(Debug, Clone)]
struct Taken {
    node: NodeId,
    result: BuildResult,
    /// The signed envelope, published with the settlement.
    envelope: Vec<u8>,
}

/// Seconds before an undelivered commitment or result is sent again.
pub const RETRY_SECS: u64 = 5;
/// Seconds between polls (the commitment sent again) while the coordinator is not yet
/// taking results; the coordinator holds each poll up to [`PARK_SECS`], so a volunteer
/// hears of the reveal at once.
pub const REVEAL_POLL_SECS: u64 = 1;
/// Seconds a coordinator holds a commitment's answer while results are not taken yet (the
/// request-response timeout is 30 s).
pub const PARK_SECS: u64 = 15;

/// The answer to a request: now, or held until the job's results are taken.
#[derive(Debug)]
enum Answer {
    Now(Response),
    Park(JobId),
}

/// A commitment whose answer is held.
#[derive(Debug)]
struct Parked {
    job: JobId,
    reply: ReplyId,
    until: u64,
}
/// Signed requests carry their time; one further from ours is a replay or a broken clock.
pub const MAX_SKEW_SECS: u64 = 300;

/// The node core.
#[derive(Debug)]
pub struct Core {
    cfg: CoreConfig,
    me: NodeId,
    volunteer: Volunteer,
    coordinator: Coordinator,
    jobs: BTreeMap<JobId, Known>,
    running: BTreeMap<JobId, Running>,
    outbox: Vec<Outgoing>,
    pending: BTreeMap<ReqId, Pending>,
    next_req: u64,
    /// Results taken per coordinated job, by lease, until it settles.
    taken: BTreeMap<JobId, BTreeMap<LeaseId, Taken>>,
    /// What this node counts of other nodes.
    reputation: BTreeMap<NodeId, Reputation>,
    /// Commitments whose answer is held until their job's results are taken.
    parked: Vec<Parked>,
    /// Results each known settlement names (jobs coordinated elsewhere), by digest.
    settled: BTreeMap<JobId, BTreeSet<ContentHash>>,
    /// Jobs from untrusted submitters only heard of, with when they were last announced.
    untrusted: BTreeMap<JobId, u64>,
    /// Known job envelopes by their hash, so a re-announcement is not verified again.
    by_envelope: BTreeMap<ContentHash, JobId>,
    counts: Counts,
    last_announce: u64,
    last_heartbeat: u64,
    last_advert: u64,
    /// The time of the input being handled.
    now: u64,
}

impl Core {
    /// A core with nothing known.
    pub fn new(cfg: CoreConfig) -> Self {
        let me = cfg.key.node_id();
        Self {
            volunteer: Volunteer::new(me, cfg.caps.clone(), cfg.trust.clone()),
            coordinator: Coordinator::new(),
            me,
            cfg,
            jobs: BTreeMap::new(),
            running: BTreeMap::new(),
            outbox: Vec::new(),
            pending: BTreeMap::new(),
            next_req: 0,
            taken: BTreeMap::new(),
            reputation: BTreeMap::new(),
            settled: BTreeMap::new(),
            untrusted: BTreeMap::new(),
            by_envelope: BTreeMap::new(),
            counts: Counts::default(),
            parked: Vec::new(),
            last_announce: 0,
            last_heartbeat: 0,
            last_advert: 0,
            now: 0,
        }
    }

    /// Handles one input at `now` (unix seconds).
    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        self.now = now;
        match input {
            Input::Gossip {
                msg,
                topic,
                data,
                source,
            } => {
                let acceptance = self.on_gossip(topic, source, &data, now, &mut out);
                match acceptance {
                    Acceptance::Accept => {}
                    Acceptance::Reject(why) => {
                        debug!(topic = topic.word(), source = ?source.map(|s| s.short()), "gossip rejected: {why}");
                        *self.counts.rejected.entry((topic.word(), why)).or_default() += 1;
                    }
                    Acceptance::Ignore(why) => {
                        *self.counts.ignored.entry((topic.word(), why)).or_default() += 1;
                    }
                }
                out.push(Effect::Validate { msg, acceptance });
            }
            Input::Subscribed { topic } => match topic {
                Topic::Jobs => self.last_announce = 0,
                Topic::Adverts => self.last_advert = 0,
                _ => {}
            },
            Input::Request {
                from,
                reply,
                request,
            } => match self.on_request(from, request, now, &mut out) {
                Answer::Now(response) => out.push(Effect::Respond { reply, response }),
                Answer::Park(job) => self.parked.push(Parked {
                    job,
                    reply,
                    until: now + PARK_SECS,
                }),
            },
            Input::Response {
                req,
                from,
                response,
            } => self.on_response(req, from, response, now, &mut out),
            Input::OutboundFailure { req, error } => {
                self.on_outbound_failure(req, &error, now, &mut out)
            }
            Input::Tick => self.on_tick(now, &mut out),
            Input::Progress {
                job,
                phase,
                log_bytes,
            } => {
                if let Some(r) = self.running.get_mut(&job) {
                    r.phase = phase;
                    r.log_bytes = log_bytes;
                }
            }
            Input::Finished {
                job,
                result,
                provenance_sig,
            } => self.on_finished(job, *result, provenance_sig, now, &mut out),
            Input::Judged { job, verdict } => self.on_judged(job, *verdict, now, &mut out),
            Input::Submit { token, envelope } => {
                let result = self.submit(envelope, now, &mut out);
                out.push(Effect::Submitted { token, result });
            }
            Input::Availability(why) => {
                if why.as_slice() != self.volunteer.unavailable() {
                    let actions = self.volunteer.set_unavailable(why, now);
                    self.carry_out(actions, now, &mut out);
                    out.push(Effect::Advertise);
                    self.last_advert = now;
                }
            }
            Input::Forget(ids) => self.forget(ids, &mut out),
            Input::StopRunning => {
                for (job, r) in &mut self.running {
                    if !r.stopped {
                        r.stopped = true;
                        out.push(Effect::Cancel { job: *job });
                    }
                }
            }
        }
        for e in &out {
            if let Effect::Respond {
                response: Response::Refused(r),
                ..
            } = e
            {
                *self.counts.refused.entry(r.word()).or_default() += 1;
            }
        }
        out
    }

    fn forget(&mut self, ids: Vec<JobId>, out: &mut Vec<Effect>) {
        for id in ids {
            if self.running.contains_key(&id) || self.outbox.iter().any(|o| o.job == id) {
                continue;
            }
            if self.coordinator.job(&id).is_some() && !self.coordinator.forget(&id) {
                continue;
            }
            if let Some(k) = self.jobs.remove(&id) {
                self.by_envelope.remove(&ContentHash::of(&k.envelope));
            }
            self.untrusted.remove(&id);
            self.settled.remove(&id);
            self.taken.remove(&id);
            out.push(Effect::Persist(StoreOp::RemoveJob(id)));
        }
    }

    /// What the core turned away since it started.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    fn on_tick(&mut self, now: u64, out: &mut Vec<Effect>) {
        self.coordinator_tick(now, out);
        let actions = self.volunteer.poll(now);
        self.carry_out(actions, now, out);
        self.volunteer.prune(now);
        if now >= self.last_heartbeat + crate::sched::coordinator::HEARTBEAT_SECS {
            self.last_heartbeat = now;
            self.send_heartbeats(now, out);
        }
        if now >= self.last_announce + self.cfg.announce_secs {
            self.last_announce = now;
            for id in self.coordinator.open_jobs(now) {
                self.announce(&id, out);
            }
        }
        if now >= self.last_advert + self.cfg.advert_secs {
            self.last_advert = now;
            out.push(Effect::Advertise);
        }
        self.flush_outbox(now, out);
    }

    fn req_id(&mut self, p: Pending) -> ReqId {
        self.next_req += 1;
        let id = ReqId(self.next_req);
        self.pending.insert(id, p);
        id
    }

    fn publish(&self, topic: Topic, data: Vec<u8>, out: &mut Vec<Effect>) {
        out.push(Effect::Publish { topic, data });
    }

    fn emit(&self, event: Event, out: &mut Vec<Effect>) {
        out.push(Effect::Event(event));
    }

    /// The announcement of a job this node coordinates.
    fn announce(&self, id: &JobId, out: &mut Vec<Effect>) {
        let Some(k) = self.jobs.get(id) else {
            return;
        };
        let ann = barn_protocol::message::JobAnnounce {
            job: k.envelope.clone(),
            // Each announcement differs from the last, so gossip's duplicate filter does
            // not swallow a repeat meant for peers that joined since.
            sent: self.now.saturating_mul(1000),
        };
        self.publish(Topic::Jobs, barn_protocol::cbor::to_vec(&ann), out);
    }

    // ---- accessors, for views and tests ----

    pub fn me(&self) -> NodeId {
        self.me
    }
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }
    pub fn volunteer(&self) -> &Volunteer {
        &self.volunteer
    }
    pub fn running(&self) -> &BTreeMap<JobId, Running> {
        &self.running
    }
    pub fn outbox(&self) -> &[Outgoing] {
        &self.outbox
    }
    /// Every job this node knows.
    pub fn jobs(&self) -> impl Iterator<Item = (&JobId, &Known)> {
        self.jobs.iter()
    }
    pub fn known(&self, id: &JobId) -> Option<&Known> {
        self.jobs.get(id)
    }
    pub fn reputation_of(&self, node: &NodeId) -> Reputation {
        self.reputation.get(node).copied().unwrap_or_default()
    }
    /// Free job slots, for adverts.
    pub fn free_slots(&self) -> u32 {
        self.volunteer.free_slots()
    }
    pub fn unavailable(&self) -> &[Unavailable] {
        self.volunteer.unavailable()
    }

    /// Why a job this node coordinates is not settling yet, in words.
    pub fn waiting(&self, id: &JobId, now: u64) -> Option<String> {
        let j = self.coordinator.job(id)?;
        if j.settled {
            return None;
        }
        let missing = j.missing();
        if missing > 0 && j.job.expires > now {
            let noun = if missing == 1 {
                "volunteer"
            } else {
                "volunteers"
            };
            return Some(format!(
                "waiting for {missing} more {noun} for {}",
                j.job.spec.arch
            ));
        }
        None
    }
}

/// Whether a signed request's time is close enough to ours.
fn fresh(time: u64, now: u64) -> Result<(), barn_protocol::Refusal> {
    let secs = time.abs_diff(now);
    if secs > MAX_SKEW_SECS {
        return Err(barn_protocol::Refusal::ClockSkew { secs });
    }
    Ok(())
}
