//! `barn nodes`: the nodes a running node knows, from its local API.

use std::process::ExitCode;

use anyhow::Result;
use barn_protocol::jobfile::show_size;
use clap::Args;

use super::view::{ago, now, short_node, table};
use crate::api::client::ApiClient;
use crate::api::types::NodeView;
use crate::dirs::Dirs;

#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Print the nodes as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: NodesArgs, dirs: &Dirs) -> Result<ExitCode> {
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let mut nodes = client.nodes()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(ExitCode::SUCCESS);
    }
    // This node first, then the most recently heard from.
    nodes.sort_by(|a, b| {
        b.is_self
            .cmp(&a.is_self)
            .then(b.last_seen.cmp(&a.last_seen))
    });
    print!("{}", nodes_table(&nodes, now()));
    Ok(ExitCode::SUCCESS)
}

fn nodes_table(nodes: &[NodeView], now: u64) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mark = if n.is_self {
                "*"
            } else if n.connected {
                ""
            } else {
                " (offline)"
            };
            vec![
                format!("{}{mark}", short_node(&n.node)),
                n.archs.join(","),
                n.cpus.to_string(),
                show_size(n.memory_bytes),
                format!("{}/{}", n.free_slots, n.total_slots),
                taking_work(&n.unavailable),
                n.images.keys().cloned().collect::<Vec<_>>().join(","),
                format!("{}/{}", n.agreements, n.disagreements),
                if n.is_self {
                    "now".into()
                } else {
                    ago(n.last_seen, now)
                },
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "ARCHS",
            "CPUS",
            "MEMORY",
            "SLOTS",
            "WORK",
            "IMAGES",
            "REPUTATION",
            "LAST SEEN",
        ],
        &rows,
    )
}

/// The WORK column: `yes`, or why the node's advert says it takes no new job.
fn taking_work(unavailable: &[String]) -> String {
    if unavailable.is_empty() {
        "yes".into()
    } else {
        unavailable.join(",").replace('_', " ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_is_marked_and_ages_shown() {
        let node = |id: &str, is_self: bool| NodeView {
            node: id.into(),
            is_self,
            connected: true,
            version: "0.1.0".into(),
            archs: vec!["x86_64 (kvm)".into()],
            cpus: 8,
            memory_bytes: 16 << 30,
            free_slots: 1,
            total_slots: 2,
            images: [("tiny-x86_64".to_string(), "b3:00".to_string())].into(),
            addrs: vec![],
            last_seen: 988,
            agreements: 4,
            disagreements: 1,
            unavailable: vec![],
        };
        let mut other = node("12D3KooWotherone", false);
        other.unavailable = vec!["paused".into(), "outside_schedule".into()];
        let t = nodes_table(&[node("12D3KooWselfself", true), other], 1000);
        let lines: Vec<_> = t.lines().collect();
        assert!(lines[0].starts_with("NODE"));
        assert!(lines[1].starts_with("selfself*"), "{t}");
        assert!(
            lines[1].contains("16GiB") && lines[1].contains("1/2"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("otherone") && lines[2].ends_with("12s ago"),
            "{t}"
        );
        assert!(lines[2].contains("4/1"), "{t}");
        assert!(lines[0].contains("WORK"), "{t}");
        assert!(lines[1].contains(" yes "), "{t}");
        assert!(lines[2].contains(" paused,outside schedule "), "{t}");
    }
}
