//! The daemon `barn node`: one actor task ([`actor`]) owns the swarm, the database and the
//! job table; the local API talks to it through a [`handle::NodeHandle`]; each leased job
//! runs in its own task (`work`) that reports back to the actor.
//!
//! Data dir layout: `node.key`, `barn.db` (SQLite, WAL), `blobs/` (content-addressed:
//! sources, images as tars, artifacts, logs), `images/`, `work/` (VM scratch), `jobs/`
//! (each job's log and artifacts on this volunteer), `api.addr` and `api.token`, and
//! `paused` while the owner has paused the node ([`owner::PauseFile`]).

pub mod actor;
pub mod handle;
pub mod owner;
mod views;
mod work;

use std::path::Path;

use anyhow::{Context, Result};
use barn_protocol::SecretKey;
use barn_protocol::message::Accel;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::dirs::{Dirs, write_private_new};
use crate::net::swarm::{NetConfig, build_swarm};
use crate::runner::{self, ImageStore, Runner, RunnerConfig};
use crate::store::blobs::BlobStore;
use crate::store::db::Db;

/// Loads the node key, making one on first start.
pub fn node_key(dirs: &Dirs) -> Result<SecretKey> {
    let path = dirs.node_key();
    if !path.exists() {
        let key = SecretKey::generate();
        write_private_new(&path, &key.to_file_text())?;
        info!(path = %path.display(), node = %key.node_id(), "made a new node key");
        return Ok(key);
    }
    crate::cli::key::load(&path)
}

/// Options that are not in the config file.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A test-only fault switch: alter every output before hashing it (issue #5's
    /// "lying node"). Never set outside tests and demos of it.
    pub fault_alter_outputs: bool,
}

/// Runs the node until `cancel` fires.
pub async fn run(dirs: Dirs, cfg: Config, opts: Options, cancel: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&dirs.data)
        .with_context(|| format!("failed to create {}", dirs.data.display()))?;
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
    let runner = Runner::new(rcfg);
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
    };
    let swarm = build_swarm(&key, &net).context("failed to start networking")?;
    let control = swarm.behaviour().stream.new_control();
    let server = crate::net::blobs::serve(
        control.clone(),
        blobs.clone(),
        crate::net::blobs::DEFAULT_MAX_TRANSFERS,
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
    let api = tokio::spawn(crate::api::server::serve(
        handle,
        listener,
        token.clone(),
        api_cancel.clone(),
    ));
    info!(node = %key.node_id(), api = %api_addr, ?accel, "barn node started");
    eprintln!("barn node {} ({accel})", key.node_id());
    eprintln!("  api  http://{api_addr}/?token={token}");

    let actor = actor::Actor::new(actor::Parts {
        events,
        key,
        cfg,
        opts,
        dirs: dirs.clone(),
        db,
        blobs,
        images,
        runner,
        accel,
        swarm,
        control,
        paused,
    });
    let result = actor.run(cmd_rx, cancel).await;
    api_cancel.cancel();
    let _ = api.await;
    let _ = std::fs::remove_file(dirs.data.join("api.addr"));
    result
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
