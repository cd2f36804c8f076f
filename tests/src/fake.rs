//! A stand-in for a running node's local API, for the commands that read one job (`barn
//! verify`, `fetch`, `diff`, `attest export`): it answers `GET /api/jobs/…` with a job
//! detail the test made, so what a verifier counts can be tested on the real binary with
//! signed results no farm would produce (duplicates, strays, forged settlements).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

/// A data directory whose `api.addr` and `api.token` point at the stand-in.
#[derive(Debug)]
pub struct FakeNode {
    dir: tempfile::TempDir,
}

impl FakeNode {
    /// Serves `detail` (a `JobDetail` as JSON) for any job id, on loopback, until the test
    /// process ends.
    #[expect(clippy::expect_used, reason = "test helpers fail loudly")]
    pub fn serving(detail: serde_json::Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let body = detail.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let Ok(read_half) = conn.try_clone() else {
                    continue;
                };
                let mut reader = BufReader::new(read_half);
                let mut request = String::new();
                let mut len = 0usize;
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut skip = vec![0u8; len.min(1 << 20)];
                let _ = reader.read_exact(&mut skip);
                let (status, answer) = if request.starts_with("GET /api/jobs/") {
                    ("200 OK", body.as_str())
                } else {
                    ("404 Not Found", r#"{"error":"not in this stand-in"}"#)
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("api.addr"), addr.to_string()).expect("write api.addr");
        std::fs::write(dir.path().join("api.token"), "token").expect("write api.token");
        Self { dir }
    }

    /// The data directory to pass as `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}
