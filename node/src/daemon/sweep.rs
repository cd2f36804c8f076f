//! Bounded storage (`node.max_store`, `node.retention`): every [`SWEEP_EVERY`] the actor
//! asks the database for finished jobs past their retention and has the core forget them
//! (the store task then removes each with its results, leases and votes); then, off the
//! event loop, [`sweep_files`] removes the work folders of jobs no longer stored, the
//! temporary files crashed runs left, and blobs no open job needs, least recently used
//! first, until the blob store is under its cap.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use barn_protocol::message::{Job, JobId};
use barn_protocol::{ContentHash, Signed};
use tracing::{info, warn};

use crate::store::blobs::{BlobStore, Collected};
use crate::store::db::{Db, JobState};

/// How often the node sweeps, and how long after its start the first sweep comes.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(600);
pub(super) const FIRST_SWEEP: Duration = Duration::from_secs(60);

/// A blob written or used this recently is never collected: it may belong to a job being
/// submitted, fetched or judged right now.
const IN_USE: Duration = Duration::from_secs(3600);

/// What the file sweep works from, read on the event loop.
#[derive(Debug)]
pub(super) struct Plan {
    pub data: PathBuf,
    pub blobs: BlobStore,
    pub cap: u64,
    /// Blobs open or running jobs need (sources and images).
    pub keep: HashSet<ContentHash>,
    /// Jobs whose work folder stays: every job still stored, and those running.
    pub jobs: HashSet<JobId>,
}

/// Finished jobs whose retention ended before `now`, from the reading connection.
pub(super) fn past_retention(db: &Db, now: u64, retention: Duration) -> Vec<JobId> {
    let before = now.saturating_sub(retention.as_secs());
    db.jobs_past_retention(before).unwrap_or_else(|e| {
        warn!("sweep: failed to list jobs past their retention: {e}");
        Vec::new()
    })
}

/// Reads what must stay: the blobs of open jobs and the ids of stored jobs. `held`: the
/// jobs the core holds (running here, or known), whatever the database says;
/// `undelivered`: the outputs and logs of results still on their way to a coordinator.
pub(super) fn plan(
    db: &Db,
    data: PathBuf,
    blobs: BlobStore,
    cap: u64,
    held: impl Iterator<Item = (JobId, Option<Job>)>,
    undelivered: Vec<ContentHash>,
) -> Option<Plan> {
    let stored = match db.list_jobs() {
        Ok(jobs) => jobs,
        Err(e) => {
            warn!("sweep: failed to list jobs, nothing removed: {e}");
            return None;
        }
    };
    let mut keep = HashSet::new();
    let mut jobs = HashSet::new();
    let mut need = |job: &Job| {
        keep.insert(job.source);
        keep.insert(job.image_hash);
    };
    for rec in &stored {
        jobs.insert(rec.id);
        if rec.state == JobState::Open
            && let Ok(signed) = Signed::<Job>::from_bytes(&rec.envelope)
        {
            need(signed.message());
        }
    }
    for (id, job) in held {
        jobs.insert(id);
        if let Some(job) = job {
            need(&job);
        }
    }
    keep.extend(undelivered);
    Some(Plan {
        data,
        blobs,
        cap,
        keep,
        jobs,
    })
}

/// What one file sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Swept {
    pub work_folders: u64,
    pub blobs: Collected,
}

/// Removes work folders of jobs not kept, stale temporary files, and blobs over the cap.
/// Blocking: run it off the event loop.
pub(super) fn sweep_files(plan: Plan) -> Swept {
    let mut swept = Swept::default();
    let jobs_dir = plan.data.join("jobs");
    for e in std::fs::read_dir(&jobs_dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| {
                format!("{}{n}", ContentHash::PREFIX)
                    .parse::<ContentHash>()
                    .ok()
            })
            .map(JobId)
        else {
            continue;
        };
        // A folder made within the hour may belong to a job heard after the plan was read.
        let recent_folder = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < IN_USE));
        if plan.jobs.contains(&id) || recent_folder {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => swept.work_folders += 1,
            Err(err) => {
                warn!(path = %e.path().display(), "sweep: failed to remove a job folder: {err}")
            }
        }
    }
    remove_stale_temporaries(&plan.blobs);
    let now = SystemTime::now();
    let recent = |used: SystemTime| now.duration_since(used).is_ok_and(|age| age < IN_USE);
    match plan
        .blobs
        .collect(plan.cap, |e| plan.keep.contains(&e.hash) || recent(e.used))
    {
        Ok(c) => swept.blobs = c,
        Err(e) => warn!("sweep: failed to collect blobs: {e}"),
    }
    if swept.work_folders > 0 || swept.blobs.removed > 0 {
        info!(
            work_folders = swept.work_folders,
            blobs = swept.blobs.removed,
            freed_bytes = swept.blobs.freed,
            store_bytes = swept.blobs.total,
            "sweep: removed what no job needs"
        );
    }
    if swept.blobs.total > plan.cap {
        warn!(
            store_bytes = swept.blobs.total,
            cap = plan.cap,
            "sweep: the blob store is over node.max_store: what is left is needed by open jobs or in use"
        );
    }
    swept
}

/// How long a resumable download may lie untouched before the sweep takes it for
/// abandoned (every chunk written touches it).
const STALE_PARTIAL: Duration = Duration::from_secs(24 * 3600);
/// How long an anonymous write may lie untouched (an import writes to it all along).
const STALE_TMP: Duration = Duration::from_secs(6 * 3600);

/// Removes abandoned downloads (`blobs/tmp/*.partial` untouched for a day) and anonymous
/// writes a crash left (`blobs/tmp/*.tmp` untouched for 6 hours). Image build and fetch
/// folders are cleaned only at start (`clean_temporary_files`): their own time does not
/// change while files deep inside them are written.
fn remove_stale_temporaries(blobs: &BlobStore) {
    let tmp = blobs.dir().join("tmp");
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let limit = if name.ends_with(".partial") {
            STALE_PARTIAL
        } else if name.ends_with(".tmp") {
            STALE_TMP
        } else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > limit));
        if old && let Err(err) = std::fs::remove_file(e.path()) {
            warn!(path = %e.path().display(), "sweep: failed to remove an abandoned download: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sweep_removes_folders_of_forgotten_jobs_and_blobs_over_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path().join("blobs")).unwrap();
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        let mk = |b: u8| {
            let h = blobs.import_bytes(&[b; 4096]).unwrap();
            std::fs::File::options()
                .write(true)
                .open(blobs.path(&h))
                .unwrap()
                .set_modified(old)
                .unwrap();
            h
        };
        let (needed, unneeded) = (mk(1), mk(2));
        let fresh = blobs.import_bytes(&[3; 4096]).unwrap();
        let (kept, gone) = (
            JobId(ContentHash::of(b"kept")),
            JobId(ContentHash::of(b"gone")),
        );
        let just_heard = JobId(ContentHash::of(b"just heard"));
        for j in [kept, gone, just_heard] {
            let folder = dir.path().join("jobs").join(j.0.to_hex());
            std::fs::create_dir_all(folder.join("out")).unwrap();
            if j != just_heard {
                std::fs::File::open(&folder)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        std::fs::create_dir_all(dir.path().join("jobs").join("not-a-job")).unwrap();
        let plan = Plan {
            data: dir.path().to_path_buf(),
            blobs: blobs.clone(),
            cap: 0,
            keep: HashSet::from([needed]),
            jobs: HashSet::from([kept]),
        };
        let swept = sweep_files(plan);
        assert_eq!(swept.work_folders, 1);
        assert_eq!(swept.blobs.removed, 1, "{swept:?}");
        assert!(!blobs.has(&unneeded));
        assert!(blobs.has(&needed), "an open job needs it");
        assert!(blobs.has(&fresh), "used within the hour");
        assert!(dir.path().join("jobs").join(kept.0.to_hex()).exists());
        assert!(!dir.path().join("jobs").join(gone.0.to_hex()).exists());
        assert!(
            dir.path().join("jobs").join(just_heard.0.to_hex()).exists(),
            "a folder made within the hour stays: its job may be newer than the plan"
        );
        assert!(dir.path().join("jobs").join("not-a-job").exists());
    }
}
