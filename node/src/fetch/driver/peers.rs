//! The driver's side of the swarm: provider lookups (and of the site key, SPEC §6.2), transfer
//! sessions to providers, what they report, and the strikes that ban a peer that lies or
//! stalls.

use std::time::Duration;

use flotilla_protocol::scheduler::Source;
use flotilla_protocol::site::{SITE_LOOKUP_LIMIT, label_rtt};
use libp2p::PeerId;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Driver, Internal};
use crate::fetch::Waste;
use crate::ports::Verdict;
use crate::transfer::{Opened, Session, SessionEvent, SessionEventKind};

/// Sessions a download may open beyond `max_peers_per_blob` to holders the gateway names
/// when it refuses a piece (see `connect_to_holder`).
const HOLDER_EXTRA: usize = 4;

/// `Missing` answers after which a peer is banned, as at the second corrupted piece. The
/// scheduler asks a peer only for pieces it advertised (in its Welcome or a Have), and an honest
/// node never loses a piece it announced while it serves the blob, so each such answer is a lie
/// about its bit field.
const MISSING_STRIKES: u32 = 2;
/// Timeout sweeps in a row in which a peer let requests expire without sending a byte of any
/// answer in between, after which it is banned: it accepts requests and then stalls them,
/// holding pieces hostage until the scheduler's timeouts (which double) fire again and again.
/// A slow but honest uploader keeps its session's progress counter moving and is never counted.
/// An overloaded one may still look like this, so the ban covers this download only.
const STALL_STRIKES: u32 = 3;

/// Misbehaviour seen from one peer during this download.
#[derive(Default)]
pub(super) struct Strikes {
    missing: u32,
    /// Consecutive sweeps with an expired request and no progress in between.
    stalls: u32,
    /// The session's progress counter when the last stall was counted.
    progress: u64,
    /// Since when the peer has neither answered nor made progress while requests expired.
    quiet_since: Option<Instant>,
    /// The sweep (scheduler time) that last counted a stall, so a sweep counts once per peer.
    last_sweep: Option<Duration>,
}

impl Driver {
    /// Replaces the session to `peer` for the rotation policy with one to a spare provider. The
    /// old session first finishes the piece the peer is sending (`Scheduler::peer_retiring`
    /// cancels its other requests) and closes once that piece is answered or cancelled:
    /// dropping it at once cut the piece off, and every copy passed on from it (simulated
    /// edge-20x50: 9.5 % of all bytes sent were such cut pieces).
    pub(super) fn replace_session(&mut self, peer: PeerId, why: &str) {
        let now = self.now();
        let kept = self.sched.peer_retiring(peer, now);
        debug!(digest = %self.digest, %peer, ?kept, "replacing a session: {why}");
        if let Some(piece) = kept
            && let Some(session) = self.sessions.remove(&peer)
        {
            self.rotation.closed(peer);
            self.retiring.insert(peer, (session, piece));
            self.rank_dirty = true;
        } else {
            self.drop_peer(peer);
        }
        self.fill();
    }

    /// The open session to `peer`, retiring or not.
    pub(super) fn session(&self, peer: PeerId) -> Option<&Session> {
        self.sessions
            .get(&peer)
            .or_else(|| self.retiring.get(&peer).map(|(s, _)| s))
    }

    /// The piece the retiring session to `peer` waits for, if it is retiring.
    pub(super) fn retiring_for(&self, peer: PeerId) -> Option<u32> {
        self.retiring.get(&peer).map(|&(_, piece)| piece)
    }

    /// Opens sessions to spare providers (a random one each time) up to the per-blob limit.
    pub(super) fn fill(&mut self) {
        while self.sessions.len() + self.connecting.len() < self.inner.cfg.max_peers_per_blob {
            let Some(peer) = self.rotation.take_spare() else {
                break;
            };
            if self.may_open(peer) {
                self.open_session(peer);
            }
        }
    }

    pub(super) fn lookup_providers(&mut self) {
        self.lookup_running = true;
        self.last_lookup = Some(Instant::now());
        self.lookups = self.lookups.saturating_add(1);
        if self.lookups <= 6 || self.swarm_hint > 1 {
            let inner = self.inner.clone();
            let digest = self.digest.clone();
            self.tasks.spawn(async move {
                Internal::Swarm(inner.gateway.swarm(&digest).await.unwrap_or_default())
            });
        }
        let limit = self.inner.cfg.max_peers_per_blob.saturating_mul(2).max(8);
        let lookup = self.inner.network.find_providers(&self.digest, limit);
        let site_lookup = self.site.is_some().then(|| {
            self.inner
                .network
                .find_site_providers(&self.digest, SITE_LOOKUP_LIMIT)
        });
        self.tasks.spawn(async move {
            let (found, near) = match site_lookup {
                Some(site) => futures::join!(lookup, site),
                None => (lookup.await, Ok(Vec::new())),
            };
            Internal::Providers { found, near }
        });
    }

    /// Tells the rotation policy (and, for a candidate about to be added, the scheduler) on
    /// which side of the site boundary `peer` is, as its site label says.
    pub(super) fn set_site(&mut self, peer: PeerId, near: bool) {
        let rtt = label_rtt(near);
        if near {
            self.far.remove(&peer);
        } else {
            self.far.insert(peer);
        }
        self.rotation.peer_rtt(peer, rtt);
        let now = self.now();
        self.sched.peer_rtt(peer, rtt, now);
    }

    /// Hands the scheduler the members of our site known to download this blob (from lookups of
    /// the site key and Welcomes) for its one-fetch-per-site rule; only with a site, and from
    /// the first lookup on: a host may fetch from afar (the origin, which is no session) before
    /// its first far session opens. The simulator's driver does the same.
    pub(super) fn share_near_nodes(&mut self) {
        if self.site.is_none() {
            return;
        }
        let near: Vec<PeerId> = self.rotation.near_providers().collect();
        self.sched.set_near_nodes(near);
    }

    /// Offers new providers to the rotation policy as spares and opens sessions to random ones,
    /// up to the per-blob limit (`None`: the lookup failed, the spares stay). Members of our
    /// site (`near`) come back as spares even if
    /// replaced lately: `offer` keeps recently replaced providers out, and a site has few
    /// members (simulated, 20 sites of 5 hosts: members that had been replaced once were never
    /// taken back, and pieces their site held came from afar after 30 s; p99 38 → 2 × the
    /// bound).
    pub(super) fn connect_to(&mut self, peers: Option<Vec<PeerId>>, near: &[PeerId]) {
        if let Some(peers) = peers {
            let mut usable = Vec::with_capacity(peers.len());
            for peer in peers {
                if self.may_open(peer) {
                    usable.push(peer);
                }
            }
            self.rotation.offer(usable);
        }
        for &peer in near {
            if self.may_open(peer) {
                self.rotation.add_spare(peer);
            }
        }
        self.fill();
    }

    /// The gateway refused a piece because it just went to `peer`: that peer holds pieces
    /// nobody else has yet, and this node may have no session to it (sessions go to a few
    /// providers, not the whole swarm), so it would never see the piece announced. Opens one,
    /// beyond the per-blob limit if need be, by at most [`HOLDER_EXTRA`] sessions.
    pub(super) fn connect_to_holder(&mut self, peer: PeerId) {
        if !self.may_open(peer) {
            return;
        }
        let limit = self.inner.cfg.max_peers_per_blob + HOLDER_EXTRA;
        if self.sessions.len() + self.connecting.len() >= limit {
            return;
        }
        debug!(digest = %self.digest, %peer, "opening a session to the holder the gateway named");
        self.open_session(peer);
    }

    /// Whether a session to `peer` may be opened: not ourselves, not the gateway (the origin),
    /// not one we have or are opening, nor one banned or refused.
    pub(super) fn may_open(&self, peer: PeerId) -> bool {
        !(peer == self.local
            || Some(peer) == self.gateway
            || self.sessions.contains_key(&peer)
            || self.connecting.contains_key(&peer)
            || self.banned.contains(&peer)
            || self.inner.is_banned(&peer)
            || self.refused.contains(&peer))
    }

    /// Starts opening a session to `peer`.
    pub(super) fn open_session(&mut self, peer: PeerId) {
        self.connecting.insert(peer, Vec::new());
        let network = self.inner.network.clone();
        let sink = self.inner.sink.clone();
        let digest = self.digest.clone();
        let events = self.events_tx.clone();
        let limit = self.inner.cfg.connect_timeout;
        self.tasks.spawn(async move {
            let opened = tokio::time::timeout(limit, async {
                let stream = network.open_stream(peer).await.map_err(|e| e.to_string())?;
                Session::open(peer, stream, digest, sink, events)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
            Internal::Connected {
                peer,
                result: opened.unwrap_or_else(|_| Err("timed out".to_owned())),
            }
        });
    }

    /// Drops `peer` for this blob and, since a peer that lies about one blob is not trusted
    /// with any other, for every download of this node. The caller tells the scheduler, unless
    /// the ban was the scheduler's own decision.
    pub(super) fn ban(&mut self, peer: PeerId, why: &str) {
        self.ban_for(peer, why, true);
    }

    /// [`Driver::ban`], for every download (`everywhere`) or this one only.
    pub(super) fn ban_for(&mut self, peer: PeerId, why: &str, everywhere: bool) {
        if !self.banned.insert(peer) {
            return;
        }
        warn!(digest = %self.digest, %peer, everywhere, "banning peer: {why}");
        self.sessions.remove(&peer);
        self.retiring.remove(&peer);
        self.strikes.remove(&peer);
        self.rotation.closed(peer);
        self.rotation.forget(peer);
        if everywhere {
            self.inner.ban(peer);
        }
        self.stats.banned();
        self.inner.totals.banned();
        self.outstanding.retain(|(s, _)| *s != Source::Peer(peer));
        self.reconcile = true;
        self.rank_dirty = true;
    }

    /// A ban the scheduler did not decide: it must forget the peer too.
    pub(super) fn ban_and_remove(&mut self, peer: PeerId, why: &str, everywhere: bool) {
        if self.session(peer).is_some() {
            let now = self.now();
            self.sched.peer_removed(peer, now);
        }
        self.ban_for(peer, why, everywhere);
    }

    /// `peer` let a request expire in this timeout sweep.
    pub(super) fn stalled(&mut self, peer: PeerId) {
        let now = self.now();
        let progress = self.session(peer).map_or(0, Session::progress);
        let st = self.strikes.entry(peer).or_default();
        if st.last_sweep == Some(now) {
            return;
        }
        st.last_sweep = Some(now);
        if st.progress != progress {
            // Bytes arrived since the last count: slow, not silent.
            st.progress = progress;
            st.stalls = 0;
            st.quiet_since = None;
            return;
        }
        st.stalls += 1;
        let quiet = st.quiet_since.get_or_insert_with(Instant::now).elapsed();
        if st.stalls >= STALL_STRIKES && quiet >= self.inner.cfg.peer_stall {
            self.ban_and_remove(
                peer,
                "it accepted requests and answered none of them, sweep after sweep",
                false,
            );
        }
    }

    /// `peer` answered our request for `piece` (whatever the answer): it is not stalling, the
    /// request is no longer outstanding, and the store's bits may have changed.
    pub(super) fn answered(&mut self, peer: PeerId, piece: u32) {
        if let Some(st) = self.strikes.get_mut(&peer) {
            st.stalls = 0;
            st.quiet_since = None;
        }
        self.outstanding.remove(&(Source::Peer(peer), piece));
        self.reconcile = true;
        if self.retiring_for(peer) == Some(piece) {
            self.close_retiring(peer, "its piece was answered");
        }
    }

    /// Closes the retiring session to `peer` (dropping it resets the stream): the answers of
    /// requests cancelled there will not come.
    pub(super) fn close_retiring(&mut self, peer: PeerId, why: &str) {
        if self.retiring.remove(&peer).is_some() {
            debug!(digest = %self.digest, %peer, "retired session closed: {why}");
            self.outstanding.retain(|(s, _)| *s != Source::Peer(peer));
        }
    }

    /// Forgets a peer whose session is gone or unusable.
    pub(super) fn drop_peer(&mut self, peer: PeerId) {
        self.sessions.remove(&peer);
        self.retiring.remove(&peer);
        self.far.remove(&peer);
        self.rotation.closed(peer);
        self.outstanding.retain(|(s, _)| *s != Source::Peer(peer));
        let now = self.now();
        self.sched.peer_removed(peer, now);
        self.reconcile = true;
        self.rank_dirty = true;
    }

    pub(super) fn on_event(&mut self, ev: SessionEvent) {
        if let Some(early) = self.connecting.get_mut(&ev.peer) {
            // Bounded: a session announces each piece at most once, then closes.
            if early.len() <= self.table.table.piece_count() as usize + 8 {
                early.push(ev);
            }
            return;
        }
        let peer = ev.peer;
        if self.session(peer).is_none() {
            // A session we dropped (banned or refused): nothing more to learn from it.
            return;
        }
        let now = self.now();
        let source = Source::Peer(peer);
        match ev.kind {
            SessionEventKind::Have(piece) => {
                self.sched.peer_have(peer, piece, now);
                self.rank_piece(piece);
            }
            SessionEventKind::Arriving(piece) => {
                self.sched.peer_arriving(peer, piece, now);
                self.rank_piece(piece);
            }
            SessionEventKind::Withdrawn(piece) => {
                self.sched.peer_withdrew(peer, piece, now);
                self.rank_piece(piece);
            }
            SessionEventKind::Received {
                piece,
                verdict,
                bytes,
            } => {
                if verdict == Verdict::Verified && self.retiring_for(peer) == Some(piece) {
                    self.stats.retired();
                    self.inner.totals.retired();
                }
                self.answered(peer, piece);
                if verdict != Verdict::Invalid {
                    self.rotation.delivered(peer);
                }
                let bytes = u64::from(bytes);
                match verdict {
                    // A duplicate whose winning copy was never reported (a late answer to a
                    // cancelled request) is counted as this source's.
                    Verdict::Verified | Verdict::Duplicate if self.counted.set(piece) => {
                        self.stats.peer(bytes);
                        self.inner.totals.peer(bytes);
                        if self.far.contains(&peer) {
                            self.stats.far(bytes);
                            self.inner.totals.far(bytes);
                        }
                        self.sched.piece_received(source, piece, now);
                    }
                    Verdict::Verified | Verdict::Duplicate => {
                        debug!(digest = %self.digest, %peer, piece, bytes, "dropped a duplicate copy");
                        self.wasted(bytes, Waste::Duplicate);
                        self.sched.piece_received(source, piece, now);
                    }
                    Verdict::Invalid => {
                        warn!(digest = %self.digest, %peer, piece, "peer sent a corrupted piece");
                        self.wasted(bytes, Waste::Invalid);
                        self.sched.piece_invalid(peer, piece, now);
                        self.rank_dirty = true;
                    }
                }
            }
            SessionEventKind::Refused(piece) => {
                self.answered(peer, piece);
                self.sched.request_refused(source, piece, now);
                if self.rotation.refused(peer, now).is_some() {
                    self.replace_session(peer, "it keeps answering Busy");
                }
            }
            // Not load: the uploader is copying this piece to others (SPEC §5.2), so it does
            // not count towards replacing the session.
            SessionEventKind::PieceBusy(piece) => {
                self.answered(peer, piece);
                self.sched.piece_busy(source, piece, now);
            }
            // The copy it was passing on was lost upstream (like PieceBusy, nobody's fault), or
            // we cancelled the request while it arrived.
            SessionEventKind::Abandoned { piece, bytes } => {
                debug!(digest = %self.digest, %peer, piece, bytes, "dropped a copy that ended part way");
                self.answered(peer, piece);
                self.wasted(u64::from(bytes), Waste::Cut);
                self.sched.piece_busy(source, piece, now);
            }
            SessionEventKind::Failed(piece) => {
                self.answered(peer, piece);
                self.sched.request_failed(source, piece, now);
            }
            SessionEventKind::Missing(piece) => {
                self.answered(peer, piece);
                self.sched.request_failed(source, piece, now);
                let st = self.strikes.entry(peer).or_default();
                st.missing += 1;
                if st.missing >= MISSING_STRIKES {
                    self.ban_and_remove(
                        peer,
                        "it advertised pieces it then said it does not hold",
                        true,
                    );
                }
            }
            SessionEventKind::Closed(reason) => {
                debug!(digest = %self.digest, %peer, reason = ?reason, "session closed");
                self.drop_peer(peer);
            }
        }
    }

    pub(super) fn on_connected(&mut self, peer: PeerId, result: Result<(Session, Opened), String>) {
        let early = self.connecting.remove(&peer).unwrap_or_default();
        let (session, opened) = match result {
            Ok(ok) => ok,
            Err(e) => {
                debug!(digest = %self.digest, %peer, error = %e, "cannot open a session");
                // Try a spare in its place.
                self.fill();
                self.check_cold_start();
                return;
            }
        };
        if self.banned.contains(&peer) || self.refused.contains(&peer) {
            self.check_cold_start();
            return;
        }
        if let Some(site) = &self.site {
            // Before `peer_added`, so its bit field is never counted as near by mistake.
            let near = opened.site.as_deref() == Some(site.as_str());
            self.set_site(peer, near);
        }
        let now = self.now();
        if !self.sched.peer_added(peer, opened.have, now) {
            debug!(digest = %self.digest, %peer, "scheduler refused the peer");
            self.refused.insert(peer);
            self.check_cold_start();
            return;
        }
        debug!(digest = %self.digest, %peer, "session open");
        self.rank_dirty = true;
        self.sessions.insert(peer, session);
        self.rotation.opened(peer, now);
        self.share_near_nodes();
        for ev in early {
            self.on_event(ev);
        }
        self.check_cold_start();
    }
}
