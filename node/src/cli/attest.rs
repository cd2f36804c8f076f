//! `barn attest export|verify`: a job's results and verdict as in-toto attestations in
//! DSSE envelopes, and the check of such a file. The formats, and why the exporting node
//! signs them, are in [`crate::verify::attest`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use barn_protocol::message::BuildResult;
use barn_protocol::text::printable;
use barn_protocol::{NodeId, Signed};
use clap::Subcommand;

use super::exit;
use crate::api::client::ApiClient;
use crate::dirs::Dirs;
use crate::verify::attest;

#[derive(Debug, Subcommand)]
pub enum AttestCommand {
    /// Write a job's results as SLSA provenance and its verdict as a SLSA verification
    /// summary, each an in-toto statement in a DSSE envelope signed with this node's key.
    Export {
        /// The job: a full `b3:` id or a unique hex prefix.
        #[arg(value_name = "JOB")]
        job: String,
        /// Only this node's result: its peer id or a unique suffix of it.
        #[arg(long, value_name = "N")]
        node: Option<String>,
        /// Where to write (default: barn-attest-<12 hex of the job id>.json).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check every envelope of FILE: signatures, embedded signed results, subjects and the
    /// recomputed verdict. Exits 0 only when everything verifies.
    Verify {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also require every envelope to be signed by this peer id.
        #[arg(long, value_name = "PEER")]
        signer: Option<String>,
    },
}

pub fn run(cmd: AttestCommand, dirs: &Dirs) -> Result<ExitCode> {
    match cmd {
        AttestCommand::Export { job, node, out } => export(&job, node.as_deref(), out, dirs),
        AttestCommand::Verify { file, signer } => verify(&file, signer.as_deref()),
    }
}

fn export(id: &str, node: Option<&str>, out: Option<PathBuf>, dirs: &Dirs) -> Result<ExitCode> {
    let detail = ApiClient::from_data_dir(&dirs.data)?.job(id)?;
    // Only the results that count are exported: those the settlement names (or, before
    // it, the coordinator's finished leases), each verified here.
    let count = super::verify::count(&detail)?;
    let job = count.job.clone();
    let job_id = count.id;
    let results: Vec<Signed<BuildResult>> =
        count.counted.iter().map(|c| c.result.clone()).collect();
    if results.is_empty() {
        bail!(
            "job {} has no result that counts yet{}",
            job_id.short(),
            if count.is_settled() {
                ""
            } else {
                " (it is not settled)"
            }
        );
    }
    let selected: Vec<&Signed<BuildResult>> = match node {
        None => results.iter().collect(),
        Some(n) => {
            let chosen = pick_node(&results, n)?;
            results
                .iter()
                .filter(|r| r.message().node == chosen)
                .collect()
        }
    };
    let key_path = dirs.node_key();
    let key = crate::keys::load(&key_path).with_context(|| {
        format!(
            "attestations are signed with the node key {}",
            key_path.display()
        )
    })?;
    let mut envelopes = Vec::with_capacity(selected.len() + 1);
    let mut by_builder = 0;
    for r in &selected {
        // The builder's own signature when it sent one (with its commitment); else this
        // node signs the provenance, the builder's signed result embedded in it.
        let node = r.message().node.to_string();
        let builder_sig = detail
            .results
            .iter()
            .find(|v| v.node == node)
            .and_then(|v| v.provenance_sig.as_deref())
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok());
        let envelope =
            match builder_sig.and_then(|sig| attest::builder_envelope(&job, r, &sig).ok()) {
                Some(env) => {
                    by_builder += 1;
                    env
                }
                None => attest::export_result(&job, r, &key)
                    .with_context(|| format!("failed to export the result of {node}"))?,
            };
        envelopes.push(envelope);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    envelopes.push(attest::export_summary(
        &job,
        &results,
        count.settlement.as_ref(),
        &key,
        now,
    )?);
    let bytes = attest::to_file(&envelopes)?;
    // Check what is about to be written the way a recipient will.
    let report = attest::verify_file(&bytes).context("the export does not verify")?;
    let path = out.unwrap_or_else(|| PathBuf::from(format!("barn-attest-{}.json", job_id.short())));
    std::fs::write(&path, &bytes).with_context(|| format!("failed to write {}", path.display()))?;
    for c in &report.checked {
        eprintln!("  {}", printable(&c.to_string()));
    }
    eprintln!(
        "wrote {}: {} provenance statement(s) ({by_builder} signed by the node that built, the rest by {}) and a verification summary signed by {}",
        path.display(),
        selected.len(),
        key.node_id(),
        key.node_id()
    );
    Ok(ExitCode::SUCCESS)
}

/// The node named by a full peer id or a unique suffix, among those with results.
fn pick_node(results: &[Signed<BuildResult>], wanted: &str) -> Result<NodeId> {
    let mut nodes: Vec<NodeId> = results.iter().map(|r| r.message().node).collect();
    nodes.sort();
    nodes.dedup();
    if let Some(n) = nodes.iter().find(|n| n.to_string() == wanted) {
        return Ok(*n);
    }
    let matches: Vec<NodeId> = nodes
        .iter()
        .filter(|n| !wanted.is_empty() && n.to_string().ends_with(wanted))
        .copied()
        .collect();
    match matches.as_slice() {
        [one] => Ok(*one),
        [] => {
            let list: Vec<String> = nodes.iter().map(NodeId::to_string).collect();
            bail!(
                "no result from a node {wanted:?}; nodes with results: {}",
                if list.is_empty() {
                    "none".into()
                } else {
                    list.join(", ")
                }
            )
        }
        _ => bail!("{wanted:?} matches several nodes; give more of the peer id"),
    }
}

fn verify(path: &Path, signer: Option<&str>) -> Result<ExitCode> {
    let signer: Option<NodeId> = signer
        .map(|s| s.parse().with_context(|| format!("{s:?} is not a peer id")))
        .transpose()?;
    let bytes = read_bounded(path)?;
    let entries = attest::verify_entries(&bytes)
        .with_context(|| format!("{} is not an attestation file", path.display()))?;
    let mut failed = 0usize;
    for (i, entry) in entries.into_iter().enumerate() {
        let n = i + 1;
        match entry {
            Ok(c) => match signer {
                Some(want) if !c.signers().contains(&want) => {
                    failed += 1;
                    let c = c.to_string();
                    println!("FAIL  {n}: not signed by {want} ({})", printable(&c));
                }
                _ => println!("ok    {n}: {}", printable(&c.to_string())),
            },
            Err(e) => {
                failed += 1;
                let e = format!("{:#}", anyhow::Error::new(e));
                println!("FAIL  {n}: {}", printable(&e));
            }
        }
    }
    if failed > 0 {
        eprintln!(
            "{failed} envelope(s) of {} failed verification",
            path.display()
        );
        return Ok(ExitCode::from(exit::FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads at most [`attest::MAX_FILE`] bytes, refusing anything longer.
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(attest::MAX_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("failed to read {}", path.display()))?;
    if bytes.len() > attest::MAX_FILE {
        bail!(
            "{} is larger than {} MiB: not a barn attestation file",
            path.display(),
            attest::MAX_FILE >> 20
        );
    }
    Ok(bytes)
}
