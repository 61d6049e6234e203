//! The cloneable handle to the swarm task, and the stream of inbound piece-transfer streams.
//!
//! Every request is a [`Command`] on a bounded queue with a one-shot reply; the only things read
//! without the task are the peer id, the listen addresses (a watch channel) and the routing table
//! size (an atomic), which the task keeps current.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_protocol::Digest;
use flotilla_protocol::membership::MemberCertificate;
use flotilla_protocol::site::site_key;
use futures::future::BoxFuture;
use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::sync::{mpsc, oneshot, watch};

use super::membership::Members;
use super::{OPEN_STREAM_TIMEOUT, SwarmError};
use crate::ports::{Network, NetworkError, PeerStream};

/// A request to the swarm task.
pub(super) enum Command {
    FindProviders {
        key: RecordKey,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>>,
    },
    /// Resolves once a connection to the peer exists (dialing every known address).
    Connect {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Provide {
        key: RecordKey,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    Unprovide {
        key: RecordKey,
        reply: oneshot::Sender<()>,
    },
    IsProviding {
        key: RecordKey,
        reply: oneshot::Sender<bool>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<()>,
    },
    Connections {
        reply: oneshot::Sender<Vec<(PeerId, Multiaddr)>>,
    },
    Bootstrap {
        reply: oneshot::Sender<Result<usize, SwarmError>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    /// The fleet key became known: the fleet's peer joins the routing table.
    SetFleet {
        fleet: PeerId,
        reply: oneshot::Sender<()>,
    },
    /// A new own certificate: keep it and present it to every connected peer.
    SetCertificate {
        cert: MemberCertificate,
        reply: oneshot::Sender<Result<(), SwarmError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The state shared by all clones of a handle.
/// Kademlia work this node did: the queries it started, by kind, and the requests of other
/// nodes it answered (each walks the routing table: the DHT's cost, SPEC §5.1). Not counted:
/// the re-publication kad runs by itself.
#[derive(Debug, Default)]
pub struct DhtCounters {
    /// Provider lookups (`get_providers`), one per blob and site key looked up.
    pub provider_lookups: AtomicU64,
    /// Announcements (`start_providing`: a walk to the closest nodes, then a record to each).
    pub announcements: AtomicU64,
    /// Bootstraps (a walk towards this node's own id).
    pub bootstraps: AtomicU64,
    /// Requests from other nodes answered (lookups, walks, records).
    pub answered: AtomicU64,
}

impl DhtCounters {
    /// `(provider lookups, announcements, bootstraps, answered)` now.
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        (
            self.provider_lookups.load(Ordering::Relaxed),
            self.announcements.load(Ordering::Relaxed),
            self.bootstraps.load(Ordering::Relaxed),
            self.answered.load(Ordering::Relaxed),
        )
    }
}

struct Shared {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    control: libp2p_stream::Control,
    stream_protocol: StreamProtocol,
    listen_addrs: watch::Receiver<Vec<Multiaddr>>,
    known_peers: Arc<AtomicUsize>,
    dht: Arc<DhtCounters>,
    members: Arc<Members>,
    /// This node's site label (`SwarmConfig::site`).
    site: Option<Arc<str>>,
}

/// A cheap, cloneable handle to the swarm task.
#[derive(Clone)]
pub struct SwarmHandle {
    shared: Arc<Shared>,
}

/// Inbound piece-transfer streams, with the peer that opened each. Ends when the swarm stops.
/// Streams that arrive while this is not polled wait in a bounded queue; beyond it they are
/// refused.
pub struct Incoming {
    pub(super) streams: mpsc::Receiver<(PeerId, PeerStream)>,
}

impl futures::Stream for Incoming {
    type Item = (PeerId, PeerStream);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.streams.poll_recv(cx)
    }
}

/// The DHT key of a blob: the bytes of its CIDv1.
pub(super) fn dht_key(digest: &Digest) -> RecordKey {
    RecordKey::new(&digest.to_cid().to_bytes())
}

impl SwarmHandle {
    pub(super) fn new(
        commands: mpsc::Sender<Command>,
        local_peer_id: PeerId,
        control: libp2p_stream::Control,
        stream_protocol: StreamProtocol,
        listen_addrs: watch::Receiver<Vec<Multiaddr>>,
        known_peers: Arc<AtomicUsize>,
        members: Arc<Members>,
    ) -> Self {
        SwarmHandle {
            shared: Arc::new(Shared {
                commands,
                local_peer_id,
                control,
                stream_protocol,
                listen_addrs,
                known_peers,
                dht: Arc::default(),
                members,
                site: None,
            }),
        }
    }

    /// Shares `dht` with the swarm task, which counts into it; only while the handle is the
    /// only one (right after `new`).
    pub(super) fn with_dht(mut self, dht: Arc<DhtCounters>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.dht = dht;
        }
        self
    }

    /// Sets the site label; only while the handle is the only one (right after `new`).
    pub(super) fn with_site(mut self, site: Option<String>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.site = site.map(Arc::from);
        }
        self
    }

    /// The keys this node announces `digest` under: the blob's, and its site's if it has one.
    fn provider_keys(&self, digest: &Digest) -> Vec<RecordKey> {
        let mut keys = vec![dht_key(digest)];
        if let Some(site) = &self.shared.site {
            keys.push(RecordKey::new(&site_key(digest, site)));
        }
        keys
    }

    /// Sends a command and waits for its reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SwarmError> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(command(reply))
            .await
            .map_err(|_| SwarmError::Stopped)?;
        answer.await.map_err(|_| SwarmError::Stopped)
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    /// The addresses the swarm listens on, each ending in `/p2p/<local peer id>` (what another
    /// node needs as a bootstrap address).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen_addrs.borrow().clone()
    }

    /// Tells the swarm where `peer` can be reached (kept in the routing table and the address
    /// book used for dials).
    ///
    /// # Errors
    /// [`SwarmError::Stopped`].
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), SwarmError> {
        self.ask(|reply| Command::AddAddress { peer, addr, reply })
            .await
    }

    /// The peers with at least one open connection.
    ///
    /// # Errors
    /// [`SwarmError::Stopped`].
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, SwarmError> {
        let mut peers: Vec<PeerId> = self
            .connections()
            .await?
            .into_iter()
            .map(|(peer, _)| peer)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        Ok(peers)
    }

    /// Every open connection: the peer and its address (which says QUIC or TCP).
    ///
    /// # Errors
    /// [`SwarmError::Stopped`].
    pub async fn connections(&self) -> Result<Vec<(PeerId, Multiaddr)>, SwarmError> {
        self.ask(|reply| Command::Connections { reply }).await
    }

    /// Runs a Kademlia bootstrap (a lookup of the own key, then of random keys in each bucket)
    /// and returns the routing table size once it finished.
    ///
    /// # Errors
    /// [`SwarmError::NoKnownPeers`] when there is nobody to ask, [`SwarmError::Query`] when it
    /// timed out, [`SwarmError::Stopped`].
    pub async fn bootstrap(&self) -> Result<usize, SwarmError> {
        self.ask(|reply| Command::Bootstrap { reply }).await?
    }

    /// Closes every connection to `peer` and removes it from the routing table (e.g. a peer
    /// banned for sending bad pieces). It may still connect again; refusing it is the caller's
    /// business.
    ///
    /// # Errors
    /// [`SwarmError::Stopped`].
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), SwarmError> {
        self.ask(|reply| Command::Disconnect { peer, reply }).await
    }

    /// Whether the local store lists this node as a provider of `digest`.
    ///
    /// # Errors
    /// [`SwarmError::Stopped`].
    pub async fn is_providing(&self, digest: &Digest) -> Result<bool, SwarmError> {
        let key = dht_key(digest);
        self.ask(|reply| Command::IsProviding { key, reply }).await
    }

    /// The libp2p-stream control (tests open raw streams with it).
    #[cfg(test)]
    pub(super) fn control(&self) -> libp2p_stream::Control {
        self.shared.control.clone()
    }

    /// Whether `peer` is a fleet member here now: its certificate verified (or it is the fleet's
    /// own peer, or the swarm is open). Cheap (a read lock, no task round trip); use it to gate
    /// any inbound protocol. A peer whose connection is brand new may still be in its handshake:
    /// [`SwarmHandle::wait_member`] waits for that.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.shared.members.is_member(peer)
    }

    /// Like [`SwarmHandle::is_member`], but waits up to `limit` for a handshake in flight.
    pub async fn wait_member(&self, peer: &PeerId, limit: Duration) -> bool {
        self.shared.members.wait_member(peer, limit).await
    }

    /// Takes the gateway's latest revocation list (already verified by the caller): the peers
    /// on it stop being members here at once and are disconnected within a second (SPEC
    /// §5.3). Returns the newly revoked ones.
    pub fn set_revoked(&self, peers: &[PeerId]) -> Vec<PeerId> {
        self.shared.members.set_revoked(peers)
    }

    /// Whether the gateway's revocation list, as last set, names `peer`.
    pub fn is_revoked(&self, peer: &PeerId) -> bool {
        self.shared.members.is_revoked(peer)
    }

    /// The Kademlia work this node did so far.
    pub fn dht_counters(&self) -> &DhtCounters {
        &self.shared.dht
    }

    /// Whether membership is checked at all (`false` for an open swarm).
    pub fn membership_enforced(&self) -> bool {
        self.shared.members.enforced()
    }

    /// The fleet key's peer id, once known.
    pub fn fleet(&self) -> Option<PeerId> {
        self.shared.members.fleet()
    }

    /// This node's current membership certificate.
    pub fn certificate(&self) -> Option<MemberCertificate> {
        self.shared.members.certificate()
    }

    /// Sets the fleet key (the gateway's peer id, learned from its `/flotilla/v1/info`). A
    /// different key than before voids every verified peer and this node's certificate.
    ///
    /// # Errors
    /// [`SwarmError::Stopped`].
    pub async fn set_fleet(&self, fleet: PeerId) -> Result<(), SwarmError> {
        self.ask(|reply| Command::SetFleet { fleet, reply }).await
    }

    /// Takes a (new or renewed) membership certificate for this node and presents it to every
    /// connected peer.
    ///
    /// # Errors
    /// [`SwarmError::Membership`] if it does not name this node, is not signed by the fleet key
    /// or is not valid now; [`SwarmError::Stopped`].
    pub async fn set_certificate(&self, cert: MemberCertificate) -> Result<(), SwarmError> {
        self.ask(|reply| Command::SetCertificate { cert, reply })
            .await?
    }

    /// Stops the swarm task (closing every connection) and waits until it has stopped.
    /// Idempotent.
    ///
    /// # Errors
    /// None in practice: a task that already stopped is what was asked for.
    pub async fn shutdown(&self) -> Result<(), SwarmError> {
        match self.ask(|reply| Command::Shutdown { reply }).await {
            Ok(()) | Err(SwarmError::Stopped) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn connect(&self, peer: PeerId) -> Result<(), NetworkError> {
        match self.ask(|reply| Command::Connect { peer, reply }).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(NetworkError::Unreachable { peer, reason }),
            Err(_) => Err(NetworkError::Stopped),
        }
    }

    async fn open(&self, peer: PeerId) -> Result<PeerStream, NetworkError> {
        self.open_with(peer, self.shared.stream_protocol.clone())
            .await
    }

    /// Opens a stream of another protocol than the piece transfer (e.g. `/flotilla/meta/1.0.0`)
    /// to `peer`, dialing if needed, within [`OPEN_STREAM_TIMEOUT`].
    ///
    /// # Errors
    /// [`NetworkError::Unreachable`] or [`NetworkError::Stopped`].
    pub async fn open_protocol_stream(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<PeerStream, NetworkError> {
        self.open_with(peer, protocol).await
    }

    /// Inbound streams of another protocol than the piece transfer. Only one acceptor per
    /// protocol may exist.
    ///
    /// # Errors
    /// [`SwarmError::Build`] if the protocol is already accepted.
    pub fn accept_protocol(
        &self,
        protocol: StreamProtocol,
    ) -> Result<libp2p_stream::IncomingStreams, SwarmError> {
        self.shared
            .control
            .clone()
            .accept(protocol)
            .map_err(|e| SwarmError::Build(e.to_string()))
    }

    /// Providers of an arbitrary DHT key (not a blob's), at most `limit`.
    ///
    /// # Errors
    /// [`NetworkError::Query`] or [`NetworkError::Stopped`].
    pub async fn find_key_providers(
        &self,
        key: RecordKey,
        limit: usize,
    ) -> Result<Vec<PeerId>, NetworkError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.ask(|reply| Command::FindProviders { key, limit, reply })
            .await
            .or_else(stopped)?
    }

    /// Announces this node as a provider of an arbitrary DHT key (re-published like blobs).
    ///
    /// # Errors
    /// [`NetworkError::Query`] or [`NetworkError::Stopped`].
    pub async fn provide_key(&self, key: RecordKey) -> Result<(), NetworkError> {
        self.ask(|reply| Command::Provide { key, reply })
            .await
            .or_else(stopped)?
    }

    /// Withdraws [`SwarmHandle::provide_key`].
    ///
    /// # Errors
    /// [`NetworkError::Stopped`].
    pub async fn unprovide_key(&self, key: RecordKey) -> Result<(), NetworkError> {
        self.ask(|reply| Command::Unprovide { key, reply })
            .await
            .or_else(stopped)
    }

    async fn open_with(
        &self,
        peer: PeerId,
        protocol: StreamProtocol,
    ) -> Result<PeerStream, NetworkError> {
        if peer == self.shared.local_peer_id {
            return Err(NetworkError::Unreachable {
                peer,
                reason: "that is this node".to_owned(),
            });
        }
        let attempt = async {
            // libp2p-stream would dial by itself, but only with the addresses Kademlia knows; the
            // task also has the address book (e.g. providers met only in a lookup).
            self.connect(peer).await?;
            let members = &self.shared.members;
            if !members.wait_handshake(&peer).await {
                return Err(NetworkError::Unreachable {
                    peer,
                    reason: "not a fleet member".to_owned(),
                });
            }
            let mut control = self.shared.control.clone();
            let stream = control.open_stream(peer, protocol).await.map_err(|e| {
                NetworkError::Unreachable {
                    peer,
                    reason: e.to_string(),
                }
            })?;
            Ok(Box::new(stream) as PeerStream)
        };
        match tokio::time::timeout(OPEN_STREAM_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err(NetworkError::Unreachable {
                peer,
                reason: format!("no stream within {OPEN_STREAM_TIMEOUT:?}"),
            }),
        }
    }
}

fn stopped<T>(_: SwarmError) -> Result<T, NetworkError> {
    Err(NetworkError::Stopped)
}

impl Network for SwarmHandle {
    fn local_peer_id(&self) -> PeerId {
        self.shared.local_peer_id
    }

    /// Looks providers up for at most [`FIND_PROVIDERS_TIMEOUT`](super::FIND_PROVIDERS_TIMEOUT),
    /// answering `limit` holders at once, else what turned up within 0.5 s of the first one (a
    /// dead peer in the routing table would hold the query for its dial timeout); their
    /// addresses from the answers are kept, so [`Network::open_stream`] can reach them.
    fn find_providers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, NetworkError>> {
        let this = self.clone();
        let key = dht_key(digest);
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            this.ask(|reply| Command::FindProviders { key, limit, reply })
                .await
                .or_else(stopped)?
        })
    }

    fn open_stream(&self, peer: PeerId) -> BoxFuture<'static, Result<PeerStream, NetworkError>> {
        let this = self.clone();
        Box::pin(async move { this.open(peer).await })
    }

    /// Resolves once the ADD_PROVIDER messages were sent to the closest peers (Kademlia does
    /// not wait for them to be stored: a lookup right after may still miss this node). With a
    /// site, the blob is announced under its site key too, at the same time.
    fn provide(&self, digest: &Digest) -> BoxFuture<'static, Result<(), NetworkError>> {
        let this = self.clone();
        let keys = self.provider_keys(digest);
        Box::pin(async move {
            let announced = futures::future::join_all(keys.into_iter().map(|key| {
                let this = this.clone();
                async move {
                    this.ask(|reply| Command::Provide { key, reply })
                        .await
                        .or_else(stopped)?
                }
            }))
            .await;
            announced.into_iter().collect()
        })
    }

    /// Stops re-publishing (both keys); the records already sent live on at the other peers
    /// until their TTL.
    fn unprovide(&self, digest: &Digest) -> BoxFuture<'static, Result<(), NetworkError>> {
        let this = self.clone();
        let keys = self.provider_keys(digest);
        Box::pin(async move {
            for key in keys {
                this.ask(|reply| Command::Unprovide { key, reply })
                    .await
                    .or_else(stopped)?;
            }
            Ok(())
        })
    }

    fn site(&self) -> Option<&str> {
        self.shared.site.as_deref()
    }

    fn find_site_providers(
        &self,
        digest: &Digest,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, NetworkError>> {
        let Some(site) = self.shared.site.clone() else {
            return Box::pin(std::future::ready(Ok(Vec::new())));
        };
        let this = self.clone();
        let key = RecordKey::new(&site_key(digest, &site));
        Box::pin(async move {
            if limit == 0 {
                return Ok(Vec::new());
            }
            this.ask(|reply| Command::FindProviders { key, limit, reply })
                .await
                .or_else(stopped)?
        })
    }

    fn known_peers(&self) -> usize {
        self.shared.known_peers.load(Ordering::Relaxed)
    }
}
