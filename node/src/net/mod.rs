//! The node's networking: the libp2p swarm and everything spoken over it.
//!
//! - [`swarm`]: [`build_swarm`] (identity = node key, TCP + noise + yamux, QUIC with the
//!   `quic` feature), [`NetConfig`], the gossip topic names;
//! - [`behaviour`]: the composed [`Behaviour`] (gossipsub, request-response, Kademlia,
//!   identify, ping, libp2p-stream, relay client and server, DCUtR, AutoNAT v2,
//!   optional mDNS) and its [`BehaviourEvent`];
//! - [`codec`]: the `/barn/rpc/1` [`Request`]/[`Response`] types and their size-limited
//!   ciborium codec;
//! - [`peerbook`]: peers remembered across restarts and the redialling of lost bootstrap
//!   peers;
//! - [`ratelimit`]: per-peer request rates and bans for flooding peers;
//! - [`reach`]: reachability (confirmed addresses, AutoNAT's answers) and when to reserve
//!   a slot on a relay;
//! - [`direct`]: [`direct::DirectOnly`], which keeps blob streams off relayed connections;
//! - [`blobs`]: blob transfer over `/barn/blob/2` streams, checked 1 MiB at a time ([`blobs::serve`],
//!   [`blobs::fetch`]).
//!
//! This module has no task of its own: the daemon's actor owns the swarm, polls it in its
//! `select!` loop, and spawns the blob server with a `libp2p_stream::Control` taken from
//! `swarm.behaviour().stream.new_control()`.

pub mod behaviour;
pub mod blobs;
pub mod codec;
pub mod direct;
pub mod peerbook;
pub mod ratelimit;
pub mod reach;
pub mod swarm;

pub use behaviour::{Behaviour, BehaviourEvent};
pub use codec::{Request, Response};
pub use swarm::{
    NetConfig, NetError, TOPIC_ADVERTS, TOPIC_JOBS, TOPIC_RESULTS, build_swarm, topic,
};

#[cfg(test)]
mod tests;
