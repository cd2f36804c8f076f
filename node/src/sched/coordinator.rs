//! The coordinator's side: grant at most `replicas` leases per job to distinct nodes, keep
//! them alive with heartbeats, free them when they lapse or fail, record results.

use std::collections::BTreeMap;

use barn_protocol::NodeId;
use barn_protocol::message::{BuildResult, BuildStatus, GrantDecision, Job, JobId, LeaseId};

/// Seconds a lease lives without a heartbeat.
pub const LEASE_SECS: u64 = 30;
/// Seconds between heartbeats a volunteer is asked to keep.
pub const HEARTBEAT_SECS: u64 = 5;

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
}

/// A job this node coordinates.
#[derive(Debug, Clone)]
pub struct CJob {
    pub job: Job,
    pub leases: Vec<Lease>,
}

impl CJob {
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
        self.done() >= usize::from(self.job.spec.replicas)
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
    pub fn add_job(&mut self, id: JobId, job: Job, leases: Vec<Lease>) {
        self.jobs.entry(id).or_insert(CJob { job, leases });
    }

    pub fn job(&self, id: &JobId) -> Option<&CJob> {
        self.jobs.get(id)
    }

    /// Jobs that still want replicas: announced again until they have them.
    pub fn open_jobs(&self, now: u64) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.job.expires > now && j.held() < usize::from(j.job.spec.replicas))
            .map(|(id, _)| *id)
            .collect()
    }

    /// A verified claim from `node` (the claim's signer).
    pub fn on_claim(&mut self, id: &JobId, node: NodeId, now: u64) -> GrantDecision {
        let deny = |reason: &str| GrantDecision::Denied {
            reason: reason.to_string(),
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
            };
        }
        if j.leases
            .iter()
            .any(|l| l.node == node && l.state == LeaseState::Done)
        {
            return deny("this node already built the job");
        }
        if j.held() >= usize::from(j.job.spec.replicas) {
            return deny("every replica is leased");
        }
        let lease = Lease {
            id: LeaseId::random(),
            node,
            granted: now,
            expires: now + LEASE_SECS,
            state: LeaseState::Active,
        };
        let decision = GrantDecision::Granted {
            lease: lease.id,
            expires: lease.expires,
            heartbeat_secs: HEARTBEAT_SECS,
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

    /// A verified result from `node`. A late result on an expired lease is still taken
    /// while a replica slot is free: the work was done.
    pub fn on_result(
        &mut self,
        id: &JobId,
        result: &BuildResult,
        node: NodeId,
    ) -> Result<LeaseState, Refusal> {
        if &result.job != id || result.node != node {
            return Err(Refusal::Mismatch);
        }
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        let held = j.held();
        let replicas = usize::from(j.job.spec.replicas);
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
        l.state = match result.status {
            BuildStatus::Error { .. } => LeaseState::Failed,
            _ => LeaseState::Done,
        };
        Ok(l.state)
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
