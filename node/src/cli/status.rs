//! `barn status`: the running node at a glance: who it is, where peers reach it (and
//! whether through a relay), its peers and slots, and whether it takes work.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::api::client::ApiClient;
use crate::dirs::Dirs;
use crate::view::StatusView;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: StatusArgs, dirs: &Dirs) -> Result<ExitCode> {
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let status = client.status()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(ExitCode::SUCCESS)
}

/// What each reachability word means to the owner.
fn explain(reachability: &str) -> &'static str {
    match reachability {
        "public" => "public: peers dial this node directly",
        "relayed" => {
            "relayed: behind NAT, reached through a relay; hole punching makes direct connections where the NATs allow"
        }
        _ => {
            "unknown: no address confirmed and no relay slot held (behind NAT, a node needs a peer that runs a relay: see the volunteer guide)"
        }
    }
}

fn render(s: &StatusView) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14}{v}\n"));
    line("node", s.node.clone());
    line("version", s.version.clone());
    line("reachability", explain(&s.reachability).to_string());
    for (i, a) in s.listen.iter().enumerate() {
        line(if i == 0 { "addresses" } else { "" }, a.clone());
    }
    line("peers", s.peers.to_string());
    line(
        "hole punches",
        format!("{} made, {} failed", s.holes_punched, s.holes_failed),
    );
    line("slots", format!("{} free of {}", s.free_slots, s.slots));
    line("accel", s.accel.clone());
    let work = if s.unavailable.is_empty() {
        "yes".to_string()
    } else {
        format!("no ({})", s.unavailable.join(", "))
    };
    line("takes work", work);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_says_how_peers_reach_the_node() {
        let s = StatusView {
            node: "12D3KooWx".into(),
            version: "0.1.0".into(),
            listen: vec![
                "/ip4/10.1.0.2/tcp/7400".into(),
                "/ip4/198.18.0.2/tcp/7400/p2p/12D3KooWr/p2p-circuit".into(),
            ],
            peers: 3,
            slots: 2,
            free_slots: 1,
            accel: "tcg".into(),
            images: Default::default(),
            paused: true,
            unavailable: vec!["paused".into()],
            store_errors: 0,
            rejected: vec![],
            reachability: "relayed".into(),
            holes_punched: 2,
            holes_failed: 1,
        };
        let text = render(&s);
        assert!(text.contains("reachability  relayed: behind NAT"), "{text}");
        assert!(
            text.contains("              /ip4/198.18.0.2/tcp/7400/p2p/12D3KooWr/p2p-circuit\n"),
            "{text}"
        );
        assert!(text.contains("hole punches  2 made, 1 failed"), "{text}");
        assert!(text.contains("takes work    no (paused)"), "{text}");
    }
}
