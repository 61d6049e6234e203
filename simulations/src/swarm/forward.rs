//! Passing a piece on while it arrives, as the node does (SPEC §5.2, pieces protocol 2): the
//! first copy of a piece to start arriving at a host is its *claim*; once the claim's first
//! batch is in, the host offers the piece to its subscribers (`peer_arriving`), and a request
//! for it is served at once. A copy passed on this way cannot land before the host's own: if
//! its bytes are all sent first, it waits (holding its send slot, as the node's server does
//! while it waits for the next batch) and lands one batch after the host's copy. If the claim
//! is lost (its transfer aborted), every copy passed on from it is abandoned — the downloader
//! hears PieceBusy — and so, down the chain, are theirs, and the host withdraws its offer
//! (`peer_withdrew` at its subscribers); a request for the piece that it no longer offers is
//! answered PieceBusy.
//!
//! Optimistic in one way: a copy passed on is not held to its source's rate, only to its end.

use super::{Ev, Swarm, Tell};
use crate::flow::Nanos;
use crate::net::nanos;
use flotilla_protocol::piece::Bitfield;

/// The node's store publishes a claim's progress per written batch, a first of 512 KiB and
/// then 1 MiB (its store's `Tuning`): a piece is offered once the first is in, and the last
/// part leaves one (last) batch after the copy lands.
pub(super) const BATCH: f64 = (512 << 10) as f64;
/// The batches after the first.
const LATER_BATCH: f64 = (1 << 20) as f64;

/// The last batch of a piece of `len` bytes: what is left after the first batch and the whole
/// later ones (512 KiB of a 4-MiB piece).
fn last_batch(len: f64) -> f64 {
    if len <= BATCH {
        return len;
    }
    let rest = (len - BATCH) % LATER_BATCH;
    if rest == 0.0 { LATER_BATCH } else { rest }
}

/// A piece arriving at a task's host through its claiming copy.
#[derive(Debug)]
pub(super) struct Arrival {
    piece: u32,
    /// The flow bringing the claim (from a peer or the origin).
    flow: u32,
    /// One-way delay from the claim's source.
    owd: Nanos,
    /// Offered to subscribers (its first batch is in).
    offered: bool,
    /// The claim's bytes have all been sent (it lands one delay later).
    sent: bool,
    /// Copies passed on: (stream, its flow, all its bytes sent and waiting for the claim).
    followers: Vec<(u32, u32, bool)>,
}

impl Swarm<'_> {
    fn arrival(&self, t: u32, piece: u32) -> Option<usize> {
        self.tasks[t as usize]
            .arrivals
            .iter()
            .position(|a| a.piece == piece)
    }

    /// Whether task `t`'s host serves `piece` while it arrives: `Some(true)` if it offers it
    /// now, `Some(false)` if it offered it before (a request then is answered PieceBusy),
    /// `None` if it never did.
    pub(super) fn serves_arriving(&self, t: u32, piece: u32) -> Option<bool> {
        let ever = self.tasks[t as usize]
            .offered
            .as_ref()
            .is_some_and(|o| o.get(piece));
        ever.then(|| {
            self.arrival(t, piece)
                .is_some_and(|k| self.tasks[t as usize].arrivals[k].offered)
        })
    }

    /// A flow bringing `piece` to task `t` from a source `owd` away started: it is the claim
    /// unless the piece is held or another copy already claims it.
    pub(super) fn claim(&mut self, t: u32, piece: u32, flow: u32, owd: Nanos) {
        if !self.fleet.params.forward_arriving {
            return;
        }
        let held = self.scheds[t as usize]
            .as_deref()
            .is_none_or(|s| s.have().get(piece));
        if held || self.arrival(t, piece).is_some() {
            return;
        }
        self.tasks[t as usize].arrivals.push(Arrival {
            piece,
            flow,
            owd,
            offered: false,
            sent: false,
            followers: Vec::new(),
        });
        self.plan_first_batch(t, piece, flow, owd, 0.0);
    }

    /// Plans the check for the claim's first batch, when `need` more bytes may be in.
    fn plan_first_batch(&mut self, t: u32, piece: u32, flow: u32, owd: Nanos, moved: f64) {
        let blob = usize::from(self.host_blob(t).1);
        let need = BATCH.min(self.blobs[blob].piece_len(piece)) - moved;
        // A flow just started has no rate until the next re-rating: take the share that will
        // give it (one check per copy, not two, unless the flows around it change meanwhile).
        let rate = match self.net.engine.rate(flow) {
            r if r > 0.0 => r,
            _ => match self.net.engine.share(flow) {
                r if r > 0.0 => r,
                _ => self.fleet.hosts[self.host_blob(t).0 as usize].effective_down(),
            },
        };
        let at = self.now + owd + nanos(need.max(0.0) / rate).max(1);
        self.push(
            at,
            Ev::FirstBatch {
                task: t,
                piece,
                flow,
            },
        );
    }

    /// The check planned by [`Swarm::plan_first_batch`]: offers the piece once its first batch
    /// is in (bytes sent by `owd` ago), else looks again.
    pub(super) fn first_batch(&mut self, t: u32, piece: u32, flow: u32) {
        let Some(k) = self.arrival(t, piece) else {
            return;
        };
        let a = &self.tasks[t as usize].arrivals[k];
        if a.flow != flow {
            return;
        }
        if !a.sent {
            let owd = a.owd;
            let e = &self.net.engine;
            let moved = e.moved(flow, self.now) - e.rate(flow) * (owd as f64 / 1e9);
            let blob = usize::from(self.host_blob(t).1);
            if moved < BATCH.min(self.blobs[blob].piece_len(piece)) {
                self.plan_first_batch(t, piece, flow, owd, moved.max(0.0));
                return;
            }
        }
        let pieces = self.blobs[usize::from(self.host_blob(t).1)].pieces;
        let task = &mut self.tasks[t as usize];
        task.arrivals[k].offered = true;
        task.offered
            .get_or_insert_with(|| Bitfield::new(pieces))
            .set(piece);
        self.stats.arriving_offers += 1;
        self.broadcast(t, piece, Tell::Arriving);
    }

    /// The claim of `piece` at `t` (over `flow`) has sent all its bytes.
    pub(super) fn claim_sent(&mut self, t: u32, piece: u32, flow: u32) {
        if let Some(k) = self.arrival(t, piece) {
            let a = &mut self.tasks[t as usize].arrivals[k];
            if a.flow == flow {
                a.sent = true;
            }
        }
    }

    /// Stream `stream` starts passing on `piece` while it arrives at its uploader `up`.
    pub(super) fn follow(&mut self, up: u32, piece: u32, stream: u32, flow: u32) {
        if let Some(k) = self.arrival(up, piece) {
            self.tasks[up as usize].arrivals[k]
                .followers
                .push((stream, flow, false));
        }
    }

    /// The flow of a copy passed on ended with all its bytes sent. Returns `true` if it must
    /// wait for the uploader's own copy (the caller then keeps its slot and delivers nothing).
    pub(super) fn follower_sent(&mut self, up: u32, piece: u32, stream: u32, flow: u32) -> bool {
        let Some(k) = self.arrival(up, piece) else {
            return false;
        };
        let a = &mut self.tasks[up as usize].arrivals[k];
        match a
            .followers
            .iter_mut()
            .find(|f| f.0 == stream && f.1 == flow)
        {
            Some(f) => {
                f.2 = true;
                let s = &mut self.streams[stream as usize];
                s.forwarding = true;
                s.forwarding_piece = piece;
                true
            }
            None => false,
        }
    }

    /// A copy passed on from `up` stopped (its flow aborted): it no longer follows the claim.
    pub(super) fn unfollow(&mut self, up: u32, piece: u32, stream: u32) {
        if let Some(k) = self.arrival(up, piece) {
            self.tasks[up as usize].arrivals[k]
                .followers
                .retain(|f| f.0 != stream);
        }
    }

    /// Task `t` now holds `piece`: copies passed on that wait for it land one batch later.
    pub(super) fn arrival_done(&mut self, t: u32, piece: u32) {
        let Some(k) = self.arrival(t, piece) else {
            return;
        };
        let a = self.tasks[t as usize].arrivals.swap_remove(k);
        for (stream, _, waiting) in a.followers {
            if waiting {
                self.release_follower(stream, piece, true);
            }
        }
    }

    /// The claim of `piece` at `t` over `flow` was lost: every copy passed on from it is
    /// abandoned, and down the chain theirs.
    pub(super) fn claim_lost(&mut self, t: u32, piece: u32, flow: u32) {
        let Some(k) = self.arrival(t, piece) else {
            return;
        };
        if self.tasks[t as usize].arrivals[k].flow != flow {
            return;
        }
        let a = self.tasks[t as usize].arrivals.swap_remove(k);
        let held = self.scheds[t as usize]
            .as_deref()
            .is_none_or(|s| s.have().get(piece));
        if a.offered && !held && self.hosts[self.host_blob(t).0 as usize].alive {
            self.broadcast(t, piece, Tell::Withdrawn);
        }
        for (stream, follower_flow, waiting) in a.followers {
            if waiting {
                let down = self.streams[stream as usize].down;
                self.release_follower(stream, piece, false);
                self.claim_lost(down, piece, follower_flow);
            } else if self.streams[stream as usize].active == Some(follower_flow) {
                self.stats.abandoned += 1;
                // Aborting it loses the downloader's claim in turn.
                self.abort_stream_flow(stream);
                self.piece_busy_on(stream, piece);
                self.start_next(stream);
            }
        }
    }

    /// Answers the downloader of `stream` PieceBusy for `piece`, one delay on (a copy
    /// abandoned, a piece withdrawn, or one going to enough others already).
    pub(super) fn piece_busy_on(&mut self, stream: u32, piece: u32) {
        let s = &self.streams[stream as usize];
        let (up_host, down) = (self.host_blob(s.up).0, s.down);
        let owd = self.net.owd_hosts(up_host, self.host_blob(down).0);
        self.push(
            self.now + owd,
            Ev::PieceBusy {
                task: down,
                src: up_host,
                piece,
            },
        );
    }

    /// A copy passed on whose bytes were all sent stops waiting: it lands one batch after its
    /// uploader's copy (`deliver`) or is abandoned; its send slot frees either way.
    fn release_follower(&mut self, stream: u32, piece: u32, deliver: bool) {
        let s = &mut self.streams[stream as usize];
        if !std::mem::take(&mut s.forwarding) {
            return;
        }
        let (up, down) = (s.up, s.down);
        let (up_host, down_host) = (self.host_blob(up).0, self.host_blob(down).0);
        self.free_send(up, piece);
        if deliver {
            let len = self.blobs[usize::from(self.host_blob(down).1)].piece_len(piece);
            let tail = last_batch(len) / self.fleet.hosts[down_host as usize].effective_down();
            let owd = self.net.owd_hosts(up_host, down_host);
            self.push(
                self.now + owd + nanos(tail),
                Ev::Deliver {
                    task: down,
                    src: up_host,
                    piece,
                },
            );
        } else {
            self.stats.abandoned += 1;
            // Its bytes crossed but never land: cut short, as an aborted transfer's.
            self.stats.aborted_bytes +=
                self.blobs[usize::from(self.host_blob(down).1)].piece_len(piece);
            self.piece_busy_on(stream, piece);
        }
        self.next_after_send(stream, up);
    }

    /// A stream waiting with a copy passed on is closed for good (its downloader dropped the
    /// session, or a host left): its slot frees, nothing is delivered, its bytes count as cut
    /// short, and the downloader's own claim on the piece is lost.
    pub(super) fn drop_follower(&mut self, stream: u32) {
        let s = &mut self.streams[stream as usize];
        if std::mem::take(&mut s.forwarding) {
            let (up, down, piece) = (s.up, s.down, s.forwarding_piece);
            self.free_send(up, piece);
            self.stats.aborted_bytes +=
                self.blobs[usize::from(self.host_blob(down).1)].piece_len(piece);
            let flow = self.follower_flow(up, piece, stream);
            self.unfollow(up, piece, stream);
            if let Some(flow) = flow {
                self.claim_lost(down, piece, flow);
            }
        }
    }

    /// The flow of the copy `stream` passes on from `up`'s arrival of `piece`.
    fn follower_flow(&self, up: u32, piece: u32, stream: u32) -> Option<u32> {
        let k = self.arrival(up, piece)?;
        self.tasks[up as usize].arrivals[k]
            .followers
            .iter()
            .find(|f| f.0 == stream)
            .map(|f| f.1)
    }
}

#[cfg(test)]
mod tests {
    use super::last_batch;

    #[test]
    fn the_last_batch_is_what_the_first_and_the_whole_later_ones_leave() {
        const KIB: f64 = 1024.0;
        assert_eq!(last_batch(4096.0 * KIB), 512.0 * KIB);
        assert_eq!(last_batch(1536.0 * KIB), 1024.0 * KIB);
        assert_eq!(last_batch(1000.0 * KIB), 488.0 * KIB);
        assert_eq!(last_batch(300.0 * KIB), 300.0 * KIB);
        assert_eq!(last_batch(512.0 * KIB), 512.0 * KIB);
    }
}
