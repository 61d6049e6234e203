//! The node's local store: blobs and partial blobs on disk, one bitmap of verified pieces each,
//! LRU eviction under a byte budget, pins, and leases. It is both the [`PieceSink`] the download
//! driver feeds (verifying every piece as it streams in) and the [`PieceSource`] the transfer
//! server reads from (serving a blob while it is still downloading).
//!
//! # On-disk layout
//! ```text
//! <dir>/
//! ├── blobs/<hex>          one file per registered blob (complete or partial), named by the hex of
//! │                        its digest, sized to the blob at registration (sparse), each piece
//! │                        written at its offset with positioned writes
//! └── meta/                the sled database (trees below)
//! ```
//! ```text
//! meta/ (sled)
//! ├── blobs    <digest> → JSON {size, complete, pinned, last_used_ms}
//! ├── tables   <digest> → the signed piece table (SignedPieceTable::encode), written once
//! └── bitmaps  <digest> → Bitfield::encode of the pieces known to be durable on disk
//! ```
//! The table lives in its own tree so that the frequent record updates (`last_used_ms`) do not
//! rewrite up to 1 MiB of block hashes each time. Keys are the digest's text (`sha256:<hex>`).
//!
//! # Durability rule
//! **A bit is set on disk only for a piece whose bytes were fdatasynced before the bit was
//! written.** Bits are set in memory (and announced on the watch) as soon as a piece verifies;
//! a flusher (every 2 s, and [`Store::flush`]) takes a snapshot of the bits of each changed blob,
//! fdatasyncs its file, then writes the snapshot. When the last piece of a blob verifies, its
//! file and `blobs/` are synced and the record marked `complete` before [`PieceReceiver::finish`]
//! answers. At open:
//! - a `complete` blob whose file has its size is trusted as is (it was synced at completion);
//! - for an incomplete blob the persisted bits are trusted and every *other* piece is re-hashed
//!   from the file (BLAKE3 runs at GB/s), so a node killed mid-download resumes with every piece
//!   that really reached the disk, and a torn piece simply fails its hash and is fetched again;
//! - records without a usable table, complete blobs with a missing or short file, and files or
//!   tree entries without a record are removed.
//!
//! So the [`PieceReceiver::finish`] promise "stored durably" holds in this sense: after a crash
//! a verified piece is either still held (its bytes are on disk and match) or not held at all,
//! never held with wrong bytes.
//!
//! # Concurrent receivers of one piece
//! End game sends the same request to several peers, and any of them may lie. Each piece being
//! received has a *slot* whose lock guards every write to the piece's bytes, and which records the
//! one receiver allowed to write (or that the piece is done):
//! - The first receiver of a piece *claims* it and streams its bytes into the file (in batches
//!   of 1 MiB after a first of 512 KiB, hashed on the way), each batch written under the slot lock and only while the
//!   slot names it as the writer.
//! - A receiver that starts while the piece is claimed *buffers* it in memory (bounded: one
//!   piece each, 256 MiB for the whole store, refused beyond). When its hash matches, it takes the
//!   slot lock, writes its whole buffer over whatever the claimant wrote, and marks the slot done,
//!   so the claimant's later batches are refused.
//! - A claimant whose hash matches marks the slot done under the lock if it is still the writer.
//!
//! Whoever marks the slot done sets the bit; everyone else gets [`Verdict::Duplicate`](crate::ports::Verdict::Duplicate) (or
//! [`Verdict::Invalid`](crate::ports::Verdict::Invalid) when their bytes did not match). Nothing writes to a piece after it is
//! done, and the done writer's bytes are exactly the bytes it hashed, so a set bit always
//! matches the disk. A claimant that goes away leaves garbage only under an unset bit; the next
//! claimant takes the slot over with its first batch and rewrites the whole piece.
//!
//! # Passing a piece on while it arrives
//! A claimant checks its piece block by block. After each batch it wrote, it publishes how many
//! bytes from the piece's start are verified and on disk, and at its first verified block it
//! sets the piece's bit in the *offer* (held or arriving; cleared again if the claimant ends
//! without the piece). The transfer server
//! follows that through [`PieceSource::arriving`] and reads back only published bytes; since a
//! new claimant may start the piece over once the old one is gone, a reader checks after each
//! read that the claim it follows still owns the piece (or that the piece is held) before it
//! passes the bytes on.
//!
//! # Space and eviction
//! The budget counts every registered blob at its full size from registration on. When a new
//! blob does not fit, the least recently used blobs that are neither pinned nor in use (an
//! active receiver or an outstanding [`Lease`]) are evicted, oldest first, and announced on
//! [`Store::subscribe_evictions`]; if even evicting all of them would not make room, nothing is
//! evicted and registration fails with `NoSpace`. A blob's last use is its registration, a
//! [`Store::touch`], a lease, a verified piece or a served request. A disk that fills up anyway
//! (the budget is larger than the disk) fails the write with `NoSpace`: the piece stays unset,
//! nothing is corrupted, and writes work again once space is back.
//!
//! An evicted or removed file is unlinked at once; a [`PieceFile`] handed out before keeps
//! reading the old (verified) bytes until it is dropped, and the disk space returns then.
//!
//! # Threads
//! Every file operation, fsync and database flush runs on `spawn_blocking`; the state lock is a
//! `std::sync::Mutex` never held across an `.await` or any I/O. Lock order: a piece slot's lock,
//! then the state lock (never the reverse).

mod disk;
/// Disk-space checks the gateway's health probe shares.
pub use disk::{available_bytes, is_disk_full};
mod receiver;
mod records;
mod state;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::SignedPieceTable;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::broadcast;

use crate::ports::{Arriving, Held, PieceFile, PieceReceiver, PieceSink, PieceSource, SourceError};
use records::flusher;
use state::{Entry, State};

/// Where the store lives and how much it may hold.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The store's directory (created if missing).
    pub dir: PathBuf,
    /// The byte budget for all blobs together (each counted at its full size).
    pub capacity_bytes: u64,
    /// Piece bytes go to and from blob files around the page cache (`O_DIRECT`) where the
    /// file system allows it ([`crate::direct_io`]); `false`: always through the page cache.
    pub direct_io: bool,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob is not registered.
    #[error("blob {0} is not in the store")]
    NotHeld(Digest),
    /// The blob is registered but that piece is not verified yet.
    #[error("piece {index} of {digest} is not held")]
    PieceNotHeld {
        /// The blob.
        digest: Digest,
        /// The piece.
        index: u32,
    },
    /// The piece index is past the end of the blob's table.
    #[error("piece {index} is out of range for {digest}")]
    BadIndex {
        /// The blob.
        digest: Digest,
        /// The piece.
        index: u32,
    },
    /// The budget cannot hold the blob even after evicting everything evictable.
    #[error("no space for {needed} bytes (capacity {capacity}, {used} used)")]
    NoSpace {
        /// Bytes the blob needs.
        needed: u64,
        /// The store's budget.
        capacity: u64,
        /// Bytes held now.
        used: u64,
    },
    /// The disk itself is full (ENOSPC or EDQUOT).
    #[error("disk full: {0}")]
    DiskFull(io::Error),
    /// The file system lacks room for a new blob, even after eviction (checked at registration,
    /// since blob files are sparse and would otherwise fail piece by piece later).
    #[error(
        "not enough disk space for a {needed}-byte blob: {available} bytes free under {dir} \
         (the store keeps {headroom} bytes spare)"
    )]
    DiskLow {
        /// Bytes the blob needs.
        needed: u64,
        /// Bytes free on the file system.
        available: u64,
        /// Spare bytes kept for the database and metadata.
        headroom: u64,
        /// The blob directory.
        dir: String,
    },
    /// The blob is in use (a receiver or lease) and cannot be removed now.
    #[error("blob {0} is in use")]
    InUse(Digest),
    /// The piece table is not usable.
    #[error("unusable piece table: {0}")]
    BadTable(String),
    /// Too many duplicate receivers are buffering pieces in memory right now.
    #[error("too many duplicate piece receivers in flight")]
    Busy,
    /// A receiver was used after a failed or interrupted write.
    #[error("piece receiver unusable after an earlier failure")]
    Poisoned,
    /// A verified piece could not be stored because a concurrent copy failed mid-write.
    #[error("piece {index} was interrupted by a failed concurrent write")]
    Interrupted {
        /// The piece.
        index: u32,
    },
    /// A file or directory error.
    #[error("store i/o: {0}")]
    Io(io::Error),
    /// The metadata database failed.
    #[error("store database: {0}")]
    Db(#[from] sled::Error),
    /// A blocking task died.
    #[error("store task failed: {0}")]
    Task(String),
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> Self {
        if disk::is_disk_full(&e) {
            StoreError::DiskFull(e)
        } else {
            StoreError::Io(e)
        }
    }
}

impl From<tokio::task::JoinError> for StoreError {
    fn from(e: tokio::task::JoinError) -> Self {
        StoreError::Task(e.to_string())
    }
}

impl From<StoreError> for SourceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotHeld(_) | StoreError::PieceNotHeld { .. } => {
                SourceError::NotHeld(e.to_string())
            }
            StoreError::NoSpace { .. } | StoreError::DiskFull(_) | StoreError::DiskLow { .. } => {
                SourceError::NoSpace(e.to_string())
            }
            StoreError::Io(io) => SourceError::Io(io),
            other => SourceError::Other(other.to_string()),
        }
    }
}

/// What the store holds of one blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryInfo {
    /// The blob's size.
    pub size: u64,
    /// Pieces in its table.
    pub piece_count: u32,
    /// Pieces verified and readable.
    pub pieces_held: u32,
    /// Every piece is held and the file was synced (durable across a crash).
    pub complete: bool,
    /// Never evicted.
    pub pinned: bool,
    /// Bytes served to peers since the store opened.
    pub served_bytes: u64,
    /// Last use, in milliseconds since the Unix epoch (a strictly increasing logical clock that
    /// follows wall time, so the LRU order has no ties).
    pub last_used_ms: u64,
}

/// Keeps a blob from being evicted or removed while held (a reader streaming it, a download
/// driving it). Dropping it releases the blob.
pub struct Lease {
    guard: UseGuard,
}

impl Lease {
    /// The leased blob.
    pub fn digest(&self) -> &Digest {
        &self.guard.digest
    }
}

/// Counts one user of an entry (lease or receiver) while alive.
pub(crate) struct UseGuard {
    inner: Arc<Inner>,
    digest: Digest,
    entry_id: u64,
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(e) = st.entries.get_mut(&self.digest)
            && e.id == self.entry_id
        {
            e.users = e.users.saturating_sub(1);
        }
    }
}

/// Knobs the tests turn; production uses [`Tuning::default`].
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// How often changed bitmaps are synced and persisted (`None`: only by [`Store::flush`]).
    pub flush_interval: Option<Duration>,
    /// A claiming receiver writes to the file in batches of this many bytes, after the first.
    pub write_batch: usize,
    /// The size of a claim's first batch (at most `write_batch`): the piece is offered to peers
    /// and readable by clients once it is written.
    pub first_batch: usize,
    /// Bytes all buffering (duplicate) receivers may hold together.
    pub max_buffered: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            flush_interval: Some(Duration::from_secs(2)),
            // Two batches per receiver are in memory (one being written, one filling). 1 MiB
            // halves the hand-offs to the blocking pool against 512 KiB (pair and fleet CPU per
            // byte ~7 % lower, docs/benchmarks.md) and keeps a node streaming a 4 GiB layer
            // within its RSS budget (53 MiB).
            write_batch: 1 << 20,
            // A piece is offered (and passed on) once its first batch is in: a smaller first
            // batch shortens each hop of a fleet's copy tree (simulated fleet-10k p99 1.200 ×
            // the bound with a 1-MiB first batch, 1.183 with 512 KiB).
            first_batch: 512 << 10,
            max_buffered: 256 << 20,
        }
    }
}

/// Capacity of the eviction notification channel; a lagging subscriber resyncs with
/// [`Store::held_blobs`].
const EVICTION_CHANNEL: usize = 256;

/// The store. Cheap to share as `Arc<Store>`; every method takes `&self`.
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    blobs_dir: PathBuf,
    capacity: u64,
    /// [`StoreConfig::direct_io`].
    direct_io: bool,
    db: sled::Db,
    records: sled::Tree,
    tables: sled::Tree,
    bitmaps: sled::Tree,
    state: Mutex<State>,
    /// Serialises every metadata write (register, evict, remove, pin, sync), so a record is
    /// never written from a stale snapshot after a newer one, nor after its blob was removed.
    db_lock: tokio::sync::Mutex<()>,
    evictions: broadcast::Sender<Digest>,
    buffered: AtomicU64,
    served_total: AtomicU64,
    /// The part of `served_total` passed on while its piece still arrived.
    served_arriving_total: AtomicU64,
    /// Blobs evicted (to make room, or to meet a lowered budget at open) and their bytes.
    evicted_blobs: AtomicU64,
    evicted_bytes: AtomicU64,
    tuning: Tuning,
    /// Raw OS error every piece write fails with (tests simulate a full disk).
    #[cfg(test)]
    write_fault: Mutex<Option<i32>>,
    /// When and why the latest piece write found the disk full; cleared by the next write that
    /// succeeds.
    disk_full: Mutex<Option<(std::time::Instant, String)>>,
    /// Staging buffers of finished receivers, for the next ones (at most [`POOLED_STAGES`]): a
    /// new batch buffer per piece cost a zero-fill and, once the allocator had handed the memory
    /// back to the kernel, fresh pages (see [`crate::direct_io`] on what those cost in a VM).
    stages: Mutex<Vec<crate::direct_io::AlignedBuf>>,
}

/// Most staging buffers kept for reuse (a few pieces arrive at once; more would only add RSS).
const POOLED_STAGES: usize = 2;

impl Inner {
    /// A staging buffer from the pool, if one is there.
    fn take_stage(&self) -> Option<crate::direct_io::AlignedBuf> {
        self.stages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Gives a receiver's staging buffer back for the next one.
    fn put_stage(&self, mut stage: crate::direct_io::AlignedBuf) {
        if stage.capacity() == 0 {
            return;
        }
        stage.clear();
        let mut pool = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOLED_STAGES {
            pool.push(stage);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held_now(&self, digest: &Digest) -> Option<Held> {
        let st = self.lock();
        st.entries.get(digest).map(|e| Held {
            table: e.table.clone(),
            have: e.have.subscribe(),
            offer: e.offer.subscribe(),
            rank: Some(e.rank.clone()),
        })
    }

    /// Piece `index` of `digest` while a claimant streams it in (see [`PieceSource::arriving`]).
    fn arriving_now(self: &Arc<Self>, digest: &Digest, index: u32) -> Option<Arriving> {
        let st = self.lock();
        let e = st.entries.get(digest)?;
        let slot = e.slots.get(&index)?;
        let (claim, progress) = (slot.claimant?, slot.progress.clone()?);
        let range = e.table.table.piece_range(index)?;
        let file = PieceFile {
            file: e.file.clone(),
            offset: range.start,
            // A piece is at most piece_size (a u32) long.
            len: (range.end - range.start) as u32,
            direct: e.direct.clone(),
        };
        let (inner, digest, entry_id) = (self.clone(), digest.clone(), e.id);
        Some(Arriving {
            file,
            progress,
            valid: Box::new(move || {
                let st = inner.lock();
                st.entries
                    .get(&digest)
                    .filter(|e| e.id == entry_id)
                    .is_some_and(|e| {
                        e.have.borrow().get(index)
                            || e.slots
                                .get(&index)
                                .is_some_and(|s| s.claimant == Some(claim))
                    })
            }),
        })
    }

    fn use_guard(self: &Arc<Self>, digest: &Digest) -> Option<UseGuard> {
        let mut st = self.lock();
        let stamp = st.tick();
        let e = st.entries.get_mut(digest)?;
        e.users += 1;
        e.touch(stamp);
        Some(UseGuard {
            inner: self.clone(),
            digest: digest.clone(),
            entry_id: e.id,
        })
    }
}

impl Store {
    /// Opens (or creates) the store in `config.dir`, recovering what a previous run left: this
    /// re-hashes the not-yet-persisted pieces of every incomplete blob (see the module docs), so
    /// it takes as long as reading those from disk. Evicts least recently used blobs if the
    /// budget shrank below what is held. Spawns the flusher task (which ends when the store is
    /// dropped), so it must run inside a tokio runtime.
    ///
    /// # Errors
    /// [`StoreError::Io`] or [`StoreError::Db`] when the directory or database cannot be opened.
    pub async fn open(config: StoreConfig) -> Result<Arc<Store>, StoreError> {
        Self::open_tuned(config, Tuning::default()).await
    }

    pub(crate) async fn open_tuned(
        config: StoreConfig,
        tuning: Tuning,
    ) -> Result<Arc<Store>, StoreError> {
        let dir = config.dir.clone();
        let direct_io = config.direct_io;
        let rec = tokio::task::spawn_blocking(move || disk::recover(&dir, direct_io)).await??;
        let mut state = State::default();
        for r in rec.entries {
            state.insert(r);
        }
        let (evictions, _) = broadcast::channel(EVICTION_CHANNEL);
        let inner = Arc::new(Inner {
            blobs_dir: rec.blobs_dir,
            capacity: config.capacity_bytes,
            direct_io,
            db: rec.db,
            records: rec.records,
            tables: rec.tables,
            bitmaps: rec.bitmaps,
            state: Mutex::new(state),
            db_lock: tokio::sync::Mutex::new(()),
            evictions,
            buffered: AtomicU64::new(0),
            served_total: AtomicU64::new(0),
            served_arriving_total: AtomicU64::new(0),
            evicted_blobs: AtomicU64::new(0),
            evicted_bytes: AtomicU64::new(0),
            tuning,
            #[cfg(test)]
            write_fault: Mutex::new(None),
            disk_full: Mutex::new(None),
            stages: Mutex::new(Vec::new()),
        });
        // A budget lowered since the last run: shed the oldest evictable blobs.
        {
            let _g = inner.db_lock.lock().await;
            let victims = {
                let mut st = inner.lock();
                let over = st.used.saturating_sub(inner.capacity);
                let victims = st.plan_eviction(over).unwrap_or_else(|| st.evictable());
                st.take_victims(&victims)
            };
            inner.delete_victims(victims).await;
        }
        if let Some(every) = inner.tuning.flush_interval {
            tokio::spawn(flusher(Arc::downgrade(&inner), every));
        }
        Ok(Arc::new(Store { inner }))
    }

    /// Every registered blob (partial ones too), sorted: what to re-provide after a restart.
    pub fn held_blobs(&self) -> Vec<Digest> {
        let mut v: Vec<Digest> = self.inner.lock().entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// What is held of `digest`, if it is registered.
    pub fn entry(&self, digest: &Digest) -> Option<EntryInfo> {
        self.inner.lock().entries.get(digest).map(Entry::info)
    }

    /// The table and live bitmap of `digest`, without going through a future.
    pub fn held_now(&self, digest: &Digest) -> Option<Held> {
        self.inner.held_now(digest)
    }

    /// Where verified piece `index` of `digest` lies on disk.
    ///
    /// # Errors
    /// [`StoreError::NotHeld`], [`StoreError::BadIndex`] or [`StoreError::PieceNotHeld`].
    pub fn piece_file_now(&self, digest: &Digest, index: u32) -> Result<PieceFile, StoreError> {
        let st = self.inner.lock();
        let e = st
            .entries
            .get(digest)
            .ok_or_else(|| StoreError::NotHeld(digest.clone()))?;
        let range = e
            .table
            .table
            .piece_range(index)
            .ok_or_else(|| StoreError::BadIndex {
                digest: digest.clone(),
                index,
            })?;
        if !e.have.borrow().get(index) {
            return Err(StoreError::PieceNotHeld {
                digest: digest.clone(),
                index,
            });
        }
        Ok(PieceFile {
            file: e.file.clone(),
            offset: range.start,
            // A piece is at most piece_size (a u32) long.
            len: (range.end - range.start) as u32,
            direct: e.direct.clone(),
        })
    }

    /// Marks `digest` as just used (LRU). Returns whether it is registered.
    pub fn touch(&self, digest: &Digest) -> bool {
        let mut st = self.inner.lock();
        let stamp = st.tick();
        match st.entries.get_mut(digest) {
            Some(e) => {
                e.touch(stamp);
                true
            }
            None => false,
        }
    }

    /// Keeps `digest` from eviction and removal until the lease is dropped; `None` if it is not
    /// registered. Counts as a use.
    pub fn lease(&self, digest: &Digest) -> Option<Lease> {
        self.inner.use_guard(digest).map(|g| Lease { guard: g })
    }

    /// Pins `digest` (never evicted), persistently. Returns whether it was pinned already.
    ///
    /// # Errors
    /// [`StoreError::NotHeld`], or a database error.
    pub async fn pin(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.inner.set_pinned(digest, true).await
    }

    /// Unpins `digest`, persistently: it is evicted again like any other blob. Returns whether
    /// it was pinned.
    ///
    /// # Errors
    /// [`StoreError::NotHeld`], or a database error.
    pub async fn unpin(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.inner.set_pinned(digest, false).await
    }

    /// [`Store::pin`] and [`Store::unpin`] as the OCI endpoint's prefetch and unpin routes call
    /// them (a blob not held is `Ok(None)`).
    pub fn pinning(self: &Arc<Self>) -> crate::oci::PinFn {
        let store = self.clone();
        Arc::new(move |digest, pin| {
            let store = store.clone();
            Box::pin(async move {
                let set = if pin {
                    store.pin(&digest).await
                } else {
                    store.unpin(&digest).await
                };
                match set {
                    Ok(was) => Ok(Some(was)),
                    Err(StoreError::NotHeld(_)) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
    }

    /// Why the latest piece write found the disk full, until a write succeeds again.
    pub fn disk_full_now(&self) -> Option<String> {
        self.inner
            .disk_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, why)| why.clone())
    }

    /// Pinned blobs and their bytes together.
    pub fn pinned_usage(&self) -> (usize, u64) {
        let st = self.inner.lock();
        st.entries
            .values()
            .filter(|e| e.pinned)
            .fold((0, 0), |(n, b), e| (n + 1, b + e.table.table.size))
    }

    /// Removes `digest` (file and records) and announces it on the eviction channel. Returns
    /// whether it was registered.
    ///
    /// # Errors
    /// [`StoreError::InUse`] while a receiver or lease holds it; i/o or database errors.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let _g = inner.db_lock.lock().await;
        let victims = {
            let mut st = inner.lock();
            match st.entries.get(digest) {
                None => return Ok(false),
                Some(e) if e.users > 0 => return Err(StoreError::InUse(digest.clone())),
                Some(_) => st.take_victims(std::slice::from_ref(digest)),
            }
        };
        for (digest, entry) in victims {
            inner.delete_blob(digest.clone(), entry).await?;
            let _ = inner.evictions.send(digest);
        }
        Ok(true)
    }

    /// Evicts every unpinned blob not in use whose last use (a read, a piece served or
    /// received) was before `cutoff_ms` (ms since the Unix epoch), partial ones included: the
    /// idle eviction of `evict_unused_after_secs`. Returns how many and their bytes.
    pub async fn evict_unused(&self, cutoff_ms: u64) -> (usize, u64) {
        let inner = &self.inner;
        let _g = inner.db_lock.lock().await;
        let victims = {
            let mut st = inner.lock();
            let old = st.unused_since(cutoff_ms);
            st.take_victims(&old)
        };
        let n = victims.len();
        let bytes = victims.iter().map(|(_, e)| e.table.table.size).sum();
        inner.delete_victims(victims).await;
        (n, bytes)
    }

    /// Blobs evicted since the store opened (to make room for others, to meet a budget
    /// lowered since the last run, or idle too long; not those removed on purpose), and their
    /// bytes.
    pub fn evicted_total(&self) -> (u64, u64) {
        (
            self.inner.evicted_blobs.load(Ordering::Relaxed),
            self.inner.evicted_bytes.load(Ordering::Relaxed),
        )
    }

    /// Every registered blob with what is held of it, most recently used first: what
    /// `GET /flotilla/v1/store` lists.
    pub fn blobs(&self) -> Vec<(Digest, EntryInfo)> {
        let mut v: Vec<(Digest, EntryInfo)> = self
            .inner
            .lock()
            .entries
            .iter()
            .map(|(d, e)| (d.clone(), e.info()))
            .collect();
        v.sort_by(|a, b| b.1.last_used_ms.cmp(&a.1.last_used_ms).then(a.0.cmp(&b.0)));
        v
    }

    /// Bytes held (every registered blob at its full size) and the budget.
    pub fn usage(&self) -> (u64, u64) {
        (self.inner.lock().used, self.inner.capacity)
    }

    /// Bytes served to peers since the store opened, all blobs together.
    pub fn served_total(&self) -> u64 {
        self.inner.served_total.load(Ordering::Relaxed)
    }

    /// The part of [`Store::served_total`] sent on while its piece still arrived here.
    pub fn served_arriving_total(&self) -> u64 {
        self.inner.served_arriving_total.load(Ordering::Relaxed)
    }

    /// Every blob that leaves the store (evicted or removed), so the node can withdraw its DHT
    /// announcement. Bounded: a subscriber that lags gets `RecvError::Lagged` and should compare
    /// its announcements with [`Store::held_blobs`].
    pub fn subscribe_evictions(&self) -> broadcast::Receiver<Digest> {
        self.inner.evictions.subscribe()
    }

    /// Syncs and persists every changed bitmap and record now (the flusher does this
    /// periodically; call it at a clean shutdown).
    ///
    /// # Errors
    /// The first i/o or database error; the blobs concerned stay marked for the next flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush_dirty().await
    }

    /// Makes every piece write fail with raw OS error `code` (`None` to heal).
    #[cfg(test)]
    pub(crate) fn inject_write_fault(&self, code: Option<i32>) {
        *self
            .inner
            .write_fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = code;
    }
}

impl PieceSource for Store {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        futures::future::ready(Ok(self.inner.held_now(digest))).boxed()
    }

    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        futures::future::ready(
            self.piece_file_now(digest, index)
                .map_err(SourceError::from),
        )
        .boxed()
    }

    fn arriving(&self, digest: &Digest, index: u32) -> Option<Arriving> {
        self.inner.arriving_now(digest, index)
    }

    fn served(&self, digest: &Digest, bytes: u64) {
        self.inner.served_total.fetch_add(bytes, Ordering::Relaxed);
        let mut st = self.inner.lock();
        let stamp = st.tick();
        if let Some(e) = st.entries.get_mut(digest) {
            e.served = e.served.saturating_add(bytes);
            e.touch(stamp);
        }
    }

    fn served_arriving(&self, _digest: &Digest, bytes: u64) {
        self.inner
            .served_arriving_total
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Inner {
    /// Refuses a new blob the file system cannot hold (see [`StoreError::DiskLow`]).
    async fn check_disk_room(&self, size: u64) -> Result<(), StoreError> {
        let dir = self.blobs_dir.clone();
        let available = tokio::task::spawn_blocking(move || disk::available_bytes(&dir)).await??;
        if available < size.saturating_add(DISK_HEADROOM) {
            return Err(StoreError::DiskLow {
                needed: size,
                available,
                headroom: DISK_HEADROOM,
                dir: self.blobs_dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// Remembers whether the disk was full at the latest piece write.
    pub(crate) fn note_write(&self, err: Option<&StoreError>) {
        let full = match err {
            Some(StoreError::DiskFull(e)) => Some((
                std::time::Instant::now(),
                format!("disk full under {}: {e}", self.blobs_dir.display()),
            )),
            // Other failures say nothing about space.
            Some(_) => return,
            None => None,
        };
        let mut slot = self
            .disk_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() || full.is_some() {
            *slot = full;
        }
    }
}

/// Bytes of free disk a new blob must leave: the database, bitmaps and records still need room
/// to be written after the blob's pieces.
const DISK_HEADROOM: u64 = 1 << 20;

impl PieceSink for Store {
    fn register(
        &self,
        table: Arc<SignedPieceTable>,
    ) -> BoxFuture<'static, Result<Held, SourceError>> {
        let inner = self.inner.clone();
        async move { inner.register(table).await.map_err(SourceError::from) }.boxed()
    }

    fn receive(&self, digest: &Digest, index: u32) -> Result<Box<dyn PieceReceiver>, SourceError> {
        receiver::start(&self.inner, digest, index)
            .map(|r| Box::new(r) as Box<dyn PieceReceiver>)
            .map_err(SourceError::from)
    }

    fn disk_full(&self, since: std::time::Instant) -> Option<String> {
        let slot = self
            .inner
            .disk_full
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slot.as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, why)| why.clone())
    }
}
