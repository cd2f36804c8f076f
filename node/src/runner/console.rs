//! The serial console: the job's log, and the guest init's marker lines.
//!
//! Every byte QEMU writes to stdout is drained (a full pipe would stall the guest), the
//! first `cap` bytes are kept in the log file, the rest counted. Lines starting with
//! `barn: ` are the init's markers; a task can print such lines too, so they only drive
//! progress displays, never the result (which comes from the output disk).

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
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
    stdout: Option<impl AsyncRead + Unpin>,
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
                    // Markers drive the phase machine; the runner reads them faster than
                    // a VM prints, and after the run it reads none: never wait on it.
                    let _ = marks.try_send(mark);
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

    /// A console with far more markers than the runner queues, and a runner that reads
    /// none of them (as after its loop): the pump still drains the console to its end.
    #[tokio::test]
    async fn a_flood_of_markers_never_blocks_the_pump() {
        let lines = "barn: ready\n".repeat(20_000);
        let dir = tempfile::tempdir().unwrap();
        let (marks, _unread) = mpsc::channel(256);
        let (events, _unread_events) = mpsc::channel(16);
        let pumped = pump(
            Some(lines.as_bytes()),
            dir.path().join("log"),
            1 << 20,
            marks,
            events,
        );
        let summary = tokio::time::timeout(std::time::Duration::from_secs(10), pumped)
            .await
            .expect("the pump finished");
        assert_eq!(
            summary.last_lines.last().map(String::as_str),
            Some("barn: ready")
        );
    }
}
