//! Who holds a blob: every node announces the blobs in its store as Kademlia provider
//! records (key: the 32 hash bytes) and looks them up before a fetch, so sources, images,
//! outputs and logs come from any holder, not only from the node that made them. A job's
//! data outlives its coordinator's store, and a volunteer that cannot reach the coordinator
//! directly (a strict NAT) fetches from a peer it can reach.
//!
//! A provider record says only "ask me": what a holder sends is checked group by group
//! against the hash ([`crate::net::blobs`]), so a peer that lies about holding a blob costs
//! a stream, and one that sends bad bytes is cut off and banned.
//!
//! [`Holders`] keeps the announcements (at most [`MAX_PROVIDED`], announced again while no
//! peer heard them) and the lookups in flight; the actor feeds it the store's changes and
//! Kademlia's events.

use std::collections::{HashMap, HashSet};

use barn_protocol::ContentHash;
use libp2p::PeerId;
use libp2p::kad::{self, QueryId, QueryResult, store::MemoryStore};
use tokio::sync::oneshot;
use tracing::debug;

/// Blobs a node announces at most; more (an unusually full store) are not announced and
/// are still served to whoever asks.
pub const MAX_PROVIDED: usize = 4096;
/// Holders one lookup reports at most.
pub const MAX_HOLDERS: usize = 20;

/// The provider records key of a blob.
pub fn key(hash: &ContentHash) -> kad::RecordKey {
    kad::RecordKey::new(hash.as_bytes())
}

/// Announcements and lookups.
#[derive(Debug, Default)]
pub struct Holders {
    provided: HashSet<ContentHash>,
    /// Announced while no peer answered (the node had no peers yet): announce again.
    unheard: HashSet<ContentHash>,
    announcing: HashMap<QueryId, ContentHash>,
    lookups: HashMap<QueryId, Lookup>,
    /// Blobs not announced because [`MAX_PROVIDED`] were.
    pub skipped: u64,
}

#[derive(Debug)]
struct Lookup {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<Vec<PeerId>>,
}

impl Holders {
    /// How many blobs are announced.
    pub fn provided(&self) -> usize {
        self.provided.len()
    }

    /// A blob entered the store: announce it.
    pub fn added(&mut self, kad: &mut kad::Behaviour<MemoryStore>, hash: ContentHash) {
        if self.provided.contains(&hash) {
            return;
        }
        if self.provided.len() >= MAX_PROVIDED {
            self.skipped += 1;
            return;
        }
        match kad.start_providing(key(&hash)) {
            Ok(id) => {
                self.provided.insert(hash);
                self.announcing.insert(id, hash);
            }
            Err(e) => debug!(hash = %hash.short(), "blob not announced: {e}"),
        }
    }

    /// A blob left the store: stop announcing it (peers forget the record when it
    /// expires; until then, asking us costs them a "not found").
    pub fn removed(&mut self, kad: &mut kad::Behaviour<MemoryStore>, hash: &ContentHash) {
        if self.provided.remove(hash) {
            kad.stop_providing(&key(hash));
        }
        self.unheard.remove(hash);
    }

    /// Announces again what no peer heard, now that there may be peers.
    pub fn announce_unheard(&mut self, kad: &mut kad::Behaviour<MemoryStore>) {
        for hash in std::mem::take(&mut self.unheard) {
            if let Ok(id) = kad.start_providing(key(&hash)) {
                self.announcing.insert(id, hash);
            }
        }
    }

    /// Whether announcements wait for peers.
    pub fn has_unheard(&self) -> bool {
        !self.unheard.is_empty()
    }

    /// Starts a lookup; `reply` gets the holders found (possibly none).
    pub fn find(
        &mut self,
        kad: &mut kad::Behaviour<MemoryStore>,
        hash: &ContentHash,
        reply: oneshot::Sender<Vec<PeerId>>,
    ) {
        let id = kad.get_providers(key(hash));
        self.lookups.insert(
            id,
            Lookup {
                found: HashSet::new(),
                reply,
            },
        );
    }

    /// Takes one Kademlia event. Returns a finished lookup's holders, with the query to
    /// finish once the caller has dialled them (Kademlia knows their addresses only while
    /// the query lives).
    pub fn on_event(
        &mut self,
        event: &kad::Event,
        me: &PeerId,
    ) -> Option<(QueryId, Vec<PeerId>, oneshot::Sender<Vec<PeerId>>)> {
        let kad::Event::OutboundQueryProgressed {
            id,
            result,
            step,
            stats,
        } = event
        else {
            return None;
        };
        match result {
            QueryResult::StartProviding(done) => {
                let hash = self.announcing.remove(id)?;
                let heard = done.is_ok() && stats.num_successes() > 0;
                if !heard && self.provided.contains(&hash) {
                    self.unheard.insert(hash);
                }
                None
            }
            QueryResult::GetProviders(progress) => {
                let lookup = self.lookups.get_mut(id)?;
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = progress {
                    lookup
                        .found
                        .extend(providers.iter().filter(|p| *p != me).copied());
                }
                // The first holders found are enough to start; the rest of the walk would
                // only delay the fetch.
                if !lookup.found.is_empty() || step.last {
                    let lookup = self.lookups.remove(id)?;
                    let holders = lookup.found.into_iter().take(MAX_HOLDERS).collect();
                    return Some((*id, holders, lookup.reply));
                }
                None
            }
            _ => None,
        }
    }
}
