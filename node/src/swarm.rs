//! The node's libp2p swarm: one task owns the [`libp2p::Swarm`]; everything else talks to it
//! through a cheap, cloneable [`SwarmHandle`] (a bounded command queue with one-shot replies),
//! which implements [`Network`](crate::ports::Network). Inbound piece-transfer streams come out
//! of [`Incoming`].
//!
//! # What the swarm runs
//! - Transports: QUIC v1 (`/udp/…/quic-v1`) and TCP + noise + yamux as the fallback for networks
//!   that drop UDP. A swarm builds the transports its listen addresses name (no listen address:
//!   both). All known addresses of a peer are dialed at once, but TCP attempts start 250 ms late
//!   ("happy eyeballs", module `eyeballs`), so QUIC wins whenever it works and TCP takes over quickly
//!   when it does not.
//! - Kademlia on `/flotilla/kad/1.0.0`, always in server mode (on a LAN no address is ever
//!   "confirmed external", and client mode would leave the routing tables empty). A blob's DHT
//!   key is the bytes of its CIDv1 (raw codec, sha2-256 multihash): [`Digest::to_cid`].
//!   Provider records are re-published every `reprovide_interval` and expire after
//!   `provider_ttl`; records received from others are dropped once expired (module `expiry`).
//! - Identify on `/flotilla/id/1.0.0`; the listen addresses a peer reports are copied into the
//!   routing table (Kademlia ignores the addresses of inbound connections; without this, lookups
//!   fail silently). Loopback addresses are kept only from peers reached over loopback.
//! - The listen addresses (loopback ones only when the listener was on a loopback IP) are
//!   declared external, so ADD_PROVIDER messages carry them and a peer that learns of a provider
//!   from a GET_PROVIDERS answer can dial it without ever having met it.
//! - UDP socket buffers of the QUIC listeners are raised to `udp_buffer_bytes` (module `udp`).
//! - Fleet membership (module `membership`, SPEC §5.3), unless the swarm is open
//!   ([`SwarmConfig::fleet`] `None`): every connection starts with the `/flotilla/member/1.0.0`
//!   handshake; until a peer's certificate verified it is a stranger: its inbound piece streams
//!   get an Error frame (code not a member) instead of reaching [`Incoming`], streams are opened
//!   only to members, it stays out of the Kademlia routing table (inserts are manual), its
//!   ADD_PROVIDER records are not stored (those arriving during its handshake wait for it), and
//!   it is disconnected after [`FleetConfig::stranger_grace`].
//!
//! # Host settings for a fleet
//! Without root (root may use SO_RCVBUFFORCE), the kernel caps socket buffers at
//! `net.core.rmem_max` / `wmem_max`, often 208 KiB, and QUIC then drops thousands of packets per
//! GiB. `rmem_default` also covers the sockets the node does not tune (outbound-only QUIC).
//! Put in `/etc/sysctl.d/90-flotilla.conf` on every host (then `sysctl --system`):
//! ```text
//! net.core.rmem_max = 4194304
//! net.core.wmem_max = 4194304
//! net.core.rmem_default = 4194304
//! ```

mod addr;
mod behaviour;
mod dial;
mod expiry;
mod eyeballs;
mod gate;
mod handle;
mod membership;
mod queries;
mod task;
mod udp;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, StreamProtocol};

pub use behaviour::{QUIC_CONNECTION_WINDOW, QUIC_STREAM_WINDOW};
pub use handle::{DhtCounters, Incoming, SwarmHandle};
pub use membership::MEMBER_PROTOCOL;
pub(crate) use membership::unix_now;

use flotilla_protocol::membership::MemberCertificate;
use libp2p::PeerId;

#[cfg(doc)]
use flotilla_protocol::Digest;

/// Protocol name of the piece-transfer streams unless configured otherwise.
pub const DEFAULT_STREAM_PROTOCOL: &str = flotilla_protocol::wire::PROTOCOL_NAME;
/// Protocol name of flotilla's Kademlia DHT (not the IPFS one: the two must never mix).
pub const DEFAULT_KAD_PROTOCOL: &str = "/flotilla/kad/1.0.0";
/// Protocol name of identify.
pub const IDENTIFY_PROTOCOL: &str = "/flotilla/id/1.0.0";
/// How long [`find_providers`](crate::ports::Network::find_providers) looks at most.
pub const FIND_PROVIDERS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`open_stream`](crate::ports::Network::open_stream) may take, dialing included.
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// How to build a swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The node's identity.
    pub keypair: Keypair,
    /// Addresses to listen on (`/ip4/…/udp/<port>/quic-v1`, `/ip4/…/tcp/<port>`); they also
    /// decide which transports exist.
    pub listen: Vec<Multiaddr>,
    /// Peers to join the DHT through; each address ends in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses to announce instead of the listen addresses (e.g. behind a port forward).
    /// Empty: announce the listen addresses.
    pub external_addrs: Vec<Multiaddr>,
    /// Protocol of the piece-transfer streams.
    pub stream_protocol: StreamProtocol,
    /// Protocol of the Kademlia DHT.
    pub kad_protocol: StreamProtocol,
    /// Requested SO_RCVBUF / SO_SNDBUF of the QUIC sockets.
    pub udp_buffer_bytes: usize,
    /// How often provider records are re-published.
    pub reprovide_interval: Duration,
    /// How long a provider record lives without being re-published.
    pub provider_ttl: Duration,
    /// How long a connection without streams stays open.
    pub idle_timeout: Duration,
    /// Fleet membership. `None`: an open swarm where every peer counts as a member (tests and
    /// tools); nodes and the gateway always set it.
    pub fleet: Option<FleetConfig>,
    /// This node's site label (checked by the caller, `flotilla_protocol::site::check_site`):
    /// blobs are announced under their site key too, and downloads look it up.
    pub site: Option<String>,
}

/// Who belongs to the fleet, as far as this swarm knows at start.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The fleet key's peer id (the gateway's). `None` until known: every peer is a stranger
    /// until [`SwarmHandle::set_fleet`].
    pub fleet: Option<PeerId>,
    /// This node's certificate (the gateway needs none: its peer id is the fleet).
    pub certificate: Option<MemberCertificate>,
    /// How long a connected peer may stay without a valid certificate before it is
    /// disconnected.
    pub stranger_grace: Duration,
}

impl FleetConfig {
    /// A fleet whose key is `fleet`, no certificate yet, strangers dropped after 10 s.
    pub fn new(fleet: Option<PeerId>) -> Self {
        FleetConfig {
            fleet,
            certificate: None,
            stranger_grace: Duration::from_secs(10),
        }
    }
}

impl SwarmConfig {
    /// Loopback QUIC and TCP on ephemeral ports, no bootstrap peers, flotilla's protocol names,
    /// 4 MiB UDP buffers, provider records re-published every 30 min and kept 2 h, idle
    /// connections closed after 60 s, open membership (set [`SwarmConfig::fleet`] for a fleet).
    pub fn new(keypair: Keypair) -> Self {
        let loopback = Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST));
        SwarmConfig {
            keypair,
            listen: vec![
                loopback
                    .clone()
                    .with(Protocol::Udp(0))
                    .with(Protocol::QuicV1),
                loopback.with(Protocol::Tcp(0)),
            ],
            bootstrap: Vec::new(),
            external_addrs: Vec::new(),
            stream_protocol: StreamProtocol::new(DEFAULT_STREAM_PROTOCOL),
            kad_protocol: StreamProtocol::new(DEFAULT_KAD_PROTOCOL),
            udp_buffer_bytes: 4 << 20,
            reprovide_interval: Duration::from_secs(30 * 60),
            provider_ttl: Duration::from_secs(2 * 60 * 60),
            idle_timeout: Duration::from_secs(60),
            fleet: None,
            site: None,
        }
    }
}

/// Why the swarm could not be started or could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// Building the transports or behaviours failed.
    #[error("cannot build the swarm: {0}")]
    Build(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The listeners did not report their addresses in time.
    #[error("listeners reported no address within {0:?}")]
    ListenTimeout(Duration),
    /// A bootstrap address lacks its `/p2p/<peer id>` suffix.
    #[error("bootstrap address {0} does not end in /p2p/<peer id>")]
    BootstrapAddress(Multiaddr),
    /// The routing table is empty: there is nobody to ask.
    #[error("the routing table is empty")]
    NoKnownPeers,
    /// A DHT query failed.
    #[error("DHT query failed: {0}")]
    Query(String),
    /// A membership certificate or fleet key was not accepted.
    #[error("membership: {0}")]
    Membership(String),
    /// The swarm task has stopped.
    #[error("the swarm task has stopped")]
    Stopped,
}

/// Builds the swarm, starts listening, waits until the listen addresses are known, raises the
/// QUIC sockets' buffers, dials the bootstrap peers, starts a Kademlia bootstrap and spawns the
/// task that owns the swarm from then on. The task stops on [`SwarmHandle::shutdown`] or when
/// every handle is dropped; [`Incoming`] then ends.
///
/// # Errors
/// [`SwarmError::Build`], [`SwarmError::Listen`], [`SwarmError::ListenTimeout`] or
/// [`SwarmError::BootstrapAddress`].
pub async fn spawn(config: SwarmConfig) -> Result<(SwarmHandle, Incoming), SwarmError> {
    task::spawn(config).await
}
