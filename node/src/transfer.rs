//! The piece-transfer protocol (`/flotilla/pieces/2.0.0`) over libp2p streams: the server that
//! serves pieces from a [`PieceSource`](crate::ports::PieceSource), and the client side a download driver uses — a
//! table-only exchange ([`fetch_table`]) and a pipelined per-peer [`Session`].
//!
//! One stream carries one (downloader, uploader, blob) conversation; the frames and their byte
//! layout live in [`flotilla_protocol::wire`]. Piece payloads travel in raw parts after a piece
//! header and are never held whole in memory: the server streams them from disk in chunks with
//! positioned reads, one chunk read ahead of the network write; the client hands them to the
//! [`PieceSink`](crate::ports::PieceSink) in chunks, and the sink verifies each block as it
//! comes and each piece before it becomes visible to readers. A piece still arriving at the
//! server is offered (Arriving) once its first block verified and sent as its blocks verify
//! ([`PieceSource::arriving`](crate::ports::PieceSource::arriving)).
//!
//! # Who does what
//! - [`run_server`] accepts streams (bounded by [`ServerLimits::max_streams`]), answers Hello
//!   with the held bit field, follows it with Arriving and Have frames as the source gains
//!   pieces, and serves
//!   requests in order per stream. Over a limit it answers Busy, which costs the downloader
//!   nothing but a retry elsewhere.
//! - [`Session`] sends requests and cancels without blocking, and reports every answer, Have and
//!   the end of the stream as a [`SessionEvent`] on the caller's bounded channel (a full channel
//!   stops reading the stream: backpressure reaches the uploader).
//!
//! # Request bookkeeping
//! Every request is answered at most once, by Piece (perhaps abandoned part way), Busy,
//! PieceBusy or Missing. A cancelled request may
//! still be answered (its piece was already on the wire); the session reads and drops such
//! answers, and treats answers beyond the number of cancels it sent as a protocol violation.
//! A cancel of a piece whose answer is arriving asks the uploader to cut it short; that answer
//! is still reported (Abandoned, or Received if it was whole first).

mod client;
mod io;
mod pace;
mod server;
mod slots;

use std::time::Duration;

use flotilla_protocol::piece::PieceError;
use flotilla_protocol::wire::{ErrorCode, WireError};
use libp2p::PeerId;

pub use client::{Opened, Session, fetch_table};
pub use pace::Pace;
pub use server::{run_server, run_server_sharing};

/// The libp2p protocol of piece transfer.
pub const PROTOCOL: libp2p::StreamProtocol =
    libp2p::StreamProtocol::new(flotilla_protocol::wire::PROTOCOL_NAME);

/// A Hello must arrive within this long of a stream opening.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The server closes a stream with no request and nothing to send for this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a client waits for the Welcome (or the table) after its Hello.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the server waits for a stream to take a byte before it gives a stalled reader up.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The same while the stream holds a send slot another request needs: one of its blob's
/// requests waits for a slot, or every send of the host is taken. A reader this slow is not
/// worth the uploads it blocks; one that reads at all keeps its slot.
pub const CONTENDED_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests a [`Session`] keeps outstanding at one uploader.
pub const MAX_OUTSTANDING: usize = 256;

/// The server's load limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Streams served at once; more are refused with an Error frame (code overloaded).
    pub max_streams: usize,
    /// Streams served at once for one blob; more are refused the same way once their Hello
    /// names the blob, and the downloader opens a session to another provider. Without it, a
    /// fleet starting together piles onto the few providers its first lookups found: simulated,
    /// 1000 hosts pulling 1 GiB kept 8000 sessions on the 218 hosts that held a piece first
    /// and the other 782 never uploaded (p99 7.1 × the bound; with 12, 3.6 ×).
    pub max_streams_per_blob: usize,
    /// Requests queued per stream; more are answered Busy.
    pub max_requests_per_stream: usize,
    /// Pieces being sent at once over all streams; a request reaching the front of its queue
    /// when this many are being sent or waiting for a slot of its blob is answered Busy.
    pub max_concurrent_sends: usize,
    /// Pieces of one blob being sent at once, over all streams (at least 1); a request beyond
    /// this waits, and a freed slot goes to the waiting request whose piece this host's own
    /// download sees as rarest (SPEC §5.2).
    pub max_sends_per_blob: usize,
    /// Requests waiting for a send slot of one blob beyond which a request that would wait is
    /// answered Busy instead, so the downloader asks another holder at once (a stream that just
    /// sent and queues again for its slot is not counted against it; SPEC §5.2).
    pub max_waiting_per_blob: usize,
    /// Downloaders one piece is sent to at once, over all streams; a request for it beyond
    /// this is answered PieceBusy, so a fresh piece reaches a few downloaders fast and they pass
    /// it on instead of a dozen getting it slowly from here (SPEC §5.2).
    pub max_copies_per_piece: usize,
    /// Payload bytes per second sent over all streams at once (`None`: as fast as the network
    /// takes them). Frames other than piece payloads are not counted; see `pace.rs`.
    pub upload_bytes_per_s: Option<u64>,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_streams: 256,
            max_streams_per_blob: 12,
            max_requests_per_stream: 32,
            max_concurrent_sends: 16,
            max_sends_per_blob: 4,
            max_waiting_per_blob: 1,
            max_copies_per_piece: 3,
            upload_bytes_per_s: None,
        }
    }
}

/// Something that happened on a [`Session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// The uploader.
    pub peer: PeerId,
    /// What happened.
    pub kind: SessionEventKind,
}

/// What happened on a [`Session`]. Each request yields at most one of `Received`, `Refused`,
/// `Abandoned`, `PieceBusy`, `Missing` or `Failed` (none once [`Session::cancel`] returned `true` for it); `Closed` comes last and
/// voids every request still outstanding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEventKind {
    /// The uploader now holds this piece too, whole.
    Have(u32),
    /// The uploader can serve this piece while it still arrives there (SPEC §5.2).
    Arriving(u32),
    /// The uploader lost the copy it announced as arriving: it does not hold the piece.
    Withdrawn(u32),
    /// A requested piece arrived and went through the sink, which judged it.
    Received {
        /// Piece index.
        piece: u32,
        /// The sink's verdict.
        verdict: crate::ports::Verdict,
        /// Payload bytes received.
        bytes: u32,
    },
    /// The uploader refused the request for load (Busy): no fault, retry later or elsewhere.
    Refused(u32),
    /// The uploader broke the piece off: it lost the copy arriving at it that it was passing
    /// on (no fault: ask for it again shortly, there or elsewhere), or the request was
    /// cancelled while its answer was arriving ([`Session::cancel`]). What came of the piece
    /// was dropped.
    Abandoned {
        /// Piece index.
        piece: u32,
        /// Payload bytes of it received before the break, dropped.
        bytes: u32,
    },
    /// The uploader is sending this piece to enough others already (PieceBusy): no fault, and
    /// no pause for other pieces there; ask for it again a little later.
    PieceBusy(u32),
    /// The uploader says it does not hold the piece (Missing). Kept apart from `Failed`: asked
    /// only for pieces it advertised, an honest uploader never says it.
    Missing(u32),
    /// The payload broke off mid-piece, or the sink could not take it (the local disk, not the
    /// peer, may be at fault).
    Failed(u32),
    /// The stream ended: `None` when the uploader closed it cleanly, else why.
    Closed(Option<String>),
}

/// Why a transfer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("wire error: {0}")]
    Wire(#[from] WireError),
    /// The peer holds nothing of the blob.
    #[error("the peer does not hold the blob")]
    NotHeld,
    /// The peer sent a valid frame that breaks the conversation's rules.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer ended the conversation with an Error frame (code
    /// [`ErrorCode::OVERLOADED`]: too many streams there, try later or elsewhere).
    #[error("peer error {code}: {message}")]
    Remote {
        /// The peer's reason code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The stream or session is closed.
    #[error("the stream is closed")]
    Closed,
    /// The peer did not answer in time.
    #[error("the peer did not answer in time")]
    Timeout,
    /// [`MAX_OUTSTANDING`] requests are already outstanding on this session.
    #[error("too many requests outstanding")]
    QueueFull,
    /// The piece is already requested on this session and not yet answered.
    #[error("piece {0} is already requested")]
    AlreadyRequested(u32),
    /// The piece index is past the end of the blob.
    #[error("piece {piece} out of range (blob has {count} pieces)")]
    OutOfRange {
        /// The index asked for.
        piece: u32,
        /// The blob's piece count.
        count: u32,
    },
    /// The signed table sent by the peer does not decode or does not fit the blob.
    #[error("bad piece table: {0}")]
    Table(#[from] PieceError),
}

#[cfg(test)]
mod tests;
