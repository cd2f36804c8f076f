//! The contract between the guest init (`images/guest/init`) and the host's runner: the
//! marker lines the init prints on the serial console, the `status` record it writes on
//! the output disk, and the names of task files.
//!
//! Everything here is parsed from bytes a hostile guest controls: parsers return `None`
//! or an error for anything they do not understand, never panic, and never allocate more
//! than a bounded multiple of their input (they are fuzzed: `fuzz/`).
//!
//! ```text
//! console:  barn: ready ms <uptime>            status:  version 1
//!           barn: vary …                                task <NAME> <RC> <MS>
//!           barn: task <NAME> start                     oom <NAME> <VICTIM>
//!           barn: task <NAME> exit <RC> ms <MS>         result ok | result failed <NAME>
//!           barn: result ok | failed <NAME>             unmatched <GLOB>
//!                                                       output overflow
//! ```

/// The most bytes of a `status` record the host reads.
pub const MAX_STATUS: u64 = 64 * 1024;

/// A marker line from the guest init. Markers drive progress displays and the phase
/// machine's transitions; the result itself comes from the output disk.
/// Exhaustive on purpose: a new marker must be handled by the runner's phase machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    /// The input is unpacked and the first task is next.
    Ready,
    /// The init applied the replica's variations.
    Vary,
    TaskStart(String),
    TaskExit {
        name: String,
        exit_code: i32,
        duration_ms: u64,
    },
    /// The tasks are over; the output is being written.
    Result,
}

/// Parses one console line (without its newline) as a marker.
pub fn parse_mark(line: &str) -> Option<Mark> {
    let rest = line.trim_end_matches('\r').strip_prefix("barn: ")?;
    let mut words = rest.split(' ');
    let first = words.next()?;
    let words: Vec<&str> = words.take(6).collect();
    match (first, words.as_slice()) {
        ("ready", _) => Some(Mark::Ready),
        ("vary", _) => Some(Mark::Vary),
        ("task", [name, "start"]) => Some(Mark::TaskStart(name.to_string())),
        ("task", [name, "exit", rc, "ms", ms]) => Some(Mark::TaskExit {
            name: name.to_string(),
            exit_code: rc.parse().ok()?,
            duration_ms: ms.parse().ok()?,
        }),
        ("result", _) => Some(Mark::Result),
        _ => None,
    }
}

/// The index of a task file name `NNN-name` (as the host writes them into the input).
pub fn task_index(file_name: &str) -> Option<usize> {
    file_name
        .get(..3)?
        .parse()
        .ok()
        .filter(|_| file_name.as_bytes().get(3) == Some(&b'-'))
}

/// What the guest's `status` record says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStatus {
    /// (task index, exit code, duration in ms), in the order run.
    pub tasks: Vec<(usize, i32, u64)>,
    /// Tasks during which the guest kernel's OOM killer ended a process: (task index,
    /// the killed process's name as the kernel reported it).
    pub oom: Vec<(usize, String)>,
    /// `Some(true)` for `result ok`, `Some(false)` for `result failed …`.
    pub ok: Option<bool>,
    /// Artifact globs that matched nothing.
    pub unmatched: Vec<String>,
    /// The artifacts did not fit the output disk.
    pub overflow: bool,
}

/// Why a status record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the guest's status record is malformed at `{line}`")]
pub struct StatusError {
    /// The offending line, cut to 100 characters.
    pub line: String,
}

/// The most lines of each repeated kind kept from a status record (tasks are bounded by
/// the job file's own limit, which is lower).
const MAX_STATUS_ITEMS: usize = 1024;

/// Parses the text of `status`. Unknown lines are skipped (newer guests may add some).
pub fn parse_status(text: &str) -> Result<GuestStatus, StatusError> {
    let mut st = GuestStatus::default();
    let bad = |l: &str| StatusError {
        line: l.chars().take(100).collect(),
    };
    for line in text.lines() {
        let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
        let words: Vec<&str> = rest.splitn(4, ' ').collect();
        match (first, words.as_slice()) {
            ("task", [name, rc, ms]) => {
                let idx = task_index(name).ok_or_else(|| bad(line))?;
                if st.tasks.len() >= MAX_STATUS_ITEMS {
                    return Err(bad(line));
                }
                st.tasks.push((
                    idx,
                    rc.parse().map_err(|_| bad(line))?,
                    ms.parse().map_err(|_| bad(line))?,
                ));
            }
            ("oom", [name, ..]) => {
                let idx = task_index(name).ok_or_else(|| bad(line))?;
                if st.oom.len() < MAX_STATUS_ITEMS {
                    let victim = rest.split_once(' ').map_or("", |(_, v)| v);
                    st.oom.push((idx, victim.chars().take(64).collect()));
                }
            }
            ("result", ["ok"]) => st.ok = Some(true),
            ("result", ["failed", ..]) => st.ok = Some(false),
            ("unmatched", _) if !rest.is_empty() && st.unmatched.len() < MAX_STATUS_ITEMS => {
                st.unmatched.push(rest.chars().take(200).collect());
            }
            ("output", ["overflow"]) => st.overflow = true,
            _ => {} // "version 1", "artifacts N", "rejected …" and lines from newer guests
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse() {
        assert_eq!(parse_mark("barn: ready ms 1200"), Some(Mark::Ready));
        assert_eq!(
            parse_mark("barn: task 000-build start"),
            Some(Mark::TaskStart("000-build".into()))
        );
        assert_eq!(
            parse_mark("barn: task 000-build exit 2 ms 30\r"),
            Some(Mark::TaskExit {
                name: "000-build".into(),
                exit_code: 2,
                duration_ms: 30
            })
        );
        assert_eq!(parse_mark("hello barn: ready"), None);
        assert_eq!(parse_mark("barn: "), None);
        assert_eq!(parse_mark("barn: task x exit 99999999999 ms 1"), None);
    }

    #[test]
    fn status_parses() {
        let st = parse_status(
            "version 1\ntask 000-build 0 120\ntask 001-check 137 5\noom 001-check cc1plus\n\
             result failed 001-check\nunmatched out/*.deb\nartifacts 1\n",
        )
        .unwrap();
        assert_eq!(st.tasks, vec![(0, 0, 120), (1, 137, 5)]);
        assert_eq!(st.oom, vec![(1, "cc1plus".to_string())]);
        assert_eq!(st.ok, Some(false));
        assert_eq!(st.unmatched, vec!["out/*.deb".to_string()]);
        assert!(parse_status("task nonsense 0 1\n").is_err());
    }

    #[test]
    fn odd_status_lines_never_panic() {
        // `unmatched` alone once panicked the host (slicing past the end of the line).
        for text in [
            "unmatched",
            "unmatched ",
            "oom",
            "oom 000-x",
            "task",
            "result",
            " ",
            "\n\n",
        ] {
            let _ = parse_status(text);
        }
        assert!(parse_status("unmatched").unwrap().unmatched.is_empty());
        assert_eq!(
            parse_status("oom 000-x").unwrap().oom,
            vec![(0, String::new())]
        );
    }

    #[test]
    fn task_names() {
        assert_eq!(task_index("001-check"), Some(1));
        assert_eq!(task_index("x01-check"), None);
        assert_eq!(task_index("00"), None);
        assert_eq!(task_index("é01-x"), None);
    }
}
