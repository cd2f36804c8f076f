//! The local API server: axum over HTTP/1 on a loopback listener the daemon binds.
//!
//! It owns the routes, the checks every request passes and the translation of the actor's
//! answers into JSON; it holds no state of its own beyond a [`NodeHandle`] and the token.
//!
//! ```text
//! request ─▶ loopback peer? (403) ─▶ body ≤ 1 MiB (413)
//!              ├─ GET /                 ?token=… checked, page with the token embedded
//!              └─ /api/*, /metrics      Authorization: Bearer <token> (401) ─▶ handler ─▶ actor
//! ```
//!
//! | route | answer |
//! |---|---|
//! | `GET /api/status` | [`StatusView`] |
//! | `GET /api/nodes` | `[NodeView]` |
//! | `GET /api/jobs` | `[JobView]` |
//! | `GET /api/jobs/{id}` | [`JobDetail`]; 404 for an unknown or ambiguous id |
//! | `POST /api/submit` | [`SubmitRequest`] → [`SubmitResponse`]; 400 if the node refuses it |
//! | `POST /api/fetch` | [`FetchRequest`] → [`FetchResponse`]; 502 if no peer delivered it |
//! | `POST /api/pause` | [`PauseRequest`] → [`PauseView`]; 500 if the paused flag cannot be kept |
//! | `POST /api/resume` | [`PauseView`]; 500 likewise |
//! | `GET /api/events` | server-sent events: one [`Event`](crate::api::types::Event) a message, named by its kind |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /` | the web page (`page.html`) |
//!
//! Every error is an [`ApiError`] JSON body; 503 means the node is shutting down.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use barn_protocol::{ContentHash, NodeId};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::api::types::{
    ApiError, FetchRequest, FetchResponse, JobDetail, JobView, NodeView, PauseRequest, PauseView,
    StatusView, SubmitRequest, SubmitResponse,
};
use crate::daemon::handle::{Gone, NodeHandle};

/// The largest request body accepted (a hex job envelope is far smaller).
pub const MAX_BODY: usize = 1024 * 1024;

/// The web page; `__BARN_TOKEN__` is replaced with the token as a JSON string.
const PAGE: &str = include_str!("page.html");
const TOKEN_SLOT: &str = "\"__BARN_TOKEN__\"";

/// What every handler shares.
#[derive(Debug, Clone)]
struct AppState {
    handle: NodeHandle,
    token: Arc<str>,
    /// Ends the event streams, which would otherwise hold a graceful shutdown open.
    shutdown: CancellationToken,
}

/// Serves the API on `listener` until `shutdown` fires, then finishes the requests in
/// flight and returns.
pub async fn serve(
    handle: NodeHandle,
    listener: tokio::net::TcpListener,
    token: String,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr()
        && !addr.ip().to_canonical().is_loopback()
    {
        tracing::warn!(%addr, "the local API listens beyond loopback; only loopback peers are served");
    }
    let app = router(AppState {
        handle,
        token: token.into(),
        shutdown: shutdown.clone(),
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/status", get(status))
        .route("/api/nodes", get(nodes))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/submit", post(submit))
        .route("/api/fetch", post(fetch))
        .route("/api/pause", post(pause))
        .route("/api/resume", post(resume))
        .route("/api/events", get(events))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/", get(page))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(loopback_only))
        .with_state(state)
}

/// `GET /api/events`: the node's events as server-sent events until the client leaves or
/// the node stops; a subscriber that falls behind gets a `lagged` event with the count of
/// events it missed.
async fn events(
    State(state): State<AppState>,
) -> Sse<impl futures::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let rx = state.handle.subscribe();
    let stream =
        futures::stream::unfold((rx, state.shutdown.clone()), |(mut rx, stop)| async move {
            let next = tokio::select! {
                _ = stop.cancelled() => return None,
                r = rx.recv() => r,
            };
            let event = match next {
                Ok(ev) => SseEvent::default()
                    .event(ev.name())
                    .data(serde_json::to_string(&ev).unwrap_or_default()),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    SseEvent::default().event("lagged").data(n.to_string())
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event), (rx, stop)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// An error answer: a status and the message of an [`ApiError`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl From<Gone> for Failure {
    fn from(e: Gone) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<JsonRejection> for Failure {
    // Keeps the rejection's status (400, 413, 415, 422) but answers in JSON.
    fn from(e: JsonRejection) -> Self {
        let message = match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("request body is over the limit of {MAX_BODY} bytes")
            }
            _ => e.body_text(),
        };
        Self::new(e.status(), message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ApiError {
                error: self.message,
            }),
        )
            .into_response()
    }
}

type ApiResult<T> = Result<Json<T>, Failure>;

/// Refuses peers that are not on this machine, whatever address the listener has.
async fn loopback_only(req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    match peer {
        Some(p) if p.ip().to_canonical().is_loopback() => next.run(req).await,
        _ => Failure::new(
            StatusCode::FORBIDDEN,
            "the barn API answers only on loopback",
        )
        .into_response(),
    }
}

/// Checks `Authorization: Bearer <token>` in constant time.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|t| token_matches(&state.token, t)) {
        return next.run(req).await;
    }
    let mut resp = Failure::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API token: send `Authorization: Bearer <token>` with the token \
         from the node's data dir (api.token)",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

fn token_matches(expected: &str, given: &str) -> bool {
    // Lengths may differ in time; the token's length is no secret.
    bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn status(State(s): State<AppState>) -> ApiResult<StatusView> {
    Ok(Json(s.handle.status().await?))
}

async fn nodes(State(s): State<AppState>) -> ApiResult<Vec<NodeView>> {
    Ok(Json(s.handle.nodes().await?))
}

async fn jobs(State(s): State<AppState>) -> ApiResult<Vec<JobView>> {
    Ok(Json(s.handle.jobs().await?))
}

async fn job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<JobDetail> {
    s.handle
        .job(id)
        .await?
        .map(Json)
        .map_err(|e| Failure::new(StatusCode::NOT_FOUND, e))
}

async fn submit(
    State(s): State<AppState>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> ApiResult<SubmitResponse> {
    let Json(req) = body?;
    let envelope = hex::decode(req.envelope.trim()).map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("the envelope is not hex: {e}"),
        )
    })?;
    s.handle
        .submit(envelope)
        .await?
        .map(|id| Json(SubmitResponse { id }))
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))
}

async fn fetch(
    State(s): State<AppState>,
    body: Result<Json<FetchRequest>, JsonRejection>,
) -> ApiResult<FetchResponse> {
    let Json(req) = body?;
    let hash: ContentHash = req.hash.parse().map_err(|e| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a content hash: {e}", req.hash),
        )
    })?;
    if let Some(node) = &req.node {
        node.parse::<NodeId>().map_err(|e| {
            Failure::new(
                StatusCode::BAD_REQUEST,
                format!("{node:?} is not a node id: {e}"),
            )
        })?;
    }
    // The actor's error means no peer delivered the blob: an upstream failure.
    s.handle
        .fetch(hash, req.node)
        .await?
        .map(Json)
        .map_err(|e| Failure::new(StatusCode::BAD_GATEWAY, e))
}

async fn pause(
    State(s): State<AppState>,
    body: Result<Json<PauseRequest>, JsonRejection>,
) -> ApiResult<PauseView> {
    let Json(req) = body?;
    s.handle
        .pause(req.stop)
        .await?
        .map(Json)
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn resume(State(s): State<AppState>) -> ApiResult<PauseView> {
    s.handle
        .resume()
        .await?
        .map(Json)
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    token: Option<String>,
}

/// The web page. It needs the token in its address (`/?token=…`, as `barn node` prints
/// it) and embeds it for its own requests; the token is embedded only once it matched, so
/// nothing a visitor types reaches the page.
async fn page(State(s): State<AppState>, Query(q): Query<PageQuery>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The token is in the address: do not send it anywhere else, do not be framed, load
    // nothing from outside.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; base-uri 'none'; form-action 'none'",
        ),
    );
    let Some(token) = q.token.filter(|t| token_matches(&s.token, t)) else {
        return (
            StatusCode::UNAUTHORIZED,
            headers,
            Html(
                "<!doctype html><meta charset=utf-8><title>barn</title>\
                 <p>Open this page with <code>?token=…</code> as <code>barn node</code> \
                 prints it; the token is in the node's data dir, <code>api.token</code>.</p>",
            ),
        )
            .into_response();
    };
    (headers, Html(render_page(&token))).into_response()
}

fn render_page(token: &str) -> String {
    // A JSON string inside a <script>: escape `<` so it can never close the element.
    let literal = serde_json::Value::from(token)
        .to_string()
        .replace('<', "\\u003c");
    PAGE.replace(TOKEN_SLOT, &literal)
}

/// `GET /metrics`: gauges built from the status, node and job views.
async fn metrics(State(s): State<AppState>) -> Result<Response, Failure> {
    let status = s.handle.status().await?;
    let nodes = s.handle.nodes().await?;
    let jobs = s.handle.jobs().await?;
    let text = render_metrics(&status, &nodes, &jobs);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// The job states a [`JobView`] can have; each gets a series, zero or not.
const JOB_STATES: [&str; 5] = ["open", "running", "complete", "expired", "seen"];

fn render_metrics(status: &StatusView, nodes: &[NodeView], jobs: &[JobView]) -> String {
    let mut m = Metrics::default();
    m.family("barn_info", "This node: its peer id and version.");
    m.sample(
        "barn_info",
        &[("node", &status.node), ("version", &status.version)],
        1,
    );
    m.gauge("barn_peers", "Connected peers.", status.peers as u64);
    m.gauge(
        "barn_slots",
        "VM slots this node offers.",
        status.slots.into(),
    );
    m.gauge(
        "barn_free_slots",
        "VM slots free on this node.",
        status.free_slots.into(),
    );
    m.gauge(
        "barn_known_nodes",
        "Nodes known from their adverts, this one included.",
        nodes.len() as u64,
    );
    m.family("barn_jobs", "Jobs this node knows, by state.");
    for state in JOB_STATES {
        let n = jobs.iter().filter(|j| j.state == state).count();
        m.sample("barn_jobs", &[("state", state)], n as u64);
    }
    for other in jobs
        .iter()
        .map(|j| j.state.as_str())
        .filter(|s| !JOB_STATES.contains(s))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let n = jobs.iter().filter(|j| j.state == other).count();
        m.sample("barn_jobs", &[("state", other)], n as u64);
    }
    m.gauge(
        "barn_jobs_coordinated",
        "Jobs this node coordinates.",
        jobs.iter().filter(|j| j.mine).count() as u64,
    );
    m.gauge(
        "barn_results_total",
        "Signed results held for the jobs this node knows.",
        jobs.iter().map(|j| j.results as u64).sum(),
    );
    m.gauge(
        "barn_results_succeeded_total",
        "Succeeded results held for the jobs this node knows.",
        jobs.iter().map(|j| j.succeeded as u64).sum(),
    );
    m.family(
        "barn_node_agreements",
        "Replicas on which a node agreed with the majority.",
    );
    for n in nodes {
        m.sample("barn_node_agreements", &[("node", &n.node)], n.agreements);
    }
    m.family(
        "barn_node_disagreements",
        "Replicas on which a node disagreed with the majority.",
    );
    for n in nodes {
        m.sample(
            "barn_node_disagreements",
            &[("node", &n.node)],
            n.disagreements,
        );
    }
    m.counter_family(
        "barn_rejected_total",
        "Messages, requests and peers this node turned away since it started, by kind (gossip: rejected and its sender penalised; gossip_ignored: dropped without penalty; request: an RPC refused; peer: disconnected or turned away), topic and reason.",
    );
    for r in &status.rejected {
        let mut labels = vec![("kind", r.kind.as_str()), ("reason", r.reason.as_str())];
        if let Some(t) = &r.topic {
            labels.push(("topic", t.as_str()));
        }
        m.sample("barn_rejected_total", &labels, r.count);
    }
    m.counter_family(
        "barn_hole_punches_total",
        "Hole punches (DCUtR) through NATs since the node started, by result: ok made a direct connection, failed left the peers on a relay.",
    );
    m.sample(
        "barn_hole_punches_total",
        &[("result", "ok")],
        status.holes_punched,
    );
    m.sample(
        "barn_hole_punches_total",
        &[("result", "failed")],
        status.holes_failed,
    );
    m.out
}

/// A Prometheus text-format writer (gauges, and counters).
#[derive(Debug, Default)]
struct Metrics {
    out: String,
}

impl Metrics {
    fn family(&mut self, name: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} gauge");
    }

    fn counter_family(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} counter");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let body: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", body.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, help);
        self.sample(name, &[], value);
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;
    use crate::api::client::ApiClient;
    use crate::api::types::{JobView, LeaseView};
    use crate::daemon::handle::Command;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn job_id() -> String {
        format!("b3:{}", "ab".repeat(32))
    }

    fn job_view(state: &str) -> JobView {
        JobView {
            waiting: None,
            verdict: None,
            id: job_id(),
            image: "tiny-x86_64".into(),
            arch: "x86_64".into(),
            replicas: 3,
            state: state.into(),
            results: 2,
            succeeded: 1,
            created: 1,
            mine: true,
            submitter: "ed25519:00".into(),
        }
    }

    /// Answers the actor's commands the way a small farm would.
    async fn fake_actor(mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Status(r) => {
                    let _ = r.send(StatusView {
                        store_errors: 0,
                        node: "12D3KooWselfnode".into(),
                        version: "0.1.0".into(),
                        listen: vec![],
                        peers: 2,
                        slots: 4,
                        free_slots: 3,
                        accel: "tcg".into(),
                        images: BTreeMap::new(),
                        paused: false,
                        unavailable: vec![],
                        rejected: vec![crate::view::Rejection {
                            kind: "gossip".into(),
                            topic: Some("jobs".into()),
                            reason: "not_from_coordinator".into(),
                            count: 7,
                        }],
                        reachability: "public".into(),
                        holes_punched: 1,
                        holes_failed: 0,
                    });
                }
                Command::Nodes(r) => {
                    let node = |id: &str| NodeView {
                        node: id.into(),
                        is_self: false,
                        connected: true,
                        version: "0.1.0".into(),
                        archs: vec!["x86_64 (tcg)".into()],
                        cpus: 2,
                        memory_bytes: 1 << 30,
                        free_slots: 1,
                        total_slots: 1,
                        images: BTreeMap::new(),
                        addrs: vec![],
                        last_seen: 1,
                        agreements: 5,
                        disagreements: 1,
                        unavailable: vec![],
                    };
                    let _ = r.send(vec![node("12D3KooWselfnode"), node("12D3KooWother\"1")]);
                }
                Command::Jobs(r) => {
                    let _ = r.send(vec![
                        job_view("open"),
                        job_view("complete"),
                        job_view("complete"),
                    ]);
                }
                Command::Job(id, r) => {
                    let answer = if id == job_id() || job_id()[3..].starts_with(&id) {
                        Ok(JobDetail {
                            settlement: None,
                            submitted_ms: None,
                            job: job_view("running"),
                            envelope: String::new(),
                            leases: vec![LeaseView {
                                granted_ms: None,
                                node: "12D3KooWselfnode".into(),
                                state: "active".into(),
                                granted: 1,
                                expires: 2,
                            }],
                            results: vec![],
                        })
                    } else {
                        Err(format!("no job matches {id}"))
                    };
                    let _ = r.send(answer);
                }
                Command::Submit(bytes, r) => {
                    let _ = r.send(if bytes == b"job" {
                        Ok(job_id())
                    } else {
                        Err("the envelope is not a signed job".into())
                    });
                }
                Command::Fetch { reply, .. } => {
                    let _ = reply.send(Err("no peer has the blob".into()));
                }
                Command::Pause { stop, reply } => {
                    let _ = reply.send(Ok(PauseView {
                        paused: true,
                        stopped: if stop { vec![job_id()] } else { vec![] },
                        running: if stop { vec![] } else { vec![job_id()] },
                        unavailable: vec!["paused".into()],
                    }));
                }
                Command::Resume(reply) => {
                    let _ = reply.send(Err("failed to remove /data/paused".into()));
                }
            }
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    async fn start() -> Server {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(fake_actor(rx));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            NodeHandle::new(tx),
            listener,
            TOKEN.into(),
            stop.clone(),
        ));
        Server { addr, stop, task }
    }

    /// One raw HTTP/1.1 exchange; returns the status and the body.
    async fn raw(addr: SocketAddr, head: &str, body: Vec<u8>) -> (u16, String) {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (mut rd, mut wr) = conn.split();
        let send = async {
            // The server may answer and close before reading a refused body.
            let _ = wr.write_all(req.as_bytes()).await;
            let _ = wr.write_all(&body).await;
        };
        let mut out = Vec::new();
        let recv = async {
            let _ = rd.read_to_end(&mut out).await;
        };
        tokio::join!(send, recv);
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn auth() -> String {
        format!("Authorization: Bearer {TOKEN}")
    }

    #[tokio::test]
    async fn events_stream_as_server_sent_events() {
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(fake_actor(rx));
        let handle = NodeHandle::new(tx);
        let events = handle.events();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(handle, listener, TOKEN.into(), stop.clone()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /api/events HTTP/1.1\r\nHost: {addr}\r\n{}\r\n\r\n",
            auth()
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        // Publish until the subscription is there, then read the event off the stream.
        let mut seen = String::new();
        let mut buf = vec![0u8; 4096];
        for _ in 0..50 {
            let _ = events.send(crate::api::types::Event::JobSettled {
                job: "b3:ab".into(),
                verdict: "reproducible".into(),
            });
            if let Ok(Ok(n)) =
                tokio::time::timeout(std::time::Duration::from_millis(100), conn.read(&mut buf))
                    .await
            {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
            if seen.contains("event: job_settled") {
                break;
            }
        }
        assert!(seen.contains("text/event-stream"), "{seen}");
        assert!(seen.contains("event: job_settled"), "{seen}");
        assert!(seen.contains("\"verdict\":\"reproducible\""), "{seen}");
        // Stopping the node ends the stream, so the shutdown is not held open.
        stop.cancel();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        assert!(
            done.is_ok(),
            "the server did not stop with an event stream open"
        );
    }

    #[tokio::test]
    async fn requests_need_the_token() {
        let s = start().await;
        let (code, body) = raw(s.addr, "GET /api/status HTTP/1.1", vec![]).await;
        assert_eq!(code, 401);
        assert!(body.contains("missing or wrong API token"), "{body}");
        let wrong = format!("GET /api/status HTTP/1.1\r\nAuthorization: Bearer {TOKEN}0");
        assert_eq!(raw(s.addr, &wrong, vec![]).await.0, 401);
        let (code, _) = raw(s.addr, "GET /metrics HTTP/1.1", vec![]).await;
        assert_eq!(code, 401);
        let (code, body) = raw(
            s.addr,
            &format!("GET /api/status HTTP/1.1\r\n{}", auth()),
            vec![],
        )
        .await;
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"free_slots\":3"), "{body}");

        // The CLI's client, with the token and without.
        let addr = s.addr.to_string();
        let (status, refused) = tokio::task::spawn_blocking(move || {
            (
                ApiClient::new(&addr, TOKEN).status(),
                ApiClient::new(&addr, "nope").nodes(),
            )
        })
        .await
        .unwrap();
        assert_eq!(status.unwrap().peers, 2);
        assert!(refused.unwrap_err().to_string().contains("API token"));
    }

    #[tokio::test]
    async fn unknown_job_is_404_with_the_actors_message() {
        let s = start().await;
        let (code, body) = raw(
            s.addr,
            &format!("GET /api/jobs/ffff HTTP/1.1\r\n{}", auth()),
            vec![],
        )
        .await;
        assert_eq!(code, 404);
        let err: ApiError = serde_json::from_str(&body).unwrap();
        assert_eq!(err.error, "no job matches ffff");

        let addr = s.addr.to_string();
        let (found, missing) = tokio::task::spawn_blocking(move || {
            let c = ApiClient::new(&addr, TOKEN);
            (c.job("abab"), c.job("ffff"))
        })
        .await
        .unwrap();
        assert_eq!(found.unwrap().job.id, job_id());
        assert_eq!(missing.unwrap_err().to_string(), "no job matches ffff");
    }

    #[tokio::test]
    async fn submit_and_fetch_map_errors() {
        let s = start().await;
        let addr = s.addr.to_string();
        let (ok, refused, fetched, bad_hash) = tokio::task::spawn_blocking(move || {
            let c = ApiClient::new(&addr, TOKEN);
            let hash = ContentHash::of(b"x").to_string();
            (
                c.submit(b"job"),
                c.submit(b"other"),
                c.fetch(&hash, None),
                c.fetch("b3:zz", None),
            )
        })
        .await
        .unwrap();
        assert_eq!(ok.unwrap(), job_id());
        assert_eq!(
            refused.unwrap_err().to_string(),
            "the envelope is not a signed job"
        );
        assert_eq!(fetched.unwrap_err().to_string(), "no peer has the blob");
        assert!(
            bad_hash
                .unwrap_err()
                .to_string()
                .contains("is not a content hash")
        );

        let hash = ContentHash::of(b"x");
        let body = format!(r#"{{"hash":"{hash}","node":null}}"#).into_bytes();
        let head = format!(
            "POST /api/fetch HTTP/1.1\r\n{}\r\nContent-Type: application/json",
            auth()
        );
        assert_eq!(raw(s.addr, &head, body).await.0, 502);
        let head = format!(
            "POST /api/submit HTTP/1.1\r\n{}\r\nContent-Type: application/json",
            auth()
        );
        let (code, body) = raw(s.addr, &head, br#"{"envelope":"xyz"}"#.to_vec()).await;
        assert_eq!(code, 400);
        assert!(body.contains("not hex"), "{body}");
    }

    #[tokio::test]
    async fn pause_and_resume_reach_the_actor_and_map_errors() {
        let s = start().await;
        let addr = s.addr.to_string();
        let (finish, stop, resumed) = tokio::task::spawn_blocking(move || {
            let c = ApiClient::new(&addr, TOKEN);
            (c.pause(false), c.pause(true), c.resume())
        })
        .await
        .unwrap();
        let finish = finish.unwrap();
        assert!(finish.paused && finish.stopped.is_empty());
        assert_eq!(finish.running, vec![job_id()]);
        assert_eq!(stop.unwrap().stopped, vec![job_id()]);
        assert_eq!(
            resumed.unwrap_err().to_string(),
            "failed to remove /data/paused"
        );
        let head = format!("POST /api/resume HTTP/1.1\r\n{}", auth());
        assert_eq!(raw(s.addr, &head, vec![]).await.0, 500);
        let head = "POST /api/pause HTTP/1.1\r\nContent-Type: application/json";
        assert_eq!(raw(s.addr, head, b"{}".to_vec()).await.0, 401);
    }

    #[tokio::test]
    async fn oversized_submit_is_refused() {
        let s = start().await;
        let mut body = br#"{"envelope":""#.to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_BODY + 16));
        body.extend(br#""}"#);
        let head = format!(
            "POST /api/submit HTTP/1.1\r\n{}\r\nContent-Type: application/json",
            auth()
        );
        let (code, body) = raw(s.addr, &head, body).await;
        assert_eq!(code, 413, "{body}");
        assert!(body.contains("over the limit"), "{body}");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let s = start().await;
        let (code, body) = raw(
            s.addr,
            &format!("GET /metrics HTTP/1.1\r\n{}", auth()),
            vec![],
        )
        .await;
        assert_eq!(code, 200);
        for line in [
            "# HELP barn_peers Connected peers.",
            "# TYPE barn_peers gauge",
            "barn_peers 2",
            "barn_free_slots 3",
            "barn_slots 4",
            "barn_known_nodes 2",
            "barn_jobs{state=\"open\"} 1",
            "barn_jobs{state=\"complete\"} 2",
            "barn_jobs{state=\"expired\"} 0",
            "barn_results_total 6",
            "barn_results_succeeded_total 3",
            "barn_info{node=\"12D3KooWselfnode\",version=\"0.1.0\"} 1",
            "barn_node_agreements{node=\"12D3KooWother\\\"1\"} 5",
            "# TYPE barn_rejected_total counter",
            "barn_rejected_total{kind=\"gossip\",reason=\"not_from_coordinator\",topic=\"jobs\"} 7",
        ] {
            assert!(
                body.lines().any(|l| l == line),
                "missing {line:?} in\n{body}"
            );
        }
    }

    #[tokio::test]
    async fn page_needs_the_token_and_embeds_it() {
        let s = start().await;
        let (code, body) = raw(s.addr, "GET / HTTP/1.1", vec![]).await;
        assert_eq!(code, 401);
        assert!(!body.contains(TOKEN));
        let (code, _) = raw(s.addr, "GET /?token=%3Cscript%3E HTTP/1.1", vec![]).await;
        assert_eq!(code, 401);
        let (code, body) = raw(s.addr, &format!("GET /?token={TOKEN} HTTP/1.1"), vec![]).await;
        assert_eq!(code, 200);
        assert!(
            body.contains(&format!("const TOKEN = \"{TOKEN}\";")),
            "{body}"
        );
        assert!(!body.contains("__BARN_TOKEN__"));
        let (code, body) = raw(s.addr, &format!("GET /nope HTTP/1.1\r\n{}", auth()), vec![]).await;
        assert_eq!(code, 404);
        assert!(body.contains("no such endpoint"));
    }

    #[tokio::test]
    async fn stops_when_cancelled() {
        let s = start().await;
        s.stop.cancel();
        let done = tokio::time::timeout(std::time::Duration::from_secs(5), s.task).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
        assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
    }

    #[test]
    fn client_explains_a_missing_node() {
        let dir = tempfile::tempdir().unwrap();
        let err = ApiClient::from_data_dir(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("no barn node is running with data dir"),
            "{err}"
        );
        assert!(err.contains("barn node"), "{err}");
    }
}
