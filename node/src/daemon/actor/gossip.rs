//! Gossip the actor hears: job announcements (checked, stored, offered to the volunteer
//! scheduler), node adverts and settled results. Every message gets a verdict for
//! gossipsub: accept, reject (invalid, penalised) or ignore (valid, not for us).

use barn_protocol::message::*;
use barn_protocol::{NodeId, Signed, SubmitterId};
use libp2p::{Multiaddr, PeerId, gossipsub};
use tracing::debug;

use super::{Actor, now};
use crate::api::types::Event;
use crate::net::swarm::{TOPIC_ADVERTS, TOPIC_JOBS, TOPIC_RESULTS};
use crate::store::db::{self, JobRecord, ResultRecord};

impl Actor {
    pub(super) fn on_gossip(
        &mut self,
        source: PeerId,
        id: gossipsub::MessageId,
        msg: gossipsub::Message,
    ) {
        let _span = tracing::debug_span!("peer", peer = %source).entered();
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let verdict = match msg.topic.as_str() {
            TOPIC_JOBS => self.on_job_gossip(&msg.data),
            TOPIC_ADVERTS => self.on_advert_gossip(&msg.data),
            TOPIC_RESULTS => self.on_result_gossip(&msg.data),
            _ => Err(true),
        };
        let acceptance = match verdict {
            Ok(()) => Accept,
            Err(true) => Reject,
            Err(false) => Ignore,
        };
        self.p
            .swarm
            .behaviour_mut()
            .report_gossip(&id, &source, acceptance);
    }

    /// `Err(true)`: invalid (reject, penalise); `Err(false)`: valid but not for us.
    pub(super) fn on_job_gossip(&mut self, data: &[u8]) -> Result<(), bool> {
        let ann: JobAnnounce =
            barn_protocol::cbor::from_slice(data, JobAnnounce::MAX_SIZE).map_err(|_| true)?;
        let signed = Signed::<Job>::from_bytes(&ann.job).map_err(|e| {
            debug!("invalid job announcement: {e}");
            true
        })?;
        if let Err(why) = barn_protocol::jobfile::validate(&signed.message().spec) {
            debug!("job announcement out of bounds: {why}");
            return Err(true);
        }
        let id = JobId::of(&signed);
        let job = signed.message().clone();
        let now = now();
        if job.expires <= now {
            return Err(false);
        }
        let submitter = SubmitterId(signed.signer());
        let rec = JobRecord {
            id,
            envelope: ann.job.clone(),
            submitter,
            state: db::JobState::Open,
            created: job.created,
            expires: job.expires,
            coordinated: false,
        };
        if let Ok(true) = self.p.db.insert_job(&rec) {
            self.emit(Event::JobAnnounced {
                job: id.to_string(),
            });
        }
        let actions = self.volunteer.on_job(id, job, submitter, now);
        self.carry_out(actions);
        Ok(())
    }

    pub(super) fn on_advert_gossip(&mut self, data: &[u8]) -> Result<(), bool> {
        let signed = Signed::<NodeAdvert>::from_bytes(data).map_err(|_| true)?;
        let a = signed.message();
        if NodeId(signed.signer()) != a.node {
            return Err(true);
        }
        let now = now();
        if a.expires <= now {
            return Err(false);
        }
        let peer = a.node.to_peer_id();
        for addr in a.addrs.iter().filter_map(|s| s.parse::<Multiaddr>().ok()) {
            self.p.swarm.behaviour_mut().add_peer_address(&peer, addr);
        }
        let _ = self.p.db.upsert_node_advert(&a.node, data, now);
        Ok(())
    }

    pub(super) fn on_result_gossip(&mut self, data: &[u8]) -> Result<(), bool> {
        let signed = Signed::<BuildResult>::from_bytes(data).map_err(|_| true)?;
        let m = signed.message();
        if NodeId(signed.signer()) != m.node || m.manifest.root() != m.manifest_root {
            return Err(true);
        }
        if self.coordinator.job(&m.job).is_some() {
            return Ok(()); // the direct copy is the one that counts
        }
        let _ = self.p.db.insert_result(&ResultRecord {
            job: m.job,
            node: m.node,
            envelope: data.to_vec(),
            received_at: now(),
        });
        Ok(())
    }
}
