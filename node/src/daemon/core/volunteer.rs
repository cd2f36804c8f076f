//! The volunteer's side of the core: claims, grants, running jobs, heartbeats, and the
//! outbox that carries each finished job's commitment and then its result to the
//! coordinator, through refusals, lost requests and restarts of either side.

use barn_protocol::message::*;
use barn_protocol::refusal::NextStep;
use barn_protocol::{NodeId, Refusal, Signed};
use tracing::{debug, info, warn};

use super::{Core, Effect, Outgoing, Pending, RETRY_SECS, REVEAL_POLL_SECS, ReqId, Running};
use crate::net::codec::{Request, Response};
use crate::sched::volunteer::Action;
use crate::store::db::ResultRecord;
use crate::store::ops::StoreOp;
use crate::store::round::OutgoingRecord;
use crate::view::Event;

impl Core {
    /// Sends `request` to `to` for `pending`; to this node itself, answers at once.
    pub(super) fn dispatch(
        &mut self,
        to: NodeId,
        pending: Pending,
        request: Request,
        addrs: Vec<String>,
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Option<ReqId> {
        if to == self.me {
            // Coordinating our own job: the same checks, without the network.
            // Nothing is held for this node itself: a held commitment is answered `Ack` and
            // polled again at the next tick.
            let response = match self.on_request(self.me, request, now, out) {
                super::Answer::Now(r) => r,
                super::Answer::Park(_) => Response::Ack,
            };
            self.on_answer(pending, self.me, response, now, out);
            return None;
        }
        let req = self.req_id(pending);
        out.push(Effect::Send {
            to,
            req,
            request,
            addrs,
        });
        Some(req)
    }

    pub(super) fn carry_out(&mut self, actions: Vec<Action>, now: u64, out: &mut Vec<Effect>) {
        for a in actions {
            match a {
                Action::Claim { job, coordinator } => self.claim(job, coordinator, now, out),
                Action::Start {
                    job,
                    lease,
                    variant,
                } => self.start(job, lease, variant, out),
            }
        }
    }

    fn claim(&mut self, job: JobId, coordinator: NodeId, now: u64, out: &mut Vec<Effect>) {
        let claim = Claim {
            job,
            node: self.me,
            accel: self.cfg.accel,
            time: now,
            operator_cert: self
                .cfg
                .operator_cert
                .clone()
                .map(serde_bytes::ByteBuf::from),
        };
        let addrs = self
            .jobs
            .get(&job)
            .map(|k| k.job.coordinator_addrs.clone())
            .unwrap_or_default();
        debug!(job = %job.short(), "claiming");
        let bytes = Signed::sign(claim, &self.cfg.key).to_bytes();
        self.dispatch(
            coordinator,
            Pending::Claim(job),
            Request::Claim(bytes),
            addrs,
            now,
            out,
        );
    }

    fn start(&mut self, job: JobId, lease: LeaseId, variant: u32, out: &mut Vec<Effect>) {
        let Some(k) = self.jobs.get(&job) else {
            return;
        };
        info!(job = %job.short(), lease = %lease, "granted: starting");
        self.running.insert(
            job,
            Running {
                lease,
                coordinator: k.job.coordinator,
                phase: Phase::Fetching,
                log_bytes: 0,
                stopped: false,
            },
        );
        out.push(Effect::Start {
            job,
            lease,
            variant,
            spec: Box::new(k.job.clone()),
        });
        self.emit(
            Event::JobStarted {
                job: job.to_string(),
            },
            out,
        );
        out.push(Effect::Advertise);
    }

    pub(super) fn send_heartbeats(&mut self, now: u64, out: &mut Vec<Effect>) {
        let beats: Vec<_> = self
            .running
            .iter()
            .map(|(job, r)| (*job, r.lease, r.coordinator, r.phase, r.log_bytes))
            .collect();
        for (job, lease, coordinator, phase, log_bytes) in beats {
            let hb = Heartbeat {
                job,
                lease,
                phase,
                log_bytes,
                time: now,
            };
            let bytes = Signed::sign(hb, &self.cfg.key).to_bytes();
            self.dispatch(
                coordinator,
                Pending::Heartbeat,
                Request::Heartbeat(bytes),
                vec![],
                now,
                out,
            );
        }
    }

    pub(super) fn on_finished(
        &mut self,
        job: JobId,
        result: Signed<BuildResult>,
        provenance_sig: Option<[u8; 64]>,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(r) = self.running.remove(&job) else {
            return;
        };
        let bytes = result.to_bytes();
        let m = result.message();
        info!(job = %job.short(), status = m.status.word(), root = %m.manifest_root.short(), "finished");
        self.emit(
            Event::JobFinished {
                job: job.to_string(),
                status: m.status.word().into(),
            },
            out,
        );
        // This node's own copy, for `barn job` here; it counts only if settled.
        out.push(Effect::Persist(StoreOp::InsertResult {
            record: ResultRecord {
                job,
                node: self.me,
                envelope: bytes.clone(),
                received_at: now,
            },
            provenance: provenance_sig,
            late: false,
        }));
        // An infrastructure error is no verdict on the build: it has nothing to hide, needs
        // no commitment, and frees the replica at once.
        let error = matches!(m.status, BuildStatus::Error { .. });
        let o = Outgoing {
            job,
            lease: r.lease,
            coordinator: r.coordinator,
            result: bytes,
            root: m.manifest_root,
            provenance_sig,
            committed: error,
            revealed: error,
            retry_at: now,
            in_flight: None,
        };
        out.push(Effect::Persist(StoreOp::PutOutgoing(outgoing_record(&o))));
        self.outbox.push(o);
        self.send_outgoing(job, now, out);
        let actions = self.volunteer.on_finished(&job, now);
        self.carry_out(actions, now, out);
        out.push(Effect::Advertise);
    }

    pub(super) fn flush_outbox(&mut self, now: u64, out: &mut Vec<Effect>) {
        let due: Vec<JobId> = self
            .outbox
            .iter()
            .filter(|o| o.in_flight.is_none() && o.retry_at <= now)
            .map(|o| o.job)
            .collect();
        for job in due {
            self.send_outgoing(job, now, out);
        }
    }

    /// Sends the commitment or, once committed, the result of the outbox entry for `job`.
    /// A commitment is signed when it is sent, so one retried after a restart carries a
    /// fresh time.
    fn send_outgoing(&mut self, job: JobId, now: u64, out: &mut Vec<Effect>) {
        let Some(o) = self.outbox.iter().find(|o| o.job == job).cloned() else {
            return;
        };
        let (request, pending) = if o.revealed {
            (Request::Result(o.result.clone()), Pending::Result(job))
        } else {
            let commitment = Commitment {
                job,
                lease: o.lease,
                node: self.me,
                digest: Commitment::digest_of(&self.me, &o.root),
                time: now,
                provenance_sig: o.provenance_sig.map(serde_bytes::ByteArray::new),
            };
            let bytes = Signed::sign(commitment, &self.cfg.key).to_bytes();
            (Request::Commit(bytes), Pending::Commit(job))
        };
        // Mark it in flight first: an answer from this node itself comes back at once.
        if let Some(e) = self.outbox.iter_mut().find(|e| e.job == job) {
            e.in_flight = Some(ReqId(0));
        }
        let req = self.dispatch(o.coordinator, pending, request, vec![], now, out);
        if let Some(e) = self.outbox.iter_mut().find(|e| e.job == job)
            && e.in_flight == Some(ReqId(0))
        {
            e.in_flight = req;
        }
    }

    /// The answer to a request this core sent (from the network or from itself).
    pub(super) fn on_answer(
        &mut self,
        pending: Pending,
        from: NodeId,
        response: Response,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        match (pending, response) {
            (Pending::Claim(job), Response::Grant(bytes)) => {
                let decision = self.check_grant(&job, from, &bytes);
                if let GrantDecision::Denied { reason, .. } = &decision {
                    debug!(job = %job.short(), "claim denied: {reason}");
                }
                let actions = self.volunteer.on_grant(&job, &decision, now);
                self.carry_out(actions, now, out);
            }
            (Pending::Claim(job), other) => {
                let actions = self
                    .volunteer
                    .on_claim_failed(&job, format!("{other:?}"), now);
                self.carry_out(actions, now, out);
            }
            (Pending::Commit(job), r) => self.on_outgoing_answer(job, true, r, now, out),
            (Pending::Result(job), r) => self.on_outgoing_answer(job, false, r, now, out),
            (Pending::Heartbeat, Response::Refused(why)) => debug!("heartbeat refused: {why}"),
            (Pending::Heartbeat, _) => {}
        }
    }

    /// A grant is the coordinator's, for this job and this node, or it is a denial.
    fn check_grant(&self, job: &JobId, from: NodeId, bytes: &[u8]) -> GrantDecision {
        let coordinator = self.jobs.get(job).map(|k| k.job.coordinator);
        match Signed::<Grant>::from_bytes(bytes) {
            Ok(g)
                if Some(NodeId(g.signer())) == coordinator
                    && NodeId(g.signer()) == from
                    && &g.message().job == job
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
        }
    }

    /// What the coordinator said to a commitment (`commit`) or a result.
    fn on_outgoing_answer(
        &mut self,
        job: JobId,
        commit: bool,
        response: Response,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(i) = self.outbox.iter().position(|o| o.job == job) else {
            return;
        };
        self.outbox[i].in_flight = None;
        let what = if commit { "commitment" } else { "result" };
        let refusal = match response {
            Response::Reveal => {
                // Results are being taken: send ours now.
                let first = !self.outbox[i].committed;
                self.outbox[i].committed = true;
                self.outbox[i].revealed = true;
                if first {
                    out.push(Effect::Persist(StoreOp::PutOutgoing(outgoing_record(
                        &self.outbox[i],
                    ))));
                }
                self.send_outgoing(job, now, out);
                return;
            }
            Response::Ack if commit => {
                // Kept; results are not taken yet: poll with the commitment.
                if !self.outbox[i].committed {
                    self.outbox[i].committed = true;
                    out.push(Effect::Persist(StoreOp::PutOutgoing(outgoing_record(
                        &self.outbox[i],
                    ))));
                }
                self.outbox[i].retry_at = now + REVEAL_POLL_SECS;
                return;
            }
            Response::Ack => {
                // Taken. The coordinator publishes it with the settlement.
                self.outbox.remove(i);
                out.push(Effect::Persist(StoreOp::DeleteOutgoing(job)));
                return;
            }
            Response::Refused(r) => r,
            other => Refusal::Invalid {
                why: format!("unexpected answer {other:?}"),
            },
        };
        match refusal.next_step() {
            NextStep::RetryLater => {
                let wait = if refusal == Refusal::NotYet {
                    // A new round (a tie-breaker): poll with the commitment again.
                    self.outbox[i].revealed = false;
                    REVEAL_POLL_SECS
                } else {
                    RETRY_SECS
                };
                self.outbox[i].retry_at = now + wait;
            }
            NextStep::CommitAgain => {
                // The coordinator lost our commitment: commit again.
                self.outbox[i].committed = false;
                self.outbox[i].revealed = false;
                self.outbox[i].retry_at = now;
                out.push(Effect::Persist(StoreOp::PutOutgoing(outgoing_record(
                    &self.outbox[i],
                ))));
            }
            _ => {
                if refusal == Refusal::Settled {
                    info!(job = %job.short(), "the job settled before our {what} arrived: kept as late");
                } else {
                    warn!(job = %job.short(), "the coordinator refused our {what}: {refusal}");
                }
                self.outbox.remove(i);
                out.push(Effect::Persist(StoreOp::DeleteOutgoing(job)));
            }
        }
    }

    pub(super) fn on_response(
        &mut self,
        req: ReqId,
        from: NodeId,
        response: Response,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(pending) = self.pending.remove(&req) else {
            return;
        };
        self.on_answer(pending, from, response, now, out);
    }

    pub(super) fn on_outbound_failure(
        &mut self,
        req: ReqId,
        error: &str,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let Some(pending) = self.pending.remove(&req) else {
            return;
        };
        match pending {
            Pending::Claim(job) => {
                debug!(job = %job.short(), "claim failed: {error}");
                let actions = self.volunteer.on_claim_failed(&job, error.to_string(), now);
                self.carry_out(actions, now, out);
            }
            Pending::Commit(job) | Pending::Result(job) => {
                // The coordinator is away: keep the result and try again later.
                debug!(job = %job.short(), "could not deliver to the coordinator: {error}");
                if let Some(o) = self.outbox.iter_mut().find(|o| o.job == job) {
                    o.in_flight = None;
                    o.retry_at = now + RETRY_SECS;
                }
            }
            Pending::Heartbeat => {}
        }
    }
}

pub(super) fn outgoing_record(o: &Outgoing) -> OutgoingRecord {
    OutgoingRecord {
        job: o.job,
        lease: o.lease,
        coordinator: o.coordinator,
        result: o.result.clone(),
        provenance: o.provenance_sig,
        committed: o.committed,
    }
}
