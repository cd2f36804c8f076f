//! `barn jobs` and `barn job ID`: the jobs a running node knows and one job's replicas,
//! from its local API. `barn job check` (a job file, no node) lives in [`super::job`];
//! [`JobArgs`] routes between the two forms.

use std::process::ExitCode;

use anyhow::Result;
use barn_protocol::jobfile::show_size;
use clap::Args;

use super::job::JobCommand;
use super::view::{ago, now, short_hash, short_job, short_node, table};
use crate::api::client::ApiClient;
use crate::api::types::{JobDetail, JobView};
use crate::dirs::Dirs;

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Print the jobs as JSON.
    #[arg(long)]
    json: bool,
}

/// `barn job ID` or `barn job check …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct JobArgs {
    #[command(subcommand)]
    cmd: Option<JobCommand>,
    /// Show this job from the running node: a full `b3:` id or a unique hex prefix.
    #[arg(value_name = "ID")]
    id: Option<String>,
    /// Print the job, its leases and its results (with their signed envelopes) as JSON.
    #[arg(long, requires = "id")]
    json: bool,
}

pub fn run(args: JobsArgs, dirs: &Dirs) -> Result<ExitCode> {
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let mut jobs = client.jobs()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("no jobs known to this node");
        return Ok(ExitCode::SUCCESS);
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.created));
    print!("{}", jobs_table(&jobs, now()));
    Ok(ExitCode::SUCCESS)
}

/// Dispatches `barn job`'s two forms.
pub fn run_job(args: JobArgs, dirs: &Dirs) -> Result<ExitCode> {
    match (args.cmd, args.id) {
        (Some(cmd), _) => super::job::run(cmd),
        (None, Some(id)) => show(&id, args.json, dirs),
        // clap's arg_required_else_help answers a bare `barn job` before this.
        (None, None) => anyhow::bail!("name a job id, or use `barn job check`"),
    }
}

fn show(id: &str, json: bool, dirs: &Dirs) -> Result<ExitCode> {
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let detail = client.job(id)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&detail)?);
    } else {
        print!("{}", job_text(&detail, now()));
    }
    Ok(ExitCode::SUCCESS)
}

fn jobs_table(jobs: &[JobView], now: u64) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                short_job(&j.id),
                j.image.clone(),
                j.arch.clone(),
                j.state.clone(),
                format!("{}/{}", j.succeeded, j.replicas),
                ago(j.created, now),
                if j.mine { "yes".into() } else { String::new() },
            ]
        })
        .collect();
    table(
        &["ID", "IMAGE", "ARCH", "STATE", "RESULTS", "AGE", "MINE"],
        &rows,
    )
}

fn job_text(d: &JobDetail, now: u64) -> String {
    let j = &d.job;
    let mut out = String::new();
    let mut field = |name: &str, value: String| out.push_str(&super::view::field(name, &value));
    field("id", j.id.clone());
    field("image", j.image.clone());
    field("arch", j.arch.clone());
    field("state", j.state.clone());
    field(
        "replicas",
        format!(
            "{} wanted, {} results, {} succeeded",
            j.replicas, j.results, j.succeeded
        ),
    );
    field("created", ago(j.created, now));
    field(
        "coordinator",
        if j.mine {
            "this node".into()
        } else {
            "another node".into()
        },
    );
    field("submitter", j.submitter.clone());
    if let Some(w) = &j.waiting {
        field("waiting", w.clone());
    }
    field(
        "settled",
        match &j.verdict {
            Some(v) => format!("yes, {v} (only the results the settlement names count)"),
            None => "not yet".into(),
        },
    );
    field("verdict", verdict(d));

    out.push_str("\nRESULTS\n");
    if d.results.is_empty() {
        out.push_str("none yet\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .results
            .iter()
            .map(|r| {
                let status = match &r.detail {
                    Some(detail) => format!("{} ({detail})", r.status),
                    None => r.status.clone(),
                };
                vec![
                    short_node(&r.node),
                    status,
                    short_hash(&r.manifest_root),
                    show_size(r.log_size),
                    format!("{}/{}/{}", r.boot_ms, r.run_ms, r.total_ms),
                    r.accel.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "NODE",
                "STATUS",
                "MANIFEST ROOT",
                "LOG",
                "BOOT/RUN/TOTAL MS",
                "ACCEL",
            ],
            &rows,
        ));
    }

    out.push_str("\nLEASES\n");
    if d.leases.is_empty() {
        out.push_str("none\n");
    } else {
        let rows: Vec<Vec<String>> = d
            .leases
            .iter()
            .map(|l| {
                let expires = if l.expires >= now {
                    format!("in {}s", l.expires - now)
                } else {
                    ago(l.expires, now)
                };
                vec![
                    short_node(&l.node),
                    l.state.clone(),
                    ago(l.granted, now),
                    expires,
                ]
            })
            .collect();
        out.push_str(&table(&["NODE", "STATE", "GRANTED", "EXPIRES"], &rows));
    }
    out
}

/// Whether the succeeded replicas agree on one manifest root.
fn verdict(d: &JobDetail) -> String {
    let mut roots: Vec<(&str, usize)> = Vec::new();
    for r in d.results.iter().filter(|r| r.status == "succeeded") {
        match roots.iter_mut().find(|(root, _)| *root == r.manifest_root) {
            Some((_, n)) => *n += 1,
            None => roots.push((&r.manifest_root, 1)),
        }
    }
    match roots.as_slice() {
        [] => "no succeeded result yet".into(),
        [(root, 1)] => format!("1 succeeded result, {}", short_hash(root)),
        [(root, n)] => format!("{n} succeeded results agree on {}", short_hash(root)),
        many => {
            let parts: Vec<String> = many
                .iter()
                .map(|(root, n)| format!("{n}× {}", short_hash(root)))
                .collect();
            format!("succeeded results differ: {}", parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{LeaseView, ResultView};

    fn result(node: &str, status: &str, root: &str) -> ResultView {
        ResultView {
            late: false,
            node: node.into(),
            status: status.into(),
            detail: (status == "failed").then(|| "task build exited 2".into()),
            manifest_root: format!("b3:{}", root.repeat(64 / root.len())),
            log_hash: format!("b3:{}", "0".repeat(64)),
            log_size: 2048,
            total_ms: 900,
            boot_ms: 300,
            run_ms: 500,
            accel: "kvm".into(),
            image_hash: format!("b3:{}", "1".repeat(64)),
            envelope: String::new(),
            provenance_sig: None,
            received: 0,
        }
    }

    fn detail(results: Vec<ResultView>) -> JobDetail {
        JobDetail {
            settlement: None,
            submitted_ms: None,
            job: JobView {
                waiting: None,
                verdict: None,
                id: format!("b3:{}", "ab".repeat(32)),
                image: "tiny-x86_64".into(),
                arch: "x86_64".into(),
                replicas: 3,
                state: "running".into(),
                results: results.len(),
                succeeded: results.iter().filter(|r| r.status == "succeeded").count(),
                created: 940,
                mine: true,
                submitter: "ed25519:00".into(),
            },
            envelope: String::new(),
            leases: vec![LeaseView {
                granted_ms: None,
                node: "12D3KooWlease123".into(),
                state: "active".into(),
                granted: 950,
                expires: 1060,
            }],
            results,
        }
    }

    #[test]
    fn job_shows_replicas_and_leases() {
        let d = detail(vec![
            result("12D3KooWnodeAAAA", "succeeded", "aa"),
            result("12D3KooWnodeBBBB", "failed", "bb"),
        ]);
        let text = job_text(&d, 1000);
        assert!(text.contains("created     1m ago"), "{text}");
        assert!(text.contains("coordinator this node"), "{text}");
        assert!(text.contains("nodeAAAA  succeeded"), "{text}");
        assert!(text.contains("failed (task build exited 2)"), "{text}");
        assert!(text.contains("b3:aaaaaaaaaaaa"), "{text}");
        assert!(text.contains("2KiB"), "{text}");
        assert!(text.contains("300/500/900"), "{text}");
        assert!(text.contains("lease123  active  50s ago  in 60s"), "{text}");
        assert!(text.contains("1 succeeded result, b3:aaaa"), "{text}");
    }

    #[test]
    fn verdict_names_disagreement() {
        let d = detail(vec![
            result("a", "succeeded", "aa"),
            result("b", "succeeded", "aa"),
            result("c", "succeeded", "cc"),
        ]);
        assert_eq!(
            verdict(&d),
            "succeeded results differ: 2× b3:aaaaaaaaaaaa, 1× b3:cccccccccccc"
        );
    }

    #[test]
    fn jobs_table_has_short_ids() {
        let d = detail(vec![result("a", "succeeded", "aa")]);
        let t = jobs_table(&[d.job], 1000);
        assert!(t.starts_with("ID "), "{t}");
        let row: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "abababababab",
                "tiny-x86_64",
                "x86_64",
                "running",
                "1/3",
                "1m",
                "ago",
                "yes"
            ]
        );
    }
}
