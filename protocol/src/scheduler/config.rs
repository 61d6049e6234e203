//! The scheduler's tunables ([`Config`]); the policies they tune are documented on the parent
//! module, and [`Config::default`] holds the constants it names.

use std::time::Duration;

/// Tunables; [`Config::default`] holds the documented constants.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the tie-break shuffle (give every node a different one).
    pub seed: u64,
    /// Pieces in flight per peer before its window has adapted.
    pub initial_window: u32,
    /// Most pieces in flight per peer (16 × 4 MiB = 64 MiB, a 10 Gbit/s × 50 ms pipe).
    pub max_window: u32,
    /// Cap on peer requests in flight in total before it has been measured.
    pub initial_in_flight: u32,
    /// Lowest total cap on peer requests in flight.
    pub min_in_flight: u32,
    /// Highest total cap on peer requests in flight.
    pub max_in_flight: u32,
    /// Most pieces in flight from the origin.
    pub origin_window: u32,
    /// Most other pieces an origin request offers the origin in place of the one asked for
    /// ([`Scheduler::origin_alternatives`](super::Scheduler::origin_alternatives)); 0 offers none.
    pub origin_alternatives: usize,
    /// Pieces from the read position on that are picked first.
    pub read_ahead: u32,
    /// A peer this many times slower than the fastest keeps a window of 1.
    pub slow_factor: u32,
    /// Request latency assumed before anything was measured (first timeout = 3 × this).
    pub initial_latency: Duration,
    /// Lower bound of a request timeout.
    pub min_timeout: Duration,
    /// Upper bound of a request timeout.
    pub max_timeout: Duration,
    /// First back-off after a timeout or failure (doubles per repeat); the longest pause after
    /// a Busy answer.
    pub min_backoff: Duration,
    /// The shortest pause after a Busy answer (it is the peer's smoothed latency otherwise).
    pub min_busy_pause: Duration,
    /// Longest back-off.
    pub max_backoff: Duration,
    /// How long a piece a peer answered `PieceBusy` for is not asked of any peer (see
    /// [`Scheduler::piece_busy`](super::Scheduler::piece_busy)).
    pub piece_hold: Duration,
    /// No origin requests this long after start (0 if the caller knows nobody has the blob).
    pub origin_grace: Duration,
    /// Expected first copies of a piece from the origin when views are partial (see the
    /// module docs); grows by one every `origin_step`.
    pub origin_fanout: f64,
    /// How often the origin allowance grows, and how long an origin refusal holds a piece back.
    pub origin_step: Duration,
    /// Longest "nothing new for a while" (it is 8 × the usual gap between new pieces, at
    /// least 1 s), after which a node stops deferring to candidate peers that outrank it for
    /// the origin.
    pub origin_stall: Duration,
    /// While stalled, the origin allowance also grows by one per this step.
    pub origin_stall_step: Duration,
    /// Sources per piece in the end game.
    pub max_duplicates: u8,
    /// Invalid pieces that get a peer banned.
    pub ban_threshold: u32,
    /// Most candidate peers kept.
    pub max_peers: usize,
    /// Most banned peers remembered.
    pub max_banned: usize,
    /// A peer whose round trip ([`Scheduler::peer_rtt`](super::Scheduler::peer_rtt)) is at most this is *near* (same site);
    /// see the locality policy in the module docs.
    pub near_rtt: Duration,
    /// With no new piece at a near peer for this long, one more near node may outrank us for a
    /// piece we then fetch from afar (per elapsed patience): the fallback when the node that
    /// should fetch it for the site is gone or slow.
    pub near_patience: Duration,
    /// Most near nodes remembered from [`Scheduler::set_near_nodes`](super::Scheduler::set_near_nodes).
    pub max_near_nodes: usize,
    /// Most requests in flight at far peers in total, once locality applies: the site's WAN
    /// link is shared by all its members, and every extra far request only slows the others.
    pub far_window: u32,
}

impl Config {
    /// Fits the request pipeline to a node whose downloads are capped at `bytes_per_s` in
    /// all, shared by about `downloads` downloads at a time, for pieces of `piece_size` bytes.
    ///
    /// At a low cap the node's own downlink is the bottleneck, not its peers: every source
    /// looks equally slow, a request takes as long as the cap needs for the pieces in flight
    /// ahead of it, and the default timeouts (from 0.5 s, 3 s before the first sample) would
    /// cancel requests whose bytes are still flowing — each cancel throwing a partial piece
    /// away, the next request no faster. So: no more requests in flight than the download's
    /// share of the cap moves in [`CAPPED_PIPELINE`] (at least 1: one piece at a time keeps a
    /// capped downlink busy, since the cap is far below what any peer sends), a first latency
    /// guess of the time those take, timeouts of at least twice that, and a ceiling 4 × the
    /// floor. A cap the defaults already fit changes nothing.
    pub fn fit_download_cap(&mut self, piece_size: u32, bytes_per_s: u64, downloads: u32) {
        let share = bytes_per_s.max(1) as f64 / f64::from(downloads.max(1));
        let piece_s = f64::from(piece_size.max(1)) / share;
        let fits = (CAPPED_PIPELINE.as_secs_f64() / piece_s).floor() as u32;
        let in_flight = fits.clamp(1, self.max_in_flight.max(1));
        self.max_in_flight = in_flight;
        self.min_in_flight = self.min_in_flight.min(in_flight);
        self.initial_in_flight = self.initial_in_flight.min(in_flight);
        self.origin_window = self.origin_window.min(in_flight);
        let queue = Duration::from_secs_f64(piece_s * f64::from(in_flight + self.origin_window));
        self.initial_latency = self.initial_latency.max(queue);
        self.min_timeout = self.min_timeout.max(queue * 2);
        self.max_timeout = self.max_timeout.max(self.min_timeout * 4);
    }
}

/// How much work in flight a capped download keeps: enough to cover a round trip at its share
/// of the cap, no more (see [`Config::fit_download_cap`]).
pub const CAPPED_PIPELINE: Duration = Duration::from_secs(2);

impl Default for Config {
    fn default() -> Self {
        Config {
            seed: 0,
            initial_window: 2,
            max_window: 16,
            initial_in_flight: 4,
            min_in_flight: 4,
            max_in_flight: 4,
            origin_window: 2,
            origin_alternatives: 16,
            read_ahead: 4,
            slow_factor: 4,
            initial_latency: Duration::from_secs(1),
            min_timeout: Duration::from_millis(500),
            max_timeout: Duration::from_secs(60),
            min_backoff: Duration::from_millis(500),
            min_busy_pause: Duration::from_millis(10),
            max_backoff: Duration::from_secs(30),
            piece_hold: Duration::from_millis(10),
            origin_grace: Duration::from_secs(1),
            origin_fanout: 2.0,
            origin_step: Duration::from_secs(2),
            origin_stall: Duration::from_secs(5),
            origin_stall_step: Duration::from_millis(250),
            max_duplicates: 2,
            ban_threshold: 2,
            max_peers: 32,
            max_banned: 1024,
            near_rtt: Duration::from_millis(10),
            near_patience: Duration::from_secs(30),
            max_near_nodes: 256,
            far_window: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_download_cap_gets_a_short_pipeline_and_long_timeouts() {
        // 1 MiB/s shared by 3 downloads, 4-MiB pieces: 12 s a piece at each share.
        let mut c = Config::default();
        c.fit_download_cap(4 << 20, 1 << 20, 3);
        assert_eq!(
            (c.max_in_flight, c.min_in_flight, c.initial_in_flight),
            (1, 1, 1)
        );
        assert_eq!(c.origin_window, 1);
        // Two pieces (a peer's and the origin's) at 12 s each.
        assert_eq!(c.initial_latency, Duration::from_secs(24));
        assert_eq!(c.min_timeout, Duration::from_secs(48));
        assert_eq!(c.max_timeout, Duration::from_secs(192));
    }

    #[test]
    fn a_cap_the_defaults_fit_changes_nothing() {
        // 10 GB/s: a piece in under 2 ms.
        let mut c = Config::default();
        c.fit_download_cap(4 << 20, 10_000_000_000, 3);
        let d = Config::default();
        assert_eq!(
            (
                c.max_in_flight,
                c.origin_window,
                c.initial_latency,
                c.min_timeout,
                c.max_timeout
            ),
            (
                d.max_in_flight,
                d.origin_window,
                d.initial_latency,
                d.min_timeout,
                d.max_timeout
            )
        );
    }
}
