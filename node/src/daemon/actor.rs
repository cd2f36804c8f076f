//! The node's actor: the one task that owns the swarm and the node core, and carries out
//! what the core decides.
//!
//! Every loop turn takes one thing, in this order (`biased`): shutdown, a finished job
//! task, a verdict computed off the loop, a checked submission, progress from a job task,
//! a command from the API, the one-second tick, a swarm event. Each becomes an
//! [`Input`] to [`Core::handle`], whose [`Effect`]s the actor executes: publishing and
//! requests on the swarm, writes through the store task, VMs in job tasks, verdicts in
//! blocking tasks. Nothing slow runs in the loop: hashing and tarring a submitted job's
//! image, signing provenance and judging results all happen in tasks that report back.
//!
//! Once a second, and at once on `barn pause`/`barn resume`, the owner's conditions (the
//! paused flag, `node.schedule`, `node.max_load`) are read into
//! [`sched::availability`](crate::sched::availability) and given to the core.
//!
//! ```text
//!  swarm event ─┐                         ┌─▶ swarm (publish, request, respond, validate)
//!  tick ────────┤                         ├─▶ store task (Persist)
//!  API command ─┼─▶ Input ─▶ Core::handle ┼─▶ job task (Start, Cancel) ──▶ Finished ─┐
//!  job task ────┤                         ├─▶ blocking task (Judge) ──────▶ Judged ──┤
//!  verdict ─────┘                         └─▶ events, adverts                        │
//!       ▲───────────────────────────────────────────────────────────────────────────┘
//! ```

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Result;
use barn_protocol::message::*;
use barn_protocol::{ContentHash, NodeId, SecretKey, Signed};
use libp2p::futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::core::{Acceptance, Core, Effect, Input, MsgRef, ReplyId, ReqId, Topic};
use super::handle::Command;
use super::holders::Holders;
use super::owner::{self, PauseFile};
use super::sweep;
use super::work::{self, Internal, WorkOutcome};
use super::{Options, now};
use crate::config::Config;
use crate::dirs::Dirs;
use crate::net::behaviour::{Behaviour, BehaviourEvent};
use crate::net::codec::Response;
use crate::net::peerbook::{DIAL_AT_START, PeerBook, Redial};
use crate::net::ratelimit::{Check, PeerLimits};
use crate::net::reach::Reach;
use crate::net::swarm::{TOPIC_ADVERTS, TOPIC_JOBS, TOPIC_RESULTS, TOPIC_SETTLEMENTS, topic};
use crate::runner::Runner;
use crate::sched::availability::{self, Conditions};
use crate::store::BlobChange;
use crate::store::ImageStore;
use crate::store::blobs::BlobStore;
use crate::store::db::Db;
use crate::store::ops::{StoreOp, StoreTask};
use crate::verify::verdict::Verdict;
use crate::view::{Event, FetchResponse, PauseView};

/// What the actor is built from.
pub struct Parts {
    /// What happens, for `GET /api/events`.
    pub events: tokio::sync::broadcast::Sender<Event>,
    pub key: SecretKey,
    pub cfg: Config,
    pub opts: Options,
    pub dirs: Dirs,
    /// A connection for reading (views); every write goes through `store`.
    pub db: Db,
    pub store: StoreTask,
    pub blobs: BlobStore,
    pub images: ImageStore,
    pub runner: Runner,
    pub accel: Accel,
    pub swarm: Swarm<Behaviour>,
    pub control: libp2p_stream::Control,
    /// Direct and relayed connections per peer, from the blob behaviour.
    pub paths: crate::net::direct::Paths,
    /// The owner left the node paused (read from the data dir at start).
    pub paused: bool,
    /// The bootstrap addresses, dialled again while their peer is not connected.
    pub bootstrap: Vec<Multiaddr>,
    /// What the blob server turned away.
    pub blob_stats: std::sync::Arc<crate::net::blobs::ServeStats>,
}

/// Where the peer book lives in the data folder.
pub const PEERBOOK_FILE: &str = "peers.cbor";
/// How often a peer book whose peers were only seen again is written (a new peer or
/// address is written at the next tick).
const PEERBOOK_SAVE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("node", &self.key.node_id())
            .field("accel", &self.accel)
            .finish_non_exhaustive()
    }
}

/// The actor.
pub struct Actor {
    p: Parts,
    core: Core,
    me: NodeId,
    /// Requests in flight on the swarm, by libp2p's id.
    requests: HashMap<OutboundRequestId, ReqId>,
    /// Inbound requests awaiting the core's response.
    replies: HashMap<ReplyId, ResponseChannel<Response>>,
    next_reply: u64,
    /// Gossip messages awaiting the core's validation.
    gossip: HashMap<MsgRef, (gossipsub::MessageId, PeerId)>,
    next_msg: u64,
    tasks: JoinSet<WorkOutcome>,
    judging: JoinSet<(JobId, Verdict)>,
    /// Submissions being checked off the loop: (token, the envelope or why not).
    submits: JoinSet<(u64, Result<Vec<u8>, String>)>,
    submit_replies: HashMap<u64, oneshot::Sender<Result<String, String>>>,
    next_token: u64,
    /// Each running job's own token (a child of the node's).
    cancels: BTreeMap<JobId, CancellationToken>,
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    /// Millisecond times of submissions and grants, for dispatch-latency figures.
    pub(super) submitted_ms: HashMap<JobId, u64>,
    pub(super) granted_ms: HashMap<(String, String), u64>,
    /// The node's shutdown; each job task gets a child.
    cancel: CancellationToken,
    /// Peers met, remembered across restarts; saved every [`PEERBOOK_SAVE`].
    peerbook: PeerBook,
    peerbook_saved: Instant,
    /// Bootstrap peers dialled again while they are not connected.
    redial: Redial,
    /// Per-peer request rates, and the peers banned for flooding.
    limits: PeerLimits,
    /// Peers and requests turned away here (before the core), by reason.
    peer_rejected: BTreeMap<&'static str, u64>,
    /// The owner's `barn pause`, and where it is kept across restarts.
    paused: bool,
    pause_file: PauseFile,
    /// The load average could not be read once already (said once, not every second).
    load_unreadable: bool,
    /// Reachability and relay reservations.
    reach: Reach,
    /// The address each peer was dialled at directly (to reserve on it if it is a relay).
    dialled: HashMap<PeerId, Multiaddr>,
    /// Hole punching outcomes: direct connections made, attempts failed.
    pub(super) holes: (u64, u64),
    /// The file sweep in progress (`sweep::sweep_files`), so two never overlap.
    sweeping: Option<tokio::task::JoinHandle<super::sweep::Swept>>,
    /// Blobs announced as provider records, and lookups of who holds one.
    pub(super) holders: Holders,
    /// When announcements no peer heard were last sent again.
    announced_unheard: Instant,
}

impl std::fmt::Debug for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actor")
            .field("me", &self.me)
            .field("running", &self.core.running().len())
            .finish_non_exhaustive()
    }
}

fn topic_of(name: &str) -> Option<Topic> {
    Some(match name {
        TOPIC_JOBS => Topic::Jobs,
        TOPIC_ADVERTS => Topic::Adverts,
        TOPIC_RESULTS => Topic::Results,
        TOPIC_SETTLEMENTS => Topic::Settlements,
        _ => return None,
    })
}

fn topic_name(t: Topic) -> &'static str {
    match t {
        Topic::Jobs => TOPIC_JOBS,
        Topic::Adverts => TOPIC_ADVERTS,
        Topic::Results => TOPIC_RESULTS,
        Topic::Settlements => TOPIC_SETTLEMENTS,
    }
}

impl Actor {
    pub fn new(p: Parts, core: Core) -> Self {
        let me = p.key.node_id();
        let (internal_tx, internal_rx) = mpsc::channel(256);
        let pause_file = PauseFile::new(&p.dirs.data);
        let book_path = p.dirs.data.join(PEERBOOK_FILE);
        let peerbook = PeerBook::load(&book_path).unwrap_or_else(|e| {
            warn!("starting with no remembered peers: {e:#}");
            PeerBook::new(book_path)
        });
        let redial = Redial::new(&p.bootstrap, Instant::now());
        // Addresses the owner configured are confirmed from the start (the swarm reports
        // only those confirmed later).
        let mut reach = Reach::new(Instant::now());
        for a in p.swarm.external_addresses() {
            reach.confirmed(a);
        }
        Self {
            peerbook,
            peerbook_saved: Instant::now(),
            redial,
            limits: PeerLimits::default(),
            peer_rejected: BTreeMap::new(),
            paused: p.paused,
            pause_file,
            load_unreadable: false,
            sweeping: None,
            holders: Holders::default(),
            announced_unheard: Instant::now(),
            reach,
            dialled: HashMap::new(),
            holes: (0, 0),
            core,
            me,
            p,
            requests: HashMap::new(),
            replies: HashMap::new(),
            next_reply: 0,
            gossip: HashMap::new(),
            next_msg: 0,
            tasks: JoinSet::new(),
            judging: JoinSet::new(),
            submits: JoinSet::new(),
            submit_replies: HashMap::new(),
            next_token: 0,
            cancels: BTreeMap::new(),
            internal_tx,
            internal_rx,
            submitted_ms: HashMap::new(),
            granted_ms: HashMap::new(),
            cancel: CancellationToken::new(),
        }
    }

    /// The loop.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.cancel = cancel.clone();
        let mut blob_changes = self.p.blobs.subscribe();
        self.announce_store().await;
        self.dial_remembered();
        self.update_availability().await;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sweep = tokio::time::interval_at(
            tokio::time::Instant::now() + sweep::FIRST_SWEEP,
            sweep::SWEEP_EVERY,
        );
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => match done {
                    Ok(out) => {
                        self.cancels.remove(&out.job);
                        self.feed(Input::Finished {
                            job: out.job,
                            result: Box::new(out.result),
                            provenance_sig: out.provenance_sig,
                        }).await;
                    }
                    Err(e) => warn!("a job task failed: {e}"),
                },
                Some(done) = self.judging.join_next(), if !self.judging.is_empty() => match done {
                    Ok((job, verdict)) => {
                        self.feed(Input::Judged { job, verdict: Box::new(verdict) }).await
                    }
                    Err(e) => warn!("judging failed: {e}"),
                },
                Some(done) = self.submits.join_next(), if !self.submits.is_empty() => match done {
                    Ok((token, Ok(envelope))) => self.feed(Input::Submit { token, envelope }).await,
                    Ok((token, Err(why))) => {
                        if let Some(reply) = self.submit_replies.remove(&token) {
                            let _ = reply.send(Err(why));
                        }
                    }
                    Err(e) => warn!("checking a submission failed: {e}"),
                },
                Some(msg) = self.internal_rx.recv() => match msg {
                    Internal::Progress { job, phase, log_bytes } => {
                        self.feed(Input::Progress { job, phase, log_bytes }).await
                    }
                    Internal::FindHolders { hash, reply } => {
                        let kad = &mut self.p.swarm.behaviour_mut().kad;
                        self.holders.find(kad, &hash, reply);
                    }
                    Internal::BadBytes { peer, hash } => {
                        warn!(%peer, hash = %hash.short(), "a peer sent bytes that fail their hash: disconnected and banned for {:?}", crate::net::ratelimit::BAN);
                        self.limits.ban(peer, Instant::now());
                        self.count_peer_rejection("bad_blob_bytes");
                        let _ = self.p.swarm.disconnect_peer_id(peer);
                    }
                },
                Some(change) = blob_changes.recv() => {
                    let kad = &mut self.p.swarm.behaviour_mut().kad;
                    match change {
                        BlobChange::Added(hash) => self.holders.added(kad, hash),
                        BlobChange::Removed(hash) => self.holders.removed(kad, &hash),
                    }
                }
                Some(cmd) = commands.recv() => self.on_command(cmd).await,
                // Timers before network events: a flood of gossip must not delay lease
                // expiry or heartbeats.
                _ = tick.tick() => {
                    self.announce_unheard();
                    self.keep_connected();
                    self.reserve_on_relays();
                    self.update_availability().await;
                    self.feed(Input::Tick).await;
                }
                _ = sweep.tick() => self.sweep().await,
                event = self.p.swarm.select_next_some() => self.on_swarm(event).await,
            }
        }
        info!(
            "shutting down: cancelling {} running job(s)",
            self.core.running().len()
        );
        // Each job's token is a child of `cancel`: its VM gets the polite stop, then the
        // task ends; whatever is still running after the grace period is aborted.
        let tasks = &mut self.tasks;
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(Duration::from_secs(10), drain).await;
        self.tasks.shutdown().await;
        if let Err(e) = self.peerbook.save() {
            warn!("failed to remember this node's peers: {e:#}");
        }
        self.p.store.close().await;
        Ok(())
    }

    /// Announces every blob in the store (most recently used first, up to
    /// [`holders::MAX_PROVIDED`](super::holders::MAX_PROVIDED)): at start, and when store
    /// changes were missed.
    async fn announce_store(&mut self) {
        let store = self.p.blobs.clone();
        let listed = tokio::task::spawn_blocking(move || store.list()).await;
        let entries = match listed {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => return warn!("cannot list the blob store to announce it: {e}"),
            Err(e) => return warn!("cannot list the blob store to announce it: {e}"),
        };
        let kad = &mut self.p.swarm.behaviour_mut().kad;
        for e in entries.iter().rev() {
            self.holders.added(kad, e.hash);
        }
        debug!(
            announced = self.holders.provided(),
            "blobs announced to the DHT"
        );
    }

    /// Announces again, every 30 s while there are peers, what no peer heard.
    fn announce_unheard(&mut self) {
        if self.holders.has_unheard()
            && self.announced_unheard.elapsed() >= Duration::from_secs(30)
            && self.p.swarm.connected_peers().next().is_some()
        {
            self.announced_unheard = Instant::now();
            self.holders
                .announce_unheard(&mut self.p.swarm.behaviour_mut().kad);
        }
    }

    /// Bounded storage: forgets finished jobs past `node.retention`, then (off the loop)
    /// removes their work folders, stale temporary files and blobs over `node.max_store`.
    async fn sweep(&mut self) {
        if self.p.blobs.take_missed() {
            self.announce_store().await;
        }
        if self.sweeping.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let old = sweep::past_retention(&self.p.db, now(), self.p.cfg.retention);
        if !old.is_empty() {
            debug!(
                jobs = old.len(),
                "sweep: finished jobs past their retention"
            );
            self.feed(Input::Forget(old)).await;
        }
        // Every write queued so far (a job just submitted or heard) is in the database
        // the plan reads.
        self.p.store.flush().await;
        // What the core holds counts too, whatever the database says: running jobs, every
        // job it knows, and the outputs of results not yet delivered.
        let held = self
            .core
            .running()
            .keys()
            .map(|id| (*id, self.core.known(id).map(|k| k.job.clone())));
        let known = self.core.jobs().map(|(id, k)| (*id, Some(k.job.clone())));
        let undelivered: Vec<ContentHash> = self
            .core
            .outbox()
            .iter()
            .filter_map(|o| Signed::<BuildResult>::from_bytes(&o.result).ok())
            .flat_map(|r| {
                let r = r.message();
                let mut hashes: Vec<ContentHash> =
                    r.manifest.entries.iter().filter_map(|e| e.hash).collect();
                hashes.push(r.log_hash);
                hashes
            })
            .collect();
        let Some(plan) = sweep::plan(
            &self.p.db,
            self.p.dirs.data.clone(),
            self.p.blobs.clone(),
            self.p.cfg.max_store_bytes,
            held.chain(known),
            undelivered,
        ) else {
            return;
        };
        self.sweeping = Some(tokio::task::spawn_blocking(move || {
            sweep::sweep_files(plan)
        }));
    }

    /// Hands one input to the core and carries out what it decides.
    async fn feed(&mut self, input: Input) {
        let effects = self.core.handle(input, now());
        for e in effects {
            self.execute(e).await;
        }
    }

    async fn execute(&mut self, effect: Effect) {
        match effect {
            Effect::Publish { topic: t, data } => self.publish(topic_name(t), data),
            Effect::Send {
                to,
                req,
                request,
                addrs,
            } => {
                let peer = to.to_peer_id();
                for addr in addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
                    self.p.swarm.add_peer_address(peer, addr);
                }
                let id = self
                    .p
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_request(&peer, request);
                self.requests.insert(id, req);
            }
            Effect::Respond { reply, response } => {
                if let Some(channel) = self.replies.remove(&reply)
                    && self
                        .p
                        .swarm
                        .behaviour_mut()
                        .rpc
                        .send_response(channel, response)
                        .is_err()
                {
                    debug!("response not sent: the stream closed");
                }
            }
            Effect::Validate { msg, acceptance } => {
                if let Some((id, source)) = self.gossip.remove(&msg) {
                    let a = match acceptance {
                        Acceptance::Accept => gossipsub::MessageAcceptance::Accept,
                        Acceptance::Reject(_) => gossipsub::MessageAcceptance::Reject,
                        Acceptance::Ignore(_) => gossipsub::MessageAcceptance::Ignore,
                    };
                    self.p.swarm.behaviour_mut().report_gossip(&id, &source, a);
                }
            }
            Effect::Persist(op) => self.p.store.write(op).await,
            Effect::Start {
                job,
                lease,
                variant,
                spec: _,
            } => self.start(job, lease, variant),
            Effect::Cancel { job } => {
                if let Some(c) = self.cancels.get(&job) {
                    info!(job = %job.short(), "stopped by the owner (barn pause --stop)");
                    c.cancel();
                }
            }
            Effect::Judge { job, spec, results } => {
                self.judging
                    .spawn_blocking(move || (job, crate::verify::verdict::judge(&spec, &results)));
            }
            Effect::Advertise => self.advertise().await,
            Effect::Event(e) => {
                if let Event::LeaseGranted { job, node } = &e {
                    self.granted_ms
                        .entry((job.clone(), node.clone()))
                        .or_insert_with(now_ms);
                }
                let _ = self.p.events.send(e);
            }
            Effect::AddAddrs { node, addrs } => {
                let peer = node.to_peer_id();
                for addr in addrs.iter().filter_map(|s| s.parse::<Multiaddr>().ok()) {
                    self.p.swarm.behaviour_mut().add_peer_address(&peer, addr);
                }
            }
            Effect::Submitted { token, result } => {
                if let Ok(id) = &result {
                    self.submitted_ms.entry(*id).or_insert_with(now_ms);
                    // The submitter asks for the job next: it must be in the database.
                    self.p.store.flush().await;
                }
                if let Some(reply) = self.submit_replies.remove(&token) {
                    let _ = reply.send(result.map(|id| id.to_string()));
                }
            }
        }
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

    fn start(&mut self, job: JobId, lease: LeaseId, variant: u32) {
        let Some(signed) = self
            .core
            .known(&job)
            .and_then(|k| Signed::<Job>::from_bytes(&k.envelope).ok())
        else {
            return;
        };
        let cancel = self.cancel.child_token();
        self.cancels.insert(job, cancel.clone());
        let ctx = work::Context {
            key: self.p.key.clone(),
            blobs: self.p.blobs.clone(),
            images: self.p.images.clone(),
            runner: self.p.runner.clone(),
            fetcher: self.fetcher(),
            accel: self.p.accel,
            out_dir: self.p.dirs.data.join("jobs").join(job.0.to_hex()),
            internal: self.internal_tx.clone(),
            fault_alter_outputs: self.p.opts.fault_alter_outputs,
            cancel,
        };
        self.tasks
            .spawn(work::run(ctx, job, lease, variant, signed));
    }

    async fn advertise(&mut self) {
        let now = now();
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
            free_slots: self.core.free_slots(),
            total_slots: self.p.cfg.slots,
            images: images.into_iter().map(|i| (i.name, i.hash)).collect(),
            addrs: self.p.swarm.listeners().map(|a| a.to_string()).collect(),
            time: now,
            expires: now + 3 * self.p.cfg.advert_interval.as_secs(),
            unavailable: self.core.unavailable().to_vec(),
        };
        let bytes = Signed::sign(advert, &self.p.key).to_bytes();
        self.p
            .store
            .write(StoreOp::UpsertAdvert {
                node: self.me,
                advert: bytes.clone(),
                seen: now,
            })
            .await;
        self.publish(TOPIC_ADVERTS, bytes);
    }

    /// Reads the owner's conditions and gives them to the core (which claims at once or
    /// stops claiming, and advertises the change).
    async fn update_availability(&mut self) {
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
        if why.as_slice() == self.core.unavailable() {
            return;
        }
        if why.is_empty() {
            info!("taking work");
        } else {
            let words: Vec<String> = why.iter().map(|u| u.to_string()).collect();
            info!(load = ?load, "not taking work: {}", words.join(", "));
        }
        self.feed(Input::Availability(why)).await;
    }

    /// `barn pause` (`stop`: `--stop`) and `barn resume`.
    async fn set_paused(&mut self, paused: bool, stop: bool) -> Result<PauseView, String> {
        self.pause_file
            .store(paused, now())
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
        self.paused = paused;
        let before: Vec<JobId> = self
            .core
            .running()
            .iter()
            .filter(|(_, r)| !r.stopped)
            .map(|(j, _)| *j)
            .collect();
        if paused && stop {
            self.feed(Input::StopRunning).await;
        }
        let running: Vec<String> = self
            .core
            .running()
            .iter()
            .filter(|(_, r)| !r.stopped)
            .map(|(j, _)| j.to_string())
            .collect();
        let stopped: Vec<String> = before
            .iter()
            .map(|j| j.to_string())
            .filter(|j| !running.contains(j))
            .collect();
        info!(
            paused,
            stopped = stopped.len(),
            "the owner changed the paused flag"
        );
        self.update_availability().await;
        Ok(PauseView {
            paused,
            running,
            stopped,
            unavailable: self.unavailable_words(),
        })
    }

    /// Why no new job is claimed now, as words (empty: the node takes work).
    pub(super) fn unavailable_words(&self) -> Vec<String> {
        self.core
            .unavailable()
            .iter()
            .map(|u| u.word().to_string())
            .collect()
    }

    pub(super) fn paused(&self) -> bool {
        self.paused
    }

    // ---- swarm ----

    async fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.feed(Input::Subscribed {
                    topic: Topic::Adverts,
                })
                .await;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                if endpoint.is_dialer() && !endpoint.is_relayed() {
                    self.dialled
                        .insert(peer_id, endpoint.get_remote_address().clone());
                }
                if self.limits.is_banned(&peer_id, Instant::now()) {
                    debug!(peer = %peer_id, "a banned peer connected: disconnecting it");
                    self.count_peer_rejection("banned_peer_reconnected");
                    let _ = self.p.swarm.disconnect_peer_id(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.limits.forget(&peer_id);
                self.dialled.remove(&peer_id);
                self.reach.relay_lost(&peer_id);
            }
            SwarmEvent::IncomingConnectionError {
                error: libp2p::swarm::ListenError::Denied { cause },
                send_back_addr,
                ..
            } => {
                debug!(from = %send_back_addr, "connection turned away: {cause}");
                self.count_peer_rejection("connection_limit");
            }
            SwarmEvent::ExternalAddrConfirmed { address }
                if crate::net::reach::is_private(&address) =>
            {
                // A neighbour on the same LAN dialled it back: says nothing of the internet.
                debug!(%address, "a private address was confirmed: not counted as reachable");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                info!(%address, "reachable at a confirmed address");
                for listener in self.reach.confirmed(&address) {
                    self.p.swarm.remove_listener(listener);
                }
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                debug!(%address, "an external address expired");
                self.reach.expired(&address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Err(e) = reason {
                    debug!("a listener closed: {e}");
                }
                self.reach.listener_closed(listener_id, Instant::now());
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => {
                let me = *self.p.swarm.local_peer_id();
                if let Some((query, holders, reply)) = self.holders.on_event(&e, &me) {
                    // Dial the holders while the query still knows their addresses.
                    for peer in &holders {
                        if !self.p.swarm.is_connected(peer) {
                            let _ = self.p.swarm.dial(*peer);
                        }
                    }
                    if let Some(mut q) = self.p.swarm.behaviour_mut().kad.query_mut(&query) {
                        q.finish();
                    }
                    let _ = reply.send(holders);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(e)) => match e.result {
                Ok(()) => {
                    info!(addr = %e.tested_addr, server = %e.server, "AutoNAT: a peer dialled this node back")
                }
                Err(err) => {
                    info!(addr = %e.tested_addr, server = %e.server, "AutoNAT: not reachable at this address ({err})");
                    self.reach.found_unreachable();
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                libp2p::relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal: false,
                    ..
                },
            )) => {
                info!(relay = %relay_peer_id, "reachable through a relay");
                self.reach.accepted(relay_peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => match e.result {
                Ok(_) => {
                    self.holes.0 += 1;
                    info!(peer = %e.remote_peer_id, "hole punched: a direct connection through both NATs");
                }
                Err(err) => {
                    self.holes.1 += 1;
                    info!(peer = %e.remote_peer_id, "hole punching failed, staying relayed: {err}");
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let Some(t) = topic_of(message.topic.as_str()) else {
                    self.p.swarm.behaviour_mut().report_gossip(
                        &message_id,
                        &propagation_source,
                        gossipsub::MessageAcceptance::Reject,
                    );
                    return;
                };
                self.next_msg += 1;
                let msg = MsgRef(self.next_msg);
                self.gossip.insert(msg, (message_id, propagation_source));
                let source = message.source.and_then(|p| NodeId::from_peer_id(&p).ok());
                self.feed(Input::Gossip {
                    msg,
                    topic: t,
                    data: message.data,
                    source,
                })
                .await;
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                topic: t,
                ..
            })) => {
                if let Some(topic) = topic_of(t.as_str()) {
                    self.feed(Input::Subscribed { topic }).await;
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
                    let check = self.limits.check(peer, Instant::now());
                    if check != Check::Allow {
                        let refusal = barn_protocol::Refusal::RateLimited { secs: 1 };
                        let _ = self
                            .p
                            .swarm
                            .behaviour_mut()
                            .rpc
                            .send_response(channel, Response::Refused(refusal));
                        self.count_peer_rejection("rate_limited");
                        if check == Check::Ban {
                            warn!(%peer, "a peer kept flooding requests: disconnected and banned for {:?}", crate::net::ratelimit::BAN);
                            self.count_peer_rejection("banned");
                            let _ = self.p.swarm.disconnect_peer_id(peer);
                        }
                        return;
                    }
                    let from = match NodeId::from_peer_id(&peer) {
                        Ok(n) => n,
                        Err(e) => {
                            let refusal = barn_protocol::Refusal::Invalid { why: e.to_string() };
                            let _ = self
                                .p
                                .swarm
                                .behaviour_mut()
                                .rpc
                                .send_response(channel, Response::Refused(refusal));
                            return;
                        }
                    };
                    self.next_reply += 1;
                    let reply = ReplyId(self.next_reply);
                    self.replies.insert(reply, channel);
                    self.feed(Input::Request {
                        from,
                        reply,
                        request,
                    })
                    .await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    let Some(req) = self.requests.remove(&request_id) else {
                        return;
                    };
                    let Ok(from) = NodeId::from_peer_id(&peer) else {
                        return;
                    };
                    self.feed(Input::Response {
                        req,
                        from,
                        response,
                    })
                    .await;
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                },
            )) => {
                if let Some(req) = self.requests.remove(&request_id) {
                    self.feed(Input::OutboundFailure {
                        req,
                        error: error.to_string(),
                    })
                    .await;
                }
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
                if info.protocols.contains(&libp2p::relay::HOP_PROTOCOL_NAME) {
                    self.reach.relay_met(peer_id, self.dialled.get(&peer_id));
                }
                let barn_peer = self.p.swarm.behaviour_mut().on_identify(&peer_id, &info);
                if barn_peer {
                    self.peerbook.record(peer_id, &info.listen_addrs, now());
                }
            }
            _ => {}
        }
    }

    // ---- staying connected ----

    /// Behind NAT (no confirmed address), reserves a slot on relays met, so that peers
    /// behind other NATs reach this node through them.
    fn reserve_on_relays(&mut self) {
        for (relay, circuit) in self.reach.to_reserve(Instant::now()) {
            match self.p.swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    info!(%relay, "no confirmed address: reserving a slot on a relay");
                    self.reach.reserving(id, relay);
                }
                Err(e) => {
                    warn!(%circuit, "failed to listen through a relay: {e}");
                    self.reach.relay_lost(&relay);
                }
            }
        }
    }

    /// `public` (an address confirmed), `relayed` (reachable through relays) or `unknown`.
    pub(super) fn reachability(&self) -> &'static str {
        if self.reach.is_public() {
            "public"
        } else if self.reach.reservations() > 0 {
            "relayed"
        } else {
            "unknown"
        }
    }

    fn count_peer_rejection(&mut self, why: &'static str) {
        *self.peer_rejected.entry(why).or_default() += 1;
    }

    /// Peers and requests turned away before the core, by reason.
    pub(super) fn peer_rejections(&self) -> &BTreeMap<&'static str, u64> {
        &self.peer_rejected
    }

    /// Dials the peers remembered from earlier runs, most recently seen first, so a node
    /// that comes back (perhaps on another address) finds its farm without waiting to be
    /// found.
    fn dial_remembered(&mut self) {
        let own = *self.p.swarm.local_peer_id();
        for (peer, addrs) in self.peerbook.recent(DIAL_AT_START) {
            if peer == own {
                continue;
            }
            for a in &addrs {
                self.p
                    .swarm
                    .behaviour_mut()
                    .add_peer_address(&peer, a.clone());
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.p.swarm.dial(opts) {
                debug!(%peer, "not dialling a remembered peer: {e}");
            }
        }
    }

    /// Dials lost bootstrap peers again (with a back-off) and saves the peer book now and
    /// then.
    fn keep_connected(&mut self) {
        let now_i = Instant::now();
        let swarm = &self.p.swarm;
        let due = self.redial.due(now_i, |p| swarm.is_connected(p));
        for addr in due {
            debug!(%addr, "dialling a lost bootstrap peer again");
            if let Err(e) = self.p.swarm.dial(addr.clone()) {
                debug!(%addr, "failed to dial a bootstrap peer again: {e}");
            }
        }
        if self.peerbook.has_news() || now_i.duration_since(self.peerbook_saved) >= PEERBOOK_SAVE {
            self.peerbook_saved = now_i;
            if let Err(e) = self.peerbook.save() {
                warn!("failed to remember this node's peers: {e:#}");
            }
        }
    }

    // ---- API commands ----

    async fn on_command(&mut self, cmd: Command) {
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
            Command::Submit(bytes, reply) => self.submit(bytes, reply),
            Command::Fetch { hash, node, reply } => self.fetch(hash, node, reply),
            Command::Pause { stop, reply } => {
                let _ = reply.send(self.set_paused(true, stop).await);
            }
            Command::Resume(reply) => {
                let _ = reply.send(self.set_paused(false, false).await);
            }
        }
    }

    /// Checks a submission off the loop (signature, spec, coordinator, source, image blob:
    /// tarring and hashing an image takes seconds), then hands it to the core.
    fn submit(&mut self, bytes: Vec<u8>, reply: oneshot::Sender<Result<String, String>>) {
        self.next_token += 1;
        let token = self.next_token;
        self.submit_replies.insert(token, reply);
        let me = self.me;
        let blobs = self.p.blobs.clone();
        let images = self.p.images.clone();
        self.submits.spawn_blocking(move || {
            let check = || -> Result<Vec<u8>, String> {
                let signed = Signed::<Job>::from_bytes(&bytes).map_err(|e| e.to_string())?;
                barn_protocol::jobfile::validate(&signed.message().spec)?;
                let job = signed.message();
                if job.coordinator != me {
                    return Err(format!(
                        "the job names {} as its coordinator, not this node ({me})",
                        job.coordinator
                    ));
                }
                if !blobs.has(&job.source) {
                    return Err(format!(
                        "the source {} is not in this node's blob store",
                        job.source
                    ));
                }
                // Used now: the sweep keeps what was used within the hour.
                blobs.touch(&job.source);
                work::ensure_image_blob(&images, &blobs, &job.image_hash)
                    .map_err(|e| format!("{e:#}"))?;
                Ok(bytes)
            };
            (token, check())
        });
    }

    fn fetch(
        &mut self,
        hash: ContentHash,
        node: Option<String>,
        reply: oneshot::Sender<Result<FetchResponse, String>>,
    ) {
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
        let fetcher = self.fetcher();
        tokio::spawn(async move {
            let result = work::fetch_from_any(
                &fetcher,
                hash,
                peers.into_iter().filter(|p| *p != local).collect(),
                work::MAX_IMAGE,
            )
            .await;
            let _ = reply.send(result.map(|(path, size)| FetchResponse {
                path: path.display().to_string(),
                size,
            }));
        });
    }

    /// What a fetch needs, for a task off the loop.
    fn fetcher(&self) -> work::Fetcher {
        work::Fetcher {
            control: self.p.control.clone(),
            paths: self.p.paths.clone(),
            store: self.p.blobs.clone(),
            internal: self.internal_tx.clone(),
        }
    }

    // ---- accessors for views ----

    pub(super) fn parts(&self) -> &Parts {
        &self.p
    }
    pub(super) fn me(&self) -> NodeId {
        self.me
    }
    pub(super) fn core(&self) -> &Core {
        &self.core
    }
    pub(super) fn is_connected(&self, peer: &PeerId) -> bool {
        self.p.swarm.is_connected(peer)
    }
    pub(super) fn peer_count(&self) -> usize {
        self.p.swarm.connected_peers().count()
    }
    /// Where peers may reach this node: confirmed external addresses first, then what it
    /// listens on (relayed addresses included).
    pub(super) fn listen_addrs(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for a in self
            .p
            .swarm
            .external_addresses()
            .chain(self.p.swarm.listeners())
        {
            let s = a.to_string();
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
