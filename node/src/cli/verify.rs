//! `barn verify JOB`: check every signature of a job and its results here, without
//! trusting the node's database, and print the verdict. Also the verdict display that
//! `barn submit --wait` and `barn demo` share.
//!
//! Exit codes: 0 reproducible, 10 differs, 11 failed, 12 pending; 1 when something does
//! not verify (a tampered result, a result for another job, a bad signature).

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use barn_protocol::message::{BuildResult, Job, JobId};
use barn_protocol::text::printable;
use barn_protocol::{NodeId, Signed};
use clap::Args;

use super::exit;
use crate::api::client::ApiClient;
use crate::api::types::{JobDetail, ResultView};
use crate::dirs::Dirs;
use crate::verify::verdict::{Kind, Verdict, judge};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The job: its `b3:` id or a unique hex prefix.
    job: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A job and its results, every signature checked here.
#[derive(Debug)]
pub struct Checked {
    pub id: JobId,
    pub job: Signed<Job>,
    pub results: Vec<Signed<BuildResult>>,
}

/// Checks the job envelope and every result envelope of `d`.
pub fn check(d: &JobDetail) -> Result<Checked> {
    let bytes = hex::decode(&d.envelope).context("the job envelope is not hex")?;
    let job = Signed::<Job>::from_bytes(&bytes).context("the job's signature does not verify")?;
    let id = JobId::of(&job);
    if id.to_string() != d.job.id {
        bail!(
            "the job envelope hashes to {id}, not to the id {} it is stored under",
            d.job.id
        );
    }
    let results = d
        .results
        .iter()
        .map(|r| verify_result(&d.job.id, r))
        .collect::<Result<Vec<_>>>()?;
    Ok(Checked { id, job, results })
}

/// Decodes and checks one replica's signed result as the node listed it: the signature,
/// that the signer is the node it is listed under, that it is for job `job_id`, and that
/// its manifest hashes to its root.
pub fn verify_result(job_id: &str, r: &ResultView) -> Result<Signed<BuildResult>> {
    let who = &r.node[r.node.len().saturating_sub(8)..];
    let bytes = hex::decode(&r.envelope)
        .with_context(|| format!("node {who}'s result envelope is not hex"))?;
    let signed = Signed::<BuildResult>::from_bytes(&bytes)
        .with_context(|| format!("the result from node {who} does not verify"))?;
    let signer = NodeId(signed.signer());
    let m = signed.message();
    if signer.to_string() != r.node || m.node != signer {
        bail!(
            "the result listed for node {who} is signed by {signer} for {}",
            m.node
        );
    }
    if m.job.to_string() != job_id {
        bail!(
            "node {who}'s signed result is for job {}, not this one",
            m.job
        );
    }
    if m.manifest.root() != m.manifest_root {
        bail!("node {who}'s signed manifest does not hash to its manifest root");
    }
    Ok(signed)
}

/// The verdict over checked results.
pub fn verdict_of(c: &Checked) -> Verdict {
    let pairs: Vec<(NodeId, BuildResult)> = c
        .results
        .iter()
        .map(|s| (NodeId(s.signer()), s.message().clone()))
        .collect();
    judge(c.job.message(), &pairs)
}

/// The exit code for a verdict.
pub fn exit_code(kind: Kind) -> u8 {
    match kind {
        Kind::Reproducible => 0,
        Kind::Differs => exit::DIFFERS,
        Kind::Failed => exit::VERDICT_FAILED,
        Kind::Pending => exit::PENDING,
    }
}

fn short(node: &str) -> &str {
    &node[node.len().saturating_sub(8)..]
}

/// Prints each result, the verdict and, when outputs differ, the file table; returns the
/// verdict's exit code.
pub fn report(d: &JobDetail, json: bool) -> Result<u8> {
    let c = check(d)?;
    let v = verdict_of(&c);
    if json {
        let results: Vec<_> = c
            .results
            .iter()
            .map(|s| {
                let m = s.message();
                serde_json::json!({
                    "node": NodeId(s.signer()).to_string(),
                    "status": m.status.word(),
                    "manifest_root": m.manifest_root.to_string(),
                    "log_hash": m.log_hash.to_string(),
                    "timings": m.timings,
                    "accel": m.accel,
                    "signature": "ok",
                })
            })
            .collect();
        let out = serde_json::json!({ "job": c.id.to_string(), "verdict": v, "results": results });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(exit_code(v.verdict));
    }
    println!("job {}", c.id);
    for s in &c.results {
        let m = s.message();
        let node = NodeId(s.signer()).to_string();
        let mut mark = if v.minority.contains(&node) {
            "  (minority)".to_string()
        } else {
            String::new()
        };
        if !m.variation.is_empty() {
            let vars: Vec<_> = m
                .variation
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            mark.push_str(&format!("  varied {}", printable(&vars.join(" "))));
        }
        println!(
            "  node {}  {:<9} manifest {}  log {}  boot {} ms, run {} ms, total {} ms, {}  signature ok{mark}",
            short(&node),
            m.status.word(),
            m.manifest_root.short(),
            m.log_hash.short(),
            m.timings.boot_ms,
            m.timings.run_ms,
            m.timings.total_ms,
            m.accel
        );
    }
    for (node, why) in &v.ignored {
        println!("  node {}  ignored: {}", short(node), printable(why));
    }
    match v.verdict {
        Kind::Reproducible => println!(
            "verdict: reproducible ({} of {} results agree on manifest root {})",
            v.majority.len(),
            v.compared,
            v.root.clone().unwrap_or_default()
        ),
        Kind::Differs => {
            println!("verdict: differs ({} file(s) differ)", v.files.len());
            if !v.explained_by.is_empty() {
                println!(
                    "  split by the variation: {}",
                    printable(&v.explained_by.join(", "))
                );
            }
            if !v.majority.is_empty() {
                println!(
                    "  majority: {}",
                    v.majority
                        .iter()
                        .map(|n| short(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            println!(
                "  minority: {}",
                v.minority
                    .iter()
                    .map(|n| short(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for f in &v.files {
                println!("  file {}", printable(&f.path));
                for (what, nodes) in &f.variants {
                    println!(
                        "    {:<80} {}",
                        printable(what),
                        nodes
                            .iter()
                            .map(|n| short(n))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        Kind::Failed => {
            println!("verdict: failed");
            for (node, why) in &v.failures {
                println!("  node {}: {}", short(node), printable(why));
            }
        }
        Kind::Pending => println!(
            "verdict: pending ({} of {} replicas have reported)",
            v.compared, v.replicas
        ),
    }
    Ok(exit_code(v.verdict))
}

pub fn run(args: VerifyArgs, dirs: &Dirs) -> Result<ExitCode> {
    let api = ApiClient::from_data_dir(&dirs.data)?;
    let d = api.job(&args.job)?;
    Ok(ExitCode::from(report(&d, args.json)?))
}
