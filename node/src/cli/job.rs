//! `barn job check [FILE]`: parse a job file and show what it asks for.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use barn_protocol::jobfile::{self, show_size};
use barn_protocol::text::printable;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Check a job file and print the job it describes.
    Check {
        /// The job file, or a directory holding `barn.toml` (default: ./barn.toml).
        #[arg(default_value = jobfile::FILE_NAME)]
        file: PathBuf,
        /// Print the parsed job specs as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The job file for a path that is a file or a directory holding one.
pub fn job_file_path(path: PathBuf) -> PathBuf {
    if path.is_dir() {
        path.join(jobfile::FILE_NAME)
    } else {
        path
    }
}

pub fn run(cmd: JobCommand) -> Result<ExitCode> {
    match cmd {
        JobCommand::Check { file, json } => {
            let specs = jobfile::load(&job_file_path(file))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&specs)?);
                return Ok(ExitCode::SUCCESS);
            }
            for s in &specs {
                println!("image      {}", s.image);
                println!("arch       {}", s.arch);
                println!("replicas   {}", s.replicas);
                println!("timeout    {}s", s.timeout_secs);
                println!(
                    "resources  {} cpu, {} memory, {} output quota",
                    s.resources.cpus,
                    show_size(s.resources.memory_bytes),
                    show_size(s.resources.disk_bytes)
                );
                println!("epoch      {}", s.source_date_epoch);
                if !s.env.is_empty() {
                    let env: Vec<_> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("env        {}", printable(&env.join(" ")));
                }
                println!("artifacts  {}", printable(&s.artifacts.join(" ")));
                for t in &s.tasks {
                    println!(
                        "task       {}: {}",
                        t.name,
                        printable(t.run.lines().next().unwrap_or_default())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
