//! One leased job on a volunteer, in its own task: fetch the source and (if missing) the
//! image from the coordinator, verified by hash; run the VM; keep the artifacts and the
//! log as blobs so anyone can fetch them; sign the result.
//!
//! Any failure before or around the VM becomes a signed result with status `error`, so the
//! coordinator frees the replica for another node at once instead of waiting for the
//! lease to lapse.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use barn_protocol::message::*;
use barn_protocol::{ContentHash, SecretKey, Signed};
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::net::blobs;
use crate::runner::variation::Variation;
use crate::runner::{self, RunRequest, Runner};
use crate::store::ImageStore;
use crate::store::blobs::{BlobStore, BlobWriter};

/// Largest source accepted from a coordinator.
pub const MAX_SOURCE: u64 = 4 << 30;
/// Largest image accepted from a peer.
pub const MAX_IMAGE: u64 = 8 << 30;

/// Progress a job task reports to the actor (for heartbeats).
#[derive(Debug)]
pub enum Internal {
    Progress {
        job: JobId,
        phase: Phase,
        log_bytes: u64,
    },
    /// Look up who else holds a blob (Kademlia provider records).
    FindHolders {
        hash: ContentHash,
        reply: tokio::sync::oneshot::Sender<Vec<PeerId>>,
    },
    /// A peer sent bytes that failed their hash: cut it off.
    BadBytes { peer: PeerId, hash: ContentHash },
}

/// What a job task needs.
pub struct Context {
    pub key: SecretKey,
    pub blobs: BlobStore,
    pub images: ImageStore,
    pub runner: Runner,
    /// Fetches the job's source and image from any holder.
    pub fetcher: Fetcher,
    pub accel: Accel,
    pub out_dir: PathBuf,
    pub internal: mpsc::Sender<Internal>,
    pub fault_alter_outputs: bool,
    /// The node's shutdown, so a running VM gets its polite stop.
    pub cancel: CancellationToken,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("out_dir", &self.out_dir)
            .field("accel", &self.accel)
            .finish_non_exhaustive()
    }
}

/// A finished job task.
#[derive(Debug)]
pub struct WorkOutcome {
    pub job: JobId,
    pub result: Signed<BuildResult>,
    /// The builder's signature over its provenance attestation (made here, off the
    /// actor's loop), sent with the commitment.
    pub provenance_sig: Option<[u8; 64]>,
}

/// Runs the signed job `signed` (id `id`) under `lease` and signs the result.
pub async fn run(
    ctx: Context,
    id: JobId,
    lease: LeaseId,
    variant: u32,
    signed: Signed<Job>,
) -> WorkOutcome {
    let job = signed.message().clone();
    let span = info_span!("job", job = %id.short());
    async move {
        let variation = Variation::for_replica(
            &job.spec.vary,
            variant,
            job.spec.resources.cpus,
            ctx.runner.config().max_cpus,
        );
        let result = match execute(&ctx, id, &job, &variation).await {
            Ok(r) => r,
            Err(e) => {
                warn!("job failed before or around the VM: {e:#}");
                error_result(&ctx, id, &job, format!("{e:#}"))
            }
        };
        let result = BuildResult {
            lease: Some(lease),
            ..result
        };
        let result = Signed::sign(result, &ctx.key);
        let key = ctx.key.clone();
        let provenance_sig = {
            let result = result.clone();
            tokio::task::spawn_blocking(move || {
                crate::verify::attest::provenance_signature(&signed, &result, &key).ok()
            })
            .await
            .ok()
            .flatten()
        };
        WorkOutcome {
            job: id,
            result,
            provenance_sig,
        }
    }
    .instrument(span)
    .await
}

fn error_result(ctx: &Context, id: JobId, job: &Job, reason: String) -> BuildResult {
    let manifest = barn_protocol::manifest::Manifest::new(vec![]);
    BuildResult {
        job: id,
        lease: None,
        node: ctx.key.node_id(),
        status: BuildStatus::Error { reason },
        tasks: vec![],
        manifest_root: manifest.root(),
        manifest,
        log_hash: ContentHash::of(b""),
        log_size: 0,
        timings: Timings::default(),
        image_hash: job.image_hash,
        arch: job.spec.arch.clone(),
        accel: ctx.accel,
        qemu_version: String::new(),
        finished: super::now(),
        variation: Default::default(),
    }
}

async fn progress(ctx: &Context, job: JobId, phase: Phase, log_bytes: u64) {
    let _ = ctx
        .internal
        .send(Internal::Progress {
            job,
            phase,
            log_bytes,
        })
        .await;
}

async fn execute(
    ctx: &Context,
    id: JobId,
    job: &Job,
    variation: &Variation,
) -> Result<BuildResult> {
    let started = std::time::Instant::now();
    let coordinator = job.coordinator.to_peer_id();
    progress(ctx, id, Phase::Fetching, 0).await;
    if job.source_size > MAX_SOURCE {
        bail!(
            "the source is {} bytes, over this node's limit of {MAX_SOURCE}",
            job.source_size
        );
    }
    let (source, size) =
        fetch_from_any(&ctx.fetcher, job.source, vec![coordinator], job.source_size)
            .await
            .map_err(anyhow::Error::msg)
            .context("failed to fetch the source")?;
    if size != job.source_size {
        bail!(
            "the source is {size} bytes, the job says {}",
            job.source_size
        );
    }
    let image = match ctx.images.get(&job.image_hash)? {
        Some(i) => i,
        None => {
            let (tar, _) =
                fetch_from_any(&ctx.fetcher, job.image_hash, vec![coordinator], MAX_IMAGE)
                    .await
                    .map_err(anyhow::Error::msg)
                    .context("failed to fetch the image")?;
            let images = ctx.images.clone();
            let want = job.image_hash;
            tokio::task::spawn_blocking(move || images.import_tar(&tar, &want)).await??
        }
    };
    if image.name != job.spec.image || image.arch != job.spec.arch {
        bail!(
            "image {} is {} for {}, the job asks for {} on {}",
            job.image_hash.short(),
            image.name,
            image.arch,
            job.spec.image,
            job.spec.arch
        );
    }
    progress(ctx, id, Phase::Preparing, 0).await;
    let fetch_ms = started.elapsed().as_millis() as u64;
    let _ = std::fs::remove_dir_all(&ctx.out_dir);
    let req = RunRequest {
        spec: job.spec.clone(),
        source_tar: source,
        image,
        out_dir: ctx.out_dir.clone(),
        variation: variation.clone(),
    };
    let (tx, mut rx) = mpsc::channel(256);
    let forward = {
        let internal = ctx.internal.clone();
        tokio::spawn(async move {
            let mut log_bytes = 0u64;
            let mut phase = Phase::Booting;
            while let Some(ev) = rx.recv().await {
                match ev {
                    runner::Event::Phase(p) => phase = p,
                    runner::Event::Log(l) => log_bytes += l.len() as u64 + 1,
                    _ => continue,
                }
                let _ = internal.try_send(Internal::Progress {
                    job: id,
                    phase,
                    log_bytes,
                });
            }
        })
    };
    let report = ctx
        .runner
        .run(req, ctx.accel, tx, ctx.cancel.clone())
        .await?;
    let _ = forward.await;

    let mut manifest = report.manifest.clone();
    if ctx.fault_alter_outputs {
        alter_outputs(&report.artifacts_dir, &mut manifest)?;
    }
    // Keep every artifact and the log as blobs, so anyone with the job id can fetch them.
    for e in manifest.files() {
        let path = report.artifacts_dir.join(&e.path);
        let h = ctx
            .blobs
            .import_file(&path)
            .with_context(|| format!("failed to keep artifact {}", e.path))?;
        if Some(h) != e.hash {
            bail!("artifact {} changed while being stored", e.path);
        }
    }
    ctx.blobs
        .import_file(&report.log_path)
        .context("failed to keep the log")?;
    Ok(BuildResult {
        job: id,
        lease: None,
        node: ctx.key.node_id(),
        status: report.status.clone(),
        tasks: report.tasks.clone(),
        manifest_root: manifest.root(),
        manifest,
        log_hash: report.log_hash,
        log_size: report.log_size,
        timings: Timings {
            fetch_ms,
            ..report.timings
        },
        image_hash: report.image_hash,
        arch: job.spec.arch.clone(),
        accel: report.accel,
        qemu_version: report.qemu_version.clone(),
        finished: super::now(),
        variation: variation.applied.clone(),
    })
}

/// The test-only fault: append a byte to every artifact and re-hash, as a dishonest or
/// broken node would report.
fn alter_outputs(
    dir: &std::path::Path,
    manifest: &mut barn_protocol::manifest::Manifest,
) -> Result<()> {
    for e in manifest
        .entries
        .iter_mut()
        .filter(|e| e.kind == barn_protocol::manifest::EntryKind::File)
    {
        let path = dir.join(&e.path);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)?
            .write_all(b"!")?;
        let (h, n) = ContentHash::of_reader(std::fs::File::open(&path)?)?;
        e.hash = Some(h);
        e.size = n;
    }
    Ok(())
}

/// What a fetch needs besides the blob's name: the stream control, how each peer is
/// connected, the store, and the actor (to look up holders and report liars).
#[derive(Clone)]
pub struct Fetcher {
    pub control: libp2p_stream::Control,
    pub paths: crate::net::direct::Paths,
    pub store: BlobStore,
    pub internal: mpsc::Sender<Internal>,
}

/// Rounds of asking every holder before a fetch gives up.
const FETCH_ROUNDS: u32 = 3;
/// How long a fetch waits for the holders lookup.
const LOOKUP_WAIT: Duration = Duration::from_secs(15);

/// Fetches blob `hash` from any holder: `known` first (the coordinator of a job, whose
/// blobs these are), then every peer the provider records name, directly connected peers
/// before those reached through a relay. A round asks each once; a fresh connection may
/// still be coming up, so there are [`FETCH_ROUNDS`], each looking up holders again. While
/// it waits for a hole to be punched to a peer reached only through a relay, it looks for
/// new holders every [`RELOOK_EVERY`] and asks those first (a volunteer behind a strict NAT
/// gets the blob from another volunteer as soon as one has it). A peer that sends bytes
/// failing their hash is never asked again and is reported; the groups already checked
/// stay, so the next holder continues from there. Returns the blob's path in the store and
/// its size.
pub async fn fetch_from_any(
    f: &Fetcher,
    hash: ContentHash,
    known: Vec<PeerId>,
    max_size: u64,
) -> Result<(PathBuf, u64), String> {
    let store = &f.store;
    if store.has(&hash) {
        let size = store.size(&hash).map_err(|e| e.to_string())?;
        return Ok((store.path(&hash), size));
    }
    let mut fetch = Fetch {
        f,
        hash,
        known: &known,
        max_size,
        control: f.control.clone(),
        liars: HashSet::new(),
        waited: HashSet::new(),
        last: String::new(),
    };
    for round in 0..FETCH_ROUNDS {
        let mut queue: VecDeque<PeerId> = fetch.candidates(&HashSet::new()).await.into();
        if queue.is_empty() && fetch.last.is_empty() {
            fetch.last = format!("no peer holding blob {hash} was found");
        }
        let mut asked: HashSet<PeerId> = HashSet::new();
        while let Some(peer) = queue.pop_front() {
            if !asked.insert(peer) || fetch.liars.contains(&peer) {
                continue;
            }
            if f.paths.relayed_only(&peer) && fetch.waited.insert(peer) {
                // Hole punching runs once per relayed connection: wait for it once per
                // peer, and meanwhile look for holders reached directly.
                match fetch.wait_for_direct(&peer, &asked).await {
                    Waited::Direct => {}
                    Waited::Others(others) => {
                        // Back to this peer after them, with a full wait again.
                        fetch.waited.remove(&peer);
                        asked.remove(&peer);
                        queue.push_front(peer);
                        for o in others.into_iter().rev() {
                            queue.push_front(o);
                        }
                        continue;
                    }
                    Waited::Gave => {}
                }
            }
            if f.paths.relayed_only(&peer) {
                fetch.last = format!(
                    "{peer} is reached only through a relay and no hole could be punched to it \
                     (a NAT that changes ports on one side?): blobs never move over a relay"
                );
                continue;
            }
            if let Some(done) = fetch.ask(peer).await {
                return done;
            }
        }
        if round + 1 < FETCH_ROUNDS {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(round + 1))).await;
        }
    }
    Err(fetch.last)
}

/// How often a fetch waiting for a hole punch looks for other holders.
const RELOOK_EVERY: Duration = Duration::from_secs(5);

/// One [`fetch_from_any`] in progress.
struct Fetch<'a> {
    f: &'a Fetcher,
    hash: ContentHash,
    known: &'a [PeerId],
    max_size: u64,
    control: libp2p_stream::Control,
    /// Peers whose bytes failed their hash.
    liars: HashSet<PeerId>,
    /// Peers whose hole punch was waited for.
    waited: HashSet<PeerId>,
    /// Why the last attempt failed.
    last: String,
}

/// How a wait for a direct connection ended.
enum Waited {
    Direct,
    /// Holders with a direct connection turned up: ask them first.
    Others(Vec<PeerId>),
    Gave,
}

impl Fetch<'_> {
    /// The known peers, then the holders a lookup names, not liars nor in `skip`, directly
    /// connected ones first (a stable sort keeps the coordinator first among them).
    async fn candidates(&self, skip: &HashSet<PeerId>) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self.known.to_vec();
        for holder in find_holders(self.f, self.hash).await {
            if !peers.contains(&holder) {
                peers.push(holder);
            }
        }
        peers.retain(|p| !self.liars.contains(p) && !skip.contains(p));
        peers.sort_by_key(|p| self.f.paths.relayed_only(p));
        peers
    }

    /// Waits while `peer` is connected only through a relay, up to [`DIRECT_WAIT`];
    /// every [`RELOOK_EVERY`] looks for holders not yet `asked` that are reached directly.
    async fn wait_for_direct(&self, peer: &PeerId, asked: &HashSet<PeerId>) -> Waited {
        let deadline = tokio::time::Instant::now() + DIRECT_WAIT;
        let mut relook = tokio::time::Instant::now() + RELOOK_EVERY;
        while self.f.paths.relayed_only(peer) {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Waited::Gave;
            }
            if now >= relook {
                relook = now + RELOOK_EVERY;
                let others: Vec<PeerId> = self
                    .candidates(asked)
                    .await
                    .into_iter()
                    .filter(|p| p != peer && !self.f.paths.relayed_only(p))
                    .collect();
                if !others.is_empty() {
                    return Waited::Others(others);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Waited::Direct
    }

    /// Asks `peer` for the blob: `Some` when done (or the store failed), `None` to go on.
    async fn ask(&mut self, peer: PeerId) -> Option<Result<(PathBuf, u64), String>> {
        let (hash, store) = (self.hash, &self.f.store);
        match blobs::fetch(&mut self.control, peer, hash, store, self.max_size).await {
            Ok(path) => {
                let size = match store.size(&hash) {
                    Ok(size) => size,
                    Err(e) => return Some(Err(e.to_string())),
                };
                if !self.known.contains(&peer) {
                    tracing::info!(%peer, hash = %hash.short(), size, "fetched a blob from another holder");
                }
                Some(Ok((path, size)))
            }
            Err(e) => {
                if matches!(
                    e.kind,
                    blobs::FetchErrorKind::BadGroup { .. }
                        | blobs::FetchErrorKind::BadValues(_)
                        | blobs::FetchErrorKind::Mismatch { .. }
                ) {
                    warn!(%peer, hash = %hash.short(), "a peer sent bad bytes: {e:#}");
                    self.liars.insert(peer);
                    let _ = self.f.internal.try_send(Internal::BadBytes { peer, hash });
                }
                // With its cause: which step failed and why.
                self.last = format!("{:#}", anyhow::Error::from(e));
                None
            }
        }
    }
}

/// The holders of `hash` the provider records name (none if the lookup fails or takes
/// longer than [`LOOKUP_WAIT`]).
async fn find_holders(f: &Fetcher, hash: ContentHash) -> Vec<PeerId> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    if f.internal
        .send(Internal::FindHolders { hash, reply })
        .await
        .is_err()
    {
        return Vec::new();
    }
    tokio::time::timeout(LOOKUP_WAIT, rx)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// How long a fetch waits for hole punching to turn a relayed connection into a direct one
/// (DCUtR tries three times, about 10 s apart, before it gives up).
const DIRECT_WAIT: Duration = Duration::from_secs(30);

/// Makes sure the image with `hash` is also in the blob store as its tar, so volunteers
/// can fetch it.
pub fn ensure_image_blob(images: &ImageStore, blobs: &BlobStore, hash: &ContentHash) -> Result<()> {
    if blobs.has(hash) {
        blobs.touch(hash);
        return Ok(());
    }
    let image = images
        .get(hash)?
        .with_context(|| format!("image {hash} is not on this node"))?;
    let mut writer = BlobWriter::new(blobs)?;
    barn_protocol::pack::pack_dir(&image.dir, &mut writer)?;
    writer
        .finish(Some(*hash))
        .context("the image's files no longer hash to its id")?;
    Ok(())
}
