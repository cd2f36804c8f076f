//! barn's protocol: everything two barn programs must agree on, byte for byte.
//!
//! This crate is a leaf: synchronous, no networking, no async runtime. It owns
//! - identities ([`NodeId`], [`SubmitterId`], [`SecretKey`]) and their link to libp2p,
//! - content hashes ([`ContentHash`], blake3, shown as `b3:<hex>`),
//! - the canonical CBOR encoding and size-limited decoding ([`cbor`]),
//! - the signed envelope with domain separation ([`envelope`]),
//! - the v1 messages ([`message`]),
//! - output manifests and their root hash ([`manifest`]), read from hostile tar streams
//!   with bounded headers ([`untar`]),
//! - deterministic source packing ([`pack`]),
//! - the job file `barn.toml` ([`jobfile`]),
//! - the guest init's console markers and status record ([`guest`]),
//! - the rule for names that become file names ([`names`]),
//! - symbolic links resolved inside a tree ([`links`]),
//! - strings from peers and guests made safe for a terminal ([`text`]),
//! - typed refusals ([`refusal`]), operators and their certificates ([`operator`]), and
//!   a coordinator's signed settlement of a job ([`settlement`]).
//!
//! `docs/protocol.md` in the repository is the specification these types implement.

pub mod cbor;
pub mod envelope;
pub mod groups;
pub mod guest;
pub mod hash;
pub mod identity;
pub mod jobfile;
pub mod limits;
pub mod links;
pub mod manifest;
pub mod message;
pub mod names;
pub mod operator;
pub mod pack;
pub mod refusal;
pub mod settlement;
pub mod text;
pub mod untar;

pub use envelope::{Envelope, Signed, VerifyError};
pub use hash::ContentHash;
pub use identity::{NodeId, SecretKey, SubmitterId};
pub use message::JobId;
pub use operator::OperatorId;
pub use refusal::Refusal;
