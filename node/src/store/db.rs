//! The node's SQLite database: jobs, leases, results, known nodes and remembered message
//! ids, so that a restarted submitter or volunteer picks up where it stopped.
//!
//! Synchronous on purpose (rusqlite): the daemon's actor calls it directly for quick
//! statements or through `spawn_blocking`. WAL mode and a busy timeout let the CLI read
//! while the daemon writes.
//!
//! The schema is versioned with `PRAGMA user_version`: [`MIGRATIONS`] is an ordered list,
//! migration `i` takes the file from version `i` to `i + 1`, each in its own transaction.
//! A file written by a newer barn (a version above `MIGRATIONS.len()`) is refused rather
//! than guessed at. Signed envelopes are stored as the bytes received, so they can be
//! re-verified and forwarded unchanged; the other columns are what queries need.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use barn_protocol::message::LeaseId;
use barn_protocol::{ContentHash, JobId, NodeId, SubmitterId};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// Schema migrations, oldest first. Never edit one that has shipped: append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the tables.
    "CREATE TABLE jobs (
        id          BLOB PRIMARY KEY,   -- JobId, 32 bytes
        envelope    BLOB NOT NULL,      -- the signed job as received
        submitter   BLOB NOT NULL,      -- SubmitterId, 32 bytes
        state       TEXT NOT NULL,
        created     INTEGER NOT NULL,   -- unix seconds
        expires     INTEGER NOT NULL,
        coordinated INTEGER NOT NULL    -- 1 when this node coordinates the job
    ) STRICT;
    CREATE TABLE leases (
        id          BLOB PRIMARY KEY,   -- LeaseId, 16 bytes
        job_id      BLOB NOT NULL REFERENCES jobs(id),
        node_id     BLOB NOT NULL,      -- NodeId, 32 bytes
        state       TEXT NOT NULL,
        expires     INTEGER NOT NULL,
        granted_at  INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE results (
        job_id      BLOB NOT NULL REFERENCES jobs(id),
        node_id     BLOB NOT NULL,
        envelope    BLOB NOT NULL,      -- the signed result as received
        received_at INTEGER NOT NULL,
        UNIQUE (job_id, node_id)
    ) STRICT;
    CREATE TABLE nodes (
        id            BLOB PRIMARY KEY,
        advert        BLOB,             -- last signed advert, if any
        last_seen     INTEGER NOT NULL,
        agreements    INTEGER NOT NULL DEFAULT 0,
        disagreements INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE TABLE seen (
        id      BLOB PRIMARY KEY,       -- a message id (blake3 of the message)
        expires INTEGER NOT NULL
    ) STRICT;",
    // 2: indexes for the scheduler's lookups and for pruning.
    "CREATE INDEX leases_by_job ON leases(job_id);
    CREATE INDEX results_by_job ON results(job_id);
    CREATE INDEX seen_by_expiry ON seen(expires);
    CREATE INDEX jobs_by_state ON jobs(state, expires);",
    // 3: the builder's signature over its own provenance attestation, sent with its
    // commitment (see verify::attest::provenance_signature).
    "ALTER TABLE results ADD COLUMN provenance BLOB;",
    // 4: state that must survive a restart of either side (see `round.rs`): the
    // coordinator's lease detail (variant, cap, operator, commitment, accepted result) and
    // round (tie-breakers, reveal time), its signed settlement; results kept as late; the
    // volunteer's undelivered results; and one reputation vote per job per node.
    "ALTER TABLE leases ADD COLUMN detail BLOB;
    ALTER TABLE jobs ADD COLUMN round BLOB;
    ALTER TABLE jobs ADD COLUMN settlement BLOB;
    ALTER TABLE results ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE outbox (
        job_id      BLOB PRIMARY KEY,
        lease       BLOB NOT NULL,      -- LeaseId, 16 bytes
        coordinator BLOB NOT NULL,      -- NodeId, 32 bytes
        result      BLOB NOT NULL,      -- the signed result
        provenance  BLOB,               -- the builder's provenance signature, 64 bytes
        committed   INTEGER NOT NULL    -- 1 once the coordinator took the commitment
    ) STRICT;
    CREATE TABLE votes (
        job_id  BLOB NOT NULL,
        node_id BLOB NOT NULL,
        agreed  INTEGER NOT NULL,
        UNIQUE (job_id, node_id)
    ) STRICT;",
];

/// The schema version this barn writes.
pub fn schema_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("failed to open database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {} has schema version {found}, newer than this barn understands ({supported}); \
         upgrade barn or move the file aside",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("failed to migrate database {} to schema version {version}", path.display())]
    Migrate {
        path: PathBuf,
        version: u32,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("database holds a bad value in `{column}`: {reason}")]
    BadValue {
        column: &'static str,
        reason: String,
    },
    #[error("time {0} does not fit in the database")]
    TimeOutOfRange(u64),
}

/// Where a job stands, as its coordinator or a volunteer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Known and not finished: the coordinator grants leases, volunteers may claim.
    Open,
    /// Enough results are in.
    Complete,
    /// Its expiry passed before it completed.
    Expired,
    /// Withdrawn by its submitter.
    Cancelled,
}

/// Where a lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LeaseState {
    /// Granted and renewed by heartbeats (written before schema 4; read as running).
    Active,
    /// Granted; no heartbeat yet.
    Granted,
    /// Renewed by heartbeats.
    Running,
    /// The volunteer committed to its result; kept until settlement.
    Committed,
    /// A result came in under it.
    Completed,
    /// No heartbeat in time; the job may be granted again.
    Expired,
    /// Given back by the volunteer (e.g. an infrastructure failure).
    Released,
}

macro_rules! text_enum {
    ($ty:ty, $column:literal, { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The text stored in the database.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = DbError;
            fn from_str(s: &str) -> Result<Self, DbError> {
                match s {
                    $($text => Ok(Self::$variant),)*
                    other => Err(DbError::BadValue {
                        column: $column,
                        reason: format!("unknown state `{other}`"),
                    }),
                }
            }
        }
    };
}

text_enum!(JobState, "jobs.state", {
    Open => "open",
    Complete => "complete",
    Expired => "expired",
    Cancelled => "cancelled",
});

text_enum!(LeaseState, "leases.state", {
    Active => "active",
    Granted => "granted",
    Running => "running",
    Committed => "committed",
    Completed => "completed",
    Expired => "expired",
    Released => "released",
});

/// A job row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: JobId,
    /// The signed job envelope, as received.
    pub envelope: Vec<u8>,
    pub submitter: SubmitterId,
    pub state: JobState,
    /// Unix seconds.
    pub created: u64,
    pub expires: u64,
    /// Whether this node coordinates the job (it submitted it).
    pub coordinated: bool,
}

/// A lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub job: JobId,
    pub node: NodeId,
    pub state: LeaseState,
    /// Unix seconds.
    pub expires: u64,
    pub granted_at: u64,
}

/// A result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultRecord {
    pub job: JobId,
    pub node: NodeId,
    /// The signed result envelope, as received.
    pub envelope: Vec<u8>,
    pub received_at: u64,
}

/// A known node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: NodeId,
    /// The last signed advert, if one was received.
    pub advert: Option<Vec<u8>>,
    pub last_seen: u64,
    pub agreements: u64,
    pub disagreements: u64,
}

/// The database.
#[derive(Debug)]
pub struct Db {
    pub(super) conn: Connection,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it to the current
    /// schema.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open_err = |source| DbError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // journal_mode returns a row, so it is a query rather than an execute.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
            .map_err(open_err)?;
        let mut db = Self { conn };
        db.migrate(path)?;
        Ok(db)
    }

    /// An in-memory database with the current schema, for tests.
    pub fn open_in_memory() -> Result<Self, DbError> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        let mut db = Self { conn };
        db.migrate(path)?;
        Ok(db)
    }

    /// The schema version of the open file.
    pub fn version(&self) -> Result<u32, DbError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), DbError> {
        let found = self.version()?;
        let supported = schema_version();
        if found > supported {
            return Err(DbError::TooNew {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let err = |source| DbError::Migrate {
                path: path.to_path_buf(),
                version,
                source,
            };
            let tx = self.conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(err)?;
            tx.commit().map_err(err)?;
            tracing::debug!(version, "migrated database");
        }
        Ok(())
    }

    // ---- jobs ----

    /// Stores a job; returns false (and changes nothing) when it is already known.
    pub fn insert_job(&self, job: &JobRecord) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO jobs (id, envelope, submitter, state, created, expires, coordinated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                job.id.0.as_bytes(),
                job.envelope,
                job.submitter.0.as_bytes(),
                job.state.as_str(),
                to_sql_time(job.created)?,
                to_sql_time(job.expires)?,
                job.coordinated,
            ],
        )?;
        Ok(n == 1)
    }

    /// One job.
    pub fn get_job(&self, id: &JobId) -> Result<Option<JobRecord>, DbError> {
        self.conn
            .query_row(
                &format!("{JOB_COLUMNS} WHERE id = ?1"),
                [id.0.as_bytes()],
                raw_job,
            )
            .optional()?
            .map(RawJob::into_record)
            .transpose()
    }

    /// All jobs, newest first.
    pub fn list_jobs(&self) -> Result<Vec<JobRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{JOB_COLUMNS} ORDER BY created DESC, id"))?;
        let rows = stmt.query_map([], raw_job)?;
        rows.map(|r| r?.into_record()).collect()
    }

    /// Jobs in `state`, oldest first.
    pub fn list_jobs_in_state(&self, state: JobState) -> Result<Vec<JobRecord>, DbError> {
        let mut stmt = self.conn.prepare(&format!(
            "{JOB_COLUMNS} WHERE state = ?1 ORDER BY created, id"
        ))?;
        let rows = stmt.query_map([state.as_str()], raw_job)?;
        rows.map(|r| r?.into_record()).collect()
    }

    /// Changes a job's state; returns false when there is no such job.
    pub fn set_job_state(&self, id: &JobId, state: JobState) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "UPDATE jobs SET state = ?2 WHERE id = ?1",
            params![id.0.as_bytes(), state.as_str()],
        )?;
        Ok(n == 1)
    }

    // ---- leases ----

    /// Stores a new lease (its job must be stored).
    pub fn insert_lease(&self, lease: &LeaseRecord) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO leases (id, job_id, node_id, state, expires, granted_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                lease.id.0.as_slice(),
                lease.job.0.as_bytes(),
                lease.node.0.as_bytes(),
                lease.state.as_str(),
                to_sql_time(lease.expires)?,
                to_sql_time(lease.granted_at)?,
            ],
        )?;
        Ok(())
    }

    /// Sets a lease's state and expiry (a heartbeat renews, a timeout expires); returns
    /// false when there is no such lease.
    pub fn update_lease(
        &self,
        id: &LeaseId,
        state: LeaseState,
        expires: u64,
    ) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "UPDATE leases SET state = ?2, expires = ?3 WHERE id = ?1",
            params![id.0.as_slice(), state.as_str(), to_sql_time(expires)?],
        )?;
        Ok(n == 1)
    }

    /// One lease.
    pub fn get_lease(&self, id: &LeaseId) -> Result<Option<LeaseRecord>, DbError> {
        self.conn
            .query_row(
                &format!("{LEASE_COLUMNS} WHERE id = ?1"),
                [id.0.as_slice()],
                raw_lease,
            )
            .optional()?
            .map(RawLease::into_record)
            .transpose()
    }

    /// A job's leases, in the order they were granted.
    pub fn list_leases(&self, job: &JobId) -> Result<Vec<LeaseRecord>, DbError> {
        let mut stmt = self.conn.prepare(&format!(
            "{LEASE_COLUMNS} WHERE job_id = ?1 ORDER BY granted_at, rowid"
        ))?;
        let rows = stmt.query_map([job.0.as_bytes()], raw_lease)?;
        rows.map(|r| r?.into_record()).collect()
    }

    // ---- results ----

    /// Stores a node's result for a job; returns false when that node already delivered
    /// one (the first is kept).
    pub fn insert_result(&self, result: &ResultRecord) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO results (job_id, node_id, envelope, received_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                result.job.0.as_bytes(),
                result.node.0.as_bytes(),
                result.envelope,
                to_sql_time(result.received_at)?,
            ],
        )?;
        Ok(n == 1)
    }

    /// Keeps the builder's 64-byte provenance signature beside its result.
    pub fn set_result_provenance(
        &self,
        job: &JobId,
        node: &NodeId,
        sig: &[u8],
    ) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "UPDATE results SET provenance = ?3 WHERE job_id = ?1 AND node_id = ?2",
            params![job.0.as_bytes(), node.0.as_bytes(), sig],
        )?;
        Ok(n == 1)
    }

    /// The builder's provenance signature for its result, if it sent one.
    pub fn result_provenance(
        &self,
        job: &JobId,
        node: &NodeId,
    ) -> Result<Option<Vec<u8>>, DbError> {
        Ok(self
            .conn
            .query_row(
                "SELECT provenance FROM results WHERE job_id = ?1 AND node_id = ?2",
                params![job.0.as_bytes(), node.0.as_bytes()],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()?
            .flatten())
    }

    /// A job's results, in the order they arrived.
    pub fn list_results(&self, job: &JobId) -> Result<Vec<ResultRecord>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT job_id, node_id, envelope, received_at FROM results
             WHERE job_id = ?1 ORDER BY received_at, rowid",
        )?;
        let rows = stmt.query_map([job.0.as_bytes()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        rows.map(|r| {
            let (job, node, envelope, received_at) = r?;
            Ok(ResultRecord {
                job: JobId(hash_col("results.job_id", &job)?),
                node: node_col("results.node_id", &node)?,
                envelope,
                received_at: from_sql_u64("results.received_at", received_at)?,
            })
        })
        .collect()
    }

    // ---- nodes ----

    /// Records a node's latest advert and when it was seen.
    pub fn upsert_node_advert(
        &self,
        node: &NodeId,
        advert: &[u8],
        seen: u64,
    ) -> Result<(), DbError> {
        self.conn.execute(
            "INSERT INTO nodes (id, advert, last_seen) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET advert = excluded.advert,
                                           last_seen = MAX(last_seen, excluded.last_seen)",
            params![node.0.as_bytes(), advert, to_sql_time(seen)?],
        )?;
        Ok(())
    }

    /// Keeps at most `max` nodes known only by their adverts (no reputation counted), the
    /// most recently seen; returns how many were forgotten. Adverts from thousands of
    /// fresh keys cannot grow the table past it.
    pub fn trim_adverts(&self, max: usize) -> Result<usize, DbError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let n = self.conn.execute(
            "DELETE FROM nodes WHERE id IN (
                 SELECT id FROM nodes WHERE agreements = 0 AND disagreements = 0
                 ORDER BY last_seen ASC
                 LIMIT MAX(0, (SELECT COUNT(*) FROM nodes
                               WHERE agreements = 0 AND disagreements = 0) - ?1))",
            params![max],
        )?;
        Ok(n)
    }

    /// Forgets a job this node only heard of (not one it coordinates or ran): the job and
    /// the results and leases stored with it.
    pub fn forget_job(&mut self, id: &JobId) -> Result<(), DbError> {
        let tx = self.conn.transaction()?;
        delete_rows_of(&tx, id)?;
        tx.execute(
            "DELETE FROM jobs WHERE id = ?1 AND coordinated = 0",
            params![id.0.as_bytes()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs finished (any state but open) whose expiry is before `before`, oldest first:
    /// what the retention sweep removes.
    pub fn jobs_past_retention(&self, before: u64) -> Result<Vec<JobId>, DbError> {
        let mut stmt = self.conn.prepare(
            "SELECT id FROM jobs WHERE state != ?1 AND expires < ?2 ORDER BY expires, id",
        )?;
        let rows = stmt.query_map(
            params![JobState::Open.as_str(), to_sql_time(before)?],
            |r| r.get::<_, Vec<u8>>(0),
        )?;
        rows.map(|r| Ok(JobId(hash_col("jobs.id", &r?)?))).collect()
    }

    /// Removes a finished job with everything stored with it (results, leases, votes, an
    /// undelivered result); an open job is left alone. Returns whether the job went.
    pub fn remove_job(&mut self, id: &JobId) -> Result<bool, DbError> {
        let tx = self.conn.transaction()?;
        let open: bool = tx
            .query_row(
                "SELECT state = ?2 FROM jobs WHERE id = ?1",
                params![id.0.as_bytes(), JobState::Open.as_str()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
        if open {
            return Ok(false);
        }
        delete_rows_of(&tx, id)?;
        tx.execute(
            "DELETE FROM outbox WHERE job_id = ?1",
            params![id.0.as_bytes()],
        )?;
        let n = tx.execute("DELETE FROM jobs WHERE id = ?1", params![id.0.as_bytes()])?;
        tx.commit()?;
        Ok(n == 1)
    }

    /// Counts one comparison of a node's result with the majority.
    pub fn record_agreement(&self, node: &NodeId, agreed: bool, now: u64) -> Result<(), DbError> {
        let (a, d) = if agreed { (1, 0) } else { (0, 1) };
        self.conn.execute(
            "INSERT INTO nodes (id, advert, last_seen, agreements, disagreements)
             VALUES (?1, NULL, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET agreements = agreements + excluded.agreements,
                                           disagreements = disagreements + excluded.disagreements",
            params![node.0.as_bytes(), to_sql_time(now)?, a, d],
        )?;
        Ok(())
    }

    /// One node.
    pub fn get_node(&self, id: &NodeId) -> Result<Option<NodeRecord>, DbError> {
        self.conn
            .query_row(
                &format!("{NODE_COLUMNS} WHERE id = ?1"),
                [id.0.as_bytes()],
                raw_node,
            )
            .optional()?
            .map(RawNode::into_record)
            .transpose()
    }

    /// All known nodes, most recently seen first.
    pub fn list_nodes(&self) -> Result<Vec<NodeRecord>, DbError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{NODE_COLUMNS} ORDER BY last_seen DESC, id"))?;
        let rows = stmt.query_map([], raw_node)?;
        rows.map(|r| r?.into_record()).collect()
    }

    // ---- replay protection ----

    /// Remembers a message id until `expires`; returns false when it was already
    /// remembered (a replay: do nothing with it).
    pub fn mark_seen(&self, id: &ContentHash, expires: u64) -> Result<bool, DbError> {
        let n = self.conn.execute(
            "INSERT OR IGNORE INTO seen (id, expires) VALUES (?1, ?2)",
            params![id.as_bytes(), to_sql_time(expires)?],
        )?;
        Ok(n == 1)
    }

    /// Whether a message id is remembered.
    pub fn was_seen(&self, id: &ContentHash) -> Result<bool, DbError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM seen WHERE id = ?1", [id.as_bytes()], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Forgets ids that expired before `now`; returns how many. The messages themselves
    /// carry expiries, so a replay after this is refused as expired.
    pub fn prune_seen(&self, now: u64) -> Result<usize, DbError> {
        Ok(self
            .conn
            .execute("DELETE FROM seen WHERE expires < ?1", [to_sql_time(now)?])?)
    }
}

const JOB_COLUMNS: &str =
    "SELECT id, envelope, submitter, state, created, expires, coordinated FROM jobs";
const LEASE_COLUMNS: &str = "SELECT id, job_id, node_id, state, expires, granted_at FROM leases";
const NODE_COLUMNS: &str = "SELECT id, advert, last_seen, agreements, disagreements FROM nodes";

struct RawJob {
    id: Vec<u8>,
    envelope: Vec<u8>,
    submitter: Vec<u8>,
    state: String,
    created: i64,
    expires: i64,
    coordinated: bool,
}

fn raw_job(r: &Row<'_>) -> rusqlite::Result<RawJob> {
    Ok(RawJob {
        id: r.get(0)?,
        envelope: r.get(1)?,
        submitter: r.get(2)?,
        state: r.get(3)?,
        created: r.get(4)?,
        expires: r.get(5)?,
        coordinated: r.get(6)?,
    })
}

impl RawJob {
    fn into_record(self) -> Result<JobRecord, DbError> {
        let submitter = barn_protocol::identity::PublicKey::from_bytes(&self.submitter)
            .map_err(|e| bad("jobs.submitter", e))?;
        Ok(JobRecord {
            id: JobId(hash_col("jobs.id", &self.id)?),
            envelope: self.envelope,
            submitter: SubmitterId(submitter),
            state: self.state.parse()?,
            created: from_sql_u64("jobs.created", self.created)?,
            expires: from_sql_u64("jobs.expires", self.expires)?,
            coordinated: self.coordinated,
        })
    }
}

struct RawLease {
    id: Vec<u8>,
    job: Vec<u8>,
    node: Vec<u8>,
    state: String,
    expires: i64,
    granted_at: i64,
}

fn raw_lease(r: &Row<'_>) -> rusqlite::Result<RawLease> {
    Ok(RawLease {
        id: r.get(0)?,
        job: r.get(1)?,
        node: r.get(2)?,
        state: r.get(3)?,
        expires: r.get(4)?,
        granted_at: r.get(5)?,
    })
}

impl RawLease {
    fn into_record(self) -> Result<LeaseRecord, DbError> {
        let id: [u8; 16] = self.id.as_slice().try_into().map_err(|_| {
            bad(
                "leases.id",
                format!("expected 16 bytes, got {}", self.id.len()),
            )
        })?;
        Ok(LeaseRecord {
            id: LeaseId(serde_bytes::ByteArray::new(id)),
            job: JobId(hash_col("leases.job_id", &self.job)?),
            node: node_col("leases.node_id", &self.node)?,
            state: self.state.parse()?,
            expires: from_sql_u64("leases.expires", self.expires)?,
            granted_at: from_sql_u64("leases.granted_at", self.granted_at)?,
        })
    }
}

struct RawNode {
    id: Vec<u8>,
    advert: Option<Vec<u8>>,
    last_seen: i64,
    agreements: i64,
    disagreements: i64,
}

fn raw_node(r: &Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        id: r.get(0)?,
        advert: r.get(1)?,
        last_seen: r.get(2)?,
        agreements: r.get(3)?,
        disagreements: r.get(4)?,
    })
}

impl RawNode {
    fn into_record(self) -> Result<NodeRecord, DbError> {
        Ok(NodeRecord {
            id: node_col("nodes.id", &self.id)?,
            advert: self.advert,
            last_seen: from_sql_u64("nodes.last_seen", self.last_seen)?,
            agreements: from_sql_u64("nodes.agreements", self.agreements)?,
            disagreements: from_sql_u64("nodes.disagreements", self.disagreements)?,
        })
    }
}

pub(super) fn bad(column: &'static str, reason: impl fmt::Display) -> DbError {
    DbError::BadValue {
        column,
        reason: reason.to_string(),
    }
}

pub(super) fn hash_col(column: &'static str, bytes: &[u8]) -> Result<ContentHash, DbError> {
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| bad(column, format!("expected 32 bytes, got {}", bytes.len())))?;
    Ok(ContentHash::from_bytes(arr))
}

pub(super) fn node_col(column: &'static str, bytes: &[u8]) -> Result<NodeId, DbError> {
    barn_protocol::identity::PublicKey::from_bytes(bytes)
        .map(NodeId)
        .map_err(|e| bad(column, e))
}

/// Deletes what is stored with job `id` (results, leases, votes), not the job itself.
fn delete_rows_of(tx: &rusqlite::Transaction<'_>, id: &JobId) -> Result<(), DbError> {
    for sql in [
        "DELETE FROM results WHERE job_id = ?1",
        "DELETE FROM leases WHERE job_id = ?1",
        "DELETE FROM votes WHERE job_id = ?1",
    ] {
        tx.execute(sql, params![id.0.as_bytes()])?;
    }
    Ok(())
}

pub(super) fn to_sql_time(t: u64) -> Result<i64, DbError> {
    i64::try_from(t).map_err(|_| DbError::TimeOutOfRange(t))
}

pub(super) fn from_sql_u64(column: &'static str, t: i64) -> Result<u64, DbError> {
    u64::try_from(t).map_err(|_| bad(column, format!("negative value {t}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use barn_protocol::SecretKey;

    fn job(n: u8, created: u64) -> JobRecord {
        JobRecord {
            id: JobId(ContentHash::of(&[n])),
            envelope: vec![n; 10],
            submitter: SecretKey::from_seed([n; 32]).submitter_id(),
            state: JobState::Open,
            created,
            expires: created + 3600,
            coordinated: n.is_multiple_of(2),
        }
    }

    fn node(n: u8) -> NodeId {
        SecretKey::from_seed([100 + n; 32]).node_id()
    }

    #[test]
    fn jobs_round_trip() {
        let db = Db::open_in_memory().unwrap();
        let a = job(1, 100);
        let b = job(2, 200);
        assert!(db.insert_job(&a).unwrap());
        assert!(!db.insert_job(&a).unwrap(), "a second insert is ignored");
        assert!(db.insert_job(&b).unwrap());
        assert_eq!(db.get_job(&a.id).unwrap().unwrap(), a);
        assert_eq!(db.get_job(&JobId(ContentHash::of(b"x"))).unwrap(), None);
        assert_eq!(db.list_jobs().unwrap(), vec![b.clone(), a.clone()]);
        assert!(db.set_job_state(&a.id, JobState::Complete).unwrap());
        assert_eq!(db.list_jobs_in_state(JobState::Open).unwrap(), vec![b]);
        assert_eq!(
            db.get_job(&a.id).unwrap().unwrap().state,
            JobState::Complete
        );
    }

    #[test]
    fn leases_round_trip() {
        let db = Db::open_in_memory().unwrap();
        let j = job(1, 100);
        db.insert_job(&j).unwrap();
        let l1 = LeaseRecord {
            id: LeaseId::random(),
            job: j.id,
            node: node(1),
            state: LeaseState::Active,
            expires: 160,
            granted_at: 100,
        };
        let l2 = LeaseRecord {
            id: LeaseId::random(),
            node: node(2),
            granted_at: 110,
            ..l1.clone()
        };
        db.insert_lease(&l1).unwrap();
        db.insert_lease(&l2).unwrap();
        assert!(db.insert_lease(&l1).is_err(), "lease ids are unique");
        assert!(db.update_lease(&l1.id, LeaseState::Active, 220).unwrap());
        assert!(db.update_lease(&l2.id, LeaseState::Expired, 170).unwrap());
        assert!(
            !db.update_lease(&LeaseId::random(), LeaseState::Active, 1)
                .unwrap()
        );
        let leases = db.list_leases(&j.id).unwrap();
        assert_eq!(leases.len(), 2);
        assert_eq!(leases[0].expires, 220);
        assert_eq!(leases[1].state, LeaseState::Expired);
        assert_eq!(db.get_lease(&l2.id).unwrap().unwrap().node, node(2));
    }

    #[test]
    fn a_lease_needs_its_job() {
        let db = Db::open_in_memory().unwrap();
        let lease = LeaseRecord {
            id: LeaseId::random(),
            job: JobId(ContentHash::of(b"unknown")),
            node: node(1),
            state: LeaseState::Active,
            expires: 1,
            granted_at: 0,
        };
        assert!(db.insert_lease(&lease).is_err());
    }

    #[test]
    fn one_result_per_node_and_job() {
        let db = Db::open_in_memory().unwrap();
        let j = job(1, 100);
        db.insert_job(&j).unwrap();
        let r = ResultRecord {
            job: j.id,
            node: node(1),
            envelope: vec![1, 2, 3],
            received_at: 500,
        };
        assert!(db.insert_result(&r).unwrap());
        let again = ResultRecord {
            envelope: vec![9],
            ..r.clone()
        };
        assert!(!db.insert_result(&again).unwrap());
        let r2 = ResultRecord {
            node: node(2),
            received_at: 501,
            ..r.clone()
        };
        assert!(db.insert_result(&r2).unwrap());
        assert_eq!(db.list_results(&j.id).unwrap(), vec![r, r2]);
    }

    #[test]
    fn retention_removes_old_finished_jobs_never_open_ones() {
        let mut db = Db::open_in_memory().unwrap();
        // Job 1: finished long ago, with a lease and a result. Job 2: open and long past
        // its expiry (its coordinator is away): kept. Job 3: finished recently: kept.
        let (mut old, open, mut recent) = (job(1, 100), job(2, 100), job(3, 10_000));
        old.state = JobState::Complete;
        recent.state = JobState::Expired;
        for j in [&old, &open, &recent] {
            db.insert_job(j).unwrap();
        }
        db.insert_lease(&LeaseRecord {
            id: LeaseId::random(),
            job: old.id,
            node: node(1),
            state: LeaseState::Completed,
            expires: 200,
            granted_at: 100,
        })
        .unwrap();
        db.insert_result(&ResultRecord {
            job: old.id,
            node: node(1),
            envelope: vec![1],
            received_at: 300,
        })
        .unwrap();
        // Retention ends at 5000: only job 1 expired (at 3700) before it and is finished.
        assert_eq!(db.jobs_past_retention(5000).unwrap(), vec![old.id]);
        assert!(db.remove_job(&old.id).unwrap());
        assert_eq!(db.get_job(&old.id).unwrap(), None);
        assert!(db.list_leases(&old.id).unwrap().is_empty());
        assert!(db.list_results(&old.id).unwrap().is_empty());
        assert!(!db.remove_job(&open.id).unwrap(), "an open job stays");
        assert!(db.get_job(&open.id).unwrap().is_some());
        assert!(db.jobs_past_retention(5000).unwrap().is_empty());
        assert_eq!(
            db.jobs_past_retention(u64::from(u32::MAX)).unwrap(),
            vec![recent.id]
        );
    }

    #[test]
    fn nodes_adverts_and_agreement() {
        let db = Db::open_in_memory().unwrap();
        db.upsert_node_advert(&node(1), b"advert-1", 10).unwrap();
        db.upsert_node_advert(&node(1), b"advert-2", 20).unwrap();
        db.record_agreement(&node(1), true, 21).unwrap();
        db.record_agreement(&node(1), false, 22).unwrap();
        db.record_agreement(&node(2), true, 5).unwrap();
        let n1 = db.get_node(&node(1)).unwrap().unwrap();
        assert_eq!(n1.advert.as_deref(), Some(&b"advert-2"[..]));
        assert_eq!(n1.last_seen, 20);
        assert_eq!((n1.agreements, n1.disagreements), (1, 1));
        let all = db.list_nodes().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].id, node(1));
        assert_eq!(all[1].advert, None);
    }

    #[test]
    fn seen_ids_refuse_replays_until_pruned() {
        let db = Db::open_in_memory().unwrap();
        let id = ContentHash::of(b"msg");
        assert!(!db.was_seen(&id).unwrap());
        assert!(db.mark_seen(&id, 100).unwrap());
        assert!(!db.mark_seen(&id, 100).unwrap());
        assert!(db.was_seen(&id).unwrap());
        assert_eq!(db.prune_seen(100).unwrap(), 0);
        assert_eq!(db.prune_seen(101).unwrap(), 1);
        assert!(!db.was_seen(&id).unwrap());
    }

    #[test]
    fn file_database_persists_and_uses_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("barn.db");
        let j = job(3, 7);
        {
            let db = Db::open(&path).unwrap();
            db.insert_job(&j).unwrap();
            let mode: String = db
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), schema_version());
        assert_eq!(db.get_job(&j.id).unwrap().unwrap(), j);
    }

    #[test]
    fn older_file_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let j = job(4, 9);
        {
            // A file as the first release left it: only migration 1 applied, with data.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO jobs VALUES (?1, ?2, ?3, 'open', 9, 3609, ?4)",
                params![
                    j.id.0.as_bytes(),
                    j.envelope,
                    j.submitter.0.as_bytes(),
                    j.coordinated
                ],
            )
            .unwrap();
        }
        let db = Db::open(&path).unwrap();
        assert_eq!(db.version().unwrap(), schema_version());
        assert_eq!(db.get_job(&j.id).unwrap().unwrap(), j);
        let indexes: i64 = db
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'leases_by_job'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
    }

    #[test]
    fn newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", schema_version() + 5)
                .unwrap();
        }
        let err = Db::open(&path).unwrap_err();
        assert!(
            matches!(err, DbError::TooNew { found, supported, .. }
                if found == schema_version() + 5 && supported == schema_version()),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this barn"));
    }

    #[test]
    fn unknown_state_text_is_an_error() {
        assert!(matches!(
            "bogus".parse::<JobState>(),
            Err(DbError::BadValue {
                column: "jobs.state",
                ..
            })
        ));
        assert_eq!(
            "released".parse::<LeaseState>().unwrap(),
            LeaseState::Released
        );
    }
}
