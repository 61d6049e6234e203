//! The task that owns the swarm: start-up (listen, wait for addresses, tune sockets, bootstrap),
//! then one loop over commands, swarm events, lookup deadlines and periodic housekeeping.
//! Kademlia and identify events are handled in [`super::queries`], dialing in [`super::dial`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::{Future, StreamExt as _};
use libp2p::core::transport::ListenerId;
use libp2p::kad::QueryId;
use libp2p::kad::store::RecordStore as _;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::PeerAddresses;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{mpsc, oneshot, watch};

use super::behaviour::{self, Behaviour, BehaviourEvent, MAX_PROVIDER_KEYS};
use super::dial::PendingDial;
use super::expiry::ProviderExpiry;
use super::gate::{Gate, StreamGate};
use super::handle::{Command, Incoming, SwarmHandle};
use super::membership::{self, MEMBER_PROTOCOL, Members};
use super::queries::Find;
use super::{SwarmConfig, SwarmError, addr, udp};
use crate::ports::{NetworkError, PeerStream};

/// Commands waiting for the task.
const COMMAND_QUEUE: usize = 256;
/// Inbound streams waiting for the consumer of [`Incoming`].
const INCOMING_QUEUE: usize = 256;
/// How long start-up waits for the listeners' addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Peers whose addresses the address book keeps (10 addresses each at most).
const ADDRESS_BOOK_PEERS: usize = 4096;
/// How often the routing-table size is recounted and expired records are dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often strangers past their grace period are looked for.
const STRANGER_SWEEP: Duration = Duration::from_secs(1);
/// Verified peers waiting for the task.
const ADMITTED_QUEUE: usize = 256;

/// A listener and what it reported.
struct Listener {
    /// The address asked for.
    requested: Multiaddr,
    /// Whether its loopback addresses may be announced (only when it was asked to listen on
    /// loopback: a node on 0.0.0.0 must not tell remote peers to dial 127.0.0.1).
    announce_loopback: bool,
    /// The addresses it listens on now.
    addrs: Vec<Multiaddr>,
}

/// A future that yields the lookup whose time is up.
type Deadline = Pin<Box<dyn Future<Output = QueryId> + Send>>;

/// Everything the swarm task owns.
pub(super) struct Task {
    pub(super) swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    pub(super) local: PeerId,
    pub(super) kad_protocol: StreamProtocol,
    known_peers: Arc<AtomicUsize>,
    pub(super) dht: Arc<super::handle::DhtCounters>,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
    listeners: HashMap<ListenerId, Listener>,
    /// Whether the listen addresses are announced (no external address was configured).
    announce_listen: bool,
    /// Open connections: peer and remote address.
    pub(super) connections: HashMap<ConnectionId, (PeerId, Multiaddr)>,
    /// Addresses learned from identify, provider records and the caller, for our own dials.
    pub(super) book: PeerAddresses,
    pub(super) dials: HashMap<PeerId, PendingDial>,
    pub(super) finds: HashMap<QueryId, Find>,
    pub(super) find_deadlines: FuturesUnordered<Deadline>,
    pub(super) provides: HashMap<QueryId, oneshot::Sender<Result<(), NetworkError>>>,
    pub(super) bootstraps: HashMap<QueryId, oneshot::Sender<Result<usize, SwarmError>>>,
    pub(super) expiry: ProviderExpiry,
    pub(super) gate: Gate,
}

/// See [`super::spawn`].
pub(super) async fn spawn(config: SwarmConfig) -> Result<(SwarmHandle, Incoming), SwarmError> {
    let mut bootstrap = Vec::new();
    for a in &config.bootstrap {
        bootstrap.push(addr::split_p2p(a).ok_or_else(|| SwarmError::BootstrapAddress(a.clone()))?);
    }

    let mut swarm = behaviour::build(&config)?;
    let local = *swarm.local_peer_id();
    let mut control = swarm.behaviour().stream.new_control();
    let inbound = control
        .accept(config.stream_protocol.clone())
        .map_err(|e| SwarmError::Build(e.to_string()))?;
    let handshakes = control
        .accept(StreamProtocol::new(MEMBER_PROTOCOL))
        .map_err(|e| SwarmError::Build(e.to_string()))?;
    let grace = config
        .fleet
        .as_ref()
        .map_or(Duration::MAX, |f| f.stranger_grace);
    let members = Arc::new(match &config.fleet {
        Some(f) => Members::new(true, local, f.fleet, grace),
        None => Members::new(false, local, None, grace),
    });
    if let Some(cert) = config.fleet.as_ref().and_then(|f| f.certificate.clone())
        && let Err(e) = members.set_certificate(cert)
    {
        return Err(SwarmError::Membership(e));
    }
    let (admitted_tx, admitted_rx) = mpsc::channel(ADMITTED_QUEUE);

    let mut listeners = HashMap::new();
    for requested in &config.listen {
        let id = swarm
            .listen_on(requested.clone())
            .map_err(|e| SwarmError::Listen {
                addr: requested.clone(),
                reason: e.to_string(),
            })?;
        let listener = Listener {
            requested: requested.clone(),
            announce_loopback: addr::is_loopback(requested),
            addrs: Vec::new(),
        };
        listeners.insert(id, listener);
    }
    for external in &config.external_addrs {
        swarm.add_external_address(addr::without_p2p(external));
    }

    let (command_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (listen_tx, listen_rx) = watch::channel(Vec::new());
    let known_peers = Arc::new(AtomicUsize::new(0));
    let dht = Arc::new(super::handle::DhtCounters::default());
    let mut task = Task {
        swarm,
        commands,
        local,
        kad_protocol: config.kad_protocol.clone(),
        known_peers: known_peers.clone(),
        dht: dht.clone(),
        listen_tx,
        listeners,
        announce_listen: config.external_addrs.is_empty(),
        connections: HashMap::new(),
        book: PeerAddresses::new(
            std::num::NonZeroUsize::new(ADDRESS_BOOK_PEERS).unwrap_or(std::num::NonZeroUsize::MIN),
        ),
        dials: HashMap::new(),
        finds: HashMap::new(),
        find_deadlines: FuturesUnordered::new(),
        provides: HashMap::new(),
        bootstraps: HashMap::new(),
        expiry: ProviderExpiry::new(MAX_PROVIDER_KEYS),
        gate: Gate::new(members.clone(), control.clone(), admitted_rx, grace),
    };
    task.wait_listening().await?;
    task.tune_udp(config.udp_buffer_bytes).await;

    let mut bootstrap_peers = Vec::new();
    for (peer, base) in bootstrap {
        if peer == local {
            continue;
        }
        task.learn_address(peer, base);
        if !bootstrap_peers.contains(&peer) {
            bootstrap_peers.push(peer);
        }
    }
    for peer in &bootstrap_peers {
        task.dial(*peer, Vec::new());
    }
    if !bootstrap_peers.is_empty() {
        // The result is not awaited: lookups work as soon as one bootstrap peer answers.
        task.dht.bootstraps.fetch_add(1, Ordering::Relaxed);
        let _ = task.swarm.behaviour_mut().kad.bootstrap();
    }

    let (stop_tx, stop_rx) = oneshot::channel();
    let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
    tokio::spawn(pump(
        inbound,
        incoming_tx,
        stop_rx,
        StreamGate::new(members.clone()),
    ));
    tokio::spawn(membership::accept_handshakes(
        handshakes,
        members.clone(),
        admitted_tx,
    ));
    let handle = SwarmHandle::new(
        command_tx,
        local,
        control,
        config.stream_protocol,
        listen_rx,
        known_peers,
        members,
    )
    .with_dht(dht)
    .with_site(config.site);
    tokio::spawn(task.run(stop_tx));
    Ok((
        handle,
        Incoming {
            streams: incoming_rx,
        },
    ))
}

/// Moves accepted streams from libp2p-stream (which drops them when its one-slot channel is
/// full) into the larger queue of [`Incoming`], through the membership gate. Stops with the
/// swarm or when `Incoming` is dropped.
async fn pump(
    mut inbound: libp2p_stream::IncomingStreams,
    out: mpsc::Sender<(PeerId, PeerStream)>,
    mut stop: oneshot::Receiver<()>,
    gate: StreamGate,
) {
    loop {
        let next = tokio::select! {
            next = inbound.next() => next,
            _ = &mut stop => return,
            () = out.closed() => return,
        };
        let Some((peer, stream)) = next else { return };
        let Some(stream) = gate.admit(peer, Box::new(stream), &out) else {
            continue;
        };
        tokio::select! {
            sent = out.send((peer, stream)) => if sent.is_err() { return },
            _ = &mut stop => return,
        }
    }
}

impl Task {
    /// Runs until shutdown or until every handle is gone; then drops the swarm (closing every
    /// connection) before confirming a shutdown, and drops `stop`, which ends [`Incoming`].
    async fn run(mut self, stop: oneshot::Sender<()>) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep = tokio::time::interval(STRANGER_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let confirm = loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.on_command(command),
                    None => break None,
                },
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(id) = self.find_deadlines.next(), if !self.find_deadlines.is_empty() => {
                    self.on_find_deadline(id);
                }
                _ = housekeeping.tick() => self.housekeeping(),
                _ = sweep.tick() => self.sweep_strangers(),
                Some(peer) = self.gate.admitted.recv() => self.on_admitted(peer),
            }
        };
        let (lookups, announcements, bootstraps, answered) = self.dht.snapshot();
        tracing::info!(
            peer = %self.local,
            dht_provider_lookups = lookups,
            dht_announcements = announcements,
            dht_bootstraps = bootstraps,
            dht_answered = answered,
            "swarm stopping"
        );
        drop(self);
        drop(stop);
        if let Some(reply) = confirm {
            let _ = reply.send(());
        }
    }

    /// Polls the swarm until every listener reported an address.
    async fn wait_listening(&mut self) -> Result<(), SwarmError> {
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        while self.listeners.values().any(|l| l.addrs.is_empty()) {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| SwarmError::ListenTimeout(LISTEN_TIMEOUT))?;
            match event {
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } => {
                    let addr = self
                        .listeners
                        .remove(&listener_id)
                        .map(|l| l.requested)
                        .unwrap_or_else(Multiaddr::empty);
                    let reason = match reason {
                        Ok(()) => "closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(SwarmError::Listen { addr, reason });
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    let addr = self
                        .listeners
                        .get(&listener_id)
                        .map(|l| l.requested.clone())
                        .unwrap_or_else(Multiaddr::empty);
                    return Err(SwarmError::Listen {
                        addr,
                        reason: error.to_string(),
                    });
                }
                other => self.on_event(other),
            }
        }
        Ok(())
    }

    /// Raises the buffers of the QUIC listeners' sockets and reports what the kernel granted.
    // `&mut`: a shared borrow held across the await would make the future require `Swarm: Sync`.
    async fn tune_udp(&mut self, bytes: usize) {
        let mut ports: Vec<u16> = self
            .listeners
            .values()
            .flat_map(|l| l.addrs.iter().filter_map(addr::quic_port))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() || bytes == 0 {
            return;
        }
        let wanted = ports.clone();
        match tokio::task::spawn_blocking(move || udp::raise_buffers(&wanted, bytes)).await {
            Ok(Ok(mut tuned)) => {
                // libp2p-quic keeps a second descriptor of each socket; report each once.
                tuned.sort_by_key(|t| t.port);
                tuned.dedup();
                for t in &tuned {
                    if t.granted(bytes) {
                        tracing::info!(
                            port = t.port,
                            rcvbuf = t.recv,
                            sndbuf = t.send,
                            forced = t.forced,
                            "QUIC socket buffers raised"
                        );
                    } else {
                        tracing::warn!(
                            port = t.port,
                            rcvbuf = t.recv,
                            sndbuf = t.send,
                            requested = bytes,
                            "kernel capped the QUIC socket buffers; raise net.core.rmem_max and wmem_max"
                        );
                    }
                }
                if tuned.is_empty() {
                    tracing::warn!(?ports, "no UDP socket found for the QUIC listen ports");
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot list this process's sockets"),
            Err(e) => tracing::warn!(error = %e, "socket tuning task failed"),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::FindProviders { key, limit, reply } => self.start_find(key, limit, reply),
            Command::Connect { peer, reply } => self.connect(peer, reply),
            Command::Provide { key, reply } => {
                self.dht.announcements.fetch_add(1, Ordering::Relaxed);
                match self.swarm.behaviour_mut().kad.start_providing(key) {
                    Ok(id) => {
                        self.provides.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetworkError::Query(e.to_string())));
                    }
                }
            }
            Command::Unprovide { key, reply } => {
                self.swarm.behaviour_mut().kad.stop_providing(&key);
                let _ = reply.send(());
            }
            Command::IsProviding { key, reply } => {
                let providing = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .provided()
                    .any(|r| r.key == key);
                let _ = reply.send(providing);
            }
            Command::AddAddress { peer, addr, reply } => {
                self.learn_address(peer, addr::without_p2p(&addr));
                let _ = reply.send(());
            }
            Command::Connections { reply } => {
                let _ = reply.send(self.connections.values().cloned().collect());
            }
            Command::Bootstrap { reply } => {
                self.dht.bootstraps.fetch_add(1, Ordering::Relaxed);
                match self.swarm.behaviour_mut().kad.bootstrap() {
                    Ok(id) => {
                        self.bootstraps.insert(id, reply);
                    }
                    Err(_) => {
                        let _ = reply.send(Err(SwarmError::NoKnownPeers));
                    }
                }
            }
            Command::SetFleet { fleet, reply } => {
                self.gate.members.set_fleet(fleet);
                self.on_admitted(fleet);
                let _ = reply.send(());
            }
            Command::SetCertificate { cert, reply } => {
                let result = self.gate.members.set_certificate(cert);
                if result.is_ok() {
                    self.push_to_all();
                }
                let _ = reply.send(result.map_err(SwarmError::Membership));
            }
            Command::Disconnect { peer, reply } => {
                let _ = self.swarm.disconnect_peer_id(peer);
                self.swarm.behaviour_mut().kad.remove_peer(&peer);
                self.refresh_known_peers();
                let _ = reply.send(());
            }
            // Handled by the loop, which must stop.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify(event),
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => self.on_listen_addr(listener_id, address, true),
            SwarmEvent::ExpiredListenAddr {
                listener_id,
                address,
            } => self.on_listen_addr(listener_id, address, false),
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                tracing::warn!(?listener_id, ?reason, "listener closed");
                if let Some(listener) = self.listeners.remove(&listener_id) {
                    for address in listener.addrs {
                        self.swarm.remove_external_address(&address);
                    }
                }
                self.publish_listen_addrs();
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                tracing::warn!(?listener_id, %error, "listener error");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                tracing::debug!(peer = %peer_id, %remote, "connected");
                self.connections.insert(connection_id, (peer_id, remote));
                self.on_connected(peer_id);
                if num_established.get() == 1 {
                    self.on_first_connection(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                peer_id,
                num_established,
                ..
            } => {
                self.connections.remove(&connection_id);
                if num_established == 0 {
                    self.on_all_closed(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_error(connection_id, peer_id, &error),
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                tracing::debug!(%send_back_addr, %error, "inbound connection failed");
            }
            _ => {}
        }
    }

    fn on_listen_addr(&mut self, listener_id: ListenerId, address: Multiaddr, added: bool) {
        let Some(listener) = self.listeners.get_mut(&listener_id) else {
            return;
        };
        let announce = self.announce_listen
            && addr::is_dialable(&address)
            && (listener.announce_loopback || !addr::is_loopback(&address));
        if added {
            tracing::info!(%address, "listening");
            if !listener.addrs.contains(&address) {
                listener.addrs.push(address.clone());
            }
            if announce {
                self.swarm.add_external_address(address);
            }
        } else {
            listener.addrs.retain(|a| a != &address);
            if announce {
                self.swarm.remove_external_address(&address);
            }
        }
        self.publish_listen_addrs();
    }

    fn publish_listen_addrs(&self) {
        let mut all: Vec<Multiaddr> = self
            .listeners
            .values()
            .flat_map(|l| l.addrs.iter())
            .map(|a| a.clone().with(Protocol::P2p(self.local)))
            .collect();
        let (mut quic, other) = addr::quic_first(std::mem::take(&mut all));
        quic.extend(other);
        self.listen_tx.send_replace(quic);
    }

    /// Files a dialable address of `peer` in the address book, and in the routing table if it
    /// is a member (a stranger's addresses enter it once its certificate verified).
    pub(super) fn learn_address(&mut self, peer: PeerId, address: Multiaddr) {
        if peer == self.local || !addr::is_dialable(&address) {
            return;
        }
        if self.is_member(&peer) {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, address.clone());
        }
        self.book.add(peer, address);
    }

    /// Recounts the routing table (Kademlia drops unreachable peers without an event).
    pub(super) fn refresh_known_peers(&mut self) -> usize {
        let count = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        self.known_peers.store(count, Ordering::Relaxed);
        count
    }

    fn housekeeping(&mut self) {
        self.refresh_known_peers();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let purged = self.expiry.purge(store, Instant::now());
        if purged > 0 {
            tracing::debug!(purged, "expired provider records dropped");
        }
        self.prune_dials();
    }
}
