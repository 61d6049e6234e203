//! The download cap (`download_bytes_per_s`, SPEC §6.2): one budget of piece bytes per second
//! for everything this node receives — from peers and from the gateway's origin alike — so a
//! rollout never takes more of a production host's downlink than the operator gave it.
//!
//! The cap sits between the fetcher and the store: every piece byte, whatever brought it, goes
//! into a [`PieceReceiver`], so wrapping the sink catches all of them in one place. A receiver
//! books the bytes it was handed on the shared [`Pace`] and returns only when the schedule
//! allows them; until then its caller reads no more from its stream or HTTP body, so QUIC's
//! and TCP's flow control hold the sender back. Bytes are booked after they arrived (at most a
//! flow-control window runs ahead of the cap) and duplicates count: they crossed the link too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::SignedPieceTable;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::ports::{Held, PieceReceiver, PieceSink, SourceError, Verdict};
use crate::transfer::Pace;

/// A [`PieceSink`] whose receivers keep to a shared byte rate.
pub struct PacedSink {
    inner: Arc<dyn PieceSink>,
    pace: Arc<Pace>,
    /// Nanoseconds receivers spent waiting for the cap.
    waited_ns: Arc<AtomicU64>,
}

impl PacedSink {
    /// `inner`, its receivers capped at `bytes_per_s` (at least 1) together.
    pub fn new(inner: Arc<dyn PieceSink>, bytes_per_s: u64) -> PacedSink {
        PacedSink {
            inner,
            pace: Arc::new(Pace::new(bytes_per_s)),
            waited_ns: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How long receivers have waited for the cap, in all (for the node's stats: a download
    /// slower than its peers could serve shows here).
    #[cfg(test)]
    pub fn waited(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed))
    }

    /// The nanoseconds receivers waited, readable after the sink moved into the fetcher.
    pub fn waited_counter(&self) -> Arc<AtomicU64> {
        self.waited_ns.clone()
    }
}

impl PieceSink for PacedSink {
    fn register(
        &self,
        table: Arc<SignedPieceTable>,
    ) -> BoxFuture<'static, Result<Held, SourceError>> {
        self.inner.register(table)
    }

    fn receive(&self, digest: &Digest, index: u32) -> Result<Box<dyn PieceReceiver>, SourceError> {
        Ok(Box::new(PacedReceiver {
            inner: self.inner.receive(digest, index)?,
            pace: self.pace.clone(),
            waited_ns: self.waited_ns.clone(),
        }))
    }

    fn disk_full(&self, since: Instant) -> Option<String> {
        self.inner.disk_full(since)
    }
}

struct PacedReceiver {
    inner: Box<dyn PieceReceiver>,
    pace: Arc<Pace>,
    waited_ns: Arc<AtomicU64>,
}

/// Waits until `bytes` more may come in, and counts the wait. (Free of `self`: the inner
/// receiver is `Send` but not `Sync`, so no borrow of it may live across the wait.)
async fn take(pace: &Pace, waited_ns: &AtomicU64, bytes: usize) {
    let t0 = tokio::time::Instant::now();
    pace.take(bytes).await;
    let waited = t0.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
    if waited > 0 {
        waited_ns.fetch_add(waited, Ordering::Relaxed);
    }
}

impl PieceReceiver for PacedReceiver {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SourceError>> {
        let (pace, waited) = (self.pace.clone(), self.waited_ns.clone());
        async move {
            take(&pace, &waited, chunk.len()).await;
            self.inner.write(chunk).await
        }
        .boxed()
    }

    fn spare(&mut self, n: usize) -> Option<&mut [u8]> {
        self.inner.spare(n)
    }

    fn commit(&mut self, k: usize) -> BoxFuture<'_, Result<(), SourceError>> {
        let (pace, waited) = (self.pace.clone(), self.waited_ns.clone());
        async move {
            take(&pace, &waited, k).await;
            self.inner.commit(k).await
        }
        .boxed()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Verdict, SourceError>> {
        self.inner.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::testkit::{TestBlob, TestStore};

    /// Bytes written through paced receivers keep to the rate across receivers (tokio's clock
    /// paused: it moves only while every task waits), the pieces still verify, and the wait is
    /// counted.
    #[tokio::test(start_paused = true)]
    async fn receivers_share_one_rate() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let blob = TestBlob::new(2 << 20, 1 << 20, 7, &key);
        let store = TestStore::new().await;
        PieceSink::register(&*store.store, blob.signed.clone())
            .await
            .unwrap();
        let paced = PacedSink::new(store.store.clone(), 1 << 20);
        let t0 = tokio::time::Instant::now();
        for index in 0..2 {
            let mut r = paced.receive(&blob.digest, index).unwrap();
            for chunk in blob.piece_bytes(index).chunks(256 << 10) {
                r.write(chunk).await.unwrap();
            }
            assert_eq!(r.finish().await.unwrap(), Verdict::Verified);
        }
        // 2 MiB at 1 MiB/s, less the one burst (50 ms) an idle cap lends.
        let took = t0.elapsed().as_secs_f64();
        assert!((1.94..2.0).contains(&took), "{took}");
        let waited = paced.waited().as_secs_f64();
        assert!((1.94..2.0).contains(&waited), "{waited}");
    }
}
