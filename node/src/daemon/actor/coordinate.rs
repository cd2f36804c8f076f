//! The coordinator's side of the actor: claims become grants, heartbeats renew leases,
//! commitments come before results, and a job whose replicas all reported is judged,
//! settled and published.

use barn_protocol::message::*;
use barn_protocol::{NodeId, Signed};
use libp2p::PeerId;
use tracing::{debug, info, warn};

use super::{Actor, NOT_YET, fresh, now, now_ms};
use crate::api::types::Event;
use crate::net::codec::Response;
use crate::net::swarm::TOPIC_RESULTS;
use crate::sched::coordinator::{self, LeaseState};
use crate::store::db::{self, LeaseRecord, ResultRecord};

impl Actor {
    pub(super) fn record_grant(
        &mut self,
        job: &JobId,
        node: NodeId,
        decision: &GrantDecision,
        now: u64,
    ) {
        if let GrantDecision::Granted { lease, expires, .. } = decision {
            self.granted_ms.entry(*lease).or_insert_with(now_ms);
            let rec = LeaseRecord {
                id: *lease,
                job: *job,
                node,
                state: db::LeaseState::Active,
                expires: *expires,
                granted_at: now,
            };
            if self.p.db.insert_lease(&rec).is_err() {
                let _ = self
                    .p
                    .db
                    .update_lease(lease, db::LeaseState::Active, *expires);
            }
            info!(job = %job.short(), node = %node.short(), "granted a lease");
            self.emit(Event::LeaseGranted {
                job: job.to_string(),
                node: node.to_string(),
            });
        }
    }

    pub(super) fn on_claim(&mut self, peer: PeerId, bytes: &[u8]) -> Response {
        let claim = match Signed::<Claim>::from_bytes(bytes) {
            Ok(c) => c,
            Err(e) => return Response::Rejected(format!("claim: {e}")),
        };
        let node = NodeId(claim.signer());
        if node.to_peer_id() != peer || claim.message().node != node {
            return Response::Rejected("claim signed by another node than the sender".into());
        }
        let now = now();
        if let Err(e) = fresh(claim.message().time, now) {
            return Response::Rejected(format!("claim: {e}"));
        }
        let job = claim.message().job;
        let decision = self
            .coordinator
            .on_claim(&job, node, self.reputation(&node), now);
        self.record_grant(&job, node, &decision, now);
        let grant = Grant {
            job,
            node,
            decision,
            time: now,
        };
        Response::Grant(Signed::sign(grant, &self.p.key).to_bytes())
    }

    pub(super) fn on_heartbeat(&mut self, peer: PeerId, bytes: &[u8]) -> Response {
        let hb = match Signed::<Heartbeat>::from_bytes(bytes) {
            Ok(h) => h,
            Err(e) => return Response::Rejected(format!("heartbeat: {e}")),
        };
        let node = NodeId(hb.signer());
        if node.to_peer_id() != peer {
            return Response::Rejected("heartbeat signed by another node than the sender".into());
        }
        let m = hb.message();
        if let Err(e) = fresh(m.time, now()) {
            return Response::Rejected(format!("heartbeat: {e}"));
        }
        match self.coordinator.on_heartbeat(&m.job, &m.lease, node, now()) {
            Ok(expires) => {
                let _ = self
                    .p
                    .db
                    .update_lease(&m.lease, db::LeaseState::Active, expires);
                Response::Ack
            }
            Err(e) => Response::Rejected(e.to_string()),
        }
    }

    /// Checks and records a commitment for a job this node coordinates.
    pub(super) fn accept_commit(&mut self, bytes: &[u8], sender: NodeId) -> Result<(), String> {
        let signed =
            Signed::<Commitment>::from_bytes(bytes).map_err(|e| format!("commitment: {e}"))?;
        let node = NodeId(signed.signer());
        let m = signed.message();
        fresh(m.time, now()).map_err(|e| format!("commitment: {e}"))?;
        if node != sender || m.node != node {
            return Err("commitment signed by another node than the sender".into());
        }
        self.coordinator
            .on_commit(&m.job, &m.lease, m.digest, node, now())
            .map_err(|e| e.to_string())?;
        if let Some(sig) = &m.provenance_sig {
            self.provenance.insert((m.job, node), sig.into_array());
        }
        debug!(job = %m.job.short(), node = %node.short(), "commitment received");
        Ok(())
    }

    /// Checks and records a result for a job this node coordinates.
    pub(super) fn accept_result(&mut self, bytes: &[u8], sender: NodeId) -> Result<(), String> {
        let signed =
            Signed::<BuildResult>::from_bytes(bytes).map_err(|e| format!("result: {e}"))?;
        let node = NodeId(signed.signer());
        if node != sender {
            return Err("result signed by another node than the sender".into());
        }
        let m = signed.message();
        if m.manifest.root() != m.manifest_root {
            return Err("the manifest does not hash to the manifest root".into());
        }
        let now = now();
        let state = self
            .coordinator
            .on_result(&m.job, m, node, now)
            .map_err(|e| match e {
                coordinator::Refusal::NotYet => format!("{NOT_YET}{e}"),
                e => e.to_string(),
            })?;
        if let Some(lease) = m.lease {
            let s = if state == LeaseState::Done {
                db::LeaseState::Completed
            } else {
                db::LeaseState::Released
            };
            let _ = self.p.db.update_lease(&lease, s, now);
        }
        let _ = self.p.db.insert_result(&ResultRecord {
            job: m.job,
            node,
            envelope: bytes.to_vec(),
            received_at: now,
        });
        if let Some(sig) = self.provenance.remove(&(m.job, node)) {
            let _ = self.p.db.set_result_provenance(&m.job, &node, &sig);
        }
        info!(job = %m.job.short(), node = %node.short(), status = m.status.word(), root = %m.manifest_root.short(), "result received");
        self.emit(Event::ResultReceived {
            job: m.job.to_string(),
            node: node.to_string(),
            status: m.status.word().into(),
            manifest_root: m.manifest_root.to_string(),
        });
        if self.coordinator.job(&m.job).is_some_and(|j| j.complete()) {
            self.on_complete(m.job);
        } else if state == LeaseState::Failed {
            // The replica is free again (a VM that failed, or a volunteer whose owner
            // stopped it): announce now rather than at the next interval.
            self.announce(&m.job);
        }
        Ok(())
    }

    /// Every replica of a job has a result: judge, break a tie if allowed, or settle
    /// reputations.
    pub(super) fn on_complete(&mut self, id: JobId) {
        let Some(cjob) = self.coordinator.job(&id) else {
            return;
        };
        let job = cjob.job.clone();
        let results: Vec<(NodeId, BuildResult)> = self
            .p
            .db
            .list_results(&id)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| Signed::<BuildResult>::from_bytes(&r.envelope).ok())
            .map(|s| (NodeId(s.signer()), s.message().clone()))
            .collect();
        let verdict = crate::verify::verdict::judge(&job, &results);
        if verdict.verdict == crate::verify::verdict::Kind::Differs
            && verdict.majority.is_empty()
            && self.coordinator.request_tiebreak(&id)
        {
            info!(job = %id.short(), "replicas disagree with no majority: asking one more node");
            self.announce(&id);
            return;
        }
        let _ = self.p.db.set_job_state(&id, db::JobState::Complete);
        info!(job = %id.short(), verdict = verdict.verdict.word(), "every replica has a result");
        self.emit(Event::JobSettled {
            job: id.to_string(),
            verdict: verdict.verdict.word().into(),
        });
        // Settled: now every result may be seen by anyone.
        for r in self.p.db.list_results(&id).unwrap_or_default() {
            if r.envelope.len() <= barn_protocol::limits::MAX_GOSSIP_MESSAGE {
                self.publish(TOPIC_RESULTS, r.envelope);
            }
        }
        let now = now();
        // Reputation counts only real disagreement: a strict majority outvoting a node, and
        // not a split the job's own variations explain.
        let fair = !verdict.majority.is_empty() && verdict.explained_by.is_empty();
        for (node, _) in results.iter().filter(|_| fair) {
            let name = node.to_string();
            if verdict.majority.contains(&name) {
                let _ = self.p.db.record_agreement(node, true, now);
            } else if verdict.minority.contains(&name) {
                warn!(job = %id.short(), node = %node.short(), "node disagreed with the majority");
                let _ = self.p.db.record_agreement(node, false, now);
            }
        }
    }
}
