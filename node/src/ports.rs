//! The seams between the node's parts, as traits: where pieces are read from ([`PieceSource`]:
//! the node's store, or the gateway's blob files), where received pieces go ([`PieceSink`]: the
//! node's store, which verifies them), and the network ([`Network`]: the libp2p swarm).
//!
//! Each part depends on these traits rather than on the others, so the transfer protocol can be
//! tested over an in-memory pipe, the download driver against a fake network, and the gateway
//! can serve its own blob files to the swarm without a second copy.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::io::{AsyncRead, AsyncWrite};
use libp2p::PeerId;
use tokio::sync::watch;

/// A boxed bidirectional byte stream to a peer (a libp2p stream in the node; an in-memory pipe
/// in tests).
pub type PeerStream = Box<dyn Duplex>;

/// Anything that reads and writes bytes both ways.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// What a source holds of one blob.
#[derive(Clone)]
pub struct Held {
    /// The blob's signed piece table.
    pub table: Arc<SignedPieceTable>,
    /// The pieces held now; changes as more arrive (never loses a bit while the blob is held).
    pub have: watch::Receiver<Bitfield>,
    /// The pieces held or arriving with a verified first block ([`PieceSource::arriving`]): what
    /// peers are told they may ask for. A superset of `have`; a piece whose arriving copy is
    /// lost before it is whole loses its bit again (peers are told Withdrawn). A source that
    /// never serves a piece still arriving gives `have` here again.
    pub offer: watch::Receiver<Bitfield>,
    /// How many of its peers the holder's own download sees holding each piece, while it
    /// downloads; the server sends the rarest waiting request first (`None`: no ranking).
    pub rank: Option<Arc<PieceRank>>,
}

/// Per piece of one blob, how many of its peers the holder's download sees holding it: written
/// by the download driver from its scheduler (which tracks it anyway to pick rarest first), read
/// by the transfer server to order the requests that wait for a send slot (SPEC §5.2). All zero
/// — first come, first served — when no download runs.
#[derive(Debug)]
pub struct PieceRank(Box<[AtomicU16]>);

impl PieceRank {
    /// A rank of `piece_count` pieces, all zero.
    pub fn new(piece_count: u32) -> Self {
        PieceRank((0..piece_count).map(|_| AtomicU16::new(0)).collect())
    }

    /// Holders of `piece` seen (0 for a piece out of range).
    pub fn get(&self, piece: u32) -> u16 {
        self.0
            .get(piece as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// Records that `holders` peers are seen holding `piece` (ignored out of range).
    pub fn set(&self, piece: u32, holders: u16) {
        if let Some(a) = self.0.get(piece as usize) {
            a.store(holders, Ordering::Relaxed);
        }
    }

    /// Pieces ranked.
    pub fn len(&self) -> u32 {
        self.0.len() as u32
    }

    /// Whether the rank covers no piece.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Back to all zero: nobody is downloading, so nothing is known to be rare.
    pub fn clear(&self) {
        for a in &*self.0 {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// One piece's bytes on disk: `len` bytes at `offset` of `file`, readable with positioned reads
/// (the file is shared; never seek it).
#[derive(Clone)]
pub struct PieceFile {
    /// The file holding the blob (complete or partial).
    pub file: Arc<std::fs::File>,
    /// Offset of the piece within the file.
    pub offset: u64,
    /// Length of the piece.
    pub len: u32,
    /// The same file opened for direct I/O, if the file system allows it: readers go through
    /// [`crate::direct_io::read_at`] with both.
    pub direct: Option<Arc<std::fs::File>>,
}

/// A piece still arriving at a source, which it may pass on as its blocks verify.
pub struct Arriving {
    /// Where the piece lies; only its first `progress` bytes are verified and written.
    pub file: PieceFile,
    /// Bytes of the piece, from its start, verified and written so far. The sender goes away
    /// when the copy ends: whole (the piece is then held) or lost.
    pub progress: watch::Receiver<u32>,
    /// Whether the copy that `progress` follows still owns the piece's bytes on disk, or the
    /// piece is held whole. Bytes read from `file` are passed on only if this still holds after
    /// the read: a copy lost meanwhile may have let another writer start the piece over.
    pub valid: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Why a source or sink could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The blob (or that piece of it) is not held.
    #[error("not held: {0}")]
    NotHeld(String),
    /// No room for the blob, even after eviction.
    #[error("no space: {0}")]
    NoSpace(String),
    /// A disk or file error.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// Anything else, with its explanation.
    #[error("{0}")]
    Other(String),
}

/// Where the transfer server reads the pieces it serves.
pub trait PieceSource: Send + Sync + 'static {
    /// The signed table and the held pieces of `digest`, or `None` when nothing of it is held.
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>>;
    /// Where piece `index` of `digest` lies on disk. Only pieces whose bit is set in
    /// [`Held::have`] may be asked for.
    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>>;
    /// Accounting: `bytes` of `digest` were sent to a peer.
    fn served(&self, digest: &Digest, bytes: u64);
    /// Accounting: of the bytes just reported to [`PieceSource::served`], `bytes` were passed
    /// on while their piece still arrived here ([`PieceSource::arriving`]).
    fn served_arriving(&self, _digest: &Digest, _bytes: u64) {}
    /// Piece `index` of `digest` while it arrives here, if it does (`None`: not arriving, or
    /// this source never passes a piece on before it holds it whole).
    fn arriving(&self, digest: &Digest, index: u32) -> Option<Arriving> {
        let _ = (digest, index);
        None
    }
}

/// The outcome of receiving one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes matched the table's hash; the piece is stored and its bit set.
    Verified,
    /// The piece was already held (another copy won); the bytes were dropped.
    Duplicate,
    /// The bytes did not match; nothing was kept.
    Invalid,
}

/// Receives one piece incrementally: bytes in order, then [`PieceReceiver::finish`].
/// Dropping it without `finish` abandons the piece and keeps nothing.
pub trait PieceReceiver: Send {
    /// The next bytes of the piece (copied or consumed before the future resolves: the caller
    /// reuses its buffer).
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), SourceError>>;
    /// Room for the next `1..=n` bytes of the piece, to read them into directly instead of
    /// handing them to [`PieceReceiver::write`] (which copies them); `None`: use `write`. What
    /// is put there counts once [`PieceReceiver::commit`] says how much.
    fn spare(&mut self, n: usize) -> Option<&mut [u8]> {
        let _ = n;
        None
    }
    /// The first `k` bytes of the room [`PieceReceiver::spare`] gave now hold the piece's next
    /// bytes: as a `write` of them.
    fn commit(&mut self, k: usize) -> BoxFuture<'_, Result<(), SourceError>> {
        let _ = k;
        futures::future::ready(Err(SourceError::Other(
            "commit without room: this receiver takes bytes through write".into(),
        )))
        .boxed()
    }
    /// Verifies what was written against the table and, if it matches, stores the piece and
    /// sets its bit before answering. A crash afterwards leaves the piece either held with
    /// correct bytes or not held at all (the store persists bits only after syncing the data).
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<Verdict, SourceError>>;
}

/// Where received pieces go (the node's store). The sink verifies: a piece becomes visible to
/// readers and to peers only after its hash matched.
pub trait PieceSink: Send + Sync + 'static {
    /// Makes the blob of `table` (already signature-checked by the caller) known, creating an
    /// empty partial blob if nothing of it is held, and returns what is held of it. Idempotent.
    fn register(
        &self,
        table: Arc<SignedPieceTable>,
    ) -> BoxFuture<'static, Result<Held, SourceError>>;
    /// Starts receiving piece `index` of `digest` (the blob must have been registered with its
    /// table). Concurrent receivers of the same piece are allowed (end game); the first one
    /// to verify wins and the others report [`Verdict::Duplicate`].
    fn receive(&self, digest: &Digest, index: u32) -> Result<Box<dyn PieceReceiver>, SourceError>;
    /// Why the sink's disk is full, if its most recent write failed for want of space, at or
    /// after `since`, and nothing has been written since. A download stops on it instead of
    /// fetching pieces it cannot keep (and the next one, started later, tries again).
    fn disk_full(&self, since: std::time::Instant) -> Option<String> {
        let _ = since;
        None
    }
}

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The swarm task has stopped.
    #[error("the swarm task has stopped")]
    Stopped,
    /// Dialing or opening a stream failed.
    #[error("cannot reach {peer}: {reason}")]
    Unreachable {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        reason: String,
    },
    /// A DHT query failed or timed out.
    #[error("DHT query failed: {0}")]
    Query(String),
}

/// The part of the libp2p swarm the download driver and the announcer use.
pub trait Network: Send + Sync + 'static {
    /// This node's peer id.
    fn local_peer_id(&self) -> PeerId;
    /// Providers of `digest` found through the DHT (and any directly known), at most `limit`;
    /// the local peer is never among them.
    fn find_providers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, NetworkError>>;
    /// Opens a piece-transfer stream to `peer` (dialing if needed).
    fn open_stream(&self, peer: PeerId) -> BoxFuture<'static, Result<PeerStream, NetworkError>>;
    /// Announces this node as a provider of `digest` (and keeps re-providing it).
    fn provide(&self, digest: &Digest) -> BoxFuture<'static, Result<(), NetworkError>>;
    /// Withdraws the announcement of `digest`.
    fn unprovide(&self, digest: &Digest) -> BoxFuture<'static, Result<(), NetworkError>>;
    /// How many nodes the routing table knows (a swarm-size estimate for the scheduler).
    fn known_peers(&self) -> usize;
    /// This node's site label (SPEC §6.2), if it has one; [`Network::provide`] then announces
    /// each blob under the site's key too.
    fn site(&self) -> Option<&str> {
        None
    }
    /// Providers of `digest` in this node's site (announced under its site key), at most
    /// `limit`; none without a site.
    fn find_site_providers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, NetworkError>> {
        let _ = (digest, limit);
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}
