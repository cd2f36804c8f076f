//! The cheap, cloneable handle to the node's actor: each call sends a command carrying a
//! oneshot reply and waits for it. The API server holds one.

use barn_protocol::ContentHash;
use tokio::sync::{mpsc, oneshot};

use crate::api::types::{FetchResponse, JobDetail, JobView, NodeView, StatusView};

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
}

/// The handle.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
}

/// The actor is gone (the node is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the node is shutting down")]
pub struct Gone;

impl NodeHandle {
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        Self { tx }
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
}
