//! `barn key new|show|certify`: the project key that signs jobs, the node key, and an
//! operator key that certifies node keys.
//!
//! An operator key stands for the person behind several nodes: `barn key certify` signs an
//! operator certificate for a node key, the node sends it with every claim, and
//! coordinators and verifiers then count all of that person's nodes as one operator (see
//! `docs/protocol.md`, "Operator certificates").

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use barn_protocol::operator::OperatorCert;
use barn_protocol::{NodeId, OperatorId, SecretKey, Signed};
use clap::Subcommand;

use crate::dirs::{Dirs, write_private_bytes_new, write_private_new};
use crate::keys;

/// The longest a certificate may be made for: ten years.
const MAX_DAYS: u64 = 3650;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Make a new key. By default the project key that signs your jobs.
    New {
        /// Make the node's identity key instead (its libp2p peer id).
        #[arg(long, conflicts_with = "operator")]
        node: bool,
        /// Make an operator key instead: it certifies your node keys (`barn key certify`)
        /// so that all your nodes count as one builder.
        #[arg(long)]
        operator: bool,
        /// Write the key to FILE instead of the default place.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print the public half of a key: `ed25519:<hex>` for a project key (what volunteers
    /// list in `trust.submitters`), the peer id for a node key, `operator:<hex>` for an
    /// operator key (what verifiers list in `trust.builders`).
    Show {
        /// Show the node key's peer id instead of the project key.
        #[arg(long, conflicts_with = "operator")]
        node: bool,
        /// Show the operator key's id instead of the project key.
        #[arg(long)]
        operator: bool,
        /// Read the key from FILE.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Sign an operator certificate for a node key with the operator key, and write it
    /// where the node sends it from with its claims.
    Certify {
        /// The operator key (default: the config dir's operator.key).
        #[arg(long, value_name = "FILE")]
        operator_key: Option<PathBuf>,
        /// The node key to certify (default: the data dir's node.key).
        #[arg(long, value_name = "FILE", conflicts_with = "node")]
        node_key: Option<PathBuf>,
        /// Certify the node with this peer id instead (a node on another machine; copy the
        /// certificate to its data dir as operator.cert).
        #[arg(long, value_name = "PEER")]
        node: Option<String>,
        /// How long the certificate is valid, in days (at most 3650).
        #[arg(long, value_name = "N", default_value_t = 365)]
        days: u64,
        /// Where to write it (default: the data dir's operator.cert).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Replace an existing certificate.
        #[arg(long)]
        force: bool,
    },
}

/// Which key a command is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Project,
    Node,
    Operator,
}

impl Which {
    fn of(node: bool, operator: bool) -> Self {
        match (node, operator) {
            (true, _) => Which::Node,
            (_, true) => Which::Operator,
            _ => Which::Project,
        }
    }

    fn default_path(self, dirs: &Dirs) -> PathBuf {
        match self {
            Which::Project => dirs.project_key(),
            Which::Node => dirs.node_key(),
            Which::Operator => dirs.operator_key(),
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Which::Project => "",
            Which::Node => " --node",
            Which::Operator => " --operator",
        }
    }

    fn public(self, key: &SecretKey) -> String {
        match self {
            Which::Project => key.submitter_id().to_string(),
            Which::Node => key.node_id().to_string(),
            Which::Operator => OperatorId(key.public()).to_string(),
        }
    }
}

pub fn run(cmd: KeyCommand, dirs: &Dirs) -> Result<ExitCode> {
    match cmd {
        KeyCommand::New {
            node,
            operator,
            out,
        } => {
            let which = Which::of(node, operator);
            let path = out.unwrap_or_else(|| which.default_path(dirs));
            if path.exists() {
                bail!(
                    "{} already exists; remove it first if you really want a new key",
                    path.display()
                );
            }
            let key = SecretKey::generate();
            write_private_new(&path, &key.to_file_text())?;
            eprintln!("wrote {}", path.display());
            println!("{}", which.public(&key));
        }
        KeyCommand::Show {
            node,
            operator,
            key,
        } => {
            let which = Which::of(node, operator);
            let path = key.unwrap_or_else(|| which.default_path(dirs));
            println!("{}", which.public(&load_existing(&path, which)?));
        }
        KeyCommand::Certify {
            operator_key,
            node_key,
            node,
            days,
            out,
            force,
        } => {
            let operator = load_existing(
                &operator_key.unwrap_or_else(|| dirs.operator_key()),
                Which::Operator,
            )?;
            let node = match node {
                Some(peer) => peer
                    .trim()
                    .parse::<NodeId>()
                    .with_context(|| format!("--node {peer:?} is not a peer id"))?,
                None => load_existing(&node_key.unwrap_or_else(|| dirs.node_key()), Which::Node)?
                    .node_id(),
            };
            let path = out.unwrap_or_else(|| dirs.operator_cert());
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .context("the system clock is before 1970")?
                .as_secs();
            let cert = certify(&operator, node, now, days)?;
            write_cert(&path, &cert, force)?;
            // Read back the way the node will at its start.
            keys::load_operator_cert(&path, &node, now)?
                .with_context(|| format!("{} vanished after writing", path.display()))?;
            eprintln!(
                "wrote {}: {} certifies node {node} for {days} day{}",
                path.display(),
                OperatorId(operator.public()),
                if days == 1 { "" } else { "s" }
            );
            println!("{}", OperatorId(operator.public()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads a key that must exist, saying how to make it when it does not.
fn load_existing(path: &Path, which: Which) -> Result<SecretKey> {
    if !path.exists() {
        let hint = if which == Which::Node {
            " (`barn node` also makes one at its first start)"
        } else {
            ""
        };
        bail!(
            "no key at {}; make one with `barn key new{}`{hint}",
            path.display(),
            which.flag()
        );
    }
    Ok(keys::load(path)?)
}

/// The signed certificate by which `operator` vouches that `node` is one of its machines,
/// from `now` for `days` days.
fn certify(operator: &SecretKey, node: NodeId, now: u64, days: u64) -> Result<Vec<u8>> {
    if !(1..=MAX_DAYS).contains(&days) {
        bail!("--days {days}: a certificate lasts from 1 to {MAX_DAYS} days");
    }
    let cert = OperatorCert {
        operator: OperatorId(operator.public()),
        node,
        issued: now,
        expires: now + days * 86_400,
    };
    let bytes = Signed::sign(cert, operator).to_bytes();
    // As a coordinator will check it.
    OperatorCert::check(&bytes, &node, now).context("the new certificate does not check")?;
    Ok(bytes)
}

/// Writes a certificate file readable only by its owner; replaces one only when `force`.
fn write_cert(path: &Path, cert: &[u8], force: bool) -> Result<()> {
    if path.exists() {
        if !force {
            bail!(
                "{} already exists; pass --force to replace it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("failed to remove {}", path.display()))?;
    }
    write_private_bytes_new(path, cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_names_the_node_the_operator_and_its_days() {
        let op = SecretKey::from_seed([1; 32]);
        let node = SecretKey::from_seed([2; 32]).node_id();
        let bytes = certify(&op, node, 1_000, 30).unwrap();
        let signed = Signed::<OperatorCert>::from_bytes(&bytes).unwrap();
        assert_eq!(signed.signer(), op.public());
        let c = signed.message();
        assert_eq!(
            (c.node, c.issued, c.expires),
            (node, 1_000, 1_000 + 30 * 86_400)
        );
        assert_eq!(
            OperatorCert::check(&bytes, &node, 1_000 + 30 * 86_400),
            Err(barn_protocol::operator::CertError::Expired {
                expires: 1_000 + 30 * 86_400,
                now: 1_000 + 30 * 86_400
            })
        );
        for days in [0, MAX_DAYS + 1] {
            let e = certify(&op, node, 1_000, days).unwrap_err().to_string();
            assert!(e.contains("from 1 to 3650 days"), "{e}");
        }
    }

    #[test]
    fn a_certificate_file_is_private_and_replaced_only_when_forced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/operator.cert");
        let op = SecretKey::from_seed([1; 32]);
        let node = SecretKey::from_seed([2; 32]).node_id();
        let first = certify(&op, node, 1_000, 1).unwrap();
        write_cert(&path, &first, false).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = certify(&op, node, 2_000, 1).unwrap();
        let e = write_cert(&path, &second, false).unwrap_err().to_string();
        assert!(e.contains("already exists; pass --force"), "{e}");
        let loaded = keys::load_operator_cert(&path, &node, 1_500)
            .unwrap()
            .unwrap();
        assert_eq!(loaded.0, first);
        write_cert(&path, &second, true).unwrap();
        let loaded = keys::load_operator_cert(&path, &node, 2_500)
            .unwrap()
            .unwrap();
        assert_eq!(loaded, (second, OperatorId(op.public())));
    }
}
