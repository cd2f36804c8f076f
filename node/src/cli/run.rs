//! `barn run [DIR]`: one job in a local VM, no network, no farm.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use barn_protocol::jobfile::{self, show_size};
use barn_protocol::message::{Accel, BuildStatus};
use barn_protocol::text::printable;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::dirs::Dirs;
use crate::runner::{self, Event, RunReport, RunRequest, Runner, RunnerConfig};
use crate::store::ImageStore;

/// The accelerator to ask for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AccelChoice {
    /// KVM if a canary VM proves it works, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn forced(self) -> Option<Accel> {
        match self {
            AccelChoice::Auto => None,
            AccelChoice::Kvm => Some(Accel::Kvm),
            AccelChoice::Tcg => Some(Accel::Tcg),
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The source tree holding `barn.toml` (default: the current directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Where to keep the log and artifacts (default: a new folder under <data>/runs).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Which architecture of a multi-arch job file to run (default: the first).
    #[arg(long)]
    arch: Option<String>,
    #[arg(long, value_enum, default_value = "auto", env = "BARN_ACCEL")]
    accel: AccelChoice,
    /// Print the result as JSON on stdout (the log still streams to stderr unless --quiet).
    #[arg(long)]
    json: bool,
    /// Do not stream the guest's console.
    #[arg(long, short)]
    quiet: bool,
    /// Build as replica N of a job that varies its environment (`vary` in barn.toml):
    /// 0 is the fixed environment, N varies the N-th listed dimension, more vary all.
    #[arg(long, default_value_t = 0, value_name = "N")]
    variant: u32,
    /// Keep at most this much of the guest's console log (e.g. 16MiB); the rest is counted.
    #[arg(long, value_name = "SIZE", default_value = "16MiB", value_parser = parse_size_arg)]
    log_cap: u64,
    /// Keep the VM's work directory (input and output disks) for debugging.
    #[arg(long)]
    keep_work: bool,
    /// Run QEMU without its confinement (network namespace, cgroup, a user per VM, parent-death
    /// signal) if it cannot be had, as `node.unconfined = true` does for a node.
    #[arg(long)]
    unconfined: bool,
}

pub fn run(args: RunArgs, dirs: &Dirs) -> Result<ExitCode> {
    let file = super::job::job_file_path(args.dir.clone());
    let specs = jobfile::load(&file)?;
    let spec = match &args.arch {
        Some(a) => specs
            .into_iter()
            .find(|s| &s.arch == a)
            .with_context(|| format!("{} has no arch {a:?}", file.display()))?,
        None => specs
            .into_iter()
            .next()
            .context("the job file names no architecture")?,
    };
    let images = ImageStore::new(&dirs.data);
    let image = images.resolve(&spec.image)?;
    if image.arch != spec.arch {
        bail!(
            "image {} is for {}, the job asks for {}",
            image.name,
            image.arch,
            spec.arch
        );
    }

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| dirs.data.join("runs").join(format!("run-{stamp}")));
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    let source_tar = out_dir.join("source.tar");
    let packed = barn_protocol::pack::pack_dir(
        if args.dir.is_dir() {
            &args.dir
        } else {
            file.parent().context("job file has no folder")?
        },
        std::io::BufWriter::new(std::fs::File::create(&source_tar)?),
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut cfg = RunnerConfig::new(dirs.data.join("work"));
    cfg.keep_work = args.keep_work;
    cfg.log_cap = args.log_cap;
    cfg.unconfined = args.unconfined;
    let runner = Runner::new(cfg);
    if let Some(why) = runner.refusal() {
        anyhow::bail!(
            "cannot confine QEMU: {why}\n(fix that, or pass --unconfined to run without the confinement)"
        );
    }
    let started = Instant::now();
    let report = rt.block_on(async {
        let accel = runner::accel::choose(args.accel.forced(), &runner, &images, &dirs.data).await;
        if !args.json {
            eprintln!(
                "==> {} on {} ({accel}), source {}",
                spec.image,
                spec.arch,
                packed.hash.short()
            );
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let ctrl_c = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    cancel.cancel();
                }
            })
        };
        let req = RunRequest {
            spec: spec.clone(),
            source_tar,
            image,
            out_dir: out_dir.clone(),
            variation: crate::runner::variation::Variation::for_replica(
                &spec.vary,
                args.variant,
                spec.resources.cpus,
                runner.config().max_cpus,
            ),
        };
        let quiet = args.quiet;
        let show = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                show_event(&ev, quiet, started);
            }
        });
        let r = runner.run(req, accel, tx, cancel).await;
        let _ = show.await;
        ctrl_c.abort();
        r
    })?;

    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report_json(&report, &packed.hash.to_string()))?
        );
    } else {
        print_report(&report);
    }
    Ok(ExitCode::from(exit_code(&report.status)))
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    jobfile::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (write e.g. 512KiB or 16MiB)"))
}

/// The exit code for a build's status (docs/cli.md).
pub fn exit_code(status: &BuildStatus) -> u8 {
    match status {
        BuildStatus::Succeeded => 0,
        BuildStatus::Failed { .. } => exit::BUILD_FAILED,
        BuildStatus::TimedOut => exit::TIMED_OUT,
        _ => exit::INFRASTRUCTURE,
    }
}

fn show_event(ev: &Event, quiet: bool, started: Instant) {
    let t = started.elapsed().as_secs_f64();
    match ev {
        Event::Phase(p) => eprintln!("==> [{t:6.2}s] {}", format!("{p:?}").to_lowercase()),
        Event::TaskStarted { name, .. } => {
            eprintln!("==> [{t:6.2}s] task {}", printable(name))
        }
        Event::TaskFinished {
            name,
            exit_code,
            duration_ms,
            ..
        } => {
            eprintln!(
                "==> [{t:6.2}s] task {} exited {exit_code} after {:.2}s",
                printable(name),
                *duration_ms as f64 / 1000.0
            )
        }
        // The guest writes these lines: escaped, so they cannot drive the terminal.
        Event::Log(line) if !quiet && !line.starts_with("barn: ") => {
            eprintln!("    | {}", printable(line))
        }
        Event::Log(_) => {}
    }
}

/// The `--json` form of a result (the fields design.md's "Interfaces" lists, and more).
pub fn report_json(r: &RunReport, source: &str) -> serde_json::Value {
    let artifacts: Vec<_> = r
        .manifest
        .entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "path": e.path, "kind": e.kind, "size": e.size, "executable": e.executable,
                "hash": e.hash.map(|h| h.to_string()), "target": e.target,
            })
        })
        .collect();
    let tasks: Vec<_> = r
        .tasks
        .iter()
        .map(|t| serde_json::json!({"name": t.name, "exit_code": t.exit_code, "duration_ms": t.duration_ms}))
        .collect();
    let reason = match &r.status {
        BuildStatus::Succeeded | BuildStatus::TimedOut => None,
        BuildStatus::Failed { reason, .. } => reason.as_ref().map(ToString::to_string),
        BuildStatus::Error { reason } => Some(reason.clone()),
        _ => None,
    };
    serde_json::json!({
        "status": r.status.word(),
        "reason": reason,
        "manifest_root": r.manifest_root.to_string(),
        "log_hash": r.log_hash.to_string(),
        "log_size": r.log_size,
        "log_path": r.log_path,
        "artifacts": artifacts,
        "artifacts_dir": r.artifacts_dir,
        "tasks": tasks,
        "timings": r.timings,
        "accelerator": r.accel,
        "qemu_version": r.qemu_version,
        "image_hash": r.image_hash.to_string(),
        "source": source,
        "notes": r.notes,
    })
}

fn print_report(r: &RunReport) {
    let status = match &r.status {
        s @ BuildStatus::Failed { .. } => {
            format!("failed ({})", printable(&s.detail().unwrap_or_default()))
        }
        BuildStatus::Error { reason } => format!("error: {}", printable(reason)),
        s => s.word().to_string(),
    };
    println!("status     {status}");
    for t in &r.tasks {
        let code = t
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "unfinished".into());
        println!(
            "task       {:<20} exit {code:<10} {:.2}s",
            printable(&t.name),
            t.duration_ms as f64 / 1000.0
        );
    }
    let files: Vec<_> = r.manifest.files().collect();
    if files.is_empty() {
        println!("artifacts  none");
    } else {
        println!("artifacts");
        for e in files {
            let hash = e.hash.map(|h| h.to_string()).unwrap_or_default();
            println!(
                "  {:<40} {:>9}  {hash}",
                printable(&e.path),
                show_size(e.size)
            );
        }
    }
    println!("manifest   {}", r.manifest_root);
    println!(
        "log        {} ({}) {}",
        r.log_hash,
        show_size(r.log_size),
        r.log_path.display()
    );
    println!("output     {}", r.artifacts_dir.display());
    let t = &r.timings;
    println!(
        "timings    prepare {} ms, boot {} ms, run {} ms, collect {} ms, total {} ms",
        t.prepare_ms, t.boot_ms, t.run_ms, t.collect_ms, t.total_ms
    );
    println!("accel      {} (QEMU {})", r.accel, r.qemu_version);
    for n in &r.notes {
        println!("note       {}", printable(n));
    }
}
