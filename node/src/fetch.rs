//! Downloads: one shared download per blob, driven by the protocol's sans-IO
//! [`Scheduler`](flotilla_protocol::scheduler::Scheduler) over the swarm, with the gateway's
//! HTTP `Range` GET as the origin of last resort.
//!
//! [`Fetcher::open`] returns a [`Download`] handle. The first opener of a digest starts a driver
//! task; later openers join it (the fetcher keeps weak references, so a download lives exactly as
//! long as somebody holds a handle, and dropping the last one stops it). A blob already complete
//! in the store gets a handle with no driver at all.
//!
//! The driver (`fetch/driver.rs`), one task per blob:
//! 1. gets the signed piece table (`fetch/table.rs`): from the store if part of the blob is
//!    held, else from the gateway (`GET /flotilla/v1/pieces/<digest>`), else from providers
//!    over the transfer protocol; it must be signed by the gateway's peer id (configured, or
//!    read once from `GET /flotilla/v1/info`) and name the digest asked for;
//! 2. registers it with the store ([`PieceSink::register`]), which answers what is held;
//! 3. finds providers at start and every [`FetchConfig::provider_refresh`], opens transfer
//!    sessions to up to [`FetchConfig::max_peers_per_blob`] of them, and feeds their bit fields,
//!    deliveries and failures to the scheduler;
//! 4. executes the scheduler's actions: piece requests to sessions, origin requests as ranged
//!    HTTP GETs streamed into the store, cancels, bans (the session is dropped and the peer never
//!    reopened for this blob);
//! 5. announces the blob ([`Network::provide`]) as soon as one piece is held, so the node
//!    serves what it has while it downloads, and finishes when every piece is verified.
//!
//! A download fails for good (every waiter gets the error) if the table cannot be had, the store
//! refuses the blob, or nothing arrives for [`FetchConfig::stall_timeout`] while the gateway
//! does not answer and no connected peer holds a missing piece (twice that if one does).
//!
//! Counting: [`TransferStats`] per download and for the whole fetcher. A piece is counted where
//! its verified copy came from; duplicates and corrupted copies as wasted. After the last piece
//! the driver waits briefly for answers already on their way, so the counts are exact once
//! [`Download::wait_complete`] returns.
//!
//! With [`Fetcher::set_leases`], every handle and driver holds a store lease on its blob, so a
//! blob being downloaded or streamed to a client is never evicted under it.

mod driver;
mod gateway;
mod paced;
pub use paced::PacedSink;
mod table;

#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::piece::{Bitfield, SignedPieceTable};
use flotilla_protocol::scheduler;
use libp2p::PeerId;
use tokio::sync::{OnceCell, watch};

use crate::ports::{Network, PieceSink, PieceSource, SourceError};
use gateway::GatewayClient;

/// How the fetcher reaches the gateway and the swarm.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Base URL of the gateway (`http://host:port`).
    pub gateway_url: String,
    /// The peer id whose signature piece tables must carry (the gateway's). `None`: read once
    /// from the gateway's `GET /flotilla/v1/info` when first needed.
    pub gateway_peer: Option<PeerId>,
    /// Most transfer sessions (open or being opened) per download: 10 (8 before: simulated,
    /// kraken-2600's p99 went from 1.207 to 1.160 × the bound and cold-1000's from 1.50 to
    /// 1.43 ×; 12 was no better, uploaders' 12 streams per blob fill up).
    pub max_peers_per_blob: usize,
    /// How often providers are looked up again while a download runs.
    pub provider_refresh: Duration,
    /// A download with no progress and no answer from the gateway for this long fails when no
    /// connected peer holds a missing piece (after twice this long if one does); so does getting
    /// a piece table when neither the gateway nor a provider answers.
    pub stall_timeout: Duration,
    /// How long a peer may hold accepted requests without sending a byte of any answer, over
    /// at least three timeout sweeps in a row, before the download bans it (an overloaded but
    /// honest peer answers within this; one that stalls on purpose never does).
    pub peer_stall: Duration,
    /// Limit on dialing a provider and opening a session (or fetching a table) with it.
    pub connect_timeout: Duration,
    /// Limit on the gateway's small answers (`/info`, piece tables); piece bodies have none, the
    /// scheduler's request timeouts cancel them instead.
    pub http_timeout: Duration,
    /// The scheduler's tunables; the seed is replaced by one derived from this node's peer id and
    /// the digest, so nodes break ties differently.
    pub scheduler: scheduler::Config,
    /// Which sessions a download keeps (the protocol crate's rotation policy, SPEC §4.2).
    pub rotation: scheduler::RotationConfig,
    /// TLS trust for an `https://` gateway.
    pub tls: crate::gateway_http::HttpTls,
    /// Signs origin requests as a fleet member (the gateway refuses unsigned ones).
    pub member: crate::gateway_http::MemberSigner,
    /// Hears the revocation list's `seq` on the gateway's answers (SPEC §5.3).
    pub revocations_heard: crate::gateway_http::RevocationsHeard,
    /// Most piece bytes per second received, from peers and the origin together (the
    /// downlink a rollout may take; see `paced.rs`). `None`: no cap.
    pub download_bytes_per_s: Option<u64>,
}

impl FetchConfig {
    /// The defaults for a gateway at `gateway_url`: 8 peers per blob, providers looked up every
    /// 10 s, 60 s stall limit, 10 s connect and HTTP limits, the scheduler's own defaults.
    pub fn new(gateway_url: impl Into<String>) -> Self {
        FetchConfig {
            gateway_url: gateway_url.into(),
            gateway_peer: None,
            max_peers_per_blob: 10,
            provider_refresh: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(60),
            peer_stall: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            http_timeout: Duration::from_secs(10),
            scheduler: scheduler::Config::default(),
            rotation: scheduler::RotationConfig::default(),
            tls: crate::gateway_http::HttpTls::default(),
            member: crate::gateway_http::MemberSigner::new(),
            revocations_heard: crate::gateway_http::RevocationsHeard::new(),
            download_bytes_per_s: None,
        }
    }
}

/// Why a download (or getting a blob's table) failed. Cloneable: every waiter of a shared
/// download receives the same error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// The gateway answered 404 for the table and no provider had it.
    #[error("blob {0} is unknown to the gateway and its providers")]
    NotFound(Digest),
    /// A piece table that does not verify against the gateway's key or names another blob.
    #[error("piece table of {digest} rejected: {reason}")]
    BadTable {
        /// The blob.
        digest: Digest,
        /// What was wrong.
        reason: String,
    },
    /// The gateway's peer id could not be learned, so no table can be trusted.
    #[error("cannot learn the gateway's peer id from {url}: {reason}")]
    GatewayIdentity {
        /// The info URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The gateway URL does not parse or the HTTP client cannot be built.
    #[error("gateway URL {url:?} unusable: {reason}")]
    BadGatewayUrl {
        /// The configured URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Neither the gateway nor any provider answered for the table within the stall limit.
    #[error("cannot get the piece table of {digest}: {reason}")]
    Unreachable {
        /// The blob.
        digest: Digest,
        /// The last error seen.
        reason: String,
    },
    /// No piece arrived for the stall limit while the gateway failed and no peer could help.
    #[error(
        "download of {digest} stalled: no peer and no answer from the gateway for {secs} s ({reason})"
    )]
    Stalled {
        /// The blob.
        digest: Digest,
        /// The stall limit.
        secs: u64,
        /// The last gateway error.
        reason: String,
    },
    /// The store refused the blob or lost it.
    #[error("store: {0}")]
    Store(#[source] Arc<SourceError>),
    /// A piece index past the end of the blob.
    #[error("piece {index} out of range: the blob has {count} pieces")]
    PieceOutOfRange {
        /// The index asked for.
        index: u32,
        /// Pieces in the blob.
        count: u32,
    },
    /// The driver ended without completing (its task panicked or was stopped).
    #[error("the download of {0} stopped before completing")]
    Stopped(Digest),
}

impl From<SourceError> for FetchError {
    fn from(e: SourceError) -> Self {
        FetchError::Store(Arc::new(e))
    }
}

/// Bytes and pieces a download (or the whole fetcher) received, by where they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// Bytes of verified pieces received from peers.
    pub peer_bytes: u64,
    /// The part of `peer_bytes` that came from peers of another site, or of none, when this
    /// node has a site label (SPEC §6.2); 0 without one.
    pub far_peer_bytes: u64,
    /// Bytes of verified pieces received from the gateway's HTTP origin.
    pub origin_bytes: u64,
    /// Bytes received but not kept: the sum of the three below.
    pub wasted_bytes: u64,
    /// Whole verified copies of a piece already held or counted (an end-game duplicate, or
    /// the late answer to a request given up on): the copy that lost the race.
    pub duplicate_bytes: u64,
    /// Copies that ended part way: cut short by our Cancel (the piece landed elsewhere
    /// first), or abandoned by an uploader whose own copy was lost upstream (SPEC §5.2).
    pub cut_bytes: u64,
    /// Pieces that failed verification.
    pub invalid_bytes: u64,
    /// Verified pieces received from peers.
    pub peer_pieces: u64,
    /// Verified pieces received from the origin.
    pub origin_pieces: u64,
    /// Peers banned for sending corrupted pieces.
    pub peers_banned: u64,
    /// Verified pieces that sessions being replaced finished before they closed (SPEC §6.2;
    /// counted in `peer_pieces` too).
    pub retired_pieces: u64,
    /// Downloads that asked the gateway without waiting for their first lookup, because it had
    /// sent no byte of the blob yet (its `unsent` answer, SPEC §6.2).
    pub unsent_starts: u64,
}

/// Lock-free counters behind [`TransferStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    peer_bytes: AtomicU64,
    far_peer_bytes: AtomicU64,
    origin_bytes: AtomicU64,
    duplicate_bytes: AtomicU64,
    cut_bytes: AtomicU64,
    invalid_bytes: AtomicU64,
    peer_pieces: AtomicU64,
    origin_pieces: AtomicU64,
    peers_banned: AtomicU64,
    retired_pieces: AtomicU64,
    unsent_starts: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TransferStats {
        let duplicate_bytes = self.duplicate_bytes.load(Ordering::Relaxed);
        let cut_bytes = self.cut_bytes.load(Ordering::Relaxed);
        let invalid_bytes = self.invalid_bytes.load(Ordering::Relaxed);
        TransferStats {
            peer_bytes: self.peer_bytes.load(Ordering::Relaxed),
            far_peer_bytes: self.far_peer_bytes.load(Ordering::Relaxed),
            origin_bytes: self.origin_bytes.load(Ordering::Relaxed),
            wasted_bytes: duplicate_bytes + cut_bytes + invalid_bytes,
            duplicate_bytes,
            cut_bytes,
            invalid_bytes,
            peer_pieces: self.peer_pieces.load(Ordering::Relaxed),
            origin_pieces: self.origin_pieces.load(Ordering::Relaxed),
            peers_banned: self.peers_banned.load(Ordering::Relaxed),
            retired_pieces: self.retired_pieces.load(Ordering::Relaxed),
            unsent_starts: self.unsent_starts.load(Ordering::Relaxed),
        }
    }

    fn peer(&self, bytes: u64) {
        self.peer_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.peer_pieces.fetch_add(1, Ordering::Relaxed);
    }

    /// Peer bytes from another site (counted in `peer` too).
    fn far(&self, bytes: u64) {
        self.far_peer_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn origin(&self, bytes: u64) {
        self.origin_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.origin_pieces.fetch_add(1, Ordering::Relaxed);
    }

    /// A piece from a session being replaced, which it finished first (counted in `peer` too).
    fn retired(&self) {
        self.retired_pieces.fetch_add(1, Ordering::Relaxed);
    }

    fn banned(&self) {
        self.peers_banned.fetch_add(1, Ordering::Relaxed);
    }

    /// A download ended its origin grace at the gateway's `unsent` answer.
    fn unsent_start(&self) {
        self.unsent_starts.fetch_add(1, Ordering::Relaxed);
    }

    fn wasted(&self, bytes: u64, why: Waste) {
        let by_kind = match why {
            Waste::Duplicate => &self.duplicate_bytes,
            Waste::Cut => &self.cut_bytes,
            Waste::Invalid => &self.invalid_bytes,
        };
        by_kind.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Why received bytes were dropped ([`TransferStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waste {
    Duplicate,
    Cut,
    Invalid,
}

/// Something that keeps a blob in the store while held (the store's lease, type-erased).
pub type Lease = Box<dyn std::any::Any + Send + Sync>;
/// Takes a lease on a registered blob (`None` if the store does not hold it).
pub type LeaseFn = Arc<dyn Fn(&Digest) -> Option<Lease> + Send + Sync>;

/// A download's table and the store's view of its pieces, once known.
#[derive(Clone)]
struct Ready {
    table: Arc<SignedPieceTable>,
    have: watch::Receiver<Bitfield>,
    /// Lives in the state channel, which every handle's `Shared` keeps open: the blob stays
    /// leased while a handle is held, even after the driver is gone.
    _lease: Option<Arc<Lease>>,
}

/// How a download ended, if it has.
#[derive(Clone)]
enum Outcome {
    Running,
    Complete,
    Failed(FetchError),
}

/// What the driver publishes to the handles.
#[derive(Clone)]
struct State {
    ready: Option<Ready>,
    outcome: Outcome,
}

/// One download, shared by every handle on it. The driver holds none of this: when the last
/// handle drops, `read_pos` closes and the driver stops.
struct Shared {
    digest: Digest,
    state: watch::Receiver<State>,
    read_pos: watch::Sender<Option<u32>>,
    stats: Arc<Counters>,
    downloads: Weak<Mutex<HashMap<Digest, Weak<Shared>>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(map) = self.downloads.upgrade() {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            // Only our own (now dead) entry: a new download may already have replaced it.
            if map.get(&self.digest).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&self.digest);
            }
        }
    }
}

/// Everything the drivers share.
pub(crate) struct Inner {
    cfg: FetchConfig,
    network: Arc<dyn Network>,
    sink: Arc<dyn PieceSink>,
    source: Arc<dyn PieceSource>,
    gateway: GatewayClient,
    gateway_peer: OnceCell<PeerId>,
    downloads: Arc<Mutex<HashMap<Digest, Weak<Shared>>>>,
    totals: Arc<Counters>,
    leases: std::sync::OnceLock<LeaseFn>,
    /// Peers that sent corrupted pieces, banned for every blob (the most recent 1024).
    banned: Mutex<std::collections::VecDeque<PeerId>>,
    /// Nanoseconds receivers waited for the download cap (none without a cap).
    cap_waited: Option<Arc<AtomicU64>>,
}

/// How many banned peers the fetcher remembers.
const MAX_BANNED: usize = 1024;

impl Inner {
    /// Downloads with a live handle.
    pub(crate) fn active_downloads(&self) -> usize {
        let map = self.downloads.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    /// Bans `peer` from every download of this node.
    fn ban(&self, peer: PeerId) {
        let mut banned = self.banned.lock().unwrap_or_else(|p| p.into_inner());
        if !banned.contains(&peer) {
            if banned.len() >= MAX_BANNED {
                banned.pop_front();
            }
            banned.push_back(peer);
        }
    }

    /// Up to `max` peers banned by any download.
    fn banned_peers(&self, max: usize) -> Vec<PeerId> {
        self.banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .take(max)
            .copied()
            .collect()
    }

    /// Whether `peer` was banned by any download.
    fn is_banned(&self, peer: &PeerId) -> bool {
        self.banned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    /// A lease on `digest`, if a lease function is set and the store holds the blob.
    fn lease(&self, digest: &Digest) -> Option<Arc<Lease>> {
        self.leases.get().and_then(|f| f(digest)).map(Arc::new)
    }

    /// The gateway's peer id: configured, or read from `/flotilla/v1/info` (once it succeeds).
    async fn gateway_peer(&self) -> Result<PeerId, FetchError> {
        if let Some(p) = self.cfg.gateway_peer {
            return Ok(p);
        }
        self.gateway_peer
            .get_or_try_init(|| self.gateway.info())
            .await
            .copied()
    }
}

/// Starts and shares downloads (cheap to clone).
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

impl Fetcher {
    /// A fetcher over `network`, storing into `sink` and reading what is held from `source`
    /// (both usually the node's store); with `cfg.download_bytes_per_s`, through a
    /// [`PacedSink`].
    ///
    /// # Errors
    /// [`FetchError::BadGatewayUrl`] if the gateway URL is not an `http(s)` URL.
    pub fn new(
        cfg: FetchConfig,
        network: Arc<dyn Network>,
        sink: Arc<dyn PieceSink>,
        source: Arc<dyn PieceSource>,
    ) -> Result<Self, FetchError> {
        let gateway = GatewayClient::new(
            &cfg.gateway_url,
            &cfg.tls,
            cfg.member.clone(),
            cfg.revocations_heard.clone(),
            cfg.connect_timeout,
            cfg.http_timeout,
        )?;
        let (sink, cap_waited) = match cfg.download_bytes_per_s {
            Some(rate) => {
                let paced = PacedSink::new(sink, rate);
                let waited = paced.waited_counter();
                (Arc::new(paced) as Arc<dyn PieceSink>, Some(waited))
            }
            None => (sink, None),
        };
        Ok(Fetcher {
            inner: Arc::new(Inner {
                cfg,
                network,
                sink,
                source,
                gateway,
                gateway_peer: OnceCell::new(),
                downloads: Arc::new(Mutex::new(HashMap::new())),
                totals: Arc::new(Counters::default()),
                leases: std::sync::OnceLock::new(),
                banned: Mutex::new(std::collections::VecDeque::new()),
                cap_waited,
            }),
        })
    }

    /// How long downloads have waited for the download cap, in all (zero without a cap).
    pub fn download_cap_waited(&self) -> Duration {
        self.inner.cap_waited.as_ref().map_or(Duration::ZERO, |w| {
            Duration::from_nanos(w.load(Ordering::Relaxed))
        })
    }

    /// Sets how to lease a blob from the store (e.g. `Store::lease`, boxed): downloads and
    /// handles then keep their blob from being evicted. Only the first call takes effect;
    /// returns whether this one did.
    pub fn set_leases(&self, lease: LeaseFn) -> bool {
        self.inner.leases.set(lease).is_ok()
    }

    /// The gateway's peer id (the signer piece tables must carry).
    ///
    /// # Errors
    /// [`FetchError::GatewayIdentity`] if it is not configured and `/flotilla/v1/info` fails.
    pub async fn gateway_peer(&self) -> Result<PeerId, FetchError> {
        self.inner.gateway_peer().await
    }

    /// Bytes received by every download so far.
    pub fn totals(&self) -> TransferStats {
        self.inner.totals.snapshot()
    }

    /// Downloads with a live handle.
    pub fn active_downloads(&self) -> usize {
        self.inner.active_downloads()
    }

    fn lock_downloads(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Weak<Shared>>> {
        self.inner
            .downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The running download of `digest`, if it has not failed.
    fn running(&self, digest: &Digest) -> Option<Arc<Shared>> {
        let map = self.lock_downloads();
        let shared = map.get(digest)?.upgrade()?;
        let failed = matches!(shared.state.borrow().outcome, Outcome::Failed(_));
        (!failed).then_some(shared)
    }

    /// The verified piece table of `digest`, without downloading anything: from the store, a
    /// running download, the gateway or a provider (in that order).
    ///
    /// # Errors
    /// [`FetchError::NotFound`] if nobody knows the blob, else why the table could not be had.
    pub async fn table(&self, digest: &Digest) -> Result<Arc<SignedPieceTable>, FetchError> {
        if let Some(held) = self.inner.source.held(digest).await? {
            return Ok(held.table);
        }
        if let Some(shared) = self.running(digest) {
            let ready = shared.state.borrow().ready.clone();
            if let Some(ready) = ready {
                return Ok(ready.table);
            }
        }
        table::obtain(&self.inner, digest).await
    }

    /// A handle on the download of `digest`: joins the running one, or starts it. Resolves once
    /// the piece table is known (the download keeps going in the background while the handle
    /// is held).
    ///
    /// # Errors
    /// [`FetchError::NotFound`] for a blob nobody has, else why the table or the store failed.
    pub async fn open(&self, digest: &Digest) -> Result<Download, FetchError> {
        if let Some(shared) = self.running(digest) {
            return Download::ready(shared).await;
        }
        let held = self.inner.source.held(digest).await?;
        if let Some(held) = &held
            && held.have.borrow().is_complete()
        {
            let lease = self.inner.lease(digest);
            return Ok(complete_download(
                digest,
                held.table.clone(),
                held.have.clone(),
                lease,
            ));
        }
        let shared = {
            let mut map = self.lock_downloads();
            let live = map
                .get(digest)
                .and_then(Weak::upgrade)
                .filter(|s| !matches!(s.state.borrow().outcome, Outcome::Failed(_)));
            match live {
                Some(shared) => shared,
                None => {
                    let shared = self.start(digest, held.map(|h| h.table));
                    map.insert(digest.clone(), Arc::downgrade(&shared));
                    shared
                }
            }
        };
        Download::ready(shared).await
    }

    /// Spawns the driver of `digest` (the caller inserts the result in the map, under its lock).
    fn start(&self, digest: &Digest, table: Option<Arc<SignedPieceTable>>) -> Arc<Shared> {
        let (state_tx, state_rx) = watch::channel(State {
            ready: None,
            outcome: Outcome::Running,
        });
        let (pos_tx, pos_rx) = watch::channel(None);
        let stats = Arc::new(Counters::default());
        tokio::spawn(driver::run(driver::Job {
            inner: self.inner.clone(),
            digest: digest.clone(),
            table,
            state: state_tx,
            read_pos: pos_rx,
            stats: stats.clone(),
        }));
        Arc::new(Shared {
            digest: digest.clone(),
            state: state_rx,
            read_pos: pos_tx,
            stats,
            downloads: Arc::downgrade(&self.inner.downloads),
        })
    }
}

/// A handle on a blob already complete in the store: no driver, nothing to wait for.
fn complete_download(
    digest: &Digest,
    table: Arc<SignedPieceTable>,
    have: watch::Receiver<Bitfield>,
    lease: Option<Arc<Lease>>,
) -> Download {
    let (_, state) = watch::channel(State {
        ready: Some(Ready {
            table: table.clone(),
            have: have.clone(),
            _lease: lease,
        }),
        outcome: Outcome::Complete,
    });
    let (read_pos, _) = watch::channel(None);
    Download {
        table,
        have,
        shared: Arc::new(Shared {
            digest: digest.clone(),
            state,
            read_pos,
            stats: Arc::new(Counters::default()),
            downloads: Weak::new(),
        }),
    }
}

/// A handle on one blob's download; the download runs while any handle on it is held.
#[derive(Clone)]
pub struct Download {
    /// The blob's verified piece table.
    pub table: Arc<SignedPieceTable>,
    /// The pieces held and verified in the store (bits are only ever added).
    pub have: watch::Receiver<Bitfield>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("digest", &self.shared.digest)
            .field("have", &*self.have.borrow())
            .finish_non_exhaustive()
    }
}

impl Download {
    /// Waits until the driver of `shared` publishes the table (or fails).
    async fn ready(shared: Arc<Shared>) -> Result<Download, FetchError> {
        let mut state = shared.state.clone();
        loop {
            let now = state.borrow_and_update().clone();
            if let Outcome::Failed(e) = now.outcome {
                return Err(e);
            }
            if let Some(ready) = now.ready {
                return Ok(Download {
                    table: ready.table,
                    have: ready.have,
                    shared,
                });
            }
            if state.changed().await.is_err() {
                return Err(FetchError::Stopped(shared.digest.clone()));
            }
        }
    }

    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        &self.shared.digest
    }

    /// Pieces in the blob.
    pub fn piece_count(&self) -> u32 {
        self.table.table.piece_count()
    }

    /// Whether every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.borrow().is_complete()
    }

    /// What this download has received so far, by source.
    pub fn stats(&self) -> TransferStats {
        self.shared.stats.snapshot()
    }

    /// A reader needs `piece` next: the scheduler fetches it and the few after it first. The
    /// last position set by any handle wins.
    pub fn set_read_position(&self, piece: u32) {
        self.shared.read_pos.send_if_modified(|pos| {
            let changed = *pos != Some(piece);
            *pos = Some(piece);
            changed
        });
    }

    /// Whether piece `index` is held and verified now.
    pub fn has_piece(&self, index: u32) -> bool {
        self.have.borrow().get(index)
    }

    /// Resolves once piece `index` is held and verified.
    ///
    /// # Errors
    /// [`FetchError::PieceOutOfRange`], or the download's error if it failed for good.
    pub async fn wait_piece(&self, index: u32) -> Result<(), FetchError> {
        let count = self.piece_count();
        if index >= count {
            return Err(FetchError::PieceOutOfRange { index, count });
        }
        self.wait_until(|have| have.get(index)).await
    }

    /// Resolves once every piece is held and verified, and the driver has finished (so
    /// [`Download::stats`] counts every piece).
    ///
    /// # Errors
    /// The download's error if it failed for good.
    pub async fn wait_complete(&self) -> Result<(), FetchError> {
        self.wait_until(Bitfield::is_complete).await?;
        // The store sets the last bit before the driver hears who delivered it.
        let mut state = self.shared.state.clone();
        while matches!(state.borrow_and_update().outcome, Outcome::Running) {
            if state.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }

    async fn wait_until(&self, done: impl Fn(&Bitfield) -> bool) -> Result<(), FetchError> {
        let mut have = self.have.clone();
        let mut state = self.shared.state.clone();
        let stopped = || FetchError::Stopped(self.shared.digest.clone());
        loop {
            if done(&have.borrow_and_update()) {
                return Ok(());
            }
            match &state.borrow_and_update().outcome {
                Outcome::Failed(e) => return Err(e.clone()),
                // Complete but not held: the store dropped the blob under us.
                Outcome::Complete => return Err(stopped()),
                Outcome::Running => {}
            }
            tokio::select! {
                r = have.changed() => if r.is_err() && !done(&have.borrow()) {
                    return Err(FetchError::Store(Arc::new(SourceError::NotHeld(format!(
                        "{} was removed from the store",
                        self.shared.digest
                    )))));
                },
                r = state.changed() => if r.is_err() {
                    // The driver is gone; its last word (if any) is still readable.
                    if done(&have.borrow()) {
                        return Ok(());
                    }
                    return Err(match &state.borrow().outcome {
                        Outcome::Failed(e) => e.clone(),
                        _ => stopped(),
                    });
                },
            }
        }
    }
}
