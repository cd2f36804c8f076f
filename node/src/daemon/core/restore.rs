//! Rebuilding a core from the database after a restart: the jobs it coordinates with their
//! leases, rounds and the results already taken; the jobs it may still claim; the results
//! it has not delivered yet; settlements it heard; and what it counts of other nodes.
//!
//! Stored envelopes are checked once here, at start, not in the event loop.

use std::collections::BTreeMap;

use barn_protocol::message::{BuildResult, Job};
use barn_protocol::settlement::Settlement;
use barn_protocol::{ContentHash, Signed};
use tracing::{info, warn};

use super::{Core, CoreConfig, Known, Outgoing, Taken};
use crate::sched::coordinator::{CJob, LeaseState, Reputation};
use crate::store::db::{Db, DbError, JobState};

impl Core {
    /// A core with what `db` remembers, at `now`.
    pub fn restore(cfg: CoreConfig, db: &Db, now: u64) -> Result<Self, DbError> {
        let mut core = Core::new(cfg);
        for n in db.list_nodes()? {
            core.reputation.insert(
                n.id,
                Reputation {
                    agreements: n.agreements,
                    disagreements: n.disagreements,
                },
            );
        }
        let outgoing = db.list_outgoing()?;
        for rec in db.list_jobs()? {
            let signed = match Signed::<Job>::from_bytes(&rec.envelope) {
                Ok(s) => s,
                Err(e) => {
                    warn!(job = %rec.id.short(), "a stored job does not verify: {e}");
                    continue;
                }
            };
            let job = signed.message().clone();
            core.by_envelope
                .insert(ContentHash::of(&rec.envelope), rec.id);
            if !rec.coordinated && !core.cfg.trust.trusts(&rec.submitter) {
                core.untrusted.insert(rec.id, rec.created);
            }
            core.jobs.insert(
                rec.id,
                Known {
                    envelope: rec.envelope.clone(),
                    job: job.clone(),
                    submitter: rec.submitter,
                    coordinated: rec.coordinated,
                },
            );
            let settlement = db.settlement(&rec.id)?;
            if rec.coordinated {
                let leases = db.lease_details(&rec.id, job.spec.timeout_secs)?;
                let round = db.round(&rec.id)?;
                let settled = settlement.is_some() || rec.state != JobState::Open;
                // Results already taken, by the digest their lease names.
                let mut taken = BTreeMap::new();
                if !settled {
                    for r in db.list_results(&rec.id)? {
                        let digest = ContentHash::of(&r.envelope);
                        let Some(l) = leases
                            .iter()
                            .find(|l| l.state == LeaseState::Done && l.result == Some(digest))
                        else {
                            continue;
                        };
                        if let Ok(s) = Signed::<BuildResult>::from_bytes(&r.envelope) {
                            taken.insert(
                                l.id,
                                Taken {
                                    node: r.node,
                                    result: s.message().clone(),
                                    envelope: r.envelope,
                                },
                            );
                        }
                    }
                    info!(job = %rec.id.short(), leases = leases.len(), "resuming coordination");
                }
                core.coordinator.add_job(
                    rec.id,
                    CJob {
                        job: job.clone(),
                        leases,
                        added: job.created.min(now),
                        extra: round.extra,
                        revealed_at: round.revealed_at,
                        judging: false,
                        settled,
                    },
                );
                if !taken.is_empty() {
                    core.taken.insert(rec.id, taken);
                }
            } else if let Some(bytes) = settlement
                && let Ok(s) = Settlement::check(&bytes, &rec.id, &job.coordinator)
            {
                core.settled.insert(
                    rec.id,
                    s.message().replicas.iter().map(|r| r.result).collect(),
                );
            }
            if outgoing.iter().any(|o| o.job == rec.id) {
                core.volunteer.on_built(rec.id, job, rec.submitter);
            } else if rec.state == JobState::Open && job.expires > now {
                core.volunteer.remember(rec.id, job, rec.submitter, now);
            }
        }
        for o in outgoing {
            let Ok(result) = Signed::<BuildResult>::from_bytes(&o.result) else {
                warn!(job = %o.job.short(), "a stored result does not verify: dropped");
                continue;
            };
            info!(job = %o.job.short(), committed = o.committed, "a result still to deliver");
            core.outbox.push(Outgoing {
                job: o.job,
                lease: o.lease,
                coordinator: o.coordinator,
                root: result.message().manifest_root,
                result: o.result,
                provenance_sig: o.provenance,
                committed: o.committed,
                // An error result is sent as it is; any other polls with its commitment.
                revealed: matches!(
                    result.message().status,
                    barn_protocol::message::BuildStatus::Error { .. }
                ),
                retry_at: now,
                in_flight: None,
            });
        }
        Ok(core)
    }
}
