//! Reachability: what this node knows of how others reach it, and when it reserves a slot
//! on a relay.
//!
//! A node is reachable once an address of it is confirmed: one the owner configured
//! (`node.external_addrs`) or one AutoNAT v2 tested by having a peer dial it back. Until
//! then, once AutoNAT found a candidate unreachable or [`GRACE`] has passed, it reserves a
//! slot on up to [`MAX_RELAYS`] relays it is directly connected to (peers that offer
//! circuit relay v2), so peers behind other NATs can reach it; a relayed connection is then
//! upgraded to a direct one by hole punching (DCUtR) where the NATs allow. A confirmed
//! address ends the need: the reservations are dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::direct::is_relayed;

/// How long a node without a confirmed address waits for AutoNAT before it reserves.
pub const GRACE: Duration = Duration::from_secs(10);
/// Relays a node behind NAT reserves a slot on.
pub const MAX_RELAYS: usize = 2;
/// Relays remembered (offered by peers met).
const MAX_KNOWN_RELAYS: usize = 32;

/// The state of one node.
#[derive(Debug)]
pub struct Reach {
    started: Instant,
    /// Confirmed addresses of this node, relayed ones apart.
    confirmed: BTreeSet<Multiaddr>,
    /// AutoNAT found a candidate address of this node unreachable.
    unreachable: bool,
    /// Relays met, with the direct address this node reached each at.
    relays: BTreeMap<PeerId, Multiaddr>,
    /// Reservations asked for or held: the listener and its relay.
    reserved: Vec<(ListenerId, PeerId)>,
    /// Relays that accepted this node's reservation.
    accepted: BTreeSet<PeerId>,
    /// Relays whose reservation ended (refused, or the relay went away): when to try each
    /// again, and how many times in a row it ended.
    backoff: BTreeMap<PeerId, (Instant, u32)>,
}

/// The first wait before a relay whose reservation ended is asked again; it doubles with
/// each further end, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Whether `addr` is one only its own network can reach (RFC 1918, carrier-grade NAT,
/// loopback, link-local, IPv6 unique-local): a peer dialling it back proves nothing about
/// the internet.
pub fn is_private(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => {
            let o = ip.octets();
            ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        Protocol::Ip6(ip) => {
            let s = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
        }
        _ => false,
    })
}

impl Reach {
    pub fn new(now: Instant) -> Self {
        Self {
            started: now,
            confirmed: BTreeSet::new(),
            unreachable: false,
            relays: BTreeMap::new(),
            reserved: Vec::new(),
            accepted: BTreeSet::new(),
            backoff: BTreeMap::new(),
        }
    }

    /// An address of this node was confirmed (configured, AutoNAT, or a relay's).
    /// Returns the reservations to drop: a direct address makes them needless.
    pub fn confirmed(&mut self, addr: &Multiaddr) -> Vec<ListenerId> {
        if is_relayed(addr) {
            return Vec::new();
        }
        self.confirmed.insert(addr.clone());
        std::mem::take(&mut self.reserved)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// A confirmed address expired.
    pub fn expired(&mut self, addr: &Multiaddr) {
        self.confirmed.remove(addr);
    }

    /// AutoNAT tested a candidate address and no peer could dial it.
    pub fn found_unreachable(&mut self) {
        self.unreachable = true;
    }

    /// Whether this node has a confirmed direct address.
    pub fn is_public(&self) -> bool {
        !self.confirmed.is_empty()
    }

    /// A peer directly connected at `addr` (the address this node dialled, or `None` for
    /// an inbound connection) offers circuit relay v2.
    pub fn relay_met(&mut self, peer: PeerId, addr: Option<&Multiaddr>) {
        let Some(addr) = addr.filter(|a| !is_relayed(a)) else {
            return;
        };
        if self.relays.len() >= MAX_KNOWN_RELAYS && !self.relays.contains_key(&peer) {
            return;
        }
        let addr: Multiaddr = addr
            .iter()
            .filter(|p| !matches!(p, Protocol::P2p(_)))
            .collect();
        self.relays.insert(peer, addr);
    }

    /// A relay went away (disconnected): it is not offered any more.
    pub fn relay_lost(&mut self, peer: &PeerId) {
        self.relays.remove(peer);
    }

    /// A reservation listener closed (the relay refused, went away, or the node dropped
    /// it): another relay may be tried, and this one again after a back-off.
    pub fn listener_closed(&mut self, id: ListenerId, now: Instant) {
        let Some(at) = self.reserved.iter().position(|(l, _)| *l == id) else {
            return;
        };
        let (_, relay) = self.reserved.remove(at);
        self.accepted.remove(&relay);
        let ends = self
            .backoff
            .get(&relay)
            .map_or(0, |(_, n)| *n)
            .saturating_add(1);
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << ends.saturating_sub(1).min(5))
            .min(MAX_BACKOFF);
        self.backoff.insert(relay, (now + wait, ends));
    }

    /// A relay accepted this node's reservation.
    pub fn accepted(&mut self, relay: PeerId) {
        if self.reserved.iter().any(|(_, p)| *p == relay) {
            self.accepted.insert(relay);
            self.backoff.remove(&relay);
        }
    }

    /// The circuit addresses to listen on now (`<relay addr>/p2p/<relay>/p2p-circuit`);
    /// the caller listens and reports each listener with [`Reach::reserving`].
    pub fn to_reserve(&self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        let needed =
            !self.is_public() && (self.unreachable || now.duration_since(self.started) >= GRACE);
        if !needed || self.reserved.len() >= MAX_RELAYS {
            return Vec::new();
        }
        let held: BTreeSet<&PeerId> = self.reserved.iter().map(|(_, p)| p).collect();
        let waiting = |p: &PeerId| self.backoff.get(p).is_some_and(|(at, _)| *at > now);
        self.relays
            .iter()
            .filter(|(p, _)| !held.contains(p) && !waiting(p))
            .take(MAX_RELAYS - self.reserved.len())
            .map(|(p, a)| {
                let circuit = a.clone().with(Protocol::P2p(*p)).with(Protocol::P2pCircuit);
                (*p, circuit)
            })
            .collect()
    }

    /// A reservation listener was opened on `relay`.
    pub fn reserving(&mut self, id: ListenerId, relay: PeerId) {
        self.reserved.push((id, relay));
    }

    /// Relays that accepted this node's reservation.
    pub fn reservations(&self) -> usize {
        self.accepted.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(n: u8) -> (PeerId, Multiaddr) {
        let key = libp2p::identity::Keypair::ed25519_from_bytes([n; 32]).unwrap();
        let addr: Multiaddr = format!("/ip4/198.18.0.{n}/tcp/7400").parse().unwrap();
        (key.public().to_peer_id(), addr)
    }

    #[test]
    fn a_node_reserves_on_relays_only_while_no_address_of_its_own_is_confirmed() {
        let t0 = Instant::now();
        let mut r = Reach::new(t0);
        let (a, addr_a) = relay(2);
        let (b, addr_b) = relay(3);
        let (c, addr_c) = relay(4);
        r.relay_met(a, Some(&addr_a));
        r.relay_met(b, Some(&addr_b));
        r.relay_met(c, Some(&addr_c));
        r.relay_met(a, None);
        // Before the grace period and without an AutoNAT answer: nothing yet.
        assert!(r.to_reserve(t0).is_empty());
        r.found_unreachable();
        let want = r.to_reserve(t0);
        assert_eq!(want.len(), MAX_RELAYS);
        for (peer, circuit) in &want {
            let text = circuit.to_string();
            assert!(text.starts_with("/ip4/198.18.0."), "{text}");
            assert!(
                text.ends_with(&format!("/tcp/7400/p2p/{peer}/p2p-circuit")),
                "{text}"
            );
        }
        let l1 = ListenerId::next();
        let l2 = ListenerId::next();
        r.reserving(l1, want[0].0);
        r.reserving(l2, want[1].0);
        assert!(r.to_reserve(t0).is_empty(), "two relays are enough");
        // One relay refuses: the third is tried, and the one that refused not again before
        // its back-off.
        r.accepted(want[1].0);
        assert_eq!(r.reservations(), 1);
        r.listener_closed(l1, t0);
        let next = r.to_reserve(t0);
        assert_eq!(next.len(), 1);
        assert_ne!(next[0].0, want[1].0);
        assert_ne!(
            next[0].0, want[0].0,
            "the relay that refused is asked again at once"
        );
        let l3 = ListenerId::next();
        r.reserving(l3, next[0].0);
        r.listener_closed(l3, t0);
        assert!(r.to_reserve(t0).is_empty(), "both other relays wait");
        assert_eq!(r.to_reserve(t0 + FIRST_BACKOFF).len(), 1);
        // Ending again doubles the wait.
        let again = r.to_reserve(t0 + FIRST_BACKOFF);
        let l4 = ListenerId::next();
        r.reserving(l4, again[0].0);
        r.listener_closed(l4, t0 + FIRST_BACKOFF);
        let later = t0 + FIRST_BACKOFF + FIRST_BACKOFF;
        assert!(r.to_reserve(later).iter().all(|(p, _)| *p != again[0].0));
        // A relayed address confirmed by a relay changes nothing; a direct one ends it.
        let circuit: Multiaddr = format!("{}/p2p/{}", next[0].1, a).parse().unwrap();
        assert!(r.confirmed(&circuit).is_empty());
        assert!(!r.is_public());
        let dropped = r.confirmed(&"/ip4/198.18.0.9/tcp/7400".parse().unwrap());
        assert_eq!(dropped, vec![l2]);
        assert!(r.to_reserve(t0 + GRACE).is_empty());
        r.expired(&"/ip4/198.18.0.9/tcp/7400".parse().unwrap());
        assert!(!r.to_reserve(t0 + MAX_BACKOFF).is_empty());
    }

    #[test]
    fn addresses_only_a_lan_reaches_are_private() {
        for a in [
            "/ip4/10.1.0.2/tcp/1",
            "/ip4/192.168.1.5/tcp/1",
            "/ip4/172.16.0.1/tcp/1",
            "/ip4/100.64.3.4/tcp/1",
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/169.254.1.1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
        ] {
            assert!(is_private(&a.parse().unwrap()), "{a}");
        }
        for a in [
            "/ip4/203.0.113.7/tcp/1",
            "/ip4/198.18.0.2/tcp/7400",
            "/ip6/2001:db8::1/tcp/1",
        ] {
            assert!(!is_private(&a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn after_the_grace_period_a_node_reserves_without_an_answer_from_autonat() {
        let t0 = Instant::now();
        let mut r = Reach::new(t0);
        let (a, addr) = relay(2);
        r.relay_met(a, Some(&addr));
        assert!(r.to_reserve(t0 + GRACE / 2).is_empty());
        assert_eq!(r.to_reserve(t0 + GRACE).len(), 1);
        // A relay reached only through another relay is no use.
        let mut r = Reach::new(t0);
        let circuit: Multiaddr = format!("{addr}/p2p/{a}/p2p-circuit").parse().unwrap();
        r.relay_met(a, Some(&circuit));
        assert!(r.to_reserve(t0 + GRACE).is_empty());
    }
}
