//! The download scheduler for one blob: a sans-IO state machine that both the node and the fleet
//! simulator run, so the simulator measures exactly the policy the node uses.
//!
//! # Driving it
//! The caller feeds it events — peers and their bit fields ([`Scheduler::peer_added`],
//! [`Scheduler::peer_have`], [`Scheduler::peer_removed`]), outcomes of its requests
//! ([`Scheduler::piece_received`] after verification, [`Scheduler::piece_invalid`],
//! [`Scheduler::request_failed`], [`Scheduler::request_refused`]) and time
//! ([`Scheduler::handle_timeout`]) — then drains [`Scheduler::poll_action`] until `None`, and
//! sleeps until [`Scheduler::poll_timeout`]. Time is a [`Duration`] since any epoch the caller
//! picks (virtual in the simulator); nothing here reads a clock or does I/O. A source is a peer
//! (`P`: a `PeerId` in the node, an integer in the simulator) or the origin (the gateway's HTTP
//! `Range` GET).
//!
//! ```text
//!  events ──► update views (rarity index, per-source stats) ──► raise "may request" flags
//!                                                                       │
//!  poll_action ◄── queued Cancel / Ban / Done ◄── decide one request ◄──┘ (only if flagged)
//!  poll_timeout ◄── earliest of: request deadlines, blocked peers, origin timers (cached)
//! ```
//!
//! # Cost
//! Requests are decided lazily inside `poll_action`, and only after an event that can enable
//! one (a freed slot, a newly pickable piece at a peer with room, a timer); `poll_timeout` is
//! cached. Measured in release on a 256-piece blob with 32 peers (`tests/scale.rs`): a `have`
//! that changes nothing costs ~11–19 ns with its `poll_action`, any `have` ~19–28 ns, a
//! received piece with the request it triggers and the timer ~0.9–1.5 µs. State is
//! O(pieces + peers × pieces / 8): 13–17 KB for that blob, by requests in flight. Every list is
//! bounded: requests by the windows and [`Config::max_in_flight`], peers by
//! [`Config::max_peers`], bans by [`Config::max_banned`], origin refusals by the piece count,
//! queued actions by the requests in flight plus bans plus one `Done`.
//!
//! # Policies (constants: [`Config`]'s defaults)
//! Measured numbers below come from the virtual-time swarm in `tests/` (FIFO uploaders, 256
//! pieces, 16–2000 nodes seeing all or 32 of the others); "bound" is Kumar–Ross's T_min.
//! - **Pick order.** Pieces in the [`Config::read_ahead`] (4) pieces from a reading client's
//!   position ([`Scheduler::set_read_position`]) come first — in-order streaming — then rarest
//!   first by availability among candidate peers. Ties go to a seeded random place in the
//!   rarest bucket the peer can serve ([`Config::seed`]): the index keeps a bucket in the
//!   order `have`s arrived, and a seeder's bit field would otherwise send every node after
//!   pieces 0, 1, 2… of the same seeder. Availability lives in a bucketed index updated in O(1)
//!   per `have` (`rarity.rs`).
//! - **Which peer.** A free slot goes to the ready peer with the lowest expected completion time
//!   for a new request: its smoothed latency (which carries the queue other downloaders build
//!   there) plus the time per piece of what we already queued there, × (1 + recent timeouts
//!   and failures). Ranking by smoothed rather than lowest latency took p99 completion from
//!   1.4 to 1.25 × the bound. A peer whose time per piece is more than
//!   [`Config::slow_factor`] (4) × the fastest peer's keeps one request in flight.
//! - **How much in flight, per peer.** Bandwidth × delay in pieces, with headroom:
//!   `⌈5/4 × base latency / time per piece⌉ + 1`, within 1..=[`Config::max_window`] (16), from
//!   [`Config::initial_window`] (2) growing one per completion; halved on a timeout or
//!   failure. Time per piece is BBR's delivery rate (each sample spans the deliveries since the
//!   last one before the request was sent, min-filtered), base latency the lowest seen: both
//!   immune to our own queue, which would otherwise make the window grow itself. A 100 ms
//!   round trip to a 100 pieces/s seed fills its pipe (15 in flight, 4.35 s for 400 pieces
//!   against 4 s ideal); with no round trip 3 stay in flight.
//! - **How much in flight, in total.** Exactly 4 peer requests by default
//!   ([`Config::min_in_flight`] = [`Config::max_in_flight`] = 4), as many as an uploader sends
//!   of one blob at once (the node's transfer server; SPEC §5.2): a request beyond them only
//!   waits in some uploader's line, holding a place a rarer piece could use. Between the two
//!   bounds Little's law over all peers would choose, `⌈3/2 × base latency / time between
//!   deliveries⌉ + 2`; letting it go up to 64 took the fleet simulator's fleet-10k (10,000
//!   hosts × 1 GiB) from 1.33 to 1.67 × the bound, since the base latency it divides includes
//!   the wait for an uploader's send slot. (Before uploaders had send slots, a floor of 8 was
//!   what kept a node whose peers split their upload among many streams from getting a small
//!   share of each.) The cost is a download moving at most 4 pieces per round trip, which only
//!   a single far source would notice; the origin and far peers have smaller windows anyway.
//! - **Timeouts.** A request expires after `srtt + 4 × rttvar` of its source (RFC 6298; before
//!   the first sample, the peers' average, else 3 × [`Config::initial_latency`] (1 s)), plus the
//!   time per piece of the requests ahead of it, doubled per timeout in a row, within
//!   [`Config::min_timeout`] (0.5 s) ..= [`Config::max_timeout`] (60 s). A peer's expired
//!   request is cancelled and requeued, its window halved and the peer blocked for a back-off of
//!   [`Config::min_backoff`] (0.5 s) doubling to [`Config::max_backoff`] (30 s). An origin
//!   request is not cancelled before `max_timeout`: its deadline doubles instead, since the
//!   origin is trusted and an overdue request there is queued behind the swarm (cancelling left
//!   the origin idle half the time). Nor is a request for a piece still arriving at the peer
//!   ([`Scheduler::peer_arriving`]): it cannot land before that copy does.
//! - **Refusals.** [`Scheduler::request_refused`] ("busy", or the gateway saying it sent that
//!   piece moments ago) requeues with no penalty: a peer pauses for its smoothed latency (within
//!   [`Config::min_busy_pause`] (10 ms) ..= `min_backoff`), since a busy uploader frees a send
//!   slot within about one piece time; the origin is not asked for that piece for an
//!   [`Config::origin_step`] (one hold per piece: a bounded list of 64 refusals, shorter than a
//!   blob, forgot holds and let nodes ask again at once).
//! - **End game.** Once every missing piece is requested, free slots duplicate in-flight
//!   pieces (oldest request first) at a second peer, up to [`Config::max_duplicates`] (2)
//!   sources per piece; the first copy to land wins and the others are cancelled. Only a
//!   straggler: a request that has taken as long as requests at its source usually take (its
//!   smoothed latency, else the download's, else [`Config::initial_latency`]); a timer wakes
//!   the scheduler when the next one becomes one. Duplicating every last piece at once made
//!   8 nodes pulling 16 one-piece layers drop 277 MiB besides the 512 they kept. Not while a
//!   missing piece is waiting for some candidate (or the origin) to have it: early in a swarm
//!   the candidates hold only what is already in flight, and duplicating then spent 7 % of a
//!   simulated 10,000-node pull's uploads (65 % of the LAN bytes of 20 edge sites) on copies
//!   nobody needed. Never at a peer whose copy is still arriving: it lands with that copy.
//! - **Origin.** Only for pieces that no candidate peer holds, never within
//!   [`Config::origin_grace`] (1 s) of the start (a node joining an active swarm first hears
//!   the bit fields) unless the caller reports a cold start ([`Scheduler::end_origin_grace`]:
//!   the first lookup's peers hold nothing; the grace alone exceeded the 0.86 s bound of 1 GiB
//!   at 10 Gbit/s), at most [`Config::origin_window`] (2) in flight, and cancelled as soon as
//!   a peer announces the piece whole (not while it only arrives there: that copy may be fed by
//!   this very request, passed on while it arrives). So that a swarm fetches each piece about once, a piece goes to
//!   the origin from the node that ranks highest for it (rendezvous hashing of node key and
//!   piece): a node asks only if none of its candidate peers outranks it and — when
//!   [`Scheduler::set_swarm_size`] says the swarm is larger than what it sees — only if fewer
//!   than an allowance of the nodes it cannot see are expected to outrank it. The allowance
//!   starts at [`Config::origin_fanout`] (2) and grows by one per [`Config::origin_step`] (2 s),
//!   so pieces whose top node is elsewhere or gone are still fetched; linear, because a
//!   doubling allowance herded every node onto the last pieces. If nothing new has appeared
//!   for 8 × the usual gap between new pieces (1 s ..= [`Config::origin_stall`], 5 s), the
//!   candidate-peer condition is dropped (its top node may be stuck) and the allowance also
//!   grows by one per [`Config::origin_stall_step`] (0.25 s): the last unseen pieces are those
//!   whose top node is far ahead of the allowance (an exponential tail, ~ln(pieces) steps), and
//!   at 2 s a step the whole swarm waited 11 s for the last piece (simulated, 1000 nodes at
//!   10 Gbit/s). A node in its tail (at most 1/8 of the blob missing, none of it at any
//!   candidate, no peer request out) counts as stalled 50 ms after its last new piece instead
//!   (it otherwise sat out the 1-s floor while every node waited on the same last pieces). Measured origin egress:
//!   1.00 × the blob with full views (16 nodes); 1.2 × at 100–500 and 1.5 × at 2000 nodes
//!   seeing 16–32 others each; 1.00–1.06 × everywhere when the origin also refuses a piece it
//!   is sending or sent in the last 2 s (answered with `request_refused`). The swarm size cuts
//!   the requests reaching such an origin 20-fold at 2000 nodes (87,510 → 4,453), which keeps
//!   100,000 nodes from flooding it with requests it must refuse. Each origin request also
//!   offers up to [`Config::origin_alternatives`] (16) other pieces
//!   ([`Scheduler::origin_alternatives`]: the read window, then the unseen pieces we rank
//!   highest); an origin that has sent the piece asked for lately sends the first alternative
//!   nobody was sent instead ([`Scheduler::origin_substituted`]) and refuses only when all
//!   were, which holds them all back. The rendezvous is a guess about who else is pulling,
//!   and about e⁻² of the pieces had no node confident enough to ask for them until the
//!   allowance grew: the alternatives hand those to the nodes whose guesses collided.
//!   Simulated, 1000 hosts at 10 Gbit/s: the origin's last first copy left at 5.9 s without
//!   them and at 0.86 s (its upload bound) with them; egress 1.03 → 1.00 × the blob.
//! - **Bad data.** A piece failing verification is requeued and never asked of that peer
//!   again; at [`Config::ban_threshold`] (2) invalid pieces the peer is banned (`Ban`) and
//!   forgotten, and refused if added again.
//! - **Candidates.** At most [`Config::max_peers`] (32); a new peer replaces one that has
//!   nothing we can request and nothing in flight, or is refused.
//! - **Locality** (`locality.rs`). Given round trips ([`Scheduler::peer_rtt`]), a candidate
//!   within [`Config::near_rtt`] (10 ms) is *near* (same site); one never measured counts as
//!   near, so without round trips nothing below applies. Once a candidate is known to be far
//!   (or the caller names near nodes, [`Scheduler::set_near_nodes`]): a far peer is asked only
//!   for pieces no near candidate holds, and — like the origin — only by the site's
//!   rendezvous winner for that piece: the node that ranks highest for it among itself, its
//!   near candidates and the named near nodes. The others wait for it to show up at a near
//!   peer and take it over the LAN, so each piece crosses a site's WAN link about once. If
//!   nothing we miss appears at a near peer for [`Config::near_patience`] (30 s), one more near
//!   node may outrank us per patience elapsed (a winner that left or stalls). A far request is
//!   cancelled as soon as a near candidate holds its piece, is never duplicated in the end
//!   game, and times out like an origin request (deadline doubling up to `max_timeout`): an
//!   uploader finishes a piece it started, so a cancelled far piece crossed the link anyway
//!   and its requeued copy crossed it again. At most [`Config::far_window`] (1) far requests
//!   are in flight: with per-peer windows, hundreds of far pieces were in flight into one site
//!   at once, all slowed to a crawl on its shared link, and most were then had over the LAN
//!   first and aborted (20 × 50 hosts: p99 313 → 116 s, worst crossings 7.4 → 2.6). Simulated, 20 sites × 50 hosts behind 100 Mbit/s
//!   WAN links: each layer crossed each site's link 44–51 times before; with complete site
//!   membership exactly once; with the members the node's site labels reveal (SPEC §6.2: a
//!   site key in the DHT, the site in every Welcome) also exactly once (see
//!   `simulations/README.md`).

mod answers;
mod config;
mod locality;
mod peer;
mod pick;
mod rarity;
mod retire;
mod rotation;
mod spread;

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::piece::Bitfield;
pub use config::{CAPPED_PIPELINE, Config};
use peer::{Latency, PeerBits, PeerState, PeerTimes, SourceState, XorShift, stable_hash};
use rarity::RarityIndex;
pub use rotation::{FRUITLESS_LOOKUPS, ProviderMemory, Rotation, RotationConfig, SEEN_PROVIDERS};
use spread::PieceHolds;

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
    /// Stop a request made earlier (a duplicate that lost the race, one that timed out, or an
    /// origin request for a piece a peer now has). A piece that arrives anyway is still welcome.
    Cancel { source: Source<P>, piece: u32 },
    /// Disconnect from `peer` and refuse it for this blob: it sent corrupted pieces. Its
    /// requests are already forgotten (no `Cancel` follows).
    Ban { peer: P },
    /// Every piece is held and verified.
    Done,
}

/// The scheduler for one blob; `P` is the caller's peer key (a `PeerId`, a simulator index).
pub struct Scheduler<P> {
    cfg: Config,
    local_hash: u64,
    have: Bitfield,
    rarity: RarityIndex,
    /// Number of sources each piece is currently requested from.
    sources: Vec<u8>,
    peers: Vec<PeerState<P>>,
    /// Per candidate, in `peers` order: its key, earliest deadline and block (see
    /// [`PeerTimes`]). Every change to a peer's requests or block goes through
    /// [`Scheduler::update_source`] or is followed by a sync, so the copies stay exact.
    peer_times: Vec<PeerTimes<P>>,
    /// Per candidate, in `peers` order: the pieces it holds.
    peer_bits: PeerBits,
    origin: SourceState,
    banned: VecDeque<P>,
    actions: VecDeque<Action<P>>,
    read_pos: Option<u32>,
    swarm_size: Option<u64>,
    /// When origin requests may begin: the start plus [`Config::origin_grace`], or earlier
    /// once the caller reports a cold start ([`Scheduler::end_origin_grace`]).
    origin_open: Duration,
    now: Duration,
    /// Last time a piece we miss first appeared at a candidate, or arrived.
    last_new_piece: Duration,
    /// EWMA of the time between such events: what "nothing new for a while" means here.
    new_piece_gap: Option<Duration>,
    /// Pieces the origin refused, not asked for again until their hold in `origin_hold` ends
    /// (a bit per piece, not a time: a time per piece was 4 KiB of every download's state for
    /// a 1-GiB layer, and every hold lasts the same step).
    origin_held: Bitfield,
    /// Those holds in the order they end, each piece at most once. Ended ones are dropped
    /// (and their bits cleared) before any is looked at: see `Scheduler::end_origin_holds`.
    origin_hold: VecDeque<(u32, Duration)>,
    /// Pieces a peer answered `PieceBusy` for, held back for a moment (`spread.rs`).
    holds: PieceHolds,
    /// Per origin request (by the piece asked for): the pieces offered in its place. Entries of
    /// requests no longer in flight are dropped when the next request is made.
    origin_alts: Vec<(u32, Vec<u32>)>,
    /// Latency over all peers: the first guess for a new one.
    latency: Latency,
    /// Delivery rate over all peers.
    total: peer::Rate,
    /// Peer requests in flight, over all peers.
    peer_in_flight: u32,
    /// Something happened that may allow a peer request.
    poll_peers: bool,
    /// Something happened that may allow an origin request.
    poll_origin: bool,
    timer: Option<Duration>,
    timer_dirty: bool,
    done: bool,
    /// Reused by the peer ranking, so a decision allocates nothing.
    scratch: Vec<(Duration, usize)>,
    /// Per piece: near candidates holding it (all candidates until round trips are known).
    near_avail: Vec<u16>,
    /// Candidates known to be far (beyond [`Config::near_rtt`]): locality rules apply only
    /// while there is one.
    far_peers: u32,
    /// Rendezvous hashes of near nodes that download this blob without being candidates.
    near_nodes: Vec<u64>,
    /// Last time a piece we miss first appeared at a near candidate, or arrived.
    last_near_new: Duration,
    /// Round trips heard for peers not (yet) candidates, newest last: a connection measures
    /// one before the session's bit field arrives.
    pending_rtt: VecDeque<(P, Duration)>,
    /// Seeded tie-breaks among equally rare pieces.
    rng: XorShift,
    /// Requests kept at peers being retired (`retire.rs`), at most `max_peers`.
    retired: Vec<retire::Retired<P>>,
}

impl<P> Debug for Scheduler<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("have", &self.have)
            .field("peers", &self.peers.len())
            .field("peer_in_flight", &self.peer_in_flight)
            .field("origin_in_flight", &self.origin.in_flight())
            .finish_non_exhaustive()
    }
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// A scheduler for a blob of `have.len()` pieces of which `have` are already held (resume).
    /// `local` is this node's own key, as its peers know it (it ranks the origin rendezvous).
    pub fn new(local: P, have: Bitfield, mut config: Config, now: Duration) -> Self {
        // A zero window would never ask anyone; a zero origin window is allowed (no origin).
        config.max_window = config.max_window.max(1);
        config.initial_window = config.initial_window.clamp(1, config.max_window);
        let n = have.len();
        let mut pickable: Vec<u32> = have.iter_zeros().collect();
        let mut rng = XorShift::new(config.seed);
        rng.shuffle(&mut pickable);
        let mut s = Scheduler {
            local_hash: stable_hash(&local),
            rarity: RarityIndex::new(n, pickable),
            sources: vec![0; n as usize],
            peers: Vec::new(),
            peer_times: Vec::new(),
            peer_bits: PeerBits::new(n),
            origin: SourceState::new(config.origin_window),
            banned: VecDeque::new(),
            actions: VecDeque::new(),
            read_pos: None,
            swarm_size: None,
            origin_open: now + config.origin_grace,
            now,
            last_new_piece: now,
            new_piece_gap: None,
            origin_held: Bitfield::new(n),
            origin_hold: VecDeque::new(),
            holds: PieceHolds::new(),
            origin_alts: Vec::new(),
            latency: Latency::default(),
            total: peer::Rate::default(),
            peer_in_flight: 0,
            poll_peers: true,
            poll_origin: true,
            timer: None,
            timer_dirty: true,
            done: false,
            scratch: Vec::new(),
            near_avail: vec![0; n as usize],
            far_peers: 0,
            near_nodes: Vec::new(),
            last_near_new: now,
            pending_rtt: VecDeque::new(),
            rng,
            retired: Vec::new(),
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

    /// Requests outstanding, peers and origin.
    pub fn in_flight(&self) -> usize {
        self.peer_in_flight as usize + self.origin.requests.len()
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
        self.peer_times.iter().position(|s| s.key == p)
    }

    /// Everything may have changed: re-evaluate requests and timers on the next poll.
    fn wake(&mut self) {
        self.poll_peers = true;
        self.poll_origin = true;
        self.timer_dirty = true;
    }

    /// A peer that may serve this blob, with the pieces it holds. Returns whether it became (or
    /// already was) a candidate: `false` for a banned peer, a bit field of the wrong length, or
    /// a full candidate list with no peer worth replacing.
    pub fn peer_added(&mut self, peer: P, have: Bitfield, now: Duration) -> bool {
        self.tick(now);
        if have.len() != self.have.len() || self.banned.contains(&peer) {
            return false;
        }
        if let Some(i) = self.peer_index(peer) {
            for piece in have.iter_ones() {
                self.note_have(i, piece);
            }
            return true;
        }
        if self.peers.len() >= self.cfg.max_peers {
            let fallback = self.latency;
            let evictable = self
                .peers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.pickable == 0 && s.source.requests.is_empty())
                .max_by_key(|(_, s)| (s.source.cost(fallback), s.key))
                .map(|(i, _)| i);
            match evictable {
                Some(i) => {
                    let key = self.peers[i].key;
                    self.forget_peer(key);
                }
                None => return false,
            }
        }
        let source = SourceState::new(self.cfg.initial_window);
        self.peer_times.push(PeerTimes::new(peer, &source));
        self.peer_bits.push_row();
        // One more at a time (peers come seldom; a `PeerState` is ~200 bytes): doubling left
        // a download of 10 peers with room for 16.
        self.peers.reserve_exact(1);
        self.peers.push(PeerState {
            key: peer,
            hash: stable_hash(&peer),
            pickable: 0,
            source,
            strikes: 0,
            bad: Vec::new(),
            near: true,
            arriving: Vec::new(),
        });
        let i = self.peers.len() - 1;
        self.apply_pending_rtt(i);
        for piece in have.iter_ones() {
            self.note_have(i, piece);
        }
        self.wake();
        true
    }

    /// Whether candidate `i` may be asked for `piece` at all.
    fn can_serve(&self, i: usize, piece: u32) -> bool {
        self.peer_bits.get(i, piece) && !self.peers[i].bad.contains(&piece)
    }

    /// Records that peer `i` holds `piece`, and raises the poll flags only if that can enable a
    /// request: this is the hot path of a large swarm.
    fn note_have(&mut self, i: usize, piece: u32) {
        if !self.peer_bits.set(i, piece) {
            // Known as arriving there: now that it is whole, what waits on a whole copy.
            self.peers[i].arriving.retain(|&x| x != piece);
            self.note_whole(i, piece);
            return;
        }
        self.note_available(i, piece, true);
    }

    /// Records that peer `i` can serve `piece` while it still arrives there.
    fn note_arriving(&mut self, i: usize, piece: u32) {
        if self.peer_bits.set(i, piece) {
            self.peers[i].arriving.push(piece);
            self.note_available(i, piece, false);
        }
    }

    /// A copy at peer `i`, known before, is now whole: an origin or far request for the piece
    /// is cancelled now (not when the copy started: that copy may be fed by the very request
    /// it would cancel, through peers that pass it on while it arrives).
    fn note_whole(&mut self, i: usize, piece: u32) {
        if self.origin.has_request(piece) {
            self.origin.take(piece);
            self.actions.push_back(Action::Cancel {
                source: Source::Origin,
                piece,
            });
            self.release(piece);
        }
        if !self.have.get(piece) && self.peers[i].near && self.locality() {
            self.cancel_far(piece);
        }
        if !self.have.get(piece) && self.sources[piece as usize] > 0 {
            // An end-game duplicate may go there now.
            self.poll_peers = true;
        }
    }

    /// Peer `i` newly counts as holding `piece` (`whole`: not just arriving there).
    fn note_available(&mut self, i: usize, piece: u32, whole: bool) {
        let missing = !self.have.get(piece);
        if missing && self.rarity.availability(piece) == 0 {
            self.note_new_piece();
        }
        if self.peers[i].near {
            self.near_gained(piece, missing);
        }
        let was_pickable = self.rarity.contains(piece);
        self.rarity.increment(piece);
        if whole && self.origin.has_request(piece) {
            // A peer has it now: stop spending the origin's bandwidth on it.
            self.origin.take(piece);
            self.actions.push_back(Action::Cancel {
                source: Source::Origin,
                piece,
            });
            // Counts it as pickable at every holder, peer `i` included.
            self.release(piece);
        }
        if whole && missing && self.peers[i].near && self.locality() {
            // Likewise (after `was_pickable`): it may become pickable, counted at peer `i`.
            self.cancel_far(piece);
        }
        if was_pickable {
            self.peers[i].pickable += 1;
        }
        let p = &self.peers[i];
        if self.rarity.contains(piece) {
            if p.source.blocked_until > self.now {
                self.timer_dirty = true;
            } else if p.source.in_flight() < p.source.window
                && self.peer_in_flight < self.in_flight_cap()
            {
                self.poll_peers = true;
            }
        } else if missing && self.sources[piece as usize] > 0 {
            // A possible end-game duplicate.
            self.poll_peers = true;
        }
    }

    /// Something new reached our view: the swarm is making progress.
    fn note_new_piece(&mut self) {
        let gap = self.now.saturating_sub(self.last_new_piece);
        self.new_piece_gap = Some(match self.new_piece_gap {
            None => gap,
            Some(g) => (g * 7 + gap) / 8,
        });
        self.last_new_piece = self.now;
        self.timer_dirty = true;
    }

    /// `peer` announced that it now holds `piece`, whole.
    pub fn peer_have(&mut self, peer: P, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if let Some(i) = self.peer_index(peer) {
            self.note_have(i, piece);
        }
    }

    /// `peer` lost the copy of `piece` it announced as arriving ([`Scheduler::peer_arriving`])
    /// before it was whole: it no longer counts as held there, so that a piece nobody else
    /// holds is fetched afresh (from another peer, afar, or the origin) instead of asked of
    /// peers that no longer have it.
    pub fn peer_withdrew(&mut self, peer: P, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if let Some(i) = self.peer_index(peer) {
            self.forget_copy(i, piece);
        }
    }

    /// Peer `i`'s copy of `piece` no longer counts (withdrawn, or corrupt): if it was the only
    /// holder, the piece must look unseen, so the origin (or another holder) is asked instead
    /// of waiting for ever.
    pub(super) fn forget_copy(&mut self, i: usize, piece: u32) {
        if self.peer_bits.clear(i, piece) {
            let state = &mut self.peers[i];
            state.arriving.retain(|&x| x != piece);
            if self.rarity.contains(piece) {
                state.pickable -= 1;
            }
            self.rarity.decrement(piece);
            if state.near {
                let a = &mut self.near_avail[piece as usize];
                *a = a.saturating_sub(1);
            }
            self.wake();
        }
    }

    /// `peer` announced that it can serve `piece` while it still arrives there (its first
    /// block verified; SPEC §5.2): the piece counts as held there for requests and rarity, but
    /// cancels no origin or far request until [`Scheduler::peer_have`] says it is whole.
    pub fn peer_arriving(&mut self, peer: P, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if let Some(i) = self.peer_index(peer) {
            self.note_arriving(i, piece);
        }
    }

    /// Reads what [`Scheduler::peer_have`] for `peer` and `piece` reads, and returns a value
    /// made of it; it changes nothing. A caller handing one `have` to many schedulers calls
    /// this for all of them first: the cache misses of cold schedulers then overlap instead of
    /// coming one after the other (a 100,000-host simulation is mostly such misses).
    pub fn warm_have(&self, peer: P, piece: u32) -> usize {
        if piece >= self.have.len() {
            return 0;
        }
        let i = piece as usize;
        let mut acc = usize::from(self.have.get(piece))
            ^ usize::from(self.rarity.availability(piece))
            ^ usize::from(self.rarity.contains(piece))
            ^ usize::from(self.near_avail[i])
            ^ usize::from(self.sources[i]);
        if let Some(k) = self.peer_index(peer) {
            let p = &self.peers[k];
            acc ^= usize::from(self.peer_bits.get(k, piece))
                ^ p.pickable as usize
                ^ p.source.window as usize;
        }
        acc
    }

    /// `peer` went away: its requests are requeued (no cancel needed, the link is gone).
    pub fn peer_removed(&mut self, peer: P, now: Duration) {
        self.tick(now);
        self.forget_peer(peer);
        self.forget_retired(peer);
    }

    fn forget_peer(&mut self, peer: P) {
        let Some(i) = self.peer_index(peer) else {
            return;
        };
        let held = self.peer_bits.ones(i);
        let state = self.peers.swap_remove(i);
        self.peer_times.swap_remove(i);
        self.peer_bits.swap_remove_row(i);
        self.peer_in_flight -= state.source.in_flight();
        for r in &state.source.requests {
            self.release(r.piece);
        }
        for &piece in &held {
            self.rarity.decrement(piece);
        }
        self.forget_locality(&state, &held);
        self.wake();
    }

    /// Removes one request's claim on `piece`; the piece becomes pickable again if nobody else
    /// has it in flight and it is still missing.
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
            self.poll_peers = true;
            if self.rarity.availability(piece) == 0 {
                self.poll_origin = true;
            }
        } else {
            self.rarity.remove(piece);
        }
        for (i, p) in self.peers.iter_mut().enumerate() {
            if self.peer_bits.get(i, piece) {
                if pickable {
                    p.pickable += 1;
                } else {
                    p.pickable -= 1;
                }
            }
        }
    }

    /// Applies `f` to `source`'s state (`None` for a peer that is not a candidate), keeping the
    /// peer's [`PeerTimes`] in step.
    fn update_source<R>(
        &mut self,
        source: Source<P>,
        f: impl FnOnce(&mut SourceState) -> R,
    ) -> Option<R> {
        match source {
            Source::Origin => Some(f(&mut self.origin)),
            Source::Peer(p) => {
                let i = self.peer_index(p)?;
                let st = &mut self.peers[i].source;
                let r = f(st);
                self.peer_times[i].sync(st);
                Some(r)
            }
        }
    }

    /// A local client reads the blob in order and needs `piece` next.
    pub fn set_read_position(&mut self, piece: u32) {
        self.read_pos = Some(piece);
        self.poll_peers = true;
        self.poll_origin = true;
    }

    /// An estimate of how many nodes download this blob (all of them, not just the candidates
    /// here): it keeps the origin rule consistent when each node sees only part of the swarm.
    pub fn set_swarm_size(&mut self, nodes: u64) {
        self.swarm_size = Some(nodes);
        self.poll_origin = true;
        self.timer_dirty = true;
    }

    /// The caller has heard every provider its first lookup found and none holds a piece (or
    /// none was found): nobody's bit field is worth waiting for, so the origin grace ends now.
    /// On a cold start the grace alone would exceed the whole download's lower bound (1 s
    /// against 0.86 s for 1 GiB at 10 Gbit/s); the rendezvous rule still decides who asks.
    pub fn end_origin_grace(&mut self, now: Duration) {
        self.now = self.now.max(now);
        if self.origin_open > self.now {
            self.origin_open = self.now;
            self.poll_origin = true;
            self.timer_dirty = true;
        }
    }

    /// When to call [`Scheduler::handle_timeout`] next, if anything is timed.
    pub fn poll_timeout(&mut self) -> Option<Duration> {
        if self.timer_dirty {
            self.timer = self.next_timer();
            self.timer_dirty = false;
        }
        self.timer
    }

    /// The next thing to do; call until `None` after every input.
    pub fn poll_action(&mut self) -> Option<Action<P>> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if self.done {
            return None;
        }
        if self.poll_peers {
            if let Some((i, piece)) = self.next_peer_request() {
                let source = Source::Peer(self.peers[i].key);
                self.send(source, piece);
                return Some(Action::Request { source, piece });
            }
            self.poll_peers = false;
        }
        if self.poll_origin {
            if let Some(piece) = self.origin_pick() {
                let origin = &self.origin;
                self.origin_alts.retain(|(p, _)| origin.has_request(*p));
                self.send(Source::Origin, piece);
                if self.cfg.origin_alternatives > 0 {
                    let alts = self.pick_alternatives(piece);
                    self.origin_alts.push((piece, alts));
                }
                return Some(Action::Request {
                    source: Source::Origin,
                    piece,
                });
            }
            self.poll_origin = false;
        }
        None
    }

    /// Records a request being sent now.
    fn send(&mut self, source: Source<P>, piece: u32) {
        let now = self.now;
        let fallback = match source {
            Source::Origin => self.initial_latency(),
            Source::Peer(_) => self.latency_fallback(),
        };
        let (lo, hi) = (self.cfg.min_timeout, self.cfg.max_timeout);
        let total_mark = self.total.mark(now, self.peer_in_flight == 0);
        if let Source::Peer(_) = source {
            self.peer_in_flight += 1;
        }
        self.update_source(source, |st| {
            let timeout = st.timeout(fallback, lo, hi);
            let mark = st.rate.mark(now, st.requests.is_empty());
            // Most sources have one or two requests out at a time: room for one, then two
            // (an `InFlight` is 88 bytes) instead of Vec's first four, which were a sixth of a
            // simulated host's heap. Beyond two it grows as usual.
            if st.requests.len() == st.requests.capacity() && st.requests.len() < 2 {
                st.requests.reserve_exact(1);
            }
            st.requests.push(peer::InFlight {
                piece,
                sent: now,
                deadline: now + timeout,
                mark,
                total_mark,
            });
        });
        if self.sources[piece as usize] == 0 {
            self.set_pickable(piece, false);
        }
        self.sources[piece as usize] += 1;
        self.timer_dirty = true;
    }

    /// What to assume about a source not measured yet.
    fn latency_fallback(&self) -> Latency {
        if self.latency.srtt.is_some() {
            self.latency
        } else {
            self.initial_latency()
        }
    }
}

#[cfg(test)]
mod tests;
