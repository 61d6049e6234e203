//! Tag records and manifests between peers, so a node resolves tags while the gateway is
//! unreachable (spec §6.4).
//!
//! [`Meta`] joins the node's [`TagStore`] and the swarm:
//! - *Learning.* [`Meta::learn_record`] keeps a record the gateway signed (verified against the
//!   gateway's peer id; an older sequence number never replaces a newer one);
//!   [`Meta::learn_manifest`] keeps manifest bytes that hash to their digest. What is kept for
//!   the first time is announced in the DHT under a key of its own ([`tag_key`],
//!   [`manifest_key`]), so a node can find holders even after its idle connections closed.
//! - *Asking.* [`Meta::record_from_peers`] and [`Meta::manifest_from_peers`] ask up to
//!   [`MAX_PEERS_ASKED`] peers over `/flotilla/meta/1.0.0` (module `wire`): first the connected
//!   ones, then, if none had it, providers found in the DHT. A record must verify and name the
//!   tag asked for; the highest sequence number wins, the local one included. A manifest must
//!   hash to the digest asked for; the first that does wins. Each peer gets
//!   [`ASK_TIMEOUT`], the DHT lookup [`LOOKUP_TIMEOUT`]. The gateway's peer is never asked (it
//!   does not speak the protocol, and is the one unreachable).
//! - *Answering.* [`Meta::serve`] answers peers' requests from the store: one request per
//!   stream, at most [`MAX_INBOUND`] at once (more are dropped), [`SERVE_TIMEOUT`] each, each
//!   inbound peer first passing the `admit` check (the fleet-membership gate).

mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_protocol::tagrecord::SignedTagRecord;
use flotilla_protocol::{Digest, RepoName, Tag};
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::io::{AsyncRead, AsyncWrite};
use futures::stream::FuturesUnordered;
use libp2p::kad::RecordKey;
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::ports::{NetworkError, PeerStream};
use crate::swarm::SwarmHandle;
use crate::tags::{CachedManifest, Offer, TagStore, TagStoreError};
pub use wire::{Answer, Request, WireError};

/// Protocol name of the meta streams.
pub const META_PROTOCOL: &str = "/flotilla/meta/1.0.0";
/// Most peers asked for one record or manifest.
pub const MAX_PEERS_ASKED: usize = 8;
/// Limit on one peer's answer, opening the stream included.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(8);
/// Limit on the DHT lookup of holders.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Limit on answering one inbound stream.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most inbound streams answered at once.
pub const MAX_INBOUND: usize = 64;
/// Announcements waiting for the swarm; beyond it they are dropped (and made at the next start).
const ANNOUNCE_QUEUE: usize = 256;

/// Why something could not be learned.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A record that does not verify against the gateway.
    #[error("tag record refused: {0}")]
    BadRecord(#[from] flotilla_protocol::tagrecord::TagRecordError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] TagStoreError),
    /// A blocking task failed.
    #[error("tag store task failed: {0}")]
    Task(String),
}

/// The DHT key under which holders of `repo:tag`'s record announce themselves.
pub fn tag_key(repo: &RepoName, tag: &Tag) -> RecordKey {
    RecordKey::new(&format!("/flotilla/tag/{repo}:{tag}"))
}

/// The DHT key under which holders of manifest `d` announce themselves (never a blob's key:
/// those are binary CIDs).
pub fn manifest_key(d: &Digest) -> RecordKey {
    RecordKey::new(&format!("/flotilla/manifest/{d}"))
}

/// Decides whether an inbound peer may be answered (the node passes its fleet-membership
/// check, which may wait briefly for a handshake in flight).
pub type Admit = Arc<dyn Fn(PeerId) -> BoxFuture<'static, bool> + Send + Sync>;

/// Answers every peer (for swarms without a membership check, and tests).
pub fn admit_all() -> Admit {
    Arc::new(|_| Box::pin(futures::future::ready(true)))
}

/// What [`Meta`] needs of the swarm (the node's [`SwarmHandle`]; a fake in tests).
pub trait MetaNetwork: Send + Sync + 'static {
    /// This node.
    fn local_peer_id(&self) -> PeerId;
    /// Peers with an open connection.
    fn connected_peers(&self) -> BoxFuture<'static, Vec<PeerId>>;
    /// Providers of `key` (empty on failure).
    fn find_providers(&self, key: RecordKey, limit: usize) -> BoxFuture<'static, Vec<PeerId>>;
    /// A meta stream to `peer`.
    fn open_meta(&self, peer: PeerId) -> BoxFuture<'static, Result<PeerStream, NetworkError>>;
    /// Announces this node under `key` (best effort).
    fn provide(&self, key: RecordKey) -> BoxFuture<'static, ()>;
    /// Withdraws an announcement (best effort).
    fn unprovide(&self, key: RecordKey) -> BoxFuture<'static, ()>;
}

impl MetaNetwork for SwarmHandle {
    fn local_peer_id(&self) -> PeerId {
        SwarmHandle::local_peer_id(self)
    }

    fn connected_peers(&self) -> BoxFuture<'static, Vec<PeerId>> {
        let this = self.clone();
        Box::pin(async move { this.connected_peers().await.unwrap_or_default() })
    }

    fn find_providers(&self, key: RecordKey, limit: usize) -> BoxFuture<'static, Vec<PeerId>> {
        let this = self.clone();
        Box::pin(async move {
            this.find_key_providers(key, limit)
                .await
                .unwrap_or_default()
        })
    }

    fn open_meta(&self, peer: PeerId) -> BoxFuture<'static, Result<PeerStream, NetworkError>> {
        let this = self.clone();
        Box::pin(async move {
            this.open_protocol_stream(peer, StreamProtocol::new(META_PROTOCOL))
                .await
        })
    }

    fn provide(&self, key: RecordKey) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            if let Err(e) = this.provide_key(key).await {
                debug!(error = %e, "cannot announce a tag record or manifest");
            }
        })
    }

    fn unprovide(&self, key: RecordKey) -> BoxFuture<'static, ()> {
        let this = self.clone();
        Box::pin(async move {
            let _ = this.unprovide_key(key).await;
        })
    }
}

/// A change of what this node announces.
enum Announce {
    Provide(RecordKey),
    Withdraw(RecordKey),
}

/// The node's tag records and manifests, shared with and asked of peers (cheap to clone).
#[derive(Clone)]
pub struct Meta {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<TagStore>,
    net: Arc<dyn MetaNetwork>,
    announce: mpsc::Sender<Announce>,
}

impl Meta {
    /// A service over `store` and `net`, and the task that announces what is kept (everything
    /// already held first, as after a restart).
    pub fn start(store: Arc<TagStore>, net: Arc<dyn MetaNetwork>) -> (Meta, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(ANNOUNCE_QUEUE);
        let task = tokio::spawn(announcer(store.clone(), net.clone(), rx));
        let meta = Meta {
            inner: Arc::new(Inner {
                store,
                net,
                announce: tx,
            }),
        };
        (meta, task)
    }

    /// The store.
    pub fn store(&self) -> &Arc<TagStore> {
        &self.inner.store
    }

    fn announce(&self, a: Announce) {
        // A full queue only delays the announcement to the next start; nothing waits on it.
        let _ = self.inner.announce.try_send(a);
    }

    /// Keeps `signed` if it verifies against `gateway` and is newer than the record held.
    ///
    /// # Errors
    /// [`MetaError::BadRecord`] if it does not verify; [`MetaError::Store`].
    pub fn learn_record(
        &self,
        signed: &SignedTagRecord,
        gateway: &PeerId,
    ) -> Result<Offer, MetaError> {
        signed.verify(gateway)?;
        let store = &self.inner.store;
        let offer = store.offer_record(signed)?;
        store.set_gateway_peer(gateway)?;
        if offer == (Offer::Stored { first: true }) {
            self.announce(Announce::Provide(tag_key(
                &signed.record.repo,
                &signed.record.tag,
            )));
        }
        Ok(offer)
    }

    /// Keeps manifest `bytes` under `d` if they hash to it (checked off the async threads).
    ///
    /// # Errors
    /// [`MetaError::Store`] (`Refused` for bytes that are not `d`'s or too large).
    pub async fn learn_manifest(
        &self,
        d: &Digest,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), MetaError> {
        let (store, d2, mt) = (self.inner.store.clone(), d.clone(), media_type.to_owned());
        let put = tokio::task::spawn_blocking(move || store.put_manifest(&d2, &mt, &bytes))
            .await
            .map_err(|e| MetaError::Task(e.to_string()))??;
        if put.new {
            self.announce(Announce::Provide(manifest_key(d)));
        }
        for gone in put.evicted {
            self.announce(Announce::Withdraw(manifest_key(&gone)));
        }
        Ok(())
    }

    /// Candidates to ask: connected peers first, then (if `more` allows) DHT providers of `key`,
    /// never this node, the gateway or a peer already in `asked`.
    async fn candidates(
        &self,
        key: Option<RecordKey>,
        gateway: Option<&PeerId>,
        asked: &[PeerId],
    ) -> Vec<PeerId> {
        let net = &self.inner.net;
        let me = net.local_peer_id();
        let found = match key {
            None => net.connected_peers().await,
            Some(key) => {
                tokio::time::timeout(LOOKUP_TIMEOUT, net.find_providers(key, MAX_PEERS_ASKED + 1))
                    .await
                    .unwrap_or_default()
            }
        };
        let mut out: Vec<PeerId> = Vec::new();
        for p in found {
            if p != me && Some(&p) != gateway && !asked.contains(&p) && !out.contains(&p) {
                out.push(p);
            }
        }
        out.truncate(MAX_PEERS_ASKED.saturating_sub(asked.len()));
        out
    }

    /// Asks `peers` at once; answers arrive as they come.
    fn ask_all(
        &self,
        peers: &[PeerId],
        request: &Request,
    ) -> FuturesUnordered<BoxFuture<'static, (PeerId, Result<Answer, String>)>> {
        peers
            .iter()
            .map(|&peer| {
                let net = self.inner.net.clone();
                let request = request.clone();
                let fut: BoxFuture<'static, _> = Box::pin(async move {
                    let answer = tokio::time::timeout(ASK_TIMEOUT, async {
                        let mut stream = net.open_meta(peer).await.map_err(|e| e.to_string())?;
                        wire::write_request(&mut stream, &request)
                            .await
                            .map_err(|e| e.to_string())?;
                        wire::read_answer(&mut stream)
                            .await
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_owned()));
                    (peer, answer)
                });
                fut
            })
            .collect()
    }

    /// The newest record of `repo:tag` this node holds or its peers give (verified against
    /// `gateway`); what peers gave is kept if newer.
    pub async fn record_from_peers(
        &self,
        repo: &RepoName,
        tag: &Tag,
        gateway: &PeerId,
    ) -> Option<SignedTagRecord> {
        let local = self.inner.store.record(repo, tag).ok().flatten();
        let request = Request::TagRecord(repo.clone(), tag.clone());
        let mut asked = Vec::new();
        let mut got_any = local.is_some();
        for key in [None, Some(tag_key(repo, tag))] {
            // Providers are looked up only when no connected peer knew the tag.
            if key.is_some() && got_any {
                break;
            }
            let peers = self.candidates(key, Some(gateway), &asked).await;
            asked.extend_from_slice(&peers);
            let mut answers = self.ask_all(&peers, &request);
            while let Some((peer, answer)) = answers.next().await {
                match answer {
                    Ok(Answer::TagRecord(signed))
                        if signed.record.repo == *repo && signed.record.tag == *tag =>
                    {
                        match self.learn_record(&signed, gateway) {
                            Ok(_) => got_any = true,
                            Err(e) => debug!(%peer, error = %e, "refused a tag record"),
                        }
                    }
                    Ok(Answer::NotHeld) => {}
                    Ok(_) => debug!(%peer, "answered another tag or kind"),
                    Err(e) => debug!(%peer, error = %e, "no tag record"),
                }
            }
        }
        // The store kept the newest of everything seen.
        self.inner.store.record(repo, tag).ok().flatten()
    }

    /// Manifest `d`, from this node's store or else from the first peer whose bytes hash to it
    /// (kept here from then on).
    pub async fn manifest_from_peers(
        &self,
        d: &Digest,
        gateway: Option<&PeerId>,
    ) -> Option<CachedManifest> {
        if let Ok(Some(m)) = self.inner.store.manifest(d) {
            return Some(m);
        }
        let request = Request::Manifest(d.clone());
        let mut asked = Vec::new();
        for key in [None, Some(manifest_key(d))] {
            let peers = self.candidates(key, gateway, &asked).await;
            asked.extend_from_slice(&peers);
            let mut answers = self.ask_all(&peers, &request);
            while let Some((peer, answer)) = answers.next().await {
                match answer {
                    Ok(Answer::Manifest(m)) => {
                        match self.learn_manifest(d, &m.media_type, m.bytes.clone()).await {
                            Ok(()) => return Some(m),
                            Err(e) => debug!(%peer, error = %e, "refused a manifest"),
                        }
                    }
                    Ok(Answer::NotHeld) => {}
                    Ok(_) => debug!(%peer, "answered another kind"),
                    Err(e) => debug!(%peer, error = %e, "no manifest"),
                }
            }
        }
        None
    }

    /// Answers peers' requests from the store until `incoming` ends (see the module docs).
    pub async fn serve<S, T>(self, mut incoming: S, admit: Admit)
    where
        S: futures::Stream<Item = (PeerId, T)> + Unpin,
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let slots = Arc::new(Semaphore::new(MAX_INBOUND));
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "too many meta streams; dropping one");
                continue;
            };
            let this = self.clone();
            let admitted = admit(peer);
            tokio::spawn(async move {
                let _slot = slot;
                let served = tokio::time::timeout(SERVE_TIMEOUT, async {
                    if !admitted.await {
                        debug!(%peer, "meta stream from a peer that is not a fleet member");
                        return Ok(());
                    }
                    this.answer(stream).await
                })
                .await;
                match served {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "meta stream failed"),
                    Err(_) => debug!(%peer, "meta stream timed out"),
                }
            });
        }
    }

    async fn answer<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: T,
    ) -> Result<(), WireError> {
        let request = wire::read_request(&mut stream).await?;
        let store = &self.inner.store;
        let answer = match request {
            Request::TagRecord(repo, tag) => match store.record(&repo, &tag) {
                Ok(Some(signed)) => Answer::TagRecord(signed),
                _ => Answer::NotHeld,
            },
            Request::Manifest(d) => match store.manifest(&d) {
                Ok(Some(m)) => Answer::Manifest(m),
                _ => Answer::NotHeld,
            },
        };
        wire::write_answer(&mut stream, &answer).await
    }
}

/// Announces everything held, then each change as it comes, until every [`Meta`] is gone.
async fn announcer(
    store: Arc<TagStore>,
    net: Arc<dyn MetaNetwork>,
    mut changes: mpsc::Receiver<Announce>,
) {
    if let Ok(names) = store.record_names() {
        for (repo, tag) in names {
            net.provide(tag_key(&repo, &tag)).await;
        }
    }
    for d in store.manifest_digests() {
        net.provide(manifest_key(&d)).await;
    }
    while let Some(change) = changes.recv().await {
        match change {
            Announce::Provide(key) => net.provide(key).await,
            Announce::Withdraw(key) => net.unprovide(key).await,
        }
    }
}
