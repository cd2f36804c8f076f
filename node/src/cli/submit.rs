//! `barn submit [DIR]`: pack the tree into the local node's blob store, sign the job with
//! the project key, hand it to the local node to coordinate, optionally wait for results.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use barn_protocol::jobfile::{self, parse_duration};
use barn_protocol::message::{Job, random_bytes};
use barn_protocol::{NodeId, SecretKey, Signed};
use clap::Args;

use crate::api::client::ApiClient;
use crate::api::types::JobDetail;
use crate::dirs::Dirs;
use crate::store::ImageStore;
use crate::store::blobs::{BlobStore, BlobWriter};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The source tree holding `barn.toml` (default: the current directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Replicas wanted (overrides the job file).
    #[arg(long)]
    replicas: Option<u8>,
    /// Wait until every replica has a result and print them.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    wait_timeout: String,
    /// How long volunteers may take to pick the job up.
    #[arg(long, default_value = "24h", value_name = "DURATION")]
    expires: String,
    /// Sign with this key file instead of the project key.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Submits the job in `dir` through the node whose data dir is `dirs.data`; returns job ids.
pub fn submit(
    dirs: &Dirs,
    dir: &Path,
    key: &SecretKey,
    replicas: Option<u8>,
    expires_secs: u64,
) -> Result<Vec<String>> {
    let file = super::job::job_file_path(dir.to_path_buf());
    let root = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        file.parent()
            .context("job file has no folder")?
            .to_path_buf()
    };
    let specs = jobfile::load(&file)?;
    let api = ApiClient::from_data_dir(&dirs.data)?;
    let status = api.status()?;
    let coordinator: NodeId = status
        .node
        .parse()
        .with_context(|| format!("the node reports a bad id {:?}", status.node))?;
    let images = ImageStore::new(&dirs.data);
    let blobs = BlobStore::open(dirs.data.join("blobs"))?;
    let mut writer = BlobWriter::new(&blobs)?;
    let packed = barn_protocol::pack::pack_dir(&root, &mut writer)
        .with_context(|| format!("failed to pack {}", root.display()))?;
    writer.finish(Some(packed.hash))?;
    let now = crate::daemon::now();
    let mut ids = Vec::new();
    for mut spec in specs {
        if let Some(r) = replicas {
            anyhow::ensure!(
                (1..=jobfile::MAX_REPLICAS).contains(&r),
                "--replicas must be between 1 and {}",
                jobfile::MAX_REPLICAS
            );
            spec.replicas = r;
        }
        let image = images.resolve(&spec.image)?;
        anyhow::ensure!(
            image.arch == spec.arch,
            "image {} is for {}, the job asks for {}",
            image.name,
            image.arch,
            spec.arch
        );
        let job = Job {
            spec,
            image_hash: image.hash,
            source: packed.hash,
            source_size: packed.size,
            coordinator,
            coordinator_addrs: status
                .listen
                .iter()
                .filter(|a| !a.contains("/0.0.0.0/"))
                .cloned()
                .collect(),
            created: now,
            expires: now + expires_secs,
            nonce: serde_bytes::ByteArray::new(random_bytes()),
        };
        let signed = Signed::sign(job, key);
        ids.push(api.submit(&signed.to_bytes())?);
    }
    Ok(ids)
}

/// Polls the job until its coordinator has settled it, saying on stderr what it waits for
/// ("waiting for 1 more volunteer for x86_64") whenever that changes.
pub fn wait_for(api: &ApiClient, id: &str, timeout: Duration) -> Result<JobDetail> {
    let start = Instant::now();
    let mut said: Option<String> = None;
    loop {
        let d = api.job(id)?;
        if d.settlement.is_some() {
            return Ok(d);
        }
        if d.job.waiting != said {
            if let Some(w) = &d.job.waiting {
                eprintln!("{}: {w}", short_id(id));
            }
            said = d.job.waiting.clone();
        }
        if start.elapsed() > timeout {
            let why = d.job.waiting.map(|w| format!(" ({w})")).unwrap_or_default();
            bail!(
                "gave up waiting after {}s: not settled, {} of {} results{why}",
                timeout.as_secs(),
                d.job.results,
                d.job.replicas
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn short_id(id: &str) -> &str {
    let id = id.trim_start_matches("b3:");
    &id[..id.len().min(12)]
}

pub fn run(args: SubmitArgs, dirs: &Dirs) -> Result<ExitCode> {
    let key_path = args.key.clone().unwrap_or_else(|| dirs.project_key());
    if !key_path.exists() {
        bail!(
            "no project key at {}; make one with `barn key new`",
            key_path.display()
        );
    }
    let key = crate::keys::load(&key_path)?;
    let expires = parse_duration(&args.expires)
        .with_context(|| format!("--expires {:?} is not a duration", args.expires))?;
    let wait = parse_duration(&args.wait_timeout)
        .with_context(|| format!("--wait-timeout {:?} is not a duration", args.wait_timeout))?;
    let ids = submit(dirs, &args.dir, &key, args.replicas, expires)?;
    if !args.wait {
        for id in &ids {
            println!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let policy = super::verify::policy(dirs, None)?;
    let api = ApiClient::from_data_dir(&dirs.data)?;
    let mut code = 0;
    for id in &ids {
        if !args.json {
            eprintln!("submitted {id}; waiting for results");
        }
        let d = wait_for(&api, id, Duration::from_secs(wait))?;
        code = code.max(super::verify::report(&d, args.json, &policy)?);
    }
    Ok(ExitCode::from(code))
}
