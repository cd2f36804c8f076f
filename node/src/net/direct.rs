//! [`DirectOnly`]: a behaviour that sees only direct connections. It wraps the blob
//! streams (`libp2p-stream`), so bulk data never moves over a relayed connection: a
//! circuit carries at most 128 KiB for 2 minutes and its relay pays for every byte.
//! A relayed connection gets a handler that does nothing; the inner behaviour never hears
//! of it, so a blob fetch from a peer reached only through a relay waits for the direct
//! connection hole punching (DCUtR) makes, or times out naming why.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use either::Either;
use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};

/// Whether `addr` goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// How this node is connected to each peer: shared with the blob fetchers, which wait for
/// a direct connection and say why they cannot have one.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    /// Per peer: (direct connections, relayed connections).
    peers: Arc<Mutex<HashMap<PeerId, (u32, u32)>>>,
}

impl Paths {
    fn change(&self, peer: PeerId, relayed: bool, up: bool) {
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(peer).or_default();
        let n = if relayed { &mut entry.1 } else { &mut entry.0 };
        *n = if up {
            n.saturating_add(1)
        } else {
            n.saturating_sub(1)
        };
        if *entry == (0, 0) {
            map.remove(&peer);
        }
    }

    /// Whether `peer` is connected only through a relay.
    pub fn relayed_only(&self, peer: &PeerId) -> bool {
        let map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        map.get(peer).is_some_and(|(d, r)| *d == 0 && *r > 0)
    }
}

/// `B` on direct connections only.
pub struct DirectOnly<B> {
    inner: B,
    /// Relayed connections, given the dummy handler.
    relayed: HashSet<ConnectionId>,
    paths: Paths,
}

impl<B> std::fmt::Debug for DirectOnly<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectOnly")
            .field("relayed", &self.relayed.len())
            .finish_non_exhaustive()
    }
}

impl<B> DirectOnly<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            relayed: HashSet::new(),
            paths: Paths::default(),
        }
    }

    /// The connections to each peer, kept up to date by this behaviour.
    pub fn paths(&self) -> Paths {
        self.paths.clone()
    }
}

impl DirectOnly<libp2p_stream::Behaviour> {
    /// A handle that opens and accepts blob streams (on direct connections).
    pub fn new_control(&self) -> libp2p_stream::Control {
        self.inner.new_control()
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for DirectOnly<B> {
    type ConnectionHandler = Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(local) || is_relayed(remote) {
            self.relayed.insert(id);
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_inbound_connection(id, peer, local, remote)
            .map(Either::Left)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        if is_relayed(addr) {
            self.relayed.insert(id);
            return Ok(Either::Right(dummy::ConnectionHandler));
        }
        self.inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)
            .map(Either::Left)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        let hidden = match &event {
            FromSwarm::ConnectionEstablished(e) => {
                let relayed = self.relayed.contains(&e.connection_id);
                self.paths.change(e.peer_id, relayed, true);
                relayed
            }
            FromSwarm::AddressChange(e) => self.relayed.contains(&e.connection_id),
            // A connection a later behaviour refused never closes: forget it here.
            FromSwarm::DialFailure(e) => {
                self.relayed.remove(&e.connection_id);
                false
            }
            FromSwarm::ListenFailure(e) => {
                self.relayed.remove(&e.connection_id);
                false
            }
            FromSwarm::ConnectionClosed(e) => {
                let relayed = self.relayed.remove(&e.connection_id);
                self.paths.change(e.peer_id, relayed, false);
                relayed
            }
            _ => false,
        };
        if !hidden {
            self.inner.on_swarm_event(event);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(e) => self.inner.on_connection_handler_event(peer, id, e),
            Either::Right(never) => libp2p::core::util::unreachable(never),
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx).map(|e| e.map_in(Either::Left))
    }
}
