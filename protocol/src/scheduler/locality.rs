//! Site locality: which candidates are *near* (same site, by measured round trip) and which node
//! of a site fetches a piece that no near peer holds from afar — a far peer or the origin. The
//! policy is documented on the parent module; this file keeps its bookkeeping (near holders per
//! piece, far candidates, the near nodes the caller knows of) and its one decision,
//! [`Scheduler::far_allowed`].

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use super::Scheduler;
use super::peer::{PeerState, rank, stable_hash};

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The measured round trip to candidate `peer` (a ping, the QUIC connection's estimate).
    /// A peer within [`Config::near_rtt`](super::Config::near_rtt) is near; one whose round
    /// trip is not known yet counts as near, so nothing changes until round trips arrive. Call
    /// it again whenever the estimate changes. For a peer that is not a candidate yet it is
    /// kept (the last [`Config::max_peers`](super::Config::max_peers) such) for when
    /// [`Scheduler::peer_added`] names it: best called before, when the connection is up, so
    /// the peer's bit field is never counted as near by mistake.
    pub fn peer_rtt(&mut self, peer: P, rtt: Duration, now: Duration) {
        self.tick(now);
        let Some(i) = self.peer_index(peer) else {
            self.pending_rtt.retain(|&(p, _)| p != peer);
            if self.pending_rtt.len() >= self.cfg.max_peers.max(1) {
                self.pending_rtt.pop_front();
            }
            self.pending_rtt.push_back((peer, rtt));
            return;
        };
        self.set_near(i, rtt <= self.cfg.near_rtt);
    }

    /// A new candidate `i`: applies a round trip heard before it was added. Its bit field is
    /// not counted yet (the caller does that next), so only the flag and the far count change.
    pub(super) fn apply_pending_rtt(&mut self, i: usize) {
        let key = self.peers[i].key;
        let Some(k) = self.pending_rtt.iter().position(|&(p, _)| p == key) else {
            return;
        };
        let rtt = self
            .pending_rtt
            .remove(k)
            .map_or(Duration::ZERO, |(_, r)| r);
        if rtt > self.cfg.near_rtt {
            self.peers[i].near = false;
            self.far_peers += 1;
        }
    }

    fn set_near(&mut self, i: usize, near: bool) {
        if self.peers[i].near == near {
            return;
        }
        self.peers[i].near = near;
        // Rare (once per peer, normally), so the copy of its piece list is fine.
        let pieces = self.peer_bits.ones(i);
        for piece in pieces {
            if near {
                let missing = !self.have.get(piece);
                self.near_gained(piece, missing);
            } else {
                self.near_lost(piece);
            }
        }
        if near {
            self.far_peers = self.far_peers.saturating_sub(1);
        } else {
            self.far_peers += 1;
        }
        self.wake();
    }

    /// Near nodes (within [`Config::near_rtt`](super::Config::near_rtt)) that download this
    /// blob but are not necessarily candidates: the site's other members the caller knows of.
    /// Replaces the previous list; at most [`Config::max_near_nodes`] are kept, ourselves and
    /// duplicates dropped. They only take part in deciding who fetches a piece from afar for
    /// the site (rendezvous), so the more of the site the caller names, the closer that comes
    /// to exactly one fetch per site.
    ///
    /// [`Config::max_near_nodes`]: super::Config::max_near_nodes
    pub fn set_near_nodes(&mut self, nodes: impl IntoIterator<Item = P>) {
        self.near_nodes.clear();
        for n in nodes {
            if self.near_nodes.len() >= self.cfg.max_near_nodes {
                break;
            }
            let h = stable_hash(&n);
            if h != self.local_hash {
                self.near_nodes.push(h);
            }
        }
        self.near_nodes.sort_unstable();
        self.near_nodes.dedup();
        self.wake();
    }

    /// A near candidate now holds `piece` (which we miss if `missing`).
    pub(super) fn near_gained(&mut self, piece: u32, missing: bool) {
        let a = &mut self.near_avail[piece as usize];
        if *a == 0 && missing {
            self.last_near_new = self.now;
        }
        *a = a.saturating_add(1);
    }

    fn near_lost(&mut self, piece: u32) {
        let a = &mut self.near_avail[piece as usize];
        *a = a.saturating_sub(1);
    }

    /// A near candidate now holds `piece`: requests for it at far peers are cancelled, so it
    /// comes over the LAN instead. An uploader drops a cancelled request still queued — the
    /// WAN bytes are saved — and finishes one it is already sending (that piece is still
    /// welcome, first copy wins).
    pub(super) fn cancel_far(&mut self, piece: u32) {
        if self.sources[piece as usize] == 0 {
            return;
        }
        let far: Vec<P> = self
            .peers
            .iter()
            .filter(|p| !p.near && p.source.has_request(piece))
            .map(|p| p.key)
            .collect();
        for peer in far {
            let source = super::Source::Peer(peer);
            if self.take_request(source, piece).is_some() {
                self.release(piece);
                self.actions
                    .push_back(super::Action::Cancel { source, piece });
            }
        }
    }

    /// Undoes what candidate `state`, which held `held`, contributed (it is gone).
    pub(super) fn forget_locality(&mut self, state: &PeerState<P>, held: &[u32]) {
        if state.near {
            for &piece in held {
                self.near_lost(piece);
            }
        } else {
            self.far_peers = self.far_peers.saturating_sub(1);
        }
    }

    /// Requests in flight at far peers.
    pub(super) fn far_in_flight(&self) -> u32 {
        self.peers
            .iter()
            .filter(|p| !p.near)
            .map(|p| p.source.in_flight())
            .sum()
    }

    /// Whether the locality rules apply: some candidate is known to be far, or the caller
    /// named near nodes. A fleet in one site (or a node that passes no round trips) has
    /// neither, so for it nothing changes.
    pub(super) fn locality(&self) -> bool {
        self.far_peers > 0 || !self.near_nodes.is_empty()
    }

    /// Members of our site we know of, ourselves included (1 without locality).
    pub(super) fn site_size(&self) -> f64 {
        if !self.locality() {
            return 1.0;
        }
        let near_peers = self.peers.iter().filter(|p| p.near).count();
        (1 + near_peers.max(self.near_nodes.len())) as f64
    }

    fn near_patience(&self) -> Duration {
        self.cfg.near_patience.max(Duration::from_millis(1))
    }

    /// How many near nodes may outrank us for a piece we still fetch from afar: none, plus one
    /// per [`Config::near_patience`](super::Config::near_patience) in which no piece we miss
    /// appeared at a near peer. Measured on the site's progress, not per piece: over a shared
    /// WAN link many pieces are in flight at once and land late together, and a per-piece
    /// clock short enough to matter would fetch them all a second time.
    fn near_allowance(&self) -> u64 {
        let since = self.now.saturating_sub(self.last_near_new);
        u64::try_from(since.as_nanos() / self.near_patience().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether `piece` may come from afar (a far peer or the origin). Always, unless locality
    /// applies; then only if no near candidate holds it and we rank highest for it among the
    /// near nodes we know (candidates and [`Scheduler::set_near_nodes`]) — rendezvous hashing,
    /// so the members of a site agree, without talking, on the one that fetches it across the
    /// WAN; the others get it from that one over the LAN. Gone or slow winners are covered by
    /// the allowance ([`Scheduler::near_allowance`]).
    pub(super) fn far_allowed(&self, piece: u32) -> bool {
        if !self.locality() {
            return true;
        }
        if self.near_avail[piece as usize] > 0 {
            return false;
        }
        let mine = rank(self.local_hash, piece);
        let allowance = self.near_allowance();
        let mut ahead = 0u64;
        let near_peers = self.peers.iter().filter(|p| p.near).map(|p| p.hash);
        for h in near_peers.chain(self.near_nodes.iter().copied()) {
            if rank(h, piece) > mine {
                ahead += 1;
                if ahead > allowance {
                    return false;
                }
            }
        }
        true
    }

    /// When the near allowance next grows, if locality applies.
    pub(super) fn near_timer(&self) -> Option<Duration> {
        if !self.locality() {
            return None;
        }
        let k = u32::try_from(self.near_allowance().saturating_add(1)).unwrap_or(u32::MAX);
        Some(self.last_near_new + self.near_patience().saturating_mul(k))
    }
}
