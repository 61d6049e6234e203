//! The uploader side: accepts piece-transfer streams and serves pieces from a [`PieceSource`].
//!
//! Each stream runs in its own task as two halves: a reader that parses the downloader's
//! frames into commands on a bounded channel, and a writer that owns the request queue and the
//! stream's write half. The writer takes commands between pieces and between the parts of a
//! piece: a Cancel skips a queued request, or cuts the piece being sent short (the abandoning
//! zero-length part; its length is already on the wire).
//!
//! Pieces go out as a header, then the payload in parts read from the source's file with
//! positioned reads on the blocking pool (direct, bypassing the page cache, where the store
//! opened the file so: [`crate::direct_io`]), one chunk read ahead of the chunk being written,
//! through two buffers kept for as long as the stream has work. The stream is flushed at piece
//! ends and when the writer runs out of work.
//!
//! A piece still arriving here (offered once its first block verified: an Arriving frame) is
//! sent as its blocks verify, each part read back from the file after the copy wrote it; if
//! that copy is lost, the rest of the piece is abandoned (a zero-length part) and the offer
//! withdrawn (a Withdrawn frame); a request that crossed the Withdrawn is answered PieceBusy.

use std::collections::{HashMap, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use flotilla_protocol::wire::{ErrorCode, Frame, WireError};
use futures::future::Either;
use futures::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use futures::{AsyncReadExt, StreamExt};
use libp2p::PeerId;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::timeout;

use super::io::{FrameReader, send_frames};
use super::pace::Pace;
use super::slots::{Slots, StreamSlots};
use super::{
    CONTENDED_STALL_TIMEOUT, HELLO_TIMEOUT, IDLE_TIMEOUT, ServerLimits, TransferError,
    WRITE_STALL_TIMEOUT,
};
use crate::ports::{Held, PeerStream, PieceSource};

mod writer;
use writer::Writer;

/// Streams being refused at once; beyond that, extra streams are dropped without a word.
const MAX_REFUSALS: usize = 64;
/// How long a refusal or a final Error frame may take to go out.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// Server settings: the public limits, the site label told in every Welcome, and the timeouts
/// (shortened by tests).
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub(crate) limits: ServerLimits,
    pub(crate) site: Option<Arc<str>>,
    pub(crate) hello_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// No byte taken for this long: the stream is given up ([`WRITE_STALL_TIMEOUT`]).
    pub(crate) write_stall: Duration,
    /// The same while its send slot is wanted ([`CONTENDED_STALL_TIMEOUT`]).
    pub(crate) contended_stall: Duration,
    /// The upload cap, if any (see [`run_server_sharing`]).
    pub(crate) pace: Option<Arc<Pace>>,
}

/// Serves every stream of `incoming` until it ends, then waits for the streams being served.
///
/// One task per stream, at most [`ServerLimits::max_streams`] at once; a stream beyond that
/// gets an Error frame (code overloaded) and is closed. Dropping the returned future stops
/// every stream task. `site` is this host's site label (checked by the caller), told to every
/// downloader in its Welcome.
pub async fn run_server(
    incoming: impl futures::Stream<Item = (PeerId, PeerStream)> + Send + Unpin + 'static,
    source: Arc<dyn PieceSource>,
    limits: ServerLimits,
    site: Option<String>,
) {
    let pace = limits
        .upload_bytes_per_s
        .map(|rate| Arc::new(Pace::new(rate)));
    run_server_sharing(incoming, source, limits, site, pace).await;
}

/// [`run_server`] with its payload bytes paced by `pace` (shared with whatever else the caller
/// uploads) instead of a cap of its own; [`ServerLimits::upload_bytes_per_s`] is not read.
pub async fn run_server_sharing(
    incoming: impl futures::Stream<Item = (PeerId, PeerStream)> + Send + Unpin + 'static,
    source: Arc<dyn PieceSource>,
    limits: ServerLimits,
    site: Option<String>,
    pace: Option<Arc<Pace>>,
) {
    run_server_with(
        incoming,
        source,
        ServerConfig {
            limits,
            site: site.map(Arc::from),
            hello_timeout: HELLO_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            write_stall: WRITE_STALL_TIMEOUT,
            contended_stall: CONTENDED_STALL_TIMEOUT,
            pace,
        },
    )
    .await;
}

pub(crate) async fn run_server_with(
    incoming: impl futures::Stream<Item = (PeerId, PeerStream)> + Send + Unpin + 'static,
    source: Arc<dyn PieceSource>,
    config: ServerConfig,
) {
    let per_blob = Slots::new(
        config.limits.max_sends_per_blob,
        config.limits.max_waiting_per_blob,
    );
    serve_with_slots(incoming, source, config, per_blob).await;
}

/// [`run_server_with`] keeping its per-blob table in `per_blob` (which tests watch).
pub(super) async fn serve_with_slots(
    mut incoming: impl futures::Stream<Item = (PeerId, PeerStream)> + Send + Unpin + 'static,
    source: Arc<dyn PieceSource>,
    config: ServerConfig,
    per_blob: Arc<Slots>,
) {
    let streams = Arc::new(Semaphore::new(config.limits.max_streams));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS));
    let sends = Arc::new(Semaphore::new(config.limits.max_concurrent_sends));
    let copies = Arc::new(Counts::default());
    let pace = config.pace.clone();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, stream)) = next else { break };
                if let Ok(permit) = streams.clone().try_acquire_owned() {
                    let conn = Conn {
                        peer,
                        source: source.clone(),
                        sends: sends.clone(),
                        per_blob: per_blob.clone(),
                        copies: copies.clone(),
                        pace: pace.clone(),
                        config: config.clone(),
                    };
                    tasks.spawn(async move {
                        conn.serve(stream).await;
                        drop(permit);
                    });
                } else if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    tracing::debug!(%peer, "piece stream refused: too many streams");
                    tasks.spawn(async move {
                        let mut stream = stream;
                        let bye = goodbye(&mut stream, ErrorCode::OVERLOADED, "too many streams");
                        let _ = timeout(GOODBYE_TIMEOUT, bye).await;
                        drop(permit);
                    });
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Sends an Error frame and closes the write side.
async fn goodbye<W: AsyncWrite + Unpin>(io: &mut W, code: ErrorCode, message: &str) {
    let frame = Frame::Error {
        code,
        message: message.to_owned(),
    };
    if send_frames(io, &mut Vec::new(), &[frame]).await.is_ok() {
        let _ = io.close().await;
    }
}

/// What one stream's task shares with the server.
struct Conn {
    peer: PeerId,
    source: Arc<dyn PieceSource>,
    sends: Arc<Semaphore>,
    /// Streams served and pieces being sent per blob.
    per_blob: Arc<Slots>,
    /// Copies of each piece being sent at once, over all streams.
    copies: Arc<Counts<(Digest, u32)>>,
    /// The upload cap, if any, shared by every stream.
    pace: Option<Arc<Pace>>,
    config: ServerConfig,
}

/// How many of something are in use per key (entries only while non-zero, so the map is
/// bounded by the slots held): copies of a piece being sent at once.
struct Counts<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Counts(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + std::hash::Hash + Clone> Counts<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for one more of `key`, if fewer than `max` are in use.
    fn try_take(self: &Arc<Self>, key: &K, max: usize) -> Option<Slot<K>> {
        let mut m = self.lock();
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            key: key.clone(),
        })
    }
}

/// One place among its key's; dropping it frees the place.
struct Slot<K: Eq + std::hash::Hash + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Eq + std::hash::Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut m = self.counts.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// From the reader half to the writer half.
enum Cmd {
    Request(u32),
    Cancel(u32),
    /// The downloader broke the protocol: tell it and close.
    Fatal(ErrorCode, String),
}

impl Conn {
    async fn serve(self, stream: PeerStream) {
        let peer = self.peer;
        let (read, mut write) = stream.split();
        let mut reader = FrameReader::new(read);
        let Some((digest, held, sent, stream_slots)) = self.welcome(&mut reader, &mut write).await
        else {
            return;
        };
        tracing::debug!(%peer, digest = digest.short(), "serving pieces");
        let (tx, rx) = mpsc::channel(self.config.limits.max_requests_per_stream + 16);
        let writer = Writer {
            io: write,
            out: Vec::new(),
            queue: VecDeque::new(),
            count: held.table.table.piece_count(),
            withdrawn: Bitfield::new(sent.len()),
            told: sent.clone(),
            sent,
            have: held.have,
            offer: held.offer,
            watching: true,
            watching_offer: true,
            have_dirty: false,
            table: held.table,
            digest,
            bufs: None,
            stream_slots,
            slot: None,
            ticket: None,
            conn: &self,
        };
        let read_side = pin!(read_commands(reader, tx));
        let write_side = pin!(writer.run(rx));
        match futures::future::select(read_side, write_side).await {
            // The downloader stopped sending: finish what it asked for, then close.
            Either::Left(((), write_side)) => write_side.await,
            Either::Right(((), _)) => {}
        }
        tracing::debug!(%peer, "piece stream done");
    }

    /// Reads the Hello and answers it; `None` when the conversation is already over.
    async fn welcome<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        write: &mut W,
    ) -> Option<(Digest, Held, Bitfield, StreamSlots)> {
        let hello = match timeout(self.config.hello_timeout, reader.next_frame()).await {
            Err(_) => {
                self.bye(write, ErrorCode::TIMEOUT, "no Hello in time")
                    .await;
                return None;
            }
            Ok(Ok(Some(hello))) => hello,
            Ok(Ok(None)) => return None,
            Ok(Err(TransferError::Wire(WireError::UnsupportedVersion(v)))) => {
                let msg = format!("unsupported version {v}");
                self.bye(write, ErrorCode::VERSION, &msg).await;
                return None;
            }
            Ok(Err(e)) => {
                self.bye(write, ErrorCode::PROTOCOL, &e.to_string()).await;
                return None;
            }
        };
        let Frame::Hello { digest, want_table } = hello else {
            let msg = format!("expected Hello, got {}", hello.name());
            self.bye(write, ErrorCode::PROTOCOL, &msg).await;
            return None;
        };
        let Some(slot) = self
            .per_blob
            .open(&digest, self.config.limits.max_streams_per_blob)
        else {
            self.bye(
                write,
                ErrorCode::OVERLOADED,
                "too many streams for this blob",
            )
            .await;
            return None;
        };
        let held = match self.source.held(&digest).await {
            Ok(Some(held)) if held.table.table.digest == digest => held,
            Ok(_) => {
                let _ = send_frames(write, &mut Vec::new(), &[Frame::NotHeld]).await;
                let _ = timeout(GOODBYE_TIMEOUT, write.close()).await;
                return None;
            }
            Err(e) => {
                tracing::warn!(digest = digest.short(), "piece source failed: {e}");
                self.bye(write, ErrorCode::INTERNAL, "cannot read the blob")
                    .await;
                return None;
            }
        };
        let mut held = held;
        slot.set_rank(held.rank.clone());
        // Marks the current value seen: Have frames report only later changes. Pieces offered
        // while arriving are told in Arriving frames right after the Welcome.
        let have = held.have.borrow_and_update().clone();
        held.offer.mark_changed();
        let table = if want_table {
            match SignedPieceTable::encode(&held.table) {
                Ok(bytes) => Some(bytes),
                Err(e) => {
                    tracing::warn!(digest = digest.short(), "cannot encode table: {e}");
                    self.bye(write, ErrorCode::INTERNAL, "bad piece table")
                        .await;
                    return None;
                }
            }
        } else {
            None
        };
        let welcome = Frame::Welcome {
            size: held.table.table.size,
            piece_size: held.table.table.piece_size,
            table,
            have: have.clone(),
            site: self.config.site.as_deref().map(str::to_owned),
        };
        if let Err(e) = send_frames(write, &mut Vec::new(), &[welcome]).await {
            tracing::debug!(peer = %self.peer, "cannot send Welcome: {e}");
            if matches!(e, TransferError::Wire(_)) {
                self.bye(write, ErrorCode::INTERNAL, "bad piece table")
                    .await;
            }
            return None;
        }
        Some((digest, held, have, slot))
    }

    async fn bye<W: AsyncWrite + Unpin>(&self, write: &mut W, code: ErrorCode, message: &str) {
        tracing::debug!(peer = %self.peer, "closing piece stream: {code}: {message}");
        let _ = timeout(GOODBYE_TIMEOUT, goodbye(write, code, message)).await;
    }
}

/// Turns the downloader's frames into commands until its side ends or breaks the protocol.
async fn read_commands<R: AsyncRead + Unpin>(mut reader: FrameReader<R>, tx: mpsc::Sender<Cmd>) {
    loop {
        let cmd = match reader.next_frame().await {
            Ok(Some(Frame::Request { piece })) => Cmd::Request(piece),
            Ok(Some(Frame::Cancel { piece })) => Cmd::Cancel(piece),
            Ok(Some(other)) => Cmd::Fatal(
                ErrorCode::PROTOCOL,
                format!("unexpected {} frame", other.name()),
            ),
            Ok(None) | Err(TransferError::Io(_)) => return,
            Err(e) => Cmd::Fatal(ErrorCode::PROTOCOL, e.to_string()),
        };
        let fatal = matches!(cmd, Cmd::Fatal(..));
        if tx.send(cmd).await.is_err() || fatal {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hold_at_most_max_per_key_and_free_on_drop() {
        let counts: Arc<Counts<(char, u32)>> = Arc::new(Counts::default());
        let a = counts.try_take(&('a', 1), 2);
        let b = counts.try_take(&('a', 1), 2);
        assert!(a.is_some() && b.is_some());
        assert!(counts.try_take(&('a', 1), 2).is_none(), "a third copy");
        // Another piece has its own places.
        let other = counts.try_take(&('a', 2), 2);
        assert!(other.is_some());
        drop(a);
        let c = counts.try_take(&('a', 1), 2);
        assert!(c.is_some(), "a freed place is taken again");
        drop((b, c, other));
        assert!(counts.lock().is_empty(), "no entry outlives its slots");
        assert!(counts.try_take(&('z', 0), 0).is_none());
        assert!(counts.lock().is_empty(), "a refused key leaves no entry");
    }
}
