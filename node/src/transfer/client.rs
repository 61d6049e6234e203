//! The downloader side: [`fetch_table`] (a table-only exchange) and [`Session`], one pipelined
//! conversation with one uploader about one blob.
//!
//! A session runs one task with two halves: a writer that sends the requests and cancels the
//! caller queued (coalescing a cancel with a request still unsent), and a reader that parses
//! the uploader's frames, streams each piece's payload in chunks into the
//! [`PieceSink`]'s receiver and reports events. The caller's side ([`Session::request`],
//! [`Session::cancel`]) never blocks: it edits shared state under a short lock and wakes the
//! writer.

use std::collections::{HashSet, VecDeque};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use flotilla_protocol::wire::{self, Frame};
use futures::future::Either;
use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::PeerId;
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;

use super::io::{FrameReader, send_frames};
use super::{MAX_OUTSTANDING, SessionEvent, SessionEventKind, TransferError, WELCOME_TIMEOUT};
use crate::ports::{PeerStream, PieceReceiver, PieceSink};

/// Largest chunk handed to the sink at once.
const RECEIVE_CHUNK: usize = 256 << 10;
/// How long closing a table-only stream may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks `stream`'s uploader for the signed piece table of `digest`, then closes the stream.
///
/// Only checks that the table decodes and describes `digest` with the geometry the uploader
/// announced; the caller verifies the signature.
///
/// # Errors
/// [`TransferError::NotHeld`], [`TransferError::Remote`] (the uploader's Error frame),
/// [`TransferError::Timeout`] after [`WELCOME_TIMEOUT`](super::WELCOME_TIMEOUT), or a stream,
/// wire or table error.
pub async fn fetch_table(
    stream: PeerStream,
    digest: &Digest,
) -> Result<SignedPieceTable, TransferError> {
    let (read, mut write) = stream.split();
    let mut reader = FrameReader::new(read);
    let hello = Frame::Hello {
        digest: digest.clone(),
        want_table: true,
    };
    let answer = timeout(
        WELCOME_TIMEOUT,
        hello_exchange(&mut reader, &mut write, hello),
    )
    .await
    .map_err(|_| TransferError::Timeout)??;
    // Table-only: closing our side tells the uploader we are done.
    let _ = timeout(CLOSE_TIMEOUT, write.close()).await;
    let Welcome {
        size,
        piece_size,
        table,
        ..
    } = answer;
    let bytes = table.ok_or_else(|| TransferError::Protocol("Welcome without the table".into()))?;
    let signed = SignedPieceTable::decode(&bytes)?;
    let t = &signed.table;
    if t.digest != *digest || t.size != size || t.piece_size != piece_size {
        return Err(TransferError::Protocol(
            "the table describes another blob".into(),
        ));
    }
    Ok(signed)
}

/// What the uploader holds when a session opens.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Its pieces at the Welcome; later gains come as [`SessionEventKind::Have`].
    pub have: Bitfield,
    /// Its site label, if it told one.
    pub site: Option<String>,
}

/// A decoded Welcome.
struct Welcome {
    size: u64,
    piece_size: u32,
    table: Option<Vec<u8>>,
    have: Bitfield,
    site: Option<String>,
}

/// Sends `hello` and reads the answer. If the write fails, the uploader may have refused the
/// stream with an Error frame already: that frame is the better explanation.
async fn hello_exchange<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<R>,
    write: &mut W,
    hello: Frame,
) -> Result<Welcome, TransferError> {
    let sent = send_frames(write, &mut Vec::new(), &[hello]).await;
    let answer = reader.next_frame().await;
    match (answer, sent) {
        (
            Ok(Some(Frame::Welcome {
                size,
                piece_size,
                table,
                have,
                site,
            })),
            Ok(()),
        ) => Ok(Welcome {
            size,
            piece_size,
            table,
            have,
            site,
        }),
        (Ok(Some(Frame::NotHeld)), _) => Err(TransferError::NotHeld),
        (Ok(Some(Frame::Error { code, message })), _) => {
            Err(TransferError::Remote { code, message })
        }
        (_, Err(e)) => Err(e),
        (Ok(Some(other)), _) => Err(TransferError::Protocol(format!(
            "expected Welcome, got {}",
            other.name()
        ))),
        (Ok(None), _) => Err(TransferError::Closed),
        (Err(e), _) => Err(e),
    }
}

/// A request or cancel waiting to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Request(u32),
    Cancel(u32),
    /// A cancel of the piece whose answer is arriving: the uploader cuts it short (or has
    /// finished it already); no further answer is due for it.
    CutShort(u32),
}

/// What the caller's handle and the session task share.
struct Shared {
    state: Mutex<State>,
    wake: Notify,
    /// Answers and payload chunks received so far: how a downloader tells an uploader that is
    /// slowly sending from one that accepted requests and went silent.
    progress: std::sync::atomic::AtomicU64,
    /// Payload bytes received so far (whole pieces and parts of the one in flight).
    payload: std::sync::atomic::AtomicU64,
}

struct State {
    /// Pieces requested and not yet answered or cancelled (sent or still in `pending`).
    requested: HashSet<u32>,
    /// Ops not written yet, at most one per piece.
    pending: VecDeque<Op>,
    /// Cancels written whose request may still be answered: how many unrequested answers
    /// the uploader may legitimately send.
    stale_answers: u64,
    /// The piece whose answer is being read, and whether it was cancelled meanwhile.
    receiving: Option<(u32, bool)>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pipelined conversation with one uploader about one blob. Dropping it closes the stream and
/// stops its task; the events channel then gets nothing more (not even `Closed`).
pub struct Session {
    peer: PeerId,
    count: u32,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("pieces", &self.count)
            .finish_non_exhaustive()
    }
}

/// The blob's shape as the uploader announced it.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    size: u64,
    piece_size: u32,
    count: u32,
}

impl Session {
    /// Says Hello for `digest` on `stream` and waits for the Welcome (at most
    /// [`WELCOME_TIMEOUT`](super::WELCOME_TIMEOUT)); then requests can flow, and pieces go to
    /// `sink` (where `digest` must be registered) and events to `events`.
    ///
    /// # Errors
    /// [`TransferError::NotHeld`], [`TransferError::Remote`] (e.g. the uploader is overloaded),
    /// [`TransferError::Timeout`], or a stream or wire error.
    pub async fn open(
        peer: PeerId,
        stream: PeerStream,
        digest: Digest,
        sink: Arc<dyn PieceSink>,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<(Session, Opened), TransferError> {
        let (read, mut write) = stream.split();
        let mut reader = FrameReader::new(read);
        let hello = Frame::Hello {
            digest: digest.clone(),
            want_table: false,
        };
        let welcome = timeout(
            WELCOME_TIMEOUT,
            hello_exchange(&mut reader, &mut write, hello),
        )
        .await
        .map_err(|_| TransferError::Timeout)??;
        if welcome.table.is_some() {
            return Err(TransferError::Protocol("unasked-for table".into()));
        }
        let geometry = Geometry {
            size: welcome.size,
            piece_size: welcome.piece_size,
            count: welcome.have.len(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requested: HashSet::new(),
                pending: VecDeque::new(),
                stale_answers: 0,
                receiving: None,
                closed: false,
            }),
            wake: Notify::new(),
            progress: std::sync::atomic::AtomicU64::new(0),
            payload: std::sync::atomic::AtomicU64::new(0),
        });
        let task = Task {
            peer,
            digest,
            geometry,
            sink,
            events,
            shared: shared.clone(),
        };
        let task = tokio::spawn(task.run(reader, write));
        let session = Session {
            peer,
            count: geometry.count,
            shared,
            task,
        };
        Ok((
            session,
            Opened {
                have: welcome.have,
                site: welcome.site,
            },
        ))
    }

    /// The uploader.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// Number of pieces of the blob.
    pub fn piece_count(&self) -> u32 {
        self.count
    }

    /// A counter that moves whenever the uploader answers a request or sends part of a piece.
    pub fn progress(&self) -> u64 {
        self.shared
            .progress
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Piece payload bytes received so far, counted as they stream in (a far uploader's piece
    /// takes seconds; this shows how it is going).
    pub fn payload_bytes(&self) -> u64 {
        self.shared
            .payload
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the stream has ended (requests would fail).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Queues a request for `piece`; its answer comes as an event. Never blocks.
    ///
    /// # Errors
    /// [`TransferError::Closed`], [`TransferError::OutOfRange`],
    /// [`TransferError::AlreadyRequested`] (answered or cancelled pieces may be requested
    /// again), or [`TransferError::QueueFull`] at [`MAX_OUTSTANDING`].
    pub fn request(&self, piece: u32) -> Result<(), TransferError> {
        let mut state = self.shared.lock();
        if state.closed {
            return Err(TransferError::Closed);
        }
        if piece >= self.count {
            return Err(TransferError::OutOfRange {
                piece,
                count: self.count,
            });
        }
        if state.requested.contains(&piece) {
            return Err(TransferError::AlreadyRequested(piece));
        }
        if let Some(at) = state.pending.iter().position(|&op| op == Op::Cancel(piece)) {
            // The cancel never left: the earlier request still stands at the uploader.
            state.pending.remove(at);
            state.requested.insert(piece);
            return Ok(());
        }
        if state.requested.len() >= MAX_OUTSTANDING {
            return Err(TransferError::QueueFull);
        }
        state.requested.insert(piece);
        state.pending.push_back(Op::Request(piece));
        drop(state);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Cancels the request for `piece`. Returns `true` if it was outstanding: no event will
    /// report it (the uploader may still send it; the session reads and drops it). `false` if
    /// it was not requested, or its answer has already begun to arrive: the uploader is asked
    /// to cut that answer short, and its event comes as usual — `Abandoned` if it was cut,
    /// `Received` if it was whole before the cancel reached the uploader.
    pub fn cancel(&self, piece: u32) -> bool {
        let mut state = self.shared.lock();
        if state.closed {
            return false;
        }
        if !state.requested.remove(&piece) {
            if let Some((p, cut)) = &mut state.receiving
                && *p == piece
                && !*cut
            {
                *cut = true;
                state.pending.push_back(Op::CutShort(piece));
                drop(state);
                self.shared.wake.notify_one();
            }
            return false;
        }
        if let Some(at) = state
            .pending
            .iter()
            .position(|&op| op == Op::Request(piece))
        {
            // Never sent: nothing to cancel on the wire.
            state.pending.remove(at);
            return true;
        }
        state.pending.push_back(Op::Cancel(piece));
        drop(state);
        self.shared.wake.notify_one();
        true
    }
}

/// The session's task.
struct Task {
    peer: PeerId,
    digest: Digest,
    geometry: Geometry,
    sink: Arc<dyn PieceSink>,
    events: mpsc::Sender<SessionEvent>,
    shared: Arc<Shared>,
}

/// Why the reader stopped.
enum Stop {
    /// The stream ended or broke; `None` for a clean end.
    Closed(Option<String>),
    /// Nobody listens to the events any more.
    NoListener,
}

/// How an answer for a piece is to be taken.
enum Answer {
    /// It answers an outstanding request.
    Live,
    /// It answers a cancelled request.
    Stale,
}

impl Task {
    async fn run<R, W>(self, reader: FrameReader<R>, write: W)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let stop = {
            let read_side = pin!(self.read(reader));
            let write_side = pin!(write_ops(&self.shared, write));
            match futures::future::select(read_side, write_side).await {
                Either::Left((stop, _)) => stop,
                Either::Right((e, _)) => Stop::Closed(Some(format!("write failed: {e}"))),
            }
        };
        self.shared.lock().closed = true;
        if let Stop::Closed(reason) = stop {
            if let Some(reason) = &reason {
                tracing::debug!(peer = %self.peer, "piece session closed: {reason}");
            }
            let _ = self.emit(SessionEventKind::Closed(reason)).await;
        }
    }

    async fn emit(&self, kind: SessionEventKind) -> Result<(), Stop> {
        let event = SessionEvent {
            peer: self.peer,
            kind,
        };
        self.events.send(event).await.map_err(|_| Stop::NoListener)
    }

    /// Reads the uploader's frames until the stream ends.
    async fn read<R: AsyncRead + Unpin>(&self, mut reader: FrameReader<R>) -> Stop {
        loop {
            let frame = match reader.next_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => return Stop::Closed(None),
                Err(e) => return Stop::Closed(Some(e.to_string())),
            };
            let step = match frame {
                Frame::Have { piece } => match self.check_index(piece) {
                    Ok(()) => self.emit(SessionEventKind::Have(piece)).await,
                    Err(stop) => Err(stop),
                },
                Frame::Arriving { piece } => match self.check_index(piece) {
                    Ok(()) => self.emit(SessionEventKind::Arriving(piece)).await,
                    Err(stop) => Err(stop),
                },
                Frame::Withdrawn { piece } => match self.check_index(piece) {
                    Ok(()) => self.emit(SessionEventKind::Withdrawn(piece)).await,
                    Err(stop) => Err(stop),
                },
                Frame::Piece { index, len } => {
                    let r = self.piece(&mut reader, index, len).await;
                    let mut state = self.shared.lock();
                    state.receiving = None;
                    // A cut that had not left yet is moot: the answer is over.
                    state.pending.retain(|&op| op != Op::CutShort(index));
                    r
                }
                Frame::Busy { piece } => self.answer(piece, SessionEventKind::Refused(piece)).await,
                Frame::PieceBusy { piece } => {
                    self.answer(piece, SessionEventKind::PieceBusy(piece)).await
                }
                Frame::Missing { piece } => {
                    self.answer(piece, SessionEventKind::Missing(piece)).await
                }
                Frame::Error { code, message } => {
                    return Stop::Closed(Some(format!("peer error {code}: {message}")));
                }
                other => Err(violation(format!("unexpected {} frame", other.name()))),
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    fn moved(&self) {
        self.shared
            .progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn check_index(&self, piece: u32) -> Result<(), Stop> {
        if piece < self.geometry.count {
            Ok(())
        } else {
            Err(violation(format!("piece {piece} out of range")))
        }
    }

    /// Matches an answer for `piece` to a request.
    fn take_answer(&self, piece: u32) -> Result<Answer, Stop> {
        self.check_index(piece)?;
        self.moved();
        let mut state = self.shared.lock();
        if state.requested.remove(&piece) {
            Ok(Answer::Live)
        } else if state.stale_answers > 0 {
            state.stale_answers -= 1;
            Ok(Answer::Stale)
        } else {
            Err(violation(format!("answer for unrequested piece {piece}")))
        }
    }

    /// A Busy, PieceBusy or Missing answer.
    async fn answer(&self, piece: u32, kind: SessionEventKind) -> Result<(), Stop> {
        match self.take_answer(piece)? {
            Answer::Live => self.emit(kind).await,
            Answer::Stale => Ok(()),
        }
    }

    /// A Piece header: streams its payload into the sink (or drops it if cancelled).
    async fn piece<R: AsyncRead + Unpin>(
        &self,
        reader: &mut FrameReader<R>,
        index: u32,
        len: u32,
    ) -> Result<(), Stop> {
        let g = self.geometry;
        if wire::piece_len(g.size, g.piece_size, index) != Some(len) {
            return Err(violation(format!(
                "piece {index} of {len} bytes does not fit the blob"
            )));
        }
        let mut receiver: Option<Box<dyn PieceReceiver>> = match self.take_answer(index)? {
            Answer::Live => {
                // From here a cancel cuts the answer short instead of voiding the request.
                self.shared.lock().receiving = Some((index, false));
                match self.sink.receive(&self.digest, index) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(
                            digest = self.digest.short(),
                            index,
                            "sink refused piece: {e}"
                        );
                        None
                    }
                }
            }
            Answer::Stale => {
                skip(reader, len).await.map_err(|e| broken(index, &e))?;
                return Ok(());
            }
        };
        let mut left = len as usize;
        let mut part = 0;
        while left > 0 {
            if part == 0 {
                part = match next_part(reader, left).await {
                    Ok(Some(n)) => n,
                    Ok(None) => {
                        // The uploader lost the copy it was passing on: no fault of anyone's.
                        drop(receiver);
                        self.moved();
                        let bytes = len - left as u32;
                        return self
                            .emit(SessionEventKind::Abandoned {
                                piece: index,
                                bytes,
                            })
                            .await;
                    }
                    Err(e) => {
                        drop(receiver);
                        self.emit(SessionEventKind::Failed(index)).await?;
                        return Err(match e {
                            PartError::Io(e) => broken(index, &e),
                            PartError::TooLong(n) => {
                                violation(format!("a part of {n} bytes overruns piece {index}"))
                            }
                        });
                    }
                };
            }
            let n = part.min(RECEIVE_CHUNK);
            // Straight into the receiver's batch where it offers room (one copy fewer), else
            // through the reader's buffer and `write`.
            let read = match receiver.as_mut().and_then(|r| r.spare(n)) {
                Some(room) => {
                    let k = room.len();
                    reader.payload_into(room).await.map(|()| (k, None))
                }
                None => reader.payload(n).await.map(|chunk| (n, Some(chunk))),
            };
            let (k, chunk) = match read {
                Ok(got) => got,
                Err(e) => {
                    // The piece broke off: report it before the stream's end.
                    drop(receiver);
                    self.emit(SessionEventKind::Failed(index)).await?;
                    return Err(broken(index, &e));
                }
            };
            left -= k;
            part -= k;
            self.moved();
            self.shared
                .payload
                .fetch_add(k as u64, std::sync::atomic::Ordering::Relaxed);
            if let Some(r) = receiver.as_mut() {
                let stored = match chunk {
                    Some(chunk) => r.write(chunk).await,
                    None => r.commit(k).await,
                };
                if let Err(e) = stored {
                    tracing::warn!(
                        digest = self.digest.short(),
                        index,
                        "sink write failed: {e}"
                    );
                    receiver = None;
                }
            }
        }
        let kind = match receiver {
            Some(r) => match r.finish().await {
                Ok(verdict) => SessionEventKind::Received {
                    piece: index,
                    verdict,
                    bytes: len,
                },
                Err(e) => {
                    tracing::warn!(digest = self.digest.short(), index, "sink failed: {e}");
                    SessionEventKind::Failed(index)
                }
            },
            None => SessionEventKind::Failed(index),
        };
        self.emit(kind).await
    }
}

fn violation(why: String) -> Stop {
    Stop::Closed(Some(format!("protocol violation: {why}")))
}

fn broken(index: u32, e: &std::io::Error) -> Stop {
    Stop::Closed(Some(format!("stream broke inside piece {index}: {e}")))
}

/// Why a payload part could not be read.
enum PartError {
    Io(std::io::Error),
    /// A part longer than what is left of the piece.
    TooLong(usize),
}

/// Reads the next part's length: `Some(n)` with `n` bytes to follow (1..=`left`), `None` when
/// the uploader abandoned the piece.
async fn next_part<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    left: usize,
) -> Result<Option<usize>, PartError> {
    let head = reader
        .payload(wire::PART_HEADER)
        .await
        .map_err(PartError::Io)?;
    let mut b = [0u8; wire::PART_HEADER];
    b.copy_from_slice(head);
    let n = u32::from_be_bytes(b);
    if n == wire::PART_ABANDONED {
        return Ok(None);
    }
    // A u32 fits a usize on every platform this builds for.
    let n = n as usize;
    if n > left {
        return Err(PartError::TooLong(n));
    }
    Ok(Some(n))
}

/// Reads and drops the payload of a `len`-byte piece (its parts, up to an abandonment).
async fn skip<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>, len: u32) -> std::io::Result<()> {
    let mut left = len as usize;
    while left > 0 {
        let mut part = match next_part(reader, left).await {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(()),
            Err(PartError::Io(e)) => return Err(e),
            Err(PartError::TooLong(n)) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a part of {n} bytes overruns the piece"),
                ));
            }
        };
        while part > 0 {
            let n = part.min(RECEIVE_CHUNK);
            reader.payload(n).await?;
            part -= n;
            left -= n;
        }
    }
    Ok(())
}

/// Writes queued ops as they come; returns only when the stream fails.
async fn write_ops<W: AsyncWrite + Unpin>(shared: &Shared, mut write: W) -> TransferError {
    let mut out = Vec::new();
    let mut frames = Vec::new();
    loop {
        {
            let mut state = shared.lock();
            let state = &mut *state;
            for op in state.pending.drain(..) {
                frames.push(match op {
                    Op::Request(piece) => Frame::Request { piece },
                    Op::Cancel(piece) => {
                        // Its request may still be answered.
                        state.stale_answers += 1;
                        Frame::Cancel { piece }
                    }
                    Op::CutShort(piece) => Frame::Cancel { piece },
                });
            }
        }
        if frames.is_empty() {
            shared.wake.notified().await;
            continue;
        }
        if let Err(e) = send_frames(&mut write, &mut out, &frames).await {
            return e;
        }
        frames.clear();
    }
}
