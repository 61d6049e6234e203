//! The storage half of the gateway's health (`GET /flotilla/v1/health`, SPEC §3.6): whether the
//! index answers, the blob files can be read, and a new file can be written, each probed for
//! real rather than inferred from counters, because the failures operators meet — a remounted
//! read-only volume, a full disk, a wedged database — show up only when something touches them.
//!
//! Serving pulls needs the index and the blob files; pushes also need writes. A gateway that
//! cannot write still serves every pull, so a failed write is reported, not counted against
//! readiness (a load balancer that dropped it would turn a push outage into a pull outage).

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::{Registry, RegistryError};

/// How long each probe may take before it counts as failed: a disk or database this slow
/// is as good as down for the clients waiting on it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the storage probes found.
#[derive(Debug, Clone, Serialize)]
pub struct StorageHealth {
    /// The sled index answered a read (`None`) or why not.
    pub index_error: Option<String>,
    /// The blob directories could be listed (`None`) or why not.
    pub blobs_error: Option<String>,
    /// A probe file could be created, written and removed in `<data_dir>/tmp` (`None`) or why
    /// not.
    pub write_error: Option<String>,
    /// The write failed for want of space (or quota).
    pub disk_full: bool,
    /// Bytes an unprivileged writer may still put on the data directory's file system.
    pub available_bytes: Option<u64>,
}

impl StorageHealth {
    /// Whether pulls can be served: the index and the blob files answer.
    pub fn serves_pulls(&self) -> bool {
        self.index_error.is_none() && self.blobs_error.is_none()
    }
}

/// Runs `probe` on the blocking pool, bounded by [`PROBE_TIMEOUT`].
async fn probe(f: impl FnOnce() -> Result<(), String> + Send + 'static) -> Option<String> {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e),
        Ok(Err(e)) => Some(format!("the probe failed: {e}")),
        Err(_) => Some(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
    }
}

impl Registry {
    /// Bytes an unprivileged writer may still put on the data directory's file system (one
    /// `statvfs`, cheap enough for a metrics scrape).
    pub fn available_bytes(&self) -> Option<u64> {
        flotilla_node::store::available_bytes(&self.inner.cfg.data_dir).ok()
    }

    /// Probes the index, the blob files and a write (see the module docs). The three probes
    /// run at once; none takes longer than 5 s.
    pub async fn storage_health(&self) -> StorageHealth {
        let meta = self.inner.meta.clone();
        let index = probe(move || {
            meta.repos(None, 1)
                .map(drop)
                .map_err(|e: RegistryError| e.to_string())
        });
        let root = self.inner.blobs.root().to_path_buf();
        let blobs = probe(move || {
            std::fs::read_dir(&root)
                .map(drop)
                .map_err(|e| format!("{}: {e}", root.display()))
        });
        let path = self.inner.blobs.temp_path();
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let full_seen = full.clone();
        let write = probe(move || {
            let attempt = (|| {
                let mut f = std::fs::File::create(&path)?;
                f.write_all(b"flotilla health probe\n")?;
                f.sync_data()
            })();
            // Removed whatever the write did: a probe file must never be left behind.
            let removed = std::fs::remove_file(&path);
            match (attempt, removed) {
                (Err(e), _) => {
                    full_seen.store(
                        flotilla_node::store::is_disk_full(&e),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    Err(format!("{}: {e}", path.display()))
                }
                (Ok(()), Err(e)) => Err(format!("removing {}: {e}", path.display())),
                (Ok(()), Ok(())) => Ok(()),
            }
        });
        let (index_error, blobs_error, write_error) = tokio::join!(index, blobs, write);
        let available_bytes = self.available_bytes();
        StorageHealth {
            index_error,
            blobs_error,
            write_error,
            disk_full: full.load(std::sync::atomic::Ordering::Relaxed),
            available_bytes,
        }
    }
}
