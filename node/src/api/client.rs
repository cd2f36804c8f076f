//! The CLI's side of the local API: a small blocking HTTP client that finds a running node
//! through `<data>/api.addr` and `<data>/api.token` and turns answers into the view types.
//!
//! Bounded like everything else: 5 s to connect, 120 s to answer (a fetch may pull a blob
//! from a peer first), 16 MiB per answer. A non-2xx answer becomes an error carrying the
//! server's [`ApiError`] message.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::types::{
    ApiError, FetchRequest, FetchResponse, JobDetail, JobView, NodeView, PauseRequest, PauseView,
    StatusView, SubmitRequest, SubmitResponse,
};

/// The largest answer read.
pub const MAX_RESPONSE: u64 = 16 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A client for one node's local API.
pub struct ApiClient {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ApiClient {
    // Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// The node running with data dir `data`.
    pub fn from_data_dir(data: &Path) -> Result<Self> {
        let addr_path = data.join("api.addr");
        let token_path = data.join("api.token");
        let not_running = || {
            format!(
                "no barn node is running with data dir {} (start one with `barn node`)",
                data.display()
            )
        };
        if !addr_path.exists() {
            bail!(not_running());
        }
        let addr = read_trimmed(&addr_path).with_context(not_running)?;
        let token = read_trimmed(&token_path).with_context(not_running)?;
        Ok(Self::new(&addr, &token))
    }

    /// A client for the API at `addr` (`host:port`) with `token`.
    pub fn new(addr: &str, token: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(ANSWER_TIMEOUT))
            .timeout_recv_body(Some(ANSWER_TIMEOUT))
            .timeout_send_body(Some(ANSWER_TIMEOUT))
            .build()
            .into();
        Self {
            base: format!("http://{addr}"),
            auth: format!("Bearer {token}"),
            agent,
        }
    }

    pub fn status(&self) -> Result<StatusView> {
        self.get("/api/status")
    }

    pub fn nodes(&self) -> Result<Vec<NodeView>> {
        self.get("/api/nodes")
    }

    pub fn jobs(&self) -> Result<Vec<JobView>> {
        self.get("/api/jobs")
    }

    /// A job by full `b3:` id or unique hex prefix.
    pub fn job(&self, id: &str) -> Result<JobDetail> {
        let id = id.trim();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b':') {
            bail!("{id:?} is not a job id (write `b3:<hex>` or a hex prefix)");
        }
        self.get(&format!("/api/jobs/{id}"))
    }

    /// Hands a signed job envelope to the node; returns the job id.
    pub fn submit(&self, envelope: &[u8]) -> Result<String> {
        let req = SubmitRequest {
            envelope: hex::encode(envelope),
        };
        let resp: SubmitResponse = self.post("/api/submit", &req)?;
        Ok(resp.id)
    }

    /// Has the node fetch a blob into its store (from `node`, or any node that has it).
    pub fn fetch(&self, hash: &str, node: Option<&str>) -> Result<FetchResponse> {
        let req = FetchRequest {
            hash: hash.to_string(),
            node: node.map(str::to_string),
        };
        self.post("/api/fetch", &req)
    }

    /// `barn pause`: no new jobs; `stop` also stops the running ones.
    pub fn pause(&self, stop: bool) -> Result<PauseView> {
        self.post("/api/pause", &PauseRequest { stop })
    }

    /// `barn resume`.
    pub fn resume(&self) -> Result<PauseView> {
        self.post("/api/resume", &serde_json::json!({}))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| self.unreachable(e))?;
        self.answer(path, resp)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = serde_json::to_vec(body)?;
        let resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map_err(|e| self.unreachable(e))?;
        self.answer(path, resp)
    }

    fn unreachable(&self, e: ureq::Error) -> anyhow::Error {
        anyhow!(e).context(format!(
            "failed to reach the barn node's API at {} (is `barn node` still running?)",
            self.base
        ))
    }

    fn answer<T: DeserializeOwned>(
        &self,
        path: &str,
        mut resp: ureq::http::Response<ureq::Body>,
    ) -> Result<T> {
        let status = resp.status();
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .with_context(|| format!("failed to read the answer to {path}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(500).collect());
            bail!("{message}");
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("the node's answer to {path} is not what this barn expects"))
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(text.trim().to_string())
}
