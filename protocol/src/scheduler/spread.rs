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

/// Pieces held back after a `PieceBusy`, and until when. A held piece is out of the pickable
/// index (as while it is requested), so the picks never look at it; it goes back in when its
/// hold ends ([`Scheduler::end_holds`], run from `handle_timeout`, whose timer covers it).
#[derive(Debug, Clone)]
pub(super) struct PieceHolds {
    /// Holds in the order they end (they all last one `piece_hold`, rounded alike); bounded by
    /// the piece count, since a held piece cannot be requested, so is held again only after its
    /// hold ended.
    order: VecDeque<(u32, Duration)>,
}

impl PieceHolds {
    pub(super) fn new() -> Self {
        PieceHolds {
            order: VecDeque::new(),
        }
    }

    /// Whether any hold is still to be ended.
    pub(super) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// When the earliest hold ends.
    pub(super) fn next_end(&self) -> Option<Duration> {
        self.order.front().map(|&(_, end)| end)
    }
}

impl<P: Copy + Eq + Hash + Ord + Debug> Scheduler<P> {
    /// The peer answered `PieceBusy` to our request for `piece`: it is sending that piece to
    /// enough others already. The request ends with no penalty and no pause at the peer; the
    /// piece is not asked of anyone for [`Config::piece_hold`](super::Config::piece_hold) (see
    /// the module docs of `spread.rs`).
    pub fn piece_busy(&mut self, source: Source<P>, piece: u32, now: Duration) {
        self.tick(now);
        self.end_holds();
        if piece >= self.have.len() || self.take_request(source, piece).is_none() {
            return;
        }
        let i = piece as usize;
        self.sources[i] = self.sources[i].saturating_sub(1);
        if self.sources[i] > 0 || self.have.get(piece) {
            // Still requested elsewhere (end game), or here already: nothing to hold back.
            return;
        }
        // Ends fall on a grid of half a hold, so the holds of one burst end together and take
        // one timer (each its own was 1.4 M timer events in a simulated 10,000-host pull).
        let grid = (self.cfg.piece_hold / 2)
            .max(Duration::from_micros(1))
            .as_nanos();
        let end = (self.now + self.cfg.piece_hold).as_nanos().div_ceil(grid) * grid;
        let until = Duration::from_nanos(u64::try_from(end).unwrap_or(u64::MAX));
        self.holds.order.push_back((piece, until));
        self.timer_dirty = true;
        self.poll_peers = true;
    }

    /// Puts the pieces whose hold has ended back among the pickable ones.
    pub(super) fn end_holds(&mut self) {
        while let Some(&(piece, end)) = self.holds.order.front() {
            if end > self.now {
                break;
            }
            self.holds.order.pop_front();
            if self.sources[piece as usize] == 0 && !self.have.get(piece) {
                self.set_pickable(piece, true);
            }
        }
    }
}
