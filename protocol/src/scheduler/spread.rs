//! Pieces an uploader is already copying to others: its `PieceBusy` answer (SPEC §5.2) and the
//! short hold that follows it here.
//!
//! Rarest first sends every downloader that sees a fresh piece at the same uploader after that
//! one piece: the uploader then streams it to a dozen of them at once, each at a twelfth of its
//! upload, and nobody holds it for twelve piece times. Copied to a few at a time, the first
//! copies land within a piece time or two and their receivers serve it too — the piece spreads
//! by a factor of about 1.7 per piece time with two at once, against 1.24 with twelve. So an
//! uploader sends one piece to at most a few downloaders at once and answers the others
//! `PieceBusy`; unlike `Busy`, that pauses nothing at the uploader: the downloader holds only
//! that piece back for [`Config::piece_hold`](super::Config::piece_hold), asks the uploader for
//! other pieces meanwhile, and asks for this one again (there or at a new holder) after it.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use super::{Scheduler, Source};

/// Pieces held back after a `PieceBusy`, and until when.
#[derive(Debug, Clone)]
pub(super) struct PieceHolds {
    /// Per piece: not requested from any peer before this.
    until: Vec<Duration>,
    /// The same holds in the order they end (they all last one `piece_hold`), for the timer.
    order: VecDeque<(u32, Duration)>,
}

impl PieceHolds {
    pub(super) fn new(pieces: u32) -> Self {
        PieceHolds {
            until: vec![Duration::ZERO; pieces as usize],
            order: VecDeque::new(),
        }
    }

    /// Whether `piece` is held back at `now`.
    pub(super) fn held(&self, piece: u32, now: Duration) -> bool {
        self.until[piece as usize] > now
    }

    /// Holds `piece` back until `until`; the list stays bounded by the piece count.
    fn hold(&mut self, piece: u32, now: Duration, until: Duration) {
        while self.order.front().is_some_and(|&(_, end)| end <= now) {
            self.order.pop_front();
        }
        if self.order.len() >= self.until.len() {
            self.order.pop_front();
        }
        self.until[piece as usize] = until;
        self.order.push_back((piece, until));
    }

    /// When the earliest hold still running ends.
    pub(super) fn next_end(&self, now: Duration) -> Option<Duration> {
        self.order
            .iter()
            .map(|&(_, end)| end)
            .find(|&end| end > now)
    }
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The peer answered `PieceBusy` to our request for `piece`: it is sending that piece to
    /// enough others already. The request ends with no penalty and no pause at the peer; the
    /// piece is not asked of anyone for [`Config::piece_hold`](super::Config::piece_hold) (see
    /// the module docs of `spread.rs`).
    pub fn piece_busy(&mut self, source: Source<P>, piece: u32, now: Duration) {
        self.tick(now);
        if piece >= self.have.len() || self.take_request(source, piece).is_none() {
            return;
        }
        self.release(piece);
        let now = self.now;
        self.holds.hold(piece, now, now + self.cfg.piece_hold);
        self.timer_dirty = true;
    }
}
