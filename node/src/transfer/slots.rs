//! Send slots per blob: the server sends at most [`ServerLimits::max_sends_per_blob`] pieces of
//! one blob at once. A stream whose next request finds them all taken waits if fewer than
//! [`ServerLimits::max_waiting_per_blob`] wait already (else the request is answered Busy and
//! the downloader asks another holder); when a slot frees, the waiting stream whose next piece is
//! rarest (by the holder's [`PieceRank`], first come among equals) sends next, and a stream that
//! just sent competes with the waiting ones for its own slot, whatever the line's length. The
//! same table counts the streams open per blob ([`ServerLimits::max_streams_per_blob`]).
//!
//! Why (SPEC §5.2): an uploader that splits its link among a dozen streams delivers every piece
//! a dozen times slower, so nothing it sends can be passed on for a whole piece-time × 12; a few
//! at a time, rarest first, keeps fresh pieces moving (simulated, 10,000 hosts × 1 GiB: p99
//! 1.374 → 1.331 × the bound, with each download keeping as many requests out as there are
//! slots; with a line of one, 1.284 ×: a request behind another only holds a place a free
//! holder elsewhere could use).
//!
//! [`ServerLimits::max_sends_per_blob`]: super::ServerLimits::max_sends_per_blob
//! [`ServerLimits::max_streams_per_blob`]: super::ServerLimits::max_streams_per_blob
//! [`ServerLimits::max_waiting_per_blob`]: super::ServerLimits::max_waiting_per_blob

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flotilla_protocol::Digest;
use tokio::sync::oneshot;

use crate::ports::PieceRank;

/// The per-blob table of one server.
pub(crate) struct Slots {
    /// Pieces of one blob sent at once (at least 1).
    per_blob: usize,
    /// Streams waiting beyond which one more that would wait is answered Busy.
    max_waiting: usize,
    blobs: Mutex<HashMap<Digest, Blob>>,
}

/// One blob's streams, sends and waiting streams (an entry lives while any is non-zero).
#[derive(Default)]
struct Blob {
    streams: usize,
    sends: usize,
    waiting: VecDeque<Waiter>,
    rank: Option<Arc<PieceRank>>,
    next_id: u64,
}

/// A stream waiting for a send slot, for `piece` (the front of its queue).
struct Waiter {
    id: u64,
    piece: u32,
    grant: oneshot::Sender<()>,
}

/// What a request at the front of a stream's queue gets.
pub(super) enum Acquire {
    /// A slot: send it.
    Go(SendSlot),
    /// The host sends as much as it may, counting those already waiting: answer Busy.
    Busy,
    /// Every slot of the blob is taken: wait for one.
    Wait(Ticket),
}

impl Blob {
    fn idle(&self) -> bool {
        self.streams == 0 && self.sends == 0 && self.waiting.is_empty()
    }

    fn holders(&self, piece: u32) -> u16 {
        self.rank.as_ref().map_or(0, |r| r.get(piece))
    }

    /// The waiting stream that sends next: the rarest next piece, first come among equals.
    fn best(&self) -> Option<(usize, u16)> {
        self.waiting
            .iter()
            .enumerate()
            .map(|(i, w)| (i, self.holders(w.piece)))
            .min_by_key(|&(i, holders)| (holders, i))
    }

    /// Hands free slots to waiting streams.
    fn hand_on(&mut self, per_blob: usize) {
        while self.sends < per_blob {
            let Some((i, _)) = self.best() else { return };
            let Some(w) = self.waiting.remove(i) else {
                return;
            };
            // A closed receiver is a ticket being dropped; its drop finds itself gone and
            // nothing granted, so the slot simply stays free.
            if w.grant.send(()).is_ok() {
                self.sends += 1;
            }
        }
    }

    fn wait(&mut self, piece: u32) -> (u64, oneshot::Receiver<()>) {
        let (grant, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiter { id, piece, grant });
        (id, rx)
    }
}

impl Slots {
    pub(crate) fn new(per_blob: usize, max_waiting: usize) -> Arc<Self> {
        Arc::new(Slots {
            per_blob: per_blob.max(1),
            max_waiting,
            blobs: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, Blob>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more stream on `digest`, if fewer than `max` are open.
    pub(super) fn open(self: &Arc<Self>, digest: &Digest, max: usize) -> Option<StreamSlots> {
        let mut blobs = self.lock();
        let blob = blobs.entry(digest.clone()).or_default();
        if blob.streams >= max {
            if blob.idle() {
                blobs.remove(digest);
            }
            return None;
        }
        blob.streams += 1;
        Some(StreamSlots {
            slots: self.clone(),
            digest: digest.clone(),
        })
    }

    /// Runs `f` on the blob's entry (there is one while any stream, send or waiter holds it),
    /// dropping the entry if it is left idle.
    fn with<R>(&self, digest: &Digest, f: impl FnOnce(&mut Blob, usize) -> R) -> Option<R> {
        let mut blobs = self.lock();
        let blob = blobs.get_mut(digest)?;
        let r = f(blob, self.per_blob);
        if blob.idle() {
            blobs.remove(digest);
        }
        Some(r)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Pieces of `digest` being sent.
    #[cfg(test)]
    pub(super) fn sends(&self, digest: &Digest) -> usize {
        self.lock().get(digest).map_or(0, |b| b.sends)
    }

    /// Streams waiting for a send slot of `digest`.
    #[cfg(test)]
    pub(super) fn waiting(&self, digest: &Digest) -> usize {
        self.lock().get(digest).map_or(0, |b| b.waiting.len())
    }
}

/// One stream's place on its blob; dropping it frees the place.
pub(super) struct StreamSlots {
    slots: Arc<Slots>,
    digest: Digest,
}

impl StreamSlots {
    /// Sets how the blob's pieces rank (the latest holder's view wins).
    pub(super) fn set_rank(&self, rank: Option<Arc<PieceRank>>) {
        self.slots.with(&self.digest, |b, _| b.rank = rank);
    }

    /// A slot to send `piece`, given the host's pieces being sent (`host_sends`) and most
    /// (`max_host_sends`). A request that would wait is answered Busy if the host's sends and
    /// this blob's line would exceed `max_host_sends`, or the line is full.
    pub(super) fn acquire(&self, piece: u32, host_sends: usize, max_host_sends: usize) -> Acquire {
        let slots = &self.slots;
        let max_waiting = slots.max_waiting;
        let got = slots.with(&self.digest, |b, per_blob| {
            if b.sends < per_blob {
                b.sends += 1;
                return Acquire::Go(SendSlot {
                    slots: Some(slots.clone()),
                    digest: self.digest.clone(),
                });
            }
            if host_sends + b.waiting.len() >= max_host_sends || b.waiting.len() >= max_waiting {
                return Acquire::Busy;
            }
            let (id, rx) = b.wait(piece);
            Acquire::Wait(Ticket {
                slots: Some(slots.clone()),
                digest: self.digest.clone(),
                id,
                piece,
                rx,
            })
        });
        // The entry outlives `self`, so it is there.
        got.unwrap_or(Acquire::Busy)
    }
}

impl Drop for StreamSlots {
    fn drop(&mut self) {
        self.slots.with(&self.digest, |b, _| {
            b.streams = b.streams.saturating_sub(1);
        });
    }
}

/// One piece of a blob being sent; dropping it hands the slot on.
pub(super) struct SendSlot {
    /// `None` once the slot has been given back by other means.
    slots: Option<Arc<Slots>>,
    digest: Digest,
}

impl SendSlot {
    /// Whether a stream of the blob waits for a slot.
    pub(super) fn contended(&self) -> bool {
        self.slots.as_ref().is_some_and(|slots| {
            slots
                .with(&self.digest, |b, _| !b.waiting.is_empty())
                .unwrap_or(false)
        })
    }

    /// The stream holding the slot has `next` to send: it keeps the slot if nobody waits or its
    /// piece is rarer than every waiting one; otherwise it waits behind them and the slot goes
    /// to the best of them.
    pub(super) fn pass_or_keep(mut self, next: u32) -> Result<SendSlot, Ticket> {
        let Some(slots) = self.slots.take() else {
            return Ok(self);
        };
        let digest = self.digest.clone();
        let waited = slots.with(&digest, |b, per_blob| {
            let best = b.best()?;
            if b.holders(next) < best.1 {
                return None;
            }
            let (id, rx) = b.wait(next);
            b.sends = b.sends.saturating_sub(1);
            b.hand_on(per_blob);
            Some((id, rx))
        });
        match waited.flatten() {
            Some((id, rx)) => Err(Ticket {
                slots: Some(slots),
                digest,
                id,
                piece: next,
                rx,
            }),
            None => {
                self.slots = Some(slots);
                Ok(self)
            }
        }
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.with(&self.digest, |b, per_blob| {
                b.sends = b.sends.saturating_sub(1);
                b.hand_on(per_blob);
            });
        }
    }
}

/// A stream's place among those waiting for a slot of its blob; dropping it leaves the line
/// (or hands on a slot granted meanwhile).
pub(super) struct Ticket {
    slots: Option<Arc<Slots>>,
    digest: Digest,
    id: u64,
    piece: u32,
    rx: oneshot::Receiver<()>,
}

impl Ticket {
    /// The stream's next piece is now `piece` (its front request was cancelled or answered).
    pub(super) fn set_piece(&mut self, piece: u32) {
        if piece == self.piece {
            return;
        }
        self.piece = piece;
        if let Some(slots) = &self.slots {
            slots.with(&self.digest, |b, _| {
                if let Some(w) = b.waiting.iter_mut().find(|w| w.id == self.id) {
                    w.piece = piece;
                }
            });
        }
    }

    /// The slot, if it has been granted.
    pub(super) fn try_into_slot(mut self) -> Result<SendSlot, Ticket> {
        match self.rx.try_recv() {
            Ok(()) => Ok(self.into_slot()),
            Err(_) => Err(self),
        }
    }

    /// Resolves once a slot is granted; then call [`Ticket::into_slot`].
    pub(super) async fn granted(&mut self) {
        if (&mut self.rx).await.is_err() {
            // Not granted and never will be (cannot happen while the ticket is in line).
            std::future::pending::<()>().await;
        }
    }

    /// The granted slot (only after [`Ticket::granted`] resolved).
    pub(super) fn into_slot(mut self) -> SendSlot {
        SendSlot {
            slots: self.slots.take(),
            digest: self.digest.clone(),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let Some(slots) = self.slots.take() else {
            return;
        };
        let (id, rx) = (self.id, &mut self.rx);
        slots.with(&self.digest, |b, per_blob| {
            if let Some(i) = b.waiting.iter().position(|w| w.id == id) {
                b.waiting.remove(i);
            } else if rx.try_recv().is_ok() {
                // Granted but never used.
                b.sends = b.sends.saturating_sub(1);
                b.hand_on(per_blob);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::Digest;

    fn digest() -> Digest {
        Digest::sha256_of(b"slots")
    }

    fn go(a: Acquire) -> SendSlot {
        match a {
            Acquire::Go(s) => s,
            _ => panic!("expected a slot"),
        }
    }

    fn wait(a: Acquire) -> Ticket {
        match a {
            Acquire::Wait(t) => t,
            _ => panic!("expected to wait"),
        }
    }

    #[test]
    fn streams_per_blob_are_bounded_and_freed() {
        let slots = Slots::new(2, 8);
        let d = digest();
        let a = slots.open(&d, 2).unwrap();
        let b = slots.open(&d, 2).unwrap();
        assert!(slots.open(&d, 2).is_none());
        drop(a);
        let c = slots.open(&d, 2).unwrap();
        drop((b, c));
        assert!(slots.is_empty(), "no entry outlives its streams");
        assert!(slots.open(&d, 0).is_none());
        assert!(slots.is_empty(), "a refused stream leaves no entry");
    }

    #[test]
    fn a_freed_slot_goes_to_the_rarest_waiting_piece() {
        let slots = Slots::new(1, 8);
        let d = digest();
        let rank = Arc::new(PieceRank::new(8));
        rank.set(3, 5);
        rank.set(4, 1);
        rank.set(5, 1);
        let s = [(); 4].map(|()| slots.open(&d, 8).unwrap());
        s[0].set_rank(Some(rank.clone()));
        let sending = go(s[0].acquire(0, 0, 16));
        let mut t3 = wait(s[1].acquire(3, 1, 16));
        let t4 = wait(s[2].acquire(4, 1, 16));
        let mut t5 = wait(s[3].acquire(5, 1, 16));
        // The host's sends plus those waiting reach the host's limit: Busy.
        assert!(matches!(s[0].acquire(6, 1, 4), Acquire::Busy));
        drop(sending);
        // 4 and 5 are equally rare; 4 came first.
        let t4 = t4.try_into_slot().map_err(|_| "4 first").unwrap();
        t3 = t3.try_into_slot().err().expect("3 still waits");
        t5 = t5.try_into_slot().err().expect("5 still waits");
        // The sender of 4 has 7 next, as common as 3 and 5 are not: 5 goes first.
        rank.set(7, 1);
        let mut t7 = t4.pass_or_keep(7).err().expect("7 waits behind 5");
        let s5 = t5.try_into_slot().map_err(|_| "5 next").unwrap();
        // A rarer piece keeps the slot.
        rank.set(6, 0);
        let s5 = s5.pass_or_keep(6).map_err(|_| "6 keeps it").unwrap();
        // A cancelled front request changes what the ticket competes with.
        t3.set_piece(2);
        drop(s5);
        let s3 = t3.try_into_slot().map_err(|_| "2 is rarest").unwrap();
        t7 = t7.try_into_slot().err().expect("7 still waits");
        // A ticket dropped after its grant hands the slot on.
        drop(s3);
        drop(t7);
        drop(s);
        assert!(slots.is_empty(), "everything handed back");
    }

    #[test]
    fn a_ticket_dropped_while_waiting_leaves_the_line() {
        let slots = Slots::new(1, 8);
        let d = digest();
        let a = slots.open(&d, 8).unwrap();
        let b = slots.open(&d, 8).unwrap();
        let sending = go(a.acquire(0, 0, 16));
        let t = wait(b.acquire(1, 1, 16));
        drop(t);
        drop(sending);
        let again = go(b.acquire(1, 0, 16));
        drop((again, a, b));
        assert!(slots.is_empty());
    }

    #[test]
    fn a_request_beyond_a_full_line_is_busy_but_a_sender_may_queue_again() {
        let slots = Slots::new(1, 1);
        let d = digest();
        let s = [(); 3].map(|()| slots.open(&d, 8).unwrap());
        let sending = go(s[0].acquire(0, 0, 16));
        let waiting = wait(s[1].acquire(1, 1, 16));
        assert!(
            matches!(s[2].acquire(2, 1, 16), Acquire::Busy),
            "the line is full"
        );
        // The sender queues again behind the one waiting (the line may hold two then).
        let again = sending.pass_or_keep(3).err().expect("3 waits");
        let granted = waiting.try_into_slot().map_err(|_| "1 was first").unwrap();
        assert!(matches!(s[2].acquire(2, 1, 16), Acquire::Busy));
        drop(granted);
        let last = again.try_into_slot().map_err(|_| "3 next").unwrap();
        drop((last, s));
        assert!(slots.is_empty());
    }
}
