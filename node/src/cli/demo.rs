//! `barn demo [DIR]`: a whole farm on this machine. Starts one submitter node and three
//! volunteer nodes as separate `barn node` processes on 127.0.0.1 (mDNS off, explicit
//! addresses, so two demos never see each other), submits DIR's job (default: the
//! built-in hello example) with three replicas, prints each node's signed result and
//! whether they agree, then stops every process it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use barn_protocol::SecretKey;
use clap::Args;

use super::run::AccelChoice;
use crate::api::client::ApiClient;
use crate::dirs::Dirs;
use crate::runner::{self, Runner, RunnerConfig};
use crate::store::{Image, ImageStore};
use crate::verify::policy::Policy;

const HELLO_TOML: &str = include_str!("../../../examples/hello/barn.toml");
const HELLO_NAME: &str = include_str!("../../../examples/hello/name.txt");

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// A source tree with a barn.toml (default: the hello example built into barn).
    dir: Option<PathBuf>,
    /// Volunteer nodes to start.
    #[arg(long, default_value_t = 3)]
    volunteers: u8,
    #[arg(long, value_enum, default_value = "auto", env = "BARN_ACCEL")]
    accel: AccelChoice,
    /// Keep the farm's folder (node logs, databases) afterwards.
    #[arg(long)]
    keep: bool,
    /// TEST ONLY: make the last volunteer alter its outputs.
    #[arg(long, hide = true)]
    fault_last: bool,
}

/// A `barn node` child process, stopped politely when dropped.
struct NodeProc {
    name: String,
    child: Child,
    dirs: Dirs,
    log: PathBuf,
}

impl NodeProc {
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn start_node(root: &Path, name: &str, extra: &[String], accel: &str) -> Result<NodeProc> {
    let dirs = Dirs {
        config: root.join(name).join("config"),
        data: root.join(name).join("data"),
    };
    std::fs::create_dir_all(&dirs.config)?;
    std::fs::create_dir_all(&dirs.data)?;
    let log = root.join(format!("{name}.log"));
    let exe = std::env::current_exe().context("cannot find the barn binary")?;
    let child = Command::new(exe)
        .arg("--config-dir")
        .arg(&dirs.config)
        .arg("--data-dir")
        .arg(&dirs.data)
        .args([
            "node",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--api",
            "127.0.0.1:0",
            "--accel",
            accel,
        ])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "barn_node=info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("failed to start a barn node")?;
    Ok(NodeProc {
        name: name.to_string(),
        child,
        dirs,
        log,
    })
}

/// Waits for the node's API; returns a client.
fn wait_api(node: &mut NodeProc) -> Result<ApiClient> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = node.child.try_wait() {
            bail!(
                "node {} exited ({status}); see {}",
                node.name,
                node.log.display()
            );
        }
        if let Ok(api) = ApiClient::from_data_dir(&node.dirs.data)
            && api.status().is_ok()
        {
            return Ok(api);
        }
        if Instant::now() > deadline {
            bail!(
                "node {} did not start within 60s; see {}",
                node.name,
                node.log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn copy_image(from: &Image, to: &ImageStore, scratch: &Path) -> Result<()> {
    let dir = scratch.join(format!("image-{}", from.hash.to_hex()));
    std::fs::create_dir_all(&dir)?;
    for e in std::fs::read_dir(&from.dir)? {
        let e = e?;
        let dest = dir.join(e.file_name());
        if std::fs::hard_link(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    let img = to.import_dir(&dir)?;
    anyhow::ensure!(img.hash == from.hash, "copied image hashes differently");
    Ok(())
}

pub fn run(args: DemoArgs, dirs: &Dirs) -> Result<ExitCode> {
    let started = Instant::now();
    let scratch = tempfile::Builder::new().prefix("barn-demo-").tempdir()?;
    let root = scratch.path().to_path_buf();
    let project = match &args.dir {
        Some(d) => d.clone(),
        None => {
            let p = root.join("hello");
            std::fs::create_dir_all(&p)?;
            std::fs::write(p.join("barn.toml"), HELLO_TOML)?;
            std::fs::write(p.join("name.txt"), HELLO_NAME)?;
            p
        }
    };
    let specs = barn_protocol::jobfile::load(&super::job::job_file_path(project.clone()))?;
    let image_name = specs
        .first()
        .map(|s| s.image.clone())
        .context("the job file names no image")?;

    // The image, built once in the user's data dir, then handed to the submitter only:
    // volunteers fetch it from the submitter over the network, verified by hash.
    let images = ImageStore::new(&dirs.data);
    let image = match images.by_name_get(&image_name)? {
        Some(i) => i,
        None => {
            eprintln!("==> building image {image_name} (once)");
            images.build(&image_name, None, &dirs.data.join("cache"), true)?
        }
    };
    let accel = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runner = Runner::new(RunnerConfig::new(dirs.data.join("work")));
        rt.block_on(runner::accel::choose(
            args.accel.forced(),
            &runner,
            &images,
            &dirs.data,
        ))
    };
    let accel = accel.to_string();
    eprintln!(
        "==> farm in {} ({} volunteers, {accel})",
        root.display(),
        args.volunteers
    );

    // Submitter: the project key, the image, a node that coordinates but trusts nobody.
    let project_key = SecretKey::generate();
    let mut submitter = start_node(&root, "submitter", &[], &accel)?;
    std::fs::write(submitter.dirs.project_key(), project_key.to_file_text())?;
    copy_image(&image, &ImageStore::new(&submitter.dirs.data), &root)?;
    let sub_api = wait_api(&mut submitter)?;
    let status = sub_api.status()?;
    let addr = status
        .listen
        .iter()
        .find(|a| a.contains("127.0.0.1"))
        .context("the submitter listens nowhere")?;
    let bootstrap = format!("{addr}/p2p/{}", status.node);
    eprintln!("==> submitter {} at {addr}", short(&status.node));

    let mut volunteers = Vec::new();
    for i in 1..=args.volunteers {
        let mut extra = vec![
            "--bootstrap".to_string(),
            bootstrap.clone(),
            "--trust".into(),
            project_key.submitter_id().to_string(),
        ];
        if args.fault_last && i == args.volunteers {
            extra.push("--fault-alter-outputs".into());
        }
        volunteers.push(start_node(
            &root,
            &format!("volunteer-{i}"),
            &extra,
            &accel,
        )?);
    }
    for v in &mut volunteers {
        let api = wait_api(v)?;
        let s = api.status()?;
        eprintln!("==> volunteer {} started", short(&s.node));
    }
    // Wait until the submitter has heard every volunteer's advert.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sub_api.nodes()?.iter().filter(|n| !n.is_self).count() < usize::from(args.volunteers) {
        if Instant::now() > deadline {
            bail!(
                "the volunteers did not reach the submitter within 60s; logs in {}",
                root.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    let ids = super::submit::submit(
        &submitter.dirs,
        &project,
        &project_key,
        Some(args.volunteers),
        3600,
    )?;
    let mut code = 0;
    for id in &ids {
        eprintln!(
            "==> submitted job {} with {} replicas",
            &id[3..15],
            args.volunteers
        );
        let d = super::submit::wait_for(&sub_api, id, Duration::from_secs(30 * 60))?;
        // A farm of fresh keys on one machine: no policy could trust them.
        code = code.max(super::verify::report(&d, false, &Policy::default())?);
    }

    eprintln!("==> stopping the farm");
    drop(volunteers);
    drop(submitter);
    if args.keep {
        let kept = scratch.keep();
        eprintln!("==> kept {}", kept.display());
    }
    eprintln!("==> done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(ExitCode::from(code))
}

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(8)..]
}
