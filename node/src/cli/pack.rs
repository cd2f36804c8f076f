//! `barn pack DIR`: the source hash a job would carry for DIR.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct PackArgs {
    /// The source tree (default: the current directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Also write the tar stream to FILE.
    #[arg(long, short, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Print hash, size and entry count as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PackArgs) -> Result<ExitCode> {
    let meta = std::fs::metadata(&args.dir)
        .with_context(|| format!("failed to read {}", args.dir.display()))?;
    anyhow::ensure!(meta.is_dir(), "{} is not a directory", args.dir.display());
    let packed = match &args.out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("failed to create {}", path.display()))?;
            barn_protocol::pack::pack_dir(&args.dir, std::io::BufWriter::new(file))
        }
        None => barn_protocol::pack::pack_dir(&args.dir, std::io::sink()),
    }
    .with_context(|| format!("failed to pack {}", args.dir.display()))?;
    if args.json {
        let v = serde_json::json!({ "source": packed.hash.to_string(), "size": packed.size, "entries": packed.entries });
        println!("{v}");
    } else {
        println!("{}", packed.hash);
    }
    Ok(ExitCode::SUCCESS)
}
