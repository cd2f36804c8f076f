//! The cheap, cloneable handle to the node's actor: each call sends a command carrying a
//! oneshot reply and waits for it. The API server holds one.

use barn_protocol::ContentHash;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::view::{Event, FetchResponse, JobDetail, JobView, NodeView, PauseView, StatusView};

/// Events kept for a slow subscriber before it misses some.
pub const EVENT_BUFFER: usize = 256;

/// A request to the actor.
#[derive(Debug)]
pub enum Command {
    Status(oneshot::Sender<StatusView>),
    Nodes(oneshot::Sender<Vec<NodeView>>),
    Jobs(oneshot::Sender<Vec<JobView>>),
    /// A job by full id or unique hex prefix.
    Job(String, oneshot::Sender<Result<JobDetail, String>>),
    /// A signed job envelope to coordinate and announce.
    Submit(Vec<u8>, oneshot::Sender<Result<String, String>>),
    /// Fetch a blob from a peer (by peer id) or any peer that has it.
    Fetch {
        hash: ContentHash,
        node: Option<String>,
        reply: oneshot::Sender<Result<FetchResponse, String>>,
    },
    /// `barn pause`: claim no new job until resumed, across restarts; with `stop`, also
    /// cancel the jobs running now (their leases are released as infrastructure errors).
    Pause {
        stop: bool,
        reply: oneshot::Sender<Result<PauseView, String>>,
    },
    /// `barn resume`: take work again (if the schedule and load limit allow).
    Resume(oneshot::Sender<Result<PauseView, String>>),
}

/// The handle.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
}

/// The actor is gone (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the node is shutting down")]
pub struct Gone;

impl NodeHandle {
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        Self::with_events(tx, broadcast::channel(EVENT_BUFFER).0)
    }

    /// A handle whose event stream is fed by `events` (the actor holds the other side).
    pub fn with_events(tx: mpsc::Sender<Command>, events: broadcast::Sender<Event>) -> Self {
        Self { tx, events }
    }

    /// A new subscription to the node's events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The sending side of the events (for the actor and for tests).
    pub fn events(&self) -> broadcast::Sender<Event> {
        self.events.clone()
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Gone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Gone)?;
        rx.await.map_err(|_| Gone)
    }

    pub async fn status(&self) -> Result<StatusView, Gone> {
        self.call(Command::Status).await
    }
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Gone> {
        self.call(Command::Nodes).await
    }
    pub async fn jobs(&self) -> Result<Vec<JobView>, Gone> {
        self.call(Command::Jobs).await
    }
    pub async fn job(&self, id: String) -> Result<Result<JobDetail, String>, Gone> {
        self.call(|r| Command::Job(id, r)).await
    }
    pub async fn submit(&self, envelope: Vec<u8>) -> Result<Result<String, String>, Gone> {
        self.call(|r| Command::Submit(envelope, r)).await
    }
    pub async fn fetch(
        &self,
        hash: ContentHash,
        node: Option<String>,
    ) -> Result<Result<FetchResponse, String>, Gone> {
        self.call(|reply| Command::Fetch { hash, node, reply })
            .await
    }
    pub async fn pause(&self, stop: bool) -> Result<Result<PauseView, String>, Gone> {
        self.call(|reply| Command::Pause { stop, reply }).await
    }
    pub async fn resume(&self) -> Result<Result<PauseView, String>, Gone> {
        self.call(Command::Resume).await
    }
}
