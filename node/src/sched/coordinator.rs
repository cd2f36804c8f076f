//! The coordinator's side: grant at most `replicas` leases per job to distinct nodes, keep
//! them alive with heartbeats, free them when they lapse or fail, record results.
//!
//! Commit, then reveal: a volunteer first sends a commitment to its manifest root (bound
//! to its node id); results are accepted only once every replica has committed, or the
//! reveal window has passed, and only from nodes whose result matches their commitment.
//! Until then no root is visible anywhere, so a lazy node has nothing to copy.
//!
//! Reputation: a node that has disagreed with the majority more often than it agreed gets
//! a job only after [`PREFER_WINDOW_SECS`], when reputable nodes had their chance.

use std::collections::BTreeMap;

use barn_protocol::message::{
    BuildResult, BuildStatus, Commitment, GrantDecision, Job, JobId, LeaseId,
};
use barn_protocol::{ContentHash, NodeId};

/// Seconds a lease lives without a heartbeat.
pub const LEASE_SECS: u64 = 30;
/// Seconds between heartbeats a volunteer is asked to keep.
pub const HEARTBEAT_SECS: u64 = 5;
/// Seconds after a job's announcement during which nodes of poor reputation are turned
/// away, so that reputable nodes take the replicas first.
pub const PREFER_WINDOW_SECS: u64 = 10;
/// Seconds beyond the job's timeout that the last replica may take to commit after the
/// first one did; then results are taken without it. Results stay with the coordinator
/// until the job is settled, so a commitment that arrives after the reveal has nothing to copy.
pub const REVEAL_SLACK_SECS: u64 = 120;
/// Extra replicas a job may get to break a tie.
pub const MAX_TIEBREAKERS: u8 = 1;

/// A node's standing: results that agreed with the majority, and that did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reputation {
    pub agreements: u64,
    pub disagreements: u64,
}

impl Reputation {
    /// More disagreements than agreements.
    pub fn is_poor(&self) -> bool {
        self.disagreements > self.agreements
    }
}

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Active,
    /// A result arrived.
    Done,
    /// No heartbeat in time: the slot is free for another node.
    Expired,
    /// The volunteer reported an infrastructure error: the slot is free for another node.
    Failed,
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub node: NodeId,
    pub granted: u64,
    pub expires: u64,
    pub state: LeaseState,
    /// Which environment variant the replica builds in: the lease's ordinal in its job.
    pub variant: u32,
}

/// A job this node coordinates.
#[derive(Debug, Clone)]
pub struct CJob {
    pub job: Job,
    pub leases: Vec<Lease>,
    /// When this coordinator took the job on.
    pub added: u64,
    /// Replicas added to break a tie.
    pub extra: u8,
    /// Commitments received: node → digest.
    pub commitments: BTreeMap<NodeId, ContentHash>,
    pub first_commit: Option<u64>,
    /// Results are being accepted (and so are visible).
    pub revealed: bool,
}

impl CJob {
    /// Replicas wanted, tie-breakers included.
    pub fn wanted(&self) -> usize {
        usize::from(self.job.spec.replicas) + usize::from(self.extra)
    }

    /// Leases that hold a replica slot: active or done.
    pub fn held(&self) -> usize {
        self.leases
            .iter()
            .filter(|l| matches!(l.state, LeaseState::Active | LeaseState::Done))
            .count()
    }

    pub fn done(&self) -> usize {
        self.leases
            .iter()
            .filter(|l| l.state == LeaseState::Done)
            .count()
    }

    /// Every replica has a result.
    pub fn complete(&self) -> bool {
        self.done() >= self.wanted()
    }

    /// Whether results may now be accepted: every node holding a replica has committed, or
    /// the reveal window after the first commitment has passed.
    fn may_reveal(&mut self, now: u64) -> bool {
        if !self.revealed {
            let holders: Vec<NodeId> = self
                .leases
                .iter()
                .filter(|l| matches!(l.state, LeaseState::Active | LeaseState::Done))
                .map(|l| l.node)
                .collect();
            let all = holders.len() >= self.wanted()
                && holders.iter().all(|n| self.commitments.contains_key(n));
            let late = self
                .first_commit
                .is_some_and(|t| now >= t + self.job.spec.timeout_secs + REVEAL_SLACK_SECS);
            self.revealed = all || late;
        }
        self.revealed
    }
}

/// Why a heartbeat or result was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("unknown job")]
    UnknownJob,
    #[error("no such lease for this node")]
    UnknownLease,
    #[error("the lease is no longer active")]
    Inactive,
    #[error("the result names another job or node than its lease")]
    Mismatch,
    #[error("no commitment from this node: commit before revealing")]
    NoCommitment,
    #[error("the result does not match this node's commitment")]
    CommitmentMismatch,
    #[error("not every replica has committed yet: reveal later")]
    NotYet,
}

/// A coordinator's scheduler.
#[derive(Debug, Clone, Default)]
pub struct Coordinator {
    jobs: BTreeMap<JobId, CJob>,
}

impl Coordinator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts coordinating a job (or restores one, with its leases, after a restart).
    pub fn add_job(&mut self, id: JobId, job: Job, leases: Vec<Lease>, now: u64) {
        self.jobs.entry(id).or_insert(CJob {
            job,
            leases,
            added: now,
            extra: 0,
            commitments: BTreeMap::new(),
            first_commit: None,
            revealed: false,
        });
    }

    /// Puts back a commitment known from a result stored before a restart.
    pub fn restore_commitment(&mut self, id: &JobId, node: NodeId, digest: ContentHash) {
        if let Some(j) = self.jobs.get_mut(id) {
            j.commitments.insert(node, digest);
        }
    }

    /// Asks for one more replica to break a tie, if the job allows it and has not had one.
    pub fn request_tiebreak(&mut self, id: &JobId) -> bool {
        match self.jobs.get_mut(id) {
            Some(j) if j.job.spec.tiebreak && j.extra < MAX_TIEBREAKERS => {
                j.extra += 1;
                // A new round: the tie-breaker commits before its result is taken. The
                // first results were seen only by this coordinator, so it has nothing to copy.
                j.revealed = false;
                j.first_commit = None;
                true
            }
            _ => false,
        }
    }

    pub fn job(&self, id: &JobId) -> Option<&CJob> {
        self.jobs.get(id)
    }

    /// Jobs that still want replicas: announced again until they have them.
    pub fn open_jobs(&self, now: u64) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.job.expires > now && j.held() < j.wanted())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A verified claim from `node` (the claim's signer) with its reputation here.
    pub fn on_claim(
        &mut self,
        id: &JobId,
        node: NodeId,
        reputation: Reputation,
        now: u64,
    ) -> GrantDecision {
        let deny = |reason: &str| GrantDecision::Denied {
            reason: reason.to_string(),
            refusal: None,
        };
        let Some(j) = self.jobs.get_mut(id) else {
            return deny("unknown job");
        };
        if j.job.expires <= now {
            return deny("the job expired");
        }
        if let Some(l) = j
            .leases
            .iter_mut()
            .find(|l| l.node == node && l.state == LeaseState::Active)
        {
            // A retried claim: the same lease, renewed.
            l.expires = now + LEASE_SECS;
            return GrantDecision::Granted {
                lease: l.id,
                expires: l.expires,
                heartbeat_secs: HEARTBEAT_SECS,
                variant: l.variant,
            };
        }
        if j.leases
            .iter()
            .any(|l| l.node == node && l.state == LeaseState::Done)
        {
            return deny("this node already built the job");
        }
        if j.held() >= j.wanted() {
            return deny("every replica is leased");
        }
        if reputation.is_poor() && now < j.added + PREFER_WINDOW_SECS {
            return deny(
                "this node disagreed with the majority too often; reputable nodes go first",
            );
        }
        let lease = Lease {
            id: LeaseId::random(),
            node,
            granted: now,
            expires: now + LEASE_SECS,
            state: LeaseState::Active,
            variant: u32::try_from(j.leases.len()).unwrap_or(u32::MAX),
        };
        let decision = GrantDecision::Granted {
            lease: lease.id,
            expires: lease.expires,
            heartbeat_secs: HEARTBEAT_SECS,
            variant: lease.variant,
        };
        j.leases.push(lease);
        decision
    }

    /// A verified heartbeat from `node`; returns the lease's new expiry.
    pub fn on_heartbeat(
        &mut self,
        id: &JobId,
        lease: &LeaseId,
        node: NodeId,
        now: u64,
    ) -> Result<u64, Refusal> {
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        let l = j
            .leases
            .iter_mut()
            .find(|l| &l.id == lease && l.node == node)
            .ok_or(Refusal::UnknownLease)?;
        if l.state != LeaseState::Active {
            return Err(Refusal::Inactive);
        }
        l.expires = now + LEASE_SECS;
        Ok(l.expires)
    }

    /// A verified commitment from `node` for its lease on job `id`.
    pub fn on_commit(
        &mut self,
        id: &JobId,
        lease: &LeaseId,
        digest: ContentHash,
        node: NodeId,
        now: u64,
    ) -> Result<(), Refusal> {
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        let l = j
            .leases
            .iter()
            .find(|l| &l.id == lease && l.node == node)
            .ok_or(Refusal::UnknownLease)?;
        if matches!(l.state, LeaseState::Failed) {
            return Err(Refusal::Inactive);
        }
        match j.commitments.get(&node) {
            Some(d) if *d == digest => return Ok(()),
            Some(_) => return Err(Refusal::CommitmentMismatch),
            None => {}
        }
        j.commitments.insert(node, digest);
        j.first_commit.get_or_insert(now);
        Ok(())
    }

    /// A verified result from `node`. A late result on an expired lease is still taken
    /// while a replica slot is free: the work was done.
    pub fn on_result(
        &mut self,
        id: &JobId,
        result: &BuildResult,
        node: NodeId,
        now: u64,
    ) -> Result<LeaseState, Refusal> {
        if &result.job != id || result.node != node {
            return Err(Refusal::Mismatch);
        }
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        match j.commitments.get(&node) {
            None => return Err(Refusal::NoCommitment),
            Some(d) if *d != Commitment::digest_of(&node, &result.manifest_root) => {
                return Err(Refusal::CommitmentMismatch);
            }
            Some(_) => {}
        }
        let infra_error = matches!(result.status, BuildStatus::Error { .. });
        if !infra_error && !j.may_reveal(now) {
            return Err(Refusal::NotYet);
        }
        let held = j.held();
        let replicas = j.wanted();
        let l = j
            .leases
            .iter_mut()
            .find(|l| Some(l.id) == result.lease && l.node == node)
            .ok_or(Refusal::UnknownLease)?;
        match l.state {
            LeaseState::Active => {}
            LeaseState::Expired if held < replicas => {}
            _ => return Err(Refusal::Inactive),
        }
        l.state = if infra_error {
            LeaseState::Failed
        } else {
            LeaseState::Done
        };
        let state = l.state;
        if infra_error {
            // An infrastructure error frees the replica; its commitment goes too, so the
            // next node's commitment is what the reveal waits for.
            j.commitments.remove(&node);
        }
        Ok(state)
    }

    /// Expires leases past their time; returns them.
    pub fn tick(&mut self, now: u64) -> Vec<(JobId, Lease)> {
        let mut out = Vec::new();
        for (id, j) in &mut self.jobs {
            for l in &mut j.leases {
                if l.state == LeaseState::Active && l.expires <= now {
                    l.state = LeaseState::Expired;
                    out.push((*id, l.clone()));
                }
            }
        }
        out
    }
}
