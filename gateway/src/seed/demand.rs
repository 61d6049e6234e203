//! How many nodes are pulling a blob right now, as the gateway sees it: each download starts by
//! fetching the blob's piece table, so table fetches in the last minute count the swarm.
//!
//! Nodes feed this number to their scheduler (`set_swarm_size`): a node that knows it is one of
//! many leaves most pieces to the node that ranks first for each, so the swarm takes each piece
//! from the origin about once; a node that knows it is alone takes everything at once. Neither a
//! node's routing table (every node, pulling or not) nor its provider list (empty until the
//! first pieces land) says this at the start of a simultaneous pull.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flotilla_protocol::Digest;

/// Length of one counting window; the count covers the current and the previous window.
const WINDOW: Duration = Duration::from_secs(30);
/// Most blobs tracked at once; beyond it the least recently fetched is forgotten.
const MAX_BLOBS: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Count {
    window_start: Instant,
    current: u32,
    previous: u32,
    last: Instant,
}

impl Count {
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= WINDOW * 2 {
            self.previous = 0;
            self.current = 0;
            self.window_start = now;
        } else if elapsed >= WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.window_start += WINDOW;
        }
    }

    fn total(&self) -> u32 {
        self.current.saturating_add(self.previous)
    }
}

/// Table fetches per blob over the last 30–60 s.
#[derive(Debug, Default)]
pub(crate) struct Demand {
    counts: Mutex<HashMap<Digest, Count>>,
}

impl Demand {
    /// Counts one table fetch of `digest`; returns the fetches in the window, this one included.
    pub(crate) fn note(&self, digest: &Digest) -> u32 {
        let now = Instant::now();
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if counts.len() >= MAX_BLOBS
            && !counts.contains_key(digest)
            && let Some(oldest) = counts
                .iter()
                .min_by_key(|(_, c)| c.last)
                .map(|(d, _)| d.clone())
        {
            counts.remove(&oldest);
        }
        let c = counts.entry(digest.clone()).or_insert(Count {
            window_start: now,
            current: 0,
            previous: 0,
            last: now,
        });
        c.rotate(now);
        c.current = c.current.saturating_add(1);
        c.last = now;
        c.total()
    }

    /// The fetches of `digest` in the window, without counting one.
    pub(crate) fn get(&self, digest: &Digest) -> u32 {
        let now = Instant::now();
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        counts.get_mut(digest).map_or(0, |c| {
            c.rotate(now);
            c.total()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fetches_per_blob() {
        let d = Demand::default();
        let a = Digest::sha256_of(b"a");
        let b = Digest::sha256_of(b"b");
        assert_eq!(d.get(&a), 0);
        assert_eq!(d.note(&a), 1);
        assert_eq!(d.note(&a), 2);
        assert_eq!(d.note(&b), 1);
        assert_eq!(d.get(&a), 2);
    }

    #[test]
    fn windows_roll_over() {
        let start = Instant::now();
        let mut c = Count {
            window_start: start,
            current: 5,
            previous: 0,
            last: start,
        };
        c.rotate(start + WINDOW);
        assert_eq!((c.previous, c.current), (5, 0));
        c.rotate(start + WINDOW * 4);
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn bounded() {
        let d = Demand::default();
        for i in 0..(MAX_BLOBS as u32 + 10) {
            d.note(&Digest::sha256_of(&i.to_be_bytes()));
        }
        assert!(d.counts.lock().unwrap().len() <= MAX_BLOBS);
    }
}
