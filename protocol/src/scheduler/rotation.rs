//! Which transfer sessions a download keeps: a sans-IO policy the node's fetch driver and the
//! fleet simulator both run, next to the [`Scheduler`](super::Scheduler).
//!
//! A download holds sessions to at most a few providers (8 in the node). Keeping the first ones
//! it opened for good concentrates a swarm that starts together on the first providers found:
//! they end up serving hundreds of sessions each and answer Busy over and over, while providers
//! announced later serve nobody (simulated, 2,600 hosts: host upload utilisation 0.10, 7 M Busy
//! answers). So, as BitTorrent rotates an optimistic unchoke, a session is replaced by a fresh
//! provider when
//! - its last [`RotationConfig::busy_streak`] answers were all Busy (the uploader's send slots
//!   are taken by others; its capacity is better left to them), or
//! - at the end of a [`RotationConfig::period`] it delivered the fewest pieces of all sessions
//!   that were open for the whole period, and less than [`RotationConfig::slow_fraction`] of
//!   the others' mean (a slow, distant or overloaded uploader, or one holding nothing we miss),
//!   or no session delivered anything in that period and none of their peers holds a piece
//!   we miss (kept for good, they strand a download once the origin has gone),
//!
//! at most one replacement per [`RotationConfig::min_gap`], and only while a spare provider is
//! known. Spares are the providers of the last lookup that got no session; a new session goes
//! to a random one (not the first found, which everyone else found first too). A replaced
//! provider is not taken again until [`RotationConfig::max_recent`] others were replaced.
//! When a replacement is due but no spare is left, [`Rotation::wants_lookup`] says so, so the
//! caller can look for providers before its regular refresh.

use std::collections::VecDeque;
use std::time::Duration;

use super::peer::XorShift;

/// Tunables of [`Rotation`]; the defaults are the node's.
#[derive(Debug, Clone)]
pub struct RotationConfig {
    /// Busy answers in a row, with no piece in between, after which a session is replaced.
    pub busy_streak: u32,
    /// The window over which sessions' deliveries are compared.
    pub period: Duration,
    /// A session that delivered less than this fraction of the other sessions' mean over a
    /// period (and the fewest) is replaced.
    pub slow_fraction: f64,
    /// Shortest time between two replacements in one download.
    pub min_gap: Duration,
    /// Most spare providers kept.
    pub max_spares: usize,
    /// Most replaced providers remembered (and not taken back as spares).
    pub max_recent: usize,
    /// Shortest time between two early lookups asked for by [`Rotation::wants_lookup`].
    pub lookup_gap: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            busy_streak: 8,
            period: Duration::from_secs(1),
            slow_fraction: 0.5,
            min_gap: Duration::from_millis(100),
            max_spares: 32,
            max_recent: 32,
            lookup_gap: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone)]
struct Tracked<P> {
    peer: P,
    opened: Duration,
    /// Pieces delivered in the current period.
    pieces: u32,
    /// Busy answers since the last piece.
    busy_run: u32,
}

/// The session-replacement policy of one download (see the module docs).
#[derive(Debug, Clone)]
pub struct Rotation<P> {
    cfg: RotationConfig,
    sessions: Vec<Tracked<P>>,
    spares: Vec<P>,
    recent: VecDeque<P>,
    period_start: Duration,
    last_replace: Option<Duration>,
    /// A replacement was due and no spare was known.
    starved: bool,
    last_early_lookup: Option<Duration>,
    rng: XorShift,
    replaced: u64,
}

impl<P: Copy + Eq> Rotation<P> {
    /// A policy for a download starting at `now`; `seed` varies the random provider choice.
    pub fn new(cfg: RotationConfig, seed: u64, now: Duration) -> Self {
        Rotation {
            cfg,
            sessions: Vec::new(),
            spares: Vec::new(),
            recent: VecDeque::new(),
            period_start: now,
            last_replace: None,
            starved: false,
            last_early_lookup: None,
            rng: XorShift::new(seed ^ 0x5e55_1025),
            replaced: 0,
        }
    }

    /// Sessions replaced so far.
    pub fn replaced(&self) -> u64 {
        self.replaced
    }

    /// Spare providers known now.
    pub fn spares(&self) -> usize {
        self.spares.len()
    }

    /// A lookup's providers, already stripped of ourselves and of anyone the caller will not
    /// open a session to. Those without a session and not replaced recently become the spares
    /// (the freshest answer wins: older spares may have filled up or left).
    pub fn offer(&mut self, providers: impl IntoIterator<Item = P>) {
        self.spares.clear();
        for p in providers {
            if self.spares.len() >= self.cfg.max_spares {
                break;
            }
            if !self.has_session(p) && !self.recent.contains(&p) && !self.spares.contains(&p) {
                self.spares.push(p);
            }
        }
        if !self.spares.is_empty() {
            self.starved = false;
        }
    }

    /// A random spare, taken off the list (the caller opens a session to it).
    pub fn take_spare(&mut self) -> Option<P> {
        if self.spares.is_empty() {
            return None;
        }
        let i = (self.rng.next() % self.spares.len() as u64) as usize;
        Some(self.spares.swap_remove(i))
    }

    /// Forgets `peer` as a spare (banned, or a session was opened to it some other way).
    pub fn forget(&mut self, peer: P) {
        self.spares.retain(|&p| p != peer);
    }

    /// A session to `peer` is open.
    pub fn opened(&mut self, peer: P, now: Duration) {
        self.forget(peer);
        if !self.has_session(peer) {
            self.sessions.push(Tracked {
                peer,
                opened: now,
                pieces: 0,
                busy_run: 0,
            });
        }
    }

    /// The session to `peer` is gone (closed, banned, or replaced).
    pub fn closed(&mut self, peer: P) {
        self.sessions.retain(|s| s.peer != peer);
    }

    /// `peer` delivered a piece.
    pub fn delivered(&mut self, peer: P) {
        if let Some(s) = self.sessions.iter_mut().find(|s| s.peer == peer) {
            s.pieces = s.pieces.saturating_add(1);
            s.busy_run = 0;
        }
    }

    /// `peer` answered Busy. Returns `Some(peer)` if its session is to be replaced now: the
    /// caller closes it (and tells its scheduler) and opens one to [`Rotation::take_spare`].
    pub fn refused(&mut self, peer: P, now: Duration) -> Option<P> {
        let s = self.sessions.iter_mut().find(|s| s.peer == peer)?;
        s.busy_run = s.busy_run.saturating_add(1);
        if s.busy_run < self.cfg.busy_streak {
            return None;
        }
        self.replace(peer, now)
    }

    /// Called on the caller's periodic housekeeping: at the end of each period, the slowest
    /// session, if far behind the others, is to be replaced (as with [`Rotation::refused`]).
    /// `stuck`: no session's peer holds a piece we miss (the scheduler's availability).
    pub fn tick(&mut self, now: Duration, stuck: bool) -> Option<P> {
        if now < self.period_start + self.cfg.period {
            return None;
        }
        let start = self.period_start;
        self.period_start = now;
        // Only sessions open for the whole period are compared, and only among two or more.
        let mut worst: Option<(usize, u32)> = None;
        let mut total = 0u64;
        let mut n = 0u64;
        for (i, s) in self.sessions.iter().enumerate() {
            if s.opened > start {
                continue;
            }
            total += u64::from(s.pieces);
            n += 1;
            if worst.is_none_or(|(_, w)| s.pieces < w) {
                worst = Some((i, s.pieces));
            }
        }
        for s in &mut self.sessions {
            s.pieces = 0;
        }
        let (i, pieces) = worst?;
        // Nothing delivered and nothing to be had from these peers: keeping them for good
        // strands the download once the origin is gone. (Not merely "nothing delivered": a
        // piece over a slow WAN link takes longer than a period, and replacing its session
        // aborts it.)
        let idle = total == 0 && stuck;
        let slow = n >= 2 && {
            let others = (total - u64::from(pieces)) as f64 / (n - 1) as f64;
            f64::from(pieces) < self.cfg.slow_fraction * others
        };
        if !idle && !slow {
            return None;
        }
        let peer = self.sessions[i].peer;
        self.replace(peer, now)
    }

    /// Whether the caller should look for providers before its regular refresh: a
    /// replacement was due and no spare was left. Counts as asked once it returns `true`.
    pub fn wants_lookup(&mut self, now: Duration) -> bool {
        if !self.starved
            || self
                .last_early_lookup
                .is_some_and(|t| now < t + self.cfg.lookup_gap)
        {
            return false;
        }
        self.starved = false;
        self.last_early_lookup = Some(now);
        true
    }

    fn has_session(&self, peer: P) -> bool {
        self.sessions.iter().any(|s| s.peer == peer)
    }

    fn replace(&mut self, peer: P, now: Duration) -> Option<P> {
        if self.spares.is_empty() {
            self.starved = true;
            return None;
        }
        if self
            .last_replace
            .is_some_and(|t| now < t + self.cfg.min_gap)
        {
            return None;
        }
        self.last_replace = Some(now);
        self.replaced += 1;
        self.closed(peer);
        if self.recent.len() >= self.cfg.max_recent {
            self.recent.pop_front();
        }
        self.recent.push_back(peer);
        Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_session_that_keeps_answering_busy_is_replaced_by_a_spare() {
        let mut r = Rotation::new(RotationConfig::default(), 1, ms(0));
        r.opened(1u32, ms(0));
        r.opened(2, ms(0));
        for k in 0..7 {
            assert_eq!(r.refused(1, ms(k)), None);
        }
        // No spare yet: kept, and a lookup is wanted (once).
        assert_eq!(r.refused(1, ms(8)), None);
        assert!(r.wants_lookup(ms(8)));
        assert!(!r.wants_lookup(ms(9)));
        r.offer([1, 2, 3, 4]);
        assert_eq!(r.spares(), 2, "sessions are not spares");
        assert_eq!(r.refused(1, ms(10)), Some(1));
        assert_eq!(r.refused(1, ms(11)), None, "no longer a session");
        let next = r.take_spare();
        assert!(matches!(next, Some(3 | 4)), "{next:?}");
        // A replaced provider is not offered again soon.
        r.offer([1, 5]);
        assert_eq!(r.take_spare(), Some(5));
        assert_eq!(r.take_spare(), None);
    }

    #[test]
    fn a_piece_resets_the_busy_streak_and_replacements_are_spaced() {
        let mut r = Rotation::new(RotationConfig::default(), 1, ms(0));
        r.offer([10, 11, 12]);
        r.opened(1u32, ms(0));
        r.opened(2, ms(0));
        for _ in 0..7 {
            assert_eq!(r.refused(1, ms(1)), None);
        }
        r.delivered(1);
        for _ in 0..7 {
            assert_eq!(r.refused(1, ms(2)), None);
        }
        assert_eq!(r.refused(1, ms(3)), Some(1));
        for _ in 0..8 {
            assert_eq!(r.refused(2, ms(50)), None, "within min_gap");
        }
        assert_eq!(r.refused(2, ms(103)), Some(2));
    }

    #[test]
    fn the_slowest_session_is_replaced_only_when_far_behind() {
        let mut r = Rotation::new(RotationConfig::default(), 7, ms(0));
        r.offer([9u32]);
        for p in 1..=3 {
            r.opened(p, ms(0));
        }
        let deliver = |r: &mut Rotation<u32>, p: u32, n: u32| {
            for _ in 0..n {
                r.delivered(p);
            }
        };
        deliver(&mut r, 1, 10);
        deliver(&mut r, 2, 9);
        deliver(&mut r, 3, 6);
        assert_eq!(r.tick(ms(500), false), None, "period not over");
        assert_eq!(r.tick(ms(1000), false), None, "6 is not below half of 9.5");
        deliver(&mut r, 1, 10);
        deliver(&mut r, 2, 10);
        deliver(&mut r, 3, 2);
        // A session opened during the period is not judged.
        r.opened(4, ms(1500));
        assert_eq!(r.tick(ms(2000), false), Some(3));
        // Nobody delivered anything: one idle session makes room.
        assert_eq!(r.tick(ms(3000), false), None, "peers may still help");
        assert_eq!(r.tick(ms(4000), true), Some(1));
        // Without a spare nothing changes, and a lookup is wanted.
        assert_eq!(r.take_spare(), Some(9));
        assert_eq!(r.tick(ms(5000), true), None);
        assert!(r.wants_lookup(ms(5000)));
    }
}
