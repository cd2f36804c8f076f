//! An in-memory farm for the node core: N cores, a simulated clock (milliseconds) and
//! network (delay, loss, partitions, nodes down and restarted), a fake runner, and a
//! SQLite database in memory per node written through the same [`apply`] as a real node,
//! so a restart reads back exactly what a real one would. A scenario of minutes runs in
//! milliseconds.
//!
//! Effects are carried out the way the actor does: `Send` becomes a `Request` at the peer
//! after the delay (or an `OutboundFailure` after [`REQUEST_TIMEOUT_MS`] when the peer is
//! down, cut off or the message is lost), `Respond` becomes the `Response`, `Publish`
//! reaches every other reachable node, `Judge` is answered at once with the real verdict
//! code, and `Start` finishes after the node's fake build time.

use std::collections::{BTreeMap, BTreeSet};

use barn_protocol::message::*;
use barn_protocol::{ContentHash, NodeId, SecretKey, Signed};

use super::{Core, CoreConfig, Effect, Input, ReplyId, ReqId, Topic};
use crate::net::codec::{Request, Response};
use crate::sched::{Capabilities, Trust};
use crate::store::db::Db;
use crate::store::ops::{StoreOp, apply};
use crate::view::Event;

/// How long a request waits for its answer before it fails.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// What a node's fake runner does with a job.
#[derive(Debug, Clone)]
pub struct FakeRunner {
    /// Seconds from start to result.
    pub secs: u64,
    /// The files it outputs.
    pub files: Vec<(String, Vec<u8>)>,
    /// Report an infrastructure error instead.
    pub error: bool,
    /// Never finish (a build that hangs; its heartbeats go on).
    pub hang: bool,
    /// Claim this variation whatever the lease said.
    pub lie_variation: Option<BTreeMap<String, String>>,
}

impl Default for FakeRunner {
    fn default() -> Self {
        Self {
            secs: 5,
            files: vec![("out/hello.txt".into(), b"hello\n".to_vec())],
            error: false,
            hang: false,
            lie_variation: None,
        }
    }
}

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    pub cfg: CoreConfig,
    /// `None` while the node is down.
    pub core: Option<Core>,
    pub db: Db,
    pub runner: FakeRunner,
    /// Every event it emitted, with the simulated millisecond.
    pub events: Vec<(u64, Event)>,
    /// Bumped at every restart: deliveries meant for an earlier life are dropped.
    life: u64,
}

impl SimNode {
    pub fn id(&self) -> NodeId {
        self.cfg.key.node_id()
    }
    pub fn core(&self) -> &Core {
        self.core.as_ref().expect("the node is up")
    }
}

#[derive(Debug, Clone)]
enum Delivery {
    Input(Input),
    /// A peer's answer to a request from `requester`.
    Answer {
        from: NodeId,
        req: ReqId,
        response: Response,
    },
}

/// The farm.
#[derive(Debug)]
pub struct Sim {
    pub now_ms: u64,
    pub nodes: Vec<SimNode>,
    /// One-way delay of every message.
    pub delay_ms: u64,
    /// Chance in a thousand that a message is lost.
    pub loss_per_mille: u64,
    /// Pairs of nodes that cannot reach each other.
    pub cut: BTreeSet<(usize, usize)>,
    queue: BTreeMap<(u64, u64), (usize, u64, Delivery)>,
    seq: u64,
    rng: u64,
    /// Inbound requests awaiting a response: (node, reply) → (requester, its request).
    replies: BTreeMap<(usize, ReplyId), (usize, ReqId)>,
    next_reply: u64,
    next_tick_ms: u64,
    /// The submitter's project key.
    pub submitter: SecretKey,
}

/// Capabilities of a test volunteer.
pub fn caps(slots: u32) -> Capabilities {
    Capabilities {
        archs: vec!["x86_64".into()],
        memory_bytes: 4 << 30,
        slots,
        max_disk_bytes: 8 << 30,
        max_timeout_secs: 7200,
    }
}

impl Sim {
    /// An empty farm at a fixed start time, with a seeded random loss.
    pub fn new() -> Self {
        Self {
            now_ms: 1_700_000_000_000,
            nodes: Vec::new(),
            delay_ms: 20,
            loss_per_mille: 0,
            cut: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
            replies: BTreeMap::new(),
            next_reply: 0,
            next_tick_ms: 0,
            submitter: SecretKey::from_seed([200; 32]),
        }
    }

    pub fn now(&self) -> u64 {
        self.now_ms / 1000
    }

    /// Adds a node with `seed` for its key, `slots` job slots, trusting the submitter.
    pub fn add(&mut self, seed: u8, slots: u32) -> usize {
        let cfg = CoreConfig {
            key: SecretKey::from_seed([seed; 32]),
            accel: Accel::Tcg,
            caps: caps(slots),
            trust: Trust {
                submitters: BTreeSet::from([self.submitter.submitter_id()]),
                accept_any: false,
            },
            operator_cert: None,
            announce_secs: 5,
            advert_secs: 30,
        };
        self.add_with(cfg)
    }

    pub fn add_with(&mut self, cfg: CoreConfig) -> usize {
        let db = Db::open_in_memory().expect("an in-memory database");
        self.nodes.push(SimNode {
            core: Some(Core::new(cfg.clone())),
            cfg,
            db,
            runner: FakeRunner::default(),
            events: Vec::new(),
            life: 0,
        });
        self.nodes.len() - 1
    }

    fn index_of(&self, node: &NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| &n.id() == node)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: deterministic per run.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn reachable(&mut self, a: usize, b: usize) -> bool {
        let lost = self.loss_per_mille > 0 && self.random() % 1000 < self.loss_per_mille;
        !lost
            && !self.cut.contains(&(a, b))
            && !self.cut.contains(&(b, a))
            && self.nodes[b].core.is_some()
    }

    fn schedule(&mut self, at_ms: u64, to: usize, d: Delivery) {
        self.seq += 1;
        let life = self.nodes[to].life;
        self.queue.insert((at_ms, self.seq), (to, life, d));
    }

    /// Feeds `input` to node `i` now and carries out its effects.
    pub fn input(&mut self, i: usize, input: Input) {
        let now = self.now();
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let effects = core.handle(input, now);
        self.carry_out(i, effects);
    }

    fn carry_out(&mut self, i: usize, effects: Vec<Effect>) {
        let now_ms = self.now_ms;
        for e in effects {
            match e {
                Effect::Publish { topic, data } => {
                    for j in 0..self.nodes.len() {
                        if j != i && self.reachable(i, j) {
                            let msg = super::MsgRef(0);
                            let input = Input::Gossip {
                                msg,
                                topic,
                                data: data.clone(),
                                source: Some(self.nodes[i].id()),
                            };
                            self.schedule(now_ms + self.delay_ms, j, Delivery::Input(input));
                        }
                    }
                }
                Effect::Send {
                    to, req, request, ..
                } => match self.index_of(&to) {
                    Some(j) if self.reachable(i, j) => {
                        self.next_reply += 1;
                        let reply = ReplyId(self.next_reply);
                        self.replies.insert((j, reply), (i, req));
                        let from = self.nodes[i].id();
                        let input = Input::Request {
                            from,
                            reply,
                            request,
                        };
                        self.schedule(now_ms + self.delay_ms, j, Delivery::Input(input));
                    }
                    _ => {
                        let input = Input::OutboundFailure {
                            req,
                            error: "unreachable".into(),
                        };
                        self.schedule(now_ms + REQUEST_TIMEOUT_MS, i, Delivery::Input(input));
                    }
                },
                Effect::Respond { reply, response } => {
                    if let Some((requester, req)) = self.replies.remove(&(i, reply)) {
                        if self.reachable(i, requester) {
                            let from = self.nodes[i].id();
                            self.schedule(
                                now_ms + self.delay_ms,
                                requester,
                                Delivery::Answer {
                                    from,
                                    req,
                                    response,
                                },
                            );
                        } else {
                            let input = Input::OutboundFailure {
                                req,
                                error: "no answer".into(),
                            };
                            self.schedule(
                                now_ms + REQUEST_TIMEOUT_MS,
                                requester,
                                Delivery::Input(input),
                            );
                        }
                    }
                }
                Effect::Validate { .. } | Effect::Advertise | Effect::AddAddrs { .. } => {}
                Effect::Persist(op) => self.persist(i, &op),
                Effect::Start {
                    job,
                    lease,
                    variant,
                    spec,
                } => {
                    let r = self.nodes[i].runner.clone();
                    if r.hang {
                        continue;
                    }
                    let result = self.fake_result(i, job, lease, variant, &spec, &r);
                    let input = Input::Finished {
                        job,
                        result: Box::new(result),
                        provenance_sig: None,
                    };
                    self.schedule(now_ms + r.secs * 1000, i, Delivery::Input(input));
                }
                Effect::Cancel { job } => {
                    // The VM is stopped: the job task reports an infrastructure error.
                    let Some(r) = self.nodes[i].core().running().get(&job).cloned() else {
                        continue;
                    };
                    let Some(spec) = self.nodes[i].core().known(&job).map(|k| k.job.clone()) else {
                        continue;
                    };
                    let runner = FakeRunner {
                        error: true,
                        ..self.nodes[i].runner.clone()
                    };
                    let result = self.fake_result(i, job, r.lease, 0, &spec, &runner);
                    let input = Input::Finished {
                        job,
                        result: Box::new(result),
                        provenance_sig: None,
                    };
                    self.schedule(now_ms, i, Delivery::Input(input));
                }
                Effect::Judge { job, spec, results } => {
                    let verdict = crate::verify::verdict::judge(&spec, &results);
                    self.schedule(
                        now_ms,
                        i,
                        Delivery::Input(Input::Judged {
                            job,
                            verdict: Box::new(verdict),
                        }),
                    );
                }
                Effect::Event(e) => self.nodes[i].events.push((now_ms, e)),
                Effect::Submitted { result, .. } => {
                    result.expect("the submission is accepted");
                }
            }
        }
    }

    fn persist(&mut self, i: usize, op: &StoreOp) {
        apply(&mut self.nodes[i].db, op).expect("the store takes every write");
    }

    fn fake_result(
        &self,
        i: usize,
        job: JobId,
        lease: LeaseId,
        variant: u32,
        spec: &Job,
        r: &FakeRunner,
    ) -> Signed<BuildResult> {
        let node = &self.nodes[i];
        let variation = r.lie_variation.clone().unwrap_or_else(|| {
            crate::runner::variation::Variation::for_replica(
                &spec.spec.vary,
                variant,
                spec.spec.resources.cpus,
                4,
            )
            .applied
        });
        let status = if r.error {
            BuildStatus::Error {
                reason: "the VM would not boot".into(),
            }
        } else {
            BuildStatus::Succeeded
        };
        let files: Vec<(&str, &[u8])> = r
            .files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_slice()))
            .collect();
        let result = BuildResult {
            job,
            lease: Some(lease),
            node: node.id(),
            image_hash: spec.image_hash,
            arch: spec.spec.arch.clone(),
            qemu_version: "sim".into(),
            finished: self.now(),
            variation,
            ..crate::verify::verdict::tests_support::result_with(&files, status)
        };
        Signed::sign(result, &node.cfg.key)
    }

    /// Runs the farm until `done` holds or `secs` simulated seconds pass; returns whether
    /// `done` held.
    pub fn run_until(&mut self, secs: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now_ms + secs * 1000;
        loop {
            if done(self) {
                return true;
            }
            if self.now_ms >= end {
                return false;
            }
            self.step(end);
        }
    }

    /// Runs for `secs` simulated seconds.
    pub fn run_for(&mut self, secs: u64) {
        self.run_until(secs, |_| false);
    }

    /// Delivers the next message or tick, whichever comes first (not past `end`).
    fn step(&mut self, end: u64) {
        if self.next_tick_ms <= self.now_ms {
            self.next_tick_ms = (self.now_ms / 1000 + 1) * 1000;
        }
        let next_msg = self.queue.keys().next().map(|k| k.0);
        match next_msg {
            Some(at) if at < self.next_tick_ms && at <= end => {
                let Some((_, (to, life, d))) = self.queue.pop_first() else {
                    return;
                };
                self.now_ms = self.now_ms.max(at);
                if self.nodes[to].life != life || self.nodes[to].core.is_none() {
                    // The connection broke: a request's sender hears of it, as from libp2p.
                    if let Delivery::Input(Input::Request { reply, .. }) = d
                        && let Some((requester, req)) = self.replies.remove(&(to, reply))
                    {
                        let input = Input::OutboundFailure {
                            req,
                            error: "connection closed".into(),
                        };
                        self.schedule(
                            self.now_ms + self.delay_ms,
                            requester,
                            Delivery::Input(input),
                        );
                    }
                    return;
                }
                match d {
                    Delivery::Input(input) => self.input(to, input),
                    Delivery::Answer {
                        from,
                        req,
                        response,
                    } => self.input(
                        to,
                        Input::Response {
                            req,
                            from,
                            response,
                        },
                    ),
                }
            }
            _ => {
                self.now_ms = self.next_tick_ms.min(end.max(self.now_ms));
                if self.now_ms == self.next_tick_ms {
                    for i in 0..self.nodes.len() {
                        self.input(i, Input::Tick);
                    }
                }
            }
        }
    }

    /// Submits a job with `replicas` from node `coordinator`; returns its id.
    pub fn submit(
        &mut self,
        coordinator: usize,
        replicas: u8,
        tweak: impl FnOnce(&mut Job),
    ) -> JobId {
        let mut job = self.job(self.nodes[coordinator].id(), replicas);
        tweak(&mut job);
        let signed = Signed::sign(job, &self.submitter);
        let id = JobId::of(&signed);
        self.input(
            coordinator,
            Input::Submit {
                token: 0,
                envelope: signed.to_bytes(),
            },
        );
        id
    }

    /// An unsigned job coordinated by `coordinator`, valid for an hour from now.
    pub fn job(&self, coordinator: NodeId, replicas: u8) -> Job {
        let now = self.now();
        Job {
            spec: JobSpec {
                image: "tiny-x86_64".into(),
                arch: "x86_64".into(),
                tasks: vec![Task {
                    name: "build".into(),
                    run: "true".into(),
                }],
                env: Default::default(),
                artifacts: vec!["out/*".into()],
                resources: Resources::default(),
                timeout_secs: 600,
                replicas,
                source_date_epoch: 0,
                tiebreak: false,
                vary: vec![],
            },
            image_hash: ContentHash::of(b"image"),
            source: ContentHash::of(b"source"),
            source_size: 6,
            coordinator,
            coordinator_addrs: vec![],
            created: now,
            expires: now + 3600,
            nonce: serde_bytes::ByteArray::new(random_bytes()),
        }
    }

    /// Takes node `i` down (its running jobs die with it).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].core = None;
        self.nodes[i].life += 1;
        self.drop_held_requests(i);
    }

    /// Requests node `i` held unanswered fail at their senders, as libp2p reports a
    /// closed connection.
    fn drop_held_requests(&mut self, i: usize) {
        let held: Vec<(usize, ReplyId)> = self
            .replies
            .keys()
            .filter(|(node, _)| *node == i)
            .copied()
            .collect();
        for key in held {
            if let Some((requester, req)) = self.replies.remove(&key) {
                let input = Input::OutboundFailure {
                    req,
                    error: "connection closed".into(),
                };
                self.schedule(
                    self.now_ms + self.delay_ms,
                    requester,
                    Delivery::Input(input),
                );
            }
        }
    }

    /// Starts node `i` again from its database.
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].life += 1;
        self.drop_held_requests(i);
        let now = self.now();
        let core = Core::restore(self.nodes[i].cfg.clone(), &self.nodes[i].db, now)
            .expect("the database reads back");
        self.nodes[i].core = Some(core);
    }

    /// The signed settlement node `i` stored for `job`.
    pub fn settlement(
        &self,
        i: usize,
        job: &JobId,
    ) -> Option<barn_protocol::settlement::Settlement> {
        let bytes = self.nodes[i].db.settlement(job).ok()??;
        Some(
            Signed::<barn_protocol::settlement::Settlement>::from_bytes(&bytes)
                .ok()?
                .message()
                .clone(),
        )
    }

    /// Whether node `i` saw an event matching `f`.
    pub fn saw(&self, i: usize, f: impl Fn(&Event) -> bool) -> bool {
        self.nodes[i].events.iter().any(|(_, e)| f(e))
    }

    /// The simulated millisecond node `i` first saw an event matching `f`.
    pub fn when(&self, i: usize, f: impl Fn(&Event) -> bool) -> Option<u64> {
        self.nodes[i]
            .events
            .iter()
            .find(|(_, e)| f(e))
            .map(|(t, _)| *t)
    }

    /// Sends a raw request from node `from` to node `to` and returns the answer at once
    /// (for liars: requests the core itself would never make).
    pub fn request(&mut self, from: usize, to: usize, request: Request) -> Response {
        let now = self.now();
        let sender = self.nodes[from].id();
        let core = self.nodes[to].core.as_mut().expect("the node is up");
        let effects = core.handle(
            Input::Request {
                from: sender,
                reply: ReplyId(u64::MAX),
                request,
            },
            now,
        );
        let mut answer = None;
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::Respond { response, .. } => answer = Some(response),
                other => rest.push(other),
            }
        }
        self.carry_out(to, rest);
        answer.expect("every request is answered")
    }

    /// A topic's gossip as node `to` would hear it, published by `source`.
    pub fn gossip(
        &mut self,
        to: usize,
        source: NodeId,
        topic: Topic,
        data: Vec<u8>,
    ) -> super::Acceptance {
        let now = self.now();
        let core = self.nodes[to].core.as_mut().expect("the node is up");
        let effects = core.handle(
            Input::Gossip {
                msg: super::MsgRef(1),
                topic,
                data,
                source: Some(source),
            },
            now,
        );
        let mut acceptance = None;
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::Validate { acceptance: a, .. } => acceptance = Some(a),
                other => rest.push(other),
            }
        }
        self.carry_out(to, rest);
        acceptance.expect("every message is validated")
    }
}
