//! The event queue: events in (time, sequence number) order, so events at the same time come
//! out in the order they were pushed and a run never depends on anything but its inputs.
//!
//! It is a *radix heap* keyed by one `u128` (time in the high half, sequence number in the low
//! one). A discrete-event simulation only ever schedules at or after the event it is handling,
//! so keys never go below the last one popped; a radix heap uses that: an entry lives in the
//! bucket of the highest bit in which its key differs from the last key popped, a push is one
//! `Vec::push`, and a pop that finds the lowest bucket empty takes the next non-empty bucket,
//! finds its least key and redistributes the rest into lower buckets (each entry moves at most
//! once per bit level, usually a few times in all). Against a binary heap of a million entries
//! — fleet-100k's queue — that trades ~20 scattered comparisons and moves per pop for a few
//! sequential passes, which is what the simulator's cost was at that size. The order is exactly
//! the binary heap's (the keys are unique), so runs are unchanged event for event.
//!
//! An event pushed *before* the last one popped (the simulator does not do that, but the queue
//! does not rely on it) goes to a small binary heap that is drained first, which is the order a
//! single heap would give.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::flow::Nanos;

/// Buckets: 0 holds keys equal to the last popped one, `b` keys whose highest bit differing from
/// it is bit `b - 1`.
const BUCKETS: usize = 129;

/// Largest allocation (in entries) a drained bucket keeps.
const KEEP: usize = 4096;

/// Events in time order, ties in push order.
pub struct Queue<E> {
    buckets: Vec<Vec<(u128, E)>>,
    /// The last key popped: every key in `buckets` is at least this.
    last: u128,
    /// Bit `b` set: `buckets[b]` is not empty.
    occupied: [u64; 3],
    /// Keys below `last` (never, in practice): they come first.
    early: BinaryHeap<Reverse<EarlyEntry<E>>>,
    len: usize,
    seq: u64,
}

/// An entry of the `early` heap, ordered by key alone.
struct EarlyEntry<E>(u128, E);

impl<E> PartialEq for EarlyEntry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<E> Eq for EarlyEntry<E> {}

impl<E> PartialOrd for EarlyEntry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for EarlyEntry<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            last: 0,
            occupied: [0; 3],
            early: BinaryHeap::new(),
            len: 0,
            seq: 0,
        }
    }
}

fn bucket_of(key: u128, last: u128) -> usize {
    (128 - (key ^ last).leading_zeros()) as usize
}

impl<E> Queue<E> {
    pub fn push(&mut self, at: Nanos, ev: E) {
        self.seq += 1;
        let key = (u128::from(at) << 64) | u128::from(self.seq);
        self.len += 1;
        if key < self.last {
            self.early.push(Reverse(EarlyEntry(key, ev)));
            return;
        }
        self.put(key, ev);
    }

    fn put(&mut self, key: u128, ev: E) {
        let b = bucket_of(key, self.last);
        self.buckets[b].push((key, ev));
        self.occupied[b / 64] |= 1 << (b % 64);
    }

    /// The first non-empty bucket.
    fn first_bucket(&self) -> Option<usize> {
        self.occupied
            .iter()
            .enumerate()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i * 64 + w.trailing_zeros() as usize)
    }

    /// Makes bucket 0 hold the least key, unless the queue is empty (or the least key is early).
    fn settle(&mut self) {
        if !self.early.is_empty() || !self.buckets[0].is_empty() {
            return;
        }
        let Some(b) = self.first_bucket() else {
            return;
        };
        let mut entries = std::mem::take(&mut self.buckets[b]);
        self.occupied[b / 64] &= !(1 << (b % 64));
        let min = entries.iter().map(|e| e.0).min().unwrap_or(self.last);
        self.last = min;
        for (key, ev) in entries.drain(..) {
            self.put(key, ev);
        }
        // Keep the emptied bucket's allocation if it is small: a bucket keeps the most it
        // ever held, and 129 of those at a million entries each would be memory for nothing.
        if self.buckets[b].is_empty() && entries.capacity() <= KEEP {
            self.buckets[b] = entries;
        }
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(Nanos, E)> {
        if let Some(Reverse(EarlyEntry(key, ev))) = self.early.pop() {
            self.len -= 1;
            return Some(((key >> 64) as Nanos, ev));
        }
        self.settle();
        let (key, ev) = self.buckets[0].pop()?;
        self.occupied[0] &= !1;
        self.len -= 1;
        Some(((key >> 64) as Nanos, ev))
    }

    /// When the earliest event is due.
    pub fn next_time(&mut self) -> Option<Nanos> {
        if let Some(Reverse(e)) = self.early.peek() {
            return Some((e.0 >> 64) as Nanos);
        }
        self.settle();
        self.buckets[0].last().map(|e| (e.0 >> 64) as Nanos)
    }

    /// The earliest event, without taking it.
    pub fn peek(&mut self) -> Option<&E> {
        if !self.early.is_empty() {
            return self.early.peek().map(|Reverse(e)| &e.1);
        }
        self.settle();
        self.buckets[0].last().map(|e| &e.1)
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Against a plain sort by (time, push order), with pushes interleaved with pops, some of
    /// them before the last popped time.
    #[test]
    fn pops_in_time_then_push_order() {
        let mut rng = Rng::new(7);
        let mut q = Queue::default();
        let mut model: Vec<(u64, u64)> = Vec::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        for round in 0..20_000u64 {
            for _ in 0..rng.below(4) {
                let at = if round % 997 == 0 {
                    now.saturating_sub(rng.below(10))
                } else {
                    let bits = rng.below(40);
                    now + rng.below(1 << bits)
                };
                seq += 1;
                q.push(at, seq);
                model.push((at, seq));
            }
            if rng.below(3) > 0 {
                model.sort_unstable();
                let want = (!model.is_empty()).then(|| model.remove(0));
                assert_eq!(q.next_time(), want.map(|w| w.0));
                let got = q.pop();
                assert_eq!(got, want);
                if let Some((t, _)) = got {
                    now = now.max(t);
                }
            }
            assert_eq!(q.len(), model.len());
        }
    }
}
