//! Building the swarm: the node's ed25519 key as the libp2p identity (so the `PeerId` is
//! the node id), tokio, TCP with nodelay + noise + yamux, QUIC with the `quic` feature,
//! the composed [`Behaviour`], and an idle connection timeout long enough that peers
//! outside the gossip mesh are not dropped every 10 s.
//!
//! The swarm does nothing unless polled: the daemon's actor owns it and polls it in its
//! `select!` loop.

use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, gossipsub, noise, tcp, yamux};

use super::behaviour::Behaviour;

/// Gossip topic of signed `NodeAdvert`s.
pub const TOPIC_ADVERTS: &str = "barn/adverts/1";
/// Gossip topic of signed `Job` announcements.
pub const TOPIC_JOBS: &str = "barn/jobs/1";
/// Gossip topic of settled results (published with their job's settlement).
pub const TOPIC_RESULTS: &str = "barn/results/1";
/// Gossip topic of coordinators' signed settlements.
pub const TOPIC_SETTLEMENTS: &str = "barn/settlements/1";

/// How long a connection with no open streams stays up.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(120);

/// The gossipsub topic with one of the names above.
pub fn topic(name: &str) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(name)
}

/// Where to listen and whom to meet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/4100`. None: outbound only.
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start; those ending in `/p2p/<peer id>` also seed Kademlia.
    pub bootstrap: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS (needs the `mdns` feature).
    pub mdns: bool,
    /// Serve as a circuit relay for peers behind NAT (`node.relay`).
    pub relay: bool,
    /// Addresses this node is known to be reachable at (`node.external_addrs`).
    pub external_addrs: Vec<Multiaddr>,
}

/// Why the swarm could not be built or started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("failed to set up the TCP transport: {0}")]
    Transport(String),
    #[error("failed to configure gossipsub: {0}")]
    Gossipsub(String),
    #[cfg(feature = "mdns")]
    #[error("failed to start mDNS")]
    Mdns(#[source] std::io::Error),
    #[error("mDNS was asked for, but this barn was built without the `mdns` feature")]
    MdnsNotBuilt,
    #[error("failed to listen on {addr}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: libp2p::TransportError<std::io::Error>,
    },
    #[error("failed to subscribe to gossip topic {topic}: {reason}")]
    Subscribe { topic: String, reason: String },
}

/// Builds the node's swarm, starts listening on `cfg.listen`, subscribes to the four
/// topics, and dials `cfg.bootstrap` (a failed dial is logged, not fatal: the DHT and later
/// dials can still find peers).
pub fn build_swarm(
    key: &barn_protocol::SecretKey,
    cfg: &NetConfig,
) -> Result<Swarm<Behaviour>, NetError> {
    let keypair = key.to_libp2p();
    let net = cfg.clone();
    build_swarm_with(keypair, move |k, relay| Behaviour::new(k, &net, relay), cfg)
}

/// [`build_swarm`] with a behaviour built by the caller (tests use another codec) from the
/// key and the relay client.
pub(crate) fn build_swarm_with(
    keypair: libp2p::identity::Keypair,
    behaviour: impl FnOnce(
        &libp2p::identity::Keypair,
        libp2p::relay::client::Behaviour,
    ) -> Result<Behaviour, NetError>,
    cfg: &NetConfig,
) -> Result<Swarm<Behaviour>, NetError> {
    let builder = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?;
    #[cfg(feature = "quic")]
    let builder = builder.with_quic();
    let mut made = None;
    let mut swarm = builder
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|key, relay| match behaviour(key, relay) {
            Ok(b) => Ok(b),
            Err(e) => {
                made = Some(e);
                Err("the behaviour could not be built".into())
            }
        })
        .map_err(|e| {
            made.take()
                .unwrap_or_else(|| NetError::Transport(e.to_string()))
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();

    for name in [TOPIC_ADVERTS, TOPIC_JOBS, TOPIC_RESULTS, TOPIC_SETTLEMENTS] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic(name))
            .map_err(|e| NetError::Subscribe {
                topic: name.to_string(),
                reason: e.to_string(),
            })?;
    }

    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|source| NetError::Listen {
                addr: addr.clone(),
                source,
            })?;
    }

    for addr in &cfg.external_addrs {
        swarm.add_external_address(addr.clone());
    }

    let mut seeded = false;
    for addr in &cfg.bootstrap {
        if let Some(peer) = peer_of(addr) {
            swarm.behaviour_mut().add_peer_address(&peer, addr.clone());
            seeded = true;
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "failed to dial bootstrap peer: {e}");
        }
    }
    if seeded && let Err(e) = swarm.behaviour_mut().kad.bootstrap() {
        tracing::debug!("kademlia bootstrap not started: {e}");
    }
    Ok(swarm)
}

/// The peer id at the end of an address (`…/p2p/<peer id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
