//! What the swarm is made of: the transports (QUIC, TCP + noise + yamux with a delayed start,
//! see [`super::eyeballs`]) and the composed behaviour (Kademlia, identify, libp2p-stream), each
//! configured for a fleet.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OptionalTransport};
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{PeerId, Swarm, SwarmBuilder, Transport as _, identify, kad, noise, quic, tcp, yamux};

use super::eyeballs::{DelayedDial, TCP_HEAD_START};
use super::{IDENTIFY_PROTOCOL, SwarmConfig, SwarmError, addr};

/// Keys this node may hold provider records for (its own and others'; MemoryStore counts both).
pub(super) const MAX_PROVIDER_KEYS: usize = 200_000;
/// Providers remembered per key. Room for a good share of a fleet, still small enough that a
/// GET_PROVIDERS answer fits [`MAX_KAD_PACKET`].
const MAX_PROVIDERS_PER_KEY: usize = 100;
/// Value records (flotilla does not use them; others' are not stored, see `StoreInserts`).
const MAX_RECORDS: usize = 1024;
/// Largest Kademlia message: 100 providers with a few addresses each, plus 20 closer peers.
const MAX_KAD_PACKET: usize = 64 * 1024;
/// How long one Kademlia query may run.
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a TCP dial: connect, noise and yamux negotiation (QUIC has its own 5 s handshake
/// timeout).
const TCP_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC receive window per stream, bytes. libp2p-quic's 10 MB (and 15 MB per connection) let
/// every connection park that much in quinn's buffers on both ends whenever the reader is
/// slower than the link (it is: the node verifies and writes every piece), which is what made a
/// node's RSS grow with its peer count; 2 MiB still covers 400 MB/s at a 5 ms round trip.
pub const QUIC_STREAM_WINDOW: u32 = 2 << 20;
/// QUIC receive window per connection, bytes (see [`QUIC_STREAM_WINDOW`]).
pub const QUIC_CONNECTION_WINDOW: u32 = 3 << 20;

/// The composed behaviour owned by the swarm task.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) kad: kad::Behaviour<MemoryStore>,
    pub(super) identify: identify::Behaviour,
    pub(super) stream: libp2p_stream::Behaviour,
}

/// Builds the swarm with the transports the listen addresses call for (both when there is none).
pub(super) fn build(config: &SwarmConfig) -> Result<Swarm<Behaviour>, SwarmError> {
    let any = config.listen.is_empty();
    let with_quic = any || config.listen.iter().any(addr::is_quic);
    let with_tcp = any || config.listen.iter().any(addr::is_tcp);
    let transport = transport(&config.keypair, with_quic, with_tcp)
        .map_err(|e| SwarmError::Build(e.to_string()))?;
    let swarm = SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| SwarmError::Build(e.to_string()))?
        .with_behaviour(|key| behaviour(key, config))
        .map_err(|e| SwarmError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}

fn transport(
    key: &Keypair,
    with_quic: bool,
    with_tcp: bool,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let quic = if with_quic {
        let mut quic_config = quic::Config::new(key);
        quic_config.max_stream_data = QUIC_STREAM_WINDOW;
        quic_config.max_connection_data = QUIC_CONNECTION_WINDOW;
        OptionalTransport::some(quic::tokio::Transport::new(quic_config))
    } else {
        OptionalTransport::none()
    };
    let tcp = if with_tcp {
        OptionalTransport::some(
            // With QUIC available, TCP dials wait for QUIC to get a head start.
            DelayedDial::new(
                tcp::tokio::Transport::new(tcp::Config::default().nodelay(true)),
                if with_quic {
                    TCP_HEAD_START
                } else {
                    Duration::ZERO
                },
            )
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .timeout(TCP_UPGRADE_TIMEOUT),
        )
    } else {
        OptionalTransport::none()
    };
    Ok(quic
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)))
        .or_transport(tcp.map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn))))
        .map(|either, _| either.into_inner())
        .boxed())
}

fn behaviour(key: &Keypair, config: &SwarmConfig) -> Behaviour {
    let local = key.public().to_peer_id();

    let mut kad_config = kad::Config::new(config.kad_protocol.clone());
    kad_config
        .set_query_timeout(KAD_QUERY_TIMEOUT)
        .set_max_packet_size(MAX_KAD_PACKET)
        .set_provider_publication_interval(Some(config.reprovide_interval))
        .set_provider_record_ttl(Some(config.provider_ttl))
        // Provider records are stored by the task (which also expires them); value records,
        // which flotilla never uses, are not stored at all.
        .set_record_filtering(kad::StoreInserts::FilterBoth);
    if config.fleet.is_some() {
        // Peers enter the routing table only once their membership certificate verified.
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
    }
    let store = MemoryStore::with_config(
        local,
        MemoryStoreConfig {
            max_records: MAX_RECORDS,
            max_value_bytes: 64 * 1024,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            max_provided_keys: MAX_PROVIDER_KEYS,
        },
    );
    let mut kad = kad::Behaviour::with_config(local, store, kad_config);
    // Without a confirmed external address kad stays a client and nobody routes through it.
    kad.set_mode(Some(kad::Mode::Server));

    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
            .with_agent_version(format!("flotilla/{}", env!("CARGO_PKG_VERSION")))
            // The task files the addresses itself, after filtering them.
            .with_cache_size(0),
    );

    Behaviour {
        kad,
        identify,
        stream: libp2p_stream::Behaviour::new(),
    }
}
