//! A hostile peer, written for the tests: a real libp2p swarm with barn's own behaviours
//! (so it speaks gossipsub and `/barn/rpc/1` like a node) and a fresh identity, driven by
//! hand to send what no honest node sends: garbage, jobs re-wrapped by someone who is not
//! their coordinator, adverts signed by thousands of fresh keys, results for jobs nobody
//! knows, floods of requests.
//!
//! Each attack gets a new [`Hostile`]: a node's gossip scoring graylists a peer after a
//! few rejected messages, after which it hears nothing more from it.

use std::time::{Duration, Instant};

use barn_node::net::behaviour::{Behaviour, BehaviourEvent};
use barn_node::net::codec::{Request, Response};
use barn_node::net::swarm::{NetConfig, build_swarm, topic};
use barn_protocol::SecretKey;
use libp2p::futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, request_response};

/// Requests a flood keeps in flight.
pub const IN_FLIGHT: usize = 24;

/// What a flood of requests got back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flood {
    /// Requests answered with anything but a rate-limit refusal.
    pub answered: usize,
    /// Requests refused as over the peer's rate.
    pub rate_limited: usize,
    /// Requests that failed (the connection was closed on us).
    pub failed: usize,
}

/// One hostile peer connected to one target node.
pub struct Hostile {
    rt: tokio::runtime::Runtime,
    swarm: Swarm<Behaviour>,
    pub target: PeerId,
}

impl std::fmt::Debug for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hostile")
            .field("me", self.swarm.local_peer_id())
            .field("target", &self.target)
            .finish()
    }
}

impl Hostile {
    /// A fresh identity, connected to the node at `addr` (ending in `/p2p/<id>`), once the
    /// node has subscribed it to the jobs topic (so what it publishes reaches the node).
    pub fn connect(addr: &str) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio: {e}"));
        let addr: Multiaddr = addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}"));
        let target =
            barn_node::net::swarm::peer_of(&addr).unwrap_or_else(|| panic!("{addr} names no peer"));
        let key = SecretKey::generate();
        let cfg = NetConfig {
            listen: vec![],
            bootstrap: vec![addr],
            ..NetConfig::default()
        };
        let swarm = rt
            .block_on(async { build_swarm(&key, &cfg) })
            .unwrap_or_else(|e| panic!("hostile swarm: {e}"));
        let mut h = Self { rt, swarm, target };
        let jobs = topic(barn_node::net::swarm::TOPIC_JOBS).hash();
        h.until(Duration::from_secs(20), "the target's subscription", |e| {
            matches!(e, SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                gossipsub::Event::Subscribed { peer_id, topic }
            )) if *peer_id == target && *topic == jobs)
        });
        h
    }

    /// This peer's id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Polls the swarm until `f` says an event is the one, for at most `limit`.
    fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&SwarmEvent<BehaviourEvent>) -> bool,
    ) {
        let swarm = &mut self.swarm;
        let found = self.rt.block_on(async {
            tokio::time::timeout(limit, async {
                loop {
                    let e = swarm.select_next_some().await;
                    if f(&e) {
                        return;
                    }
                }
            })
            .await
        });
        assert!(found.is_ok(), "hostile peer: no {what} within {limit:?}");
    }

    /// Polls the swarm for `d` (so queued messages go out).
    pub fn pump(&mut self, d: Duration) {
        let swarm = &mut self.swarm;
        self.rt.block_on(async {
            let _ = tokio::time::timeout(d, async {
                loop {
                    swarm.select_next_some().await;
                }
            })
            .await;
        });
    }

    /// Publishes each of `messages` on gossip topic `name`, then lets them go out.
    pub fn publish(&mut self, name: &str, messages: Vec<Vec<u8>>) {
        let t = topic(name);
        for m in messages {
            // A full queue or a duplicate is the attack's problem, not the test's.
            let _ = self.swarm.behaviour_mut().gossipsub.publish(t.clone(), m);
            self.pump(Duration::from_millis(2));
        }
        self.pump(Duration::from_secs(2));
    }

    /// Sends `n` requests made by `make` to the target as fast as it answers them (at most
    /// [`IN_FLIGHT`] at once: a connection carries no more concurrent request streams),
    /// for at most `limit`.
    pub fn flood(&mut self, n: usize, limit: Duration, make: impl Fn(usize) -> Request) -> Flood {
        let target = self.target;
        let mut got = Flood::default();
        let mut sent = 0;
        let swarm = &mut self.swarm;
        let deadline = Instant::now() + limit;
        self.rt.block_on(async {
            loop {
                let done = got.answered + got.rate_limited + got.failed;
                while sent < n && sent - done < IN_FLIGHT {
                    swarm.behaviour_mut().rpc.send_request(&target, make(sent));
                    sent += 1;
                }
                if done >= n {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(e) = tokio::time::timeout(left, swarm.select_next_some()).await else {
                    break;
                };
                match e {
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                        request_response::Event::Message {
                            message: request_response::Message::Response { response, .. },
                            ..
                        },
                    )) => match response {
                        Response::Refused(barn_protocol::Refusal::RateLimited { .. }) => {
                            got.rate_limited += 1
                        }
                        _ => got.answered += 1,
                    },
                    SwarmEvent::Behaviour(BehaviourEvent::Rpc(
                        request_response::Event::OutboundFailure { .. },
                    )) => got.failed += 1,
                    _ => {}
                }
            }
        });
        got
    }

    /// Whether the target still keeps a connection with this peer after `d`.
    pub fn still_connected_after(&mut self, d: Duration) -> bool {
        self.pump(d);
        self.swarm.is_connected(&self.target)
    }
}
