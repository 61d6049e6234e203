//! The download scheduler for one blob: a sans-IO state machine that both the node and the fleet
//! simulator run, so the simulator measures exactly the policy the node uses.
//!
//! The caller feeds it events (peers and their bit fields, pieces received or failed, time) and
//! drains its decisions with [`Scheduler::poll_action`] until `None` after every event, then
//! sleeps until [`Scheduler::poll_timeout`] and calls [`Scheduler::handle_timeout`]. Time is a
//! [`Duration`] since any epoch the caller picks; nothing here reads a clock or does I/O.
//! Requests are decided lazily inside `poll_action`, so an idle caller never piles up work and
//! the internal action queue holds at most the cancels of the requests in flight, the bans and
//! one `Done`.
//!
//! # Policies (constants in [`Config`]'s defaults)
//! - **Window per source.** Each peer starts with [`Config::initial_window`] (2) pieces in flight,
//!   gains one per completed piece up to [`Config::max_window`] (8), halves on a timeout or
//!   failure and is then left alone for an exponential back-off (0.5 s doubling to 30 s).
//! - **Pick order.** Pieces in the [`Config::read_ahead`] (4) pieces from the reading client's
//!   position come first (in-order streaming), then rarest first by availability among
//!   candidate peers, ties broken by a shuffle seeded by [`Config::seed`]. Availability is kept
//!   in a bucketed index updated in O(1) per `have` (see `rarity.rs`): no rescans per event.
//! - **Source order.** Free window slots go to the peer with the lowest expected time per piece
//!   (EWMA of its service time, ×(1 + recent timeouts/failures)). A peer slower than
//!   [`Config::slow_factor`] (4) × the fastest measured peer keeps a window of 1.
//! - **Timeouts.** A request expires after `timeout_factor (4) × piece time × (pieces ahead of it
//!   at that source + 1)`, clamped to [`Config::min_timeout`]..[`Config::max_timeout`]; the piece
//!   is cancelled and requeued.
//! - **End game.** Once every missing piece is in flight, free slots duplicate in-flight pieces
//!   (oldest request first) at a second peer; whichever copy lands first wins and the other is
//!   cancelled.
//! - **Origin.** The origin (the gateway's HTTP Range GET) is asked only for pieces that no
//!   candidate peer holds, never before [`Config::origin_grace`] after start (a node joining an
//!   active swarm waits for bit fields), with at most [`Config::origin_window`] (2) in flight.
//!   So that a swarm downloading at once fetches each such piece about once, a piece goes to
//!   the origin only from the node that ranks highest for it (rendezvous hashing of the piece
//!   with the keys of itself and its candidate peers), unless no new piece has shown up for
//!   [`Config::origin_stall`] (the ranked node may have gone): then anyone fetches it.
//!   Views are only consistent when nodes know each other; at very large swarms where each
//!   node sees a fraction of its swarm, the gateway should also turn away repeat requests for
//!   a piece it sent moments ago (answered as `request_failed`, which backs the origin off).
//! - **Bad data.** An invalid piece is requeued and never asked of that peer again; at
//!   [`Config::ban_threshold`] (2) invalid pieces the peer is banned and forgotten.
//! - **Memory.** At most [`Config::max_peers`] (32) candidate peers; a new one replaces a peer
//!   that has nothing we can request, or is refused. The ban list keeps the last 1024 peers.

mod peer;
mod rarity;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::piece::Bitfield;
use peer::{PeerState, SourceStats, XorShift, rank, stable_hash};
use rarity::RarityIndex;

/// Where a piece comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source<P> {
    /// A peer in the swarm.
    Peer(P),
    /// The gateway's HTTP `Range` GET.
    Origin,
}

/// What the scheduler wants the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `source` for `piece`.
    Request { source: Source<P>, piece: u32 },
    /// Stop a request made earlier (a duplicate that lost the race, or one that timed out).
    Cancel { source: Source<P>, piece: u32 },
    /// Disconnect from `peer` and refuse it for this blob: it sent corrupted pieces.
    Ban { peer: P },
    /// Every piece is held and verified.
    Done,
}

/// Tunables; [`Config::default`] holds the documented constants.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the tie-break shuffle (give every node a different one).
    pub seed: u64,
    /// Pieces in flight per peer at first.
    pub initial_window: u32,
    /// Most pieces in flight per peer.
    pub max_window: u32,
    /// Most pieces in flight from the origin.
    pub origin_window: u32,
    /// Pieces after the read position that are picked first.
    pub read_ahead: u32,
    /// A peer this many times slower than the fastest keeps a window of 1.
    pub slow_factor: u32,
    /// Request timeout in multiples of the expected time.
    pub timeout_factor: u32,
    /// Piece time assumed for a source before any measurement.
    pub initial_piece_time: Duration,
    /// Lower bound of a request timeout.
    pub min_timeout: Duration,
    /// Upper bound of a request timeout.
    pub max_timeout: Duration,
    /// First back-off after a timeout or failure (doubles per repeat).
    pub min_backoff: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// No origin requests this long after start (0 if the caller knows nobody has the blob).
    pub origin_grace: Duration,
    /// With no new piece seen for this long (or 4× the origin's piece time), any node may
    /// fetch unseen pieces from the origin.
    pub origin_stall: Duration,
    /// Sources per piece in the end game.
    pub max_duplicates: u8,
    /// Invalid pieces that get a peer banned.
    pub ban_threshold: u32,
    /// Most candidate peers kept.
    pub max_peers: usize,
    /// Most banned peers remembered.
    pub max_banned: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            initial_window: 2,
            max_window: 8,
            origin_window: 2,
            read_ahead: 4,
            slow_factor: 4,
            timeout_factor: 4,
            initial_piece_time: Duration::from_secs(1),
            min_timeout: Duration::from_millis(500),
            max_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            origin_grace: Duration::from_secs(1),
            origin_stall: Duration::from_secs(5),
            max_duplicates: 2,
            ban_threshold: 2,
            max_peers: 32,
            max_banned: 1024,
        }
    }
}

#[derive(Debug, Clone)]
struct Request<P> {
    source: Source<P>,
    piece: u32,
    sent: Duration,
    deadline: Duration,
}

/// The scheduler for one blob; `P` is the caller's peer key (a `PeerId`, a simulator index).
pub struct Scheduler<P> {
    cfg: Config,
    local_hash: u64,
    have: Bitfield,
    rarity: RarityIndex,
    /// Sources each piece is currently requested from.
    sources: Vec<u8>,
    requests: Vec<Request<P>>,
    peers: Vec<PeerState<P>>,
    banned: VecDeque<P>,
    origin: SourceStats,
    actions: VecDeque<Action<P>>,
    read_pos: Option<u32>,
    start: Duration,
    now: Duration,
    last_new_piece: Duration,
    origin_dirty: bool,
    done: bool,
    /// EWMA of piece time over all sources: the first guess for a new peer.
    piece_time: Option<Duration>,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// A scheduler for a blob of `have.len()` pieces of which `have` are already held (resume).
    /// `local` is this node's own key, as its peers know it (it ranks the origin rendezvous).
    pub fn new(local: P, have: Bitfield, config: Config, now: Duration) -> Self {
        let n = have.len();
        let mut pickable: Vec<u32> = have.iter_zeros().collect();
        XorShift::new(config.seed).shuffle(&mut pickable);
        let mut s = Scheduler {
            local_hash: stable_hash(&local),
            rarity: RarityIndex::new(n, pickable),
            sources: vec![0; n as usize],
            requests: Vec::new(),
            peers: Vec::new(),
            banned: VecDeque::new(),
            origin: SourceStats::new(config.origin_window),
            actions: VecDeque::new(),
            read_pos: None,
            start: now,
            now,
            last_new_piece: now,
            origin_dirty: true,
            done: false,
            piece_time: None,
            have,
            cfg: config,
        };
        s.check_done();
        s
    }

    /// Pieces held and verified.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Whether every piece is held.
    pub fn is_done(&self) -> bool {
        self.have.is_complete()
    }

    /// Requests outstanding.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// Candidate peers known.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// How many candidate peers hold `piece`.
    pub fn availability(&self, piece: u32) -> u16 {
        if piece >= self.have.len() {
            return 0;
        }
        self.rarity.availability(piece)
    }

    fn tick(&mut self, now: Duration) {
        self.now = self.now.max(now);
    }

    fn peer_index(&self, p: P) -> Option<usize> {
        self.peers.iter().position(|s| s.key == p)
    }

    /// A peer that may serve this blob, with the pieces it holds. Returns whether it became (or
    /// already was) a candidate: `false` for a banned peer, a bit field of the wrong length, or
    /// a full candidate list with no peer worth replacing.
    pub fn peer_added(&mut self, peer: P, have: Bitfield, now: Duration) -> bool {
        self.tick(now);
        if have.len() != self.have.len() || self.banned.contains(&peer) {
            return false;
        }
        if self.peer_index(peer).is_some() {
            for piece in have.iter_ones() {
                self.peer_have(peer, piece, now);
            }
            return true;
        }
        if self.peers.len() >= self.cfg.max_peers {
            let evictable = self
                .peers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.pickable == 0 && s.stats.in_flight == 0)
                .max_by_key(|(_, s)| (s.stats.cost(self.cfg.initial_piece_time), s.key))
                .map(|(i, _)| i);
            match evictable {
                Some(i) => {
                    let key = self.peers[i].key;
                    self.forget_peer(key);
                }
                None => return false,
            }
        }
        let mut state = PeerState {
            key: peer,
            hash: stable_hash(&peer),
            have: Bitfield::new(self.have.len()),
            pickable: 0,
            stats: SourceStats::new(self.cfg.initial_window),
            strikes: 0,
            bad: Vec::new(),
        };
        for piece in have.iter_ones() {
            self.note_have(&mut state, piece, now);
        }
        self.peers.push(state);
        true
    }

    fn note_have(&mut self, state: &mut PeerState<P>, piece: u32, now: Duration) {
        if !state.have.set(piece) {
            return;
        }
        if self.rarity.availability(piece) == 0 && !self.have.get(piece) {
            self.last_new_piece = now;
        }
        self.rarity.increment(piece);
        if self.rarity.contains(piece) {
            state.pickable += 1;
        }
    }

    /// `peer` announced that it now holds `piece`.
    pub fn peer_have(&mut self, peer: P, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if let Some(i) = self.peer_index(peer) {
            let mut state = self.peers.swap_remove(i);
            self.note_have(&mut state, piece, now);
            self.peers.push(state);
            let last = self.peers.len() - 1;
            self.peers.swap(i, last);
        }
    }

    /// `peer` went away: its requests are requeued (no cancel needed, the link is gone).
    pub fn peer_removed(&mut self, peer: P, now: Duration) {
        self.tick(now);
        self.forget_peer(peer);
    }

    fn forget_peer(&mut self, peer: P) {
        let Some(i) = self.peer_index(peer) else {
            return;
        };
        let state = self.peers.remove(i);
        let source = Source::Peer(peer);
        let mut k = 0;
        while k < self.requests.len() {
            if self.requests[k].source == source {
                let r = self.requests.remove(k);
                self.release(r.piece);
            } else {
                k += 1;
            }
        }
        for piece in state.have.iter_ones() {
            self.rarity.decrement(piece);
        }
        self.origin_dirty = true;
    }

    /// Removes a request's claim on `piece`; the piece becomes pickable again if nobody else has
    /// it in flight and it is still missing.
    fn release(&mut self, piece: u32) {
        let s = &mut self.sources[piece as usize];
        *s = s.saturating_sub(1);
        if *s == 0 && !self.have.get(piece) {
            self.set_pickable(piece, true);
        }
    }

    fn set_pickable(&mut self, piece: u32, pickable: bool) {
        if self.rarity.contains(piece) == pickable {
            return;
        }
        if pickable {
            self.rarity.insert(piece);
            if self.rarity.availability(piece) == 0 {
                self.origin_dirty = true;
            }
        } else {
            self.rarity.remove(piece);
        }
        for p in &mut self.peers {
            if p.have.get(piece) {
                if pickable {
                    p.pickable += 1;
                } else {
                    p.pickable -= 1;
                }
            }
        }
    }

    fn stats_mut(&mut self, source: Source<P>) -> Option<&mut SourceStats> {
        match source {
            Source::Origin => Some(&mut self.origin),
            Source::Peer(p) => self
                .peers
                .iter_mut()
                .find(|s| s.key == p)
                .map(|s| &mut s.stats),
        }
    }

    /// Takes the request `(source, piece)` out of the in-flight list.
    fn take_request(&mut self, source: Source<P>, piece: u32) -> Option<Request<P>> {
        let k = self
            .requests
            .iter()
            .position(|r| r.source == source && r.piece == piece)?;
        let r = self.requests.remove(k);
        if let Some(st) = self.stats_mut(source) {
            st.in_flight = st.in_flight.saturating_sub(1);
        }
        if source == Source::Origin {
            self.origin_dirty = true;
        }
        Some(r)
    }

    /// `piece` arrived from `source` and passed verification.
    pub fn piece_received(&mut self, source: Source<P>, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if let Some(r) = self.take_request(source, piece) {
            let slow = self.is_slow(source);
            let max = match source {
                Source::Origin => self.cfg.origin_window,
                Source::Peer(_) => self.cfg.max_window,
            };
            if let Some(st) = self.stats_mut(source) {
                st.success(r.sent, now, max, !slow);
                let t = st.piece_time;
                if let Some(t) = t {
                    self.piece_time = Some(peer::ewma(self.piece_time, t));
                }
            }
            self.sources[piece as usize] = self.sources[piece as usize].saturating_sub(1);
        }
        if !self.have.set(piece) {
            return;
        }
        self.last_new_piece = now;
        self.set_pickable(piece, false);
        // Cancel the losing duplicates.
        let mut k = 0;
        while k < self.requests.len() {
            if self.requests[k].piece == piece {
                let source = self.requests[k].source;
                self.take_request(source, piece);
                self.actions.push_back(Action::Cancel { source, piece });
            } else {
                k += 1;
            }
        }
        self.sources[piece as usize] = 0;
        self.check_done();
    }

    fn check_done(&mut self) {
        if self.have.is_complete() && !self.done {
            self.done = true;
            self.actions.push_back(Action::Done);
        }
    }

    /// `piece` from `peer` failed verification: requeue it elsewhere, strike the peer, ban it at
    /// the threshold.
    pub fn piece_invalid(&mut self, peer: P, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if self.take_request(Source::Peer(peer), piece).is_some() {
            self.release(piece);
        }
        let Some(i) = self.peer_index(peer) else {
            return;
        };
        let threshold = self.cfg.ban_threshold;
        let state = &mut self.peers[i];
        state.strikes += 1;
        state.stats.penalty = state.stats.penalty.saturating_add(1);
        if state.strikes >= threshold {
            self.forget_peer(peer);
            if self.banned.len() >= self.cfg.max_banned {
                self.banned.pop_front();
            }
            self.banned.push_back(peer);
            self.actions.push_back(Action::Ban { peer });
        } else if !state.bad.contains(&piece) {
            state.bad.push(piece);
        }
    }

    /// A request failed (refused, stream reset, HTTP error): requeue and back off that source.
    pub fn request_failed(&mut self, source: Source<P>, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() || self.take_request(source, piece).is_none() {
            return;
        }
        self.release(piece);
        let (lo, hi) = (self.cfg.min_backoff, self.cfg.max_backoff);
        if let Some(st) = self.stats_mut(source) {
            st.failure(now, lo, hi);
        }
    }

    /// Time passed: expire overdue requests (cancel + requeue) and re-evaluate origin timers.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.tick(now);
        self.origin_dirty = true;
        let (lo, hi) = (self.cfg.min_backoff, self.cfg.max_backoff);
        let mut k = 0;
        while k < self.requests.len() {
            if self.requests[k].deadline <= now {
                let (source, piece) = (self.requests[k].source, self.requests[k].piece);
                self.take_request(source, piece);
                self.release(piece);
                if let Some(st) = self.stats_mut(source) {
                    st.failure(now, lo, hi);
                }
                self.actions.push_back(Action::Cancel { source, piece });
            } else {
                k += 1;
            }
        }
    }

    /// A local client reads the blob in order and needs `piece` next.
    pub fn set_read_position(&mut self, piece: u32) {
        self.read_pos = Some(piece);
        self.origin_dirty = true;
    }

    /// When to call [`Scheduler::handle_timeout`] next, if anything is timed.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.done {
            return None;
        }
        let mut t = self.requests.iter().map(|r| r.deadline).min();
        let mut consider = |d: Duration| {
            if d > self.now {
                t = Some(t.map_or(d, |t| t.min(d)));
            }
        };
        for p in &self.peers {
            if p.pickable > 0 {
                consider(p.stats.blocked_until);
            }
        }
        if !self.rarity.unseen().is_empty() {
            consider(self.start + self.cfg.origin_grace);
            consider(self.origin.blocked_until);
            consider(self.last_new_piece + self.origin_stall());
        }
        t
    }

    /// The next thing to do; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if self.done {
            return None;
        }
        let (source, piece) = self.next_request()?;
        let now = self.now;
        let est = match source {
            Source::Origin => self.origin.piece_time,
            Source::Peer(p) => self
                .peers
                .iter()
                .find(|s| s.key == p)
                .and_then(|s| s.stats.piece_time),
        }
        .or(self.piece_time)
        .unwrap_or(self.cfg.initial_piece_time);
        let (factor, lo, hi) = (
            self.cfg.timeout_factor,
            self.cfg.min_timeout,
            self.cfg.max_timeout,
        );
        let st = self.stats_mut(source)?;
        let ahead = st.in_flight;
        st.in_flight += 1;
        let timeout = est
            .saturating_mul(factor)
            .saturating_mul(ahead + 1)
            .clamp(lo, hi.max(lo));
        self.requests.push(Request {
            source,
            piece,
            sent: now,
            deadline: now + timeout,
        });
        if self.sources[piece as usize] == 0 {
            self.set_pickable(piece, false);
        }
        self.sources[piece as usize] += 1;
        Some(Action::Request { source, piece })
    }

    fn fastest_piece_time(&self) -> Option<Duration> {
        self.peers.iter().filter_map(|p| p.stats.piece_time).min()
    }

    fn is_slow(&self, source: Source<P>) -> bool {
        let Source::Peer(p) = source else {
            return false;
        };
        let (Some(best), Some(mine)) = (
            self.fastest_piece_time(),
            self.peers
                .iter()
                .find(|s| s.key == p)
                .and_then(|s| s.stats.piece_time),
        ) else {
            return false;
        };
        mine > best.saturating_mul(self.cfg.slow_factor)
    }

    fn window_of(&self, i: usize, best: Option<Duration>) -> u32 {
        let st = &self.peers[i].stats;
        match (best, st.piece_time) {
            (Some(b), Some(t)) if t > b.saturating_mul(self.cfg.slow_factor) => 1,
            _ => st.window,
        }
    }

    fn origin_stall(&self) -> Duration {
        let measured = self.origin.piece_time.unwrap_or(Duration::ZERO) * 4;
        self.cfg.origin_stall.max(measured)
    }

    fn next_request(&mut self) -> Option<(Source<P>, u32)> {
        let now = self.now;
        let best = self.fastest_piece_time();
        let mut order: Vec<usize> = (0..self.peers.len())
            .filter(|&i| {
                let p = &self.peers[i];
                p.stats.blocked_until <= now && p.stats.in_flight < self.window_of(i, best)
            })
            .collect();
        order.sort_by_key(|&i| {
            let p = &self.peers[i];
            (p.stats.cost(self.cfg.initial_piece_time), p.key)
        });
        for &i in &order {
            if self.peers[i].pickable == 0 {
                continue;
            }
            if let Some(piece) = self.pick_for_peer(i) {
                return Some((Source::Peer(self.peers[i].key), piece));
            }
        }
        if self.rarity.len() == 0 {
            for &i in &order {
                if let Some(piece) = self.end_game_pick(i) {
                    return Some((Source::Peer(self.peers[i].key), piece));
                }
            }
        }
        self.origin_pick().map(|piece| (Source::Origin, piece))
    }

    fn read_window(&self) -> std::ops::Range<u32> {
        let n = self.have.len();
        let r = self.read_pos.unwrap_or(n).min(n);
        r..(r.saturating_add(self.cfg.read_ahead)).min(n)
    }

    fn pick_for_peer(&self, i: usize) -> Option<u32> {
        let p = &self.peers[i];
        let ok = |x: u32| p.have.get(x) && !p.bad.contains(&x);
        self.read_window()
            .find(|&x| self.rarity.contains(x) && ok(x))
            .or_else(|| self.rarity.iter().find(|&x| ok(x)))
    }

    fn end_game_pick(&self, i: usize) -> Option<u32> {
        let p = &self.peers[i];
        let me = Source::Peer(p.key);
        self.requests.iter().map(|r| r.piece).find(|&x| {
            self.sources[x as usize] < self.cfg.max_duplicates
                && p.have.get(x)
                && !p.bad.contains(&x)
                && !self.requests.iter().any(|r| r.piece == x && r.source == me)
        })
    }

    fn origin_pick(&mut self) -> Option<u32> {
        let now = self.now;
        if !self.origin_dirty
            || now < self.start + self.cfg.origin_grace
            || self.origin.blocked_until > now
            || self.origin.in_flight >= self.cfg.origin_window
        {
            return None;
        }
        let stalled = now >= self.last_new_piece + self.origin_stall();
        let eligible = |x: u32| {
            if !self.rarity.contains(x) || self.rarity.availability(x) != 0 {
                return false;
            }
            let mine = rank(self.local_hash, x);
            stalled || self.peers.iter().all(|p| rank(p.hash, x) < mine)
        };
        let pick = self
            .read_window()
            .find(|&x| eligible(x))
            .or_else(|| self.rarity.unseen().iter().copied().find(|&x| eligible(x)));
        if pick.is_none() {
            // Nothing eligible until a peer leaves, a request fails or time passes.
            self.origin_dirty = false;
        }
        pick
    }
}

#[cfg(test)]
mod tests;
