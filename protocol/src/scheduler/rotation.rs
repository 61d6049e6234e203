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
//! When a replacement is due but no spare is left, or more than [`RotationConfig::max_far`]
//! sessions are far and no near spare is known, [`Rotation::wants_lookup`] says so, so the
//! caller can look for providers before its regular refresh.
//!
//! **Locality.** Given round trips ([`Rotation::peer_rtt`]), providers within
//! [`RotationConfig::near_rtt`] are *near* (same site). A near spare is taken before any other
//! and survives later lookups (a lookup finds providers at random, so near ones are rare in a
//! large multi-site fleet); the near providers seen are remembered ([`Rotation::near_providers`])
//! for the scheduler's rule of who fetches across the WAN for the site
//! ([`Scheduler::set_near_nodes`](super::Scheduler::set_near_nodes)). Sessions are compared only
//! with sessions of their own kind, near with near and far with far: a far session is bounded
//! by the site's WAN link, and judged against LAN sessions it always looked slow and was closed
//! mid-piece (simulated, 20 sites: 696,308 replacements aborting 126 GB). With
//! [`Rotation::progress`] far ones are compared by bytes received, not whole pieces, since one
//! piece over a shared WAN link can outlast a period. A far session that received nothing in a
//! period makes room for a near spare, as long as another far session remains (the site still
//! needs a way to what no near peer holds).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::peer::XorShift;

/// Provider lookups in a row that find only providers found before, after which it no longer counts as short of sessions and its
/// lookups back off to the regular refresh: the node's driver and the simulator's model alike.
pub const FRUITLESS_LOOKUPS: u8 = 3;

/// Providers a download remembers having found, to tell a lookup that found no new one; once
/// it has found this many, the swarm is large enough never to count as exhausted.
pub const SEEN_PROVIDERS: usize = 64;

/// Which providers a download's lookups have found, to tell when they stop finding new ones:
/// after [`FRUITLESS_LOOKUPS`] answers in a row with providers, all found before, the swarm has
/// no more to give and the download no longer counts as short of sessions (the node's driver
/// and the simulator both keep one). Remembers at most [`SEEN_PROVIDERS`]; beyond that the
/// swarm is large enough never to count as exhausted.
#[derive(Debug, Clone)]
pub struct ProviderMemory<P> {
    seen: Vec<P>,
    fruitless: u8,
}

impl<P> Default for ProviderMemory<P> {
    fn default() -> Self {
        ProviderMemory {
            seen: Vec::new(),
            fruitless: 0,
        }
    }
}

impl<P: Copy + Eq> ProviderMemory<P> {
    /// A lookup answered with `found` (without ourselves and the gateway). An empty answer
    /// says nothing: in a cold start nobody has announced yet.
    pub fn answered(&mut self, found: impl IntoIterator<Item = P>) {
        let mut any = false;
        let mut new = self.seen.len() >= SEEN_PROVIDERS;
        for p in found {
            any = true;
            if self.seen.len() < SEEN_PROVIDERS && !self.seen.contains(&p) {
                self.seen.push(p);
                new = true;
            }
        }
        if any {
            self.fruitless = if new {
                0
            } else {
                self.fruitless.saturating_add(1)
            };
        }
    }

    /// Whether the last [`FRUITLESS_LOOKUPS`] answers found nothing new.
    pub fn exhausted(&self) -> bool {
        self.fruitless >= FRUITLESS_LOOKUPS
    }
}

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
    /// A provider whose round trip is at most this is near (the scheduler's
    /// [`Config::near_rtt`](super::Config::near_rtt) should match).
    pub near_rtt: Duration,
    /// Most providers whose round trip is remembered.
    pub max_known: usize,
    /// Far sessions beyond this many make room for near spares.
    pub max_far: usize,
    /// How soon a download short of sessions looks for providers again after its first lookup
    /// (doubling per lookup up to [`RotationConfig::max_lookup_retry`]; see
    /// [`Rotation::lookup_retry`]).
    pub first_lookup_retry: Duration,
    /// The longest of those waits.
    pub max_lookup_retry: Duration,
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
            near_rtt: Duration::from_millis(10),
            max_known: 1024,
            max_far: 2,
            first_lookup_retry: Duration::from_millis(25),
            max_lookup_retry: Duration::from_millis(250),
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
    /// Bytes received in the current period ([`Rotation::progress`]).
    bytes: u64,
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
    /// Providers whose round trip is known: near or not.
    known: BTreeMap<P, bool>,
    /// The same keys in the order they were learnt, to forget the oldest.
    known_order: VecDeque<P>,
    /// The caller reports bytes ([`Rotation::progress`]): sessions are compared by bytes.
    by_bytes: bool,
    /// Entries of `known` that are far.
    far_known: usize,
}

impl<P: Copy + Eq + Ord> Rotation<P> {
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
            known: BTreeMap::new(),
            known_order: VecDeque::new(),
            by_bytes: false,
            far_known: 0,
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
        // Near spares stay when the fleet spans sites: they are what a random lookup rarely
        // finds there. (In one site every provider is near, and the freshest answer wins.)
        let mut kept = std::mem::take(&mut self.spares);
        let keep_near = self.knows_far();
        kept.retain(|&p| keep_near && self.is_near(p) == Some(true));
        kept.truncate(self.cfg.max_spares);
        self.spares = kept;
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

    /// One more spare outside a lookup, e.g. a near node that opened a session to us for the
    /// same blob (it downloads it, so it holds or will hold pieces): unless it has a session,
    /// is a spare already, the list is full, or it was replaced recently and is not near (a
    /// site has few members, and a near one replaced for a moment's Busy answers or idleness
    /// is still the best source of what the site fetched; keeping them out let a download's
    /// sessions drift to far providers, simulated 8 near of 8 → 1 of 8 within a minute).
    pub fn add_spare(&mut self, peer: P) {
        if self.spares.len() < self.cfg.max_spares
            && !self.has_session(peer)
            && (self.is_near(peer) == Some(true) || !self.recent.contains(&peer))
            && !self.spares.contains(&peer)
        {
            self.spares.push(peer);
            self.starved = false;
        }
    }

    /// A random spare, a near one if any, taken off the list (the caller opens a session to
    /// it).
    pub fn take_spare(&mut self) -> Option<P> {
        if self.spares.is_empty() {
            return None;
        }
        let near = self
            .spares
            .iter()
            .filter(|&&p| self.is_near(p) == Some(true))
            .count();
        let roll = self.rng.next();
        let i = if near == 0 {
            (roll % self.spares.len() as u64) as usize
        } else {
            let k = (roll % near as u64) as usize;
            self.spares
                .iter()
                .enumerate()
                .filter(|&(_, &p)| self.is_near(p) == Some(true))
                .nth(k)
                .map_or(0, |(i, _)| i)
        };
        Some(self.spares.swap_remove(i))
    }

    /// The measured round trip to provider `peer` (a session's, a ping's): within
    /// [`RotationConfig::near_rtt`] it is near. Providers never measured count as far for the
    /// choice of spares and as near when sessions are compared (as before round trips).
    pub fn peer_rtt(&mut self, peer: P, rtt: Duration) {
        let near = rtt <= self.cfg.near_rtt;
        match self.known.insert(peer, near) {
            Some(was) => {
                if !was {
                    self.far_known = self.far_known.saturating_sub(1);
                }
            }
            None => {
                self.known_order.push_back(peer);
                if self.known_order.len() > self.cfg.max_known.max(1)
                    && let Some(old) = self.known_order.pop_front()
                    && self.known.remove(&old) == Some(false)
                {
                    self.far_known = self.far_known.saturating_sub(1);
                }
            }
        }
        if !near {
            self.far_known += 1;
        }
    }

    /// Whether `peer` is near, if its round trip is known.
    pub fn is_near(&self, peer: P) -> Option<bool> {
        self.known.get(&peer).copied()
    }

    /// Whether a provider is known to be far: the fleet spans sites, locality matters.
    pub fn knows_far(&self) -> bool {
        self.far_known > 0
    }

    /// The near providers remembered (the caller passes them to
    /// [`Scheduler::set_near_nodes`](super::Scheduler::set_near_nodes)).
    pub fn near_providers(&self) -> impl Iterator<Item = P> + '_ {
        self.known
            .iter()
            .filter(|&(_, &near)| near)
            .map(|(&p, _)| p)
    }

    /// `bytes` of piece data arrived from `peer` (as they stream in, or a whole piece at once):
    /// from the first call on, far sessions are compared by bytes rather than whole pieces
    /// (near ones still by pieces, which take milliseconds there).
    pub fn progress(&mut self, peer: P, bytes: u64) {
        self.by_bytes = true;
        if let Some(s) = self.sessions.iter_mut().find(|s| s.peer == peer) {
            s.bytes = s.bytes.saturating_add(bytes);
        }
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
                bytes: 0,
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
    /// session, if far behind the others of its kind, is to be replaced (as with
    /// [`Rotation::refused`]). `stuck`: no session's peer holds a piece we miss (the
    /// scheduler's availability).
    pub fn tick(&mut self, now: Duration, stuck: bool) -> Option<P> {
        if now < self.period_start + self.cfg.period {
            return None;
        }
        let start = self.period_start;
        self.period_start = now;
        // Per session: (index, near, what it delivered), for those open the whole period.
        let by_bytes = self.by_bytes;
        let judged: Vec<(usize, bool, u64)> = self
            .sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| s.opened <= start)
            .map(|(i, s)| {
                let near = self.is_near(s.peer) != Some(false);
                // Bytes only where a piece can outlast a period (measured: judging LAN
                // sessions by bytes too made a 1000-node cold start 8 % slower).
                let score = if by_bytes && !near {
                    s.bytes
                } else {
                    u64::from(s.pieces)
                };
                (i, near, score)
            })
            .collect();
        for s in &mut self.sessions {
            s.pieces = 0;
            s.bytes = 0;
        }
        let total: u64 = judged.iter().map(|&(_, _, x)| x).sum();
        // Nothing delivered and nothing to be had from these peers: keeping them for good
        // strands the download once the origin is gone. (Not merely "nothing delivered": a
        // piece over a slow WAN link takes longer than a period, and replacing its session
        // aborts it.)
        if total == 0 && stuck {
            // A far one first: near peers are where the site's next pieces will show.
            let (i, _, _) = *judged
                .iter()
                .find(|&&(_, near, _)| !near)
                .or(judged.first())?;
            let peer = self.sessions[i].peer;
            return self.replace(peer, now);
        }
        // With a near spare at hand, the far session that received least makes room for it if
        // there are more than `max_far`, or if it received nothing and another far one
        // remains. Pieces reach a site's members through its LAN mesh: with most sessions far
        // (a lookup's providers are mostly elsewhere), a piece the site fetched once sat at
        // its fetcher unseen by the others, who fetched it again (simulated, 20 sites).
        let far = self
            .sessions
            .iter()
            .filter(|s| self.is_near(s.peer) == Some(false))
            .count();
        let near_spare = self.spares.iter().any(|&p| self.is_near(p) == Some(true));
        let least_far = judged
            .iter()
            .filter(|&&(_, near, _)| !near)
            .min_by_key(|&&(_, _, x)| x);
        if near_spare
            && let Some(&(i, _, x)) = least_far
            && (far > self.cfg.max_far || (far >= 2 && x == 0))
        {
            let peer = self.sessions[i].peer;
            return self.replace(peer, now);
        }
        if far > self.cfg.max_far && !near_spare {
            // Too few near sessions and no near provider known: look again early (a lookup's
            // providers are random, so the site's members turn up a few at a time).
            self.starved = true;
        }
        // The slowest of a kind (only among two or more), if far behind the others' mean.
        for kind in [true, false] {
            let mut worst: Option<(usize, u64)> = None;
            let (mut sum, mut n) = (0u64, 0u64);
            for &(i, near, x) in &judged {
                if near != kind {
                    continue;
                }
                sum += x;
                n += 1;
                if worst.is_none_or(|(_, w)| x < w) {
                    worst = Some((i, x));
                }
            }
            let Some((i, x)) = worst else {
                continue;
            };
            let slow = n >= 2 && {
                let others = (sum - x) as f64 / (n - 1) as f64;
                (x as f64) < self.cfg.slow_fraction * others
            };
            if slow {
                let peer = self.sessions[i].peer;
                return self.replace(peer, now);
            }
        }
        None
    }

    /// How long after its `lookups`-th provider lookup ended a download still short of sessions
    /// should look again: [`RotationConfig::first_lookup_retry`] doubling per lookup, at most
    /// [`RotationConfig::max_lookup_retry`]. A fleet starting together looks up before the others'
    /// announcements have landed and finds nobody; waiting the housekeeping tick's 0.25 s for
    /// the next lookup left every node without a session while the origin's first pieces
    /// arrived (simulated, 1000 hosts: no piece moved between peers before 0.27 s; with the
    /// retry, from 0.08 s).
    pub fn lookup_retry(&self, lookups: u32) -> Duration {
        let doublings = lookups.saturating_sub(1).min(16);
        self.cfg
            .first_lookup_retry
            .saturating_mul(1 << doublings)
            .min(self.cfg.max_lookup_retry)
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

    #[test]
    fn provider_memory_is_exhausted_after_answers_with_nothing_new() {
        let mut m = ProviderMemory::default();
        m.answered([]);
        m.answered([]);
        m.answered([]);
        m.answered([]);
        assert!(!m.exhausted(), "empty answers say nothing");
        m.answered([1, 2]);
        m.answered([2, 1]);
        m.answered([1]);
        assert!(!m.exhausted());
        m.answered([2]);
        assert!(m.exhausted());
        m.answered([3, 1]);
        assert!(!m.exhausted(), "a new provider starts over");
        // A swarm past what it remembers never counts as exhausted.
        let mut big = ProviderMemory::default();
        big.answered(0..SEEN_PROVIDERS as u32);
        for _ in 0..5 {
            big.answered([0, 1]);
        }
        assert!(!big.exhausted());
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_download_short_of_sessions_looks_again_soon_then_backs_off() {
        let r: Rotation<u32> = Rotation::new(RotationConfig::default(), 1, ms(0));
        let waits: Vec<Duration> = (1..=7).map(|n| r.lookup_retry(n)).collect();
        assert_eq!(
            waits,
            [ms(25), ms(50), ms(100), ms(200), ms(250), ms(250), ms(250)]
        );
        assert_eq!(r.lookup_retry(0), ms(25));
        assert_eq!(r.lookup_retry(u32::MAX), ms(250));
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

    const NEAR: Duration = Duration::from_millis(1);
    const FAR: Duration = Duration::from_millis(80);

    #[test]
    fn near_spares_come_first_and_outlive_later_lookups() {
        let mut r = Rotation::new(RotationConfig::default(), 3, ms(0));
        r.peer_rtt(10u32, NEAR);
        for p in [11, 12, 13] {
            r.peer_rtt(p, FAR);
        }
        r.offer([11, 10, 12]);
        r.offer([13]);
        assert_eq!(
            r.spares(),
            2,
            "the near spare stays, the far ones are replaced"
        );
        assert_eq!(r.take_spare(), Some(10));
        assert_eq!(r.take_spare(), Some(13));
        assert_eq!(r.near_providers().collect::<Vec<_>>(), vec![10]);
        assert!(r.knows_far());
    }

    #[test]
    fn in_one_site_the_freshest_lookup_wins() {
        let mut r = Rotation::new(RotationConfig::default(), 3, ms(0));
        for p in [10u32, 11] {
            r.peer_rtt(p, NEAR);
        }
        r.offer([10]);
        r.offer([11]);
        assert_eq!(r.spares(), 1);
        assert_eq!(r.take_spare(), Some(11));
        assert!(!r.knows_far());
    }

    #[test]
    fn far_sessions_are_judged_against_far_ones_by_bytes() {
        let mut r = Rotation::new(RotationConfig::default(), 3, ms(0));
        r.offer([9u32]);
        for (p, rtt) in [(1u32, NEAR), (2, NEAR), (3, FAR), (4, FAR)] {
            r.peer_rtt(p, rtt);
            r.opened(p, ms(0));
        }
        // A WAN session moves a fraction of a piece per period; a LAN one many pieces.
        r.progress(1, 40 << 20);
        r.progress(2, 40 << 20);
        r.progress(3, 200 << 10);
        r.progress(4, 250 << 10);
        assert_eq!(r.tick(ms(1000), false), None);
        // Among far sessions the rule still applies.
        r.progress(1, 40 << 20);
        r.progress(2, 40 << 20);
        r.progress(3, 20 << 10);
        r.progress(4, 250 << 10);
        assert_eq!(r.tick(ms(2000), false), Some(3));
    }

    #[test]
    fn far_sessions_make_room_for_near_spares() {
        let cfg = RotationConfig {
            max_far: 2,
            ..RotationConfig::default()
        };
        let mut r = Rotation::new(cfg, 3, ms(0));
        for (p, rtt) in [(1u32, NEAR), (2, FAR), (3, FAR), (4, FAR)] {
            r.peer_rtt(p, rtt);
            r.opened(p, ms(0));
        }
        for p in 1..=4 {
            r.progress(p, 100 << 10);
        }
        // Three far sessions, no near spare: a lookup is wanted.
        assert_eq!(r.tick(ms(1000), false), None);
        assert!(r.wants_lookup(ms(1000)));
        // A near node downloading from us becomes a spare: the far excess makes room.
        r.peer_rtt(5, NEAR);
        r.add_spare(5);
        for p in 1..=4 {
            r.progress(p, 100 << 10);
        }
        r.progress(3, 1);
        let out = r.tick(ms(2000), false);
        assert!(matches!(out, Some(2 | 4)), "{out:?}");
        assert_eq!(r.take_spare(), Some(5));
        r.opened(5, ms(2000));
        // Two far left: only one that received nothing goes, and only for a near spare.
        r.peer_rtt(6, NEAR);
        r.add_spare(6);
        r.progress(3, 1);
        assert_eq!(r.tick(ms(3000), false), Some(out.map_or(2, |o| 6 - o)));
        assert_eq!(r.take_spare(), Some(6));
        r.opened(6, ms(3000));
        // A near provider replaced moments ago may come back as a spare; a far one may not.
        r.peer_rtt(7, NEAR);
        r.add_spare(7);
        for _ in 0..7 {
            r.refused(5, ms(3200));
        }
        assert_eq!(r.refused(5, ms(3200)), Some(5), "replaced on the eighth");
        assert_eq!(r.take_spare(), Some(7));
        r.add_spare(out.unwrap_or(2));
        assert_eq!(r.spares(), 0, "far and replaced recently");
        r.add_spare(5);
        assert_eq!(r.take_spare(), Some(5));
    }
}
