//! Per-source bookkeeping (window, speed estimate, penalties, back-off) and the small
//! deterministic hashing and random-number helpers the scheduler needs.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::piece::Bitfield;

/// Window, speed and health of one source (a peer or the origin).
#[derive(Debug, Clone)]
pub(super) struct SourceStats {
    pub(super) window: u32,
    pub(super) in_flight: u32,
    /// EWMA of the pipelined service time per piece (time between completions while busy).
    pub(super) piece_time: Option<Duration>,
    pub(super) last_done: Duration,
    /// Recent timeouts and failures; decays by one per success.
    pub(super) penalty: u32,
    pub(super) backoff: Duration,
    pub(super) blocked_until: Duration,
}

impl SourceStats {
    pub(super) fn new(window: u32) -> Self {
        SourceStats {
            window,
            in_flight: 0,
            piece_time: None,
            last_done: Duration::ZERO,
            penalty: 0,
            backoff: Duration::ZERO,
            blocked_until: Duration::ZERO,
        }
    }

    /// Records a completed request sent at `sent`.
    pub(super) fn success(&mut self, sent: Duration, now: Duration, max_window: u32, grow: bool) {
        let sample = now.saturating_sub(sent.max(self.last_done));
        self.piece_time = Some(ewma(self.piece_time, sample));
        self.last_done = now;
        self.penalty = self.penalty.saturating_sub(1);
        self.backoff = Duration::ZERO;
        if grow {
            self.window = (self.window + 1).min(max_window);
        }
    }

    /// Records a timeout or failure: halve the window and back off exponentially.
    pub(super) fn failure(&mut self, now: Duration, min_backoff: Duration, max_backoff: Duration) {
        self.penalty = self.penalty.saturating_add(1);
        self.window = (self.window / 2).max(1);
        self.backoff = (self.backoff * 2).clamp(min_backoff, max_backoff);
        self.blocked_until = now + self.backoff;
    }

    /// Expected time per piece, inflated by recent trouble, for ranking sources.
    pub(super) fn cost(&self, default: Duration) -> Duration {
        self.piece_time
            .unwrap_or(default)
            .saturating_mul(1 + self.penalty.min(16))
    }
}

/// `old + (sample - old) / 4`: reacts within a few pieces, smooths one-off stalls.
pub(super) fn ewma(old: Option<Duration>, sample: Duration) -> Duration {
    match old {
        None => sample,
        Some(o) => (o * 3 + sample) / 4,
    }
}

/// One candidate peer.
#[derive(Debug, Clone)]
pub(super) struct PeerState<P> {
    pub(super) key: P,
    /// Stable hash of the key, for the origin rendezvous.
    pub(super) hash: u64,
    pub(super) have: Bitfield,
    /// Pickable pieces (missing here, not in flight) that this peer holds.
    pub(super) pickable: u32,
    pub(super) stats: SourceStats,
    /// Invalid pieces received from it.
    pub(super) strikes: u32,
    /// Pieces it sent corrupted: never asked of it again (at most ban threshold − 1 entries).
    pub(super) bad: Vec<u32>,
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

/// Rendezvous rank of a node (by its key hash) for a piece: the highest rank fetches it from
/// the origin.
pub(super) fn rank(node_hash: u64, piece: u32) -> u64 {
    splitmix(node_hash ^ u64::from(piece).wrapping_mul(0xd6e8_feb8_6659_fd93))
}

/// xorshift64*: the seeded tie-break generator (no `rand` dependency needed).
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
