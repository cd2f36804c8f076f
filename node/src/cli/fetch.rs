//! `barn log JOB --node N` and `barn fetch JOB`: one replica's log or artifacts, pulled
//! through the running node's store.
//!
//! Nothing the daemon says is taken on trust here: the replica's signed `build-result`
//! envelope is verified (signature, signer = the node, job, manifest root), `barn fetch`
//! takes only a result that counts ([`crate::verify::settled`]: named in the coordinator's
//! settlement, or before it one of the coordinator's finished leases), and every byte
//! written comes from that signed manifest and is checked against its hash. The
//! manifest is treated as hostile when written out: paths are re-normalized, the output
//! folder must be new or empty, nothing is written through a link, links are made last
//! and may not point outside, even when followed through each other
//! ([`barn_protocol::links::check_links`]).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use barn_protocol::ContentHash;
use barn_protocol::JobId;
use barn_protocol::jobfile::show_size;
use barn_protocol::manifest::{self, Entry, EntryKind};
use barn_protocol::message::BuildStatus;
use barn_protocol::text::{printable, printable_bytes};
use clap::Args;
use serde::Serialize;

use super::view::{short_hash, short_job, short_node};
use crate::api::client::ApiClient;
use crate::api::types::{JobDetail, ResultView};
use crate::dirs::Dirs;
use crate::verify::results;
use crate::verify::settled::{self, Count, Counted};

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The job: a full `b3:` id or a unique hex prefix.
    job: String,
    /// The node whose log to print: a peer id or a unique part of one (tables show the
    /// last 8 characters).
    #[arg(long, short)]
    node: String,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The job: a full `b3:` id or a unique hex prefix.
    job: String,
    /// The node whose artifacts to fetch (default: the first succeeded result that counts).
    /// Only results that count are fetched: `barn verify` lists them.
    #[arg(long, short)]
    node: Option<String>,
    /// Where to write them; must be new or empty (default: ./barn-fetch-<job>).
    #[arg(long, short, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print what was written as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_log(args: LogArgs, dirs: &Dirs) -> Result<ExitCode> {
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let detail = client.job(&args.job)?;
    let view = pick_result(&detail, &args.node)?;
    // Any verified result's log may be read, counted or not: a log is evidence, not a vote.
    let job = results::check_job(&detail)?;
    let (signed, _) = results::check_view(&JobId::of(&job), view)?;
    let result = signed.message();
    let blob = client.fetch(&result.log_hash.to_string(), Some(&view.node))?;
    let path = Path::new(&blob.path);
    let (hash, _) = ContentHash::of_reader(open(path)?)
        .with_context(|| format!("failed to read {}", path.display()))?;
    if hash != result.log_hash {
        bail!(
            "the log in {} does not match the signed log hash {}",
            path.display(),
            result.log_hash
        );
    }
    let mut stdout = io::stdout().lock();
    // To a pipe or a file the log goes byte for byte (its hash must match); to a terminal
    // the guest's control characters are escaped so they cannot drive it.
    let copied = if stdout.is_terminal() {
        copy_printable(io::BufReader::new(open(path)?), &mut stdout)
    } else {
        io::copy(&mut open(path)?, &mut stdout).map(drop)
    };
    match copied.and_then(|()| stdout.flush()) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // `barn log … | head` is fine.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("failed to write the log"),
    }
}

/// Copies log text line by line, escaping control characters (keeping `\n` and `\t`).
fn copy_printable(mut from: impl BufRead, to: &mut impl Write) -> io::Result<()> {
    // Lines are cut at 64 KiB so a log without newlines is not read whole.
    const MAX_LINE: u64 = 64 * 1024;
    let mut line = Vec::new();
    loop {
        line.clear();
        if (&mut from).take(MAX_LINE).read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        to.write_all(printable_bytes(&line, true).as_bytes())?;
    }
}

/// One entry written by `barn fetch`, for `--json`.
#[derive(Debug, Serialize)]
struct Written {
    path: String,
    kind: EntryKind,
    size: u64,
    executable: bool,
    hash: Option<String>,
    target: Option<String>,
}

pub fn run_fetch(args: FetchArgs, dirs: &Dirs) -> Result<ExitCode> {
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let detail = client.job(&args.job)?;
    let count = settled::count(&detail).context("the job does not verify")?;
    let (view, counted) = counted_result(&detail, &count, args.node.as_deref())?;
    let result = counted.result.message();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("barn-fetch-{}", short_job(&detail.job.id))));
    let plan = Plan::new(&result.manifest.entries)?;
    prepare_out(&out)?;
    if !args.json {
        println!(
            "job {} from node {} ({}), manifest {}",
            short_job(&detail.job.id),
            short_node(&view.node),
            printable(&view.status),
            short_hash(&result.manifest_root.to_string())
        );
    }

    let mut written = Vec::new();
    for e in &plan.dirs {
        fs::create_dir_all(out.join(&e.path))
            .with_context(|| format!("failed to create {}", out.join(&e.path).display()))?;
        written.push(describe(e));
    }
    let mut bytes = 0u64;
    for e in &plan.files {
        let hash = e
            .hash
            .with_context(|| format!("manifest entry {} is a file without a hash", e.path))?;
        let blob = client
            .fetch(&hash.to_string(), Some(&view.node))
            .with_context(|| format!("failed to fetch {}", e.path))?;
        copy_verified(Path::new(&blob.path), &out, e, hash)?;
        bytes += e.size;
        if !args.json {
            println!(
                "  {:<40} {:>9}  {}",
                printable(&e.path),
                show_size(e.size),
                hash.short()
            );
        }
        written.push(describe(e));
    }
    for e in &plan.links {
        make_link(&out, e)?;
        if !args.json {
            println!(
                "  {:<40} -> {}",
                printable(&e.path),
                printable(e.target.as_deref().unwrap_or_default())
            );
        }
        written.push(describe(e));
    }

    if args.json {
        let doc = serde_json::json!({
            "job": detail.job.id,
            "node": view.node,
            "status": view.status,
            "manifest_root": result.manifest_root.to_string(),
            "out": out,
            "entries": written,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{} file{} ({}), {} dir{}, {} link{} in {}",
            plan.files.len(),
            plural(plan.files.len()),
            show_size(bytes),
            plan.dirs.len(),
            plural(plan.dirs.len()),
            plan.links.len(),
            plural(plan.links.len()),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn describe(e: &Entry) -> Written {
    Written {
        path: e.path.clone(),
        kind: e.kind,
        size: e.size,
        executable: e.executable,
        hash: e.hash.map(|h| h.to_string()),
        target: e.target.clone(),
    }
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("failed to open {}", path.display()))
}

/// The result of node `wanted`: a peer id, or a unique part of one.
fn pick_result<'a>(detail: &'a JobDetail, wanted: &str) -> Result<&'a ResultView> {
    let wanted = wanted.trim();
    if let Some(r) = detail.results.iter().find(|r| r.node == wanted) {
        return Ok(r);
    }
    let matches: Vec<&ResultView> = if wanted.is_empty() {
        Vec::new()
    } else {
        detail
            .results
            .iter()
            .filter(|r| r.node.contains(wanted))
            .collect()
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "node {wanted:?} has no result for job {}; {}",
            short_job(&detail.job.id),
            nodes_with_results(detail)
        ),
        _ => bail!(
            "node {wanted:?} matches several nodes; {}",
            nodes_with_results(detail)
        ),
    }
}

/// The result `barn fetch` takes: node `wanted`'s, or the first succeeded one, and only
/// when it counts.
fn counted_result<'a>(
    detail: &'a JobDetail,
    count: &'a Count,
    wanted: Option<&str>,
) -> Result<(&'a ResultView, &'a Counted)> {
    let counted = match wanted {
        Some(n) => {
            let view = pick_result(detail, n)?;
            match count
                .counted
                .iter()
                .find(|c| c.node.to_string() == view.node)
            {
                Some(c) => c,
                None => {
                    let why: Vec<String> = count
                        .refused
                        .iter()
                        .filter(|r| r.node == view.node)
                        .map(settled::Refused::reason)
                        .collect();
                    bail!(
                        "the result of node {} does not count ({}); `barn fetch` takes only \
                         results that count, as `barn verify` lists them",
                        short_node(&view.node),
                        printable(&why.join("; "))
                    );
                }
            }
        }
        None => count
            .counted
            .iter()
            .find(|c| c.result.message().status == BuildStatus::Succeeded)
            .with_context(|| {
                format!(
                    "job {} has no succeeded result that counts{}; {}",
                    short_job(&detail.job.id),
                    if count.is_settled() {
                        ""
                    } else {
                        " (it is not settled yet)"
                    },
                    nodes_with_results(detail)
                )
            })?,
    };
    let view = detail
        .results
        .iter()
        .find(|v| v.node == counted.node.to_string())
        .with_context(|| format!("no result listed for node {}", counted.node))?;
    Ok((view, counted))
}

fn nodes_with_results(detail: &JobDetail) -> String {
    if detail.results.is_empty() {
        return "no node has sent a result yet".into();
    }
    let list: Vec<String> = detail
        .results
        .iter()
        .map(|r| format!("{} ({}, {})", short_node(&r.node), r.status, r.node))
        .collect();
    format!("nodes with results: {}", list.join(", "))
}

/// A manifest's entries, checked and put in the order they are written.
#[derive(Debug)]
struct Plan<'a> {
    dirs: Vec<&'a Entry>,
    files: Vec<&'a Entry>,
    links: Vec<&'a Entry>,
}

impl<'a> Plan<'a> {
    fn new(entries: &'a [Entry]) -> Result<Self> {
        let links: BTreeSet<&str> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Symlink)
            .map(|e| e.path.as_str())
            .collect();
        let mut plan = Plan {
            dirs: Vec::new(),
            files: Vec::new(),
            links: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        for e in entries {
            let clean = manifest::normalize(&e.path)?;
            if clean.is_empty() || clean != e.path {
                bail!("unsafe path {:?} in the manifest", e.path);
            }
            if !seen.insert(e.path.as_str()) {
                bail!("{:?} appears twice in the manifest", e.path);
            }
            // Nothing may be written below a link: that is how a chain of links escapes.
            let mut prefix = String::new();
            for part in e.path.split('/') {
                if !prefix.is_empty() && links.contains(prefix.as_str()) {
                    bail!(
                        "{:?} in the manifest lies below the link {prefix:?}",
                        e.path
                    );
                }
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
            }
            match e.kind {
                EntryKind::Dir => plan.dirs.push(e),
                EntryKind::File => plan.files.push(e),
                EntryKind::Symlink => {
                    barn_protocol::manifest::check_link(
                        &e.path,
                        e.target.as_deref().unwrap_or_default(),
                    )?;
                    plan.links.push(e);
                }
            }
        }
        // Each link is inside on its own; followed through the others (`s -> .` then
        // `l -> s/..`), a chain may still climb out. Refused before anything is written.
        barn_protocol::links::check_links(
            plan.links
                .iter()
                .map(|e| (e.path.as_str(), e.target.as_deref().unwrap_or_default())),
        )?;
        Ok(plan)
    }
}

/// Makes `out` if needed; refuses one that already holds something.
fn prepare_out(out: &Path) -> Result<()> {
    if let Ok(meta) = fs::symlink_metadata(out) {
        if !meta.is_dir() {
            bail!("{} exists and is not a folder", out.display());
        }
        let mut items =
            fs::read_dir(out).with_context(|| format!("failed to read {}", out.display()))?;
        if items.next().is_some() {
            bail!(
                "{} is not empty; pick a new folder with --out",
                out.display()
            );
        }
    }
    fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))
}

/// Copies a blob to `out/<entry.path>`, hashing as it goes; removes the copy on a mismatch.
fn copy_verified(src: &Path, out: &Path, e: &Entry, want: ContentHash) -> Result<()> {
    let dest = out.join(&e.path);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let mut opts = fs::OpenOptions::new();
    // create_new: never follows or replaces something already there.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if e.executable { 0o755 } else { 0o644 });
    }
    let mut reader = open(src)?;
    let mut writer = opts
        .open(&dest)
        .with_context(|| format!("failed to create {}", dest.display()))?;
    let (got, size) = ContentHash::copy_hashing(&mut reader, &mut writer)
        .with_context(|| format!("failed to copy {} to {}", src.display(), dest.display()))?;
    writer
        .sync_all()
        .with_context(|| format!("failed to write {}", dest.display()))?;
    if got != want || size != e.size {
        let _ = fs::remove_file(&dest);
        bail!(
            "{} does not match the signed manifest (got {got}, {size} bytes; want {want}, {} bytes)",
            e.path,
            e.size
        );
    }
    Ok(())
}

#[cfg(unix)]
fn make_link(out: &Path, e: &Entry) -> Result<()> {
    let dest = out.join(&e.path);
    let target = e.target.as_deref().unwrap_or_default();
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    std::os::unix::fs::symlink(target, &dest)
        .with_context(|| format!("failed to create the link {}", dest.display()))
}

#[cfg(not(unix))]
fn make_link(_out: &Path, e: &Entry) -> Result<()> {
    bail!(
        "{} is a symbolic link, which this platform's barn does not make",
        e.path
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{JobView, LeaseView};

    fn entry(path: &str, kind: EntryKind, target: Option<&str>) -> Entry {
        Entry {
            path: path.into(),
            kind,
            executable: false,
            size: 0,
            hash: None,
            target: target.map(str::to_string),
        }
    }

    fn detail(nodes: &[(&str, &str)]) -> JobDetail {
        JobDetail {
            settlement: None,
            submitted_ms: None,
            job: JobView {
                waiting: None,
                verdict: None,
                id: format!("b3:{}", "ab".repeat(32)),
                image: "tiny".into(),
                arch: "x86_64".into(),
                replicas: 3,
                state: "complete".into(),
                results: nodes.len(),
                succeeded: 0,
                created: 0,
                mine: true,
                submitter: String::new(),
            },
            envelope: String::new(),
            leases: vec![],
            results: nodes
                .iter()
                .map(|(node, status)| ResultView {
                    late: false,
                    node: node.to_string(),
                    status: status.to_string(),
                    detail: None,
                    manifest_root: String::new(),
                    log_hash: String::new(),
                    log_size: 0,
                    total_ms: 0,
                    boot_ms: 0,
                    run_ms: 0,
                    accel: String::new(),
                    image_hash: String::new(),
                    envelope: String::new(),
                    provenance_sig: None,
                    received: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn nodes_resolve_by_full_id_or_unique_part() {
        let d = detail(&[
            ("12D3KooWaaaa1111", "failed"),
            ("12D3KooWbbbb2222", "succeeded"),
        ]);
        assert_eq!(
            pick_result(&d, "12D3KooWaaaa1111").unwrap().node,
            "12D3KooWaaaa1111"
        );
        assert_eq!(
            pick_result(&d, "bbbb2222").unwrap().node,
            "12D3KooWbbbb2222"
        );
        assert_eq!(
            pick_result(&d, "12D3KooWa").unwrap().node,
            "12D3KooWaaaa1111"
        );
        let ambiguous = pick_result(&d, "12D3KooW").unwrap_err().to_string();
        assert!(
            ambiguous.contains("several") && ambiguous.contains("aaaa1111"),
            "{ambiguous}"
        );
        let unknown = pick_result(&d, "zzzz").unwrap_err().to_string();
        assert!(unknown.contains("12D3KooWbbbb2222"), "{unknown}");
    }

    #[test]
    fn only_a_result_that_counts_is_fetched() {
        use crate::verify::verdict::tests_support::{job, result};
        use barn_protocol::{SecretKey, Signed};
        let key = |i: u8| SecretKey::from_seed([i; 32]);
        let signed_job = Signed::sign(job(2), &key(50));
        let id = JobId::of(&signed_job);
        let built = |i: u8| {
            let mut r = result(&[("out/a", b"x")]);
            r.job = id;
            r.node = key(i).node_id();
            Signed::sign(r, &key(i))
        };
        let (n1, n2) = (key(1).node_id().to_string(), key(2).node_id().to_string());
        let mut d = detail(&[(&n2, "succeeded"), (&n1, "succeeded")]);
        d.job.id = id.to_string();
        d.envelope = hex::encode(signed_job.to_bytes());
        d.results[0].envelope = hex::encode(built(2).to_bytes());
        d.results[1].envelope = hex::encode(built(1).to_bytes());
        // Not settled; only node 1 holds a finished lease. Node 2's result, listed first,
        // was gossiped by a node nobody asked.
        d.leases = vec![LeaseView {
            node: n1.clone(),
            granted_ms: None,
            state: "done".into(),
            granted: 0,
            expires: 0,
        }];
        let count = settled::count(&d).unwrap();
        let (view, counted) = counted_result(&d, &count, None).unwrap();
        assert_eq!(
            (view.node.as_str(), counted.node),
            (n1.as_str(), key(1).node_id())
        );
        let e = counted_result(&d, &count, Some(&n2))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not count (the node holds no finished lease of the job)"),
            "{e}"
        );
        d.leases.clear();
        let count = settled::count(&d).unwrap();
        let e = counted_result(&d, &count, None).unwrap_err().to_string();
        assert!(
            e.contains("no succeeded result that counts (it is not settled yet)"),
            "{e}"
        );
    }

    #[test]
    fn plans_refuse_escapes() {
        let ok = [
            entry("out", EntryKind::Dir, None),
            entry("out/link", EntryKind::Symlink, Some("../out")),
        ];
        let plan = Plan::new(&ok).unwrap();
        assert_eq!((plan.dirs.len(), plan.links.len()), (1, 1));

        let up = [entry("a", EntryKind::Symlink, Some("../x"))];
        assert!(Plan::new(&up).is_err());
        let abs = [entry("a", EntryKind::Symlink, Some("/etc"))];
        assert!(Plan::new(&abs).is_err());
        let dotdot = [entry("a/../../b", EntryKind::Dir, None)];
        assert!(Plan::new(&dotdot).is_err());
        // `b/up -> ..` is inside, but `b/up/x` would be written through it.
        let through = [
            entry("b/up", EntryKind::Symlink, Some("..")),
            entry("b/up/x", EntryKind::Dir, None),
        ];
        assert!(Plan::new(&through).is_err());
        let unclean = [entry("./a", EntryKind::Dir, None)];
        assert!(Plan::new(&unclean).is_err());
    }

    fn plan_error(entries: &[Entry]) -> String {
        format!("{:#}", Plan::new(entries).unwrap_err())
    }

    #[test]
    fn link_chains_that_climb_out_are_refused_before_writing() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        // What the attack does on a real disk: each link lexically inside, `l` outside.
        fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(".", out.join("s")).unwrap();
        std::os::unix::fs::symlink("s/..", out.join("l")).unwrap();
        assert_eq!(
            fs::canonicalize(out.join("l")).unwrap(),
            fs::canonicalize(root.path()).unwrap()
        );
        fs::remove_dir_all(&out).unwrap();

        let dot = [
            entry("s", EntryKind::Symlink, Some(".")),
            entry("l", EntryKind::Symlink, Some("s/..")),
        ];
        let e = plan_error(&dot);
        assert!(
            e.contains("the link \"l\" -> \"s/..\" leads outside the folder"),
            "{e}"
        );
        let longer = [
            entry("d", EntryKind::Dir, None),
            entry("d/a", EntryKind::Symlink, Some(".")),
            entry("d/b", EntryKind::Symlink, Some("a/a/a")),
            entry("d/c", EntryKind::Symlink, Some("b/..")),
            entry("d/e", EntryKind::Symlink, Some("c/../x")),
        ];
        let e = plan_error(&longer);
        assert!(e.contains("\"d/e\"") && e.contains("outside"), "{e}");
        let the_loop = [
            entry("a", EntryKind::Symlink, Some("b")),
            entry("b", EntryKind::Symlink, Some("a")),
        ];
        let e = plan_error(&the_loop);
        assert!(e.contains("more than 40 links followed"), "{e}");
        // Refused before `prepare_out`: nothing was created.
        assert!(!out.exists());
    }

    #[test]
    fn legitimate_link_chains_are_written() {
        let root = tempfile::tempdir().unwrap();
        let src = root.path().join("blob");
        fs::write(&src, b"elf").unwrap();
        let mut file = entry("lib/libx.so.1.2", EntryKind::File, None);
        file.size = 3;
        let entries = [
            entry("lib", EntryKind::Dir, None),
            file,
            entry("lib/libx.so", EntryKind::Symlink, Some("libx.so.1")),
            entry("lib/libx.so.1", EntryKind::Symlink, Some("libx.so.1.2")),
            entry("bin/x", EntryKind::Symlink, Some("../lib/libx.so")),
        ];
        let plan = Plan::new(&entries).unwrap();
        let out = root.path().join("out");
        prepare_out(&out).unwrap();
        for e in &plan.dirs {
            fs::create_dir_all(out.join(&e.path)).unwrap();
        }
        for e in &plan.files {
            copy_verified(&src, &out, e, ContentHash::of(b"elf")).unwrap();
        }
        for e in &plan.links {
            make_link(&out, e).unwrap();
        }
        assert_eq!(fs::read(out.join("bin/x")).unwrap(), b"elf");
        assert_eq!(fs::read(out.join("lib/libx.so")).unwrap(), b"elf");
    }

    #[test]
    fn logs_to_a_terminal_are_escaped_line_by_line() {
        let log = b"ok\tdone\n\x1b]0;pwned\x07\x1b[2J\nend \xe2\x9c\x85";
        let mut out = Vec::new();
        copy_printable(&log[..], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out, "ok\tdone\n\\x1b]0;pwned\\x07\\x1b[2J\nend ✅");
    }

    #[test]
    fn copies_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        fs::write(&src, b"hello").unwrap();
        let out = dir.path().join("out");
        prepare_out(&out).unwrap();
        let mut e = entry("bin/tool", EntryKind::File, None);
        e.size = 5;
        e.executable = true;
        copy_verified(&src, &out, &e, ContentHash::of(b"hello")).unwrap();
        assert_eq!(fs::read(out.join("bin/tool")).unwrap(), b"hello");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(out.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111);
        }
        let e2 = Entry {
            path: "other".into(),
            ..e
        };
        let err = copy_verified(&src, &out, &e2, ContentHash::of(b"bye")).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(!out.join("other").exists());
        // Not empty any more.
        assert!(prepare_out(&out).is_err());
    }
}
