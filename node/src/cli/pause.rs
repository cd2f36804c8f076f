//! `barn pause` and `barn resume`: the owner stops and restarts the running node's taking
//! of new jobs, through its local API. The node keeps the paused state across restarts.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::view::short_job;
use crate::api::client::ApiClient;
use crate::api::types::PauseView;
use crate::dirs::Dirs;

#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Also stop the jobs running now: their VMs are cancelled and their replicas handed
    /// back to the coordinators, which give them to other volunteers. Without it, a running
    /// job finishes and reports its result.
    #[arg(long)]
    stop: bool,
    /// Print the node's answer as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// Print the node's answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_pause(args: PauseArgs, dirs: &Dirs) -> Result<ExitCode> {
    let view = ApiClient::from_data_dir(&dirs.data)?.pause(args.stop)?;
    print_view(&view, args.json)
}

pub fn run_resume(args: ResumeArgs, dirs: &Dirs) -> Result<ExitCode> {
    let view = ApiClient::from_data_dir(&dirs.data)?.resume()?;
    print_view(&view, args.json)
}

fn print_view(view: &PauseView, json: bool) -> Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else {
        print!("{}", describe(view));
    }
    Ok(ExitCode::SUCCESS)
}

/// What the owner reads after `barn pause` or `barn resume`.
fn describe(v: &PauseView) -> String {
    let mut out = String::new();
    if v.paused {
        out.push_str(
            "paused: this node takes no new jobs until `barn resume` (also after a restart)\n",
        );
        for job in &v.stopped {
            out.push_str(&format!(
                "stopped {}: its replica goes back to its coordinator for another volunteer\n",
                short_job(job)
            ));
        }
        for job in &v.running {
            out.push_str(&format!(
                "{} is still running and will finish (`barn pause --stop` stops it now)\n",
                short_job(job)
            ));
        }
    } else if v.unavailable.is_empty() {
        out.push_str("resumed: this node takes jobs again\n");
    } else {
        out.push_str(&format!(
            "resumed, but this node takes no new jobs yet: {}\n",
            v.unavailable.join(", ").replace('_', " ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(paused: bool, stopped: &[&str], running: &[&str], why: &[&str]) -> PauseView {
        let ids = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        PauseView {
            paused,
            stopped: ids(stopped),
            running: ids(running),
            unavailable: ids(why),
        }
    }

    #[test]
    fn the_owner_is_told_what_happens_to_the_running_job() {
        let job = format!("b3:{}", "ab".repeat(32));
        let t = describe(&view(true, &[], &[&job], &["paused"]));
        assert!(t.starts_with("paused: this node takes no new jobs"), "{t}");
        assert!(
            t.contains("abababababab is still running and will finish"),
            "{t}"
        );
        let t = describe(&view(true, &[&job], &[], &["paused"]));
        assert!(
            t.contains("stopped abababababab: its replica goes back"),
            "{t}"
        );
        assert_eq!(
            describe(&view(false, &[], &[], &[])),
            "resumed: this node takes jobs again\n"
        );
        assert_eq!(
            describe(&view(false, &[], &[], &["outside_schedule"])),
            "resumed, but this node takes no new jobs yet: outside schedule\n"
        );
    }
}
