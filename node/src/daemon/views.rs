//! The views of the node (see [`crate::view`]): built from the node core and the database.

use barn_protocol::message::{BuildResult, BuildStatus, Job, JobId, NodeAdvert};
use barn_protocol::{NodeId, Signed};

use super::actor::Actor;
use super::now;
use crate::sched::coordinator::LeaseState;
use crate::store::db::{self, JobRecord};
use crate::view::*;

pub fn status(a: &Actor) -> StatusView {
    let p = a.parts();
    StatusView {
        node: a.me().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        listen: a.listen_addrs(),
        peers: a.peer_count(),
        slots: p.cfg.slots,
        free_slots: a.core().free_slots(),
        accel: p.accel.to_string(),
        images: p
            .images
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.name, i.hash.to_string()))
            .collect(),
        paused: a.paused(),
        unavailable: a.unavailable_words(),
        store_errors: p.store.errors(),
        rejected: rejections(a),
        reachability: a.reachability().to_string(),
        holes_punched: a.holes.0,
        holes_failed: a.holes.1,
    }
}

/// The core's and the actor's counts of what was turned away.
fn rejections(a: &Actor) -> Vec<crate::view::Rejection> {
    use crate::view::Rejection;
    let c = a.core().counts();
    let gossip = |kind: &str, m: &std::collections::BTreeMap<(&str, &str), u64>| {
        m.iter()
            .map(|((topic, reason), n)| Rejection {
                kind: kind.into(),
                topic: Some((*topic).into()),
                reason: (*reason).into(),
                count: *n,
            })
            .collect::<Vec<_>>()
    };
    let mut out = gossip("gossip", &c.rejected);
    out.extend(gossip("gossip_ignored", &c.ignored));
    let plain = |kind: &str, reason: &str, count: u64| Rejection {
        kind: kind.into(),
        topic: None,
        reason: reason.into(),
        count,
    };
    out.extend(c.refused.iter().map(|(r, n)| plain("request", r, *n)));
    for (reason, n) in a.peer_rejections() {
        out.push(plain("peer", reason, *n));
    }
    for (reason, n) in a.parts().blob_stats.rejections() {
        out.push(plain("blob", reason, n));
    }
    if c.forgotten_jobs > 0 {
        out.push(plain(
            "gossip_ignored",
            "untrusted_job_forgotten",
            c.forgotten_jobs,
        ));
    }
    out
}

pub fn nodes(a: &Actor) -> Vec<NodeView> {
    let mut out = Vec::new();
    for rec in a.parts().db.list_nodes().unwrap_or_default() {
        let Some(advert) = rec
            .advert
            .as_deref()
            .and_then(|b| Signed::<NodeAdvert>::from_bytes(b).ok())
        else {
            continue;
        };
        let m = advert.message();
        out.push(NodeView {
            node: rec.id.to_string(),
            is_self: rec.id == a.me(),
            connected: rec.id == a.me() || a.is_connected(&rec.id.to_peer_id()),
            version: m.version.clone(),
            archs: m
                .archs
                .iter()
                .map(|x| format!("{} ({})", x.isa, x.accel))
                .collect(),
            cpus: m.cpus,
            memory_bytes: m.memory_bytes,
            free_slots: m.free_slots,
            total_slots: m.total_slots,
            images: m
                .images
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            addrs: m.addrs.clone(),
            last_seen: rec.last_seen,
            agreements: rec.agreements,
            disagreements: rec.disagreements,
            unavailable: m.unavailable.iter().map(|u| u.word().to_string()).collect(),
        });
    }
    out.sort_by(|x, y| y.is_self.cmp(&x.is_self).then(x.node.cmp(&y.node)));
    out
}

fn job_view(a: &Actor, rec: &JobRecord) -> Option<JobView> {
    // The core checked the jobs it knows once; others are checked here.
    let job = match a.core().known(&rec.id) {
        Some(k) => k.job.clone(),
        None => Signed::<Job>::from_bytes(&rec.envelope)
            .ok()?
            .message()
            .clone(),
    };
    let job = &job;
    let settlement = a
        .parts()
        .db
        .settlement(&rec.id)
        .ok()
        .flatten()
        .and_then(|b| {
            barn_protocol::settlement::Settlement::check(&b, &rec.id, &job.coordinator).ok()
        });
    let verdict = settlement
        .as_ref()
        .map(|s| s.message().verdict.word().to_string());
    // Once settled, only the results the settlement names count.
    let results: Vec<Signed<BuildResult>> = match &settlement {
        None => results_of(a, &rec.id),
        Some(s) => a
            .parts()
            .db
            .list_results(&rec.id)
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                s.message()
                    .replica_of(&barn_protocol::ContentHash::of(&r.envelope))
                    .is_some()
            })
            .filter_map(|r| Signed::<BuildResult>::from_bytes(&r.envelope).ok())
            .collect(),
    };
    let state = match a.core().coordinator().job(&rec.id) {
        Some(c) if c.settled => "complete".to_string(),
        None if verdict.is_some() || rec.state == db::JobState::Complete => "complete".into(),
        _ if rec.expires <= now() && rec.state == db::JobState::Open => "expired".into(),
        Some(c) if c.held() >= c.wanted() => "running".into(),
        Some(_) => "open".into(),
        None => "seen".into(),
    };
    Some(JobView {
        id: rec.id.to_string(),
        image: job.spec.image.clone(),
        arch: job.spec.arch.clone(),
        replicas: job.spec.replicas,
        state,
        succeeded: results
            .iter()
            .filter(|r| r.message().status == BuildStatus::Succeeded)
            .count(),
        results: results.len(),
        created: job.created,
        mine: rec.coordinated,
        submitter: rec.submitter.to_string(),
        waiting: a.core().waiting(&rec.id, now()),
        verdict,
    })
}

fn results_of(a: &Actor, id: &JobId) -> Vec<Signed<BuildResult>> {
    a.parts()
        .db
        .list_results(id)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| Signed::<BuildResult>::from_bytes(&r.envelope).ok())
        .collect()
}

pub fn jobs(a: &Actor) -> Vec<JobView> {
    let mut v: Vec<_> = a
        .parts()
        .db
        .list_jobs()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| job_view(a, r))
        .collect();
    v.sort_by(|x, y| y.created.cmp(&x.created).then(x.id.cmp(&y.id)));
    v
}

/// A job by full id or unique hex prefix.
pub fn job(a: &Actor, query: &str) -> Result<JobDetail, String> {
    let q = query.trim().trim_start_matches("b3:").to_lowercase();
    if q.len() < 4 {
        return Err(format!(
            "{query:?} is too short to name a job (give at least 4 hex digits)"
        ));
    }
    let all = a.parts().db.list_jobs().map_err(|e| e.to_string())?;
    let found: Vec<_> = all
        .iter()
        .filter(|r| r.id.0.to_hex().starts_with(&q))
        .collect();
    let rec = match found.as_slice() {
        [one] => *one,
        [] => return Err(format!("no job {query} is known to this node")),
        many => {
            return Err(format!(
                "{query} names {} jobs; give more digits",
                many.len()
            ));
        }
    };
    let view = job_view(a, rec).ok_or("the stored job does not verify")?;
    let leases = match a.core().coordinator().job(&rec.id) {
        Some(c) => c
            .leases
            .iter()
            .map(|l| LeaseView {
                node: l.node.to_string(),
                granted_ms: a
                    .granted_ms
                    .get(&(rec.id.to_string(), l.node.to_string()))
                    .copied(),
                state: if c.settled && l.state == LeaseState::Done {
                    "settled"
                } else {
                    l.state.word()
                }
                .into(),
                granted: l.granted,
                expires: l.expires,
            })
            .collect(),
        None => vec![],
    };
    let stored = a
        .parts()
        .db
        .list_results(&rec.id)
        .map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for r in stored {
        // Results that no longer verify are listed too, marked, so that a verifier sees them.
        let signed = match Signed::<BuildResult>::from_bytes(&r.envelope) {
            Ok(s) => s,
            Err(e) => {
                results.push(ResultView {
                    node: r.node.to_string(),
                    status: "invalid".into(),
                    detail: Some(format!("the stored result does not verify: {e}")),
                    manifest_root: String::new(),
                    log_hash: String::new(),
                    log_size: 0,
                    total_ms: 0,
                    boot_ms: 0,
                    run_ms: 0,
                    accel: String::new(),
                    image_hash: String::new(),
                    envelope: hex::encode(&r.envelope),
                    provenance_sig: None,
                    received: r.received_at,
                    late: false,
                });
                continue;
            }
        };
        let m = signed.message();
        let detail = match &m.status {
            BuildStatus::TimedOut => None,
            status => status.detail(),
        };
        results.push(ResultView {
            node: NodeId(signed.signer()).to_string(),
            status: m.status.word().into(),
            detail,
            manifest_root: m.manifest_root.to_string(),
            log_hash: m.log_hash.to_string(),
            log_size: m.log_size,
            total_ms: m.timings.total_ms,
            boot_ms: m.timings.boot_ms,
            run_ms: m.timings.run_ms,
            accel: m.accel.to_string(),
            image_hash: m.image_hash.to_string(),
            envelope: hex::encode(&r.envelope),
            provenance_sig: a
                .parts()
                .db
                .result_provenance(&rec.id, &r.node)
                .ok()
                .flatten()
                .map(hex::encode),
            received: r.received_at,
            late: a
                .parts()
                .db
                .result_is_late(&rec.id, &r.node)
                .unwrap_or(false),
        });
    }
    Ok(JobDetail {
        job: view,
        submitted_ms: a.submitted_ms.get(&rec.id).copied(),
        envelope: hex::encode(&rec.envelope),
        leases,
        results,
        settlement: a
            .parts()
            .db
            .settlement(&rec.id)
            .ok()
            .flatten()
            .map(hex::encode),
    })
}
