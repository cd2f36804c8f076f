//! The database's part in restarts: what the coordinator must remember of a job's round
//! (each lease whole, tie-breakers, the reveal, the settlement), the volunteer's results
//! not yet delivered, and reputation votes counted once per job per node.
//!
//! Written only by the store task ([`super::ops`]); read once at start.

use barn_protocol::message::LeaseId;
use barn_protocol::{JobId, NodeId};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::db::{Db, DbError, LeaseState, bad, from_sql_u64, node_col, to_sql_time};
use crate::sched::coordinator::{self, Lease};

/// A job's round, as its coordinator keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// Replicas added to break a tie.
    pub extra: u8,
    /// When results started being taken.
    pub revealed_at: Option<u64>,
}

/// A finished job's result on its way to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub job: JobId,
    pub lease: LeaseId,
    pub coordinator: NodeId,
    /// The signed result envelope.
    pub result: Vec<u8>,
    pub provenance: Option<[u8; 64]>,
    /// The coordinator took the commitment.
    pub committed: bool,
}

fn db_state(s: coordinator::LeaseState) -> LeaseState {
    match s {
        coordinator::LeaseState::Granted => LeaseState::Granted,
        coordinator::LeaseState::Running => LeaseState::Running,
        coordinator::LeaseState::Committed => LeaseState::Committed,
        coordinator::LeaseState::Done => LeaseState::Completed,
        coordinator::LeaseState::Expired => LeaseState::Expired,
        coordinator::LeaseState::Failed => LeaseState::Released,
    }
}

fn lease_id(column: &'static str, bytes: &[u8]) -> Result<LeaseId, DbError> {
    let id: [u8; 16] = bytes
        .try_into()
        .map_err(|_| bad(column, format!("expected 16 bytes, got {}", bytes.len())))?;
    Ok(LeaseId(serde_bytes::ByteArray::new(id)))
}

impl Db {
    /// Stores a coordinator's lease whole (inserted or replaced).
    pub fn put_lease(&self, job: &JobId, lease: &Lease) -> Result<(), DbError> {
        let detail = barn_protocol::cbor::to_vec(lease);
        self.conn.execute(
            "INSERT INTO leases (id, job_id, node_id, state, expires, granted_at, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, expires = excluded.expires,
                                           detail = excluded.detail",
            params![
                lease.id.0.as_slice(),
                job.0.as_bytes(),
                lease.node.0.as_bytes(),
                db_state(lease.state).as_str(),
                to_sql_time(lease.expires)?,
                to_sql_time(lease.granted)?,
                detail,
            ],
        )?;
        Ok(())
    }

    /// A job's leases as stored whole, in grant order. Rows written before schema 4 have
    /// no detail and are rebuilt from their columns (their ordinal is their variant).
    pub fn lease_details(&self, job: &JobId, timeout_secs: u64) -> Result<Vec<Lease>, DbError> {
        let mut out = Vec::new();
        let mut stmt = self
            .conn
            .prepare("SELECT detail FROM leases WHERE job_id = ?1 ORDER BY granted_at, rowid")?;
        let details: Vec<Option<Vec<u8>>> = stmt
            .query_map([job.0.as_bytes()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let records = self.list_leases(job)?;
        for (i, (rec, detail)) in records.into_iter().zip(details).enumerate() {
            if let Some(bytes) = detail {
                let lease: Lease = barn_protocol::cbor::from_slice(&bytes, 64 * 1024)
                    .map_err(|e| bad("leases.detail", e))?;
                out.push(lease);
                continue;
            }
            out.push(Lease {
                id: rec.id,
                node: rec.node,
                operator: barn_protocol::OperatorId::of_node(&rec.node),
                cert: None,
                granted: rec.granted_at,
                expires: rec.expires,
                cap: rec.granted_at + timeout_secs + coordinator::LEASE_OVERHEAD_SECS,
                state: match rec.state {
                    LeaseState::Granted => coordinator::LeaseState::Granted,
                    LeaseState::Active | LeaseState::Running => coordinator::LeaseState::Running,
                    LeaseState::Committed => coordinator::LeaseState::Committed,
                    LeaseState::Completed => coordinator::LeaseState::Done,
                    LeaseState::Expired => coordinator::LeaseState::Expired,
                    _ => coordinator::LeaseState::Failed,
                },
                variant: u32::try_from(i).unwrap_or(u32::MAX),
                commitment: None,
                result: None,
                provenance_sig: None,
            });
        }
        Ok(out)
    }

    /// Stores a job's round.
    pub fn set_round(&self, job: &JobId, round: &Round) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE jobs SET round = ?2 WHERE id = ?1",
            params![job.0.as_bytes(), barn_protocol::cbor::to_vec(round)],
        )?;
        Ok(())
    }

    /// A job's round (the default before any was stored).
    pub fn round(&self, job: &JobId) -> Result<Round, DbError> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT round FROM jobs WHERE id = ?1",
                [job.0.as_bytes()],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        match bytes {
            None => Ok(Round::default()),
            Some(b) => barn_protocol::cbor::from_slice(&b, 1024).map_err(|e| bad("jobs.round", e)),
        }
    }

    /// Settles a job this node coordinates, in one transaction: the signed settlement, the
    /// job's state, and one reputation vote per node (a second settlement of the same job
    /// counts nothing again).
    pub fn settle(
        &mut self,
        job: &JobId,
        settlement: &[u8],
        votes: &[(NodeId, bool)],
        now: u64,
    ) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE jobs SET settlement = ?2, state = 'complete' WHERE id = ?1",
            params![job.0.as_bytes(), settlement],
        )?;
        for (node, agreed) in votes {
            let new = tx.execute(
                "INSERT OR IGNORE INTO votes (job_id, node_id, agreed) VALUES (?1, ?2, ?3)",
                params![job.0.as_bytes(), node.0.as_bytes(), *agreed],
            )?;
            if new == 1 {
                let (a, d) = if *agreed { (1, 0) } else { (0, 1) };
                tx.execute(
                    "INSERT INTO nodes (id, advert, last_seen, agreements, disagreements)
                     VALUES (?1, NULL, ?2, ?3, ?4)
                     ON CONFLICT(id) DO UPDATE SET
                        agreements = agreements + excluded.agreements,
                        disagreements = disagreements + excluded.disagreements",
                    params![node.0.as_bytes(), to_sql_time(now)?, a, d],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Keeps a settlement heard from a job's coordinator (an observer's copy).
    pub fn put_settlement(&self, job: &JobId, settlement: &[u8]) -> Result<(), DbError> {
        self.conn.execute(
            "UPDATE jobs SET settlement = ?2 WHERE id = ?1 AND settlement IS NULL",
            params![job.0.as_bytes(), settlement],
        )?;
        Ok(())
    }

    /// A job's signed settlement, once known.
    pub fn settlement(&self, job: &JobId) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT settlement FROM jobs WHERE id = ?1",
                [job.0.as_bytes()],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Stores a result with its provenance signature; `late`: it came after settlement.
    /// Returns false when that node's result for the job was already stored.
    pub fn insert_result_with(
        &self,
        rec: &super::db::ResultRecord,
        provenance: Option<&[u8; 64]>,
        late: bool,
    ) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO results (job_id, node_id, envelope, received_at, provenance, late)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                rec.job.0.as_bytes(),
                rec.node.0.as_bytes(),
                rec.envelope,
                to_sql_time(rec.received_at)?,
                provenance.map(|p| p.as_slice()),
                late,
            ],
        )?;
        Ok(n == 1)
    }

    /// Whether a stored result came after its job's settlement.
    pub fn result_is_late(&self, job: &JobId, node: &NodeId) -> Result<bool, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT late FROM results WHERE job_id = ?1 AND node_id = ?2",
                params![job.0.as_bytes(), node.0.as_bytes()],
                |r| r.get::<_, bool>(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// Stores (or replaces) an undelivered result.
    pub fn put_outgoing(&self, o: &OutgoingRecord) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO outbox (job_id, lease, coordinator, result, provenance, committed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(job_id) DO UPDATE SET committed = excluded.committed",
            params![
                o.job.0.as_bytes(),
                o.lease.0.as_slice(),
                o.coordinator.0.as_bytes(),
                o.result,
                o.provenance.as_ref().map(|p| p.as_slice()),
                o.committed,
            ],
        )?;
        Ok(())
    }

    /// Forgets a delivered (or refused) result.
    pub fn delete_outgoing(&self, job: &JobId) -> Result<(), DbError> {
        self.conn
            .execute("DELETE FROM outbox WHERE job_id = ?1", [job.0.as_bytes()])?;
        Ok(())
    }

    /// Every undelivered result.
    pub fn list_outgoing(&self) -> Result<Vec<OutgoingRecord>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT job_id, lease, coordinator, result, provenance, committed FROM outbox
             ORDER BY rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Option<Vec<u8>>>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })?;
        rows.map(|r| {
            let (job, lease, coordinator, result, provenance, committed) = r?;
            let provenance = match provenance {
                None => None,
                Some(p) => Some(<[u8; 64]>::try_from(p.as_slice()).map_err(|_| {
                    bad(
                        "outbox.provenance",
                        format!("expected 64 bytes, got {}", p.len()),
                    )
                })?),
            };
            Ok(OutgoingRecord {
                job: JobId(super::db::hash_col("outbox.job_id", &job)?),
                lease: lease_id("outbox.lease", &lease)?,
                coordinator: node_col("outbox.coordinator", &coordinator)?,
                result,
                provenance,
                committed,
            })
        })
        .collect()
    }

    /// How many votes a node has had on one job (0 or 1), for tests.
    pub fn votes_on(&self, job: &JobId, node: &NodeId) -> Result<u64, DbError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM votes WHERE job_id = ?1 AND node_id = ?2",
            params![job.0.as_bytes(), node.0.as_bytes()],
            |r| r.get(0),
        )?;
        from_sql_u64("votes", n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{JobRecord, JobState};
    use barn_protocol::{ContentHash, SecretKey, SubmitterId};

    fn db_with_job() -> (Db, JobId) {
        let db = Db::open_in_memory().unwrap();
        let id = JobId(ContentHash::of(b"job"));
        db.insert_job(&JobRecord {
            id,
            envelope: vec![1],
            submitter: SubmitterId(SecretKey::from_seed([1; 32]).public()),
            state: JobState::Open,
            created: 1,
            expires: 100,
            coordinated: true,
        })
        .unwrap();
        (db, id)
    }

    #[test]
    fn a_job_settled_twice_counts_each_nodes_vote_once() {
        let (mut db, job) = db_with_job();
        let node = SecretKey::from_seed([2; 32]).node_id();
        db.settle(&job, b"s1", &[(node, false)], 10).unwrap();
        db.settle(&job, b"s2", &[(node, false)], 11).unwrap();
        let rec = db.get_node(&node).unwrap().unwrap();
        assert_eq!((rec.agreements, rec.disagreements), (0, 1));
        assert_eq!(db.votes_on(&job, &node).unwrap(), 1);
        assert_eq!(db.settlement(&job).unwrap().as_deref(), Some(&b"s2"[..]));
    }

    #[test]
    fn the_outbox_and_rounds_read_back() {
        let (db, job) = db_with_job();
        let o = OutgoingRecord {
            job,
            lease: LeaseId(serde_bytes::ByteArray::new([3; 16])),
            coordinator: SecretKey::from_seed([4; 32]).node_id(),
            result: vec![9; 10],
            provenance: Some([7; 64]),
            committed: false,
        };
        db.put_outgoing(&o).unwrap();
        db.put_outgoing(&OutgoingRecord {
            committed: true,
            ..o.clone()
        })
        .unwrap();
        assert_eq!(
            db.list_outgoing().unwrap(),
            vec![OutgoingRecord {
                committed: true,
                ..o
            }]
        );
        db.delete_outgoing(&job).unwrap();
        assert!(db.list_outgoing().unwrap().is_empty());
        let round = Round {
            extra: 1,
            revealed_at: Some(5),
        };
        db.set_round(&job, &round).unwrap();
        assert_eq!(db.round(&job).unwrap(), round);
    }
}
