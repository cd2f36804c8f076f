//! `barn verify JOB`: check every signature of a job, its settlement and its results here,
//! without trusting the node's database; count only the results the coordinator's
//! settlement names ([`crate::verify::settled`]); judge them under the verifier's trust
//! policy (`--policy FILE`, else `trust.builders` and `trust.quorum` of the config) and
//! print the verdict. Also the verdict display that `barn submit --wait` and `barn demo`
//! share.
//!
//! Exit codes: 0 reproducible, 10 differs, 11 failed, 12 pending, 13 unconfirmed (the
//! results agree, but not by two distinct operators or not by the policy's quorum of
//! trusted builders); 1 when something does not verify (a tampered result, a result for
//! another job, a bad signature, a settlement not signed by the job's coordinator).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use barn_protocol::text::printable;
use barn_protocol::{NodeId, OperatorId};
use clap::Args;

use super::exit;
use crate::api::client::ApiClient;
use crate::api::types::JobDetail;
use crate::config::Config;
use crate::dirs::Dirs;
use crate::verify::policy::Policy;
use crate::verify::settled::{self, Count};
use crate::verify::verdict::{Kind, Verdict};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The job: its `b3:` id or a unique hex prefix.
    job: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Judge under the trust policy in FILE (TOML: `builders = ["operator:…", …]`,
    /// `quorum = N`) instead of the config's `trust.builders` and `trust.quorum`.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

/// The verifier's trust policy: `file` when given, else the config's.
pub fn policy(dirs: &Dirs, file: Option<&Path>) -> Result<Policy> {
    if let Some(file) = file {
        return Ok(Policy::load(file)?);
    }
    let (config, warnings) = Config::load(&dirs.config.join("config.toml"))?;
    for w in warnings {
        eprintln!("warning: {}", printable(&w));
    }
    Ok(config.policy)
}

/// Sorts the job's results into those that count and those that do not, and refuses the
/// whole job when a listed result does not verify (the node's store was tampered with).
pub fn count(d: &JobDetail) -> Result<Count> {
    let mut count = settled::count(d).context("the job does not verify")?;
    if let Some(i) = count
        .refused
        .iter()
        .position(|r| matches!(r.why, settled::Why::Invalid(_)))
        && let settled::Why::Invalid(e) = count.refused.swap_remove(i).why
    {
        return Err(e.into());
    }
    Ok(count)
}

/// The exit code for a verdict.
pub fn exit_code(kind: Kind) -> u8 {
    match kind {
        Kind::Reproducible => 0,
        Kind::Differs => exit::DIFFERS,
        Kind::Failed => exit::VERDICT_FAILED,
        Kind::Pending => exit::PENDING,
        Kind::Unconfirmed => exit::UNCONFIRMED,
        // A kind from a newer protocol: say nothing reproducible.
        _ => exit::UNCONFIRMED,
    }
}

fn short(node: &str) -> &str {
    &node[node.len().saturating_sub(8)..]
}

/// Where the verdict's results come from, in words.
fn provenance(c: &Count) -> String {
    match &c.settlement {
        Some(s) => format!(
            "settled by its coordinator {} (its verdict: {})",
            NodeId(s.signer()).short(),
            s.message().verdict.word()
        ),
        None => "not settled yet: counting the results of this node's finished leases \
                 (the node's word, not a signed settlement)"
            .into(),
    }
}

/// Prints each counted result, what does not count, the verdict and, when outputs differ,
/// the file table; returns the verdict's exit code.
pub fn report(d: &JobDetail, json: bool, policy: &Policy) -> Result<u8> {
    let c = count(d)?;
    let v = c.verdict(policy);
    if json {
        print_json(&c, &v, policy)?;
        return Ok(exit_code(v.verdict));
    }
    println!("job {}", c.id);
    println!("  {}", provenance(&c));
    for counted in &c.counted {
        let m = counted.result.message();
        let node = counted.node.to_string();
        let mut mark = if v.minority.contains(&node) {
            "  (minority)".to_string()
        } else {
            String::new()
        };
        if counted.operator != OperatorId::of_node(&counted.node) {
            mark.push_str(&format!("  operator {}", counted.operator.short()));
        }
        if policy.trusts(&counted.operator) {
            mark.push_str("  trusted");
        }
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
        println!("  node {}  not counted: {}", short(node), printable(why));
    }
    for node in &c.missing {
        println!(
            "  node {}  settled, but its result is not here",
            short(&node.to_string())
        );
    }
    print_verdict(&v, policy);
    Ok(exit_code(v.verdict))
}

fn print_json(c: &Count, v: &Verdict, policy: &Policy) -> Result<()> {
    let results: Vec<_> = c
        .counted
        .iter()
        .map(|counted| {
            let m = counted.result.message();
            serde_json::json!({
                "node": counted.node.to_string(),
                "operator": counted.operator.to_string(),
                "trusted": policy.trusts(&counted.operator),
                "status": m.status.word(),
                "manifest_root": m.manifest_root.to_string(),
                "log_hash": m.log_hash.to_string(),
                "timings": m.timings,
                "accel": m.accel,
                "signature": "ok",
                "digest": counted.digest.to_string(),
            })
        })
        .collect();
    let out = serde_json::json!({
        "job": c.id.to_string(),
        "settled": c.is_settled(),
        "coordinator_verdict": c.settlement.as_ref().map(|s| s.message().verdict.word()),
        "policy": {
            "builders": policy.builders.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "quorum": policy.quorum,
        },
        "verdict": v,
        "results": results,
        "missing": c.missing.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// How many distinct operators agree and how many of them the verifier trusts.
fn operators(v: &Verdict, policy: &Policy) -> String {
    let agree = format!(
        "{} distinct operator{}",
        v.agreeing_operators,
        if v.agreeing_operators == 1 { "" } else { "s" }
    );
    if policy.builders.is_empty() {
        agree
    } else {
        format!(
            "{agree}, {} of them trusted (the policy asks for {})",
            v.trusted_operators, policy.quorum
        )
    }
}

fn print_verdict(v: &Verdict, policy: &Policy) {
    let nodes = |list: &[String]| list.iter().map(|n| short(n)).collect::<Vec<_>>().join(", ");
    match v.verdict {
        Kind::Reproducible => println!(
            "verdict: reproducible ({} of {} results agree on manifest root {}; {})",
            v.majority.len(),
            v.compared,
            v.root.clone().unwrap_or_default(),
            operators(v, policy)
        ),
        Kind::Unconfirmed => {
            println!(
                "verdict: unconfirmed ({} of {} results agree, from {})",
                v.majority.len(),
                v.compared,
                operators(v, policy)
            );
            if v.agreeing_operators < 2 {
                println!("  one operator's agreement with itself proves nothing");
            } else {
                println!(
                    "  not reproducible for this verifier: too few of the builders it trusts agree"
                );
            }
        }
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
                    "  majority: {} ({})",
                    nodes(&v.majority),
                    operators(v, policy)
                );
            }
            println!("  minority: {}", nodes(&v.minority));
            for f in &v.files {
                println!("  file {}", printable(&f.path));
                for (what, who) in &f.variants {
                    println!("    {:<80} {}", printable(what), nodes(who));
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
        other => println!("verdict: {}", other.word()),
    }
}

pub fn run(args: VerifyArgs, dirs: &Dirs) -> Result<ExitCode> {
    let policy = policy(dirs, args.policy.as_deref())?;
    let api = ApiClient::from_data_dir(&dirs.data)?;
    let d = api.job(&args.job)?;
    Ok(ExitCode::from(report(&d, args.json, &policy)?))
}
