//! The scheduler's entry points for answers: a piece received, invalid, failed or refused, the
//! origin's substitutions, and the timeouts of requests that got no answer. Each settles the
//! request in its source's in-flight list and the piece's claim, then wakes the picker.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use super::{Action, Scheduler, Source, peer};

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// Takes the request for `piece` out of `source`'s in-flight list (the piece keeps its
    /// claim in `sources`; the caller releases or settles it).
    pub(super) fn take_request(&mut self, source: Source<P>, piece: u32) -> Option<peer::InFlight> {
        let r = match (
            self.update_source(source, |st| st.take(piece)).flatten(),
            source,
        ) {
            (Some(r), _) => r,
            (None, Source::Peer(p)) => self.take_retired(p, piece)?,
            (None, Source::Origin) => return None,
        };
        match source {
            Source::Origin => self.poll_origin = true,
            Source::Peer(_) => {
                self.peer_in_flight -= 1;
                self.poll_peers = true;
            }
        }
        self.timer_dirty = true;
        Some(r)
    }

    /// `piece` arrived from `source` and passed verification.
    pub fn piece_received(&mut self, source: Source<P>, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() {
            return;
        }
        if let Some(r) = self.take_request(source, piece) {
            let claims = &mut self.sources[piece as usize];
            *claims = claims.saturating_sub(1);
            let max = match source {
                Source::Origin => self.cfg.origin_window,
                Source::Peer(_) => self.cfg.max_window,
            };
            let latency = self.update_source(source, |st| st.success(&r, now, max));
            if let (Source::Peer(_), Some(latency)) = (source, latency) {
                self.latency.sample(latency);
                self.total.deliver(r.total_mark, now);
            }
        }
        if !self.have.set(piece) {
            return;
        }
        if self.rarity.availability(piece) == 0 {
            self.note_new_piece();
        }
        self.last_near_new = self.now;
        self.set_pickable(piece, false);
        if self.sources[piece as usize] > 0 {
            // Cancel the duplicates that lost the race.
            let losers: Vec<Source<P>> = self
                .peers
                .iter()
                .filter(|p| p.source.has_request(piece))
                .map(|p| Source::Peer(p.key))
                .chain(self.retired_requesting(piece).map(Source::Peer))
                .chain(self.origin.has_request(piece).then_some(Source::Origin))
                .collect();
            for source in losers {
                self.take_request(source, piece);
                self.actions.push_back(Action::Cancel { source, piece });
            }
            self.sources[piece as usize] = 0;
        }
        self.timer_dirty = true;
        self.check_done();
    }

    pub(super) fn check_done(&mut self) {
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
        state.source.penalty = state.source.penalty.saturating_add(1);
        if state.strikes >= threshold {
            self.forget_peer(peer);
            if self.banned.len() >= self.cfg.max_banned {
                self.banned.pop_front();
            }
            self.banned.push_back(peer);
            self.actions.push_back(Action::Ban { peer });
        } else {
            if !state.bad.contains(&piece) {
                state.bad.push(piece);
            }
            self.forget_copy(i, piece);
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
        self.update_source(source, |st| st.failure(now, lo, hi));
    }

    /// `source` answered "not now": a peer whose upload slots are full, or an origin that sent
    /// this piece to the swarm moments ago. The piece is requeued with no penalty; a peer is
    /// skipped for about its latency (see the module docs), and the origin is not asked for this piece again
    /// for an origin step (it should reach us through the swarm).
    pub fn request_refused(&mut self, source: Source<P>, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() || self.take_request(source, piece).is_none() {
            return;
        }
        self.release(piece);
        match source {
            Source::Origin => {
                self.end_origin_holds();
                // The origin refuses only when it recently sent every piece offered (SPEC
                // §3.7): all of them are on their way through the swarm.
                let alts = self.take_alternatives(piece);
                let until = self.now + self.origin_step();
                for x in std::iter::once(piece).chain(alts) {
                    if x >= self.have.len() || !self.origin_held.set(x) {
                        continue;
                    }
                    self.origin_hold.push_back((x, until));
                }
            }
            Source::Peer(_) => {
                // A busy uploader frees a send slot within about one piece time: ask again
                // after about one request latency there, not a fixed half second, which on
                // a fast LAN is a hundred piece times of an idle slot (simulated at 2600 nodes:
                // 6 million Busy answers, p99 10 × the bound).
                let (floor, ceiling) = (self.cfg.min_busy_pause, self.cfg.min_backoff);
                let fallback = self.latency_fallback();
                self.update_source(source, |st| {
                    let latency = st.latency.srtt.or(fallback.srtt).unwrap_or(ceiling);
                    let pause = latency.clamp(floor, ceiling.max(floor));
                    st.blocked_until = st.blocked_until.max(now + pause);
                });
            }
        }
    }

    /// The pieces the origin may send instead of `piece`, best first, for the origin request
    /// for `piece` just returned by [`Scheduler::poll_action`]: missing pieces that no
    /// candidate holds, not requested and not held back by a refusal. The origin sends the
    /// first of `piece` and these that it has not sent lately (SPEC §3.7), so the requests that
    /// collide on a piece still bring distinct pieces; the caller reports which one came with
    /// [`Scheduler::origin_substituted`].
    pub fn origin_alternatives(&self, piece: u32) -> &[u32] {
        self.origin_alts
            .iter()
            .rev()
            .find(|(p, _)| *p == piece)
            .map_or(&[], |(_, alts)| alts.as_slice())
    }

    /// The origin answers the request for `asked` with `got` (one of its alternatives): the
    /// request now stands for `got`, and `asked` is free to be requested elsewhere. A `got`
    /// that a candidate or we already hold is cancelled at once, as is one whose request was
    /// cancelled meanwhile. If another origin request of ours asked for `got` itself, end it
    /// first (the gateway refuses it while this copy streams: [`Scheduler::request_refused`]).
    pub fn origin_substituted(&mut self, asked: u32, got: u32, now: Duration) {
        self.tick(now);
        let n = self.have.len();
        if asked >= n || got >= n || asked == got {
            return;
        }
        self.take_alternatives(asked);
        let Some(r) = self.origin.requests.iter_mut().find(|r| r.piece == asked) else {
            // Cancelled before the answer came: stop the transfer the origin started.
            self.actions.push_back(Action::Cancel {
                source: Source::Origin,
                piece: got,
            });
            return;
        };
        r.piece = got;
        self.release(asked);
        if self.sources[got as usize] == 0 {
            self.set_pickable(got, false);
        }
        self.sources[got as usize] += 1;
        self.poll_origin = true;
        self.timer_dirty = true;
        if self.have.get(got) || self.rarity.availability(got) > 0 {
            self.origin.take(got);
            self.actions.push_back(Action::Cancel {
                source: Source::Origin,
                piece: got,
            });
            self.release(got);
        }
    }

    /// Whether a request for `piece` is in flight at `source`.
    pub fn is_requested(&self, source: Source<P>, piece: u32) -> bool {
        match source {
            Source::Origin => self.origin.has_request(piece),
            Source::Peer(p) => {
                self.peer_index(p)
                    .is_some_and(|i| self.peers[i].source.has_request(piece))
                    || self.retired_requesting(piece).any(|r| r == p)
            }
        }
    }

    /// Forgets (and returns) the alternatives offered with the origin request for `piece`.
    fn take_alternatives(&mut self, piece: u32) -> Vec<u32> {
        match self.origin_alts.iter().position(|(p, _)| *p == piece) {
            Some(i) => self.origin_alts.swap_remove(i).1,
            None => Vec::new(),
        }
    }

    /// Time passed: expire overdue requests (cancel + requeue + back off their sources) and
    /// re-evaluate everything that waits on a timer.
    pub fn handle_timeout(&mut self, now: Duration) {
        self.tick(now);
        self.wake();
        self.end_holds();
        let mut expired: Vec<(Source<P>, u32)> = Vec::new();
        let hard_limit = self.cfg.max_timeout;
        // A far peer's request (locality applies) is patient like the origin's, below: it
        // shares the site's WAN link with the whole site, and an uploader finishes a piece it
        // has started, so a cancelled one still crosses the link and the requeued copy crosses
        // it again (simulated, 20 sites × 10 hosts: a third of all WAN deliveries were such
        // second copies).
        // So is a request for a piece still arriving at the peer: it cannot land before that
        // copy does, however near the peer, and a second request elsewhere would follow the
        // same copy or cross the WAN again (simulated, edge-20x50: 0.12 × the image per host
        // landed twice over the LAN).
        let locality = self.locality();
        for p in &mut self.peers {
            let far = locality && !p.near;
            for r in p.source.requests.iter_mut().filter(|r| r.deadline <= now) {
                let waited = now.saturating_sub(r.sent);
                let patient = far || p.arriving.contains(&r.piece);
                if patient && waited < hard_limit {
                    r.deadline = r.sent + (waited * 2).min(hard_limit);
                    self.timer_dirty = true;
                } else {
                    expired.push((Source::Peer(p.key), r.piece));
                }
            }
        }
        for (t, p) in self.peer_times.iter_mut().zip(&self.peers) {
            t.sync(&p.source);
        }
        for (peer, piece) in self.expire_retired(now, hard_limit) {
            expired.push((Source::Peer(peer), piece));
        }
        // The origin is trusted and shared by the whole swarm: a request overdue there is most
        // likely queued behind everyone else's, and cancelling it would only lose its place.
        // Its deadline doubles instead, up to `max_timeout` after it was sent; errors still
        // arrive through `request_failed`.
        for r in self
            .origin
            .requests
            .iter_mut()
            .filter(|r| r.deadline <= now)
        {
            let waited = now.saturating_sub(r.sent);
            if waited >= hard_limit {
                expired.push((Source::Origin, r.piece));
            } else {
                r.deadline = r.sent + (waited * 2).min(hard_limit);
                self.timer_dirty = true;
            }
        }
        let (lo, hi) = (self.cfg.min_backoff, self.cfg.max_backoff);
        let mut last: Option<Source<P>> = None;
        for (source, piece) in expired {
            self.take_request(source, piece);
            self.release(piece);
            self.actions.push_back(Action::Cancel { source, piece });
            // One failure per source per expiry sweep, however many of its requests expired.
            if last != Some(source) {
                self.update_source(source, |st| {
                    st.failure(now, lo, hi);
                    st.timeouts = st.timeouts.saturating_add(1);
                });
            }
            last = Some(source);
        }
    }
}
