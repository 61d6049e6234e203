//! The store's background work in a running node: announcing what was held before a restart,
//! withdrawing what the store evicts, and the idle eviction of `evict_unused_after_secs`.

use std::sync::Arc;
use std::time::Duration;

use crate::ports::Network as _;
use crate::store::Store;
use crate::swarm::SwarmHandle;

/// Announces every blob held from a previous run, so provider records survive a restart.
pub(super) async fn reprovide_held(swarm: SwarmHandle, store: Arc<Store>) {
    for digest in store.held_blobs() {
        if let Err(e) = swarm.provide(&digest).await {
            tracing::warn!(error = %e, %digest, "cannot announce a held blob");
        }
    }
}

/// Evicts blobs unused for `after` (`evict_unused_after_secs`), checking every tenth of it
/// (between 1 s and 10 min); their announcements are withdrawn like any eviction's.
pub(super) async fn evict_idle(store: Arc<Store>, after: Duration) {
    let every = (after / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        tokio::time::sleep(every).await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cutoff = now_ms.saturating_sub(after.as_millis() as u64);
        let (n, bytes) = store.evict_unused(cutoff).await;
        if n > 0 {
            tracing::info!(
                blobs = n,
                bytes,
                idle_secs = after.as_secs(),
                "evicted idle blobs"
            );
        }
    }
}

/// Withdraws the announcement of every blob the store evicts.
pub(super) async fn withdraw_evicted(swarm: SwarmHandle, store: Arc<Store>) {
    let mut evictions = store.subscribe_evictions();
    loop {
        match evictions.recv().await {
            Ok(digest) => {
                if let Err(e) = swarm.unprovide(&digest).await {
                    tracing::warn!(error = %e, %digest, "cannot withdraw an evicted blob");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Missed names: re-announce what is still held, which withdraws nothing but
                // keeps records honest; the records of the missed blobs expire on their own.
                tracing::warn!(
                    missed = n,
                    "eviction notices lost; their records will expire"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
