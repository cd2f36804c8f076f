//! barn's request-response protocol `/barn/rpc/1`: the [`Request`] and [`Response`] types
//! and their ciborium [`Codec`].
//!
//! Requests and responses carry signed envelope bytes unopened; checking the signature is
//! the caller's job. Each substream carries exactly one message, ended by the writer
//! closing its side, so the frame is "CBOR until end of stream". The reader stops at the
//! limit plus one byte and refuses anything longer with an `InvalidData` error: a message
//! over its limit is never cut short and never read whole. The writer refuses to send an
//! over-limit message (`InvalidInput`), so the sender learns of it as an outbound failure.
//!
//! Limits: a result travels as a request but may be as large as
//! [`MAX_RESPONSE`] (it carries a manifest), so the
//! request frame limit is that plus a few bytes of framing, and each request kind is then
//! held to its own message limit (claims, heartbeats and commits to
//! [`MAX_REQUEST`]).

use std::io;

use barn_protocol::cbor::{self, DecodeError};
use barn_protocol::limits::{MAX_REQUEST, MAX_RESPONSE};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

/// The request-response protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/barn/rpc/1");

/// Bytes of CBOR framing around an envelope (the variant name and byte-string header).
const FRAME_OVERHEAD: usize = 64;

/// Largest request frame read or written.
pub const MAX_REQUEST_FRAME: usize = MAX_RESPONSE + FRAME_OVERHEAD;
/// Largest response frame read or written.
pub const MAX_RESPONSE_FRAME: usize = MAX_RESPONSE + FRAME_OVERHEAD;

/// A request to a peer; each carries the bytes of one signed envelope.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// A signed `Claim`, to a job's coordinator.
    Claim(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A signed `Heartbeat` renewing a lease.
    Heartbeat(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A signed `BuildResult`, to a job's coordinator.
    Result(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A signed commitment.
    Commit(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// A signed `Grant` (which may still deny the claim, with a reason).
    Grant(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Received and accepted.
    Ack,
    /// A commitment received, and results are being taken: send the result now.
    Reveal,
    /// Refused: the typed reason says what the sender should do next
    /// ([`barn_protocol::refusal::NextStep`]); its words are for logs only.
    Refused(barn_protocol::Refusal),
}

impl Request {
    /// The request's kind, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Claim(_) => "claim",
            Request::Heartbeat(_) => "heartbeat",
            Request::Result(_) => "result",
            Request::Commit(_) => "commit",
        }
    }

    /// The envelope bytes carried.
    pub fn envelope(&self) -> &[u8] {
        match self {
            Request::Claim(b) | Request::Heartbeat(b) | Request::Result(b) | Request::Commit(b) => {
                b
            }
        }
    }

    /// The largest envelope this kind of request may carry.
    pub fn limit(&self) -> usize {
        match self {
            Request::Result(_) => MAX_RESPONSE,
            Request::Claim(_) | Request::Heartbeat(_) | Request::Commit(_) => MAX_REQUEST,
        }
    }

    /// The request's wire bytes, refused if over its limit.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        self.check()?;
        Ok(cbor::to_vec(self))
    }

    /// Decodes a request, refusing more than [`MAX_REQUEST_FRAME`] bytes and an envelope
    /// over its kind's limit.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let req: Self = cbor::from_slice(bytes, MAX_REQUEST_FRAME)?;
        req.check()?;
        Ok(req)
    }

    fn check(&self) -> Result<(), DecodeError> {
        let (size, limit) = (self.envelope().len(), self.limit());
        if size > limit {
            return Err(DecodeError::TooLarge { size, limit });
        }
        Ok(())
    }
}

impl Response {
    /// The response's wire bytes, refused if over the limit.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let bytes = cbor::to_vec(self);
        if bytes.len() > MAX_RESPONSE_FRAME {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: MAX_RESPONSE_FRAME,
            });
        }
        Ok(bytes)
    }

    /// Decodes a response, refusing more than [`MAX_RESPONSE_FRAME`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        cbor::from_slice(bytes, MAX_RESPONSE_FRAME)
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Request::{}({} bytes)",
            self.kind(),
            self.envelope().len()
        )
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Response::Grant(b) => write!(f, "Response::Grant({} bytes)", b.len()),
            Response::Ack => f.write_str("Response::Ack"),
            Response::Reveal => f.write_str("Response::Reveal"),
            Response::Refused(r) => write!(f, "Response::Refused({r})"),
        }
    }
}

/// The ciborium codec for `/barn/rpc/1`.
#[derive(Debug, Clone, Default)]
pub struct Codec {
    /// Tests set this to send over-limit requests and prove the reader refuses them.
    #[cfg(test)]
    pub(crate) skip_write_limits: bool,
}

/// Reads to the end of the substream, refusing more than `limit` bytes.
async fn read_limited<T>(io: &mut T, limit: usize, what: &str) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    io.take(cap).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is over the limit of {limit} bytes"),
        ));
    }
    Ok(buf)
}

fn invalid_data(what: &str, e: DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad {what}: {e}"))
}

fn invalid_input(what: &str, e: DecodeError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("refusing to send {what}: {e}"),
    )
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, MAX_REQUEST_FRAME, "request").await?;
        Request::decode(&bytes).map_err(|e| invalid_data("request", e))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, MAX_RESPONSE_FRAME, "response").await?;
        Response::decode(&bytes).map_err(|e| invalid_data("response", e))
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        // Encode synchronously first: nothing borrowed from `req` lives across an await.
        #[cfg(test)]
        let bytes = if self.skip_write_limits {
            Ok(cbor::to_vec(&req))
        } else {
            req.encode()
        };
        #[cfg(not(test))]
        let bytes = req.encode();
        let bytes = bytes.map_err(|e| invalid_input("request", e))?;
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = res.encode().map_err(|e| invalid_input("response", e))?;
        io.write_all(&bytes).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn round_trip_through_the_codec() {
        let mut codec = Codec::default();
        for req in [
            Request::Claim(vec![1, 2, 3]),
            Request::Heartbeat(vec![]),
            Request::Result(vec![9; MAX_RESPONSE]),
            Request::Commit(vec![7; 10]),
        ] {
            let mut wire = Cursor::new(Vec::new());
            block_on(codec.write_request(&PROTOCOL, &mut wire, req.clone())).unwrap();
            let mut back = Cursor::new(wire.into_inner());
            assert_eq!(
                block_on(codec.read_request(&PROTOCOL, &mut back)).unwrap(),
                req
            );
        }
        for res in [
            Response::Grant(vec![5; 100]),
            Response::Ack,
            Response::Refused(barn_protocol::Refusal::Full),
        ] {
            let mut wire = Cursor::new(Vec::new());
            block_on(codec.write_response(&PROTOCOL, &mut wire, res.clone())).unwrap();
            let mut back = Cursor::new(wire.into_inner());
            assert_eq!(
                block_on(codec.read_response(&PROTOCOL, &mut back)).unwrap(),
                res
            );
        }
    }

    #[test]
    fn over_limit_claim_is_refused_on_write_and_on_read() {
        let mut codec = Codec::default();
        let big = Request::Claim(vec![0; MAX_REQUEST + 1]);
        let err =
            block_on(codec.write_request(&PROTOCOL, &mut Cursor::new(Vec::new()), big.clone()))
                .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);

        // A peer that ignores the limit: the reader refuses the claim after decoding the frame.
        let wire = cbor::to_vec(&big);
        let err = block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(wire))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit"), "{err}");
    }

    #[test]
    fn over_limit_frame_is_refused_unread() {
        let mut codec = Codec::default();
        // Twice the frame limit of garbage: the reader stops at limit + 1.
        let wire = vec![0x41u8; 2 * MAX_REQUEST_FRAME];
        let mut cursor = Cursor::new(wire);
        let err = block_on(codec.read_request(&PROTOCOL, &mut cursor)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("over the limit"), "{err}");
        assert_eq!(cursor.position(), MAX_REQUEST_FRAME as u64 + 1);
    }

    #[test]
    fn truncated_message_is_an_error() {
        let mut codec = Codec::default();
        let mut wire = cbor::to_vec(&Request::Claim(vec![1; 100]));
        wire.truncate(50);
        let err = block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(wire))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes);
        }

        #[test]
        fn decoding_mutated_messages_never_panics(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut wire = cbor::to_vec(&Request::Heartbeat(payload));
            let i = flip.index(wire.len());
            wire[i] = byte;
            let _ = Request::decode(&wire);
            let _ = Response::decode(&wire);
        }
    }
}
