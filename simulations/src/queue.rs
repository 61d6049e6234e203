//! The event queue: a binary min-heap keyed by (time, sequence number), so events at the same
//! time come out in the order they were pushed and a run never depends on anything but its
//! inputs. The key is one `u128`, which keeps the heap's comparisons to a single instruction
//! pair.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::flow::Nanos;

struct Entry<E> {
    key: u128,
    ev: E,
}

impl<E> PartialEq for Entry<E> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<E> Eq for Entry<E> {}

impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Entry<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: `BinaryHeap` is a max-heap.
        other.key.cmp(&self.key)
    }
}

/// Events in time order, ties in push order.
pub struct Queue<E> {
    heap: BinaryHeap<Entry<E>>,
    seq: u64,
}

impl<E> Default for Queue<E> {
    fn default() -> Self {
        Queue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> Queue<E> {
    pub fn push(&mut self, at: Nanos, ev: E) {
        self.seq += 1;
        let key = (u128::from(at) << 64) | u128::from(self.seq);
        self.heap.push(Entry { key, ev });
    }

    /// The earliest event and its time.
    pub fn pop(&mut self) -> Option<(Nanos, E)> {
        self.heap.pop().map(|e| ((e.key >> 64) as Nanos, e.ev))
    }

    /// When the earliest event is due.
    pub fn next_time(&self) -> Option<Nanos> {
        self.heap.peek().map(|e| (e.key >> 64) as Nanos)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }
}
