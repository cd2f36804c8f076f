//! Gossip the core hears: job announcements (checked, stored, offered to the volunteer),
//! node adverts, settlements from coordinators, and the settled results they name. Every
//! message gets an explicit [`Acceptance`]: accept (valid, forward), reject (invalid,
//! penalise the sender) or ignore (valid, not for us or not counted), with its reason.
//!
//! Each topic has one rightful publisher, checked against gossipsub's signed author (the
//! `source`): a job's coordinator announces it and publishes its settlement and settled
//! results; a node publishes its own advert. A valid job wrapped in a new announcement by
//! anyone else, or a replayed one, is rejected before anything is stored or forwarded, so
//! one peer cannot make every node verify, store and relay copies; and a flood of adverts
//! needs as many connected identities as adverts. A re-announcement of a known job is not
//! verified again. Jobs from untrusted submitters are kept up to [`MAX_UNTRUSTED_JOBS`],
//! the least recently announced forgotten first; adverts are bounded in the database
//! (`store::ops::MAX_ADVERTS`).

use barn_protocol::message::*;
use barn_protocol::settlement::Settlement;
use barn_protocol::{ContentHash, NodeId, Signed, SubmitterId};
use tracing::debug;

use super::{Acceptance, Core, Effect, Known, MAX_UNTRUSTED_JOBS, Topic};
use crate::store::db::{JobRecord, JobState, ResultRecord};
use crate::store::ops::StoreOp;
use crate::view::Event;

impl Core {
    pub(super) fn on_gossip(
        &mut self,
        topic: Topic,
        source: Option<NodeId>,
        data: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Acceptance {
        match topic {
            Topic::Jobs => self.on_job_gossip(source, data, now, out),
            Topic::Adverts => self.on_advert_gossip(source, data, now, out),
            Topic::Results => self.on_result_gossip(source, data, now, out),
            Topic::Settlements => self.on_settlement_gossip(source, data, out),
        }
    }

    fn on_job_gossip(
        &mut self,
        source: Option<NodeId>,
        data: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Acceptance {
        let Ok(ann) = barn_protocol::cbor::from_slice::<JobAnnounce>(data, JobAnnounce::MAX_SIZE)
        else {
            return Acceptance::Reject("undecodable");
        };
        // A re-announcement of a job already checked: only who announces it is new.
        if let Some(id) = self.by_envelope.get(&ContentHash::of(&ann.job)).copied()
            && let Some(known) = self.jobs.get(&id)
        {
            if source != Some(known.job.coordinator) {
                return Acceptance::Reject("not_from_coordinator");
            }
            if known.job.expires <= now {
                return Acceptance::Ignore("expired");
            }
            let (job, submitter) = (known.job.clone(), known.submitter);
            if let Some(heard) = self.untrusted.get_mut(&id) {
                *heard = now;
            }
            let actions = self.volunteer.on_job(id, job, submitter, now);
            self.carry_out(actions, now, out);
            return Acceptance::Accept;
        }
        let signed = match Signed::<Job>::from_bytes(&ann.job) {
            Ok(s) => s,
            Err(e) => {
                debug!("invalid job announcement: {e}");
                return Acceptance::Reject("bad_signature");
            }
        };
        if source != Some(signed.message().coordinator) {
            return Acceptance::Reject("not_from_coordinator");
        }
        if let Err(why) = barn_protocol::jobfile::validate(&signed.message().spec) {
            debug!("job announcement out of bounds: {why}");
            return Acceptance::Reject("out_of_bounds");
        }
        let id = JobId::of(&signed);
        let job = signed.message().clone();
        if job.expires <= now {
            return Acceptance::Ignore("expired");
        }
        let submitter = SubmitterId(signed.signer());
        if !self.jobs.contains_key(&id) {
            self.by_envelope.insert(ContentHash::of(&ann.job), id);
            if !self.cfg.trust.trusts(&submitter) {
                self.untrusted.insert(id, now);
                self.forget_untrusted_over_the_limit(id, out);
            }
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

    /// Forgets the least recently announced untrusted jobs (never `keep`, the one just
    /// heard) while there are more than [`MAX_UNTRUSTED_JOBS`].
    fn forget_untrusted_over_the_limit(&mut self, keep: JobId, out: &mut Vec<Effect>) {
        while self.untrusted.len() > MAX_UNTRUSTED_JOBS {
            let Some(oldest) = self
                .untrusted
                .iter()
                .filter(|(id, _)| **id != keep)
                .min_by_key(|(id, heard)| (**heard, **id))
                .map(|(id, _)| *id)
            else {
                return;
            };
            self.untrusted.remove(&oldest);
            if let Some(k) = self.jobs.remove(&oldest) {
                self.by_envelope.remove(&ContentHash::of(&k.envelope));
            }
            self.settled.remove(&oldest);
            self.counts.forgotten_jobs += 1;
            out.push(Effect::Persist(StoreOp::ForgetJob(oldest)));
        }
    }

    fn on_advert_gossip(
        &mut self,
        source: Option<NodeId>,
        data: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Acceptance {
        let Ok(signed) = Signed::<NodeAdvert>::from_bytes(data) else {
            return Acceptance::Reject("bad_signature");
        };
        let a = signed.message();
        if NodeId(signed.signer()) != a.node {
            return Acceptance::Reject("wrong_signer");
        }
        if source != Some(a.node) {
            return Acceptance::Reject("not_from_advertiser");
        }
        if a.expires <= now {
            return Acceptance::Ignore("expired");
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
    fn on_result_gossip(
        &mut self,
        source: Option<NodeId>,
        data: &[u8],
        now: u64,
        out: &mut Vec<Effect>,
    ) -> Acceptance {
        let Ok(signed) = Signed::<BuildResult>::from_bytes(data) else {
            return Acceptance::Reject("bad_signature");
        };
        let m = signed.message();
        if NodeId(signed.signer()) != m.node || m.manifest.root() != m.manifest_root {
            return Acceptance::Reject("wrong_signer");
        }
        if self.coordinator.job(&m.job).is_some() {
            return Acceptance::Ignore("own_job"); // the direct copy is the one that counts
        }
        let Some(known) = self.jobs.get(&m.job) else {
            // Not relayed: nobody here can tell whether it belongs to anything.
            return Acceptance::Ignore("unknown_job");
        };
        if source != Some(known.job.coordinator) {
            return Acceptance::Reject("not_from_coordinator");
        }
        let digest = ContentHash::of(data);
        let named = self
            .settled
            .get(&m.job)
            .is_some_and(|d| d.contains(&digest));
        if !named {
            return Acceptance::Ignore("not_settled");
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

    fn on_settlement_gossip(
        &mut self,
        source: Option<NodeId>,
        data: &[u8],
        out: &mut Vec<Effect>,
    ) -> Acceptance {
        let Ok(signed) = Signed::<Settlement>::from_bytes(data) else {
            return Acceptance::Reject("bad_signature");
        };
        let id = signed.message().job;
        let Some(known) = self.jobs.get(&id) else {
            // A job this node never heard of: it cannot check who may settle it.
            return Acceptance::Ignore("unknown_job");
        };
        if source != Some(known.job.coordinator) {
            return Acceptance::Reject("not_from_coordinator");
        }
        if known.coordinated || self.settled.contains_key(&id) {
            return Acceptance::Ignore("known");
        }
        let settlement = match Settlement::check(data, &id, &known.job.coordinator) {
            Ok(s) => s,
            Err(e) => {
                debug!(job = %id.short(), "settlement refused: {e}");
                return Acceptance::Reject("bad_settlement");
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
