//! The serial console: the job's log, and the guest init's marker lines.
//!
//! Every byte QEMU writes to stdout is drained (a full pipe would stall the guest), the
//! first `cap` bytes are kept in the log file, the rest counted. Lines starting with
//! `barn: ` are the init's markers; a task can print such lines too, so they only drive
//! progress displays, never the result (which comes from the output disk).

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdout;
use tokio::sync::mpsc;

use super::Event;

/// Longest line passed to displays and parsed for markers.
const MAX_LINE: usize = 4096;
/// Lines remembered for error messages.
const TAIL_LINES: usize = 5;

/// A marker line from the guest init.
#[derive(Debug)]
pub enum Mark {
    Ready,
    /// The init applied the replica's variations.
    Vary,
    TaskStart(String),
    TaskExit(String, i32, u64),
    Result,
}

/// What the pump saw.
#[derive(Debug, Default)]
pub struct ConsoleSummary {
    pub dropped: u64,
    pub last_lines: Vec<String>,
}

fn parse_mark(line: &str) -> Option<Mark> {
    let rest = line.trim_end_matches('\r').strip_prefix("barn: ")?;
    let words: Vec<&str> = rest.split(' ').collect();
    match words.as_slice() {
        ["ready", ..] => Some(Mark::Ready),
        ["vary", ..] => Some(Mark::Vary),
        ["task", name, "start"] => Some(Mark::TaskStart(name.to_string())),
        ["task", name, "exit", rc, "ms", ms] => Some(Mark::TaskExit(
            name.to_string(),
            rc.parse().ok()?,
            ms.parse().ok()?,
        )),
        ["result", ..] => Some(Mark::Result),
        _ => None,
    }
}

/// Copies the console to `log_path` (up to `cap` bytes), sending marks and log lines.
pub async fn pump(
    stdout: Option<ChildStdout>,
    log_path: PathBuf,
    cap: u64,
    marks: mpsc::Sender<Mark>,
    events: mpsc::Sender<Event>,
) -> ConsoleSummary {
    let mut summary = ConsoleSummary::default();
    let Ok(mut log) = tokio::fs::File::create(&log_path).await else {
        return summary;
    };
    let Some(mut stdout) = stdout else {
        return summary;
    };
    let mut kept = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let room = cap.saturating_sub(kept).min(n as u64) as usize;
        if room > 0 && log.write_all(&chunk[..room]).await.is_ok() {
            kept += room as u64;
        }
        summary.dropped += (n - room) as u64;
        for &b in chunk {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                line.clear();
                if let Some(mark) = parse_mark(&text) {
                    let _ = marks.send(mark).await;
                }
                if summary.last_lines.len() == TAIL_LINES {
                    summary.last_lines.remove(0);
                }
                summary.last_lines.push(text.chars().take(200).collect());
                let _ = events.try_send(Event::Log(text));
            } else if line.len() < MAX_LINE {
                line.push(b);
            }
        }
    }
    let _ = log.flush().await;
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_parse() {
        assert!(matches!(
            parse_mark("barn: ready ms 1200"),
            Some(Mark::Ready)
        ));
        assert!(
            matches!(parse_mark("barn: task 000-build start"), Some(Mark::TaskStart(n)) if n == "000-build")
        );
        assert!(matches!(
            parse_mark("barn: task 000-build exit 2 ms 30\r"),
            Some(Mark::TaskExit(_, 2, 30))
        ));
        assert!(parse_mark("hello barn: ready").is_none());
    }
}
