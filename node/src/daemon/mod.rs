//! The daemon `barn node`: the node core ([`core`]) holds all protocol logic without I/O;
//! one actor task ([`actor`]) owns the swarm and the core and carries out the core's
//! effects; one store task writes the database; the local API talks to the actor through a
//! [`handle::NodeHandle`]; each leased job runs in its own task (`work`) that reports back
//! to the actor.
//!
//! Data dir layout: `node.key`, `barn.db` (SQLite, WAL), `blobs/` (content-addressed:
//! sources, images as tars, artifacts, logs), `images/`, `work/` (VM scratch), `jobs/`
//! (each job's log and artifacts on this volunteer), `api.addr` and `api.token`,
//! `peers.cbor` (the peers met, dialled again at the next start: `net::peerbook`), and
//! `paused` while the owner has paused the node ([`owner::PauseFile`]).

pub mod actor;
pub mod core;
pub mod handle;
mod holders;
pub mod owner;
mod sweep;
mod views;
mod work;

use std::path::Path;

use anyhow::{Context, Result};
use barn_protocol::SecretKey;
use barn_protocol::message::Accel;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::dirs::{Dirs, write_private_new};
use crate::net::swarm::{NetConfig, build_swarm};
use crate::runner::{self, Runner, RunnerConfig};
use crate::store::ImageStore;
use crate::store::blobs::BlobStore;
use crate::store::db::Db;
use crate::store::ops::StoreTask;

/// Loads the node key, making one on first start.
pub fn node_key(dirs: &Dirs) -> Result<SecretKey> {
    let path = dirs.node_key();
    if !path.exists() {
        let key = SecretKey::generate();
        write_private_new(&path, &key.to_file_text())?;
        info!(path = %path.display(), node = %key.node_id(), "made a new node key");
        return Ok(key);
    }
    Ok(crate::keys::load(&path)?)
}

/// Options that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A test-only fault switch: alter every output before hashing it (issue #5's
    /// "lying node"). Never set outside tests and demos of it.
    pub fault_alter_outputs: bool,
}

/// How old a temporary file must be before a starting node takes it for a crashed run's
/// leftover: a `barn run` or `barn image build` may share the data folder and be writing
/// one now, and none of them takes this long.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// Removes what a crashed earlier run left in the data folder: anonymous blob writes
/// (`blobs/tmp/*.tmp`; resumable `*.partial` downloads are kept) and image build and fetch
/// folders (`images/build-*`, `images/fetch-*`). VMs and their folders are the runner's
/// ([`runner::confine`]).
fn clean_temporary_files(data: &std::path::Path) {
    let stale = |e: &std::fs::DirEntry| {
        e.metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMPORARY))
    };
    let sweep = |dir: std::path::PathBuf, matches: &dyn Fn(&str) -> bool| {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !matches(&name) || !stale(&e) {
                continue;
            }
            let path = e.path();
            let removed = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {
                    info!(path = %path.display(), "removed a temporary file left by an earlier run")
                }
                Err(e) => {
                    warn!(path = %path.display(), err = %e, "failed to remove a stale temporary file")
                }
            }
        }
    };
    sweep(data.join("blobs").join("tmp"), &|n| n.ends_with(".tmp"));
    sweep(data.join("images"), &|n| {
        n.starts_with("build-") || n.starts_with("fetch-")
    });
}

/// Runs the node until `cancel` fires. `serve_api` serves the local API on the listener
/// with the token (`api::server::serve`); it is passed in, so that the daemon does not
/// import the API that imports it.
pub async fn run<F, Fut>(
    dirs: Dirs,
    cfg: Config,
    opts: Options,
    cancel: CancellationToken,
    serve_api: F,
) -> Result<()>
where
    F: FnOnce(handle::NodeHandle, tokio::net::TcpListener, String, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    std::fs::create_dir_all(&dirs.data)
        .with_context(|| format!("failed to create {}", dirs.data.display()))?;
    clean_temporary_files(&dirs.data);
    let key = node_key(&dirs)?;
    let paused = owner::PauseFile::new(&dirs.data).load()?;
    if paused {
        info!("paused by the owner: no new jobs until `barn resume`");
    }
    let db = Db::open(&dirs.data.join("barn.db")).context("failed to open the node database")?;
    let blobs =
        BlobStore::open(dirs.data.join("blobs")).context("failed to open the blob store")?;
    let images = ImageStore::new(&dirs.data);
    let mut rcfg = RunnerConfig::new(dirs.data.join("work"));
    rcfg.max_vms = cfg.slots as usize;
    rcfg.max_cpus = cfg.max_cpus;
    rcfg.max_memory_bytes = cfg.max_memory_bytes;
    rcfg.unconfined = cfg.unconfined;
    let runner = Runner::new(rcfg);
    if let Some(why) = runner.refusal() {
        eprintln!(
            "barn node: WARNING: this node runs no job: it cannot confine QEMU: {why}\n  \
             (fix that, or set node.unconfined = true to run jobs without the confinement)"
        );
    }
    let forced = match cfg.accel.as_str() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    };
    let accel = runner::accel::choose(forced, &runner, &images, &dirs.data).await;

    let parse = |list: &[String], key: &str| -> Result<Vec<libp2p::Multiaddr>> {
        list.iter()
            .map(|a| {
                a.parse()
                    .with_context(|| format!("{key}: {a:?} is not a multiaddr"))
            })
            .collect()
    };
    let net = NetConfig {
        listen: parse(&cfg.listen, "node.listen")?,
        bootstrap: parse(&cfg.bootstrap, "node.bootstrap")?,
        mdns: cfg.mdns,
        relay: cfg.relay,
        external_addrs: parse(&cfg.external_addrs, "node.external_addrs")?,
    };
    let swarm = build_swarm(&key, &net).context("failed to start networking")?;
    let control = swarm.behaviour().stream.new_control();
    let paths = swarm.behaviour().stream.paths();
    let blob_stats = std::sync::Arc::new(crate::net::blobs::ServeStats::default());
    let server = crate::net::blobs::serve(
        control.clone(),
        blobs.clone(),
        crate::net::blobs::ServeLimits::default(),
        blob_stats.clone(),
    )?;
    tokio::spawn(server);

    let listener = tokio::net::TcpListener::bind(&cfg.api_listen)
        .await
        .with_context(|| format!("failed to listen on {} for the local API", cfg.api_listen))?;
    let api_addr = listener.local_addr()?;
    let token = hex::encode(barn_protocol::message::random_bytes());
    write_api_files(&dirs.data, &api_addr.to_string(), &token)?;
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(64);
    let api_cancel = cancel.child_token();
    let (events, _) = tokio::sync::broadcast::channel(handle::EVENT_BUFFER);
    let handle = handle::NodeHandle::with_events(cmd_tx, events.clone());
    let api = tokio::spawn(serve_api(
        handle,
        listener,
        token.clone(),
        api_cancel.clone(),
    ));
    info!(node = %key.node_id(), api = %api_addr, ?accel, "barn node started");
    eprintln!("barn node {} ({accel})", key.node_id());
    eprintln!("  api  http://{api_addr}/?token={token}");

    let core =
        self::core::Core::restore(core_config(&key, &cfg, &dirs, &runner, accel)?, &db, now())
            .context("failed to read the node's state from its database")?;
    let store = StoreTask::start(
        Db::open(&dirs.data.join("barn.db")).context("failed to open the node database")?,
    );
    let actor = actor::Actor::new(
        actor::Parts {
            events,
            key,
            cfg,
            opts,
            dirs: dirs.clone(),
            db,
            store,
            blobs,
            images,
            runner,
            accel,
            swarm,
            control,
            paths,
            paused,
            bootstrap: net.bootstrap.clone(),
            blob_stats,
        },
        core,
    );
    let result = actor.run(cmd_rx, cancel).await;
    api_cancel.cancel();
    let _ = api.await;
    let _ = std::fs::remove_file(dirs.data.join("api.addr"));
    result
}

/// What the node core is built with, from the config; the operator certificate is
/// checked here so a bad one stops the start with its reason.
fn core_config(
    key: &SecretKey,
    cfg: &Config,
    dirs: &Dirs,
    runner: &Runner,
    accel: Accel,
) -> Result<self::core::CoreConfig> {
    let path = dirs.operator_cert();
    let operator_cert = match crate::keys::load_operator_cert(&path, &key.node_id(), now())
        .context("this node's operator certificate does not check")?
    {
        Some((bytes, operator)) => {
            info!(%operator, "this node's operator");
            Some(bytes)
        }
        None => None,
    };
    Ok(self::core::CoreConfig {
        key: key.clone(),
        accel,
        caps: crate::sched::Capabilities {
            archs: vec!["x86_64".into()],
            memory_bytes: cfg.max_memory_bytes,
            // A node that cannot confine QEMU claims nothing (its runner refuses jobs).
            slots: if runner.refusal().is_some() {
                0
            } else {
                cfg.slots
            },
            max_disk_bytes: cfg.max_disk_bytes,
            max_timeout_secs: cfg.max_timeout.as_secs(),
        },
        trust: crate::sched::Trust {
            submitters: cfg.trusted.iter().copied().collect(),
            accept_any: cfg.accept_any,
        },
        operator_cert,
        announce_secs: cfg.announce_interval.as_secs(),
        advert_secs: cfg.advert_interval.as_secs(),
    })
}

fn write_api_files(data: &Path, addr: &str, token: &str) -> Result<()> {
    let token_path = data.join("api.token");
    let _ = std::fs::remove_file(&token_path);
    write_private_new(&token_path, token)?;
    let tmp = data.join(".api.addr.tmp");
    std::fs::write(&tmp, addr)?;
    std::fs::rename(&tmp, data.join("api.addr"))?;
    Ok(())
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_node_removes_stale_temporary_files_only() {
        let data = tempfile::tempdir().unwrap();
        let blobs = data.path().join("blobs/tmp");
        let images = data.path().join("images");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::create_dir_all(images.join("build-old")).unwrap();
        std::fs::create_dir_all(images.join("build-new")).unwrap();
        std::fs::create_dir_all(images.join("0123abcd")).unwrap();
        for f in ["old.tmp", "new.tmp", "old.partial"] {
            std::fs::write(blobs.join(f), b"x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - 2 * STALE_TEMPORARY;
        let age = |p: std::path::PathBuf| {
            std::fs::File::open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap()
        };
        age(blobs.join("old.tmp"));
        age(blobs.join("old.partial"));
        age(images.join("build-old"));
        age(images.join("0123abcd"));
        clean_temporary_files(data.path());
        assert!(!blobs.join("old.tmp").exists());
        assert!(!images.join("build-old").exists());
        for kept in [
            blobs.join("new.tmp"),
            blobs.join("old.partial"),
            images.join("build-new"),
            images.join("0123abcd"),
        ] {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
    }
}
