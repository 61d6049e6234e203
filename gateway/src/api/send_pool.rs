//! The origin's send pool (SPEC §3.7): at most `origin_max_sends` piece answers of
//! `/flotilla/v1/blobs` stream at once; the other piece requests wait, first come first served,
//! for one to end.
//!
//! Why: when a fleet starts together, a few hundred nodes ask the origin for distinct pieces at
//! once. Streamed all at once they share the gateway's upload, so every piece lands at about the
//! same moment, ~ image size / upload later, and until then the swarm has nothing to pass
//! around. Sent a few at a time, the first pieces land within milliseconds and spread while the
//! rest are sent; the origin is as busy either way. Simulated (1000 hosts × 1 GiB at 10 Gbit/s,
//! `simulations/README.md`): p99 completion 2.32 → 1.64 × the Kumar–Ross bound with 32 sends
//! (1.50 × with the node's quick lookup retry); 16 did better there (1.45 ×) but slowed edge sites, whose sends are held back by their WAN
//! links and so keep slots long (p99 4.17 × without the pool, 5.31 × with 16, 4.05 × with 32,
//! 3.36 × with 64; 64 costs the one-site fleet 1.59 ×).
//!
//! Waiting is bounded ([`MAX_WAITING`]); beyond it a request is refused like a busy origin. A
//! request that goes away while it waits leaves the queue (its future is dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most piece requests waiting for a send at once; the gateway holds a connection for each.
pub(crate) const MAX_WAITING: usize = 4096;

/// The send slots and their queue (see the module docs).
#[derive(Debug)]
pub(crate) struct SendPool {
    /// `None`: no limit.
    slots: Option<Arc<Semaphore>>,
    max_sends: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Requests that had to wait, since start.
    waited: AtomicU64,
    /// Requests refused because the queue was full, since start.
    overflowed: AtomicU64,
}

/// A send slot: held by a piece answer's body until it ends or the client goes away.
#[derive(Debug)]
pub(crate) struct SendSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

/// The queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PoolFull;

/// Counts a waiter for as long as it waits, also when its future is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SendPool {
    /// At most `max_sends` sends at once (0: no limit), at most `max_waiting` waiting.
    pub(crate) fn new(max_sends: usize, max_waiting: usize) -> Self {
        SendPool {
            slots: (max_sends > 0).then(|| Arc::new(Semaphore::new(max_sends))),
            max_sends,
            waiting: AtomicUsize::new(0),
            max_waiting,
            waited: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    /// A send slot, once one is free and every request that came earlier has had one.
    pub(crate) async fn acquire(&self) -> Result<SendSlot, PoolFull> {
        let Some(slots) = &self.slots else {
            return Ok(SendSlot { _permit: None });
        };
        // tokio's semaphore hands a released permit to the oldest waiter, so a permit is
        // available here only when nobody waits: this does not jump the queue.
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Ok(SendSlot {
                _permit: Some(permit),
            });
        }
        let before = self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        if before >= self.max_waiting {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            return Err(PoolFull);
        }
        self.waited.fetch_add(1, Ordering::Relaxed);
        // The semaphore is never closed.
        let permit = Arc::clone(slots)
            .acquire_owned()
            .await
            .map_err(|_| PoolFull)?;
        Ok(SendSlot {
            _permit: Some(permit),
        })
    }

    /// Sends streaming now.
    pub(crate) fn sending(&self) -> usize {
        self.slots
            .as_ref()
            .map_or(0, |s| self.max_sends - s.available_permits())
    }

    /// Requests waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests that waited for a slot, since start.
    pub(crate) fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    /// Requests refused because the queue was full, since start.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn at_most_max_sends_stream_and_the_rest_wait_in_order() {
        let pool = Arc::new(SendPool::new(2, 8));
        let a = pool.acquire().await.expect("a");
        let _b = pool.acquire().await.expect("b");
        assert_eq!(pool.sending(), 2);
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        for (name, queued) in [("c", 1), ("d", 2)] {
            let (waiter, tx) = (Arc::clone(&pool), tx.clone());
            tokio::spawn(async move {
                let slot = waiter.acquire().await.expect("slot");
                tx.send((name, slot)).await.expect("send");
            });
            // Queue them in a known order.
            while pool.waiting() < queued {
                tokio::task::yield_now().await;
            }
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(50), rx.recv())
                .await
                .is_err(),
            "nobody may start while both slots are held"
        );
        drop(a);
        let (first, slot_c) = rx.recv().await.expect("c");
        assert_eq!(first, "c", "first come, first served");
        assert_eq!(pool.waiting(), 1);
        drop(slot_c);
        let (second, _slot_d) = rx.recv().await.expect("d");
        assert_eq!(second, "d");
        assert_eq!((pool.waiting(), pool.waited()), (0, 2));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_dropped_waiter_leaves_it() {
        let pool = Arc::new(SendPool::new(1, 1));
        let held = pool.acquire().await.expect("held");
        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire().await.map(|_| ()) })
        };
        while pool.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.acquire().await.err(), Some(PoolFull));
        assert_eq!(pool.overflowed(), 1);
        // The client of the waiting request went away: its place is free again.
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(pool.waiting(), 0);
        drop(held);
        let _again = pool.acquire().await.expect("a slot after the holder left");
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let pool = SendPool::new(0, 0);
        let slots: Vec<_> = acquire_many(&pool, 100).await;
        assert_eq!(slots.len(), 100);
        assert_eq!((pool.sending(), pool.waiting(), pool.waited()), (0, 0, 0));
    }

    async fn acquire_many(pool: &SendPool, n: usize) -> Vec<SendSlot> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(pool.acquire().await.expect("unlimited"));
        }
        v
    }
}
