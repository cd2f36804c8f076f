//! `barn diff JOB`: why a job's replicas disagree, file by file.
//!
//! The job and every result come from the running node's API but are verified here, as
//! `barn fetch` does: the job envelope's signature and id, each result's signature, signer
//! (= the node it is shown for), job and manifest root. Only the results that count are
//! compared ([`crate::verify::settled`]: those the settlement names, or before settlement
//! the coordinator's finished leases); the others, and any that fails to verify, are left
//! out and named. The verdict ([`crate::verify::verdict`]) then names the differing files; for each, the variants (which
//! nodes made what) and, against the majority variant (or the first), what actually
//! differs: in words for a missing file, a kind, an executable bit or a link target; for
//! contents, both blobs are fetched, checked against their signed hashes, and shown with
//! `diffoscope` when it is on `PATH` ([`crate::verify::diffoscope`]: under a timeout,
//! output capped), else with the
//! built-in comparison in [`crate::verify::diff`]: first differing byte, a line diff for
//! small text, a hex window otherwise.
//!
//! Exit codes follow the verdict, as for `barn verify`: 0 reproducible,
//! [`super::exit::DIFFERS`], [`super::exit::VERDICT_FAILED`], [`super::exit::PENDING`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use barn_protocol::jobfile::show_size;
use barn_protocol::manifest::{Entry, EntryKind};
use barn_protocol::message::BuildResult;
use barn_protocol::text::{printable, printable_log};
use barn_protocol::{ContentHash, NodeId};
use clap::Args;
use serde::Serialize;

use super::view::{short_hash, short_job, short_node, table};
use crate::api::client::ApiClient;
use crate::api::types::ResultView;
use crate::dirs::Dirs;
use crate::verify::diff::{self as fallback, HEX_WINDOW, TEXT_LIMIT};
use crate::verify::diffoscope;
use crate::verify::policy::Policy;
use crate::verify::settled;
use crate::verify::verdict::{FileDiff, Kind, Verdict};

/// The default for `--max-bytes`.
const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The job: a full `b3:` id or a unique hex prefix.
    job: String,
    /// Print the differing files as JSON: variants, sizes, first differing byte and, for
    /// small text, a line diff (diffoscope is not run).
    #[arg(long)]
    json: bool,
    /// The largest file fetched and compared, in bytes; larger ones are described by their
    /// sizes and hashes only.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BYTES)]
    max_bytes: u64,
    /// Judge under the trust policy in FILE, as `barn verify --policy` does.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

/// What `barn diff` found, also its `--json` output.
#[derive(Debug, Serialize)]
struct Report {
    job: String,
    /// The coordinator's signed settlement named the results compared; `false`: not
    /// settled yet, the coordinator's finished leases did.
    settled: bool,
    verdict: Kind,
    replicas: u8,
    compared: usize,
    majority: Vec<String>,
    minority: Vec<String>,
    failures: BTreeMap<String, String>,
    /// Results left out by the verdict (not counted: not settled, late, listed twice,
    /// contradicting their lease; another image or arch, infrastructure errors).
    ignored: BTreeMap<String, String>,
    /// Results that did not verify, with why; never used.
    refused: BTreeMap<String, String>,
    files: Vec<FileReport>,
}

/// One differing path.
#[derive(Debug, Serialize)]
struct FileReport {
    path: String,
    /// Variant (a `b3:` hash, `exec b3:…`, `symlink → target`, `dir`, `missing`) → nodes.
    variants: BTreeMap<String, Vec<String>>,
    /// Variant → file size (none for what is not a file).
    sizes: BTreeMap<String, Option<u64>>,
    /// The variant the others are compared against: the majority's, else the first.
    base: String,
    comparisons: Vec<Comparison>,
}

/// The base variant against one other.
#[derive(Debug, Default, Serialize)]
struct Comparison {
    variant: String,
    /// The difference in words, when it is not (only) in the contents, or why the contents
    /// were not compared.
    notes: Vec<String>,
    /// The first byte at which the contents differ (or the shorter file ends).
    first_difference: Option<u64>,
    /// A unified line diff, for text files of at most 64 KiB.
    text_diff: Option<String>,
    /// 64 bytes around the first difference, base then other, when there is no text diff.
    #[serde(skip)]
    hex: Option<(String, String)>,
    /// diffoscope's output (human output only).
    #[serde(skip)]
    diffoscope: Option<String>,
}

pub fn run(args: DiffArgs, dirs: &Dirs) -> Result<ExitCode> {
    let policy = super::verify::policy(dirs, args.policy.as_deref())?;
    let client = ApiClient::from_data_dir(&dirs.data)?;
    let (report, code) = diff(&client, &args, &policy)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::from(code))
}

/// Finds and compares the differing files; prints as it goes unless `--json`. Returns the
/// report and the exit code.
fn diff(client: &ApiClient, args: &DiffArgs, policy: &Policy) -> Result<(Report, u8)> {
    let detail = client.job(&args.job)?;
    // Only the results that count are compared (the settlement's, or before it the
    // coordinator's finished leases); the others are named, with why.
    let count = settled::count(&detail).context("the job does not verify; refusing it")?;
    let mut refused = BTreeMap::new();
    for r in count.invalid() {
        let err = r.reason();
        // The human summary lists it; JSON readers still hear of it on stderr.
        if args.json {
            eprintln!("warning: {err}; left out");
        }
        refused.insert(r.node.clone(), err);
    }
    let verdict = count.verdict(policy);
    let results: Vec<(NodeId, BuildResult)> = count
        .counted
        .iter()
        .map(|c| (c.node, c.result.message().clone()))
        .collect();
    let by_node: BTreeMap<String, &BuildResult> =
        results.iter().map(|(n, r)| (n.to_string(), r)).collect();
    let diffoscope = if args.json { None } else { diffoscope::find() };
    // The same codes as `barn verify`: 0, 10 differs, 11 failed, 12 pending, 13 unconfirmed.
    let code = super::verify::exit_code(verdict.verdict);
    let mut report = Report {
        job: detail.job.id.clone(),
        settled: count.is_settled(),
        verdict: verdict.verdict,
        replicas: verdict.replicas,
        compared: verdict.compared,
        majority: verdict.majority.clone(),
        minority: verdict.minority.clone(),
        failures: verdict.failures.clone(),
        ignored: verdict.ignored.clone(),
        refused,
        files: Vec::new(),
    };
    if !args.json {
        print_summary(&report, &verdict, &detail.results);
    }
    for file in &verdict.files {
        let mut fr = file_report(file, &verdict, &by_node);
        if !args.json {
            print_variants(&fr);
        }
        let base = fr.base.clone();
        for (variant, nodes) in &file.variants {
            if *variant == base {
                continue;
            }
            let base_nodes = file.variants.get(&base).map(Vec::as_slice);
            let cmp = Pair {
                path: &file.path,
                base: side(base_nodes.unwrap_or_default(), &file.path, &by_node),
                other: side(nodes, &file.path, &by_node),
            }
            .compare(client, args.max_bytes, diffoscope.as_deref());
            if !args.json {
                print_comparison(&file.path, &base, &file.variants, &cmp);
            }
            fr.comparisons.push(cmp);
        }
        report.files.push(fr);
    }
    Ok((report, code))
}

/// The variants of one path, with sizes, and which is the base.
fn file_report(
    file: &FileDiff,
    verdict: &Verdict,
    by_node: &BTreeMap<String, &BuildResult>,
) -> FileReport {
    let sizes = file
        .variants
        .iter()
        .map(|(variant, nodes)| {
            let size = entry_of(nodes, &file.path, by_node)
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| e.size);
            (variant.clone(), size)
        })
        .collect();
    FileReport {
        path: file.path.clone(),
        variants: file.variants.clone(),
        sizes,
        base: base_variant(&file.variants, &verdict.majority),
        comparisons: Vec::new(),
    }
}

/// The variant made by the verdict's majority, else one made by strictly more nodes than
/// any other, else the first.
fn base_variant(variants: &BTreeMap<String, Vec<String>>, majority: &[String]) -> String {
    if let Some((v, _)) = variants
        .iter()
        .find(|(_, nodes)| nodes.iter().any(|n| majority.contains(n)))
    {
        return v.clone();
    }
    let most = variants.values().map(Vec::len).max().unwrap_or(0);
    let mut top = variants.iter().filter(|(_, n)| n.len() == most);
    match (top.next(), top.next()) {
        (Some((v, _)), None) => v.clone(),
        _ => variants.keys().next().cloned().unwrap_or_default(),
    }
}

fn entry_of<'a>(
    nodes: &[String],
    path: &str,
    by_node: &BTreeMap<String, &'a BuildResult>,
) -> Option<&'a Entry> {
    let result = nodes.iter().find_map(|n| by_node.get(n))?;
    result.manifest.entries.iter().find(|e| e.path == path)
}

/// One variant of a path: who made it and what it is (`None`: missing).
#[derive(Debug)]
struct Side<'a> {
    nodes: &'a [String],
    entry: Option<&'a Entry>,
}

fn side<'a>(
    nodes: &'a [String],
    path: &str,
    by_node: &BTreeMap<String, &'a BuildResult>,
) -> Side<'a> {
    Side {
        nodes,
        entry: entry_of(nodes, path, by_node),
    }
}

fn who(nodes: &[String]) -> String {
    let short: Vec<String> = nodes.iter().map(|n| short_node(n)).collect();
    short.join(", ")
}

fn kind_word(e: &Entry) -> String {
    match e.kind {
        EntryKind::File if e.executable => format!("an executable file of {}", show_size(e.size)),
        EntryKind::File => format!("a file of {}", show_size(e.size)),
        EntryKind::Dir => "a directory".into(),
        EntryKind::Symlink => format!("a link to {:?}", e.target.as_deref().unwrap_or_default()),
    }
}

/// The base variant and one other of the same path.
#[derive(Debug)]
struct Pair<'a> {
    path: &'a str,
    base: Side<'a>,
    other: Side<'a>,
}

impl Pair<'_> {
    fn compare(&self, client: &ApiClient, max_bytes: u64, diffoscope: Option<&Path>) -> Comparison {
        let mut cmp = Comparison {
            variant: self
                .other
                .entry
                .map(describe)
                .unwrap_or_else(|| "missing".into()),
            ..Comparison::default()
        };
        let (b_who, o_who) = (who(self.base.nodes), who(self.other.nodes));
        let (b, o) = match (self.base.entry, self.other.entry) {
            (Some(b), Some(o)) => (b, o),
            (Some(b), None) => {
                cmp.notes
                    .push(format!("missing on {o_who}; {b_who} made {}", kind_word(b)));
                return cmp;
            }
            (None, Some(o)) => {
                cmp.notes
                    .push(format!("missing on {b_who}; {o_who} made {}", kind_word(o)));
                return cmp;
            }
            (None, None) => return cmp,
        };
        if b.kind != o.kind {
            cmp.notes.push(format!(
                "{b_who} made {}, {o_who} made {}",
                kind_word(b),
                kind_word(o)
            ));
            return cmp;
        }
        match b.kind {
            EntryKind::Symlink => {
                cmp.notes.push(format!(
                    "the link target differs: {:?} on {b_who}, {:?} on {o_who}",
                    b.target.as_deref().unwrap_or_default(),
                    o.target.as_deref().unwrap_or_default()
                ));
            }
            EntryKind::Dir => {}
            EntryKind::File => {
                if b.executable != o.executable {
                    let (yes, no) = if b.executable {
                        (&b_who, &o_who)
                    } else {
                        (&o_who, &b_who)
                    };
                    let only = if b.hash == o.hash { "only " } else { "" };
                    cmp.notes.push(format!(
                        "{only}the executable bit differs: set on {yes}, not on {no}"
                    ));
                }
                if b.hash != o.hash
                    && let Err(err) =
                        self.compare_contents(&mut cmp, client, b, o, max_bytes, diffoscope)
                {
                    cmp.notes
                        .push(format!("the contents could not be compared: {err:#}"));
                }
            }
        }
        cmp
    }

    fn compare_contents(
        &self,
        cmp: &mut Comparison,
        client: &ApiClient,
        b: &Entry,
        o: &Entry,
        max_bytes: u64,
        diffoscope: Option<&Path>,
    ) -> Result<()> {
        if b.size > max_bytes || o.size > max_bytes {
            cmp.notes.push(format!(
                "the contents differ ({} vs {}); over --max-bytes {max_bytes}, not fetched",
                show_size(b.size),
                show_size(o.size)
            ));
            return Ok(());
        }
        let path_b = fetch_verified(client, b, self.base.nodes)?;
        let path_o = fetch_verified(client, o, self.other.nodes)?;
        cmp.first_difference = fallback::first_difference(open(&path_b)?, open(&path_o)?)
            .context("failed to compare the two files")?;
        let name_b = format!("a/{} ({})", self.path, who(self.base.nodes));
        let name_o = format!("b/{} ({})", self.path, who(self.other.nodes));
        if b.size <= TEXT_LIMIT as u64 && o.size <= TEXT_LIMIT as u64 {
            let (bytes_b, bytes_o) = (read_small(&path_b)?, read_small(&path_o)?);
            cmp.text_diff = fallback::as_text(&bytes_b, &bytes_o)
                .and_then(|(tb, to)| fallback::unified(tb, to, &name_b, &name_o));
        }
        if let Some(prog) = diffoscope {
            match diffoscope::run(prog, &path_b, &path_o, self.path) {
                Ok(out) => cmp.diffoscope = Some(out),
                Err(err) => cmp.notes.push(format!(
                    "{:#}; showing barn's own comparison",
                    anyhow::Error::new(err)
                )),
            }
        }
        if cmp.text_diff.is_none()
            && let Some(at) = cmp.first_difference
        {
            let start = fallback::window_start(at);
            cmp.hex = Some((
                fallback::hex_dump(&read_window(&path_b, start)?, start, at),
                fallback::hex_dump(&read_window(&path_o, start)?, start, at),
            ));
        }
        Ok(())
    }
}

/// What [`crate::verify::verdict`] calls a variant, for an entry.
fn describe(e: &Entry) -> String {
    let hash = e.hash.map(|h| h.to_string()).unwrap_or_default();
    match e.kind {
        EntryKind::File if e.executable => format!("exec {hash}"),
        EntryKind::File => hash,
        EntryKind::Dir => "dir".into(),
        EntryKind::Symlink => format!("symlink → {}", e.target.clone().unwrap_or_default()),
    }
}

/// Fetches a file's blob from the first of `nodes` that delivers it, into the local node's
/// store, and checks it against the signed hash and size.
fn fetch_verified(client: &ApiClient, e: &Entry, nodes: &[String]) -> Result<PathBuf> {
    let hash = e
        .hash
        .with_context(|| format!("manifest entry {} is a file without a hash", e.path))?;
    let mut errors = Vec::new();
    for node in nodes {
        let blob = match client.fetch(&hash.to_string(), Some(node)) {
            Ok(b) => b,
            Err(err) => {
                errors.push(format!("{}: {err:#}", short_node(node)));
                continue;
            }
        };
        let path = PathBuf::from(blob.path);
        let (got, size) = ContentHash::of_reader(open(&path)?)
            .with_context(|| format!("failed to read {}", path.display()))?;
        if got != hash || size != e.size {
            bail!(
                "the blob fetched from {} ({}) is not {hash} of {} bytes",
                short_node(node),
                path.display(),
                e.size
            );
        }
        return Ok(path);
    }
    Err(anyhow!(
        "failed to fetch {} ({}) from {}",
        e.path,
        hash.short(),
        errors.join("; ")
    ))
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("failed to open {}", path.display()))
}

/// Reads a file already known (by its verified size) to be at most [`TEXT_LIMIT`] bytes.
fn read_small(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    open(path)?
        .take(TEXT_LIMIT as u64 + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(buf)
}

/// [`HEX_WINDOW`] bytes of `path` from `start` (fewer at its end).
fn read_window(path: &Path, start: u64) -> Result<Vec<u8>> {
    let mut f = open(path)?;
    f.seek(SeekFrom::Start(start))
        .with_context(|| format!("failed to read {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(HEX_WINDOW)
        .read_to_end(&mut buf)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(buf)
}

/// `b3:` hashes in a variant shortened for tables.
fn show_variant(variant: &str) -> String {
    let words: Vec<String> = variant
        .split(' ')
        .map(|w| {
            if w.starts_with("b3:") {
                short_hash(w)
            } else {
                w.to_string()
            }
        })
        .collect();
    words.join(" ")
}

fn print_summary(report: &Report, verdict: &Verdict, results: &[ResultView]) {
    let job = short_job(&report.job);
    match verdict.verdict {
        Kind::Reproducible => println!(
            "job {job} is reproducible: all {} results agree: nothing to diff",
            verdict.compared
        ),
        Kind::Unconfirmed => println!(
            "job {job} is unconfirmed: all {} results agree (from {} distinct operator{}, {} \
             of them trusted), nothing to diff",
            verdict.compared,
            verdict.agreeing_operators,
            if verdict.agreeing_operators == 1 {
                ""
            } else {
                "s"
            },
            verdict.trusted_operators
        ),
        Kind::Pending => println!(
            "job {job} is pending: {} of {} replicas have a result to compare: nothing to diff yet",
            verdict.compared, verdict.replicas
        ),
        Kind::Failed => {
            println!("job {job} failed:");
            for (node, why) in &verdict.failures {
                println!("  node {}: {}", short_node(node), printable(why));
            }
            if verdict.files.is_empty() {
                println!("nothing to diff among the succeeded results");
            } else {
                println!("the succeeded results differ as well:");
            }
        }
        Kind::Differs => {
            let n = verdict.files.len();
            let ok = verdict.majority.len() + verdict.minority.len();
            println!(
                "job {job} differs: {n} path{} differ{} among {ok} succeeded results",
                if n == 1 { "" } else { "s" },
                if n == 1 { "s" } else { "" },
            );
            if verdict.majority.is_empty() {
                println!("  no majority: {}", who(&verdict.minority));
            } else {
                println!(
                    "  majority: {}; minority: {}",
                    who(&verdict.majority),
                    who(&verdict.minority)
                );
            }
        }
        other => println!("job {job}: {}", other.word()),
    }
    if !report.settled {
        println!("  not settled yet: comparing the results of the coordinator's finished leases");
    }
    for (node, why) in &verdict.ignored {
        println!("  left out {}: {}", short_node(node), printable(why));
    }
    for (node, why) in &report.refused {
        println!("  refused {}: {}", short_node(node), printable(why));
    }
    if results.is_empty() {
        println!("  no node has sent a result yet");
    }
}

fn print_variants(fr: &FileReport) {
    println!();
    println!("{}", printable(&fr.path));
    let rows: Vec<Vec<String>> = fr
        .variants
        .iter()
        .map(|(variant, nodes)| {
            let mark = if *variant == fr.base { "*" } else { " " };
            vec![
                format!("{mark} {}", show_variant(variant)),
                who(nodes),
                fr.sizes
                    .get(variant)
                    .copied()
                    .flatten()
                    .map(show_size)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    for line in table(&["  VARIANT", "NODES", "SIZE"], &rows).lines() {
        println!("  {line}");
    }
}

fn print_comparison(
    path: &str,
    base: &str,
    variants: &BTreeMap<String, Vec<String>>,
    cmp: &Comparison,
) {
    let nodes_of = |v: &str| variants.get(v).map(|n| who(n)).unwrap_or_default();
    println!(
        "  {} ({}) vs {} ({}):",
        printable(&show_variant(base)),
        nodes_of(base),
        printable(&show_variant(&cmp.variant)),
        nodes_of(&cmp.variant)
    );
    for note in &cmp.notes {
        println!("    {}", printable(note));
    }
    if let Some(at) = cmp.first_difference {
        println!("    first difference at byte {at} (0x{at:x})");
    }
    if let Some(out) = &cmp.diffoscope {
        // diffoscope and the text diff quote the artifacts' bytes: escaped, lines kept.
        print!("{}", printable_log(out));
        if !out.ends_with('\n') {
            println!();
        }
        return;
    }
    if let Some(d) = &cmp.text_diff {
        print!("{}", printable_log(d));
    } else if let Some((b, o)) = &cmp.hex {
        let path = printable(path);
        println!("    {path} on {}:", nodes_of(base));
        for l in b.lines() {
            println!("      {}", printable(l));
        }
        println!("    {path} on {}:", nodes_of(&cmp.variant));
        for l in o.lines() {
            println!("      {}", printable(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, thread};

    use super::*;
    use crate::api::types::JobDetail;
    use barn_protocol::message::Job;
    use barn_protocol::{JobId, Signed};

    fn variants(rows: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        rows.iter()
            .map(|(v, n)| (v.to_string(), n.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn the_base_is_the_majority_else_the_largest_else_the_first() {
        let v = variants(&[("b3:aa", &["n1"]), ("b3:bb", &["n2", "n3"])]);
        assert_eq!(base_variant(&v, &["n2".into(), "n3".into()]), "b3:bb");
        assert_eq!(base_variant(&v, &[]), "b3:bb");
        let tie = variants(&[("b3:bb", &["n1"]), ("missing", &["n2"])]);
        assert_eq!(base_variant(&tie, &[]), "b3:bb");
        assert_eq!(base_variant(&tie, &["n2".into()]), "missing");
    }

    #[test]
    fn variants_are_shortened_for_tables() {
        let h = format!("b3:{}", "ab".repeat(32));
        assert_eq!(show_variant(&h), "b3:abababababab");
        assert_eq!(show_variant(&format!("exec {h}")), "exec b3:abababababab");
        assert_eq!(show_variant("symlink → x"), "symlink → x");
    }

    #[test]
    fn differences_in_words() {
        let file = |exec: bool, content: &[u8]| Entry {
            path: "out/a".into(),
            kind: EntryKind::File,
            executable: exec,
            size: content.len() as u64,
            hash: Some(ContentHash::of(content)),
            target: None,
        };
        let link = |t: &str| Entry {
            path: "out/a".into(),
            kind: EntryKind::Symlink,
            executable: false,
            size: 0,
            hash: None,
            target: Some(t.into()),
        };
        let client = ApiClient::new("127.0.0.1:1", "t");
        let (n1, n2) = (
            vec!["12D3KooWaaaaaaaa11111111".to_string()],
            vec!["12D3KooWbbbbbbbb22222222".to_string()],
        );
        let words = |b: Option<&Entry>, o: Option<&Entry>| {
            Pair {
                path: "out/a",
                base: Side {
                    nodes: &n1,
                    entry: b,
                },
                other: Side {
                    nodes: &n2,
                    entry: o,
                },
            }
            .compare(&client, 1, None)
            .notes
            .join("\n")
        };
        let (x, xe) = (file(false, b"x"), file(true, b"x"));
        assert_eq!(
            words(Some(&x), Some(&xe)),
            "only the executable bit differs: set on 22222222, not on 11111111"
        );
        assert_eq!(
            words(Some(&x), None),
            "missing on 22222222; 11111111 made a file of 1B"
        );
        assert_eq!(
            words(Some(&link("a")), Some(&link("b"))),
            "the link target differs: \"a\" on 11111111, \"b\" on 22222222"
        );
        assert_eq!(
            words(Some(&x), Some(&link("b"))),
            "11111111 made a file of 1B, 22222222 made a link to \"b\""
        );
        // Over --max-bytes: described, not fetched (no node is listening).
        let big = file(false, b"longer");
        let w = words(Some(&x), Some(&big));
        assert!(w.contains("over --max-bytes 1"), "{w}");
    }

    /// A stand-in for the local API on loopback: `GET /api/jobs/…` answers `detail`,
    /// `POST /api/fetch` answers the path of a file in `blobs` by hash.
    fn fake_api(detail: JobDetail, blobs: BTreeMap<String, PathBuf>) -> ApiClient {
        use crate::api::types::{FetchRequest, FetchResponse};
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0u8; len];
                reader.read_exact(&mut body).unwrap();
                let (status, answer) = if request.starts_with("GET /api/jobs/") {
                    ("200 OK", serde_json::to_string(&detail).unwrap())
                } else {
                    let req: FetchRequest = serde_json::from_slice(&body).unwrap();
                    match blobs.get(&req.hash) {
                        Some(p) => (
                            "200 OK",
                            serde_json::to_string(&FetchResponse {
                                path: p.display().to_string(),
                                size: fs::metadata(p).unwrap().len(),
                            })
                            .unwrap(),
                        ),
                        None => ("502 Bad Gateway", r#"{"error":"no peer has it"}"#.into()),
                    }
                };
                let mut conn = conn;
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        ApiClient::new(&addr.to_string(), "token")
    }

    #[test]
    fn a_differing_job_is_explained_file_by_file() {
        use crate::api::types::JobView;
        use barn_protocol::SecretKey;
        use barn_protocol::manifest::Manifest;
        use barn_protocol::message::{Accel, BuildStatus, Timings};

        let spec = barn_protocol::jobfile::parse(
            "image = \"tiny-x86_64\"\narch = \"x86_64\"\nreplicas = 3\n\
             [[task]]\nname = \"build\"\nrun = \"true\"\n",
            "barn.toml",
        )
        .unwrap()
        .remove(0);
        let key = |i: u8| SecretKey::from_seed([i; 32]);
        let job = Job {
            spec,
            image_hash: ContentHash::of(b"img"),
            source: ContentHash::of(b"src"),
            source_size: 0,
            coordinator: key(9).node_id(),
            coordinator_addrs: vec![],
            created: 0,
            expires: 10,
            nonce: serde_bytes::ByteArray::new([0; 16]),
        };
        let signed_job = Signed::sign(job, &key(9));
        let id = JobId::of(&signed_job);

        let store = tempfile::tempdir().unwrap();
        let mut blobs = BTreeMap::new();
        let mut file = |path: &str, content: &[u8], executable: bool| {
            let hash = ContentHash::of(content);
            let blob = store.path().join(hash.to_hex());
            fs::write(&blob, content).unwrap();
            blobs.insert(hash.to_string(), blob);
            Entry {
                path: path.into(),
                kind: EntryKind::File,
                executable,
                size: content.len() as u64,
                hash: Some(hash),
                target: None,
            }
        };
        let bin_a: Vec<u8> = (0u8..200).collect();
        let mut bin_b = bin_a.clone();
        bin_b[70] = 0xff;
        let same = [
            file("out/bin", &bin_a, false),
            file("out/hello.txt", b"hello from a\nline 2\n", false),
            file("out/tool", b"t", false),
        ];
        let other = [
            file("out/bin", &bin_b, false),
            file("out/extra", b"new", false),
            file("out/hello.txt", b"hello from b\nline 2\n", false),
            file("out/tool", b"t", true),
        ];
        let result = |i: u8, entries: &[Entry]| {
            let manifest = Manifest::new(entries.to_vec());
            BuildResult {
                job: id,
                lease: None,
                node: key(i).node_id(),
                status: BuildStatus::Succeeded,
                tasks: vec![],
                manifest_root: manifest.root(),
                manifest,
                log_hash: ContentHash::of(b""),
                log_size: 0,
                timings: Timings::default(),
                image_hash: ContentHash::of(b"img"),
                arch: "x86_64".into(),
                accel: Accel::Tcg,
                qemu_version: String::new(),
                finished: 0,
                variation: Default::default(),
            }
        };
        let view = |shown_as: u8, signed_by: u8, entries: &[Entry]| ResultView {
            node: key(shown_as).node_id().to_string(),
            status: "succeeded".into(),
            detail: None,
            manifest_root: String::new(),
            log_hash: String::new(),
            log_size: 0,
            total_ms: 0,
            boot_ms: 0,
            run_ms: 0,
            accel: String::new(),
            image_hash: String::new(),
            envelope: hex::encode(
                Signed::sign(result(signed_by, entries), &key(signed_by)).to_bytes(),
            ),
            provenance_sig: None,
            received: 0,
            late: false,
        };
        let detail = JobDetail {
            submitted_ms: None,
            settlement: None,
            job: JobView {
                id: id.to_string(),
                image: "tiny-x86_64".into(),
                arch: "x86_64".into(),
                replicas: 3,
                state: "complete".into(),
                results: 4,
                succeeded: 4,
                created: 0,
                mine: true,
                submitter: String::new(),
                waiting: None,
                verdict: None,
            },
            envelope: hex::encode(signed_job.to_bytes()),
            // Not settled yet: the coordinator's finished leases count.
            leases: [1, 2, 3, 5]
                .map(|i| crate::api::types::LeaseView {
                    node: key(i).node_id().to_string(),
                    granted_ms: None,
                    state: "done".into(),
                    granted: 0,
                    expires: 0,
                })
                .into(),
            results: vec![
                view(1, 1, &same),
                view(2, 2, &same),
                view(3, 3, &other),
                // Node 4's result, passed off as node 5's.
                view(5, 4, &same),
                // Node 6 holds no lease: its result would make `other` the majority's.
                view(6, 6, &other),
                view(7, 7, &other),
            ],
        };
        let client = fake_api(detail, blobs);
        let args = DiffArgs {
            job: id.to_string(),
            json: true,
            max_bytes: DEFAULT_MAX_BYTES,
            policy: None,
        };
        let (report, code) = diff(&client, &args, &Policy::default()).unwrap();
        assert_eq!(code, super::super::exit::DIFFERS);
        assert_eq!(report.verdict, Kind::Differs);
        assert_eq!(report.majority.len(), 2);
        assert!(report.refused.contains_key(&key(5).node_id().to_string()));
        assert_eq!(
            report.ignored[&key(6).node_id().to_string()],
            "the node holds no finished lease of the job"
        );
        assert_eq!(report.minority, vec![key(3).node_id().to_string()]);
        assert!(!report.settled);
        let by_path: BTreeMap<&str, &FileReport> =
            report.files.iter().map(|f| (f.path.as_str(), f)).collect();
        assert_eq!(
            by_path.keys().copied().collect::<Vec<_>>(),
            ["out/bin", "out/extra", "out/hello.txt", "out/tool"]
        );
        let n3 = short_node(&key(3).node_id().to_string());

        let bin = &by_path["out/bin"].comparisons[0];
        assert_eq!(bin.first_difference, Some(70));
        assert!(bin.text_diff.is_none());
        let (hex_a, hex_b) = bin.hex.as_ref().unwrap();
        assert!(
            hex_a.contains(" 46 ") && hex_b.contains(" ff "),
            "{hex_a}{hex_b}"
        );
        assert_eq!(
            by_path["out/bin"]
                .sizes
                .values()
                .copied()
                .collect::<Vec<_>>(),
            [Some(200), Some(200)]
        );

        let hello = &by_path["out/hello.txt"].comparisons[0];
        assert_eq!(hello.first_difference, Some(11));
        let text = hello.text_diff.as_deref().unwrap();
        assert!(
            text.contains("-hello from a\n+hello from b\n line 2\n"),
            "{text}"
        );

        let extra = &by_path["out/extra"];
        assert_eq!(extra.base, "missing");
        assert_eq!(
            extra.comparisons[0].notes,
            [format!(
                "missing on {}, {}; {n3} made a file of 3B",
                short_node(&key(1).node_id().to_string()),
                short_node(&key(2).node_id().to_string())
            )]
        );
        let tool = &by_path["out/tool"].comparisons[0];
        assert!(
            tool.notes[0].starts_with("only the executable bit differs: set on "),
            "{:?}",
            tool.notes
        );
        assert_eq!(tool.first_difference, None);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["files"][2]["comparisons"][0]["first_difference"], 11);
    }
}
