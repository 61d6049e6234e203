//! The store's bookkeeping of whole blobs: registering one under the byte budget (evicting
//! least recently used victims), pins, deletion, and persisting records and piece bitmaps by
//! the durability rule of the parent module (the flusher, a blob's completion).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};

use super::state::{self, Entry};
use super::{Inner, StoreError, disk};
use crate::ports::Held;

impl Inner {
    pub(super) async fn set_pinned(
        &self,
        digest: &Digest,
        pinned: bool,
    ) -> Result<bool, StoreError> {
        let _g = self.db_lock.lock().await;
        let was = {
            let mut st = self.lock();
            let e = st
                .entries
                .get_mut(digest)
                .ok_or_else(|| StoreError::NotHeld(digest.clone()))?;
            let was = e.pinned;
            e.pinned = pinned;
            e.meta_dirty = true;
            was
        };
        if was != pinned {
            self.sync_locked(digest).await?;
            self.flush_db().await?;
        }
        Ok(was)
    }

    /// Registers `table`'s blob (see [`PieceSink::register`]).
    pub(super) async fn register(
        self: &Arc<Self>,
        table: Arc<SignedPieceTable>,
    ) -> Result<Held, StoreError> {
        disk::validate_table(&table)?;
        let digest = table.table.digest.clone();
        if let Some(h) = self.touch_held(&table) {
            return Ok(h);
        }
        let _g = self.db_lock.lock().await;
        if let Some(h) = self.touch_held(&table) {
            return Ok(h);
        }
        let size = table.table.size;
        let victims = {
            let mut st = self.lock();
            let needed = st.used.saturating_add(size).saturating_sub(self.capacity);
            let plan = if size > self.capacity {
                None
            } else {
                st.plan_eviction(needed)
            };
            let Some(plan) = plan else {
                return Err(StoreError::NoSpace {
                    needed: size,
                    capacity: self.capacity,
                    used: st.used,
                });
            };
            let victims = st.take_victims(&plan);
            // Reserve the room now so the blob's size is counted from here on.
            st.used = st.used.saturating_add(size);
            victims
        };
        // Gives the reservation back if this future is dropped or fails before the entry exists.
        let reservation = Reserved { inner: self, size };
        self.delete_victims(victims).await;
        self.check_disk_room(size).await?;
        let created = {
            let (blobs_dir, records, tables, bitmaps) = (
                self.blobs_dir.clone(),
                self.records.clone(),
                self.tables.clone(),
                self.bitmaps.clone(),
            );
            let table = table.clone();
            let direct_io = self.direct_io;
            tokio::task::spawn_blocking(move || {
                disk::create_blob(&blobs_dir, &records, &tables, &bitmaps, &table, direct_io)
            })
            .await
            .map_err(StoreError::from)
            .and_then(|r| r)
        };
        let (file, direct, record) = created?;
        // The record and table durable before any piece lands: a node killed seconds into a
        // download must find its partial blob at the next start, not an orphan file to delete
        // (the flusher would only have written them within 2 s).
        self.flush_db().await?;
        drop(reservation);
        let held = {
            let mut st = self.lock();
            let stamp = st.tick();
            let bits = if record.complete {
                Bitfield::full(table.table.piece_count())
            } else {
                Bitfield::new(table.table.piece_count())
            };
            let mut entry = state::Recovered {
                digest: digest.clone(),
                table,
                file: Arc::new(file),
                direct: direct.map(Arc::new),
                bits,
                record,
                dirty: false,
            };
            entry.record.last_used_ms = stamp;
            let e = st.insert(entry);
            e.meta_dirty = true;
            Held {
                table: e.table.clone(),
                have: e.have.subscribe(),
                offer: e.offer.subscribe(),
                rank: Some(e.rank.clone()),
            }
        };
        tracing::debug!(digest = %digest, size, "registered blob");
        Ok(held)
    }

    /// The held state of an already registered blob (touching it). The stored table wins over
    /// a different one for the same digest (another piece size, say): callers use
    /// [`Held::table`].
    pub(super) fn touch_held(&self, table: &SignedPieceTable) -> Option<Held> {
        let digest = &table.table.digest;
        let mut st = self.lock();
        let stamp = st.tick();
        let e = st.entries.get_mut(digest)?;
        e.touch(stamp);
        if e.table.table != table.table {
            tracing::warn!(digest = %digest, "registered again with a different piece table; keeping the stored one");
        }
        Some(Held {
            table: e.table.clone(),
            have: e.have.subscribe(),
            offer: e.offer.subscribe(),
            rank: Some(e.rank.clone()),
        })
    }

    /// Deletes evicted blobs (already out of the in-memory state) and announces them. Failures
    /// are logged: the blob is gone from memory, and what is left on disk is cleaned at the next
    /// open. Call with `db_lock` held.
    pub(super) async fn delete_victims(&self, victims: Vec<(Digest, Entry)>) {
        for (digest, entry) in victims {
            tracing::info!(digest = %digest, size = entry.table.table.size, "evicting blob");
            self.evicted_blobs.fetch_add(1, Ordering::Relaxed);
            self.evicted_bytes
                .fetch_add(entry.table.table.size, Ordering::Relaxed);
            if let Err(e) = self.delete_blob(digest.clone(), entry).await {
                tracing::warn!(digest = %digest, error = %e, "deleting an evicted blob failed");
            }
            let _ = self.evictions.send(digest);
        }
    }

    pub(super) async fn delete_blob(&self, digest: Digest, entry: Entry) -> Result<(), StoreError> {
        let (blobs_dir, records, tables, bitmaps) = (
            self.blobs_dir.clone(),
            self.records.clone(),
            self.tables.clone(),
            self.bitmaps.clone(),
        );
        drop(entry);
        tokio::task::spawn_blocking(move || {
            disk::delete_blob(&blobs_dir, &records, &tables, &bitmaps, &digest)
        })
        .await?
    }

    /// Persists the changes of every dirty blob, then flushes the database.
    pub(super) async fn flush_dirty(&self) -> Result<(), StoreError> {
        let _g = self.db_lock.lock().await;
        let dirty: Vec<Digest> = {
            let st = self.lock();
            st.entries
                .iter()
                .filter(|(_, e)| e.needs_sync())
                .map(|(d, _)| d.clone())
                .collect()
        };
        if dirty.is_empty() {
            return Ok(());
        }
        let mut first_err = None;
        for d in dirty {
            if let Err(e) = self.sync_locked(&d).await {
                tracing::warn!(digest = %d, error = %e, "persisting blob state failed");
                first_err.get_or_insert(e);
            }
        }
        let flushed = self.flush_db().await;
        match first_err {
            Some(e) => Err(e),
            None => flushed,
        }
    }

    /// Completes a blob whose last piece just verified: sync, mark complete, persist.
    pub(super) async fn complete(&self, digest: &Digest) -> Result<(), StoreError> {
        let _g = self.db_lock.lock().await;
        self.sync_locked(digest).await?;
        self.flush_db().await
    }

    pub(super) async fn flush_db(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush()).await??;
        Ok(())
    }

    /// Persists one blob's state per the durability rule: fdatasync the file if bits changed
    /// (and the directory if it completes), then write the record and the bitmap snapshot taken
    /// before the sync. Call with `db_lock` held.
    pub(super) async fn sync_locked(&self, digest: &Digest) -> Result<(), StoreError> {
        let Some(snap) = self
            .lock()
            .entries
            .get_mut(digest)
            .and_then(Entry::snapshot)
        else {
            return Ok(());
        };
        let (id, completing) = (snap.entry_id, snap.completing);
        let (blobs_dir, records, bitmaps) = (
            self.blobs_dir.clone(),
            self.records.clone(),
            self.bitmaps.clone(),
        );
        let key = digest.clone();
        let res = tokio::task::spawn_blocking(move || {
            disk::persist(&blobs_dir, &records, &bitmaps, &key, snap)
        })
        .await
        .map_err(StoreError::from)
        .and_then(|r| r);
        let mut st = self.lock();
        if let Some(e) = st.entries.get_mut(digest)
            && e.id == id
        {
            match &res {
                Ok(()) if completing => {
                    e.complete = true;
                    tracing::info!(digest = %digest, "blob complete");
                }
                Ok(()) => {}
                Err(_) => {
                    e.bits_dirty = true;
                    e.meta_dirty = true;
                }
            }
        }
        res
    }
}

/// Room counted for a blob being registered, until its entry (which counts itself) exists.
struct Reserved<'a> {
    inner: &'a Inner,
    size: u64,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.used = st.used.saturating_sub(self.size);
    }
}

/// Persists changed state every `every` until the store is dropped.
pub(super) async fn flusher(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        // Errors are logged per blob inside; the blobs stay dirty and are retried next tick.
        let _ = inner.flush_dirty().await;
    }
}
