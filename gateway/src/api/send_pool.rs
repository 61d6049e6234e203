//! The origin's send pool (SPEC §3.7): a limited number of piece answers of
//! `/flotilla/v1/blobs` stream at once; the other piece requests wait, first come first served,
//! for one to end.
//!
//! Why a pool, and why its limit adapts, is [`flotilla_protocol::send_limit`]'s to say: the
//! limit starts at 4 and, every 10 ms while requests wait, grows when more sends moved more
//! bytes or the uplink has room again (up to `origin_max_sends`, 32), goes back when a growth
//! moved nothing, and falls back to the sends in progress once nobody waits. Here a task
//! measures the bytes the pool's answers sent in each period and applies the limit to the
//! pool's queue; it sleeps while nothing is sent or waiting, and ends with the pool. Whenever
//! fewer than the limit send, nobody waits (every release and every change of the limit hands
//! free slots on), so a request finds a slot at once or joins the back of the queue.
//!
//! Waiting is bounded ([`MAX_WAITING`]); beyond it a request is refused like a busy origin. A
//! request that goes away while it waits leaves the queue (its future is dropped).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use flotilla_protocol::send_limit::{self, SendLimit};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Most piece requests waiting for a send at once; the gateway holds a connection for each.
pub(crate) const MAX_WAITING: usize = 4096;

/// The send slots and their queue (see the module docs).
#[derive(Debug)]
pub(crate) struct SendPool {
    /// `None`: no limit.
    shared: Option<Arc<Shared>>,
    /// Wakes the adapting task: a send started or a request waits, or the pool is gone.
    activity: Arc<Notify>,
    adapting: AtomicBool,
    max_sends: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Requests that had to wait, since start.
    waited: AtomicU64,
    /// Requests refused because the queue was full, since start.
    overflowed: AtomicU64,
}

/// What the pool, its slots and its adapting task share.
#[derive(Debug)]
struct Shared {
    slots: Mutex<Slots>,
    /// Body bytes the pool's answers sent, since start.
    sent: AtomicU64,
}

/// Not a semaphore: a lower limit must hold back a slot coming free from the oldest waiter,
/// which a semaphore hands it to at once.
#[derive(Debug)]
struct Slots {
    limit: usize,
    in_use: usize,
    /// Oldest first; a waiter that went away leaves a closed sender, skipped when reached.
    queue: VecDeque<oneshot::Sender<SendSlot>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        // Nothing panics while holding it; a poisoned lock still holds consistent counts.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands free slots to the oldest waiters still there.
    fn admit(self: &Arc<Self>, slots: &mut Slots) {
        while slots.in_use < slots.limit {
            let Some(tx) = slots.queue.pop_front() else {
                return;
            };
            slots.in_use += 1;
            let slot = SendSlot {
                shared: Some(Arc::clone(self)),
            };
            if let Err(mut unsent) = tx.send(slot) {
                // That waiter went away: the slot was never taken (and must not release
                // itself under this lock).
                unsent.shared = None;
                slots.in_use -= 1;
            }
        }
    }

    fn release(self: &Arc<Self>) {
        let mut slots = self.lock();
        slots.in_use -= 1;
        self.admit(&mut slots);
    }

    fn set_limit(self: &Arc<Self>, limit: usize) {
        let mut slots = self.lock();
        // Lower: slots in use above it are not handed on when they come free.
        slots.limit = limit;
        self.admit(&mut slots);
    }
}

/// A send slot: held by a piece answer's body until it ends or the client goes away.
#[derive(Debug)]
pub(crate) struct SendSlot {
    /// `None`: the pool has no limit.
    shared: Option<Arc<Shared>>,
}

impl SendSlot {
    /// The answer sent `n` more body bytes.
    pub(crate) fn sent(&self, n: usize) {
        if let Some(s) = &self.shared {
            s.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.release();
        }
    }
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

impl Drop for SendPool {
    fn drop(&mut self) {
        // The adapting task holds only a weak reference: wake it to find the pool gone.
        self.activity.notify_one();
    }
}

impl SendPool {
    /// At most `max_sends` sends at once (0: no limit), at most `max_waiting` waiting.
    pub(crate) fn new(max_sends: usize, max_waiting: usize) -> Self {
        SendPool {
            shared: (max_sends > 0).then(|| {
                Arc::new(Shared {
                    slots: Mutex::new(Slots {
                        limit: SendLimit::new(max_sends).limit(),
                        in_use: 0,
                        queue: VecDeque::new(),
                    }),
                    sent: AtomicU64::new(0),
                })
            }),
            activity: Arc::new(Notify::new()),
            adapting: AtomicBool::new(false),
            max_sends,
            waiting: AtomicUsize::new(0),
            max_waiting,
            waited: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    /// A send slot, once one is free and every request that came earlier has had one.
    pub(crate) async fn acquire(&self) -> Result<SendSlot, PoolFull> {
        let Some(shared) = &self.shared else {
            return Ok(SendSlot { shared: None });
        };
        self.start_adapting(shared);
        let _waiting;
        let rx = {
            let mut slots = shared.lock();
            if slots.queue.is_empty() && slots.in_use < slots.limit {
                slots.in_use += 1;
                None
            } else {
                let before = self.waiting.fetch_add(1, Ordering::Relaxed);
                _waiting = Waiting(&self.waiting);
                if before >= self.max_waiting {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                    return Err(PoolFull);
                }
                if slots.queue.len() >= 2 * self.max_waiting.max(1) {
                    // Waiters that went away, piled up behind long sends.
                    slots.queue.retain(|tx| !tx.is_closed());
                }
                let (tx, rx) = oneshot::channel();
                slots.queue.push_back(tx);
                Some(rx)
            }
        };
        let Some(rx) = rx else {
            self.activity.notify_one();
            return Ok(SendSlot {
                shared: Some(Arc::clone(shared)),
            });
        };
        self.waited.fetch_add(1, Ordering::Relaxed);
        self.activity.notify_one();
        // The pool keeps every sender until it sends or drops the queue with itself.
        rx.await.map_err(|_| PoolFull)
    }

    /// Starts the task that adapts the limit, on the first request (there is a runtime then).
    fn start_adapting(&self, shared: &Arc<Shared>) {
        if self.adapting.swap(true, Ordering::Relaxed) {
            return;
        }
        tokio::spawn(adapt(
            Arc::downgrade(shared),
            Arc::clone(&self.activity),
            self.max_sends,
        ));
    }

    /// Sends streaming now.
    pub(crate) fn sending(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.lock().in_use)
    }

    /// Sends allowed at once now (0: no limit).
    pub(crate) fn limit(&self) -> usize {
        self.shared.as_ref().map_or(0, |s| s.lock().limit)
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

/// The adapting task (see the module docs): one period after another while anything is sent or
/// waits, asleep otherwise; it ends when the pool does.
async fn adapt(shared: Weak<Shared>, activity: Arc<Notify>, max_sends: usize) {
    let mut limit = SendLimit::new(max_sends);
    let mut mark: Option<(Instant, u64)> = None;
    loop {
        let idle = {
            let Some(s) = shared.upgrade() else {
                return;
            };
            let (sending, waiting) = {
                let slots = s.lock();
                let waiting = slots.queue.iter().any(|tx| !tx.is_closed());
                (slots.in_use, waiting)
            };
            let sent = s.sent.load(Ordering::Relaxed);
            let now = Instant::now();
            if let Some((then, before)) = mark {
                let secs = now.duration_since(then).as_secs_f64().max(1e-6);
                let rate = sent.saturating_sub(before) as f64 / secs;
                s.set_limit(limit.period_end(rate, waiting, sending));
            }
            mark = Some((now, sent));
            sending == 0 && !waiting
        };
        if idle {
            // Nothing to measure until a send starts or a request waits.
            mark = None;
            activity.notified().await;
        } else {
            tokio::time::sleep(send_limit::PERIOD).await;
        }
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

    /// Eight requests wait behind the first four slots, whose answers then send `per_ms(n)`
    /// bytes each per millisecond with `n` sending, for 200 ms; the slots held, and where the
    /// waiters still waiting will send theirs.
    async fn run_pool(
        pool: &Arc<SendPool>,
        per_ms: impl Fn(usize) -> usize,
    ) -> (Vec<SendSlot>, tokio::sync::mpsc::Receiver<SendSlot>) {
        let mut slots = acquire_many(pool, 4).await;
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        for _ in 0..8 {
            let (waiter, tx) = (Arc::clone(pool), tx.clone());
            tokio::spawn(async move {
                let slot = waiter.acquire().await.expect("slot");
                tx.send(slot).await.expect("send");
            });
        }
        while pool.waiting() < 8 {
            tokio::task::yield_now().await;
        }
        for _ in 0..200 {
            while let Ok(s) = rx.try_recv() {
                slots.push(s);
            }
            let each = per_ms(slots.len());
            for s in &slots {
                s.sent(each);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        (slots, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn sends_held_back_elsewhere_get_more_slots_and_idle_gives_them_back() {
        let pool = Arc::new(SendPool::new(32, 64));
        assert_eq!(pool.limit(), 4, "starts at the least");
        // Each answer moves 1 MB/ms whatever the others do: more sends move more.
        let (slots, _rx) = run_pool(&pool, |_| 1_000_000).await;
        assert_eq!(slots.len(), 12, "every waiter got a slot");
        assert_eq!(pool.waiting(), 0);
        assert!((12..=32).contains(&pool.limit()), "{}", pool.limit());
        drop(slots);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.limit(), 4, "nobody waits: back to the least");
    }

    #[tokio::test(start_paused = true)]
    async fn sends_that_fill_the_uplink_stay_few() {
        let pool = Arc::new(SendPool::new(32, 64));
        // The answers share 8 MB/ms between them: more sends would not move more.
        let (mut slots, mut rx) = run_pool(&pool, |n| 8_000_000 / n.max(1)).await;
        // The first period probes with two more; they moved nothing more, so the limit went
        // back to four while those six still send.
        assert_eq!(slots.len(), 6);
        assert_eq!((pool.limit(), pool.sending(), pool.waiting()), (4, 6, 6));
        // Slots coming free above the limit are not handed on (a slot is handed on as the
        // one before it is dropped, before anything else runs).
        slots.truncate(4);
        assert_eq!(pool.sending(), 4);
        slots.truncate(3);
        assert_eq!(pool.sending(), 4);
        // ... to the oldest waiter.
        assert!(rx.recv().await.is_some());
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
