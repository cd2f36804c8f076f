//! Blob transfer over `libp2p-stream`, protocol `/barn/blob/2`: sources, outputs, logs and
//! images go peer to peer in constant memory, resumably, and are verified 1 MiB at a time
//! as they arrive (BLAKE3 verified streaming, [`barn_protocol::groups`]).
//!
//! ```text
//! fetcher → server:  u32 BE length, CBOR BlobRequest { hash, offset }     (≤ 128 bytes)
//!                      offset: a multiple of 1 MiB, at most the size
//! server → fetcher:  u32 BE length, CBOR Header                           (≤ 1 KiB)
//!                      Ok { size }  → then u32 BE length, the group values
//!                                     (32 bytes per MiB, one for a blob ≤ 1 MiB),
//!                                     then exactly size − offset raw bytes, then close
//!                      NotFound | Error(reason) → close
//! ```
//!
//! The fetcher checks that the group values merge to the hash it asked for before it
//! takes a byte, then checks each group when its last byte arrives: a peer sending bad
//! bytes is cut off within one group ([`FetchErrorKind::BadGroup`]), and the whole groups
//! already checked stay in the partial file for the next holder to continue from.
//!
//! [`serve`] accepts inbound streams and answers each from the [`BlobStore`] within
//! [`ServeLimits`]: a stream must send its request within 5 s and holds nothing else
//! until it has (at most 64 are read at once); a valid request then takes one of 8
//! transfers, at most 2 per peer; a reader slower than 32 KiB/s after the first 10 s is
//! dropped. Each refusal is counted in [`ServeStats`]. [`fetch`] writes into a resumable
//! [`BlobWriter`] on a blocking thread fed by a bounded channel,
//! continues a partial download from where it stopped, and renames the file into the store
//! only when its blake3 hash is the one asked for.
//!
//! `Control::open_stream` towards a peer that is not connected can hang: the caller dials
//! the peer first, and [`fetch`] bounds the open with [`OPEN_TIMEOUT`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use barn_protocol::ContentHash;
use barn_protocol::cbor;
use barn_protocol::groups::{self, GROUP, Groups, GroupsError};
use barn_protocol::message::BlobRequest;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::{Semaphore, mpsc};
use tracing::Instrument;

use crate::store::{BlobError, BlobStore, BlobWriter};

/// The stream protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/barn/blob/2");
/// Concurrent transfers a node serves by default.
pub const DEFAULT_MAX_TRANSFERS: usize = 8;
/// Concurrent transfers one peer gets by default.
pub const DEFAULT_PER_PEER: usize = 2;
/// How long opening a stream may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long either side waits for the other to make progress (a request, a header, a
/// chunk read or written) before giving up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest response header.
pub(crate) const MAX_HEADER: usize = 1024;
/// Bytes per read and per chunk handed to the writer thread.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the network and the writer thread (bounds memory to 2 MiB).
const CHUNKS_IN_FLIGHT: usize = 8;

/// The server's answer, before the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Header {
    Ok { size: u64 },
    NotFound,
    Error(String),
}

/// Why a blob could not be fetched from a peer.
#[derive(Debug, thiserror::Error)]
#[error("failed to fetch blob {hash} from {peer}")]
pub struct FetchError {
    pub peer: PeerId,
    pub hash: ContentHash,
    #[source]
    pub kind: FetchErrorKind,
}

/// What went wrong in a [`fetch`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchErrorKind {
    #[error("could not open a stream")]
    Open(#[source] OpenStreamError),
    #[error(
        "no stream opened within {0:?} (is the peer connected directly? blobs never move over a relay)"
    )]
    OpenTimeout(Duration),
    #[error("stream i/o failed")]
    Io(#[source] io::Error),
    #[error("the peer made no progress for {0:?}")]
    Stalled(Duration),
    #[error("the peer broke the blob protocol: {0}")]
    Protocol(String),
    #[error("the peer does not have the blob")]
    NotFound,
    #[error("the peer reported an error: {0}")]
    Remote(String),
    #[error("the blob is {size} bytes, over the limit of {limit}")]
    TooLarge { size: u64, limit: u64 },
    #[error("the stream ended after {got} of {expected} bytes (kept for resuming)")]
    Truncated { got: u64, expected: u64 },
    #[error("the content hashes to {actual}; discarded")]
    Mismatch { actual: ContentHash },
    #[error("the peer's group values do not fit the blob")]
    BadValues(#[source] GroupsError),
    #[error(
        "group {index} (bytes {start}..{end}) does not match its value: the peer sent bad bytes \
         and was cut off; the groups before it are kept"
    )]
    BadGroup { index: u64, start: u64, end: u64 },
    #[error("the local blob store failed")]
    Store(#[source] BlobError),
}

/// Why the blob server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("the blob protocol {PROTOCOL} is already being served")]
    AlreadyServing(#[source] libp2p_stream::AlreadyRegistered),
}

/// What a blob server gives away, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Transfers served at once.
    pub max_transfers: usize,
    /// Transfers served at once to one peer.
    pub per_peer: usize,
    /// Streams whose request is still being read; more are dropped at once.
    pub max_pending: usize,
    /// How long a peer has to send its request after opening a stream, and how long a
    /// valid request waits for a free transfer before it is told the node is busy.
    pub request_timeout: Duration,
    /// The slowest a reader may take bytes (bytes a second, averaged from the start of
    /// the transfer) once `grace` has passed; a slower one is dropped.
    pub min_rate: u64,
    pub grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            max_transfers: DEFAULT_MAX_TRANSFERS,
            per_peer: DEFAULT_PER_PEER,
            max_pending: 64,
            request_timeout: Duration::from_secs(5),
            min_rate: 32 * 1024,
            grace: Duration::from_secs(10),
        }
    }
}

/// What the blob server turned away since it started, by reason (each also logged).
#[derive(Debug, Default)]
pub struct ServeStats {
    pub served: AtomicU64,
    /// A request that did not come within the timeout, or did not decode.
    pub bad_request: AtomicU64,
    /// A stream dropped because too many requests were being read.
    pub pending_full: AtomicU64,
    /// A peer over its share of transfers.
    pub per_peer_limit: AtomicU64,
    /// No transfer free within the request timeout.
    pub busy: AtomicU64,
    /// A reader slower than the minimum rate.
    pub too_slow: AtomicU64,
}

impl ServeStats {
    /// Each reason a request was turned away, with its count.
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        [
            ("bad_request", &self.bad_request),
            ("pending_full", &self.pending_full),
            ("per_peer_limit", &self.per_peer_limit),
            ("busy", &self.busy),
            ("too_slow", &self.too_slow),
        ]
        .into_iter()
        .map(|(why, n)| (why, n.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

/// Registers `/barn/blob/2` on `control` and returns the server loop to spawn. A stream
/// takes a transfer only once its request has been read and checked, so idle streams hold
/// nothing but a pending slot for `request_timeout`; each peer gets at most `per_peer`
/// transfers; a reader slower than `min_rate` is dropped. The loop ends when the swarm is
/// gone.
pub fn serve(
    mut control: Control,
    store: BlobStore,
    limits: ServeLimits,
    stats: Arc<ServeStats>,
) -> Result<impl Future<Output = ()> + Send + 'static, ServeError> {
    let mut incoming = control
        .accept(PROTOCOL)
        .map_err(ServeError::AlreadyServing)?;
    let pending = Arc::new(Semaphore::new(limits.max_pending.max(1)));
    let transfers = Arc::new(Semaphore::new(limits.max_transfers.max(1)));
    let per_peer: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    Ok(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(reading) = pending.clone().try_acquire_owned() else {
                stats.pending_full.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "blob stream dropped: too many requests being read");
                continue;
            };
            let server = Server {
                store: store.clone(),
                limits,
                transfers: transfers.clone(),
                per_peer: per_peer.clone(),
                stats: stats.clone(),
            };
            let span = tracing::debug_span!("blob_serve", %peer);
            tokio::spawn(server.stream(peer, stream, reading).instrument(span));
        }
        tracing::debug!("blob server stopped: no more inbound streams");
    })
}

/// What one served stream shares with the others.
struct Server {
    store: BlobStore,
    limits: ServeLimits,
    transfers: Arc<Semaphore>,
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
    stats: Arc<ServeStats>,
}

/// A peer's share of transfers, given back when dropped.
struct PeerSlot {
    peer: PeerId,
    per_peer: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

impl Server {
    async fn stream(
        self,
        peer: PeerId,
        mut stream: libp2p::Stream,
        reading: tokio::sync::OwnedSemaphorePermit,
    ) {
        let req = read_request(&mut stream, self.limits.request_timeout).await;
        drop(reading);
        let req = match req {
            Ok(req) => req,
            Err(reason) => {
                self.stats.bad_request.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("blob request refused: {reason}");
                let _ = send_header(&mut stream, &Header::Error(reason)).await;
                return;
            }
        };
        let slot = {
            let mut m = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
            let n = m.entry(peer).or_default();
            if *n >= self.limits.per_peer {
                None
            } else {
                *n += 1;
                Some(PeerSlot {
                    peer,
                    per_peer: self.per_peer.clone(),
                })
            }
        };
        let Some(_slot) = slot else {
            self.stats.per_peer_limit.fetch_add(1, Ordering::Relaxed);
            let reason = format!(
                "busy: this peer already has {} transfers from this node",
                self.limits.per_peer
            );
            tracing::debug!("blob request refused: {reason}");
            let _ = send_header(&mut stream, &Header::Error(reason)).await;
            return;
        };
        let permit =
            tokio::time::timeout(self.limits.request_timeout, self.transfers.acquire_owned()).await;
        let Ok(Ok(_permit)) = permit else {
            self.stats.busy.fetch_add(1, Ordering::Relaxed);
            let reason = "busy: every transfer slot is taken".to_string();
            let _ = send_header(&mut stream, &Header::Error(reason)).await;
            return;
        };
        match answer(&mut stream, &self.store, &req, &self.limits).await {
            Ok(()) => {
                self.stats.served.fetch_add(1, Ordering::Relaxed);
            }
            Err(Ended::TooSlow { sent }) => {
                self.stats.too_slow.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    sent,
                    "blob reader dropped: slower than {} bytes/s",
                    self.limits.min_rate
                );
            }
            Err(Ended::Io(e)) => tracing::debug!("blob transfer ended early: {e}"),
        }
    }
}

/// Reads and decodes one request within `limit`; the error is the reason told the peer.
async fn read_request(
    stream: &mut (impl AsyncRead + Unpin),
    limit: Duration,
) -> Result<BlobRequest, String> {
    match tokio::time::timeout(limit, read_frame(stream, BlobRequest::MAX_SIZE)).await {
        Err(_) => Err(format!("no request within {limit:?}")),
        Ok(Err(e)) => Err(format!("bad request: {e}")),
        Ok(Ok(bytes)) => cbor::from_slice::<BlobRequest>(&bytes, BlobRequest::MAX_SIZE)
            .map_err(|e| format!("bad request: {e}")),
    }
}

/// How a transfer ended early.
#[derive(Debug)]
enum Ended {
    Io(io::Error),
    /// The reader took bytes slower than the minimum rate; `sent` bytes had gone.
    TooSlow {
        sent: u64,
    },
}

impl From<io::Error> for Ended {
    fn from(e: io::Error) -> Self {
        Ended::Io(e)
    }
}

/// Answers one request on `stream` (request read by the caller).
#[cfg(test)]
async fn serve_one(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    store: &BlobStore,
) -> io::Result<()> {
    let limits = ServeLimits::default();
    let req = match read_request(&mut stream, limits.request_timeout).await {
        Ok(req) => req,
        Err(reason) => return send_header(&mut stream, &Header::Error(reason)).await,
    };
    match answer(&mut stream, store, &req, &limits).await {
        Ok(()) => Ok(()),
        Err(Ended::Io(e)) => Err(e),
        Err(Ended::TooSlow { .. }) => Err(io::Error::new(io::ErrorKind::TimedOut, "too slow")),
    }
}

/// Sends the header and the bytes asked for. Byte `n` must have been taken by the reader
/// by `grace + n / min_rate` after the start, and every write within [`STALL_TIMEOUT`].
async fn answer(
    stream: &mut (impl AsyncWrite + Unpin),
    store: &BlobStore,
    req: &BlobRequest,
    limits: &ServeLimits,
) -> Result<(), Ended> {
    tracing::debug!(hash = %req.hash.short(), offset = req.offset, "serving blob");
    let path = store.path(&req.hash);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(send_header(stream, &Header::NotFound).await?);
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "failed to open blob: {e}");
            let header = Header::Error("cannot read the blob".into());
            return Ok(send_header(stream, &header).await?);
        }
    };
    let size = file.metadata().await?.len();
    // Served is used: least-recently-used collection keeps what peers still fetch.
    let _ = file.set_modified(std::time::SystemTime::now()).await;
    if req.offset > size {
        let reason = format!("offset {} is past the end ({size} bytes)", req.offset);
        return Ok(send_header(stream, &Header::Error(reason)).await?);
    }
    if !req.offset.is_multiple_of(GROUP) {
        let reason = format!("offset {} is not a multiple of {GROUP}", req.offset);
        return Ok(send_header(stream, &Header::Error(reason)).await?);
    }
    let values = {
        let (store, hash) = (store.clone(), req.hash);
        tokio::task::spawn_blocking(move || store.groups(&hash)).await
    };
    let values = match values {
        Ok(Ok(groups)) => groups.encode(),
        Ok(Err(e @ BlobError::Mismatch { .. })) => {
            // The copy here rotted: never serve it, and let it be fetched again.
            tracing::warn!(hash = %req.hash.short(), "a stored blob is damaged ({e}); removed");
            let _ = store.remove(&req.hash);
            let header = Header::Error("the copy here is damaged".into());
            return Ok(send_header(stream, &header).await?);
        }
        Ok(Err(e)) => {
            tracing::warn!(hash = %req.hash.short(), "failed to hash the blob's groups: {e}");
            let header = Header::Error("cannot read the blob".into());
            return Ok(send_header(stream, &header).await?);
        }
        Err(e) => return Err(Ended::Io(io::Error::other(e.to_string()))),
    };
    send_header(stream, &Header::Ok { size }).await?;
    stalled(write_frame(stream, &values)).await??;
    file.seek(io::SeekFrom::Start(req.offset)).await?;

    let start = tokio::time::Instant::now();
    let min_rate = limits.min_rate.max(1) as f64;
    let mut sent = 0u64;
    let mut left = size - req.offset;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = usize::try_from(left).map_or(CHUNK, |l| l.min(CHUNK));
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(Ended::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob shrank while being served",
            )));
        }
        let due =
            start + limits.grace + Duration::from_secs_f64((sent + n as u64) as f64 / min_rate);
        let by = due.min(tokio::time::Instant::now() + STALL_TIMEOUT);
        match tokio::time::timeout_at(by, stream.write_all(&buf[..n])).await {
            Ok(written) => written?,
            Err(_) if by == due => return Err(Ended::TooSlow { sent }),
            Err(_) => {
                return Err(Ended::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer made no progress",
                )));
            }
        }
        sent += n as u64;
        left -= n as u64;
    }
    stalled(stream.close()).await??;
    Ok(())
}

/// Sends a header; after anything but `Ok` the transfer is over, so the stream is closed.
async fn send_header(stream: &mut (impl AsyncWrite + Unpin), header: &Header) -> io::Result<()> {
    let bytes = cbor::to_vec(header);
    stalled(write_frame(stream, &bytes)).await??;
    if matches!(header, Header::Ok { .. }) {
        return Ok(());
    }
    stalled(stream.close()).await?
}

/// Fetches blob `hash` from `peer` into `store` and returns its path there. Refuses blobs
/// over `max_size` bytes. A download interrupted before (by this or an earlier process)
/// continues from its partial file; bytes that fail verification are deleted.
///
/// The caller must be connected to `peer` (dial first): opening the stream is bounded by
/// [`OPEN_TIMEOUT`], every later step by [`STALL_TIMEOUT`].
pub async fn fetch(
    control: &mut Control,
    peer: PeerId,
    hash: ContentHash,
    store: &BlobStore,
    max_size: u64,
) -> Result<PathBuf, FetchError> {
    let span = tracing::debug_span!("blob_fetch", %peer, hash = %hash.short());
    fetch_inner(control, peer, hash, store, max_size)
        .instrument(span)
        .await
        .map_err(|kind| FetchError { peer, hash, kind })
}

async fn fetch_inner(
    control: &mut Control,
    peer: PeerId,
    hash: ContentHash,
    store: &BlobStore,
    max_size: u64,
) -> Result<PathBuf, FetchErrorKind> {
    if store.has(&hash) {
        return Ok(store.path(&hash));
    }
    let writer = open_writer(store, hash, max_size).await?;
    let offset = writer.offset();

    let mut stream = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, PROTOCOL))
        .await
        .map_err(|_| FetchErrorKind::OpenTimeout(OPEN_TIMEOUT))?
        .map_err(FetchErrorKind::Open)?;

    let request = cbor::to_vec(&BlobRequest { hash, offset });
    stalled_fetch(write_frame(&mut stream, &request))
        .await?
        .map_err(FetchErrorKind::Io)?;
    let header = stalled_fetch(read_frame(&mut stream, MAX_HEADER))
        .await?
        .map_err(FetchErrorKind::Io)?;
    let header: Header = cbor::from_slice(&header, MAX_HEADER)
        .map_err(|e| FetchErrorKind::Protocol(format!("bad header: {e}")))?;
    let size = match header {
        Header::Ok { size } => size,
        Header::NotFound => return Err(FetchErrorKind::NotFound),
        Header::Error(reason) => {
            // Perhaps our partial file is longer than the blob: start afresh next time.
            if offset > 0 {
                writer.discard();
            }
            return Err(FetchErrorKind::Remote(reason));
        }
    };
    if size > max_size {
        writer.discard();
        return Err(FetchErrorKind::TooLarge {
            size,
            limit: max_size,
        });
    }
    if offset > size {
        writer.discard();
        return Err(FetchErrorKind::Protocol(format!(
            "answered offset {offset} with a blob of {size} bytes"
        )));
    }
    let values_limit = groups::count(size) as usize * groups::VALUE_LEN;
    let values = stalled_fetch(read_frame(&mut stream, values_limit))
        .await?
        .map_err(FetchErrorKind::Io)?;
    let values = Groups::decode(&values, size, &hash).map_err(FetchErrorKind::BadValues)?;
    tracing::debug!(size, offset, "receiving blob");

    // The network side reads; a blocking thread checks each group, writes and hashes.
    let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let disk =
        tokio::task::spawn_blocking(move || write_chunks(writer, rx, done_rx, hash, &values));

    let received = receive(&mut stream, size - offset, &tx).await;
    if received.is_ok() {
        // Tell the writer the content is complete; without this it keeps the partial.
        let _ = done_tx.send(());
    }
    drop(tx);
    let written = disk.await.map_err(|e| {
        FetchErrorKind::Store(BlobError::Io {
            op: "join the writer thread for",
            path: store.partial_path(&hash),
            source: io::Error::other(e.to_string()),
        })
    })?;
    match (received, written) {
        // A disk error explains a failed send on the channel better than the send does.
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(())) => Ok(store.path(&hash)),
    }
}

/// Opens a resumable writer, restarting when the partial file is already over the limit.
async fn open_writer(
    store: &BlobStore,
    hash: ContentHash,
    max_size: u64,
) -> Result<BlobWriter, FetchErrorKind> {
    let store = store.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let writer = BlobWriter::resume(&store, hash)?;
        if writer.offset() > max_size {
            writer.discard();
            return BlobWriter::resume(&store, hash);
        }
        Ok(writer)
    })
    .await;
    match joined {
        Ok(result) => result.map_err(FetchErrorKind::Store),
        Err(e) => Err(FetchErrorKind::Store(BlobError::Io {
            op: "re-hash the partial download of",
            path: PathBuf::from(hash.to_string()),
            source: io::Error::other(e.to_string()),
        })),
    }
}

/// Reads exactly `len` bytes from the stream into the channel.
async fn receive(
    stream: &mut (impl AsyncRead + Unpin),
    len: u64,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<(), FetchErrorKind> {
    let mut got = 0u64;
    while got < len {
        let want = usize::try_from(len - got).map_or(CHUNK, |l| l.min(CHUNK));
        let mut buf = vec![0u8; want];
        let n = stalled_fetch(stream.read(&mut buf))
            .await?
            .map_err(FetchErrorKind::Io)?;
        if n == 0 {
            return Err(FetchErrorKind::Truncated { got, expected: len });
        }
        buf.truncate(n);
        got += n as u64;
        if tx.send(buf).await.is_err() {
            // The writer stopped; its own error is reported instead.
            return Ok(());
        }
    }
    Ok(())
}

/// The writer thread: gathers each group, appends it once it matches its value (a group
/// that does not ends the transfer), and finishes (verifies the whole and renames) only
/// when told the content is complete; otherwise the partial file keeps the whole groups
/// for a later resume.
fn write_chunks(
    mut writer: BlobWriter,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut done: tokio::sync::oneshot::Receiver<()>,
    hash: ContentHash,
    values: &Groups,
) -> Result<(), FetchErrorKind> {
    let size = values.size();
    let mut index = writer.offset() / GROUP;
    let mut group = Vec::with_capacity(groups::len_of(size, index) as usize);
    while let Some(chunk) = rx.blocking_recv() {
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            let len = groups::len_of(size, index) as usize;
            let take = (len - group.len()).min(rest.len());
            if take == 0 {
                return Err(FetchErrorKind::Protocol(
                    "more bytes than the blob has".into(),
                ));
            }
            group.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if group.len() == len {
                if !values.check(index, &group) {
                    let start = index * GROUP;
                    return Err(FetchErrorKind::BadGroup {
                        index,
                        start,
                        end: start + len as u64,
                    });
                }
                writer.write_chunk(&group).map_err(FetchErrorKind::Store)?;
                group.clear();
                index += 1;
            }
        }
    }
    if done.try_recv().is_err() {
        return Ok(()); // interrupted: dropping the writer keeps the partial file
    }
    match writer.finish(Some(hash)) {
        Ok(_) => Ok(()),
        Err(BlobError::Mismatch { actual, .. }) => Err(FetchErrorKind::Mismatch { actual }),
        Err(e) => Err(FetchErrorKind::Store(e)),
    }
}

/// Writes one length-prefixed frame.
pub(crate) async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads one length-prefixed frame, refusing one longer than `limit` before reading it.
pub(crate) async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the limit of {limit}"),
        ));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn stalled<T>(f: impl Future<Output = T>) -> io::Result<T> {
    tokio::time::timeout(STALL_TIMEOUT, f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer made no progress"))
}

async fn stalled_fetch<T>(f: impl Future<Output = T>) -> Result<T, FetchErrorKind> {
    tokio::time::timeout(STALL_TIMEOUT, f)
        .await
        .map_err(|_| FetchErrorKind::Stalled(STALL_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request served over an in-memory duplex pipe, without a swarm.
    async fn serve_over_pipe(
        store: &BlobStore,
        req: &BlobRequest,
    ) -> (Header, Option<Vec<u8>>, Vec<u8>) {
        use tokio_util_compat::Compat;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let store2 = store.clone();
        let server = tokio::spawn(async move {
            let _ = serve_one(Compat::new(server), &store2).await;
        });
        let mut client = Compat::new(client);
        write_frame(&mut client, &cbor::to_vec(req)).await.unwrap();
        let header = read_frame(&mut client, MAX_HEADER).await.unwrap();
        let header: Header = cbor::from_slice(&header, MAX_HEADER).unwrap();
        let values = match header {
            Header::Ok { .. } => Some(read_frame(&mut client, 1 << 20).await.unwrap()),
            _ => None,
        };
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        server.await.unwrap();
        (header, values, rest)
    }

    /// A minimal tokio → futures I/O adapter for the pipe tests.
    mod tokio_util_compat {
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Compat<T>(T);

        impl<T> Compat<T> {
            pub fn new(inner: T) -> Self {
                Self(inner)
            }
        }

        impl<T: tokio::io::AsyncRead + Unpin> futures::AsyncRead for Compat<T> {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<std::io::Result<usize>> {
                let mut rb = tokio::io::ReadBuf::new(buf);
                match Pin::new(&mut self.0).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }

        impl<T: tokio::io::AsyncWrite + Unpin> futures::AsyncWrite for Compat<T> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<std::io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_close(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<std::io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
    }

    #[tokio::test]
    async fn serves_group_values_and_bytes_from_a_group_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let size = 2 * GROUP + GROUP / 2;
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        let hash = store.import_bytes(&data).unwrap();

        let (header, values, rest) =
            serve_over_pipe(&store, &BlobRequest { hash, offset: 0 }).await;
        assert_eq!(header, Header::Ok { size });
        let values = Groups::decode(&values.unwrap(), size, &hash).unwrap();
        assert_eq!(values.len(), 3);
        assert!(rest == data, "whole blob served");

        let (header, _, rest) = serve_over_pipe(
            &store,
            &BlobRequest {
                hash,
                offset: GROUP,
            },
        )
        .await;
        assert_eq!(header, Header::Ok { size });
        assert!(rest == data[GROUP as usize..], "tail served");

        for (offset, says) in [(99_000, "not a multiple"), (3 * GROUP, "past the end")] {
            let (header, _, _) = serve_over_pipe(&store, &BlobRequest { hash, offset }).await;
            assert!(
                matches!(&header, Header::Error(r) if r.contains(says)),
                "{header:?}"
            );
        }

        let missing = ContentHash::of(b"missing");
        let (header, _, _) = serve_over_pipe(
            &store,
            &BlobRequest {
                hash: missing,
                offset: 0,
            },
        )
        .await;
        assert_eq!(header, Header::NotFound);
    }

    #[tokio::test]
    async fn oversized_request_frame_is_refused() {
        let (client, server) = tokio::io::duplex(1024);
        let mut server = tokio_util_compat::Compat::new(server);
        let mut client = tokio_util_compat::Compat::new(client);
        client.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
        let err = read_frame(&mut server, BlobRequest::MAX_SIZE)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
