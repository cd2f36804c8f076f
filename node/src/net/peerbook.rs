//! Peers this node has met, remembered across restarts, and the redialling that keeps it
//! connected.
//!
//! A node learns where its peers listen from identify. Without a memory of them, a node
//! that restarts knows only its bootstrap addresses: a coordinator that comes back on
//! another address (a new DHCP lease, a moved laptop) is then unknown to its volunteers,
//! and it knows none of them, so results they hold for it never arrive. The [`PeerBook`]
//! keeps the most recently seen barn peers and their listen addresses in `peers.cbor` in
//! the data folder (bounded: [`MAX_PEERS`] peers, [`MAX_ADDRS`] addresses each); a starting
//! node dials the [`DIAL_AT_START`] most recent.
//!
//! [`Redial`] keeps the bootstrap peers connected: one that is not connected is dialled
//! again with a doubling back-off ([`FIRST_BACKOFF`] to [`MAX_BACKOFF`]), so a node that
//! lost its link (a partition, a router restart) finds the farm again when it returns.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use barn_protocol::cbor;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Peers remembered; the least recently seen are forgotten first.
pub const MAX_PEERS: usize = 256;
/// Listen addresses kept per peer.
pub const MAX_ADDRS: usize = 8;
/// Longest address kept (a multiaddr's text; longer ones are not remembered).
pub const MAX_ADDR_LEN: usize = 256;
/// Largest `peers.cbor` read: [`MAX_PEERS`] × [`MAX_ADDRS`] addresses of
/// [`MAX_ADDR_LEN`] bytes, with room for the rest.
pub const MAX_FILE: usize = 1 << 20;
/// Remembered peers dialled when the node starts.
pub const DIAL_AT_START: usize = 16;
/// First wait before a lost bootstrap peer is dialled again.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait between two dials of a lost bootstrap peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One remembered peer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    peer: String,
    addrs: Vec<String>,
    /// Unix seconds when it was last heard (identify).
    seen: u64,
}

/// Why `peers.cbor` could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerBookError {
    #[error("failed to {op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is {size} bytes, over the limit of {MAX_FILE}", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{} is not a peer list", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: cbor::DecodeError,
    },
}

/// The remembered peers.
#[derive(Debug)]
pub struct PeerBook {
    path: PathBuf,
    peers: HashMap<PeerId, (Vec<Multiaddr>, u64)>,
    dirty: bool,
    /// A peer or an address was added since the last save (not only a newer time).
    news: bool,
}

impl PeerBook {
    /// An empty book that will be saved at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            peers: HashMap::new(),
            dirty: false,
            news: false,
        }
    }

    /// Reads the book at `path`; a missing file is an empty book. Entries that do not
    /// parse (a peer id or an address) are skipped, and the book is cut to its bounds.
    pub fn load(path: &Path) -> Result<Self, PeerBookError> {
        let mut book = Self::new(path.to_path_buf());
        let size = match std::fs::metadata(path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(book),
            Err(source) => {
                return Err(PeerBookError::Io {
                    op: "read",
                    path: path.into(),
                    source,
                });
            }
        };
        if size > MAX_FILE as u64 {
            return Err(PeerBookError::TooLarge {
                path: path.into(),
                size,
            });
        }
        let bytes = std::fs::read(path).map_err(|source| PeerBookError::Io {
            op: "read",
            path: path.into(),
            source,
        })?;
        let stored: Vec<Stored> =
            cbor::from_slice(&bytes, MAX_FILE).map_err(|source| PeerBookError::Decode {
                path: path.into(),
                source,
            })?;
        for s in stored {
            let Ok(peer) = s.peer.parse::<PeerId>() else {
                continue;
            };
            let addrs: Vec<Multiaddr> = s.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            book.record(peer, &addrs, s.seen);
        }
        book.dirty = false;
        book.news = false;
        Ok(book)
    }

    /// Remembers that `peer` was heard at `seen` (unix seconds), listening on `addrs`.
    /// Addresses that are too long or in excess are dropped; a peer without an address
    /// is not remembered.
    pub fn record(&mut self, peer: PeerId, addrs: &[Multiaddr], seen: u64) {
        let mut kept: Vec<Multiaddr> = Vec::new();
        for a in addrs {
            if a.to_string().len() <= MAX_ADDR_LEN && !kept.contains(a) {
                kept.push(a.clone());
            }
            if kept.len() == MAX_ADDRS {
                break;
            }
        }
        if kept.is_empty() {
            return;
        }
        match self.peers.get(&peer) {
            Some((addrs, old)) if *addrs == kept => {
                if *old != seen {
                    self.dirty = true;
                }
            }
            _ => {
                self.dirty = true;
                self.news = true;
            }
        }
        self.peers.insert(peer, (kept, seen));
        while self.peers.len() > MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(p, (_, seen))| (*seen, **p))
                .map(|(p, _)| *p);
            match oldest {
                Some(p) => {
                    self.peers.remove(&p);
                }
                None => break,
            }
        }
    }

    /// The `n` most recently seen peers with their addresses, most recent first.
    pub fn recent(&self, n: usize) -> Vec<(PeerId, Vec<Multiaddr>)> {
        let mut all: Vec<_> = self.peers.iter().collect();
        all.sort_by_key(|(p, (_, seen))| (std::cmp::Reverse(*seen), **p));
        all.into_iter()
            .take(n)
            .map(|(p, (addrs, _))| (*p, addrs.clone()))
            .collect()
    }

    /// Whether a peer or an address was added since the last save: worth saving at once,
    /// as a node killed before then would not know where to find that peer.
    pub fn has_news(&self) -> bool {
        self.news
    }

    /// How many peers are remembered.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is remembered.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Writes the book if it changed since it was read or last written (to a temporary
    /// file, then renamed, so a crash leaves the old book or the new one).
    pub fn save(&mut self) -> Result<(), PeerBookError> {
        if !self.dirty {
            return Ok(());
        }
        let mut stored: Vec<Stored> = self
            .peers
            .iter()
            .map(|(p, (addrs, seen))| Stored {
                peer: p.to_string(),
                addrs: addrs.iter().map(|a| a.to_string()).collect(),
                seen: *seen,
            })
            .collect();
        stored.sort_by(|a, b| b.seen.cmp(&a.seen).then_with(|| a.peer.cmp(&b.peer)));
        let tmp = self.path.with_extension("cbor.tmp");
        let io = |op, source| PeerBookError::Io {
            op,
            path: self.path.clone(),
            source,
        };
        std::fs::write(&tmp, cbor::to_vec(&stored)).map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io("replace", e))?;
        self.dirty = false;
        self.news = false;
        Ok(())
    }
}

/// When to dial each bootstrap peer again.
#[derive(Debug)]
pub struct Redial {
    peers: Vec<Backoff>,
}

#[derive(Debug)]
struct Backoff {
    peer: PeerId,
    addr: Multiaddr,
    next: Instant,
    wait: Duration,
}

impl Redial {
    /// Watches the bootstrap addresses that name their peer (`…/p2p/<id>`); the others
    /// cannot be told apart from any other connection and are dialled only at start.
    pub fn new(bootstrap: &[Multiaddr], now: Instant) -> Self {
        let peers = bootstrap
            .iter()
            .filter_map(|a| {
                super::swarm::peer_of(a).map(|peer| Backoff {
                    peer,
                    addr: a.clone(),
                    next: now + FIRST_BACKOFF,
                    wait: FIRST_BACKOFF,
                })
            })
            .collect();
        Self { peers }
    }

    /// The bootstrap addresses to dial now: each peer not `connected` whose back-off
    /// has run out (its wait then doubles, up to [`MAX_BACKOFF`]); a connected peer's
    /// back-off starts again from [`FIRST_BACKOFF`].
    pub fn due(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for b in &mut self.peers {
            if connected(&b.peer) {
                b.wait = FIRST_BACKOFF;
                b.next = now + FIRST_BACKOFF;
            } else if now >= b.next {
                out.push(b.addr.clone());
                b.next = now + b.wait;
                b.wait = (b.wait * 2).min(MAX_BACKOFF);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn a_saved_book_reads_back_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.cbor");
        let (a, b) = (peer(), peer());
        let mut book = PeerBook::new(path.clone());
        book.record(a, &[addr(1), addr(2)], 100);
        book.record(b, &[addr(3)], 200);
        assert!(book.has_news());
        book.save().unwrap();
        assert!(!book.has_news());
        book.record(b, &[addr(3)], 300);
        assert!(!book.has_news(), "a newer time alone is news");
        book.record(b, &[addr(4)], 300);
        assert!(book.has_news(), "a new address is not news");
        book.record(b, &[addr(3)], 200);
        book.save().unwrap();
        let read = PeerBook::load(&path).unwrap();
        assert_eq!(
            read.recent(10),
            vec![(b, vec![addr(3)]), (a, vec![addr(1), addr(2)])]
        );
        assert_eq!(read.recent(1).len(), 1);
    }

    #[test]
    fn the_book_keeps_its_bounds_forgetting_the_least_recently_seen() {
        let mut book = PeerBook::new(PathBuf::from("unused"));
        let first = peer();
        book.record(first, &[addr(1)], 0);
        for i in 0..MAX_PEERS {
            book.record(peer(), &[addr(1)], 1 + i as u64);
        }
        assert_eq!(book.len(), MAX_PEERS);
        assert!(book.recent(MAX_PEERS).iter().all(|(p, _)| *p != first));

        let many: Vec<Multiaddr> = (0..50).map(addr).collect();
        let p = peer();
        book.record(p, &many, 10_000);
        assert_eq!(book.recent(1)[0].1.len(), MAX_ADDRS);

        let long: Multiaddr = format!("/dns4/{}/tcp/1", "a".repeat(300)).parse().unwrap();
        let q = peer();
        book.record(q, &[long], 20_000);
        assert_ne!(
            book.recent(1)[0].0,
            q,
            "a peer with no usable address is kept"
        );
    }

    #[test]
    fn a_bad_or_oversized_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.cbor");
        std::fs::write(&path, b"not cbor at all").unwrap();
        let e = PeerBook::load(&path).unwrap_err();
        assert!(matches!(e, PeerBookError::Decode { .. }), "{e}");
        assert!(e.to_string().contains("peers.cbor"), "{e}");

        std::fs::write(&path, vec![0u8; MAX_FILE + 1]).unwrap();
        let e = PeerBook::load(&path).unwrap_err();
        assert!(matches!(e, PeerBookError::TooLarge { .. }), "{e}");

        assert!(PeerBook::load(&dir.path().join("none")).unwrap().is_empty());
    }

    #[test]
    fn a_lost_bootstrap_peer_is_dialled_again_with_a_doubling_wait() {
        let p = peer();
        let boot: Multiaddr = format!("/ip4/10.0.0.1/tcp/1/p2p/{p}").parse().unwrap();
        let anonymous = addr(2);
        let t0 = Instant::now();
        let mut r = Redial::new(&[boot.clone(), anonymous], t0);
        let down = |_: &PeerId| false;
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(
            r.due(at(1), down).is_empty(),
            "dialled before the first wait"
        );
        assert_eq!(r.due(at(2), down), vec![boot.clone()]);
        // Waits of 2, 4, 8 s: the next dials are at 2+2=4, then 4+4=8.
        assert!(r.due(at(3), down).is_empty());
        assert_eq!(r.due(at(4), down), vec![boot.clone()]);
        assert!(r.due(at(7), down).is_empty());
        assert_eq!(r.due(at(8), down), vec![boot.clone()]);
        // Connected: nothing to dial, and the wait starts again from the first.
        assert!(r.due(at(9), |_| true).is_empty());
        assert!(r.due(at(10), down).is_empty());
        assert_eq!(r.due(at(11), down), vec![boot.clone()]);
        // The wait never passes the maximum.
        let mut t = 11;
        for _ in 0..20 {
            t += MAX_BACKOFF.as_secs();
            assert_eq!(r.due(at(t), down), vec![boot.clone()]);
        }
    }
}
