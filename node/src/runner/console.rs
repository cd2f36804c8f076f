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

use barn_protocol::guest::{Mark, parse_mark};

use super::Event;

/// Longest line passed to displays and parsed for markers.
const MAX_LINE: usize = 4096;
/// Lines remembered for error messages.
const TAIL_LINES: usize = 5;

/// What the pump saw.
#[derive(Debug, Default)]
pub struct ConsoleSummary {
    pub dropped: u64,
    pub last_lines: Vec<String>,
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
