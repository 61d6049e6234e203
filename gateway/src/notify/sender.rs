//! One endpoint's queue and sender task (see the parent module for the delivery rules).
//!
//! The queue is a bounded deque under a mutex: [`Queue::push`] never waits (it drops the oldest
//! event when full) and wakes the sender through a [`Notify`], whose stored permit means a push
//! that happens while the sender is busy is not missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::client::Target;
use super::{Envelope, NotifyEvent, NotifyStats};

/// One queued event and when it was recorded.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    at: Instant,
    event: Arc<NotifyEvent>,
}

impl Item {
    pub(crate) fn new(event: Arc<NotifyEvent>) -> Item {
        Item {
            at: Instant::now(),
            event,
        }
    }
}

/// How the sender batches and retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) batch: usize,
    pub(crate) timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_age: Duration,
}

/// An endpoint's queue and counters.
#[derive(Debug)]
pub(crate) struct Queue {
    name: String,
    cap: usize,
    items: Mutex<VecDeque<Item>>,
    wake: Notify,
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    expired: AtomicU64,
    /// Events taken out of the queue for the attempt under way.
    in_flight: AtomicU64,
}

impl Queue {
    pub(crate) fn new(name: String, cap: usize) -> Queue {
        Queue {
            name,
            cap,
            items: Mutex::new(VecDeque::with_capacity(cap.min(1024))),
            wake: Notify::new(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    /// Queues `item`, dropping the oldest queued event if full. Never waits for the sender.
    pub(crate) fn push(&self, item: Item) {
        let overflow = match self.items.lock() {
            Ok(mut q) => {
                let overflow = if q.len() >= self.cap {
                    q.pop_front().is_some()
                } else {
                    false
                };
                q.push_back(item);
                overflow
            }
            // A sender that panicked holding the lock: nothing will be delivered any more.
            Err(_) => true,
        };
        if overflow {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(endpoint = %self.name, dropped = n, "notification queue full; dropping the oldest events");
            }
        }
        self.wake.notify_one();
    }

    /// Up to `n` events from the front.
    fn take(&self, n: usize) -> Vec<Item> {
        match self.items.lock() {
            Ok(mut q) => {
                let k = n.min(q.len());
                let batch: Vec<Item> = q.drain(..k).collect();
                self.in_flight.store(batch.len() as u64, Ordering::Relaxed);
                batch
            }
            Err(_) => Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.items.lock().map(|q| q.len()).unwrap_or(0)
    }

    pub(crate) fn stats(&self) -> NotifyStats {
        NotifyStats {
            name: self.name.clone(),
            delivered: self.delivered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            pending: self.len() as u64 + self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// The sender task: takes batches off `queue` and delivers each until it succeeds or expires.
/// After `stop` turns true it delivers what is queued with one attempt per batch, then returns.
pub(crate) async fn run(
    queue: Arc<Queue>,
    target: Target,
    policy: Policy,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut batch = queue.take(policy.batch);
        if batch.is_empty() {
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = queue.wake.notified() => {}
                changed = stop.changed() => if changed.is_err() { return },
            }
            continue;
        }
        let mut delay = policy.backoff_initial;
        let mut failures = 0u32;
        loop {
            let before = batch.len();
            batch.retain(|i| i.at.elapsed() < policy.max_age);
            let expired = (before - batch.len()) as u64;
            if expired > 0 {
                queue.expired.fetch_add(expired, Ordering::Relaxed);
                tracing::warn!(endpoint = %queue.name, expired, "notifications expired undelivered");
            }
            if batch.is_empty() {
                break;
            }
            let body = match serde_json::to_vec(&Envelope {
                events: batch.iter().map(|i| &*i.event).collect(),
            }) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(endpoint = %queue.name, error = %e, "cannot serialise events");
                    queue
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    break;
                }
            };
            match target.post(body, policy.timeout).await {
                Ok(status) => {
                    queue
                        .delivered
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    if failures > 0 {
                        tracing::info!(endpoint = %queue.name, status, failures, "notifications delivered after retrying");
                    }
                    break;
                }
                Err(e) => {
                    queue.failed.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    // The first failure of a run is a warning; the retries that follow are not.
                    if failures == 1 {
                        tracing::warn!(endpoint = %queue.name, error = %e, events = batch.len(), "notification delivery failed; retrying with backoff");
                    } else {
                        tracing::debug!(endpoint = %queue.name, error = %e, failures, "notification delivery failed again");
                    }
                    if *stop.borrow() {
                        queue
                            .dropped
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    let wait = jittered(delay);
                    delay = (delay * 2).min(policy.backoff_max);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Stopping: one more attempt right away, then give up.
                        changed = stop.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
        queue.in_flight.store(0, Ordering::Relaxed);
    }
}

/// A random wait between half of `d` and all of it, so that senders that failed together do
/// not all retry together.
fn jittered(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() & 0xffff) as u32;
    let half = d / 2;
    half + (d - half).mul_f64(f64::from(r) / 65_535.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u64) -> Arc<NotifyEvent> {
        Arc::new(NotifyEvent {
            id: n.to_string(),
            timestamp: String::new(),
            action: "push",
            target: super::super::Target {
                media_type: None,
                size: Some(n),
                digest: None,
                length: None,
                repository: "r".into(),
                from_repository: None,
                url: None,
                tag: None,
            },
            request: super::super::RequestRecord {
                id: String::new(),
                addr: String::new(),
                host: String::new(),
                method: String::new(),
                useragent: String::new(),
            },
            actor: super::super::ActorRecord { name: None },
            source: super::super::SourceRecord {
                addr: String::new(),
                instance_id: String::new(),
            },
        })
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let q = Queue::new("e".into(), 3);
        for n in 0..5 {
            q.push(Item::new(ev(n)));
        }
        let s = q.stats();
        assert_eq!((s.dropped, s.pending), (2, 3));
        let batch = q.take(10);
        let ids: Vec<&str> = batch.iter().map(|i| i.event.id.as_str()).collect();
        assert_eq!(ids, ["2", "3", "4"]);
    }

    #[test]
    fn jitter_stays_between_half_and_all() {
        let d = Duration::from_millis(1000);
        for _ in 0..100 {
            let j = jittered(d);
            assert!(j >= d / 2 && j <= d, "{j:?}");
        }
    }
}
