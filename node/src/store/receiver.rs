//! Receiving one piece: check it block by block as it streams, write into the blob file (the claimant) or buffer it
//! (a concurrent duplicate), and set the bit only for the one copy that verified and owns the
//! bytes on disk. Bytes are staged in aligned batches (a first of 512 KiB, then 1 MiB), hashed and written (direct where the
//! file allows: [`crate::direct_io`]) on the blocking pool, one batch in flight while the next
//! fills. The rules are in "Concurrent receivers of one piece" in [`super`]'s docs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use flotilla_protocol::Digest;
use flotilla_protocol::piece::PieceChecker;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

use super::state::Writer;
use super::{Inner, StoreError, UseGuard};
use crate::direct_io::{self, ALIGN, AlignedBuf};
use crate::ports::{PieceReceiver, SourceError, Verdict};

fn lock(w: &Mutex<Writer>) -> MutexGuard<'_, Writer> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Releases the claim on a piece when its claimant ends (finished, failed or dropped).
struct ClaimGuard {
    inner: Arc<Inner>,
    digest: Digest,
    entry_id: u64,
    index: u32,
    id: u64,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some(e) = st.entries.get_mut(&self.digest)
            && e.id == self.entry_id
            && let Some(slot) = e.slots.get_mut(&self.index)
            && slot.claimant == Some(self.id)
        {
            slot.claimant = None;
            slot.progress = None;
            // It ended without the piece (a done claimant's slot is gone): what it offered
            // while arriving is withdrawn, so peers look for the piece elsewhere.
            if !e.have.borrow().get(self.index) {
                e.offer.send_if_modified(|b| b.clear(self.index));
            }
        }
    }
}

/// What a claimant's batches tell the store as they verify: the bytes readers may pass on.
struct Progress {
    tx: watch::Sender<u32>,
    inner: Arc<Inner>,
    digest: Digest,
    entry_id: u64,
    index: u32,
    /// The claim it reports for.
    id: u64,
}

impl Progress {
    /// The verified prefix grew from `before` to `after` bytes, all of them written: tell the
    /// readers, and at the first block offer the piece to peers.
    fn advanced(&self, before: u32, after: u32) {
        if after <= before {
            return;
        }
        self.tx.send_replace(after);
        if before == 0 {
            let st = self.inner.lock();
            // Only while the claim still holds the slot: a batch that finishes after its
            // receiver was dropped must not offer a piece whose claim is already gone.
            if let Some(e) = st.entries.get(&self.digest)
                && e.id == self.entry_id
                && e.slots
                    .get(&self.index)
                    .is_some_and(|slot| slot.claimant == Some(self.id))
            {
                e.offer.send_if_modified(|b| b.set(self.index));
            }
        }
    }
}

/// Memory a buffering receiver reserved from the store-wide budget.
struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.inner.buffered.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

enum Mode {
    /// Streams into the file while the slot names it the writer.
    Claim {
        id: u64,
        writer: Arc<Mutex<Writer>>,
        /// Whether its first batch went out (the first one takes the slot over).
        started: bool,
        progress: Arc<Progress>,
        _claim: ClaimGuard,
    },
    /// Buffers the whole piece; writes it only once verified.
    Buffer {
        writer: Arc<Mutex<Writer>>,
        buf: Vec<u8>,
        _reservation: Reservation,
    },
    /// The piece was already held when this started: hash only, to tell a duplicate from garbage.
    Discard,
}

/// A [`PieceReceiver`] of the store.
pub(super) struct Receiver {
    inner: Arc<Inner>,
    index: u32,
    /// Offset of the piece in the file and its length.
    offset: u64,
    len: u32,
    /// A fresh checker of this piece, for a buffered copy verified whole at the end.
    fresh: PieceChecker,
    file: Arc<File>,
    /// `file` opened for direct I/O: the claimant's aligned batches bypass the page cache.
    direct: Option<Arc<File>>,
    mode: Mode,
    /// Checks the piece block by block. `None` while a batch is in flight (it holds the
    /// checker), and after a batch was interrupted (its future dropped): the receiver is then
    /// poisoned.
    hasher: Option<PieceChecker>,
    /// The batch being hashed and written on the blocking pool: its checker, its buffer and
    /// whether it was written (`Ok(false)`: preempted).
    in_flight: Option<tokio::task::JoinHandle<(PieceChecker, AlignedBuf, io::Result<bool>)>>,
    /// Bytes accepted but not yet hashed (and written, for a claimant); aligned, so a batch can
    /// go to the file direct.
    stage: AlignedBuf,
    received: u64,
    /// Bytes handed to batches so far: where the next batch goes within the piece.
    flushed: u64,
    overflow: bool,
    failed: bool,
    /// A verified copy took the slot over: this one's batches are no longer written.
    preempted: bool,
    use_guard: UseGuard,
}

/// Starts receiving piece `index` of `digest`.
pub(super) fn start(
    inner: &Arc<Inner>,
    digest: &Digest,
    index: u32,
) -> Result<Receiver, StoreError> {
    let mut st = inner.lock();
    let stamp = st.tick();
    let id = st.next_id();
    let e = st
        .entries
        .get_mut(digest)
        .ok_or_else(|| StoreError::NotHeld(digest.clone()))?;
    let range = e
        .table
        .table
        .piece_range(index)
        .ok_or_else(|| StoreError::BadIndex {
            digest: digest.clone(),
            index,
        })?;
    // A piece is at most piece_size (a u32) long.
    let len = (range.end - range.start) as u32;
    let checker = PieceChecker::new(&e.table.table, index).map_err(|_| StoreError::BadIndex {
        digest: digest.clone(),
        index,
    })?;
    let entry_id = e.id;
    let mode = if e.have.borrow().get(index) {
        Mode::Discard
    } else {
        let slot = e.slot(index);
        if slot.claimant.is_none() {
            slot.claimant = Some(id);
            let (tx, rx) = watch::channel(0);
            slot.progress = Some(rx);
            Mode::Claim {
                id,
                writer: slot.writer.clone(),
                started: false,
                progress: Arc::new(Progress {
                    tx,
                    inner: inner.clone(),
                    digest: digest.clone(),
                    entry_id,
                    index,
                    id,
                }),
                _claim: ClaimGuard {
                    inner: inner.clone(),
                    digest: digest.clone(),
                    entry_id,
                    index,
                    id,
                },
            }
        } else {
            let max = inner.tuning.max_buffered;
            let bytes = u64::from(len);
            inner
                .buffered
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    cur.checked_add(bytes).filter(|n| *n <= max)
                })
                .map_err(|_| StoreError::Busy)?;
            Mode::Buffer {
                writer: slot.writer.clone(),
                buf: Vec::new(),
                _reservation: Reservation {
                    inner: inner.clone(),
                    bytes,
                },
            }
        }
    };
    e.users += 1;
    e.touch(stamp);
    let file = e.file.clone();
    let direct = e.direct.clone();
    drop(st);
    Ok(Receiver {
        inner: inner.clone(),
        index,
        offset: range.start,
        len,
        fresh: checker.clone(),
        file,
        direct,
        mode,
        hasher: Some(checker),
        in_flight: None,
        stage: AlignedBuf::new(),
        received: 0,
        flushed: 0,
        overflow: false,
        failed: false,
        preempted: false,
        use_guard: UseGuard {
            inner: inner.clone(),
            digest: digest.clone(),
            entry_id,
        },
    })
}

/// One claimant batch, under the slot lock: written only if the slot names this receiver (or
/// this is its first batch and no verified copy is done). `Ok(false)`: preempted, not written.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_claimed(
    writer: &Mutex<Writer>,
    me: u64,
    first: bool,
    file: &File,
    direct: Option<&File>,
    at: u64,
    data: &[u8],
    fault: Option<i32>,
) -> io::Result<bool> {
    let mut w = lock(writer);
    match *w {
        Writer::Claimant(x) if x == me => {}
        // The first batch of a new claimant starts the piece over, after a failed buffered copy
        // or from a claimant that went away (whose stale batches are refused from then on).
        // Claim ids grow and a live claim is exclusive, so an older id is always a dead one.
        Writer::Nobody if first => *w = Writer::Claimant(me),
        Writer::Claimant(x) if first && x < me => *w = Writer::Claimant(me),
        _ => return Ok(false),
    }
    if let Some(code) = fault {
        return Err(io::Error::from_raw_os_error(code));
    }
    direct_io::write_at(file, direct, data, at)?;
    Ok(true)
}

enum Outcome {
    Invalid,
    Duplicate,
    /// Preempted by a verified copy that then failed to write: this copy's bytes may be partly
    /// overwritten, so it cannot be kept either.
    Interrupted,
    /// This copy is on disk, its slot done and its bit set; `true` if that completed the blob.
    Won(bool),
}

impl Receiver {
    fn digest(&self) -> &Digest {
        &self.use_guard.digest
    }

    async fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        if self.failed || (self.hasher.is_none() && self.in_flight.is_none()) {
            return Err(StoreError::Poisoned);
        }
        if self.overflow {
            return Ok(());
        }
        let n = chunk.len() as u64;
        if self.received + n > u64::from(self.len) {
            // More than the piece holds: it cannot verify; keep nothing more.
            self.overflow = true;
            self.stage = AlignedBuf::new();
            if let Mode::Buffer { buf, .. } = &mut self.mode {
                *buf = Vec::new();
            }
            return Ok(());
        }
        self.received += n;
        if let Mode::Buffer { buf, .. } = &mut self.mode {
            if buf.capacity() == 0 {
                // Exactly the reserved piece, not a doubling Vec's slack.
                buf.reserve_exact(self.len as usize);
            }
            buf.extend_from_slice(chunk);
            return Ok(());
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            self.ensure_stage();
            // Never more than a batch staged: two per receiver is all it holds.
            let k = rest
                .len()
                .min(self.batch().saturating_sub(self.stage.len()).max(1));
            self.stage.extend_from_slice(&rest[..k]);
            rest = &rest[k..];
            self.flush_full_stage().await?;
        }
        Ok(())
    }

    /// A stage to fill: one batch, reused from receiver to receiver.
    fn ensure_stage(&mut self) {
        if self.stage.capacity() == 0 {
            let batch = self.inner.tuning.write_batch;
            self.stage = self
                .inner
                .take_stage()
                .unwrap_or_else(|| AlignedBuf::with_capacity(batch));
        }
    }

    /// Bytes the next batch gathers: the piece's first batch is smaller, so the piece is
    /// offered to peers (and readable by clients) early; later ones are bigger, for fewer
    /// hand-offs to the blocking pool.
    fn batch(&self) -> usize {
        let t = &self.inner.tuning;
        if self.flushed == 0 {
            t.first_batch.min(t.write_batch)
        } else {
            t.write_batch
        }
    }

    /// Sends a full batch on its way: whole blocks only, so it can go direct; the rest waits
    /// for more bytes.
    async fn flush_full_stage(&mut self) -> Result<(), StoreError> {
        if self.stage.len() >= self.batch() {
            let n = self.stage.len() - self.stage.len() % ALIGN;
            self.flush_stage(if n > 0 { n } else { self.stage.len() })
                .await?;
        }
        Ok(())
    }

    /// Room in the stage for the next `1..=n` bytes (see [`PieceReceiver::spare`]): only where
    /// [`Receiver::write_chunk`] would stage them, and never past the piece or the batch.
    fn stage_room(&mut self, n: usize) -> Option<&mut [u8]> {
        let healthy = !self.failed
            && !self.overflow
            && (self.hasher.is_some() || self.in_flight.is_some())
            && !matches!(self.mode, Mode::Buffer { .. });
        let left = u64::from(self.len).saturating_sub(self.received);
        if !healthy || n == 0 || left == 0 {
            return None;
        }
        self.ensure_stage();
        let room = self
            .batch()
            .saturating_sub(self.stage.len())
            .min(self.stage.capacity() - self.stage.len())
            .min(n)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        (room > 0).then(|| &mut self.stage.spare_mut()[..room])
    }

    /// Counts `k` bytes read into [`Receiver::stage_room`]'s room, as `write_chunk` would.
    async fn commit_staged(&mut self, k: usize) -> Result<(), StoreError> {
        if self.failed
            || (self.hasher.is_none() && self.in_flight.is_none())
            || k > self.stage.capacity() - self.stage.len()
        {
            return Err(StoreError::Poisoned);
        }
        self.stage.grow(k);
        self.received += k as u64;
        self.flush_full_stage().await
    }

    /// Starts hashing (and, for a claimant still owning the slot, writing) the first `n` staged
    /// bytes on the blocking pool, once the batch before has settled; the rest of the stage (a
    /// partial block) moves to a fresh stage, which fills while this batch is on its way. One
    /// batch at a time is in flight, so the stream is read while the disk writes.
    async fn flush_stage(&mut self, n: usize) -> Result<(), StoreError> {
        let n = n.min(self.stage.len());
        if n == 0 {
            return Ok(());
        }
        self.settle().await?;
        let mut hasher = self.hasher.take().ok_or(StoreError::Poisoned)?;
        let stage = std::mem::take(&mut self.stage);
        let at = self.offset + self.flushed;
        self.flushed += n as u64;
        let mut next = self
            .inner
            .take_stage()
            .unwrap_or_else(|| AlignedBuf::with_capacity(stage.capacity()));
        next.extend_from_slice(&stage.as_slice()[n..]);
        self.stage = next;
        let job = match &mut self.mode {
            Mode::Claim {
                id,
                writer,
                started,
                progress,
                ..
            } if !self.preempted => {
                let first = !*started;
                *started = true;
                Some((writer.clone(), *id, first, progress.clone()))
            }
            _ => None,
        };
        let (file, direct) = (self.file.clone(), self.direct.clone());
        let fault = self.inner.write_fault();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let data = &stage.as_slice()[..n];
            let before = hasher.verified_len();
            hasher.update(data);
            let res = match job {
                // A bad block fails the piece: nothing of it is worth writing.
                Some(_) if hasher.is_bad() => Ok(true),
                Some((w, id, first, progress)) => {
                    let res =
                        write_claimed(&w, id, first, &file, direct.as_deref(), at, data, fault);
                    if matches!(res, Ok(true)) {
                        progress.advanced(before, hasher.verified_len());
                    }
                    res
                }
                None => Ok(true),
            };
            (hasher, stage, res)
        }));
        Ok(())
    }

    /// Waits for the batch in flight, if any, and takes its outcome (and its hasher back).
    async fn settle(&mut self) -> Result<(), StoreError> {
        let Some(job) = self.in_flight.take() else {
            return Ok(());
        };
        let (hasher, stage, res) = job.await?;
        self.hasher = Some(hasher);
        self.inner.put_stage(stage);
        match res {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.preempted = true;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e.into())
            }
        }
    }

    async fn finish_inner(mut self) -> Result<Verdict, StoreError> {
        if self.failed {
            return Err(StoreError::Poisoned);
        }
        let complete_len = !self.overflow && self.received == u64::from(self.len);
        let inner = self.inner.clone();
        let (digest, entry_id, index) =
            (self.digest().clone(), self.use_guard.entry_id, self.index);
        let mark = move || inner.set_verified(&digest, entry_id, index);
        let outcome = match std::mem::replace(&mut self.mode, Mode::Discard) {
            Mode::Buffer {
                writer,
                buf,
                _reservation: reservation,
            } => {
                if !complete_len {
                    return Ok(Verdict::Invalid);
                }
                let (file, at, checker) = (self.file.clone(), self.offset, self.fresh.clone());
                let fault = self.inner.write_fault();
                let out = tokio::task::spawn_blocking(move || {
                    take_over(&writer, &file, at, &buf, checker, fault, mark)
                })
                .await??;
                drop(reservation);
                out
            }
            mode => {
                // Put it back: the claim guard must live until the slot is settled.
                self.mode = mode;
                self.flush_stage(self.stage.len()).await?;
                self.settle().await?;
                let hasher = self.hasher.take().ok_or(StoreError::Poisoned)?;
                if !complete_len || !hasher.is_complete() {
                    Outcome::Invalid
                } else if let Mode::Claim { id, writer, .. } = &self.mode {
                    let (writer, id, preempted) = (writer.clone(), *id, self.preempted);
                    tokio::task::spawn_blocking(move || -> Result<Outcome, StoreError> {
                        let mut w = lock(&writer);
                        match *w {
                            Writer::Claimant(x) if x == id && !preempted => {
                                *w = Writer::Done;
                                Ok(Outcome::Won(mark()?))
                            }
                            Writer::Done => Ok(Outcome::Duplicate),
                            _ => Ok(Outcome::Interrupted),
                        }
                    })
                    .await??
                } else {
                    Outcome::Duplicate
                }
            }
        };
        match outcome {
            Outcome::Invalid => Ok(Verdict::Invalid),
            Outcome::Duplicate => Ok(Verdict::Duplicate),
            Outcome::Interrupted => Err(StoreError::Interrupted { index: self.index }),
            Outcome::Won(completes) => {
                if completes && let Err(e) = self.inner.complete(self.digest()).await {
                    // The piece is held either way; the flusher retries the completion.
                    tracing::warn!(digest = %self.digest(), error = %e, "syncing a completed blob failed");
                }
                Ok(Verdict::Verified)
            }
        }
    }
}

/// A verified buffered copy: under the slot lock, unless the piece is done, writes the whole
/// piece, marks the slot done and sets the bit (`mark`). A failed write leaves the slot to
/// nobody (the claimant's bytes are no longer whole either).
fn take_over(
    writer: &Mutex<Writer>,
    file: &File,
    at: u64,
    buf: &[u8],
    mut checker: PieceChecker,
    fault: Option<i32>,
    mark: impl FnOnce() -> Result<bool, StoreError>,
) -> Result<Outcome, StoreError> {
    checker.update(buf);
    if !checker.is_complete() {
        return Ok(Outcome::Invalid);
    }
    let mut w = lock(writer);
    if *w == Writer::Done {
        return Ok(Outcome::Duplicate);
    }
    *w = Writer::Nobody;
    if let Some(code) = fault {
        return Err(io::Error::from_raw_os_error(code).into());
    }
    file.write_all_at(buf, at)?;
    *w = Writer::Done;
    Ok(Outcome::Won(mark()?))
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.inner.put_stage(std::mem::take(&mut self.stage));
    }
}

impl PieceReceiver for Receiver {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SourceError>> {
        async move {
            let r = self.write_chunk(chunk).await;
            self.inner.note_write(r.as_ref().err());
            r.map_err(SourceError::from)
        }
        .boxed()
    }

    fn spare(&mut self, n: usize) -> Option<&mut [u8]> {
        self.stage_room(n)
    }

    fn commit(&mut self, k: usize) -> BoxFuture<'_, Result<(), SourceError>> {
        async move {
            let r = self.commit_staged(k).await;
            self.inner.note_write(r.as_ref().err());
            r.map_err(SourceError::from)
        }
        .boxed()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Verdict, SourceError>> {
        async move {
            let inner = self.inner.clone();
            let r = self.finish_inner().await;
            inner.note_write(r.as_ref().err());
            r.map_err(SourceError::from)
        }
        .boxed()
    }
}

impl Inner {
    /// Sets the bit of a piece whose slot was just marked done, under that slot's lock (so no
    /// cancellation can leave a done slot without its bit). Returns whether the blob is now
    /// fully held and not yet marked complete.
    fn set_verified(&self, digest: &Digest, entry_id: u64, index: u32) -> Result<bool, StoreError> {
        let mut st = self.lock();
        let stamp = st.tick();
        let Some(e) = st.entries.get_mut(digest).filter(|e| e.id == entry_id) else {
            return Err(StoreError::NotHeld(digest.clone()));
        };
        if e.have.send_if_modified(|b| b.set(index)) {
            e.bits_dirty = true;
        }
        e.offer.send_if_modified(|b| b.set(index));
        e.slots.remove(&index);
        e.touch(stamp);
        Ok(!e.complete && e.have.borrow().is_complete())
    }

    /// The raw OS error tests make piece writes fail with.
    fn write_fault(&self) -> Option<i32> {
        #[cfg(test)]
        {
            *self
                .write_fault
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        }
        #[cfg(not(test))]
        {
            None
        }
    }
}
