//! The job file `barn.toml` at the root of a source tree, parsed into [`JobSpec`]s (one per
//! architecture).
//!
//! Errors name the file, the line and the key, e.g.
//! `barn.toml:7: resources.memory: "512XB" is not a size (write e.g. 512MiB or 2GiB)`.
//! Unknown keys are errors: a misspelt `artifact` would otherwise silently collect nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::limits::{MAX_ARTIFACT_GLOBS, MAX_ENV_VARS, MAX_JOB_FILE, MAX_TASK_SCRIPT, MAX_TASKS};
use crate::message::{JobSpec, Resources, Task};

/// The job file's name.
pub const FILE_NAME: &str = "barn.toml";
/// `source_date_epoch` when the file gives none: 1980-01-01T00:00:00Z.
pub const DEFAULT_EPOCH: u64 = 315_532_800;
/// `timeout` when the file gives none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 30 * 60;
/// `replicas` when the file gives none.
pub const DEFAULT_REPLICAS: u8 = 3;
/// Most replicas a job may ask for.
pub const MAX_REPLICAS: u8 = 16;
/// Environment variables the guest sets itself; a job may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "SOURCE_DATE_EPOCH",
    "TZ",
    "LC_ALL",
    "HOME",
    "USER",
    "PATH",
    "PWD",
    "SHELL",
];

/// A job-file error with its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct JobFileError {
    pub file: String,
    /// 1-based; 0 when the error has no place in the file (e.g. it could not be read).
    pub line: usize,
    /// Dotted key, empty when unknown.
    pub key: String,
    pub message: String,
}

impl fmt::Display for JobFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    image: Option<Spanned<String>>,
    arch: Option<Spanned<String>>,
    archs: Option<Spanned<Vec<String>>>,
    timeout: Option<Spanned<String>>,
    replicas: Option<Spanned<i64>>,
    source_date_epoch: Option<Spanned<i64>>,
    artifacts: Option<Spanned<Vec<String>>>,
    resources: Option<RawResources>,
    env: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    task: Option<Spanned<Vec<Spanned<RawTask>>>>,
    tiebreak: Option<bool>,
    vary: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpus: Option<Spanned<i64>>,
    memory: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    name: Spanned<String>,
    run: Spanned<String>,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> JobFileError {
        JobFileError {
            file: self.file.to_string(),
            line: span.map(|s| self.line_of(&s)).unwrap_or(0),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// Reads and parses a job file, refusing files over [`MAX_JOB_FILE`] bytes.
pub fn load(path: &Path) -> Result<Vec<JobSpec>, JobFileError> {
    let name = path.display().to_string();
    let fail = |message: String| JobFileError {
        file: name.clone(),
        line: 0,
        key: String::new(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let mut text = String::new();
    file.take(MAX_JOB_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_JOB_FILE {
        return Err(fail(format!("file is larger than {MAX_JOB_FILE} bytes")));
    }
    parse(&text, &name)
}

/// Parses the text of a job file; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<JobSpec>, JobFileError> {
    let cx = Ctx { file, text };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().to_string();
        let key = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
            .unwrap_or_default()
            .to_string();
        cx.err(e.span(), &key, message)
    })?;

    let image = raw.image.ok_or_else(|| {
        cx.err(
            None,
            "image",
            "missing; name an image, e.g. image = \"tiny-x86_64\"",
        )
    })?;
    let image_name = image.get_ref().trim();
    if let Err(e) = crate::names::check_image_name(image_name) {
        return Err(cx.err(Some(image.span()), "image", e.to_string()));
    }

    let archs: Vec<(String, Range<usize>)> = match (raw.arch, raw.archs) {
        (Some(a), None) => vec![(a.get_ref().clone(), a.span())],
        (None, Some(list)) => list
            .get_ref()
            .iter()
            .map(|a| (a.clone(), list.span()))
            .collect(),
        (None, None) => {
            return Err(cx.err(
                None,
                "arch",
                "missing; write arch = \"x86_64\" or archs = [\"x86_64\", …]",
            ));
        }
        (Some(a), Some(_)) => {
            return Err(cx.err(
                Some(a.span()),
                "arch",
                "give either `arch` or `archs`, not both",
            ));
        }
    };
    if archs.is_empty() {
        return Err(cx.err(None, "archs", "the list is empty"));
    }
    let mut seen_arch = BTreeSet::new();
    for (a, span) in &archs {
        if !valid_name(a) {
            return Err(cx.err(
                Some(span.clone()),
                "arch",
                format!("{a:?} is not an architecture name"),
            ));
        }
        if !seen_arch.insert(a.clone()) {
            return Err(cx.err(
                Some(span.clone()),
                "archs",
                format!("{a:?} is listed twice"),
            ));
        }
    }

    let timeout_secs = match raw.timeout {
        None => DEFAULT_TIMEOUT_SECS,
        Some(t) => {
            let secs = parse_duration(t.get_ref()).ok_or_else(|| {
                cx.err(
                    Some(t.span()),
                    "timeout",
                    format!(
                        "{:?} is not a duration (write e.g. 90s, 10m, 1h30m)",
                        t.get_ref()
                    ),
                )
            })?;
            if !(1..=48 * 3600).contains(&secs) {
                return Err(cx.err(Some(t.span()), "timeout", "must be between 1s and 48h"));
            }
            secs
        }
    };

    let replicas = match raw.replicas {
        None => DEFAULT_REPLICAS,
        Some(r) => u8::try_from(*r.get_ref())
            .ok()
            .filter(|n| (1..=MAX_REPLICAS).contains(n))
            .ok_or_else(|| {
                cx.err(
                    Some(r.span()),
                    "replicas",
                    format!("must be between 1 and {MAX_REPLICAS}"),
                )
            })?,
    };

    let source_date_epoch = match raw.source_date_epoch {
        None => DEFAULT_EPOCH,
        Some(e) => u64::try_from(*e.get_ref()).map_err(|_| {
            cx.err(
                Some(e.span()),
                "source_date_epoch",
                "must be a non-negative number of seconds",
            )
        })?,
    };

    let artifacts = match raw.artifacts {
        None => Vec::new(),
        Some(list) => {
            if list.get_ref().len() > MAX_ARTIFACT_GLOBS {
                return Err(cx.err(
                    Some(list.span()),
                    "artifacts",
                    format!("at most {MAX_ARTIFACT_GLOBS} globs"),
                ));
            }
            for g in list.get_ref() {
                check_glob(g)
                    .map_err(|m| cx.err(Some(list.span()), "artifacts", format!("{g:?}: {m}")))?;
            }
            list.into_inner()
        }
    };

    let mut resources = Resources::default();
    if let Some(r) = raw.resources {
        if let Some(c) = r.cpus {
            resources.cpus = u32::try_from(*c.get_ref())
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or_else(|| {
                    cx.err(Some(c.span()), "resources.cpus", "must be between 1 and 64")
                })?;
        }
        if let Some(m) = r.memory {
            resources.memory_bytes = size_in(&cx, &m, "resources.memory", 64 << 20, 64 << 30)?;
        }
        if let Some(d) = r.disk {
            resources.disk_bytes = size_in(&cx, &d, "resources.disk", 1 << 20, 1 << 40)?;
        }
    }

    let mut env = BTreeMap::new();
    if let Some(e) = raw.env {
        if e.get_ref().len() > MAX_ENV_VARS {
            return Err(cx.err(
                Some(e.span()),
                "env",
                format!("at most {MAX_ENV_VARS} variables"),
            ));
        }
        for (k, v) in e.into_inner() {
            let key = format!("env.{k}");
            if !valid_env_name(&k) {
                return Err(cx.err(
                    Some(v.span()),
                    &key,
                    "a variable name is letters, digits and `_`, not starting with a digit",
                ));
            }
            if RESERVED_ENV.contains(&k.as_str()) || k.starts_with("BARN_") {
                return Err(cx.err(
                    Some(v.span()),
                    &key,
                    "is set by the guest and cannot be overridden",
                ));
            }
            if v.get_ref().len() > 4096 || v.get_ref().contains(['\0', '\n', '\r']) {
                return Err(cx.err(
                    Some(v.span()),
                    &key,
                    "value must be under 4 KiB, on one line, with no NUL byte",
                ));
            }
            env.insert(k, v.into_inner());
        }
    }

    let vary = match raw.vary {
        None => Vec::new(),
        Some(v) => {
            let mut seen = BTreeSet::new();
            for d in v.get_ref() {
                if !crate::message::VARIATIONS.contains(&d.as_str()) {
                    let known = crate::message::VARIATIONS.join(", ");
                    return Err(cx.err(
                        Some(v.span()),
                        "vary",
                        format!("{d:?} is not a variation; barn varies {known}"),
                    ));
                }
                if !seen.insert(d.clone()) {
                    return Err(cx.err(Some(v.span()), "vary", format!("{d:?} is listed twice")));
                }
            }
            v.into_inner()
        }
    };

    let raw_tasks = raw
        .task
        .ok_or_else(|| cx.err(None, "task", "no [[task]]; a job needs at least one"))?;
    if raw_tasks.get_ref().is_empty() {
        return Err(cx.err(
            Some(raw_tasks.span()),
            "task",
            "no [[task]]; a job needs at least one",
        ));
    }
    if raw_tasks.get_ref().len() > MAX_TASKS {
        return Err(cx.err(
            Some(raw_tasks.span()),
            "task",
            format!("at most {MAX_TASKS} tasks"),
        ));
    }
    let mut tasks = Vec::new();
    let mut names = BTreeSet::new();
    for (i, t) in raw_tasks.into_inner().into_iter().enumerate() {
        let t = t.into_inner();
        let key = format!("task[{i}]");
        let name = t.name.get_ref().clone();
        if !valid_name(&name) || name.len() > 64 {
            return Err(cx.err(
                Some(t.name.span()),
                &format!("{key}.name"),
                "must be 1–64 letters, digits, `.`, `_` or `-`",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(cx.err(
                Some(t.name.span()),
                &format!("{key}.name"),
                format!("{name:?} is used by an earlier task"),
            ));
        }
        let run = t.run.get_ref();
        if run.trim().is_empty() || run.len() > MAX_TASK_SCRIPT || run.contains('\0') {
            return Err(cx.err(
                Some(t.run.span()),
                &format!("{key}.run"),
                format!("must be a non-empty script under {MAX_TASK_SCRIPT} bytes"),
            ));
        }
        tasks.push(Task {
            name,
            run: run.clone(),
        });
    }

    Ok(archs
        .into_iter()
        .map(|(arch, _)| JobSpec {
            image: image_name.to_string(),
            arch,
            tasks: tasks.clone(),
            env: env.clone(),
            artifacts: artifacts.clone(),
            resources,
            timeout_secs,
            replicas,
            source_date_epoch,
            tiebreak: raw.tiebreak.unwrap_or(false),
            vary: vary.clone(),
        })
        .collect())
}

/// Checks a job spec received from a peer against the rules the job-file parser enforces,
/// so that a hand-made job cannot ask a volunteer for more than a job file could.
pub fn validate(spec: &JobSpec) -> Result<(), String> {
    let fail = |m: String| Err(m);
    if !valid_name(&spec.image) || !valid_name(&spec.arch) {
        return fail("image and arch must be names".into());
    }
    if spec.tasks.is_empty() || spec.tasks.len() > MAX_TASKS {
        return fail(format!("a job has 1 to {MAX_TASKS} tasks"));
    }
    let mut names = BTreeSet::new();
    for t in &spec.tasks {
        if !valid_name(&t.name) || t.name.len() > 64 || !names.insert(&t.name) {
            return fail(format!("task name {:?} is invalid or repeated", t.name));
        }
        if t.run.trim().is_empty() || t.run.len() > MAX_TASK_SCRIPT || t.run.contains('\0') {
            return fail(format!(
                "task {:?} has an empty or oversized script",
                t.name
            ));
        }
    }
    if spec.env.len() > MAX_ENV_VARS {
        return fail(format!("at most {MAX_ENV_VARS} environment variables"));
    }
    for (k, v) in &spec.env {
        if !valid_env_name(k) || RESERVED_ENV.contains(&k.as_str()) || k.starts_with("BARN_") {
            return fail(format!("environment variable {k:?} is not allowed"));
        }
        if v.len() > 4096 || v.contains(['\0', '\n', '\r']) {
            return fail(format!("environment variable {k:?} has a bad value"));
        }
    }
    if spec.artifacts.len() > MAX_ARTIFACT_GLOBS {
        return fail(format!("at most {MAX_ARTIFACT_GLOBS} artifact globs"));
    }
    for g in &spec.artifacts {
        check_glob(g).map_err(|m| format!("artifact glob {g:?}: {m}"))?;
    }
    let r = &spec.resources;
    if !(1..=64).contains(&r.cpus)
        || !((64 << 20)..=(64 << 30)).contains(&r.memory_bytes)
        || !((1 << 20)..=(1 << 40)).contains(&r.disk_bytes)
    {
        return fail("resources out of range".into());
    }
    if !(1..=48 * 3600).contains(&spec.timeout_secs) || !(1..=MAX_REPLICAS).contains(&spec.replicas)
    {
        return fail("timeout or replicas out of range".into());
    }
    let mut seen = BTreeSet::new();
    for d in &spec.vary {
        if !crate::message::VARIATIONS.contains(&d.as_str()) || !seen.insert(d) {
            return fail(format!("variation {d:?} is unknown or repeated"));
        }
    }
    Ok(())
}

fn size_in(
    cx: &Ctx<'_>,
    v: &Spanned<String>,
    key: &str,
    min: u64,
    max: u64,
) -> Result<u64, JobFileError> {
    let n = parse_size(v.get_ref()).ok_or_else(|| {
        cx.err(
            Some(v.span()),
            key,
            format!(
                "{:?} is not a size (write e.g. 512MiB or 2GiB)",
                v.get_ref()
            ),
        )
    })?;
    if !(min..=max).contains(&n) {
        return Err(cx.err(
            Some(v.span()),
            key,
            format!("must be between {} and {}", show_size(min), show_size(max)),
        ));
    }
    Ok(n)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= 128
}

fn check_glob(g: &str) -> Result<(), String> {
    if g.is_empty() || g.len() > 256 {
        return Err("a glob is 1–256 characters".into());
    }
    if g.starts_with('/') || g.split('/').any(|c| c == "..") {
        return Err("globs are relative to /build/src and may not contain `..`".into());
    }
    globset::Glob::new(g)
        .map(|_| ())
        .map_err(|e| e.kind().to_string())
}

/// Parses `90s`, `10m`, `1h30m`, `2h`, or plain seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    (any && num.is_empty()).then_some(total)
}

/// Parses `512MiB`, `2GiB`, `100MB`, `64k`, or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Shows a byte count in binary units, e.g. `512MiB`.
pub fn show_size(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (m, u) in UNITS {
        if n >= m && n.is_multiple_of(m) {
            return format!("{}{u}", n / m);
        }
    }
    for (m, u) in UNITS {
        if n >= m {
            return format!("{:.1}{u}", n as f64 / m as f64);
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
image = "tiny-x86_64"            # an image name the farm knows
arch = "x86_64"
timeout = "10m"
replicas = 3
source_date_epoch = 1700000000
artifacts = ["out/*"]

[resources]
cpus = 1
memory = "512MiB"
disk = "1GiB"

[env]
GREETING = "hello"

[[task]]
name = "build"
run = "mkdir -p out && echo \"$GREETING\" > out/hello.txt"
"#;

    #[test]
    fn design_example_parses() {
        let specs = parse(EXAMPLE, "barn.toml").unwrap();
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.image, "tiny-x86_64");
        assert_eq!(s.timeout_secs, 600);
        assert_eq!(s.resources.memory_bytes, 512 << 20);
        assert_eq!(s.resources.disk_bytes, 1 << 30);
        assert_eq!(s.env["GREETING"], "hello");
        assert_eq!(s.tasks[0].name, "build");
        assert_eq!(s.source_date_epoch, 1_700_000_000);
    }

    #[test]
    fn archs_make_one_spec_each() {
        let text = EXAMPLE.replace("arch = \"x86_64\"", "archs = [\"x86_64\", \"s390x\"]");
        let specs = parse(&text, "barn.toml").unwrap();
        assert_eq!(
            specs.iter().map(|s| s.arch.as_str()).collect::<Vec<_>>(),
            ["x86_64", "s390x"]
        );
    }

    fn err(text: &str) -> String {
        parse(text, "barn.toml").unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err(&EXAMPLE.replace("\"512MiB\"", "\"512XB\""));
        assert_eq!(
            e,
            "barn.toml:11: resources.memory: \"512XB\" is not a size (write e.g. 512MiB or 2GiB)"
        );
        let e = err(&EXAMPLE.replace("artifacts =", "artefacts ="));
        assert!(
            e.starts_with("barn.toml:7: artefacts: unknown field `artefacts`"),
            "{e}"
        );
        let e = err(&EXAMPLE.replace("timeout = \"10m\"", "timeout = \"ten minutes\""));
        assert!(
            e.starts_with("barn.toml:4: timeout: \"ten minutes\" is not a duration"),
            "{e}"
        );
        let e = err(&EXAMPLE.replace("replicas = 3", "replicas = 0"));
        assert_eq!(e, "barn.toml:5: replicas: must be between 1 and 16");
        let e = err(&EXAMPLE.replace("GREETING", "TZ"));
        assert!(
            e.starts_with("barn.toml:15: env.TZ: is set by the guest"),
            "{e}"
        );
        let e = err(&EXAMPLE.replace(
            "image = \"tiny-x86_64\"            # an image name the farm knows\n",
            "",
        ));
        assert!(e.starts_with("barn.toml: image: missing"), "{e}");
        let e = err(
            "image = \"x\"\narch = \"x86_64\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n[[task]]\nname = \"a\"\nrun = \"true\"\n",
        );
        assert!(e.starts_with("barn.toml:7: task[1].name:"), "{e}");
        let e = err("image = [\n");
        assert!(e.starts_with("barn.toml:1"), "{e}");
        let e = err(&EXAMPLE.replace("out/*", "../x"));
        assert!(e.contains("artifacts") && e.contains("`..`"), "{e}");
    }

    #[test]
    fn parsed_specs_validate_and_out_of_range_ones_do_not() {
        let mut spec = parse(EXAMPLE, "barn.toml").unwrap().remove(0);
        assert_eq!(validate(&spec), Ok(()));
        spec.resources.disk_bytes = 2 << 40;
        assert!(validate(&spec).is_err());
        let mut spec = parse(EXAMPLE, "barn.toml").unwrap().remove(0);
        spec.env.insert("TZ".into(), "x".into());
        assert!(validate(&spec).is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("1h30m"), Some(5400));
        assert_eq!(parse_duration("45"), Some(45));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("100MB"), Some(100_000_000));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(show_size(512 << 20), "512MiB");
    }
}
