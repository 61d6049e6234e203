//! Retiring a peer gracefully: the caller's rotation policy replaces a session, and the piece
//! that peer is sending finishes instead of being cut off with the stream.
//!
//! An uploader serves a session's requests in order, so the oldest request at a peer is the one
//! it is sending (or will send next). Dropping the session throws away whatever part of that
//! piece crossed already; in the simulated edge-20x50 fleet such cut pieces were 9.5 % of every
//! byte sent (55.7 of 57.0 GB aborted, 128,141 replacements for 1000 hosts). So a retired peer
//! stops being a candidate at once — its other requests are cancelled and requeued, its pieces
//! stop counting — but its oldest request stays in flight, with its claim on the piece, until
//! it is answered, cancelled (the piece came from elsewhere first) or times out. The caller
//! keeps the session open until then and opens the replacement meanwhile.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use super::peer::InFlight;
use super::{Action, Scheduler, Source};

/// A request kept at a peer being retired.
#[derive(Debug, Clone, Copy)]
pub(super) struct Retired<P> {
    pub(super) peer: P,
    pub(super) request: InFlight,
    /// Its timeout is patient, as a far peer's or a piece still arriving there is
    /// (`Scheduler::handle_timeout`).
    pub(super) patient: bool,
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The caller is closing its session to `peer` to make room for another (its rotation
    /// policy chose it) and lets the piece the peer is sending finish first. The peer stops
    /// being a candidate at once, as with [`Scheduler::peer_removed`]: its other requests are
    /// cancelled (`Cancel` actions) and requeued, and its pieces no longer count.
    ///
    /// Returns the piece still expected from it, its oldest request, if any: the caller keeps
    /// the session until that piece's answer arrives (received, refused, failed — reported as
    /// usual) or the scheduler cancels it (`Cancel`: the piece arrived from elsewhere, or the
    /// request timed out), then closes it. `None`: nothing is expected, close it now. At most
    /// [`Config::max_peers`](super::Config::max_peers) requests are kept this way at once;
    /// beyond that every request is cancelled.
    pub fn peer_retiring(&mut self, peer: P, now: Duration) -> Option<u32> {
        self.tick(now);
        let i = self.peer_index(peer)?;
        let room = self.retired.len() < self.cfg.max_peers;
        let locality = self.locality();
        let state = &mut self.peers[i];
        let mut requests = std::mem::take(&mut state.source.requests);
        self.peer_times[i].sync(&state.source);
        let kept = if room && !requests.is_empty() {
            Some(requests.remove(0))
        } else {
            None
        };
        let patient =
            kept.is_some_and(|r| (locality && !state.near) || state.arriving.contains(&r.piece));
        self.peer_in_flight -= requests.len() as u32;
        for r in &requests {
            self.release(r.piece);
            self.actions.push_back(Action::Cancel {
                source: Source::Peer(peer),
                piece: r.piece,
            });
        }
        // Its requests are out of its state, so this releases none of them.
        self.forget_peer(peer);
        let request = kept?;
        self.retired.push(Retired {
            peer,
            request,
            patient,
        });
        self.timer_dirty = true;
        Some(request.piece)
    }

    /// Takes the request for `piece` kept at retired peer `peer`, if there is one.
    pub(super) fn take_retired(&mut self, peer: P, piece: u32) -> Option<InFlight> {
        let k = self
            .retired
            .iter()
            .position(|r| r.peer == peer && r.request.piece == piece)?;
        Some(self.retired.swap_remove(k).request)
    }

    /// `peer` is gone for good: the request kept there, if any, is requeued.
    pub(super) fn forget_retired(&mut self, peer: P) {
        while let Some(k) = self.retired.iter().position(|r| r.peer == peer) {
            let r = self.retired.swap_remove(k);
            self.peer_in_flight -= 1;
            self.release(r.request.piece);
            self.wake();
        }
    }

    /// Retired peers whose kept request is for `piece`.
    pub(super) fn retired_requesting(&self, piece: u32) -> impl Iterator<Item = P> + '_ {
        self.retired
            .iter()
            .filter(move |r| r.request.piece == piece)
            .map(|r| r.peer)
    }

    /// Kept requests overdue at `now` (see `Scheduler::handle_timeout`): patient ones get
    /// their deadline doubled up to `hard_limit` after they were sent, the others are
    /// returned for expiry.
    pub(super) fn expire_retired(&mut self, now: Duration, hard_limit: Duration) -> Vec<(P, u32)> {
        let mut expired = Vec::new();
        for r in self
            .retired
            .iter_mut()
            .filter(|r| r.request.deadline <= now)
        {
            let waited = now.saturating_sub(r.request.sent);
            if r.patient && waited < hard_limit {
                r.request.deadline = r.request.sent + (waited * 2).min(hard_limit);
                self.timer_dirty = true;
            } else {
                expired.push((r.peer, r.request.piece));
            }
        }
        expired
    }

    /// The earliest deadline of a kept request.
    pub(super) fn retired_deadline(&self) -> Option<Duration> {
        self.retired.iter().map(|r| r.request.deadline).min()
    }
}
