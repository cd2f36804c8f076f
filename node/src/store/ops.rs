//! Every write the node core asks for ([`StoreOp`]), and the one task that performs them.
//!
//! The core never touches SQLite: it returns `Persist(op)` effects, the actor hands them to
//! the [`StoreTask`] in order, and the task applies each on its own thread. A write that
//! fails is logged with its cause and counted ([`StoreTask::errors`], shown by
//! `barn status`): never dropped silently. The in-memory harness applies the same ops to
//! an in-memory database with [`apply`], so restarts there read what a real node would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use barn_protocol::message::LeaseId;
use barn_protocol::{JobId, NodeId};
use tokio::sync::mpsc;
use tracing::error;

use super::db::{Db, DbError, JobRecord, JobState, ResultRecord};
use super::round::{OutgoingRecord, Round};
use crate::sched::coordinator::Lease;

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreOp {
    /// A job heard or submitted (kept if already stored).
    InsertJob(JobRecord),
    SetJobState(JobId, JobState),
    /// A coordinator's lease, whole.
    PutLease {
        job: JobId,
        lease: Box<Lease>,
    },
    SetRound {
        job: JobId,
        round: Round,
    },
    /// A result, with the builder's provenance signature; `late`: after settlement.
    InsertResult {
        record: ResultRecord,
        provenance: Option<[u8; 64]>,
        late: bool,
    },
    /// This node settled a job: the signed settlement and a vote per node.
    Settle {
        job: JobId,
        settlement: Vec<u8>,
        votes: Vec<(NodeId, bool)>,
        now: u64,
    },
    /// A settlement heard from another coordinator.
    PutSettlement {
        job: JobId,
        settlement: Vec<u8>,
    },
    UpsertAdvert {
        node: NodeId,
        advert: Vec<u8>,
        seen: u64,
    },
    PutOutgoing(OutgoingRecord),
    DeleteOutgoing(JobId),
    /// Forget a job heard from an untrusted submitter, to keep their number bounded.
    ForgetJob(JobId),
    /// Remove a finished job past its retention, with everything stored with it.
    RemoveJob(JobId),
}

/// Nodes known only by their adverts that the database keeps (the most recently seen).
pub const MAX_ADVERTS: usize = 4096;

impl StoreOp {
    /// What the write does, completing "failed to …".
    pub fn what(&self) -> String {
        match self {
            StoreOp::InsertJob(r) => format!("store job {}", r.id.short()),
            StoreOp::SetJobState(j, s) => format!("mark job {} {s}", j.short()),
            StoreOp::PutLease { job, lease } => {
                format!(
                    "store lease {} of job {}",
                    short_lease(&lease.id),
                    job.short()
                )
            }
            StoreOp::SetRound { job, .. } => format!("store the round of job {}", job.short()),
            StoreOp::InsertResult { record, .. } => format!(
                "store the result of node {} for job {}",
                record.node.short(),
                record.job.short()
            ),
            StoreOp::Settle { job, .. } => format!("settle job {}", job.short()),
            StoreOp::PutSettlement { job, .. } => {
                format!("store the settlement of job {}", job.short())
            }
            StoreOp::UpsertAdvert { node, .. } => format!("store the advert of {}", node.short()),
            StoreOp::PutOutgoing(o) => format!("keep the result of job {}", o.job.short()),
            StoreOp::DeleteOutgoing(j) => format!("forget the result of job {}", j.short()),
            StoreOp::ForgetJob(j) => format!("forget job {}", j.short()),
            StoreOp::RemoveJob(j) => format!("remove job {} past its retention", j.short()),
        }
    }
}

fn short_lease(id: &LeaseId) -> String {
    id.to_string().chars().take(8).collect()
}

/// Performs one write.
pub fn apply(db: &mut Db, op: &StoreOp) -> Result<(), DbError> {
    match op {
        StoreOp::InsertJob(r) => db.insert_job(r).map(drop),
        StoreOp::SetJobState(j, s) => db.set_job_state(j, *s).map(drop),
        StoreOp::PutLease { job, lease } => db.put_lease(job, lease),
        StoreOp::SetRound { job, round } => db.set_round(job, round),
        StoreOp::InsertResult {
            record,
            provenance,
            late,
        } => db
            .insert_result_with(record, provenance.as_ref(), *late)
            .map(drop),
        StoreOp::Settle {
            job,
            settlement,
            votes,
            now,
        } => db.settle(job, settlement, votes, *now),
        StoreOp::PutSettlement { job, settlement } => db.put_settlement(job, settlement),
        StoreOp::UpsertAdvert { node, advert, seen } => {
            db.upsert_node_advert(node, advert, *seen)?;
            db.trim_adverts(MAX_ADVERTS).map(drop)
        }
        StoreOp::PutOutgoing(o) => db.put_outgoing(o),
        StoreOp::DeleteOutgoing(j) => db.delete_outgoing(j),
        StoreOp::ForgetJob(j) => db.forget_job(j),
        StoreOp::RemoveJob(j) => db.remove_job(j).map(drop),
    }
}

/// Writes queued before the actor waits for the store.
const QUEUE: usize = 1024;

/// What the store task is sent: a write, or a barrier that answers once every write sent
/// before it is applied.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "writes are nearly every message; boxing them would allocate per write to shrink the rare barrier"
)]
enum Msg {
    Write(StoreOp),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The store task: one thread that owns the writing connection.
#[derive(Debug)]
pub struct StoreTask {
    tx: mpsc::Sender<Msg>,
    errors: Arc<AtomicU64>,
    /// Fires when the thread has applied the last write.
    done: tokio::sync::oneshot::Receiver<()>,
}

impl StoreTask {
    /// Starts the task on `db`.
    pub fn start(mut db: Db) -> Self {
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let errors = Arc::new(AtomicU64::new(0));
        let count = errors.clone();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("barn-store".into())
            .spawn(move || {
                while let Some(msg) = rx.blocking_recv() {
                    let op = match msg {
                        Msg::Write(op) => op,
                        Msg::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    if let Err(e) = apply(&mut db, &op) {
                        count.fetch_add(1, Ordering::Relaxed);
                        error!(
                            "store: failed to {}: {:#}",
                            op.what(),
                            anyhow::Error::new(e)
                        );
                    }
                }
                let _ = done_tx.send(());
            })
            .map(drop)
            .unwrap_or_else(|e| {
                error!("store: failed to start its thread: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
            });
        Self { tx, errors, done }
    }

    /// Queues a write; waits while the queue is full, so nothing is dropped.
    pub async fn write(&self, op: StoreOp) {
        if let Err(mpsc::error::SendError(Msg::Write(op))) = self.tx.send(Msg::Write(op)).await {
            self.errors.fetch_add(1, Ordering::Relaxed);
            error!("store: failed to {}: the store task has stopped", op.what());
        }
    }

    /// Waits until every write queued so far is applied (read-your-writes for an answer
    /// that a reader of the database will act on at once, such as a submission's id).
    pub async fn flush(&self) {
        let (done, applied) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = applied.await;
        }
    }

    /// Writes that failed since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Closes the queue and waits (at most 10 s) until every queued write is done.
    pub async fn close(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barn_protocol::{ContentHash, SecretKey, SubmitterId};

    #[tokio::test]
    async fn a_flush_returns_once_every_earlier_write_is_readable_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("barn.db");
        let store = StoreTask::start(Db::open(&path).unwrap());
        let reader = Db::open(&path).unwrap();
        let ids: Vec<JobId> = (0..200u32)
            .map(|i| JobId(ContentHash::of(&i.to_le_bytes())))
            .collect();
        for id in &ids {
            store
                .write(StoreOp::InsertJob(JobRecord {
                    id: *id,
                    envelope: vec![1],
                    submitter: SubmitterId(SecretKey::from_seed([1; 32]).public()),
                    state: JobState::Open,
                    created: 1,
                    expires: 2,
                    coordinated: true,
                }))
                .await;
        }
        store.flush().await;
        assert_eq!(reader.list_jobs().unwrap().len(), ids.len());
        assert_eq!(store.errors(), 0);
        // A write that fails is counted, not dropped silently.
        store
            .write(StoreOp::SetRound {
                job: ids[0],
                round: Round::default(),
            })
            .await;
        store
            .write(StoreOp::PutLease {
                job: JobId(ContentHash::of(b"no such job")),
                lease: Box::new(crate::sched::coordinator::Lease {
                    id: LeaseId::random(),
                    node: SecretKey::from_seed([2; 32]).node_id(),
                    operator: barn_protocol::OperatorId::of_node(
                        &SecretKey::from_seed([2; 32]).node_id(),
                    ),
                    cert: None,
                    granted: 1,
                    expires: 2,
                    cap: 3,
                    state: crate::sched::coordinator::LeaseState::Granted,
                    variant: 0,
                    commitment: None,
                    result: None,
                    provenance_sig: None,
                }),
            })
            .await;
        store.flush().await;
        assert_eq!(
            store.errors(),
            1,
            "a lease of an unknown job breaks a foreign key"
        );
        store.close().await;
    }
}
