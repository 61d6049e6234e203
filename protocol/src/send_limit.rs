//! How many piece answers the origin streams at once: the limit of the gateway's send pool
//! (SPEC §3.7), adapted every [`PERIOD`] to what its uplink shows. The gateway and the
//! simulator both run this code.
//!
//! Why a limit at all: when a fleet starts together, hundreds of nodes ask the origin for
//! distinct pieces at once. Streamed all at once they share the uplink, so every piece lands at
//! about the same moment, one image-time later, and until then the swarm has nothing to pass
//! around. Sent a few at a time, the first pieces land within milliseconds and spread while the
//! rest are sent; the origin is as busy either way — as long as those few fill the uplink.
//!
//! Why it adapts: a fixed limit cannot be right for every fleet. Where the sends are held back
//! by something else — edge sites behind 100 Mbit/s WAN links, receivers busy with their peers
//! — a few sends leave the uplink idle, and a fixed 16 or 8 slowed 20 simulated edge sites from
//! 2.13 to 2.51 and 3.23 × the bound, while 32 left a one-site fleet's first pieces waiting ~0.1 s
//! behind 31 others. So the limit starts at [`MIN_SENDS`] and, at the end of each period in which
//! requests waited for a slot:
//!
//! - grows by half (at least one, up to the configured most) when the last growth raised the
//!   sending rate by more than [`GAIN`] (the sends were not sharing one full uplink; the first
//!   period with requests waiting probes this way), or when the rate is below [`UNDER`] of the
//!   best rate seen (the uplink has room again);
//! - goes back to where it was when the last growth raised nothing and the uplink has no room:
//!   the extra sends would only have slowed the others' first bytes.
//!
//! When no request waits it falls back to the sends in progress, not below the least, so the
//! next fleet-wide pull starts with a short queue again. The best rate decays by [`DECAY`] per
//! period, so a burst (a page-cache read on loopback) does not mark the uplink as under-used
//! for ever (until then the limit may sit higher than it needs, which is what a fixed limit
//! did). Simulated (`simulations/README.md`), against a fixed 32:
//! fleet-10k p99 1.480 → 1.400 × the bound, kraken-2600 1.156 → 1.141 ×, cold-1000 1.451 →
//! 1.384 ×, edge-20x50 unchanged (2.13 × on seed 1, 2.04–2.13 × over three).
//!
//! ```
//! use flotilla_protocol::send_limit::{SendLimit, MIN_SENDS};
//! let mut l = SendLimit::new(32);
//! assert_eq!(l.limit(), MIN_SENDS);
//! // Requests wait and the first periods show the sends are held back elsewhere: it grows.
//! assert_eq!(l.period_end(100.0, true, 4), 6);
//! assert_eq!(l.period_end(150.0, true, 6), 9);
//! // More sends did not send more: the uplink is full, the growth is taken back.
//! assert_eq!(l.period_end(151.0, true, 9), 6);
//! assert_eq!(l.period_end(150.0, true, 6), 6);
//! // Nobody waits: back to what is in use, not below the least.
//! assert_eq!(l.period_end(151.0, false, 2), MIN_SENDS);
//! ```

use std::time::Duration;

/// How often the limit is reconsidered (the rate is measured over it).
pub const PERIOD: Duration = Duration::from_millis(10);

/// The least limit (or the configured most, if that is lower).
pub const MIN_SENDS: usize = 4;

/// A growth that raised the rate by more than this factor earns another.
pub const GAIN: f64 = 1.1;

/// A rate below this fraction of the best seen means the uplink has room.
pub const UNDER: f64 = 0.9;

/// The fraction the best rate seen loses per period.
pub const DECAY: f64 = 0.005;

/// The adaptive limit (see the module docs).
#[derive(Debug, Clone)]
pub struct SendLimit {
    min: usize,
    max: usize,
    limit: usize,
    /// Best rate seen (decaying), bytes/s.
    best: f64,
    /// The limit grew at the end of the last period, from `limit_then` at `rate_then`.
    grew: bool,
    limit_then: usize,
    rate_then: f64,
}

impl SendLimit {
    /// A limit that grows up to `max` (at least 1), starting at [`MIN_SENDS`] or `max`.
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        let min = MIN_SENDS.min(max);
        SendLimit {
            min,
            max,
            limit: min,
            best: 0.0,
            // A first period with requests waiting probes: it has no rate to compare with.
            grew: true,
            limit_then: min,
            rate_then: 0.0,
        }
    }

    /// Sends allowed at once now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A period ended in which the pool sent at `rate` bytes/s, with requests waiting for a
    /// slot at its end or not, and `in_use` sends streaming: the new limit.
    pub fn period_end(&mut self, rate: f64, waiting: bool, in_use: usize) -> usize {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        self.best = (self.best * (1.0 - DECAY)).max(rate);
        let grew = std::mem::take(&mut self.grew);
        let helped = grew && rate > GAIN * self.rate_then;
        if !waiting {
            self.limit = in_use.clamp(self.min, self.limit);
            // Probe again when requests next wait.
            self.grew = true;
            self.limit_then = self.limit;
            self.rate_then = 0.0;
            return self.limit;
        }
        let room = rate < UNDER * self.best;
        if grew && !helped && !room {
            self.limit = self.limit_then;
        } else if (helped || room) && self.limit < self.max {
            self.limit_then = self.limit;
            self.limit = (self.limit + self.limit.div_ceil(2)).min(self.max);
            self.grew = true;
            self.rate_then = rate;
        }
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The uplink (100) shared by the sends, each also held to `each` by its receiver.
    fn rate(sends: usize, each: f64) -> f64 {
        (sends as f64 * each).min(100.0)
    }

    /// `periods` periods with requests waiting and every allowed send streaming at `each`.
    fn run(l: &mut SendLimit, periods: usize, each: f64) -> usize {
        for _ in 0..periods {
            let k = l.limit();
            l.period_end(rate(k, each), true, k);
        }
        l.limit()
    }

    #[test]
    fn sends_that_fill_the_uplink_stay_few() {
        let mut l = SendLimit::new(32);
        run(&mut l, 100, 100.0);
        // One probe (4 -> 6) showed no gain and was taken back.
        assert_eq!(l.limit(), MIN_SENDS);
    }

    #[test]
    fn sends_held_back_elsewhere_grow_until_the_uplink_is_full() {
        let mut l = SendLimit::new(64);
        run(&mut l, 100, 5.0);
        let k = l.limit();
        assert!((20..=45).contains(&k), "{k}");
        assert!(rate(k, 5.0) >= 100.0);
    }

    #[test]
    fn room_on_the_uplink_grows_the_limit_again() {
        let mut l = SendLimit::new(32);
        run(&mut l, 10, 100.0);
        let before = l.limit();
        // Receivers get busy with their peers: each send now moves 10.
        run(&mut l, 10, 10.0);
        assert!(l.limit() >= 10 && l.limit() > before, "{}", l.limit());
    }

    #[test]
    fn never_past_the_most_and_back_down_when_nobody_waits() {
        let mut l = SendLimit::new(8);
        run(&mut l, 50, 1.0);
        assert_eq!(l.limit(), 8);
        assert_eq!(l.period_end(8.0, false, 5), 5);
        assert_eq!(l.period_end(0.0, false, 0), MIN_SENDS);
        // A most below the least is the limit.
        let mut small = SendLimit::new(2);
        assert_eq!(small.limit(), 2);
        assert_eq!(small.period_end(0.0, true, 2), 2);
        assert_eq!(SendLimit::new(0).limit(), 1);
    }

    #[test]
    fn a_burst_is_forgotten() {
        let mut l = SendLimit::new(32);
        l.period_end(1000.0, false, 0);
        // The uplink really moves 100 and the sends fill it: the burst's "room" grows the
        // limit for a while, then fades, and the rate seen is the real one again.
        run(&mut l, 1000, 100.0);
        assert!(l.best < 100.0 / UNDER, "{}", l.best);
        let k = l.limit();
        l.period_end(rate(k, 100.0), true, k);
        assert_eq!(l.limit(), k, "no room, no probe: it stays");
        // Once nobody waits it is back at the least.
        assert_eq!(l.period_end(0.0, false, 0), MIN_SENDS);
    }
}
