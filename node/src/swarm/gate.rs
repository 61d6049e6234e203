//! Where the swarm task enforces membership (SPEC §5.3): presenting this node's certificate on
//! new connections, letting verified peers into the routing table, holding the provider records
//! of peers whose handshake is in flight, disconnecting strangers after the grace period, and
//! refusing strangers' inbound piece streams with an Error frame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_protocol::wire::{self, ErrorCode, Frame};
use futures::AsyncWriteExt as _;
use libp2p::PeerId;
use libp2p::kad::ProviderRecord;
use tokio::sync::{Semaphore, mpsc};

use super::membership::{self, Members};
use super::task::Task;
use crate::ports::PeerStream;

/// Peers whose provider records are held while their handshake runs.
const MAX_PENDING_PEERS: usize = 1024;
/// Records held per such peer; more are dropped (the peer re-announces every 30 min).
const MAX_PENDING_RECORDS: usize = 64;
/// Certificate pushes in flight at once; beyond that a connection goes without (the peer then
/// drops it after its grace period and the next connection tries again).
pub(super) const MAX_PUSHES: usize = 256;
/// Inbound piece streams waiting for their peer's handshake (or being refused) at once; more
/// are dropped unanswered.
const MAX_GATED_STREAMS: usize = 64;
/// Attempts at presenting the certificate on one connection, the first retry after
/// [`PUSH_RETRY`], doubling.
const PUSH_ATTEMPTS: u32 = 5;
const PUSH_RETRY: Duration = Duration::from_millis(100);
/// How long a refusal may take to go out.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The task's membership bookkeeping.
pub(super) struct Gate {
    pub(super) members: Arc<Members>,
    pub(super) control: libp2p_stream::Control,
    /// Peers verified by the handshake server, for the task to act on.
    pub(super) admitted: mpsc::Receiver<PeerId>,
    /// Connected peers that are not members, and since when.
    strangers: HashMap<PeerId, Instant>,
    /// ADD_PROVIDER records from peers whose handshake has not finished.
    pending: HashMap<PeerId, Vec<ProviderRecord>>,
    grace: Duration,
    pushes: Arc<Semaphore>,
}

impl Gate {
    pub(super) fn new(
        members: Arc<Members>,
        control: libp2p_stream::Control,
        admitted: mpsc::Receiver<PeerId>,
        grace: Duration,
    ) -> Self {
        Gate {
            members,
            control,
            admitted,
            strangers: HashMap::new(),
            pending: HashMap::new(),
            grace,
            pushes: Arc::new(Semaphore::new(MAX_PUSHES)),
        }
    }
}

impl Task {
    pub(super) fn is_member(&self, peer: &PeerId) -> bool {
        self.gate.members.is_member(peer)
    }

    /// A first connection to `peer`: present this node's certificate, and start its grace
    /// period unless it already counts as a member.
    pub(super) fn on_first_connection(&mut self, peer: PeerId) {
        if !self.gate.members.enforced() {
            return;
        }
        if !self.is_member(&peer) {
            self.gate.strangers.entry(peer).or_insert_with(Instant::now);
            self.gate.members.note_connected(peer);
        }
        self.push_certificate(peer);
    }

    /// The last connection to `peer` closed: its membership is checked again next time.
    pub(super) fn on_all_closed(&mut self, peer: PeerId) {
        self.gate.strangers.remove(&peer);
        self.gate.pending.remove(&peer);
        self.gate.members.forget(&peer);
    }

    /// Sends this node's certificate to `peer`, if it has one.
    pub(super) fn push_certificate(&mut self, peer: PeerId) {
        let Some(cert) = self.gate.members.certificate() else {
            return;
        };
        let Ok(permit) = self.gate.pushes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "certificate not presented: too many handshakes at once");
            return;
        };
        let control = self.gate.control.clone();
        let bytes = cert.encode();
        tokio::spawn(async move {
            // libp2p-stream drops an inbound stream when its acceptor's one-slot queue is full,
            // which bursts of new connections do: a failed exchange is tried again.
            let mut wait = PUSH_RETRY;
            for attempt in 1..=PUSH_ATTEMPTS {
                match membership::push(control.clone(), peer, bytes.clone()).await {
                    Ok(true) => {
                        tracing::debug!(%peer, "membership certificate accepted");
                        break;
                    }
                    Ok(false) => {
                        tracing::warn!(%peer, "peer refused this node's membership certificate");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(%peer, attempt, error = %e, "membership handshake failed");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
            drop(permit);
        });
    }

    /// Presents this node's (new) certificate to every connected peer.
    pub(super) fn push_to_all(&mut self) {
        let mut peers: Vec<PeerId> = self.connections.values().map(|(p, _)| *p).collect();
        peers.sort_unstable();
        peers.dedup();
        for peer in peers {
            self.push_certificate(peer);
        }
    }

    /// `peer` became a member: route it, and store the records it sent meanwhile.
    pub(super) fn on_admitted(&mut self, peer: PeerId) {
        if !self.swarm.is_connected(&peer) && self.gate.members.fleet() != Some(peer) {
            // Its connection closed while the handshake ran: nothing to route or keep.
            self.gate.members.forget(&peer);
            return;
        }
        self.gate.strangers.remove(&peer);
        let addrs: Vec<_> = self.book.get(&peer).collect();
        for address in addrs {
            self.swarm.behaviour_mut().kad.add_address(&peer, address);
        }
        for record in self.gate.pending.remove(&peer).unwrap_or_default() {
            self.store_provider(record);
        }
        self.refresh_known_peers();
    }

    /// An ADD_PROVIDER record from a non-member: held while its handshake may still run,
    /// dropped otherwise.
    pub(super) fn hold_record(&mut self, record: ProviderRecord) {
        let peer = record.provider;
        let connected = self.gate.strangers.contains_key(&peer);
        if !connected
            || (!self.gate.pending.contains_key(&peer)
                && self.gate.pending.len() >= MAX_PENDING_PEERS)
        {
            tracing::debug!(%peer, "provider record from a non-member dropped");
            return;
        }
        let held = self.gate.pending.entry(peer).or_default();
        if held.len() < MAX_PENDING_RECORDS {
            held.push(record);
        }
    }

    /// Disconnects connected peers that stayed strangers longer than the grace period, and
    /// notes members whose certificates lapsed.
    pub(super) fn sweep_strangers(&mut self) {
        if !self.gate.members.enforced() {
            return;
        }
        let now = Instant::now();
        let mut connected: Vec<PeerId> = self.connections.values().map(|(p, _)| *p).collect();
        connected.sort_unstable();
        connected.dedup();
        let mut expel = Vec::new();
        for peer in connected {
            if self.is_member(&peer) {
                self.gate.strangers.remove(&peer);
                continue;
            }
            let since = *self.gate.strangers.entry(peer).or_insert(now);
            // A revoked member gets no grace: its handshake cannot succeed here.
            if now.duration_since(since) >= self.gate.grace || self.gate.members.is_revoked(&peer) {
                expel.push(peer);
            }
        }
        for peer in expel {
            tracing::info!(%peer, "disconnecting a peer without a valid membership certificate");
            let _ = self.swarm.disconnect_peer_id(peer);
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
            self.gate.strangers.remove(&peer);
            self.gate.pending.remove(&peer);
        }
    }
}

/// Passes inbound piece streams of members on to `out`; a stream of a peer whose handshake is in
/// flight waits for it (while its connection is young, see `Members::wait_handshake`); a
/// stranger's stream gets an Error frame (code not a member) and is closed.
pub(super) struct StreamGate {
    members: Arc<Members>,
    slots: Arc<Semaphore>,
}

impl StreamGate {
    pub(super) fn new(members: Arc<Members>) -> Self {
        StreamGate {
            members,
            slots: Arc::new(Semaphore::new(MAX_GATED_STREAMS)),
        }
    }

    /// `Some(stream)` to pass on now; `None` when the gate took it over.
    pub(super) fn admit(
        &self,
        peer: PeerId,
        stream: PeerStream,
        out: &mpsc::Sender<(PeerId, PeerStream)>,
    ) -> Option<PeerStream> {
        if self.members.is_member(&peer) {
            return Some(stream);
        }
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "piece stream of a non-member dropped: too many waiting");
            return None;
        };
        let members = self.members.clone();
        let out = out.clone();
        tokio::spawn(async move {
            if members.wait_handshake(&peer).await {
                drop(permit);
                let _ = out.send((peer, stream)).await;
            } else {
                tracing::info!(%peer, "piece stream refused: not a fleet member");
                let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream)).await;
                drop(permit);
            }
        });
        None
    }
}

async fn refuse(mut stream: PeerStream) {
    let frame = Frame::Error {
        code: ErrorCode::NOT_MEMBER,
        message: "not a fleet member: no valid membership certificate".to_owned(),
    };
    let mut buf = Vec::new();
    if wire::encode(&frame, &mut buf).is_ok() && stream.write_all(&buf).await.is_ok() {
        let _ = stream.close().await;
    }
}
