//! `barn key new|show`: the project key that signs jobs, and the node key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use barn_protocol::SecretKey;
use clap::Subcommand;

use crate::dirs::{Dirs, write_private_new};
use crate::keys;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new key. By default the project key that signs your jobs.
    New {
        /// Make the node's identity key instead (its libp2p peer id).
        #[arg(long)]
        node: bool,
        /// Write the key to FILE instead of the default place.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public half of a key: `ed25519:<hex>` for a project key (what volunteers
    /// list in `trust.submitters`), the peer id for a node key.
    Show {
        /// Show the node key's peer id instead of the project key.
        #[arg(long)]
        node: bool,
        /// Read the key from FILE.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
}

pub fn run(cmd: KeyCommand, dirs: &Dirs) -> Result<ExitCode> {
    match cmd {
        KeyCommand::New { node, out } => {
            let path = out.unwrap_or_else(|| {
                if node {
                    dirs.node_key()
                } else {
                    dirs.project_key()
                }
            });
            if path.exists() {
                bail!(
                    "{} already exists; remove it first if you really want a new key",
                    path.display()
                );
            }
            let key = SecretKey::generate();
            write_private_new(&path, &key.to_file_text())?;
            eprintln!("wrote {}", path.display());
            print_public(&key, node);
        }
        KeyCommand::Show { node, key } => {
            let path = key.unwrap_or_else(|| {
                if node {
                    dirs.node_key()
                } else {
                    dirs.project_key()
                }
            });
            if !path.exists() {
                bail!(
                    "no key at {}; make one with `barn key new{}`",
                    path.display(),
                    if node { " --node" } else { "" }
                );
            }
            print_public(&keys::load(&path)?, node);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_public(key: &SecretKey, node: bool) {
    if node {
        println!("{}", key.node_id());
    } else {
        println!("{}", key.submitter_id());
    }
}
