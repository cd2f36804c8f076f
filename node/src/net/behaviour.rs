//! The composed libp2p [`Behaviour`]: gossipsub for small signed announcements,
//! request-response (`/barn/rpc/1`) for claims, grants, heartbeats and results, Kademlia
//! (`/barn/kad/1`, our own DHT, never the public one) for finding peers, identify
//! (`/barn/id/1`), ping, `libp2p-stream` for blobs (on direct connections only), and mDNS
//! when enabled; for crossing NAT, AutoNAT v2 (client on every node, server on every node),
//! the circuit relay v2 client (every node) and server (`node.relay`), and DCUtR hole
//! punching.
//!
//! The daemon's actor owns the swarm and matches on [`BehaviourEvent`]. Gossip is
//! validated by the application: every `gossipsub::Event::Message` must be answered once
//! with [`Behaviour::report_gossip`] after checking our own signed envelope, because
//! gossipsub's signature only names the forwarding publisher, not the submitter.

use std::time::Duration;

use barn_protocol::limits::MAX_GOSSIP_MESSAGE;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::request_response::ProtocolSupport;
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, dcutr, gossipsub, identify, kad, ping, relay,
    request_response,
};
use libp2p_autonat::v2 as autonat;

use super::codec::{self, Codec};
use super::direct::DirectOnly;
use super::swarm::{NetConfig, NetError};

/// The Kademlia protocol name: barn's own DHT.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/barn/kad/1");
/// The identify protocol version string; peers announcing another are not barn nodes.
pub const IDENTIFY_PROTOCOL: &str = "/barn/id/1";
/// Keys with provider records a node keeps (its own and others'); a record is about
/// 100 bytes plus its addresses.
pub const MAX_PROVIDER_KEYS: usize = 16_384;
/// How long one DHT query may walk (a lookup of a blob's holders, an announcement).
pub const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of one request-response exchange.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Inbound and outbound request-response substreams per connection. Each holds up to one
/// whole message (at most about 1 MiB) in memory, so this bounds that memory.
pub const RPC_MAX_CONCURRENT_STREAMS: usize = 32;

/// The mDNS behaviour when the `mdns` feature is on, a placeholder otherwise.
#[cfg(feature = "mdns")]
pub type Mdns = libp2p::mdns::tokio::Behaviour;
/// The mDNS behaviour when the `mdns` feature is on, a placeholder otherwise.
#[cfg(not(feature = "mdns"))]
pub type Mdns = libp2p::swarm::dummy::Behaviour;

/// The request-response behaviour with barn's codec.
pub type Rpc = request_response::Behaviour<Codec>;

/// Established connections per peer: one each way is all a barn node needs (a second
/// covers a simultaneous dial).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Established inbound connections in all.
pub const MAX_INBOUND: u32 = 256;
/// Inbound connections still in their handshake.
pub const MAX_PENDING_INBOUND: u32 = 64;
/// Established connections in all.
pub const MAX_CONNECTIONS: u32 = 512;
/// Above this much resident memory the node accepts no new connection.
pub const MAX_MEMORY_FOR_CONNECTIONS: usize = 1 << 30;

/// Every behaviour a barn node runs, composed; one event enum, [`BehaviourEvent`].
/// The limits come first: a connection they deny never reaches the others.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub limits: libp2p::connection_limits::Behaviour,
    pub memory: libp2p::memory_connection_limits::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub rpc: Rpc,
    pub kad: kad::Behaviour<MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub stream: DirectOnly<libp2p_stream::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub relay: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub autonat: autonat::client::Behaviour,
    pub autonat_server: autonat::server::Behaviour,
    pub mdns: Toggle<Mdns>,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Behaviour")
            .field("mdns", &self.mdns.is_enabled())
            .finish_non_exhaustive()
    }
}

impl Behaviour {
    /// Builds the behaviours for the node whose identity is `key`; `relay_client` comes
    /// from the swarm builder, paired with its transport.
    pub fn new(
        key: &Keypair,
        cfg: &NetConfig,
        relay_client: relay::client::Behaviour,
    ) -> Result<Self, NetError> {
        Self::with_codec(key, cfg, relay_client, Codec::default())
    }

    pub(crate) fn with_codec(
        key: &Keypair,
        cfg: &NetConfig,
        relay_client: relay::client::Behaviour,
        codec: Codec,
    ) -> Result<Self, NetError> {
        let peer_id = key.public().to_peer_id();

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_GOSSIP_MESSAGE)
            .message_id_fn(|m: &gossipsub::Message| {
                gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
            })
            .build()
            .map_err(|e| NetError::Gossipsub(e.to_string()))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
        .map_err(|e| NetError::Gossipsub(e.to_string()))?;
        gossipsub
            .with_peer_score(
                peer_score_params(),
                gossipsub::PeerScoreThresholds::default(),
            )
            .map_err(NetError::Gossipsub)?;

        let rpc = request_response::Behaviour::with_codec(
            codec,
            [(codec::PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(RPC_TIMEOUT)
                .with_max_concurrent_streams(RPC_MAX_CONCURRENT_STREAMS),
        );

        // Provider records name the holders of blobs (`daemon::holders`): room for this
        // node's own announcements and others' (the default 1024 keys counts both).
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_provided_keys: MAX_PROVIDER_KEYS,
                ..Default::default()
            },
        );
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_query_timeout(KAD_QUERY_TIMEOUT);
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Kademlia stays a client until an external address is confirmed, which never
        // happens on a LAN or in tests: serve the DHT from the start.
        kad.set_mode(Some(kad::Mode::Server));

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(format!("barn/{}", env!("CARGO_PKG_VERSION"))),
        );

        let mdns = if cfg.mdns {
            Some(new_mdns(peer_id)?)
        } else {
            None
        };

        let limits = libp2p::connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_established_incoming(Some(MAX_INBOUND))
            .with_max_pending_incoming(Some(MAX_PENDING_INBOUND))
            .with_max_established(Some(MAX_CONNECTIONS));
        Ok(Self {
            limits: libp2p::connection_limits::Behaviour::new(limits),
            memory: libp2p::memory_connection_limits::Behaviour::with_max_bytes(
                MAX_MEMORY_FOR_CONNECTIONS,
            ),
            gossipsub,
            rpc,
            kad,
            identify,
            ping: ping::Behaviour::default(),
            stream: DirectOnly::new(libp2p_stream::Behaviour::new()),
            relay_client,
            relay: cfg
                .relay
                .then(|| relay::Behaviour::new(peer_id, relay_config()))
                .into(),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat::client::Behaviour::default(),
            autonat_server: autonat::server::Behaviour::default(),
            mdns: mdns.into(),
        })
    }

    /// Reports the verdict on a gossip message, once per message. `Accept` forwards it,
    /// `Reject` penalises the peer that sent it, `Ignore` drops it quietly. Returns false
    /// when the message was no longer in the cache.
    pub fn report_gossip(
        &mut self,
        id: &gossipsub::MessageId,
        from: &PeerId,
        verdict: gossipsub::MessageAcceptance,
    ) -> bool {
        self.gossipsub
            .report_message_validation_result(id, from, verdict)
    }

    /// Feeds what identify learnt into Kademlia: a barn peer that serves our DHT protocol
    /// becomes routable at the addresses it listens on. Returns whether it is such a peer.
    pub fn on_identify(&mut self, peer: &PeerId, info: &identify::Info) -> bool {
        if info.protocol_version != IDENTIFY_PROTOCOL || !info.protocols.contains(&KAD_PROTOCOL) {
            return false;
        }
        for addr in &info.listen_addrs {
            self.kad.add_address(peer, addr.clone());
        }
        true
    }

    /// Adds a known peer address to Kademlia (e.g. a bootstrap node).
    pub fn add_peer_address(&mut self, peer: &PeerId, addr: Multiaddr) {
        self.kad.add_address(peer, addr);
    }
}

/// What a relay serves (`node.relay`): libp2p's defaults, which keep its owner's cost
/// small: at most 128 reservations (4 per peer) and 16 circuits (4 per peer) at once,
/// each circuit closed after 2 minutes or 128 KiB, and rate limits per peer and per IP
/// address. Barn moves no bulk data over a circuit ([`DirectOnly`]).
fn relay_config() -> relay::Config {
    relay::Config::default()
}

/// gossipsub peer scoring: a message the application rejects costs its sender
/// (invalid deliveries are squared: one costs 10, three put it past the graylist at -80,
/// after which everything it sends is ignored; the penalty decays by 70% every decay
/// interval, so an honest node that relayed one bad message recovers). Delivery-rate
/// penalties are off (barn's topics are quiet, and quiet is not a fault), and so is the
/// penalty for many peers behind one IP address (volunteers share home and carrier NATs).
fn peer_score_params() -> gossipsub::PeerScoreParams {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.3,
        ..Default::default()
    };
    let topics = [
        super::swarm::TOPIC_JOBS,
        super::swarm::TOPIC_ADVERTS,
        super::swarm::TOPIC_RESULTS,
        super::swarm::TOPIC_SETTLEMENTS,
    ]
    .into_iter()
    .map(|name| (super::swarm::topic(name).hash(), topic.clone()))
    .collect();
    gossipsub::PeerScoreParams {
        topics,
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    }
}

#[cfg(feature = "mdns")]
fn new_mdns(peer_id: PeerId) -> Result<Mdns, NetError> {
    libp2p::mdns::tokio::Behaviour::new(libp2p::mdns::Config::default(), peer_id)
        .map_err(NetError::Mdns)
}

#[cfg(not(feature = "mdns"))]
fn new_mdns(_: PeerId) -> Result<Mdns, NetError> {
    Err(NetError::MdnsNotBuilt)
}
