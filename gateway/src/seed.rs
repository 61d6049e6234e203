//! The gateway as a seed of the node swarm: its libp2p identity, the signed piece table of every
//! blob it holds, and its blob files served to peers without a second copy.
//!
//! [`Seed`] (owned by [`crate::registry::Registry`], cheap to clone) is what the swarm wiring uses:
//! [`Seed::keypair`] is the swarm identity and the key that signs piece tables,
//! [`Seed::source`] is the [`PieceSource`] the transfer server reads pieces from,
//! [`Seed::held_digests`] and [`Seed::subscribe_new_blobs`] say what to provide into the DHT, and
//! [`Seed::set_swarm_addrs`] publishes the listen addresses under `GET /flotilla/v1/info`.
//!
//! # Identity
//! `<data_dir>/identity.key`, an ed25519 keypair in libp2p's protobuf encoding, created on first
//! start (mode 0600, temp file, fsync, rename) and reused afterwards; a file that does not decode
//! stops the gateway with an error naming it (see [`flotilla_node::identity`]).
//!
//! # Piece tables
//! A blob's table is cut into pieces of
//! [`piece_size_for`](flotilla_protocol::piece::piece_size_for) its size, hashed with BLAKE3,
//! signed with the identity and kept in the `piece_tables` sled tree. Tables are computed
//! - after a push: [`crate::registry::Registry`] hands each installed blob's digest to a bounded
//!   queue ([`QUEUE`]) read by one background worker. When the queue is full the digest is
//!   dropped: the table will be computed on demand instead;
//! - on demand, when a table is asked for (HTTP or swarm) and is not stored yet (a blob pushed
//!   before this version, or skipped by a full queue).
//!
//! Both paths go through one *flight* per digest: concurrent askers (and the worker) wait on the
//! same computation, which runs as a task of its own so that an asker going away neither stops nor
//! repeats it. The file is read once and hashed on the blocking pool, never on the async threads.
//! A stored table is used only if it decodes, names the blob's digest and size, and verifies
//! against the current identity; otherwise it is computed again.
//!
//! Decoded tables live in a small LRU cache bounded by bytes, open blob files in one bounded by
//! count (blob files are written once and never modified, so a cached descriptor stays valid).
//!
//! # Counters
//! [`SeedStats`]: `http_blob_bytes` (blob body bytes handed to HTTP connections, by `/v2` blob GETs
//! and `/flotilla/v1/blobs`, counted chunk by chunk as the body streams, so an aborted response
//! counts what it sent), `swarm_bytes` (what the transfer server reported through
//! [`PieceSource::served`]) and `tables_computed` (tables hashed by this process).

mod cache;
mod demand;
mod source;
mod table;
mod unsent;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};

use bytes::Bytes;
use flotilla_node::ports::PieceSource;
use flotilla_node::transfer::Pace;
use flotilla_protocol::Digest;
use flotilla_protocol::piece::SignedPieceTable;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use libp2p_identity::{Keypair, PeerId};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

pub use source::GatewaySource;

use crate::registry::RegistryError;
use crate::storage::blobs::BlobFiles;
use crate::storage::meta::MetaStore;
use cache::Lru;

/// Digests waiting for the background table worker; beyond this, new blobs are left to on-demand
/// computation.
pub const QUEUE: usize = 256;
/// New-blob notifications a slow [`Seed::subscribe_new_blobs`] receiver may fall behind by before
/// it sees `RecvError::Lagged` (and should re-read [`Seed::held_digests`]).
pub const NEW_BLOBS_CAPACITY: usize = 1024;
/// Bytes of decoded and encoded piece tables kept in memory.
const TABLE_CACHE_BYTES: usize = 32 << 20;
/// Piece tables kept in memory, at most.
const TABLE_CACHE_ENTRIES: usize = 4096;
/// Open blob files kept for the transfer server.
const FILE_CACHE_ENTRIES: usize = 128;

/// The egress and work counters (see the module docs), as `GET /flotilla/v1/stats` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeedStats {
    /// Blob body bytes sent over HTTP (`/v2/<name>/blobs/…` and `/flotilla/v1/blobs/…`).
    pub http_blob_bytes: u64,
    /// Blob bytes sent to peers by the swarm's transfer server.
    pub swarm_bytes: u64,
    /// Piece tables computed (hashed and signed) since start.
    pub tables_computed: u64,
}

/// The counters behind [`SeedStats`], shared with the HTTP body streams.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    http_blob_bytes: AtomicU64,
    swarm_bytes: AtomicU64,
    tables_computed: AtomicU64,
}

impl Counters {
    /// `n` blob body bytes went out over HTTP.
    pub(crate) fn http_sent(&self, n: u64) {
        self.http_blob_bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> SeedStats {
        SeedStats {
            http_blob_bytes: self.http_blob_bytes.load(Ordering::Relaxed),
            swarm_bytes: self.swarm_bytes.load(Ordering::Relaxed),
            tables_computed: self.tables_computed.load(Ordering::Relaxed),
        }
    }
}

/// The seed service (cheap to clone; see the module docs).
#[derive(Clone)]
pub struct Seed {
    inner: Arc<SeedInner>,
}

struct SeedInner {
    core: Arc<Core>,
    /// The background worker's queue. The worker holds only a weak reference to [`Core`] and stops
    /// when this sender is dropped with the last `Seed`.
    queue: mpsc::Sender<Digest>,
    /// Table fetches per blob: how many nodes are pulling it now.
    demand: demand::Demand,
    /// Peers connected to the gateway's swarm, as last refreshed (`crate::p2p`).
    connected: RwLock<std::collections::HashSet<PeerId>>,
}

/// A piece table ready to hand out: decoded for the transfer server, encoded for HTTP.
pub(crate) struct TableEntry {
    pub(crate) signed: Arc<SignedPieceTable>,
    pub(crate) encoded: Bytes,
}

type FlightResult = Result<Option<Arc<TableEntry>>, Arc<RegistryError>>;
/// One lookup-or-computation of a table, shared by everyone who asks meanwhile.
type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// Everything the seed's parts share.
pub(crate) struct Core {
    keypair: Keypair,
    peer_id: PeerId,
    blobs: BlobFiles,
    meta: Arc<dyn MetaStore>,
    counters: Arc<Counters>,
    tables: Mutex<Lru<Digest, Arc<TableEntry>>>,
    files: Mutex<Lru<Digest, Arc<std::fs::File>>>,
    flights: Mutex<HashMap<Digest, Flight>>,
    addrs: RwLock<Vec<String>>,
    new_blobs: broadcast::Sender<Digest>,
    removed_blobs: broadcast::Sender<Digest>,
    /// The gateway's upload cap, shared by HTTP blob bodies and swarm pieces.
    egress: Option<Arc<Pace>>,
    /// Blobs this process stored anew of which no byte has left it since.
    unsent: unsent::Unsent,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking work (disk, hashing, database) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Corrupt(format!("seed task failed: {e}")))?
}

/// A copy of a shared flight error for one asker (`io::Error` cannot be cloned; its kind and text
/// can).
fn unshare(e: Arc<RegistryError>) -> RegistryError {
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(shared) => match &*shared {
            RegistryError::Io(io) => {
                RegistryError::Io(std::io::Error::new(io.kind(), io.to_string()))
            }
            RegistryError::Db(db) => RegistryError::Db(db.clone()),
            RegistryError::PieceTable(p) => RegistryError::PieceTable(p.clone()),
            RegistryError::BlobUnknown => RegistryError::BlobUnknown,
            other => RegistryError::Corrupt(other.to_string()),
        },
    }
}

impl Seed {
    /// Starts the seed service over the blob files and the metadata store, with `keypair` as
    /// identity and `egress` as the upload cap; spawns the table worker (so it must be called
    /// inside a tokio runtime).
    pub(crate) fn start(
        keypair: Keypair,
        blobs: BlobFiles,
        meta: Arc<dyn MetaStore>,
        egress: Option<Arc<Pace>>,
    ) -> Seed {
        Self::with_queue(keypair, blobs, meta, egress, QUEUE)
    }

    /// [`Seed::start`] with a queue of `depth` digests (tests use tiny ones).
    pub(crate) fn with_queue(
        keypair: Keypair,
        blobs: BlobFiles,
        meta: Arc<dyn MetaStore>,
        egress: Option<Arc<Pace>>,
        depth: usize,
    ) -> Seed {
        let (new_blobs, _) = broadcast::channel(NEW_BLOBS_CAPACITY);
        let (removed_blobs, _) = broadcast::channel(NEW_BLOBS_CAPACITY);
        let core = Arc::new(Core {
            peer_id: keypair.public().to_peer_id(),
            keypair,
            blobs,
            meta,
            counters: Arc::new(Counters::default()),
            tables: Mutex::new(Lru::new(TABLE_CACHE_ENTRIES, TABLE_CACHE_BYTES)),
            files: Mutex::new(Lru::new(FILE_CACHE_ENTRIES, FILE_CACHE_ENTRIES)),
            flights: Mutex::new(HashMap::new()),
            addrs: RwLock::new(Vec::new()),
            new_blobs,
            removed_blobs,
            egress,
            unsent: unsent::Unsent::default(),
        });
        let (queue, rx) = mpsc::channel(depth.max(1));
        tokio::spawn(table_worker(Arc::downgrade(&core), rx));
        Seed {
            inner: Arc::new(SeedInner {
                core,
                queue,
                demand: demand::Demand::default(),
                connected: RwLock::default(),
            }),
        }
    }

    fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// The gateway's libp2p identity: the swarm's keypair and the piece-table signing key.
    pub fn keypair(&self) -> &Keypair {
        &self.core().keypair
    }

    /// The gateway's peer id (the signer of its piece tables).
    pub fn peer_id(&self) -> PeerId {
        self.core().peer_id
    }

    /// Replaces the set of peers connected to the gateway's swarm (refreshed once a second).
    pub fn set_connected(&self, peers: impl IntoIterator<Item = PeerId>) {
        let mut set = self
            .inner
            .connected
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        set.clear();
        set.extend(peers);
    }

    /// Whether `peer` was connected to the gateway's swarm at the last refresh.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.inner
            .connected
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(peer)
    }

    /// How many peers were connected to the gateway's swarm at the last refresh.
    pub fn connected_count(&self) -> usize {
        self.inner
            .connected
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The blob files as a [`PieceSource`] for the swarm's transfer server.
    pub fn source(&self) -> Arc<dyn PieceSource> {
        Arc::new(GatewaySource::new(self.core().clone()))
    }

    /// Counts a node starting to download `digest` (it fetched the table); returns how many
    /// did in the last 30–60 s, this one included.
    pub fn note_table_fetch(&self, digest: &Digest) -> u32 {
        self.inner.demand.note(digest)
    }

    /// How many nodes started to download `digest` in the last 30–60 s.
    pub fn swarm_size(&self, digest: &Digest) -> u32 {
        self.inner.demand.get(digest)
    }

    /// Whether this process stored `digest` anew and no byte of it has left since, over HTTP
    /// or the swarm: then no node holds a piece of it, since every piece starts here. False
    /// after a restart (nodes may hold pieces from before), for a blob garbage collection
    /// removed before (nodes may still hold it), and whenever in doubt.
    pub fn unsent(&self, digest: &Digest) -> bool {
        self.core().unsent.contains(digest)
    }

    /// `digest`, neither held nor ever collected here, is about to be installed (blocking
    /// callers may call it).
    pub(crate) fn mark_unsent(&self, digest: &Digest) {
        self.core().unsent.mark(digest);
    }

    /// Bytes of `digest` are about to leave the gateway (a blob or range GET).
    pub(crate) fn note_sent(&self, digest: &Digest) {
        self.core().unsent.clear(digest);
    }

    /// Sets the swarm addresses `GET /flotilla/v1/info` shows (multiaddrs as text). An address
    /// without a `/p2p/` part gets `/p2p/<peer id>` appended, so nodes can dial it as it is.
    pub fn set_swarm_addrs(&self, addrs: Vec<String>) {
        let suffix = format!("/p2p/{}", self.peer_id());
        let addrs = addrs
            .into_iter()
            .map(|a| if a.contains("/p2p/") { a } else { a + &suffix })
            .collect();
        *self
            .core()
            .addrs
            .write()
            .unwrap_or_else(PoisonError::into_inner) = addrs;
    }

    /// The swarm addresses last set (empty while no swarm runs).
    pub fn swarm_addrs(&self) -> Vec<String> {
        self.core()
            .addrs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every blob file held, whatever repositories link it (what to provide into the DHT).
    ///
    /// # Errors
    /// [`RegistryError::Io`] if the blob directories cannot be read.
    pub async fn held_digests(&self) -> Result<Vec<Digest>, RegistryError> {
        let core = self.core().clone();
        blocking(move || core.held_digests()).await
    }

    /// A receiver of the digest of every blob that lands from now on (pushed or uploaded; sent
    /// once the blob is durable and linked, possibly again when the same blob is pushed again).
    /// Bounded by [`NEW_BLOBS_CAPACITY`]: a receiver that falls further behind gets
    /// `RecvError::Lagged` and should re-read [`Seed::held_digests`].
    pub fn subscribe_new_blobs(&self) -> broadcast::Receiver<Digest> {
        self.core().new_blobs.subscribe()
    }

    /// A receiver of the digest of every blob garbage collection removes from now on (the
    /// swarm stops providing it). Bounded like [`Seed::subscribe_new_blobs`]; a receiver that
    /// falls behind misses some, which then stay announced until the gateway restarts (nodes
    /// asking for them are told the gateway does not hold them).
    pub fn subscribe_removed_blobs(&self) -> broadcast::Receiver<Digest> {
        self.core().removed_blobs.subscribe()
    }

    /// The gateway's upload cap (`upload_bytes_per_s`), if any: HTTP blob bodies and the
    /// swarm's piece payloads take their bytes from this one budget.
    pub fn egress_pace(&self) -> Option<Arc<Pace>> {
        self.core().egress.clone()
    }

    /// The counters now.
    pub fn stats(&self) -> SeedStats {
        self.core().counters.snapshot()
    }

    /// The signed piece table of blob `d`, computed now if it is not stored yet; `None` if no blob
    /// file of that digest is held.
    ///
    /// # Errors
    /// [`RegistryError::Io`] or [`RegistryError::Db`] on storage failures.
    pub async fn piece_table(
        &self,
        d: &Digest,
    ) -> Result<Option<Arc<SignedPieceTable>>, RegistryError> {
        Ok(self.core().table(d).await?.map(|e| e.signed.clone()))
    }

    /// [`Seed::piece_table`] in its wire form (`SignedPieceTable::encode`).
    ///
    /// # Errors
    /// As [`Seed::piece_table`].
    pub async fn piece_table_bytes(&self, d: &Digest) -> Result<Option<Bytes>, RegistryError> {
        Ok(self.core().table(d).await?.map(|e| e.encoded.clone()))
    }

    /// Opens blob file `d` whatever repositories link it; returns it and its size.
    ///
    /// # Errors
    /// [`RegistryError::BlobUnknown`] if no such blob file is held.
    pub async fn blob_open(&self, d: &Digest) -> Result<(std::fs::File, u64), RegistryError> {
        let (core, d) = (self.core().clone(), d.clone());
        blocking(move || core.blobs.open_file(&d))
            .await?
            .ok_or(RegistryError::BlobUnknown)
    }

    /// The size of blob file `d`, whatever repositories link it.
    ///
    /// # Errors
    /// [`RegistryError::BlobUnknown`] if no such blob file is held.
    pub async fn blob_size(&self, d: &Digest) -> Result<u64, RegistryError> {
        let (core, d) = (self.core().clone(), d.clone());
        blocking(move || core.blobs.size(&d))
            .await?
            .ok_or(RegistryError::BlobUnknown)
    }

    /// Called by the registry when blob `d` became durable and linked: queues its table (skipped
    /// when the queue is full; on-demand computation covers it) and announces it.
    pub(crate) fn blob_landed(&self, d: &Digest) {
        match self.inner.queue.try_send(d.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(digest = %d, "piece table queue full; table left to on-demand")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!(digest = %d, "piece table worker has stopped")
            }
        }
        // No receiver is not an error: nobody provides blobs while no swarm runs.
        let _ = self.core().new_blobs.send(d.clone());
    }

    /// Called by garbage collection once blob `d`'s file is gone: forgets its cached table and
    /// open file and withdraws it from the swarm.
    pub(crate) fn blob_removed(&self, d: &Digest) {
        let core = self.core();
        lock(&core.tables).remove(d);
        lock(&core.files).remove(d);
        core.unsent.clear(d);
        let _ = core.removed_blobs.send(d.clone());
    }

    /// The counters, for the HTTP body streams.
    pub(crate) fn counters(&self) -> Arc<Counters> {
        self.core().counters.clone()
    }
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seed")
            .field("peer_id", &self.peer_id())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a flight found before hashing anything.
enum Found {
    /// No blob file of that digest.
    NotHeld,
    /// A valid stored table.
    Stored(Arc<TableEntry>),
    /// The blob is held but its table must be computed.
    Compute,
}

impl Core {
    /// The table of `d`: from memory, else from one shared flight (see the module docs).
    pub(crate) async fn table(
        self: &Arc<Self>,
        d: &Digest,
    ) -> Result<Option<Arc<TableEntry>>, RegistryError> {
        if let Some(e) = self.cached(d) {
            return Ok(Some(e));
        }
        self.flight(d).await.map_err(unshare)
    }

    fn cached(&self, d: &Digest) -> Option<Arc<TableEntry>> {
        lock(&self.tables).get(d).cloned()
    }

    fn remember(&self, d: &Digest, e: Arc<TableEntry>) {
        let weight = e.encoded.len() * 2;
        lock(&self.tables).insert(d.clone(), e, weight);
    }

    /// The running flight for `d`, or a new one. The flight holds only a weak reference while it
    /// hashes, so dropping the registry is not held up by a table in progress.
    fn flight(self: &Arc<Self>, d: &Digest) -> Flight {
        let mut flights = lock(&self.flights);
        if let Some(f) = flights.get(d) {
            return f.clone();
        }
        // A flight that just finished put its table here before leaving `flights`.
        if let Some(e) = self.cached(d) {
            return futures::future::ready(Ok(Some(e))).boxed().shared();
        }
        let task = tokio::spawn(fly(Arc::downgrade(self), d.clone()));
        let f = async move {
            task.await.unwrap_or_else(|e| {
                Err(Arc::new(RegistryError::Corrupt(format!(
                    "piece table task failed: {e}"
                ))))
            })
        }
        .boxed()
        .shared();
        flights.insert(d.clone(), f.clone());
        f
    }

    /// Whether the blob is held and whether a valid table of it is stored (blocking).
    fn find(&self, d: &Digest) -> Result<Found, RegistryError> {
        let Some(size) = self.blobs.size(d)? else {
            return Ok(Found::NotHeld);
        };
        let Some(encoded) = self.meta.piece_table(d)? else {
            return Ok(Found::Compute);
        };
        let valid = SignedPieceTable::decode(&encoded)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                s.verify(Some(&self.peer_id)).map_err(|e| e.to_string())?;
                let t = &s.table;
                // Any piece size is fine: nodes may already hold pieces cut by this table.
                if &t.digest != d || t.size != size {
                    return Err("table does not describe the blob file".into());
                }
                Ok(s)
            });
        match valid {
            Ok(signed) => Ok(Found::Stored(Arc::new(TableEntry {
                signed: Arc::new(signed),
                encoded,
            }))),
            Err(reason) => {
                tracing::warn!(digest = %d, %reason, "stored piece table unusable; recomputing");
                Ok(Found::Compute)
            }
        }
    }

    /// Blob file `d`, opened once and shared (the transfer server reads it with positioned reads).
    pub(crate) async fn file(
        self: &Arc<Self>,
        d: &Digest,
    ) -> Result<Option<Arc<std::fs::File>>, RegistryError> {
        if let Some(f) = lock(&self.files).get(d).cloned() {
            return Ok(Some(f));
        }
        let (core, d2) = (self.clone(), d.clone());
        let Some((file, _)) = blocking(move || core.blobs.open_file(&d2)).await? else {
            return Ok(None);
        };
        let file = Arc::new(file);
        lock(&self.files).insert(d.clone(), file.clone(), 1);
        Ok(Some(file))
    }

    /// Bytes of `d` are about to leave the gateway: it is no longer unsent.
    pub(crate) fn note_sent(&self, d: &Digest) {
        self.unsent.clear(d);
    }

    /// Accounting for the transfer server.
    pub(crate) fn served(&self, bytes: u64) {
        self.counters
            .swarm_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Every blob file under `blobs/<algorithm>/<2 hex>/<hex>` (blocking). Stray files that do
    /// not name a digest at exactly their own path are skipped.
    fn held_digests(&self) -> Result<Vec<Digest>, RegistryError> {
        self.blobs.list()
    }
}

/// Removes a flight from the map when its task ends, however it ends (even by panic).
struct FlightGuard {
    core: Weak<Core>,
    digest: Digest,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            lock(&core.flights).remove(&self.digest);
        }
    }
}

/// The body of a flight: find a stored table or compute, sign and store one.
async fn fly(weak: Weak<Core>, d: Digest) -> FlightResult {
    let _guard = FlightGuard {
        core: weak.clone(),
        digest: d.clone(),
    };
    let stopped = || {
        Arc::new(RegistryError::Corrupt(
            "the gateway is shutting down".into(),
        ))
    };
    let core = weak.upgrade().ok_or_else(stopped)?;
    let (c, d2) = (core.clone(), d.clone());
    let keypair = match blocking(move || c.find(&d2)).await? {
        Found::NotHeld => return Ok(None),
        Found::Stored(entry) => {
            core.remember(&d, entry.clone());
            return Ok(Some(entry));
        }
        Found::Compute => core.keypair.clone(),
    };
    let path = core.blobs.path(&d);
    drop(core);
    let d2 = d.clone();
    let Some((signed, encoded)) = blocking(move || table::compute(&path, &d2, &keypair)).await?
    else {
        return Ok(None);
    };
    let core = weak.upgrade().ok_or_else(stopped)?;
    let entry = Arc::new(TableEntry {
        signed: Arc::new(signed),
        encoded: Bytes::from(encoded),
    });
    let (c, d2, e) = (core.clone(), d.clone(), entry.clone());
    blocking(move || c.meta.put_piece_table(&d2, &e.encoded)).await?;
    core.counters
        .tables_computed
        .fetch_add(1, Ordering::Relaxed);
    core.remember(&d, entry.clone());
    tracing::debug!(digest = %d, pieces = entry.signed.table.piece_count(), "piece table computed");
    Ok(Some(entry))
}

/// The background worker: computes the table of each queued digest, one at a time, until the
/// queue's sender (the last [`Seed`]) is gone.
async fn table_worker(weak: Weak<Core>, mut rx: mpsc::Receiver<Digest>) {
    while let Some(d) = rx.recv().await {
        let flight = match weak.upgrade() {
            Some(core) if core.cached(&d).is_some() => continue,
            Some(core) => core.flight(&d),
            None => return,
        };
        if let Err(e) = flight.await {
            tracing::warn!(digest = %d, error = %e, "computing a piece table failed");
        }
    }
}

#[cfg(test)]
mod tests;
