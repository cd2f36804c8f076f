//! The coordinator's side of the core: claims become grants (to distinct operators),
//! heartbeats keep running leases, commitments come before results, a result must match
//! its lease, and a job whose results are all in is judged (off the loop) and settled:
//! signed, stored, published, with reputation counted once per job per node.

use barn_protocol::message::*;
use barn_protocol::operator::OperatorCert;
use barn_protocol::settlement::{SettledReplica, Settlement};
use barn_protocol::{ContentHash, NodeId, Refusal, Signed, SubmitterId};
use tracing::{debug, info, warn};

use super::{Answer, Core, Effect, Known, Taken, Topic, fresh};

/// What became of a commitment.
enum Committed {
    /// Results are being taken: send the result.
    Revealed,
    /// Kept; results are not taken yet.
    Waiting(JobId),
}
use crate::net::codec::{Request, Response};
use crate::sched::coordinator::{self, Coordinator, Lapse, Taken as TakenAs};
use crate::store::db::{JobRecord, JobState, ResultRecord};
use crate::store::ops::StoreOp;
use crate::store::round::Round;
use crate::verify::verdict::{Kind, Verdict};
use crate::view::Event;

impl Core {
    /// A request from a peer (or from this node to itself). A commitment taken while
    /// results are not yet being taken may be held (`Answer::Park`) until they are: the
    /// volunteer hears `Reveal` the moment the last replica commits.
    pub(super) fn on_request(
        &mut self,
        from: NodeId,
        request: Request,
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Answer {
        let _span = tracing::debug_span!("peer", peer = %from.short()).entered();
        let answer = match &request {
            Request::Claim(b) => return Answer::Now(self.on_claim(from, b, now, out)),
            Request::Heartbeat(b) => self.on_heartbeat(from, b, now, out),
            Request::Commit(b) => match self.on_commit(from, b, now, out) {
                Ok(Committed::Revealed) => return Answer::Now(Response::Reveal),
                Ok(Committed::Waiting(job)) => return Answer::Park(job),
                Err(r) => Err(r),
            },
            Request::Result(b) => self.on_result(from, b, now, out),
        };
        Answer::Now(match answer {
            Ok(()) => Response::Ack,
            Err(r) => Response::Refused(r),
        })
    }

    /// Answers the held commitments whose job now takes results (`Reveal`), or that were
    /// held long enough (`Ack`: the volunteer asks again).
    pub(super) fn release_parked(&mut self, now: u64, out: &mut Vec<Effect>) {
        for p in std::mem::take(&mut self.parked) {
            // A job no longer coordinated here has nothing left to hide.
            let revealed = self
                .coordinator
                .job(&p.job)
                .is_none_or(|j| j.takes_results());
            let response = match (revealed, now >= p.until) {
                (true, _) => Response::Reveal,
                (false, true) => Response::Ack,
                (false, false) => {
                    self.parked.push(p);
                    continue;
                }
            };
            out.push(Effect::Respond {
                reply: p.reply,
                response,
            });
        }
    }

    fn on_claim(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Response {
        let claim = match signed_by::<Claim>(bytes, from) {
            Ok(c) => c,
            Err(r) => return Response::Refused(r),
        };
        let node = from;
        if claim.message().node != node {
            return Response::Refused(Refusal::WrongSigner);
        }
        let job = claim.message().job;
        let decision = match self.grant(&claim, now, out) {
            Ok(g) => GrantDecision::Granted {
                lease: g.lease,
                expires: g.expires,
                heartbeat_secs: coordinator::HEARTBEAT_SECS,
                variant: g.variant,
            },
            Err(refusal) => GrantDecision::Denied {
                reason: refusal.to_string(),
                refusal: Some(refusal),
            },
        };
        let grant = Grant {
            job,
            node,
            decision,
            time: now,
        };
        Response::Grant(Signed::sign(grant, &self.cfg.key).to_bytes())
    }

    fn grant(
        &mut self,
        claim: &Signed<Claim>,
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Result<coordinator::Granted, Refusal> {
        let m = claim.message();
        fresh(m.time, now)?;
        let cert = m.operator_cert.as_ref().map(|c| c.to_vec());
        let operator = OperatorCert::operator_of(cert.as_deref(), &m.node, now)
            .map_err(|e| Refusal::BadCertificate { why: e.to_string() })?;
        let reputation = self.reputation_of(&m.node);
        let g = self.coordinator.on_claim(
            &m.job,
            m.node,
            operator,
            m.operator_cert.clone(),
            reputation,
            now,
        )?;
        self.persist_lease(&m.job, &g.lease, out);
        if g.new {
            info!(job = %m.job.short(), node = %m.node.short(), variant = g.variant, "granted a lease");
            self.emit(
                Event::LeaseGranted {
                    job: m.job.to_string(),
                    node: m.node.to_string(),
                },
                out,
            );
        }
        Ok(g)
    }

    fn persist_lease(&self, job: &JobId, lease: &LeaseId, out: &mut Vec<Effect>) {
        if let Some(l) = self.coordinator.lease(job, lease) {
            out.push(Effect::Persist(StoreOp::PutLease {
                job: *job,
                lease: Box::new(l.clone()),
            }));
        }
    }

    fn on_heartbeat(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let hb = signed_by::<Heartbeat>(bytes, from)?;
        let m = hb.message();
        fresh(m.time, now)?;
        self.coordinator.on_heartbeat(&m.job, &m.lease, from, now)?;
        self.persist_lease(&m.job, &m.lease, out);
        Ok(())
    }

    /// Checks and records a commitment; says whether results are being taken (the
    /// volunteer should send its result now) or not yet. A volunteer waiting for the reveal
    /// sends its (small) commitment again: that is its poll, held until the reveal.
    fn on_commit(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Result<Committed, Refusal> {
        let signed = signed_by::<Commitment>(bytes, from)?;
        let node = from;
        let m = signed.message();
        if m.node != node {
            return Err(Refusal::WrongSigner);
        }
        fresh(m.time, now)?;
        let new = self
            .coordinator
            .on_commit(&m.job, &m.lease, m.digest, node, now)?;
        if new {
            if let Some(sig) = &m.provenance_sig {
                self.coordinator
                    .set_provenance(&m.job, &m.lease, sig.into_array());
            }
            self.persist_lease(&m.job, &m.lease, out);
            debug!(job = %m.job.short(), node = %node.short(), "commitment received");
            self.emit(
                Event::LeaseCommitted {
                    job: m.job.to_string(),
                    node: node.to_string(),
                },
                out,
            );
            // The last commitment reveals at once: no need to wait for the next tick.
            self.coordinator_tick(now, out);
        }
        let revealed = self
            .coordinator
            .job(&m.job)
            .is_some_and(|j| j.takes_results());
        Ok(if revealed {
            Committed::Revealed
        } else {
            Committed::Waiting(m.job)
        })
    }

    fn on_result(
        &mut self,
        from: NodeId,
        bytes: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let signed = signed_by::<BuildResult>(bytes, from)?;
        let node = from;
        let m = signed.message();
        if m.manifest.root() != m.manifest_root {
            return Err(Refusal::Invalid {
                why: "the manifest does not hash to the manifest root".into(),
            });
        }
        let digest = ContentHash::of(bytes);
        let taken = match self.coordinator.on_result(&m.job, m, digest, node, now) {
            Ok(t) => t,
            Err(refusal) => {
                // A lie loses its lease: keep that, and offer the replica again.
                if let Some(lease) = m.lease
                    && let Some(l) = self.coordinator.lease(&m.job, &lease)
                    && l.state == coordinator::LeaseState::Failed
                {
                    warn!(job = %m.job.short(), node = %node.short(), "result refused, lease lost: {refusal}");
                    self.persist_lease(&m.job, &lease, out);
                    self.announce(&m.job, out);
                }
                return Err(refusal);
            }
        };
        let lease = m
            .lease
            .unwrap_or(LeaseId(serde_bytes::ByteArray::new([0; 16])));
        let provenance = self
            .coordinator
            .lease(&m.job, &lease)
            .and_then(|l| l.provenance_sig.map(|s| s.into_array()));
        let record = ResultRecord {
            job: m.job,
            node,
            envelope: bytes.to_vec(),
            received_at: now,
        };
        match taken {
            TakenAs::Duplicate => return Ok(()),
            TakenAs::Late => {
                info!(job = %m.job.short(), node = %node.short(), "a result after settlement: kept as late");
                out.push(Effect::Persist(StoreOp::InsertResult {
                    record,
                    provenance,
                    late: true,
                }));
                self.emit(
                    Event::ResultLate {
                        job: m.job.to_string(),
                        node: node.to_string(),
                    },
                    out,
                );
                return Err(Refusal::Settled);
            }
            TakenAs::Done | TakenAs::Failed => {}
        }
        self.persist_lease(&m.job, &lease, out);
        out.push(Effect::Persist(StoreOp::InsertResult {
            record,
            provenance,
            late: false,
        }));
        info!(job = %m.job.short(), node = %node.short(), status = m.status.word(), root = %m.manifest_root.short(), "result received");
        self.emit(
            Event::ResultReceived {
                job: m.job.to_string(),
                node: node.to_string(),
                status: m.status.word().into(),
                manifest_root: m.manifest_root.to_string(),
            },
            out,
        );
        if taken == TakenAs::Done {
            self.taken.entry(m.job).or_default().insert(
                lease,
                Taken {
                    node,
                    result: m.clone(),
                    envelope: bytes.to_vec(),
                },
            );
        } else {
            // The replica is free again (a VM that failed, or a volunteer whose owner
            // stopped it): announce now rather than at the next interval.
            self.announce(&m.job, out);
        }
        self.coordinator_tick(now, out);
        Ok(())
    }

    /// Moves the coordinated jobs along the clock: leases lapse, reveals happen, jobs whose
    /// results are in go to be judged.
    pub(super) fn coordinator_tick(&mut self, now: u64, out: &mut Vec<Effect>) {
        self.coordinator_lapse(now, out);
        self.release_parked(now, out);
    }

    fn coordinator_lapse(&mut self, now: u64, out: &mut Vec<Effect>) {
        for lapse in self.coordinator.tick(now) {
            match lapse {
                Lapse::Expired(job, lease) => {
                    info!(job = %job.short(), node = %lease.node.short(), "lease lost");
                    self.emit(
                        Event::LeaseExpired {
                            job: job.to_string(),
                            node: lease.node.to_string(),
                        },
                        out,
                    );
                    out.push(Effect::Persist(StoreOp::PutLease { job, lease }));
                    self.announce(&job, out);
                }
                Lapse::Revealed(job) => {
                    debug!(job = %job.short(), "taking results");
                    self.persist_round(&job, out);
                }
            }
        }
        for id in self.coordinator.unsettled() {
            if self.coordinator.take_ready(&id, now) {
                let Some(j) = self.coordinator.job(&id) else {
                    continue;
                };
                let results = self
                    .taken
                    .get(&id)
                    .map(|t| {
                        j.leases
                            .iter()
                            .filter(|l| l.state == coordinator::LeaseState::Done)
                            .filter_map(|l| t.get(&l.id))
                            .map(|t| (t.node, t.result.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Effect::Judge {
                    job: id,
                    spec: Box::new(j.job.clone()),
                    results,
                });
            }
        }
    }

    fn persist_round(&self, job: &JobId, out: &mut Vec<Effect>) {
        if let Some(j) = self.coordinator.job(job) {
            out.push(Effect::Persist(StoreOp::SetRound {
                job: *job,
                round: Round {
                    extra: j.extra,
                    revealed_at: j.revealed_at,
                },
            }));
        }
    }

    /// The verdict is in: break a tie, or settle.
    pub(super) fn on_judged(
        &mut self,
        id: JobId,
        verdict: Verdict,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        if verdict.verdict == Kind::Differs
            && verdict.majority.is_empty()
            && self.coordinator.request_tiebreak(&id)
        {
            info!(job = %id.short(), "replicas disagree with no majority: asking one more node");
            self.persist_round(&id, out);
            self.announce(&id, out);
            return;
        }
        let Some(j) = self.coordinator.settle(&id) else {
            return;
        };
        let replicas: Vec<SettledReplica> = j
            .leases
            .iter()
            .filter(|l| l.state == coordinator::LeaseState::Done)
            .filter_map(|l| {
                Some(SettledReplica {
                    lease: l.id,
                    node: l.node,
                    variant: l.variant,
                    operator: l.operator,
                    cert: l.cert.clone(),
                    result: l.result?,
                })
            })
            .collect();
        let kind = verdict.verdict;
        let settlement = Settlement {
            job: id,
            replicas,
            verdict: kind,
            root: verdict.root.as_deref().and_then(|r| r.parse().ok()),
            time: now,
        };
        let bytes = Signed::sign(settlement, &self.cfg.key).to_bytes();
        // Reputation counts only real disagreement: a strict majority outvoting a node, and
        // not a split the job's own variations explain. Once per job per node.
        let fair = !verdict.majority.is_empty() && verdict.explained_by.is_empty();
        let mut votes = Vec::new();
        for t in self.taken.get(&id).into_iter().flat_map(|t| t.values()) {
            if !fair {
                break;
            }
            let name = t.node.to_string();
            let agreed = if verdict.majority.contains(&name) {
                true
            } else if verdict.minority.contains(&name) {
                warn!(job = %id.short(), node = %t.node.short(), "node disagreed with the majority");
                false
            } else {
                continue;
            };
            let r = self.reputation.entry(t.node).or_default();
            if agreed {
                r.agreements += 1;
            } else {
                r.disagreements += 1;
            }
            votes.push((t.node, agreed));
        }
        out.push(Effect::Persist(StoreOp::Settle {
            job: id,
            settlement: bytes.clone(),
            votes,
            now,
        }));
        info!(job = %id.short(), verdict = kind.word(), "settled");
        self.emit(
            Event::JobSettled {
                job: id.to_string(),
                verdict: kind.word().into(),
            },
            out,
        );
        // Settled: the settlement, then the results it names, may be seen by anyone.
        self.publish(Topic::Settlements, bytes, out);
        for t in self
            .taken
            .remove(&id)
            .into_iter()
            .flat_map(|t| t.into_values())
        {
            if t.envelope.len() <= barn_protocol::limits::MAX_GOSSIP_MESSAGE {
                self.publish(Topic::Results, t.envelope, out);
            }
        }
    }

    /// A job the owner submitted: coordinate it, announce it, and maybe build it too.
    pub(super) fn submit(
        &mut self,
        envelope: Vec<u8>,
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Result<JobId, String> {
        let signed = Signed::<Job>::from_bytes(&envelope).map_err(|e| e.to_string())?;
        let job = signed.message().clone();
        if job.coordinator != self.me {
            return Err(format!(
                "the job names {} as its coordinator, not this node ({})",
                job.coordinator, self.me
            ));
        }
        let id = JobId::of(&signed);
        if self.coordinator.job(&id).is_some() {
            return Ok(id);
        }
        let submitter = SubmitterId(signed.signer());
        out.push(Effect::Persist(StoreOp::InsertJob(JobRecord {
            id,
            envelope: envelope.clone(),
            submitter,
            state: JobState::Open,
            created: job.created,
            expires: job.expires,
            coordinated: true,
        })));
        info!(job = %id.short(), replicas = job.spec.replicas, "coordinating a new job");
        self.emit(
            Event::JobSubmitted {
                job: id.to_string(),
            },
            out,
        );
        self.by_envelope
            .insert(barn_protocol::ContentHash::of(&envelope), id);
        self.jobs.insert(
            id,
            Known {
                envelope,
                job: job.clone(),
                submitter,
                coordinated: true,
            },
        );
        self.coordinator
            .add_job(id, Coordinator::new_job(job.clone(), now));
        self.announce(&id, out);
        // This node may volunteer for its own job too.
        let actions = self.volunteer.on_job(id, job, submitter, now);
        self.carry_out(actions, now, out);
        Ok(id)
    }
}

/// A signed request from `from`: it decodes, its signature verifies, and its signer is the
/// peer that sent it.
fn signed_by<T: barn_protocol::envelope::Message>(
    bytes: &[u8],
    from: NodeId,
) -> Result<Signed<T>, Refusal> {
    let signed = Signed::<T>::from_bytes(bytes).map_err(|e| Refusal::Invalid {
        why: format!("{}: {e}", T::KIND),
    })?;
    if NodeId(signed.signer()) != from {
        return Err(Refusal::WrongSigner);
    }
    Ok(signed)
}
