//! The coordinator's side: grant at most `replicas` leases per job to distinct operators,
//! keep each lease as long as its work is alive, take the results, and say when the job is
//! ready to be judged and settled.
//!
//! A lease follows the work:
//!
//! ```text
//!   claim ─▶ Granted ─heartbeat─▶ Running ─commit─▶ Committed ─result─▶ Done ──▶ (settled)
//!               │                    │                  │
//!               └── no heartbeat for LEASE_SECS, or ────┘ result not delivered within
//!                   past its cap ──▶ Expired              REVEAL_GRACE_SECS of the
//!               infrastructure error ──▶ Failed           reveal ──▶ Expired
//! ```
//!
//! A committed lease needs no heartbeats: its work is done and waits for the reveal. A
//! lease's life is capped at the job's timeout plus [`LEASE_OVERHEAD_SECS`] (fetch, boot,
//! collect), so neither claims nor heartbeats renew it without end. A lease granted in
//! place of an expired or failed one takes over its variant.
//!
//! Commit, then reveal: a volunteer first sends a commitment to its manifest root (bound
//! to its node id); results are taken only once every replica slot is held by a committed
//! lease (or the job's expiry forces the reveal), and only when they match their
//! commitment. Results are published only with the settlement, so a lazy node has
//! nothing to copy.
//!
//! Reputation: a node that has disagreed with the majority more often than it agreed gets
//! a job only after [`PREFER_WINDOW_SECS`], when reputable nodes had their chance.

use std::collections::{BTreeMap, BTreeSet};

use barn_protocol::message::{BuildResult, BuildStatus, Commitment, Job, JobId, LeaseId};
use barn_protocol::{ContentHash, NodeId, OperatorId, Refusal};
use serde::{Deserialize, Serialize};

/// Seconds a granted or running lease lives without a heartbeat.
pub const LEASE_SECS: u64 = 30;
/// Seconds between heartbeats a volunteer is asked to keep.
pub const HEARTBEAT_SECS: u64 = 5;
/// Seconds after a job's announcement during which nodes of poor reputation are turned
/// away, so that reputable nodes take the replicas first.
pub const PREFER_WINDOW_SECS: u64 = 10;
/// Seconds a lease may live beyond the job's timeout: fetching the source and image,
/// booting the VM and collecting its output.
pub const LEASE_OVERHEAD_SECS: u64 = 600;
/// Seconds a committed replica has, once results are taken, to deliver its result before
/// its lease is lost and the replica granted again.
pub const REVEAL_GRACE_SECS: u64 = 300;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Granted; no heartbeat yet.
    Granted,
    /// Heartbeats arrive.
    Running,
    /// The volunteer committed to its result: kept without heartbeats until settlement.
    Committed,
    /// Its result was taken.
    Done,
    /// Lost: no heartbeat in time, past its cap, or no result after the reveal.
    Expired,
    /// The volunteer reported an infrastructure error.
    Failed,
}

impl LeaseState {
    /// Whether the lease holds one of the job's replica slots.
    pub fn holds(self) -> bool {
        matches!(
            self,
            LeaseState::Granted | LeaseState::Running | LeaseState::Committed | LeaseState::Done
        )
    }

    /// The word shown in `barn job` and the API.
    pub fn word(self) -> &'static str {
        match self {
            LeaseState::Granted => "granted",
            LeaseState::Running => "running",
            LeaseState::Committed => "committed",
            LeaseState::Done => "done",
            LeaseState::Expired => "expired",
            LeaseState::Failed => "failed",
        }
    }
}

/// One lease. Stored whole (CBOR) in the database, so it survives a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub node: NodeId,
    /// Whom the node counts as (its certificate's operator, or itself).
    pub operator: OperatorId,
    /// The node's signed operator certificate, if it sent one.
    pub cert: Option<serde_bytes::ByteBuf>,
    pub granted: u64,
    /// When it lapses without a heartbeat (granted and running leases only).
    pub expires: u64,
    /// Its longest life: no heartbeat renews it past this.
    pub cap: u64,
    pub state: LeaseState,
    /// Which environment variant the replica builds in.
    pub variant: u32,
    /// The commitment digest, once sent.
    pub commitment: Option<ContentHash>,
    /// blake3 of the accepted result envelope.
    pub result: Option<ContentHash>,
    /// The builder's signature over its provenance attestation, sent with its commitment.
    #[serde(default)]
    pub provenance_sig: Option<serde_bytes::ByteArray<64>>,
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
    /// When results started being taken (`None`: not yet).
    pub revealed_at: Option<u64>,
    /// The results are being judged (off the event loop).
    pub judging: bool,
    /// The job is settled: nothing more counts.
    pub settled: bool,
}

impl CJob {
    /// Replicas wanted, tie-breakers included.
    pub fn wanted(&self) -> usize {
        usize::from(self.job.spec.replicas) + usize::from(self.extra)
    }

    /// Leases that hold a replica slot.
    pub fn held(&self) -> usize {
        self.leases.iter().filter(|l| l.state.holds()).count()
    }

    pub fn done(&self) -> usize {
        self.count(LeaseState::Done)
    }

    fn count(&self, state: LeaseState) -> usize {
        self.leases.iter().filter(|l| l.state == state).count()
    }

    /// Every replica has a result.
    pub fn complete(&self) -> bool {
        self.done() >= self.wanted()
    }

    /// Results are being taken (or the job is settled): a commitment is answered `Reveal`.
    pub fn takes_results(&self) -> bool {
        self.settled || self.revealed_at.is_some()
    }

    /// Volunteers still missing for the job to settle, when any.
    pub fn missing(&self) -> usize {
        self.wanted().saturating_sub(self.held())
    }

    /// Results are taken: every slot is held by a committed (or done) lease.
    fn all_committed(&self) -> bool {
        self.held() >= self.wanted()
            && self
                .leases
                .iter()
                .filter(|l| l.state.holds())
                .all(|l| matches!(l.state, LeaseState::Committed | LeaseState::Done))
    }

    fn lease_mut(&mut self, id: &LeaseId, node: NodeId) -> Result<&mut Lease, Refusal> {
        self.leases
            .iter_mut()
            .find(|l| &l.id == id && l.node == node)
            .ok_or(Refusal::UnknownLease)
    }

    /// The smallest variant no holding lease uses: a re-grant takes over the variant of
    /// the lease it replaces.
    fn free_variant(&self) -> u32 {
        let used: BTreeSet<u32> = self
            .leases
            .iter()
            .filter(|l| l.state.holds())
            .map(|l| l.variant)
            .collect();
        (0..).find(|v| !used.contains(v)).unwrap_or(0)
    }
}

/// A granted (or renewed) lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Granted {
    pub lease: LeaseId,
    pub expires: u64,
    pub variant: u32,
    /// A new lease (not a retried claim).
    pub new: bool,
}

/// What became of a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Counted for its lease.
    Done,
    /// An infrastructure error: the replica is free for another node.
    Failed,
    /// The same result again: nothing changes.
    Duplicate,
    /// After settlement: kept as late, never counted.
    Late,
}

/// Something the clock did to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lapse {
    /// A lease expired.
    Expired(JobId, Box<Lease>),
    /// Results are now taken (every slot committed, or the job expired).
    Revealed(JobId),
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

    /// Starts coordinating a job, or restores one with its state after a restart.
    pub fn add_job(&mut self, id: JobId, job: CJob) {
        self.jobs.entry(id).or_insert(job);
    }

    /// A new job taken on at `now`.
    pub fn new_job(job: Job, now: u64) -> CJob {
        CJob {
            job,
            leases: Vec::new(),
            added: now,
            extra: 0,
            revealed_at: None,
            judging: false,
            settled: false,
        }
    }

    pub fn job(&self, id: &JobId) -> Option<&CJob> {
        self.jobs.get(id)
    }

    pub fn jobs(&self) -> impl Iterator<Item = (&JobId, &CJob)> {
        self.jobs.iter()
    }

    /// Jobs that still want replicas: announced again until they have them.
    pub fn open_jobs(&self, now: u64) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| !j.settled && j.job.expires > now && j.held() < j.wanted())
            .map(|(id, _)| *id)
            .collect()
    }

    /// A verified claim from `node`, counted as `operator`, with its reputation here.
    pub fn on_claim(
        &mut self,
        id: &JobId,
        node: NodeId,
        operator: OperatorId,
        cert: Option<serde_bytes::ByteBuf>,
        reputation: Reputation,
        now: u64,
    ) -> Result<Granted, Refusal> {
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        if j.settled {
            return Err(Refusal::Settled);
        }
        if j.job.expires <= now {
            return Err(Refusal::JobExpired);
        }
        if let Some(l) = j
            .leases
            .iter_mut()
            .find(|l| l.node == node && l.state.holds())
        {
            if !matches!(l.state, LeaseState::Granted | LeaseState::Running) {
                return Err(Refusal::AlreadyHeld);
            }
            // A retried claim: the same lease, renewed up to its cap.
            if now >= l.cap {
                return Err(Refusal::LeaseCapped);
            }
            l.expires = (now + LEASE_SECS).min(l.cap);
            return Ok(Granted {
                lease: l.id,
                expires: l.expires,
                variant: l.variant,
                new: false,
            });
        }
        if j.leases
            .iter()
            .any(|l| l.state.holds() && l.operator == operator)
        {
            return Err(Refusal::AlreadyHeld);
        }
        if j.held() >= j.wanted() {
            return Err(Refusal::Full);
        }
        if reputation.is_poor() && now < j.added + PREFER_WINDOW_SECS {
            return Err(Refusal::PoorReputation);
        }
        let cap = now + j.job.spec.timeout_secs + LEASE_OVERHEAD_SECS;
        let lease = Lease {
            id: LeaseId::random(),
            node,
            operator,
            cert,
            granted: now,
            expires: (now + LEASE_SECS).min(cap),
            cap,
            state: LeaseState::Granted,
            variant: j.free_variant(),
            commitment: None,
            result: None,
            provenance_sig: None,
        };
        let granted = Granted {
            lease: lease.id,
            expires: lease.expires,
            variant: lease.variant,
            new: true,
        };
        j.leases.push(lease);
        Ok(granted)
    }

    /// A verified heartbeat from `node`; returns the lease's expiry.
    pub fn on_heartbeat(
        &mut self,
        id: &JobId,
        lease: &LeaseId,
        node: NodeId,
        now: u64,
    ) -> Result<u64, Refusal> {
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        let l = j.lease_mut(lease, node)?;
        match l.state {
            LeaseState::Granted | LeaseState::Running => {
                if now >= l.cap {
                    return Err(Refusal::LeaseCapped);
                }
                l.state = LeaseState::Running;
                l.expires = (now + LEASE_SECS).min(l.cap);
                Ok(l.expires)
            }
            // The work is done: nothing to renew.
            LeaseState::Committed | LeaseState::Done => Ok(l.expires),
            LeaseState::Expired | LeaseState::Failed => Err(Refusal::LeaseLost),
        }
    }

    /// A verified commitment from `node` for its lease on job `id`; `Ok(true)` when it is
    /// new (not a repeat).
    pub fn on_commit(
        &mut self,
        id: &JobId,
        lease: &LeaseId,
        digest: ContentHash,
        node: NodeId,
        now: u64,
    ) -> Result<bool, Refusal> {
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        let settled = j.settled;
        let free = j.held() < j.wanted();
        let l = j.lease_mut(lease, node)?;
        if let Some(d) = l.commitment {
            return if d == digest {
                Ok(false)
            } else {
                Err(Refusal::CommitmentMismatch)
            };
        }
        if settled {
            // Nothing is hidden any more: the result will be kept as late.
            l.commitment = Some(digest);
            return Ok(true);
        }
        match l.state {
            LeaseState::Granted | LeaseState::Running => {}
            // Lost, but the work was done and a slot is free: it counts again.
            LeaseState::Expired if free => {}
            _ => return Err(Refusal::LeaseLost),
        }
        l.state = LeaseState::Committed;
        l.commitment = Some(digest);
        l.expires = now;
        Ok(true)
    }

    /// A verified result from `node`, whose envelope hashes to `digest`.
    pub fn on_result(
        &mut self,
        id: &JobId,
        result: &BuildResult,
        digest: ContentHash,
        node: NodeId,
        now: u64,
    ) -> Result<Taken, Refusal> {
        if &result.job != id || result.node != node {
            return Err(Refusal::Mismatch {
                why: "it names another job or node".into(),
            });
        }
        let lease_id = result.lease.ok_or(Refusal::Mismatch {
            why: "it names no lease".into(),
        })?;
        let j = self.jobs.get_mut(id).ok_or(Refusal::UnknownJob)?;
        let settled = j.settled;
        let revealed = j.revealed_at.is_some();
        let free = j.held() < j.wanted();
        let job = j.job.clone();
        let l = j.lease_mut(&lease_id, node)?;
        if settled {
            return Ok(Taken::Late);
        }
        if let Some(d) = l.result {
            return if d == digest {
                Ok(Taken::Duplicate)
            } else {
                Err(Refusal::Mismatch {
                    why: "another result was already taken for this lease".into(),
                })
            };
        }
        if matches!(result.status, BuildStatus::Error { .. }) {
            // Not a verdict on the build: the replica is free for another node.
            if !matches!(
                l.state,
                LeaseState::Granted | LeaseState::Running | LeaseState::Committed
            ) {
                return Err(Refusal::LeaseLost);
            }
            l.state = LeaseState::Failed;
            l.commitment = None;
            l.expires = now;
            return Ok(Taken::Failed);
        }
        if l.commitment.is_none() {
            return Err(Refusal::NoCommitment);
        }
        // A result that contradicts its lease or its own commitment is a lie: the lease is
        // lost at once and its replica goes to another node.
        let lie = match check_against_lease(&job, l.variant, result) {
            Err(r) => Some(r),
            Ok(()) if l.commitment != Some(Commitment::digest_of(&node, &result.manifest_root)) => {
                Some(Refusal::CommitmentMismatch)
            }
            Ok(()) => None,
        };
        if let Some(refusal) = lie {
            if l.state.holds() {
                l.state = LeaseState::Failed;
                l.expires = now;
            }
            return Err(refusal);
        }
        match l.state {
            LeaseState::Committed => {}
            LeaseState::Expired if free => {}
            _ => return Err(Refusal::LeaseLost),
        }
        if !revealed {
            return Err(Refusal::NotYet);
        }
        l.state = LeaseState::Done;
        l.result = Some(digest);
        Ok(Taken::Done)
    }

    /// Moves every job along the clock: leases lapse, reveals happen.
    pub fn tick(&mut self, now: u64) -> Vec<Lapse> {
        let mut out = Vec::new();
        for (id, j) in &mut self.jobs {
            if j.settled {
                continue;
            }
            let revealed_at = j.revealed_at;
            for l in &mut j.leases {
                let lapsed = match l.state {
                    LeaseState::Granted | LeaseState::Running => l.expires <= now || now >= l.cap,
                    LeaseState::Committed => {
                        revealed_at.is_some_and(|t| now >= t + REVEAL_GRACE_SECS)
                    }
                    _ => false,
                };
                if lapsed {
                    l.state = LeaseState::Expired;
                    l.expires = now;
                    out.push(Lapse::Expired(*id, Box::new(l.clone())));
                }
            }
            if j.revealed_at.is_none() && (j.all_committed() || now >= j.job.expires) {
                j.revealed_at = Some(now);
                out.push(Lapse::Revealed(*id));
            }
        }
        out
    }

    /// Whether the job's results are all in (or can no longer come): judge it now.
    /// Marks the job as being judged, so it is asked for once.
    pub fn take_ready(&mut self, id: &JobId, now: u64) -> bool {
        let Some(j) = self.jobs.get_mut(id) else {
            return false;
        };
        if j.settled || j.judging {
            return false;
        }
        let waiting_for_results = j
            .leases
            .iter()
            .any(|l| matches!(l.state, LeaseState::Committed));
        let over = now >= j.job.expires && !waiting_for_results;
        if j.complete() || over {
            j.judging = true;
            return true;
        }
        false
    }

    /// Drops a job past its retention; one being judged stays. Returns whether it went.
    pub fn forget(&mut self, id: &JobId) -> bool {
        match self.jobs.get(id) {
            Some(j) if j.judging => false,
            _ => self.jobs.remove(id).is_some(),
        }
    }

    /// Jobs that may be ready to judge.
    pub fn unsettled(&self) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| !j.settled && !j.judging)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The verdict came back without a majority: one more replica, if the job allows it.
    pub fn request_tiebreak(&mut self, id: &JobId) -> bool {
        match self.jobs.get_mut(id) {
            Some(j) if j.job.spec.tiebreak && j.extra < MAX_TIEBREAKERS && !j.settled => {
                j.extra += 1;
                j.judging = false;
                // A new round: the tie-breaker commits before its result is taken.
                j.revealed_at = None;
                true
            }
            _ => false,
        }
    }

    /// Keeps the builder's provenance signature on its lease.
    pub fn set_provenance(&mut self, id: &JobId, lease: &LeaseId, sig: [u8; 64]) -> Option<&Lease> {
        let l = self
            .jobs
            .get_mut(id)?
            .leases
            .iter_mut()
            .find(|l| &l.id == lease)?;
        l.provenance_sig = Some(serde_bytes::ByteArray::new(sig));
        Some(l)
    }

    /// A lease of a job, by id.
    pub fn lease(&self, id: &JobId, lease: &LeaseId) -> Option<&Lease> {
        self.jobs.get(id)?.leases.iter().find(|l| &l.id == lease)
    }

    /// The job is settled: its done leases are final.
    pub fn settle(&mut self, id: &JobId) -> Option<&CJob> {
        let j = self.jobs.get_mut(id)?;
        j.settled = true;
        j.judging = false;
        Some(j)
    }
}

/// A result must be what its lease asked for: the job's image and architecture, and the
/// variation of the lease's variant. A liar cannot claim a variation to have a split
/// "explained".
pub fn check_against_lease(job: &Job, variant: u32, r: &BuildResult) -> Result<(), Refusal> {
    if r.image_hash != job.image_hash {
        return Err(Refusal::Mismatch {
            why: format!(
                "it ran image {} instead of {}",
                r.image_hash.short(),
                job.image_hash.short()
            ),
        });
    }
    if r.arch != job.spec.arch {
        return Err(Refusal::Mismatch {
            why: format!("it built for {} instead of {}", r.arch, job.spec.arch),
        });
    }
    // The CPU count a varied replica uses depends on the node's cap; every other varied
    // value is fixed by the variant.
    let expected = crate::runner::variation::Variation::for_replica(
        &job.spec.vary,
        variant,
        job.spec.resources.cpus,
        u32::MAX,
    );
    let same_dims = expected.applied.keys().eq(r.variation.keys());
    let same_values = expected
        .applied
        .iter()
        .filter(|(d, _)| d.as_str() != "cpus")
        .all(|(d, v)| r.variation.get(d) == Some(v));
    if !same_dims || !same_values {
        return Err(Refusal::Mismatch {
            why: format!(
                "it claims variation {:?}, its lease is variant {variant}",
                r.variation
            ),
        });
    }
    Ok(())
}
