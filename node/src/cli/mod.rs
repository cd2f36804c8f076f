//! The command line: clap definitions and thin dispatch to the parts that do the work.
//!
//! Exit codes are documented in `docs/cli.md`; [`exit`] holds them.

mod attest;
mod demo;
mod diff;
mod fetch;
mod image;
mod job;
mod jobs;
pub mod key;
mod node;
mod nodes;
mod pack;
mod pause;
mod run;
mod status;
mod submit;
mod verify;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::dirs::Dirs;

/// Exit codes shared by all commands.
pub mod exit {
    /// The command failed (bad input, I/O error, …); the message says why.
    pub const FAILURE: u8 = 1;
    /// A build ran and one of its tasks exited non-zero.
    pub const BUILD_FAILED: u8 = 3;
    /// A build ran past its timeout and was stopped.
    pub const TIMED_OUT: u8 = 4;
    /// The infrastructure failed (the VM did not boot, the output was unreadable, …).
    pub const INFRASTRUCTURE: u8 = 5;
    /// Verdict: the replicas succeeded but their outputs differ.
    pub const DIFFERS: u8 = 10;
    /// Verdict: a replica's build failed.
    pub const VERDICT_FAILED: u8 = 11;
    /// Verdict: not every replica has reported yet.
    pub const PENDING: u8 = 12;
    /// Verdict: the results agree, but not by two distinct operators, or not by as many
    /// builders the verifier trusts as its policy's quorum.
    pub const UNCONFIRMED: u8 = 13;
}

/// barn: a peer-to-peer volunteer build farm.
#[derive(Debug, Parser)]
#[command(name = "barn", version, about, max_term_width = 100)]
pub struct Args {
    /// Configuration directory (default: the platform's, e.g. ~/.config/barn).
    #[arg(long, global = true, env = "BARN_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Data directory (default: the platform's, e.g. ~/.local/share/barn).
    #[arg(long, global = true, env = "BARN_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log debug messages to stderr (RUST_LOG overrides).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make or show signing keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Pack a source tree deterministically and print its source hash.
    Pack(pack::PackArgs),
    /// Show a job of the running node (`barn job ID`), or check a job file (`barn job check`).
    Job(jobs::JobArgs),
    /// List the jobs the running node knows.
    Jobs(jobs::JobsArgs),
    /// List the nodes the running node knows.
    Nodes(nodes::NodesArgs),
    /// Show the running node: its addresses, how peers reach it (directly or through a
    /// relay), its peers and slots.
    Status(status::StatusArgs),
    /// Print one replica's build log.
    Log(fetch::LogArgs),
    /// Fetch one replica's artifacts into a folder, verified against its signed manifest.
    Fetch(fetch::FetchArgs),
    /// Show why a job's replicas disagree: per differing file, which nodes made what and the
    /// actual difference (diffoscope when installed, else first byte, line diff or hex).
    Diff(diff::DiffArgs),
    /// Build and list guest images.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run DIR's barn.toml in a local VM (no network, no farm) and print the result.
    Run(run::RunArgs),
    /// Run a volunteer node (the daemon) until SIGINT or SIGTERM.
    Node(node::NodeArgs),
    /// Stop the running node from taking new jobs, until `barn resume` (kept across
    /// restarts). A running job finishes unless --stop is given.
    Pause(pause::PauseArgs),
    /// Let the running node take jobs again (within its schedule and load limit).
    Resume(pause::ResumeArgs),
    /// Check every signature of a job's settlement and results here and print the verdict
    /// under your trust policy.
    Verify(verify::VerifyArgs),
    /// Sign DIR's job with the project key and hand it to the local node to coordinate.
    Submit(submit::SubmitArgs),
    /// Start a local farm (a submitter and three volunteers on 127.0.0.1), build DIR's job
    /// (default: the hello example) on every volunteer, and show whether they agree.
    Demo(demo::DemoArgs),
    /// Export a job's results and verdict as signed in-toto attestations, or verify a file
    /// of them.
    #[command(subcommand)]
    Attest(attest::AttestCommand),
}

/// Runs the parsed command.
pub fn run(args: Args) -> Result<ExitCode> {
    let dirs = Dirs::resolve(args.config_dir, args.data_dir)?;
    match args.command {
        Command::Key(cmd) => key::run(cmd, &dirs),
        Command::Pack(a) => pack::run(a),
        Command::Job(a) => jobs::run_job(a, &dirs),
        Command::Jobs(a) => jobs::run(a, &dirs),
        Command::Nodes(a) => nodes::run(a, &dirs),
        Command::Status(a) => status::run(a, &dirs),
        Command::Log(a) => fetch::run_log(a, &dirs),
        Command::Fetch(a) => fetch::run_fetch(a, &dirs),
        Command::Diff(a) => diff::run(a, &dirs),
        Command::Image(cmd) => image::run(cmd, &dirs),
        Command::Run(a) => run::run(a, &dirs),
        Command::Node(a) => node::run(a, &dirs),
        Command::Pause(a) => pause::run_pause(a, &dirs),
        Command::Resume(a) => pause::run_resume(a, &dirs),
        Command::Submit(a) => submit::run(a, &dirs),
        Command::Verify(a) => verify::run(a, &dirs),
        Command::Demo(a) => demo::run(a, &dirs),
        Command::Attest(cmd) => attest::run(cmd, &dirs),
    }
}
