//! The writer half of one piece stream: owns the stream's request queue, answers requests it
//! cannot serve, and sends pieces — whole ones read from the store's file, and ones still
//! arriving here as their blocks verify — taking the downloader's commands between pieces and
//! between the parts of a piece (see the parent module).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use flotilla_protocol::wire::{self, ErrorCode, Frame};
use futures::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use super::{Cmd, Conn, GOODBYE_TIMEOUT, goodbye};
use crate::direct_io::{self, AlignedBuf};
use crate::ports::{Arriving, PieceFile};
use crate::transfer::slots::{Acquire, SendSlot, StreamSlots, Ticket};

/// Bytes per positioned read and per stream write of a piece payload.
const SEND_CHUNK: usize = 512 << 10;

/// The writer half of one stream: owns the request queue and everything sent.
pub(super) struct Writer<'a, W> {
    pub(super) io: W,
    /// Frames waiting to go out before the next piece (Busy, Missing, Have).
    pub(super) out: Vec<u8>,
    pub(super) queue: VecDeque<u32>,
    pub(super) count: u32,
    /// The pieces the downloader has been told are held whole.
    pub(super) sent: Bitfield,
    /// The pieces the downloader has been told it may ask for (held or arriving).
    pub(super) told: Bitfield,
    /// Pieces offered while arriving and then withdrawn on this stream, not offered since: a
    /// request for one crossed the Withdrawn frame and is answered PieceBusy, not Missing.
    pub(super) withdrawn: Bitfield,
    pub(super) have: watch::Receiver<Bitfield>,
    /// Held or arriving with a verified first block: what may be asked for.
    pub(super) offer: watch::Receiver<Bitfield>,
    /// Whether `have` can still change (its sender is alive).
    pub(super) watching: bool,
    /// Whether `offer` can still change.
    pub(super) watching_offer: bool,
    /// `have` changed (seen by `changed()`, which marks it seen) and is not reported yet.
    pub(super) have_dirty: bool,
    pub(super) table: Arc<SignedPieceTable>,
    pub(super) digest: Digest,
    /// The two payload buffers, kept while the stream has work.
    pub(super) bufs: Option<(AlignedBuf, AlignedBuf)>,
    /// The stream's place on its blob.
    pub(super) stream_slots: StreamSlots,
    /// A send slot of the blob, held from the moment the front request gets one until the queue
    /// runs dry or the slot passes to a waiting stream.
    pub(super) slot: Option<SendSlot>,
    /// The stream's place in line for a send slot, while its front request waits for one.
    pub(super) ticket: Option<Ticket>,
    pub(super) conn: &'a Conn,
}

/// What became of the front request.
enum Step {
    /// Answered or sent: look at the next.
    Done,
    /// Waits for a send slot.
    Wait,
}

/// How a stream ends, from the writer's side.
enum End {
    /// The downloader broke the rules or went silent: tell it why.
    Goodbye(ErrorCode, String),
    /// The stream failed or the piece broke off: nothing more can be said on it.
    Broken(String),
}

impl<W: AsyncWrite + Unpin> Writer<'_, W> {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let end = self.serve(&mut rx).await;
        match end {
            Ok(()) => {
                let _ = timeout(GOODBYE_TIMEOUT, self.io.close()).await;
            }
            Err(End::Goodbye(code, message)) => {
                tracing::debug!(peer = %self.conn.peer, "closing piece stream: {code}: {message}");
                let _ = timeout(GOODBYE_TIMEOUT, goodbye(&mut self.io, code, &message)).await;
            }
            Err(End::Broken(why)) => {
                tracing::debug!(peer = %self.conn.peer, "piece stream broke: {why}");
            }
        }
    }

    /// Serves until the downloader has stopped sending and everything is answered.
    async fn serve(&mut self, rx: &mut mpsc::Receiver<Cmd>) -> Result<(), End> {
        let idle = self.conn.config.idle_timeout;
        let mut last_activity = Instant::now();
        let mut reader_done = false;
        loop {
            // Everything the reader has parsed so far, so cancels land before the next piece.
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        last_activity = Instant::now();
                        self.apply(cmd)?;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        reader_done = true;
                        break;
                    }
                }
            }
            self.queue_haves();
            if let Some(&piece) = self.queue.front() {
                if let Step::Done = self.step(piece, rx).await? {
                    last_activity = Instant::now();
                    continue;
                }
            } else {
                self.slot = None;
                self.ticket = None;
            }
            if !self.out.is_empty() {
                let out = std::mem::take(&mut self.out);
                self.write(&out).await?;
                self.out = out;
                self.out.clear();
                self.flush().await?;
                last_activity = Instant::now();
            }
            let waiting = self.ticket.is_some();
            if reader_done && !waiting {
                return Ok(());
            }
            // Idle or waiting: no reason to keep a megabyte of buffers.
            self.bufs = None;
            tokio::select! {
                cmd = rx.recv(), if !reader_done => match cmd {
                    Some(cmd) => {
                        last_activity = Instant::now();
                        self.apply(cmd)?;
                    }
                    None => reader_done = true,
                },
                changed = self.have.changed(), if self.watching => match changed {
                    Ok(()) => self.have_dirty = true,
                    Err(_) => self.watching = false,
                },
                changed = self.offer.changed(), if self.watching_offer => match changed {
                    Ok(()) => self.have_dirty = true,
                    Err(_) => self.watching_offer = false,
                },
                () = granted(&mut self.ticket), if waiting => {
                    self.slot = self.ticket.take().map(Ticket::into_slot);
                    last_activity = Instant::now();
                }
                // A downloader waiting for a slot is not idle.
                () = sleep_until(last_activity + idle), if !waiting => {
                    return Err(End::Goodbye(ErrorCode::TIMEOUT, "idle".into()));
                }
            }
        }
    }

    fn apply(&mut self, cmd: Cmd) -> Result<(), End> {
        match cmd {
            Cmd::Request(piece) if piece >= self.count => Err(End::Goodbye(
                ErrorCode::PROTOCOL,
                format!("piece {piece} out of range"),
            )),
            Cmd::Request(piece) => {
                if self.queue.len() >= self.conn.config.limits.max_requests_per_stream {
                    self.push(&Frame::Busy { piece });
                } else {
                    self.queue.push_back(piece);
                }
                Ok(())
            }
            Cmd::Cancel(piece) => {
                self.queue.retain(|&p| p != piece);
                Ok(())
            }
            Cmd::Fatal(code, message) => Err(End::Goodbye(code, message)),
        }
    }

    /// Queues a Have for every piece gained whole and an Arriving for every piece offered
    /// while arriving, since the last report.
    fn queue_haves(&mut self) {
        if !self.have_dirty
            && !self.have.has_changed().unwrap_or(false)
            && !self.offer.has_changed().unwrap_or(false)
        {
            return;
        }
        self.have_dirty = false;
        let mut new = self.have.borrow_and_update().clone();
        let mut offered = self.offer.borrow_and_update().clone();
        if new.len() != self.sent.len() || offered.len() != self.sent.len() {
            return;
        }
        // Lengths are equal, so these set operations cannot fail.
        let _ = new.union_with(&self.sent);
        let mut gained = new.clone();
        let _ = gained.difference_with(&self.sent);
        for piece in gained.iter_ones() {
            self.push(&Frame::Have { piece });
        }
        let _ = offered.union_with(&new);
        let mut arriving = offered.clone();
        let _ = arriving.difference_with(&self.told);
        let _ = arriving.difference_with(&new);
        for piece in arriving.iter_ones() {
            self.withdrawn.clear(piece);
            self.push(&Frame::Arriving { piece });
        }
        // Told as arriving, neither offered nor held now: that copy was lost.
        let mut lost = self.told.clone();
        let _ = lost.difference_with(&offered);
        for piece in lost.iter_ones() {
            self.withdrawn.set(piece);
            self.push(&Frame::Withdrawn { piece });
        }
        // Whole pieces are never reported lost: one evicted later is answered Missing.
        self.sent = new;
        self.told = offered;
    }

    fn push(&mut self, frame: &Frame) {
        // Only fixed-size frames go through here; they always encode.
        let _ = wire::encode(frame, &mut self.out);
    }

    /// Takes the front request `piece` as far as it goes: answered, sent, or waiting for a
    /// send slot of the blob.
    async fn step(&mut self, piece: u32, rx: &mut mpsc::Receiver<Cmd>) -> Result<Step, End> {
        if !self.have.borrow().get(piece) && !self.offer.borrow().get(piece) {
            self.queue.pop_front();
            if self.withdrawn.get(piece) {
                self.push(&Frame::PieceBusy { piece });
            } else {
                self.push(&Frame::Missing { piece });
            }
            return Ok(Step::Done);
        }
        if self.slot.is_none() {
            if let Some(ticket) = self.ticket.take() {
                match ticket.try_into_slot() {
                    Ok(slot) => self.slot = Some(slot),
                    Err(mut ticket) => {
                        ticket.set_piece(piece);
                        self.ticket = Some(ticket);
                        return Ok(Step::Wait);
                    }
                }
            } else {
                let max = self.conn.config.limits.max_concurrent_sends;
                let in_use = max.saturating_sub(self.conn.sends.available_permits());
                match self.stream_slots.acquire(piece, in_use, max) {
                    Acquire::Go(slot) => self.slot = Some(slot),
                    Acquire::Busy => {
                        self.queue.pop_front();
                        self.push(&Frame::Busy { piece });
                        return Ok(Step::Done);
                    }
                    Acquire::Wait(ticket) => {
                        self.ticket = Some(ticket);
                        return Ok(Step::Wait);
                    }
                }
            }
        }
        self.queue.pop_front();
        if self.send_piece(piece, rx).await? {
            // Those waiting compete with our next request for the slot.
            if let (Some(slot), Some(&next)) = (self.slot.take(), self.queue.front()) {
                match slot.pass_or_keep(next) {
                    Ok(slot) => self.slot = Some(slot),
                    Err(ticket) => self.ticket = Some(ticket),
                }
            }
        }
        Ok(Step::Done)
    }

    /// Sends `piece` (held, under a send slot of the blob), or answers Busy, PieceBusy or
    /// Missing (queued in `out`); true if it was sent whole (false also when a Cancel cut it
    /// short: [`Writer::cancelled`]).
    async fn send_piece(&mut self, piece: u32, rx: &mut mpsc::Receiver<Cmd>) -> Result<bool, End> {
        let Ok(_permit) = self.conn.sends.clone().try_acquire_owned() else {
            self.push(&Frame::Busy { piece });
            return Ok(false);
        };
        // A piece already going to enough downloaders waits for one of them to pass it on
        // (`spread.rs` in the protocol crate's scheduler says why).
        let key = (self.digest.clone(), piece);
        let Some(_copy) = self
            .conn
            .copies
            .try_take(&key, self.conn.config.limits.max_copies_per_piece)
        else {
            self.push(&Frame::PieceBusy { piece });
            return Ok(false);
        };
        if !self.have.borrow().get(piece) {
            // Offered while arriving: pass it on as it comes, or, if that copy is gone, ask the
            // downloader to come back (it will be held again once this host's download gets it).
            return match self.conn.source.arriving(&self.digest, piece) {
                Some(arriving) => self.send_arriving(piece, arriving, rx).await,
                None => {
                    self.push(&Frame::PieceBusy { piece });
                    Ok(false)
                }
            };
        }
        let file = match self.conn.source.piece_file(&self.digest, piece).await {
            Ok(f) if Some(f.len) == self.table.table.piece_len(piece) => f,
            Ok(f) => {
                tracing::warn!(
                    digest = self.digest.short(),
                    piece,
                    len = f.len,
                    "piece source gave a piece of the wrong length"
                );
                self.push(&Frame::Missing { piece });
                return Ok(false);
            }
            Err(e) => {
                tracing::debug!(digest = self.digest.short(), piece, "cannot serve: {e}");
                self.push(&Frame::Missing { piece });
                return Ok(false);
            }
        };
        let len = file.len as usize;
        let (buf, mut spare) = self.bufs.take().unwrap_or_else(|| {
            (
                AlignedBuf::with_capacity(SEND_CHUNK),
                AlignedBuf::with_capacity(SEND_CHUNK),
            )
        });
        // The first chunk is read before the header goes out, so a piece that cannot be read
        // is still answered Missing rather than breaking the stream.
        let first = len.min(SEND_CHUNK);
        let (mut cur, read) = join_read(start_read(file.clone(), 0, first, buf)).await;
        if let Err(e) = read {
            tracing::warn!(
                digest = self.digest.short(),
                piece,
                "cannot read piece: {e}"
            );
            self.push(&Frame::Missing { piece });
            self.bufs = Some((cur, spare));
            return Ok(false);
        }
        self.push(&Frame::Piece {
            index: piece,
            len: file.len,
        });
        let out = std::mem::take(&mut self.out);
        self.write(&out).await?;
        self.out = out;
        self.out.clear();
        let mut at = 0;
        let mut cur_len = first;
        let mut cut = false;
        loop {
            self.pace(cur_len).await;
            if self.cancelled(piece, rx)? {
                cut = true;
                break;
            }
            let next_at = at + cur_len;
            let ahead = (next_at < len).then(|| {
                let n = (len - next_at).min(SEND_CHUNK);
                let buf = std::mem::take(&mut spare);
                (n, start_read(file.clone(), next_at, n, buf))
            });
            self.write(&part_header(cur_len)).await?;
            self.write(&cur.as_slice()[..cur_len]).await?;
            at = next_at;
            let Some((n, handle)) = ahead else { break };
            let (next, read) = join_read(handle).await;
            read.map_err(|e| End::Broken(format!("piece {piece} read failed: {e}")))?;
            spare = std::mem::replace(&mut cur, next);
            cur_len = n;
        }
        if cut {
            self.write(&part_header(wire::PART_ABANDONED as usize))
                .await?;
        }
        self.flush().await?;
        self.bufs = Some((cur, spare));
        // `at` <= the piece's length, a u32.
        self.conn.source.served(&self.digest, at as u64);
        Ok(!cut)
    }

    /// Sends `piece` while it arrives here: each part as soon as the copy has verified and
    /// written it. True if all of it went out; false if the copy was lost and the rest was
    /// abandoned (nothing is queued for the downloader then: the zero-length part told it).
    async fn send_arriving(
        &mut self,
        piece: u32,
        arriving: Arriving,
        rx: &mut mpsc::Receiver<Cmd>,
    ) -> Result<bool, End> {
        let Arriving {
            file,
            mut progress,
            valid,
        } = arriving;
        if Some(file.len) != self.table.table.piece_len(piece) {
            self.push(&Frame::Missing { piece });
            return Ok(false);
        }
        let len = file.len;
        self.push(&Frame::Piece { index: piece, len });
        let out = std::mem::take(&mut self.out);
        self.write(&out).await?;
        self.out = out;
        self.out.clear();
        let (mut buf, spare) = self.bufs.take().unwrap_or_else(|| {
            (
                AlignedBuf::with_capacity(SEND_CHUNK),
                AlignedBuf::with_capacity(SEND_CHUNK),
            )
        });
        let mut sent = 0u32;
        let mut whole = false;
        let mut abandoned = false;
        // The copy is given up once it has made no progress for the write-stall limit
        // (commands from the downloader meanwhile do not count).
        let mut moved_at = Instant::now();
        while sent < len {
            let ready = if whole {
                len
            } else {
                (*progress.borrow_and_update()).min(len)
            };
            if self.cancelled(piece, rx)? {
                abandoned = true;
                break;
            }
            if ready > sent {
                let n = ((ready - sent) as usize).min(SEND_CHUNK);
                let (b, read) = join_read(start_read(file.clone(), sent as usize, n, buf)).await;
                buf = b;
                // Read first, then check: a copy lost during the read may have let another
                // writer start the piece over under it.
                if read.is_err() || !valid() {
                    abandoned = true;
                    break;
                }
                self.pace(n).await;
                self.write(&part_header(n)).await?;
                self.write(&buf.as_slice()[..n]).await?;
                // n <= SEND_CHUNK.
                sent += n as u32;
                moved_at = Instant::now();
                continue;
            }
            self.flush().await?;
            let changed = timeout_at(moved_at + self.conn.config.write_stall, progress.changed());
            let cmd = async {
                if rx.is_closed() && rx.is_empty() {
                    std::future::pending().await
                } else {
                    rx.recv().await
                }
            };
            let next = tokio::select! {
                next = changed => next,
                cmd = cmd => {
                    // A command while the copy stalls: a cancel of this piece ends the wait.
                    if let Some(cmd) = cmd {
                        self.apply_during(piece, cmd, &mut abandoned)?;
                    }
                    if abandoned {
                        break;
                    }
                    continue;
                }
            };
            match next {
                Ok(Ok(())) => moved_at = Instant::now(),
                // The copy ended: whole (its bytes are all on disk) or lost.
                Ok(Err(_)) if valid() && self.have.borrow().get(piece) => whole = true,
                Ok(Err(_)) | Err(_) => {
                    abandoned = true;
                    break;
                }
            }
        }
        if abandoned {
            self.write(&part_header(wire::PART_ABANDONED as usize))
                .await?;
        }
        self.flush().await?;
        self.bufs = Some((buf, spare));
        self.conn.source.served(&self.digest, u64::from(sent));
        self.conn
            .source
            .served_arriving(&self.digest, u64::from(sent));
        Ok(!abandoned)
    }

    /// Takes the commands the reader has parsed while `piece` is being sent: true if one of
    /// them cancels it (the rest of it is then abandoned: a downloader that got the piece
    /// elsewhere should not take it twice). Requests and other cancels apply as between pieces.
    fn cancelled(&mut self, piece: u32, rx: &mut mpsc::Receiver<Cmd>) -> Result<bool, End> {
        let mut cut = false;
        while let Ok(cmd) = rx.try_recv() {
            self.apply_during(piece, cmd, &mut cut)?;
        }
        Ok(cut)
    }

    /// [`Writer::apply`] while `piece` is being sent, setting `cut` for a cancel of it. A
    /// downloader that broke the rules meanwhile loses the stream without an Error frame: one
    /// written between two parts would be read as payload.
    fn apply_during(&mut self, piece: u32, cmd: Cmd, cut: &mut bool) -> Result<(), End> {
        match cmd {
            Cmd::Cancel(p) if p == piece => {
                *cut = true;
                Ok(())
            }
            other => self.apply(other).map_err(|end| match end {
                End::Goodbye(code, message) => {
                    End::Broken(format!("{code}: {message}, while sending piece {piece}"))
                }
                broken => broken,
            }),
        }
    }

    /// Waits for the upload cap to let `bytes` of payload out (not a stall: the stream is
    /// not asked to take anything meanwhile).
    async fn pace(&self, bytes: usize) {
        if let Some(pace) = &self.conn.pace {
            pace.take(bytes).await;
        }
    }

    /// Writes `bytes`, giving the stream up once it has taken no byte for the stall limit
    /// ([`Writer::check_stall`]). Progress counts per write call, so a slow reader that keeps
    /// reading is never cut off; the clock is looked at once per stall step, not per call.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), End> {
        let step = self.stall_step();
        let mut at = 0;
        let mut since = Instant::now();
        loop {
            let before = at;
            match timeout(step, write_from(&mut self.io, bytes, &mut at)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(End::Broken(e.to_string())),
                Err(_) if at > before => since = Instant::now(),
                Err(_) => self.check_stall(since, "write")?,
            }
        }
    }

    async fn flush(&mut self) -> Result<(), End> {
        let step = self.stall_step();
        let since = Instant::now();
        loop {
            match timeout(step, self.io.flush()).await {
                Ok(r) => return r.map_err(|e| End::Broken(e.to_string())),
                Err(_) => self.check_stall(since, "flush")?,
            }
        }
    }

    /// How often a blocked write looks again at whether it is stalled.
    fn stall_step(&self) -> Duration {
        let c = &self.conn.config;
        (c.contended_stall.min(c.write_stall) / 4).max(Duration::from_millis(1))
    }

    /// An error once nothing has been taken since `since` for [`ServerConfig::write_stall`], or
    /// for [`ServerConfig::contended_stall`] while this stream sends under a slot another
    /// request wants: one of its blob's requests waits, or the host's sends are all taken.
    fn check_stall(&self, since: Instant, what: &str) -> Result<(), End> {
        let c = &self.conn.config;
        let stalled = since.elapsed();
        let wanted = self
            .slot
            .as_ref()
            .is_some_and(|slot| slot.contended() || self.conn.sends.available_permits() == 0);
        if stalled >= c.write_stall || (wanted && stalled >= c.contended_stall) {
            let why = if wanted {
                " (its send slot is wanted)"
            } else {
                ""
            };
            return Err(End::Broken(format!("{what} stalled for {stalled:?}{why}")));
        }
        Ok(())
    }
}

/// Writes `bytes[*at..]`, advancing `at` as the stream takes them (so a caller that drops this
/// future knows how far it got: a write call dropped before it is ready has taken nothing).
async fn write_from<W: AsyncWrite + Unpin>(
    io: &mut W,
    bytes: &[u8],
    at: &mut usize,
) -> std::io::Result<()> {
    while *at < bytes.len() {
        match io.write(&bytes[*at..]).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => *at += n,
        }
    }
    Ok(())
}

/// The length that starts a payload part of `n` bytes (at most a chunk).
fn part_header(n: usize) -> [u8; wire::PART_HEADER] {
    // Parts are at most SEND_CHUNK bytes.
    (n as u32).to_be_bytes()
}

/// Resolves when the stream's ticket (if any) is granted a slot.
async fn granted(ticket: &mut Option<Ticket>) {
    match ticket {
        Some(t) => t.granted().await,
        None => std::future::pending().await,
    }
}

/// Starts reading `n` bytes at `at` within the piece into `buf` (direct where the store allows
/// it: no page-cache copy) on the blocking pool; the read proceeds whether or not the handle is
/// awaited yet.
fn start_read(file: PieceFile, at: usize, n: usize, mut buf: AlignedBuf) -> ReadHandle {
    tokio::task::spawn_blocking(move || {
        if buf.capacity() < n {
            buf = AlignedBuf::with_capacity(n);
        }
        let r = direct_io::read_at(
            &file.file,
            file.direct.as_deref(),
            &mut buf,
            n,
            file.offset + at as u64,
        );
        (buf, r)
    })
}

type ReadHandle = tokio::task::JoinHandle<(AlignedBuf, std::io::Result<()>)>;

/// The buffer and outcome of a read (a fresh empty buffer if the read task died).
async fn join_read(handle: ReadHandle) -> (AlignedBuf, std::io::Result<()>) {
    match handle.await {
        Ok(result) => result,
        Err(e) => (AlignedBuf::new(), Err(std::io::Error::other(e))),
    }
}
