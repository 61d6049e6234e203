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
