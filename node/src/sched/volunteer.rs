//! The volunteer's side: remember announced jobs, claim those that match while slots are
//! free and the owner lets it take work, start the ones granted, retry the denied later.
//!
//! Whether the owner lets it take work (not paused, inside its schedule, under its load
//! limit) is an input, [`Volunteer::set_unavailable`], decided by
//! [`availability`](super::availability) from what the actor reads. While unavailable, no
//! new claim is sent; a claim already sent is still honoured when granted (it went out
//! while the node was available, and a grant is normally a round trip away).

use std::collections::BTreeMap;

use barn_protocol::message::{GrantDecision, Job, JobId, LeaseId, Unavailable};
use barn_protocol::refusal::NextStep;
use barn_protocol::{NodeId, SubmitterId};

use super::{Capabilities, Mismatch, Trust, matches};

/// Seconds before a denied or failed claim is tried again.
pub const RETRY_SECS: u64 = 5;
/// Seconds a claim may stay unanswered before it counts as failed.
pub const CLAIM_TIMEOUT_SECS: u64 = 30;

/// What the daemon should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a claim for `job` to its coordinator.
    Claim { job: JobId, coordinator: NodeId },
    /// Run `job` under `lease`.
    Start {
        job: JobId,
        lease: LeaseId,
        variant: u32,
    },
}

/// Where one known job stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Not claimed (yet): no match, no free slot, or denied earlier; tried again at `retry_at`.
    Waiting {
        retry_at: u64,
        why: Option<String>,
    },
    Claiming {
        since: u64,
    },
    Running {
        lease: LeaseId,
    },
    Done,
}

#[derive(Debug, Clone)]
struct Known {
    job: Job,
    submitter: SubmitterId,
    state: State,
}

/// A volunteer's scheduler.
#[derive(Debug, Clone)]
pub struct Volunteer {
    pub me: NodeId,
    pub caps: Capabilities,
    pub trust: Trust,
    jobs: BTreeMap<JobId, Known>,
    /// Why the owner's conditions forbid new claims now; empty: claims are allowed.
    unavailable: Vec<Unavailable>,
}

impl Volunteer {
    pub fn new(me: NodeId, caps: Capabilities, trust: Trust) -> Self {
        Self {
            me,
            caps,
            trust,
            jobs: BTreeMap::new(),
            unavailable: Vec::new(),
        }
    }

    /// Why no new job is claimed now (empty: the node takes work).
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// The owner's conditions changed: `why` is empty when the node may take work again.
    /// Returns the claims that become possible.
    pub fn set_unavailable(&mut self, why: Vec<Unavailable>, now: u64) -> Vec<Action> {
        self.unavailable = why;
        self.poll(now)
    }

    /// Jobs claimed or running: they hold slots.
    pub fn busy(&self) -> u32 {
        self.jobs
            .values()
            .filter(|k| matches!(k.state, State::Claiming { .. } | State::Running { .. }))
            .count() as u32
    }

    /// Free job slots.
    pub fn free_slots(&self) -> u32 {
        self.caps.slots.saturating_sub(self.busy())
    }

    /// The state of a job, if known.
    pub fn state(&self, job: &JobId) -> Option<&State> {
        self.jobs.get(job).map(|k| &k.state)
    }

    /// A verified job announcement (repeats are harmless).
    pub fn on_job(&mut self, id: JobId, job: Job, submitter: SubmitterId, now: u64) -> Vec<Action> {
        self.jobs.entry(id).or_insert(Known {
            job,
            submitter,
            state: State::Waiting {
                retry_at: now,
                why: None,
            },
        });
        self.poll(now)
    }

    /// A job known from before a restart: tried at the next poll.
    pub fn remember(&mut self, id: JobId, job: Job, submitter: SubmitterId, now: u64) {
        self.jobs.entry(id).or_insert(Known {
            job,
            submitter,
            state: State::Waiting {
                retry_at: now,
                why: None,
            },
        });
    }

    /// A job this node already built (its result waits in the outbox): never claimed again.
    pub fn on_built(&mut self, id: JobId, job: Job, submitter: SubmitterId) {
        self.jobs.insert(
            id,
            Known {
                job,
                submitter,
                state: State::Done,
            },
        );
    }

    /// The coordinator answered a claim.
    pub fn on_grant(&mut self, id: &JobId, decision: &GrantDecision, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(k) = self.jobs.get_mut(id) {
            if !matches!(k.state, State::Claiming { .. }) {
                return out;
            }
            match decision {
                GrantDecision::Granted { lease, variant, .. } => {
                    k.state = State::Running { lease: *lease };
                    out.push(Action::Start {
                        job: *id,
                        lease: *lease,
                        variant: *variant,
                    });
                }
                GrantDecision::Denied { reason, refusal } => {
                    // What to do next is the refusal's type, never its words.
                    let give_up = refusal
                        .as_ref()
                        .is_some_and(|r| r.next_step() == NextStep::GiveUp);
                    k.state = if give_up {
                        State::Done
                    } else {
                        State::Waiting {
                            retry_at: now + RETRY_SECS,
                            why: Some(reason.clone()),
                        }
                    };
                }
                _ => {
                    k.state = State::Waiting {
                        retry_at: now + RETRY_SECS,
                        why: None,
                    }
                }
            }
        }
        out.extend(self.poll(now));
        out
    }

    /// A claim could not be delivered.
    pub fn on_claim_failed(&mut self, id: &JobId, why: String, now: u64) -> Vec<Action> {
        if let Some(k) = self.jobs.get_mut(id)
            && matches!(k.state, State::Claiming { .. })
        {
            k.state = State::Waiting {
                retry_at: now + RETRY_SECS,
                why: Some(why),
            };
        }
        self.poll(now)
    }

    /// Every job this scheduler knows, with its state.
    pub fn known(&self) -> impl Iterator<Item = (&JobId, &State)> {
        self.jobs.iter().map(|(id, k)| (id, &k.state))
    }

    /// Forgets jobs that expired before `now` (their announcements are stored elsewhere).
    pub fn prune(&mut self, now: u64) {
        self.jobs
            .retain(|_, k| k.job.expires > now || matches!(k.state, State::Running { .. }));
    }

    /// A started job ended (whatever its result): its slot is free.
    pub fn on_finished(&mut self, id: &JobId, now: u64) -> Vec<Action> {
        if let Some(k) = self.jobs.get_mut(id) {
            k.state = State::Done;
        }
        self.poll(now)
    }

    /// Claims matching jobs while slots are free; call on every tick and change.
    pub fn poll(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        // Unanswered claims time out.
        for k in self.jobs.values_mut() {
            if let State::Claiming { since } = k.state
                && now >= since + CLAIM_TIMEOUT_SECS
            {
                k.state = State::Waiting {
                    retry_at: now + RETRY_SECS,
                    why: Some("claim timed out".into()),
                };
            }
        }
        if !self.unavailable.is_empty() {
            let why: Vec<String> = self.unavailable.iter().map(|u| u.to_string()).collect();
            let why = format!("not taking work: {}", why.join(", "));
            for k in self.jobs.values_mut() {
                if let State::Waiting { why: w, .. } = &mut k.state {
                    *w = Some(why.clone());
                }
            }
            return out;
        }
        let mut free = self.free_slots();
        // Oldest jobs first.
        let mut order: Vec<(u64, JobId)> = self
            .jobs
            .iter()
            .map(|(id, k)| (k.job.created, *id))
            .collect();
        order.sort();
        for (_, id) in order {
            if free == 0 {
                break;
            }
            let Some(k) = self.jobs.get_mut(&id) else {
                continue;
            };
            let State::Waiting { retry_at, .. } = k.state else {
                continue;
            };
            if retry_at > now {
                continue;
            }
            match matches(&k.job, &k.submitter, &self.caps, &self.trust, now) {
                Ok(()) => {
                    k.state = State::Claiming { since: now };
                    free -= 1;
                    out.push(Action::Claim {
                        job: id,
                        coordinator: k.job.coordinator,
                    });
                }
                Err(Mismatch::Expired) => k.state = State::Done,
                Err(m) => {
                    k.state = State::Waiting {
                        retry_at: now + RETRY_SECS,
                        why: Some(m.to_string()),
                    }
                }
            }
        }
        out
    }
}
