//! The scheduler's decisions: which peer gets the next free slot, which piece it is asked for,
//! when the end game duplicates, when a piece may come from the origin, and when the next timer
//! is due. The policies themselves are documented on the parent module.

use std::fmt::Debug;
use std::hash::Hash;
use std::ops::Range;
use std::time::Duration;

use super::Scheduler;
use super::peer::{InFlight, Latency, SourceState, rank};

/// Shortest "nothing new for a while" (see `origin_stall`).
const STALL_FLOOR: Duration = Duration::from_secs(1);
/// "Nothing new for a while" once the node is in its tail (see `tail`).
const TAIL_WAIT: Duration = Duration::from_millis(50);

/// 2^64 as a float, to turn a rank into a fraction.
const RANK_SPAN: f64 = 18_446_744_073_709_551_616.0;

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// Cap on peer requests in flight in total (Little's law; see the module docs).
    pub(super) fn in_flight_cap(&self) -> u32 {
        let (lo, hi) = (self.cfg.min_in_flight.max(1), self.cfg.max_in_flight.max(1));
        let cap = match (self.latency.base, self.total.per_piece) {
            (Some(latency), Some(per_piece)) => {
                let per_piece = per_piece.max(Duration::from_micros(1)).as_nanos();
                let pipe = (latency.as_nanos() * 3).div_ceil(per_piece * 2);
                u32::try_from(pipe).unwrap_or(u32::MAX).saturating_add(2)
            }
            _ => self.cfg.initial_in_flight,
        };
        cap.clamp(lo, hi.max(lo))
    }

    fn fastest_service(&self) -> Option<Duration> {
        self.peers.iter().filter_map(|p| p.source.service()).min()
    }

    /// Peer `i`'s window now: 1 if it is much slower than the fastest peer.
    fn window_of(&self, i: usize, fastest: Option<Duration>) -> u32 {
        let st = &self.peers[i].source;
        match (fastest, st.service()) {
            (Some(best), Some(mine)) if mine > best.saturating_mul(self.cfg.slow_factor) => 1,
            _ => st.window,
        }
    }

    /// Whether every missing piece is requested already (none is left to pick, from a peer
    /// or, later, the origin).
    pub(super) fn end_game(&self) -> bool {
        // A held piece (`spread.rs`) is neither pickable nor requested, but will be soon.
        self.rarity.seen().is_empty() && self.rarity.unseen().is_empty() && self.holds.is_empty()
    }

    /// The next peer request: the cheapest ready peer that can be given a piece.
    pub(super) fn next_peer_request(&mut self) -> Option<(usize, u32)> {
        if self.peer_in_flight >= self.in_flight_cap() {
            return None;
        }
        let now = self.now;
        let fastest = self.fastest_service();
        let end_game = self.end_game();
        let fallback = self.latency;
        let far_full = self.locality() && self.far_in_flight() >= self.cfg.far_window;
        let mut order = std::mem::take(&mut self.scratch);
        order.clear();
        for (i, p) in self.peers.iter().enumerate() {
            if (p.near || !far_full)
                && (p.pickable > 0 || end_game)
                && p.source.ready(now, self.window_of(i, fastest))
            {
                order.push((p.source.cost(fallback), i));
            }
        }
        order.sort_unstable_by_key(|&(cost, i)| (cost, self.peers[i].key));
        let roll = self.rng.next();
        let mut found = None;
        for &(_, i) in &order {
            let pick = if self.peers[i].pickable > 0 {
                self.pick_for_peer(i, roll)
            } else {
                None
            };
            if let Some(piece) = pick.or_else(|| end_game.then(|| self.end_game_pick(i)).flatten())
            {
                found = Some((i, piece));
                break;
            }
        }
        self.scratch = order;
        found
    }

    fn read_window(&self) -> Range<u32> {
        let n = self.have.len();
        let r = self.read_pos.unwrap_or(n).min(n);
        r..r.saturating_add(self.cfg.read_ahead).min(n)
    }

    /// The piece to ask peer `i` for: the read window first, then rarest first.
    fn pick_for_peer(&self, i: usize, roll: u64) -> Option<u32> {
        let p = &self.peers[i];
        // A far peer only for what the site should fetch across the WAN through us.
        let ok = |x: u32| self.can_serve(i, x) && (p.near || self.far_allowed(x));
        if let Some(x) = self
            .read_window()
            .find(|&x| self.rarity.contains(x) && ok(x))
        {
            return Some(x);
        }
        // Among the rarest pieces this peer can serve, start at a seeded random place: the
        // index's order within a bucket follows the order `have`s arrived in (a seeder's bit
        // field makes it ascending), and every node asking a seeder for pieces 0, 1, 2… in
        // the same order would waste it.
        let seen = self.rarity.seen();
        let first = seen.iter().position(|&x| ok(x))?;
        let offset = self.rarity.unseen().len();
        let end = self
            .rarity
            .bucket_end(self.rarity.availability(seen[first]))
            - offset;
        let start = first + (roll % (end - first) as u64) as usize;
        seen[start..end]
            .iter()
            .chain(&seen[first..start])
            .copied()
            .find(|&x| ok(x))
    }

    /// An in-flight piece to duplicate at peer `i`: the oldest straggler it could also serve.
    fn end_game_pick(&self, i: usize) -> Option<u32> {
        let now = self.now;
        self.end_game_candidates()
            .filter(|&(r, due)| due <= now && self.may_duplicate_at(i, r.piece))
            .min_by_key(|(r, _)| (r.sent, r.piece))
            .map(|(r, _)| r.piece)
    }

    /// Whether peer `i` may take an end-game copy of `piece`, which is in flight elsewhere.
    fn may_duplicate_at(&self, i: usize, piece: u32) -> bool {
        let p = &self.peers[i];
        self.sources[piece as usize] < self.cfg.max_duplicates
            && self.can_serve(i, piece)
            && !p.source.has_request(piece)
            // Not a copy still arriving there: it cannot land before that copy, and lands
            // with every other copy passed on from it, all but one wasted.
            && !p.arriving.contains(&piece)
            // Never a second copy across the WAN: that link is what a site is short of.
            && (p.near || !self.locality())
    }

    /// Every request in flight, with the time from which the end game may duplicate it: once
    /// it has taken as long as requests at its source usually take (the source's smoothed
    /// latency, which carries its queue; else this download's; else the initial guess). A
    /// request on time is left alone: the first copy to land wins and every other is dropped
    /// or cut short, and duplicating every last piece at once inflated small layers (8 nodes
    /// pulling 16 one-piece layers dropped 277 MiB besides the 512 they kept).
    fn end_game_candidates(&self) -> impl Iterator<Item = (&InFlight, Duration)> + '_ {
        let fallback = self
            .latency_fallback()
            .srtt
            .unwrap_or(self.cfg.initial_latency);
        let usual = move |s: &SourceState| s.latency.srtt.unwrap_or(fallback);
        self.peers
            .iter()
            .map(|q| &q.source)
            .chain(std::iter::once(&self.origin))
            .flat_map(move |s| {
                let wait = usual(s);
                s.requests.iter().map(move |r| (r, r.sent + wait))
            })
    }

    /// Candidate peers' count subtracted from the swarm size estimate: nodes we cannot see.
    fn unseen_nodes(&self) -> u64 {
        self.swarm_size
            .map_or(0, |n| n.saturating_sub(1 + self.peers.len() as u64))
    }

    /// Who else may fetch a piece from the origin that we fetch: the nodes we cannot see, or
    /// with locality the winners of the other sites (nodes we cannot see over the size of a
    /// site): the origin serves a site about once per piece — what crosses its WAN link
    /// anyway — rather than once per swarm, which held each site back behind the allowance
    /// (simulated, 20 sites knowing their members: p99 117 s, against a 43 s bound).
    fn origin_contenders(&self) -> f64 {
        let unseen = self.unseen_nodes() as f64;
        if self.locality() {
            unseen / self.site_size()
        } else {
            unseen
        }
    }

    /// How long without anything new means the swarm is stuck: 8 × the usual gap between new
    /// pieces, within 1 s ..= [`Config::origin_stall`].
    ///
    /// [`Config::origin_stall`]: super::Config::origin_stall
    fn origin_stall(&self) -> Duration {
        if self.tail() {
            return TAIL_WAIT.min(self.cfg.origin_stall);
        }
        let Some(gap) = self.new_piece_gap else {
            return self.cfg.origin_stall;
        };
        (gap * 8).clamp(STALL_FLOOR, self.cfg.origin_stall.max(STALL_FLOOR))
    }

    /// In its tail: at most an eighth of the blob is missing, no candidate holds any of it and
    /// no peer request is out. Peers can give nothing more, so the usual wait (at least 1 s)
    /// would only delay the pieces the whole swarm waits for: simulated at 1000 nodes, the
    /// last piece's top node deferred to the allowance and everyone finished 5–11 s after the
    /// bound. Herding is bounded: few pieces are left.
    fn tail(&self) -> bool {
        let unseen = self.rarity.unseen().len();
        self.peer_in_flight == 0
            && self.rarity.seen().is_empty()
            && unseen > 0
            && unseen * 8 <= self.have.len() as usize
    }

    fn stalled_since(&self) -> Duration {
        self.last_new_piece + self.origin_stall()
    }

    /// How often the origin allowance grows. Fixed on purpose: the origin's measured latency
    /// is mostly queueing when it is the bottleneck, and scaling the step by it left the
    /// origin idle with pieces nobody was allowed to fetch (measured: 81 s instead of 26 s).
    pub(super) fn origin_step(&self) -> Duration {
        self.cfg.origin_step.max(Duration::from_millis(1))
    }

    fn origin_open(&self) -> Duration {
        self.origin_open
    }

    /// How many unseen nodes may outrank us for a piece we still fetch: the fan-out, plus one
    /// per step since the origin opened. Linear, not doubling: an unseen piece is usually just
    /// queued at the origin for someone else, and a doubling allowance herds every node onto
    /// the last pieces (measured: six copies of one piece within 0.7 s at 500 nodes).
    ///
    /// While the node is stalled it also grows by one per [`Config::origin_stall_step`]: the
    /// pieces still unseen then are those whose top node's lead was large (the gap to the
    /// allowance is exponential-tailed, ~ln(pieces) steps for the last piece of a blob), and
    /// the whole swarm waits on them (measured at 1000 nodes, 10 Gbit/s: the last piece left
    /// the origin 11 s after the others).
    ///
    /// [`Config::origin_stall_step`]: super::Config::origin_stall_step
    fn origin_allowance(&self) -> f64 {
        let since = self.now.saturating_sub(self.origin_open());
        let steps = since.as_nanos() / self.origin_step().as_nanos();
        self.cfg.origin_fanout + steps as f64 + self.stall_steps() as f64
    }

    fn origin_stall_step(&self) -> Duration {
        self.cfg.origin_stall_step.max(Duration::from_millis(1))
    }

    /// Stall steps elapsed since the node stalled (0 when it is not stalled).
    fn stall_steps(&self) -> u128 {
        let since = self.stalled_since();
        if self.now < since {
            return 0;
        }
        (self.now - since).as_nanos() / self.origin_stall_step().as_nanos() + 1
    }

    /// Whether the origin refused `piece` lately; holds that ended must have been dropped
    /// ([`Scheduler::end_origin_holds`]) at this `now`.
    fn origin_held(&self, piece: u32) -> bool {
        self.origin_held.get(piece)
    }

    /// Drops the origin holds that have ended. Holds all last one step, so they end in the
    /// order they began: the ended ones are at the front.
    pub(super) fn end_origin_holds(&mut self) {
        let now = self.now;
        while let Some(&(x, until)) = self.origin_hold.front() {
            if until > now {
                break;
            }
            self.origin_hold.pop_front();
            self.origin_held.clear(x);
        }
    }

    /// The next origin request, if the origin rule allows one.
    pub(super) fn origin_pick(&mut self) -> Option<u32> {
        let now = self.now;
        if now < self.origin_open()
            || self.origin.blocked_until > now
            || self.origin.in_flight() >= self.cfg.origin_window
            || self.rarity.unseen().is_empty()
        {
            return None;
        }
        let stalled = now >= self.stalled_since();
        self.end_origin_holds();
        let unseen_nodes = self.origin_contenders();
        let allowance = self.origin_allowance();
        let locality = self.locality();
        let site = self.site_size();
        // Expected number of nodes ahead of us for `x` among those we cannot see, if we are
        // ahead of every candidate (or stalled); `None` if a candidate outranks us. With
        // locality the contenders are the other sites' winners (`origin_contenders`), and a
        // far candidate is no rival: it defers to its own site's winner, not to us.
        // (The tests are pure; the cheap one that fails for most pieces comes first.)
        let ahead = |x: u32| -> Option<(f64, u64)> {
            if !self.rarity.contains(x) || self.rarity.availability(x) != 0 {
                return None;
            }
            let mine = rank(self.local_hash, x);
            // A site winner ranks above its `site` members: another site's winner is ahead
            // of us with probability 1 − u^site (u: our rank as a fraction; u^1 is u).
            let u = mine as f64 / RANK_SPAN;
            let below = if site == 1.0 { u } else { u.powf(site) };
            let ahead = (1.0 - below) * unseen_nodes;
            if !(ahead < allowance || unseen_nodes == 0.0)
                || self.origin_held(x)
                || !self.far_allowed(x)
            {
                return None;
            }
            if !stalled
                && self
                    .peers
                    .iter()
                    .any(|p| (p.near || !locality) && rank(p.hash, x) > mine)
            {
                return None;
            }
            Some((ahead, mine))
        };
        if let Some(x) = self.read_window().find(|&x| ahead(x).is_some()) {
            return Some(x);
        }
        // The piece we are most surely the first for: fewest collisions with other nodes.
        self.rarity
            .unseen()
            .iter()
            .filter_map(|&x| ahead(x).map(|(_, mine)| (mine, x)))
            .max()
            .map(|(_, x)| x)
    }

    /// Up to [`Config::origin_alternatives`] pieces to offer the origin besides `piece` (see
    /// [`Scheduler::origin_alternatives`]): the read window first, then the pieces we rank
    /// highest for, which are those the rendezvous would next send us to the origin for.
    pub(super) fn pick_alternatives(&self, piece: u32) -> Vec<u32> {
        let max = self.cfg.origin_alternatives;
        let eligible = |x: u32| {
            x != piece
                && self.rarity.contains(x)
                && self.rarity.availability(x) == 0
                && !self.origin_held(x)
                && self.far_allowed(x)
        };
        let mut alts: Vec<u32> = self.read_window().filter(|&x| eligible(x)).collect();
        alts.truncate(max);
        let mut ranked: Vec<(u64, u32)> = self
            .rarity
            .unseen()
            .iter()
            .filter(|&&x| eligible(x) && !alts.contains(&x))
            .map(|&x| (rank(self.local_hash, x), x))
            .collect();
        let room = max - alts.len();
        if ranked.len() > room && room > 0 {
            ranked.select_nth_unstable_by(room - 1, |a, b| b.cmp(a));
            ranked.truncate(room);
        }
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        alts.extend(ranked.into_iter().take(room).map(|(_, x)| x));
        alts
    }

    /// When the next timed event is due: a request deadline, a blocked peer that has something
    /// for us becoming ready, or a change in what the origin rule allows.
    pub(super) fn next_timer(&self) -> Option<Duration> {
        if self.done {
            return None;
        }
        let now = self.now;
        let mut t: Option<Duration> = None;
        let mut consider = |d: Duration| {
            t = Some(t.map_or(d, |t| t.min(d)));
        };
        for (i, p) in self.peer_times.iter().enumerate() {
            if let Some(d) = p.deadline {
                consider(d);
            }
            if p.blocked_until > now && self.peers[i].pickable > 0 {
                consider(p.blocked_until);
            }
        }
        for r in &self.origin.requests {
            consider(r.deadline);
        }
        if let Some(d) = self.retired_deadline() {
            consider(d);
        }
        if let Some(d) = self.near_timer() {
            consider(d);
        }
        if let Some(d) = self.holds.next_end() {
            consider(d);
        }
        if self.end_game() {
            // When the next request in flight becomes a straggler a free slot may duplicate.
            for (r, due) in self.end_game_candidates() {
                if due > now && (0..self.peers.len()).any(|i| self.may_duplicate_at(i, r.piece)) {
                    consider(due);
                }
            }
        }
        if !self.rarity.unseen().is_empty() {
            let stall = self.stalled_since();
            // The earliest hold still running (they end in the order they began).
            let held = self
                .origin_hold
                .iter()
                .map(|&(_, until)| until)
                .find(|&until| until > now);
            for d in [self.origin_open(), self.origin.blocked_until, stall]
                .into_iter()
                .chain(held)
            {
                if d > now {
                    consider(d);
                }
            }
            let unseen_nodes = self.origin_contenders();
            let open = self.origin_open();
            if now >= open && unseen_nodes > 0.0 && self.origin_allowance() < unseen_nodes {
                let step = self.origin_step();
                let k = (now - open).as_nanos() / step.as_nanos() + 1;
                consider(open + step.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX)));
                let k = self.stall_steps();
                if k > 0 {
                    let step = self.origin_stall_step();
                    consider(stall + step.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX)));
                }
            }
        }
        t
    }

    /// What to assume about the origin before it has been measured.
    pub(super) fn initial_latency(&self) -> Latency {
        Latency {
            srtt: Some(self.cfg.initial_latency),
            rttvar: self.cfg.initial_latency / 2,
            base: None,
        }
    }
}
