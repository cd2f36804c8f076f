//! Gossip the core hears: job announcements (checked, stored, offered to the volunteer),
//! node adverts, settlements from coordinators, and the settled results they name. Every
//! message gets an explicit [`Acceptance`]: accept (valid, forward), reject (invalid,
//! penalise the sender) or ignore (valid, not for us or not counted).

use barn_protocol::message::*;
use barn_protocol::settlement::Settlement;
use barn_protocol::{ContentHash, NodeId, Signed, SubmitterId};
use tracing::debug;

use super::{Acceptance, Core, Effect, Known, Topic};
use crate::store::db::{JobRecord, JobState, ResultRecord};
use crate::store::ops::StoreOp;
use crate::view::Event;

impl Core {
    pub(super) fn on_gossip(
        &mut self,
        topic: Topic,
        data: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Acceptance {
        match topic {
            Topic::Jobs => self.on_job_gossip(data, now, out),
            Topic::Adverts => self.on_advert_gossip(data, now, out),
            Topic::Results => self.on_result_gossip(data, now, out),
            Topic::Settlements => self.on_settlement_gossip(data, out),
        }
    }

    fn on_job_gossip(&mut self, data: &[u8], now: u64, out: &mut Vec<Effect>) -> Acceptance {
        let Ok(ann) = barn_protocol::cbor::from_slice::<JobAnnounce>(data, JobAnnounce::MAX_SIZE)
        else {
            return Acceptance::Reject;
        };
        let signed = match Signed::<Job>::from_bytes(&ann.job) {
            Ok(s) => s,
            Err(e) => {
                debug!("invalid job announcement: {e}");
                return Acceptance::Reject;
            }
        };
        if let Err(why) = barn_protocol::jobfile::validate(&signed.message().spec) {
            debug!("job announcement out of bounds: {why}");
            return Acceptance::Reject;
        }
        let id = JobId::of(&signed);
        let job = signed.message().clone();
        if job.expires <= now {
            return Acceptance::Ignore;
        }
        let submitter = SubmitterId(signed.signer());
        if !self.jobs.contains_key(&id) {
            out.push(Effect::Persist(StoreOp::InsertJob(JobRecord {
                id,
                envelope: ann.job.clone(),
                submitter,
                state: JobState::Open,
                created: job.created,
                expires: job.expires,
                coordinated: false,
            })));
            self.emit(
                Event::JobAnnounced {
                    job: id.to_string(),
                },
                out,
            );
            self.jobs.insert(
                id,
                Known {
                    envelope: ann.job,
                    job: job.clone(),
                    submitter,
                    coordinated: false,
                },
            );
        }
        let actions = self.volunteer.on_job(id, job, submitter, now);
        self.carry_out(actions, now, out);
        Acceptance::Accept
    }

    fn on_advert_gossip(&mut self, data: &[u8], now: u64, out: &mut Vec<Effect>) -> Acceptance {
        let Ok(signed) = Signed::<NodeAdvert>::from_bytes(data) else {
            return Acceptance::Reject;
        };
        let a = signed.message();
        if NodeId(signed.signer()) != a.node {
            return Acceptance::Reject;
        }
        if a.expires <= now {
            return Acceptance::Ignore;
        }
        out.push(Effect::AddAddrs {
            node: a.node,
            addrs: a.addrs.clone(),
        });
        out.push(Effect::Persist(StoreOp::UpsertAdvert {
            node: a.node,
            advert: data.to_vec(),
            seen: now,
        }));
        Acceptance::Accept
    }

    /// A settled result: kept only when a settlement this node checked names it. Results
    /// nobody leased, copies and late ones are never stored from gossip.
    fn on_result_gossip(&mut self, data: &[u8], now: u64, out: &mut Vec<Effect>) -> Acceptance {
        let Ok(signed) = Signed::<BuildResult>::from_bytes(data) else {
            return Acceptance::Reject;
        };
        let m = signed.message();
        if NodeId(signed.signer()) != m.node || m.manifest.root() != m.manifest_root {
            return Acceptance::Reject;
        }
        if self.coordinator.job(&m.job).is_some() {
            return Acceptance::Ignore; // the direct copy is the one that counts
        }
        let digest = ContentHash::of(data);
        let named = self
            .settled
            .get(&m.job)
            .is_some_and(|d| d.contains(&digest));
        if !named {
            return Acceptance::Ignore;
        }
        out.push(Effect::Persist(StoreOp::InsertResult {
            record: ResultRecord {
                job: m.job,
                node: m.node,
                envelope: data.to_vec(),
                received_at: now,
            },
            provenance: None,
            late: false,
        }));
        Acceptance::Accept
    }

    fn on_settlement_gossip(&mut self, data: &[u8], out: &mut Vec<Effect>) -> Acceptance {
        let Ok(signed) = Signed::<Settlement>::from_bytes(data) else {
            return Acceptance::Reject;
        };
        let id = signed.message().job;
        let Some(known) = self.jobs.get(&id) else {
            // A job this node never heard of: it cannot check who may settle it.
            return Acceptance::Ignore;
        };
        if known.coordinated || self.settled.contains_key(&id) {
            return Acceptance::Ignore;
        }
        let settlement = match Settlement::check(data, &id, &known.job.coordinator) {
            Ok(s) => s,
            Err(e) => {
                debug!(job = %id.short(), "settlement refused: {e}");
                return Acceptance::Reject;
            }
        };
        let s = settlement.message();
        self.settled
            .insert(id, s.replicas.iter().map(|r| r.result).collect());
        out.push(Effect::Persist(StoreOp::PutSettlement {
            job: id,
            settlement: data.to_vec(),
        }));
        self.emit(
            Event::JobSettled {
                job: id.to_string(),
                verdict: s.verdict.word().into(),
            },
            out,
        );
        Acceptance::Accept
    }
}
