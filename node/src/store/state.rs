//! The store's in-memory state: one [`Entry`] per registered blob, the byte count, the LRU
//! clock, and the eviction choice. Guarded by one `std::sync::Mutex` that is never held across
//! an `.await` or a disk operation.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use tokio::sync::watch;

use super::EntryInfo;
use super::disk::Record;
use crate::ports::PieceRank;

/// Who may write the bytes of one piece (see "Concurrent receivers" in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writer {
    /// Nobody yet, or a buffered copy failed mid-write: the next claimant's first batch takes it.
    Nobody,
    /// The claiming receiver with this id.
    Claimant(u64),
    /// Verified and being (or already) marked: nobody writes again.
    Done,
}

/// A piece that has (or had) receivers and is not verified yet.
pub(super) struct PieceSlot {
    /// Locked around every write to the piece's bytes.
    pub writer: Arc<Mutex<Writer>>,
    /// The live receiver that streams into the file, if any; others buffer.
    pub claimant: Option<u64>,
    /// The claimant's verified and written bytes (see [`crate::ports::Arriving`]).
    pub progress: Option<watch::Receiver<u32>>,
}

impl PieceSlot {
    fn new() -> Self {
        PieceSlot {
            writer: Arc::new(Mutex::new(Writer::Nobody)),
            claimant: None,
            progress: None,
        }
    }
}

/// One registered blob.
pub(super) struct Entry {
    /// Distinguishes this registration from a later one of the same digest.
    pub id: u64,
    pub table: Arc<SignedPieceTable>,
    /// The blob file, shared with readers (positioned I/O only).
    pub file: Arc<File>,
    /// The same file opened for direct I/O (`None` where the file system refuses it).
    pub direct: Option<Arc<File>>,
    /// The verified pieces; the sender holds the current value.
    pub have: watch::Sender<Bitfield>,
    /// `have` and the pieces whose first block verified while arriving and whose copy is still
    /// alive ([`crate::ports::Held::offer`]).
    pub offer: watch::Sender<Bitfield>,
    /// How rare the download of this blob sees each piece (served streams read it).
    pub rank: Arc<PieceRank>,
    /// Every piece verified *and* synced.
    pub complete: bool,
    pub pinned: bool,
    pub last_used: u64,
    pub served: u64,
    /// Leases and live receivers.
    pub users: u32,
    /// Bits set since the last persisted snapshot.
    pub bits_dirty: bool,
    /// Record fields changed since last persisted.
    pub meta_dirty: bool,
    /// Pieces being received and not yet verified.
    pub slots: HashMap<u32, PieceSlot>,
}

/// What a persist writes, taken under the state lock.
pub(super) struct Snapshot {
    pub entry_id: u64,
    pub file: Arc<File>,
    /// `Some` when bits changed: the file is synced before these are written.
    pub bits: Option<Bitfield>,
    pub record: Record,
    /// Every bit is set and the blob was not yet marked complete.
    pub completing: bool,
}

impl Entry {
    pub fn info(&self) -> EntryInfo {
        let have = self.have.borrow();
        EntryInfo {
            size: self.table.table.size,
            piece_count: self.table.table.piece_count(),
            pieces_held: have.count(),
            complete: self.complete,
            pinned: self.pinned,
            served_bytes: self.served,
            last_used_ms: self.last_used,
        }
    }

    pub fn touch(&mut self, stamp: u64) {
        self.last_used = stamp;
        self.meta_dirty = true;
    }

    /// The slot of piece `index`, created on first use.
    pub fn slot(&mut self, index: u32) -> &mut PieceSlot {
        self.slots.entry(index).or_insert_with(PieceSlot::new)
    }

    pub fn needs_sync(&self) -> bool {
        self.bits_dirty || self.meta_dirty || (!self.complete && self.have.borrow().is_complete())
    }

    /// Takes what has to be persisted and clears the dirty marks (the caller re-marks them if
    /// persisting fails).
    pub fn snapshot(&mut self) -> Option<Snapshot> {
        if !self.needs_sync() {
            return None;
        }
        let completing = !self.complete && self.have.borrow().is_complete();
        let bits = (self.bits_dirty || completing).then(|| self.have.borrow().clone());
        self.bits_dirty = false;
        self.meta_dirty = false;
        Some(Snapshot {
            entry_id: self.id,
            file: self.file.clone(),
            bits,
            record: Record {
                size: self.table.table.size,
                complete: self.complete || completing,
                pinned: self.pinned,
                last_used_ms: self.last_used,
            },
            completing,
        })
    }
}

/// A blob as recovered from disk or just created, before it becomes an [`Entry`].
pub(super) struct Recovered {
    pub digest: Digest,
    pub table: Arc<SignedPieceTable>,
    pub file: Arc<File>,
    pub direct: Option<Arc<File>>,
    pub bits: Bitfield,
    pub record: Record,
    /// Bits not persisted yet.
    pub dirty: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub entries: HashMap<Digest, Entry>,
    /// Sum of the sizes of all entries (plus a registration's reservation in flight).
    pub used: u64,
    clock: u64,
    next_id: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl State {
    /// The next LRU stamp: wall-clock milliseconds, but strictly increasing.
    pub fn tick(&mut self) -> u64 {
        self.clock = now_ms().max(self.clock.saturating_add(1));
        self.clock
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds a blob (counting its size) and returns its entry.
    pub fn insert(&mut self, r: Recovered) -> &mut Entry {
        self.clock = self.clock.max(r.record.last_used_ms);
        self.used = self.used.saturating_add(r.record.size);
        let id = self.next_id();
        let complete = r.record.complete;
        let (offer, _) = watch::channel(r.bits.clone());
        let (have, _) = watch::channel(r.bits);
        let entry = Entry {
            id,
            rank: Arc::new(PieceRank::new(r.table.table.piece_count())),
            table: r.table,
            file: r.file,
            direct: r.direct,
            have,
            offer,
            complete,
            pinned: r.record.pinned,
            last_used: r.record.last_used_ms,
            served: 0,
            users: 0,
            bits_dirty: r.dirty,
            meta_dirty: r.dirty,
            slots: HashMap::new(),
        };
        match self.entries.entry(r.digest) {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                // Never happens (callers check first); keep the counts right if it does.
                self.used = self.used.saturating_sub(o.get().table.table.size);
                o.insert(entry);
                o.into_mut()
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(entry),
        }
    }

    /// Blobs that may be evicted now (unpinned, unused), least recently used first.
    pub fn evictable(&self) -> Vec<Digest> {
        let mut v: Vec<(&Digest, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.pinned && e.users == 0)
            .collect();
        v.sort_by_key(|(d, e)| (e.last_used, *d));
        v.into_iter().map(|(d, _)| d.clone()).collect()
    }

    /// Evictable blobs last used before `cutoff_ms` (ms since the Unix epoch).
    pub fn unused_since(&self, cutoff_ms: u64) -> Vec<Digest> {
        self.evictable()
            .into_iter()
            .filter(|d| self.entries.get(d).is_some_and(|e| e.last_used < cutoff_ms))
            .collect()
    }

    /// The least recently used evictable blobs that free at least `needed` bytes, or `None` if
    /// all of them together do not.
    pub fn plan_eviction(&self, needed: u64) -> Option<Vec<Digest>> {
        let mut freed = 0u64;
        let mut plan = Vec::new();
        for d in self.evictable() {
            if freed >= needed {
                break;
            }
            freed = freed.saturating_add(self.entries.get(&d).map_or(0, |e| e.table.table.size));
            plan.push(d);
        }
        (freed >= needed).then_some(plan)
    }

    /// Takes `digests` out of the state (no longer visible, no longer counted).
    pub fn take_victims(&mut self, digests: &[Digest]) -> Vec<(Digest, Entry)> {
        let mut out = Vec::with_capacity(digests.len());
        for d in digests {
            if let Some(e) = self.entries.remove(d) {
                self.used = self.used.saturating_sub(e.table.table.size);
                out.push((d.clone(), e));
            }
        }
        out
    }
}
