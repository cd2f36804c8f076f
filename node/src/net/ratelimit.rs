//! Per-peer request rates: a token bucket per connected peer in front of the node core.
//!
//! An honest volunteer sends a claim per job, a heartbeat every few seconds per running
//! job, a commitment and a result: a few requests a second at most. A peer over
//! [`RATE`] requests a second (after a burst of [`BURST`]) is refused with
//! `Refusal::RateLimited` before its request is decoded further, verified or stored; one
//! refused more than [`ABUSE_REFUSALS`] times within [`ABUSE_WINDOW`] is disconnected and
//! turned away for [`BAN`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Requests a second a peer may keep sending.
pub const RATE: f64 = 20.0;
/// Requests a peer may send at once after a quiet spell.
pub const BURST: f64 = 60.0;
/// Refusals within [`ABUSE_WINDOW`] after which a peer is disconnected and banned.
pub const ABUSE_REFUSALS: u32 = 100;
/// The window in which refusals are counted.
pub const ABUSE_WINDOW: Duration = Duration::from_secs(10);
/// How long a banned peer is turned away.
pub const BAN: Duration = Duration::from_secs(120);
/// Banned peers remembered at once (the oldest ban is dropped first).
pub const MAX_BANNED: usize = 4096;

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Allow,
    /// Over the rate: refuse it.
    Refuse,
    /// Over the rate for too long: refuse it, disconnect the peer and ban it.
    Ban,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    window_start: Instant,
    refused: u32,
}

/// The buckets of connected peers, and the banned ones.
#[derive(Debug, Default)]
pub struct PeerLimits {
    buckets: HashMap<PeerId, Bucket>,
    banned: HashMap<PeerId, Instant>,
}

impl PeerLimits {
    /// Takes one request from `peer` at `now`.
    pub fn check(&mut self, peer: PeerId, now: Instant) -> Check {
        if self.is_banned(&peer, now) {
            return Check::Refuse;
        }
        let b = self.buckets.entry(peer).or_insert(Bucket {
            tokens: BURST,
            last: now,
            window_start: now,
            refused: 0,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * RATE).min(BURST);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Check::Allow;
        }
        if now.saturating_duration_since(b.window_start) > ABUSE_WINDOW {
            b.window_start = now;
            b.refused = 0;
        }
        b.refused += 1;
        if b.refused > ABUSE_REFUSALS {
            self.buckets.remove(&peer);
            self.ban(peer, now);
            return Check::Ban;
        }
        Check::Refuse
    }

    /// Bans `peer` for [`BAN`] from `now` (flooding, or bytes that failed their hash).
    pub fn ban(&mut self, peer: PeerId, now: Instant) {
        self.banned.retain(|_, until| *until > now);
        if self.banned.len() >= MAX_BANNED
            && let Some(first) = self.banned.iter().min_by_key(|(_, u)| **u).map(|(p, _)| *p)
        {
            self.banned.remove(&first);
        }
        self.banned.insert(peer, now + BAN);
    }

    /// Whether `peer` is turned away at `now`.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    /// Forgets a disconnected peer's bucket (its ban stays).
    pub fn forget(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_a_flood_is_refused_then_banned_and_the_rate_refills() {
        let peer = PeerId::random();
        let other = PeerId::random();
        let t0 = Instant::now();
        let mut l = PeerLimits::default();
        for _ in 0..BURST as usize {
            assert_eq!(l.check(peer, t0), Check::Allow);
        }
        assert_eq!(l.check(peer, t0), Check::Refuse);
        assert_eq!(
            l.check(other, t0),
            Check::Allow,
            "one peer's flood limits another"
        );
        // Half a second later, RATE/2 requests more pass.
        let t1 = t0 + Duration::from_millis(500);
        let passed = (0..100)
            .filter(|_| l.check(peer, t1) == Check::Allow)
            .count();
        assert_eq!(passed, (RATE / 2.0) as usize);
        // Keep flooding: banned after ABUSE_REFUSALS refusals in the window.
        let mut checks = 0;
        while l.check(peer, t1) != Check::Ban {
            checks += 1;
            assert!(checks <= ABUSE_REFUSALS as usize + 1, "never banned");
        }
        assert!(l.is_banned(&peer, t1 + BAN - Duration::from_secs(1)));
        assert_eq!(l.check(peer, t1 + Duration::from_secs(60)), Check::Refuse);
        assert!(!l.is_banned(&peer, t1 + BAN));
        assert_eq!(l.check(peer, t1 + BAN), Check::Allow, "the ban ends");
    }

    #[test]
    fn an_honest_rate_is_never_refused() {
        let peer = PeerId::random();
        let t0 = Instant::now();
        let mut l = PeerLimits::default();
        for i in 0..10_000u64 {
            // Ten requests a second for a thousand seconds.
            let t = t0 + Duration::from_millis(i * 100);
            assert_eq!(l.check(peer, t), Check::Allow, "request {i}");
        }
    }
}
