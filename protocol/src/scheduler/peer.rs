//! Per-source bookkeeping: the requests in flight at a source (a peer or the origin), what its
//! completions tell us about it (latency, service time, trouble), the window that follows from
//! that, and the small deterministic hashing and random-number helpers the scheduler needs.

use std::hash::{Hash, Hasher};
use std::time::Duration;

/// One request in flight at a source.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    pub(super) piece: u32,
    pub(super) sent: Duration,
    pub(super) deadline: Duration,
    /// Delivery count at this source when it was sent, for its delivery-rate sample.
    pub(super) mark: Mark,
    /// The same over all peers (origin requests leave it unused).
    pub(super) total_mark: Mark,
}

/// Deliveries so far and when the interval a delivery-rate sample covers starts.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Mark {
    delivered: u64,
    at: Duration,
}

/// Delivery rate, measured as BBR does: a request's sample covers the deliveries made between
/// the last delivery before it was sent (or its sending, if the pipe was idle) and its own, so
/// it is neither fooled by pieces that land together nor stretched by queueing behind others.
/// Kept as the time per piece, min-filtered: the pipe's capacity is its *fastest* sustained
/// rate, the slower samples being limited by what we had in flight.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rate {
    delivered: u64,
    last: Duration,
    pub(super) per_piece: Option<Duration>,
}

impl Rate {
    pub(super) fn mark(&self, now: Duration, idle: bool) -> Mark {
        Mark {
            delivered: self.delivered,
            at: if idle { now } else { self.last },
        }
    }

    pub(super) fn deliver(&mut self, mark: Mark, now: Duration) {
        self.delivered += 1;
        self.last = now;
        let pieces = u32::try_from(self.delivered - mark.delivered).unwrap_or(u32::MAX);
        let sample = now.saturating_sub(mark.at) / pieces.max(1);
        // Drops at once, rises by 1/32 of the gap per sample: follows a source that got
        // slower within a few dozen pieces, while ignoring samples our own window limited.
        self.per_piece = Some(match self.per_piece {
            Some(t) if sample >= t => t + (sample - t) / 32,
            _ => sample,
        });
    }
}

/// Request latency (sent → verified piece): TCP-style smoothed latency and variation
/// (RFC 6298) for timeouts, and the lowest latency seen — round trip plus one service time,
/// with the least queueing — for sizing windows. The minimum never rises: a window sized on
/// latencies that include our own queue would grow its own queue.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Latency {
    pub(super) srtt: Option<Duration>,
    pub(super) rttvar: Duration,
    pub(super) base: Option<Duration>,
}

impl Latency {
    pub(super) fn sample(&mut self, latency: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(latency);
                self.rttvar = latency / 2;
            }
            Some(old) => {
                let diff = old.abs_diff(latency);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((old * 7 + latency) / 8);
            }
        }
        self.base = Some(self.base.map_or(latency, |b| b.min(latency)));
    }

    /// `srtt + 4 × rttvar`, if measured.
    pub(super) fn rto(&self) -> Option<Duration> {
        self.srtt.map(|s| s + self.rttvar * 4)
    }
}

/// Bandwidth × delay in pieces, with headroom: `⌈5/4 × base / per_piece⌉ + 1`. The 5/4 makes
/// a window that is too small grow (each round moves 5/4 more than the last until the rate
/// stops rising); the +1 keeps a piece waiting at the source when the round trip is short.
pub(super) fn pipe_size(base: Duration, per_piece: Duration) -> u32 {
    let per_piece = per_piece.max(Duration::from_micros(1)).as_nanos();
    let pipe = (base.as_nanos() * 5).div_ceil(per_piece * 4);
    u32::try_from(pipe).unwrap_or(u32::MAX).saturating_add(1)
}

/// Window, speed and health of one source.
#[derive(Debug, Clone)]
pub(super) struct SourceState {
    /// Requests in flight, oldest first.
    pub(super) requests: Vec<InFlight>,
    /// Most requests in flight at once (adapted; see [`SourceState::target_window`]).
    pub(super) window: u32,
    pub(super) rate: Rate,
    pub(super) latency: Latency,
    /// Recent timeouts and failures; decays by one per success.
    pub(super) penalty: u32,
    /// Timeouts in a row: each doubles the next request timeout (Karn).
    pub(super) timeouts: u32,
    pub(super) backoff: Duration,
    pub(super) blocked_until: Duration,
}

impl SourceState {
    pub(super) fn new(window: u32) -> Self {
        SourceState {
            requests: Vec::new(),
            window,
            rate: Rate::default(),
            latency: Latency::default(),
            penalty: 0,
            timeouts: 0,
            backoff: Duration::ZERO,
            blocked_until: Duration::ZERO,
        }
    }

    /// Time per piece at this source's best measured rate.
    pub(super) fn service(&self) -> Option<Duration> {
        self.rate.per_piece
    }

    pub(super) fn in_flight(&self) -> u32 {
        // At most max_window (or origin_window) entries.
        self.requests.len() as u32
    }

    pub(super) fn has_request(&self, piece: u32) -> bool {
        self.requests.iter().any(|r| r.piece == piece)
    }

    /// Removes the request for `piece`, if any.
    pub(super) fn take(&mut self, piece: u32) -> Option<InFlight> {
        let k = self.requests.iter().position(|r| r.piece == piece)?;
        Some(self.requests.remove(k))
    }

    /// Whether a request may be sent now.
    pub(super) fn ready(&self, now: Duration, window: u32) -> bool {
        self.blocked_until <= now && self.in_flight() < window
    }

    /// Records a completed request; returns its latency for the scheduler-wide statistics.
    pub(super) fn success(&mut self, r: &InFlight, now: Duration, max_window: u32) -> Duration {
        let latency = now.saturating_sub(r.sent);
        self.rate.deliver(r.mark, now);
        self.latency.sample(latency);
        self.penalty = self.penalty.saturating_sub(1);
        self.timeouts = 0;
        self.backoff = Duration::ZERO;
        let target = self.target_window(max_window);
        // Grow by one per completion (slow start), shrink to the target at once.
        self.window = if self.window < target {
            self.window + 1
        } else {
            target
        };
        latency
    }

    /// The window that keeps this source's pipe full and little fuller ([`pipe_size`]),
    /// within `1..=max_window`.
    pub(super) fn target_window(&self, max_window: u32) -> u32 {
        let (Some(base), Some(per_piece)) = (self.latency.base, self.rate.per_piece) else {
            return self.window.min(max_window);
        };
        pipe_size(base, per_piece).clamp(1, max_window.max(1))
    }

    /// Records a timeout or failure: halve the window and back off exponentially.
    pub(super) fn failure(&mut self, now: Duration, min_backoff: Duration, max_backoff: Duration) {
        self.penalty = self.penalty.saturating_add(1);
        self.window = (self.window / 2).max(1);
        self.backoff = (self.backoff * 2).clamp(min_backoff, max_backoff);
        self.blocked_until = now + self.backoff;
    }

    /// The timeout of a request sent now: `srtt + 4 × rttvar` (this source's, else `fallback`),
    /// plus the time per piece of the requests already queued ahead of it, doubled per recent
    /// timeout, within `lo..=hi`.
    pub(super) fn timeout(&self, fallback: Latency, lo: Duration, hi: Duration) -> Duration {
        let stats = if self.latency.srtt.is_some() {
            self.latency
        } else {
            fallback
        };
        let base = stats.rto().unwrap_or(hi);
        let queued = self
            .service()
            .or(stats.srtt)
            .unwrap_or(Duration::ZERO)
            .saturating_mul(self.in_flight());
        (base + queued)
            .saturating_mul(1 << self.timeouts.min(6))
            .clamp(lo, hi.max(lo))
    }

    /// Expected time until a new request here completes — smoothed latency plus the pieces
    /// queued ahead of it — inflated by recent trouble: what free slots are ranked by. The
    /// smoothed latency, unlike the base one, carries the queue other downloaders build at
    /// this source, so load spreads to idle uploaders (measured: p99 completion 1.4 → 1.25 ×
    /// the bound at 500–2000 nodes).
    pub(super) fn cost(&self, fallback: Latency) -> Duration {
        let latency = self
            .latency
            .srtt
            .or(fallback.srtt)
            .unwrap_or(Duration::ZERO);
        let queued = self
            .service()
            .unwrap_or(latency)
            .saturating_mul(self.in_flight());
        (latency + queued).saturating_mul(1 + self.penalty.min(16))
    }
}

/// What the hot loops need of candidate peer `i`, kept in `Scheduler::peer_times[i]` beside
/// `peers[i]`: looking a peer up by key and computing the next timer then read one dense array
/// instead of a 240-byte [`PeerState`] and its request list per peer (at 100,000 simulated
/// hosts every scheduler is cold in the cache, and those scans were a tenth of the run).
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerTimes<P> {
    pub(super) key: P,
    /// The earliest deadline of its requests in flight, if any.
    pub(super) deadline: Option<Duration>,
    /// A copy of its [`SourceState::blocked_until`].
    pub(super) blocked_until: Duration,
}

impl<P> PeerTimes<P> {
    pub(super) fn new(key: P, source: &SourceState) -> Self {
        let mut t = PeerTimes {
            key,
            deadline: None,
            blocked_until: Duration::ZERO,
        };
        t.sync(source);
        t
    }

    /// Brings the copy up to date after `source` changed.
    pub(super) fn sync(&mut self, source: &SourceState) {
        self.deadline = source.requests.iter().map(|r| r.deadline).min();
        self.blocked_until = source.blocked_until;
    }
}

/// The candidates' bit fields, one row per candidate in `peers` order, in one allocation: a
/// `have` reads its peer's row straight from the scheduler, not through the peer's state and a
/// separate allocation (two cache misses one after the other, at 100,000 simulated hosts), and
/// a piece's holders are found without touching the peers that lack it.
#[derive(Debug, Clone)]
pub(super) struct PeerBits {
    /// Words per row.
    row: usize,
    rows: usize,
    words: Vec<u64>,
}

impl PeerBits {
    /// Rows for a blob of `pieces` pieces (none yet).
    pub(super) fn new(pieces: u32) -> Self {
        PeerBits {
            row: pieces.div_ceil(64) as usize,
            rows: 0,
            words: Vec::new(),
        }
    }

    /// Appends an empty row.
    pub(super) fn push_row(&mut self) {
        self.rows += 1;
        self.words.resize(self.rows * self.row, 0);
    }

    /// Removes row `i`, moving the last row into its place (as `Vec::swap_remove`).
    pub(super) fn swap_remove_row(&mut self, i: usize) {
        let Some(last) = self.rows.checked_sub(1) else {
            return;
        };
        self.rows = last;
        if i < last {
            let (from, to) = (last * self.row, i * self.row);
            self.words.copy_within(from..from + self.row, to);
        }
        self.words.truncate(last * self.row);
    }

    fn at(&self, i: usize, piece: u32) -> (usize, u64) {
        (i * self.row + (piece / 64) as usize, 1 << (piece % 64))
    }

    pub(super) fn get(&self, i: usize, piece: u32) -> bool {
        let (w, bit) = self.at(i, piece);
        self.words.get(w).is_some_and(|x| x & bit != 0)
    }

    /// Sets the bit; whether it was clear.
    pub(super) fn set(&mut self, i: usize, piece: u32) -> bool {
        let (w, bit) = self.at(i, piece);
        match self.words.get_mut(w) {
            Some(x) if *x & bit == 0 => {
                *x |= bit;
                true
            }
            _ => false,
        }
    }

    /// Clears the bit; whether it was set.
    pub(super) fn clear(&mut self, i: usize, piece: u32) -> bool {
        let (w, bit) = self.at(i, piece);
        match self.words.get_mut(w) {
            Some(x) if *x & bit != 0 => {
                *x &= !bit;
                true
            }
            _ => false,
        }
    }

    /// The pieces row `i` holds, ascending.
    pub(super) fn ones(&self, i: usize) -> Vec<u32> {
        let start = i * self.row;
        let words = self.words.get(start..start + self.row).unwrap_or(&[]);
        let mut out = Vec::new();
        for (k, &w) in words.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                out.push(k as u32 * 64 + w.trailing_zeros());
                w &= w - 1;
            }
        }
        out
    }
}

/// One candidate peer.
#[derive(Debug, Clone)]
pub(super) struct PeerState<P> {
    pub(super) key: P,
    /// Stable hash of the key, for the origin rendezvous.
    pub(super) hash: u64,
    /// Pickable pieces (missing here, not in flight) that this peer holds.
    pub(super) pickable: u32,
    pub(super) source: SourceState,
    /// Invalid pieces received from it.
    pub(super) strikes: u32,
    /// Pieces it sent corrupted: never asked of it again (at most ban threshold − 1 entries).
    pub(super) bad: Vec<u32>,
    /// Within [`Config::near_rtt`](super::Config::near_rtt), or its round trip is not known
    /// (see `locality.rs`).
    pub(super) near: bool,
    /// Pieces it announced as arriving and not yet whole (a few at a time: its own transfers).
    pub(super) arriving: Vec<u32>,
}

/// FNV-1a: a `Hasher` whose output depends only on the bytes fed, on every build.
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A hash of `key` that is the same in every process, so nodes agree on rendezvous ranks.
pub(super) fn stable_hash<P: Hash>(key: &P) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    splitmix(h.finish())
}

/// SplitMix64's finaliser: a cheap, well-mixed bijection.
pub(super) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Rendezvous rank of a node (by its key hash) for a piece: higher ranks go to the origin first.
pub(super) fn rank(node_hash: u64, piece: u32) -> u64 {
    splitmix(node_hash ^ u64::from(piece).wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// xorshift64*: the seeded tie-break generator (no `rand` dependency needed).
#[derive(Debug, Clone)]
pub(super) struct XorShift(u64);

impl XorShift {
    pub(super) fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point; mix the seed so 0 and small seeds are fine.
        XorShift(splitmix(seed) | 1)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fisher–Yates shuffle.
    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
