//! The upload cap ([`ServerLimits::upload_bytes_per_s`]): one budget of payload bytes per
//! second shared by every piece stream of a server, so a node on a production host never
//! takes more of its uplink than the operator gave it, however many peers ask at once.
//!
//! A generic cell rate algorithm by reservation: each part of a piece books its bytes at the
//! end of the schedule (`due` moves on by `bytes / rate`) and goes out once the schedule is no
//! more than [`BURST`] ahead of the clock. Streams are thereby served in the order they asked,
//! an idle uplink lends no more than one burst to the next sender, and nothing loops or polls.
//! The clock is tokio's, so tests run it paused.
//!
//! [`ServerLimits::upload_bytes_per_s`]: super::ServerLimits::upload_bytes_per_s

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

/// How far ahead of the rate an idle uploader may send: enough for a part or two at any
/// useful rate without letting a cap turn into bursts a switch has to queue.
pub(crate) const BURST: Duration = Duration::from_millis(50);

/// A byte rate shared by all the streams of a server (and, in the gateway, by its HTTP blob
/// bodies too: one budget for everything it uploads).
#[derive(Debug)]
pub struct Pace {
    /// Seconds per byte.
    per_byte: f64,
    /// The rate.
    bytes_per_s: u64,
    /// When the bytes booked so far have all been sent at the rate.
    due: Mutex<Instant>,
}

impl Pace {
    /// A cap of `bytes_per_s` (at least 1).
    pub fn new(bytes_per_s: u64) -> Pace {
        Pace {
            per_byte: 1.0 / bytes_per_s.max(1) as f64,
            bytes_per_s: bytes_per_s.max(1),
            due: Mutex::new(Instant::now()),
        }
    }

    /// The bytes one burst allows: writers that choose their own sizes keep to it, so the
    /// rate holds over short spans too.
    pub fn burst_bytes(&self) -> usize {
        (self.bytes_per_s as f64 * BURST.as_secs_f64()) as usize
    }

    /// Waits until `bytes` more may go out. A caller that stops waiting still used its share
    /// (the bytes were booked), which errs on the side of the cap.
    pub async fn take(&self, bytes: usize) {
        let at = self.book(bytes, Instant::now());
        if let Some(at) = at {
            sleep_until(at).await;
        }
    }

    /// Books `bytes` at `now`; when they may go out, if not at once.
    fn book(&self, bytes: usize, now: Instant) -> Option<Instant> {
        let cost = Duration::from_secs_f64(bytes as f64 * self.per_byte);
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        *due = (*due).max(now) + cost;
        let at = *due - BURST.min(*due - now);
        (at > now).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_the_rate_holds() {
        // 1 MB/s: 50 ms lets 50 kB go at once.
        let pace = Pace::new(1_000_000);
        let start = Instant::now();
        pace.take(50_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        for _ in 0..20 {
            pace.take(100_000).await;
        }
        // 2.05 MB booked by the end; the last part went 50 ms before it was due.
        let took = start.elapsed().as_secs_f64();
        assert!((took - 2.0).abs() < 1e-3, "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_share_the_rate_in_turn() {
        let pace = Arc::new(Pace::new(4_000_000));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let pace = pace.clone();
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                for _ in 0..10 {
                    pace.take(100_000).await;
                    times.push(start.elapsed().as_secs_f64());
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            let times = t.await.unwrap();
            // In turn: none waits for the others to finish (its 5th part of 10 is out by the
            // time half of all the parts could be, give or take the first burst).
            assert!(times[4] <= 0.55, "{times:?}");
            all.extend(times);
        }
        // 4 MB in all at 4 MB/s: the last part went out one burst before 1 s.
        let last = all.iter().copied().fold(0.0, f64::max);
        assert!((last - 0.95).abs() < 1e-3, "{last}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_uploader_lends_no_more_than_a_burst() {
        let pace = Pace::new(1_000_000);
        pace.take(1_000_000).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        pace.take(1_000_000).await;
        // The ten idle seconds bought 50 ms, not 10 s.
        let took = start.elapsed().as_secs_f64();
        assert!((took - 0.95).abs() < 1e-3, "{took}");
    }
}
