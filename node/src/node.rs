//! One node assembled from its parts: identity, store, swarm, transfer server, fetcher and the
//! local OCI endpoint, started in the order each needs the others.
//!
//! ```text
//!  docker/containerd ──HTTP──► OCI endpoint ──► Fetcher ──► Scheduler (protocol crate)
//!                                  │               │  ▲
//!          manifests, tags ◄──proxy┘       Session │  │ events        peers' Sessions
//!            (gateway)                             ▼  │                    │
//!                                       Swarm (QUIC/TCP, Kademlia) ◄── transfer server ◄─ Store
//! ```
//! The gateway is found through its `GET /flotilla/v1/info` (peer id and swarm addresses); the
//! node keeps asking in the background until it answers, so a node may start before its gateway
//! (as `flotilla up` does) or during a gateway outage. The gateway's peer id is the fleet key:
//! the node then enrolls (`POST /flotilla/v1/join` with the fleet token) for the membership
//! certificate its swarm presents to peers, before it joins the DHT through the gateway.

mod health;
mod revocations;
mod store_tasks;
pub use revocations::REVOCATION_POLL;
use store_tasks::{evict_idle, reprovide_held, withdraw_evicted};

use std::net::SocketAddr;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use flotilla_protocol::Digest;
use libp2p::{Multiaddr, PeerId};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::NodeConfig;
use crate::fetch::{FetchConfig, Fetcher, TransferStats};
use crate::gateway_http::{HttpClientError, HttpTls, MemberSigner};
use crate::identity;
use crate::identity::membership::{Enrollment, FleetToken, MembershipConfig};
use crate::oci::{self, OciState};
use crate::ports::{Network, PieceSource};
use crate::store::{Store, StoreConfig};
use crate::swarm::{self, FleetConfig, SwarmConfig, SwarmHandle};
use crate::transfer::{self, ServerLimits};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A configuration value is not valid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The identity file could not be read or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// The store could not be opened.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// The swarm could not start.
    #[error("swarm: {0}")]
    Swarm(#[from] swarm::SwarmError),
    /// The fetcher could not be built.
    #[error("fetcher: {0}")]
    Fetch(#[from] crate::fetch::FetchError),
    /// The OCI endpoint's address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Serving the OCI endpoint failed.
    #[error("serving the OCI endpoint: {0}")]
    Serve(std::io::Error),
    /// The tag store (signed tag records, kept manifests) could not be opened.
    #[error(transparent)]
    Tags(#[from] crate::tags::TagStoreError),
}

/// Turns the source the transfer server would read into the one it does read.
pub type WrapSource = Arc<dyn Fn(Arc<dyn PieceSource>) -> Arc<dyn PieceSource> + Send + Sync>;

/// Hooks for tests and benchmarks that need a node to behave differently.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Wraps the source the transfer server reads pieces from (a test makes a lying peer with
    /// it). `None`: serve the store as it is.
    pub wrap_served: Option<WrapSource>,
    /// How often a node not connected to its gateway's swarm re-reads the gateway's addresses.
    /// `None`: [`GATEWAY_WATCH`].
    pub gateway_watch: Option<Duration>,
    /// How often the gateway's revocation list is polled. `None`: [`REVOCATION_POLL`].
    pub revocation_poll: Option<Duration>,
}

/// How often a node that is not connected to its gateway's swarm asks the gateway's
/// `/flotilla/v1/info` whether its swarm addresses changed (a restarted gateway listening on
/// other ports): one small request per node and period, and only while disconnected.
pub const GATEWAY_WATCH: Duration = Duration::from_secs(300);

/// What a node reports about itself on `GET /flotilla/v1/stats` (JSON).
#[derive(Debug, Clone, Copy, serde::Serialize, Deserialize)]
pub struct NodeStats {
    /// Bytes of verified pieces received from peers.
    pub peer_bytes: u64,
    /// The part of `peer_bytes` received from peers of another site (or none), when this node
    /// has a site label; 0 without one.
    #[serde(default)]
    pub far_peer_bytes: u64,
    /// Bytes of verified pieces received from the gateway over HTTP.
    pub origin_bytes: u64,
    /// Bytes received and dropped: the sum of the three below.
    pub wasted_bytes: u64,
    /// Whole copies of pieces already held (end-game duplicates, late answers to requests
    /// given up on).
    #[serde(default)]
    pub duplicate_bytes: u64,
    /// Copies that ended part way (cut short by a Cancel, or lost upstream by the uploader).
    #[serde(default)]
    pub cut_bytes: u64,
    /// Pieces that failed verification.
    #[serde(default)]
    pub invalid_bytes: u64,
    /// Peers banned for sending corrupted pieces.
    pub peers_banned: u64,
    /// Bytes this node served to peers.
    pub served_bytes: u64,
    /// The part of `served_bytes` passed on while its piece was still arriving here (SPEC
    /// §5.2).
    #[serde(default)]
    pub served_arriving_bytes: u64,
    /// Bytes of blobs on disk.
    pub stored_bytes: u64,
    /// The part of `stored_bytes` in pinned blobs (never evicted).
    #[serde(default)]
    pub pinned_bytes: u64,
    /// Bytes of blobs evicted to make room since the node started.
    #[serde(default)]
    pub evicted_bytes: u64,
    /// Kademlia provider lookups this node started (one per blob and site key looked up).
    #[serde(default)]
    pub dht_provider_lookups: u64,
    /// Kademlia announcements this node started.
    #[serde(default)]
    pub dht_announcements: u64,
    /// Kademlia requests of other nodes this node answered.
    #[serde(default)]
    pub dht_answered: u64,
    /// Seconds downloads spent waiting for the download cap (`download_bytes_per_s`), summed
    /// over them: a rollout slower than the swarm could go shows here. 0 without a cap.
    #[serde(default)]
    pub download_cap_wait_s: f64,
    /// Downloads that asked the gateway without waiting for their first DHT lookup, because it
    /// had sent no byte of the blob yet (SPEC §6.2): a fleet's first pull of a fresh push.
    #[serde(default)]
    pub unsent_starts: u64,
    /// Nodes in the DHT routing table.
    pub known_peers: usize,
}

/// A running node.
pub struct Node {
    oci_addr: SocketAddr,
    peer_id: PeerId,
    swarm: SwarmHandle,
    store: Arc<Store>,
    fetcher: Fetcher,
    listener: Option<TcpListener>,
    router: Router,
    background: Vec<JoinHandle<()>>,
    grace: Duration,
}

#[derive(Deserialize)]
struct GatewayInfo {
    peer_id: String,
    #[serde(default)]
    addrs: Vec<String>,
}

fn parse_addrs(list: &[String], what: &str) -> Result<Vec<Multiaddr>, NodeError> {
    list.iter()
        .map(|a| {
            Multiaddr::from_str(a).map_err(|e| NodeError::Config(format!("{what} {a:?}: {e}")))
        })
        .collect()
}

impl Node {
    /// Starts a node with `config`: everything runs once this returns, but the OCI endpoint only
    /// accepts requests after [`Node::serve`].
    ///
    /// # Errors
    /// [`NodeError`] for an invalid configuration, or a part that cannot start.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        Node::start_with(config, NodeOptions::default()).await
    }

    /// [`Node::start`] with test hooks.
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_with(config: NodeConfig, options: NodeOptions) -> Result<Node, NodeError> {
        let p2p_listen = parse_addrs(&config.p2p_listen, "p2p_listen")?;
        let bootstrap = parse_addrs(&config.bootstrap, "bootstrap")?;
        let pinned = config
            .pinned
            .iter()
            .map(|d| Digest::from_str(d).map_err(|e| NodeError::Config(format!("pin {d:?}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(site) = &config.site {
            flotilla_protocol::site::check_site(site)
                .map_err(|e| NodeError::Config(format!("site {site:?}: {e}")))?;
        }
        for (name, cap) in [
            ("upload_bytes_per_s", config.upload_bytes_per_s),
            ("download_bytes_per_s", config.download_bytes_per_s),
            ("evict_unused_after_secs", config.evict_unused_after_secs),
        ] {
            if cap == Some(0) {
                return Err(NodeError::Config(format!(
                    "{name} is 0: leave it out for none"
                )));
            }
        }
        let gateway_url = config.gateway.trim_end_matches('/').to_owned();
        if !(gateway_url.starts_with("http://") || gateway_url.starts_with("https://")) {
            return Err(NodeError::Config(format!(
                "gateway {gateway_url:?} is not an http(s) URL"
            )));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Config(format!(
                "cannot create data directory {}: {e}",
                config.data_dir.display()
            ))
        })?;
        let fleet_token = fleet_token(&config)?;
        let prefetch_token = fleet_token.clone();
        let keypair = identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        let store = Store::open(StoreConfig {
            dir: config.data_dir.join("store"),
            capacity_bytes: config.cache_bytes,
            direct_io: config.direct_io,
        })
        .await?;

        let tls = HttpTls {
            ca_file: config.gateway_ca_file.clone(),
        };
        let tls_err = |e: HttpClientError| NodeError::Config(e.to_string());
        let http = tls
            .builder()
            .map_err(tls_err)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| NodeError::Config(format!("HTTP client: {e}")))?;
        let pinned_gateway = config
            .gateway_peer_id
            .as_deref()
            .map(|p| {
                PeerId::from_str(p.trim())
                    .map_err(|e| NodeError::Config(format!("gateway_peer_id {p:?}: {e}")))
            })
            .transpose()?;
        // Signed tag records and kept manifests: pulls of known tags through a gateway outage.
        let tags = Arc::new(crate::tags::TagStore::open(
            &config.data_dir.join("tags"),
            crate::tags::DEFAULT_MANIFEST_CACHE_BYTES,
        )?);
        // The gateway's identity is learned once (it signs tables); its addresses are re-read
        // in the background until the swarm has joined it.
        let gateway = match gateway_info(&http, &gateway_url).await {
            Ok((peer, addrs)) => {
                check_pinned(pinned_gateway, peer, &gateway_url)?;
                Some((peer, addrs))
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %gateway_url, "gateway unreachable at start");
                None
            }
        };
        // Started during an outage, the fleet key is the configured or last seen gateway
        // identity. It and a kept certificate go into the swarm before it dials anyone, so the
        // first handshakes with the bootstrap peers already succeed.
        let fleet = gateway
            .as_ref()
            .map(|(p, _)| *p)
            .or(pinned_gateway)
            .or_else(|| tags.gateway_peer());
        let signer = MemberSigner::new();
        let mut fleet_cfg = FleetConfig::new(fleet);
        if let Some(f) = fleet {
            let kept = identity::membership::load_certificate(&config.data_dir, &f, &peer_id)
                .filter(|c| c.not_after > swarm::unix_now());
            if let Some(cert) = kept {
                signer.set(keypair.clone(), cert.clone(), f);
                fleet_cfg.certificate = Some(cert);
            }
        }

        let mut swarm_cfg = SwarmConfig::new(keypair.clone());
        swarm_cfg.fleet = Some(fleet_cfg);
        swarm_cfg.listen = p2p_listen;
        swarm_cfg.bootstrap = bootstrap;
        swarm_cfg.udp_buffer_bytes = config.udp_buffer_bytes;
        swarm_cfg.site = config.site.clone();
        let (swarm, incoming) = swarm::spawn(swarm_cfg).await?;
        tracing::info!(%peer_id, addrs = ?swarm.listen_addrs(), "swarm listening");

        let mut background = Vec::new();
        let served: Arc<dyn PieceSource> = store.clone();
        let served = match &options.wrap_served {
            Some(wrap) => wrap(served),
            None => served,
        };
        background.push(tokio::spawn(transfer::run_server(
            incoming,
            served,
            ServerLimits {
                upload_bytes_per_s: config.upload_bytes_per_s,
                ..ServerLimits::default()
            },
            config.site.clone(),
        )));

        let mut fetch_cfg = FetchConfig::new(gateway_url.clone());
        fetch_cfg.peer_stall = Duration::from_secs(config.peer_stall_secs.max(1));
        fetch_cfg.tls = tls.clone();
        fetch_cfg.member = signer.clone();
        fetch_cfg.gateway_peer = fleet;
        fetch_cfg.download_bytes_per_s = config.download_bytes_per_s;
        let membership = MembershipConfig {
            http: http.clone(),
            gateway_url: gateway_url.clone(),
            key: keypair,
            token: fleet_token,
            data_dir: config.data_dir.clone(),
            signer: signer.clone(),
        };
        if let Some((peer, addrs)) = &gateway {
            let enrollment = membership.for_gateway(*peer);
            let cert = join_fleet(&swarm, &enrollment).await;
            join_gateway(&swarm, *peer, addrs).await;
            background.push(tokio::spawn(enrollment.keep(swarm.clone(), cert)));
        } else {
            background.push(tokio::spawn(keep_joining_gateway(
                http.clone(),
                gateway_url.clone(),
                swarm.clone(),
                membership,
                fleet,
            )));
        }
        background.push(tokio::spawn(watch_gateway(
            http.clone(),
            gateway_url.clone(),
            swarm.clone(),
            gateway.as_ref().map(|(_, a)| a.clone()).unwrap_or_default(),
            options.gateway_watch.unwrap_or(GATEWAY_WATCH),
        )));
        background.push(tokio::spawn(revocations::follow(
            http.clone(),
            gateway_url.clone(),
            swarm.clone(),
            config.data_dir.clone(),
            options.revocation_poll.unwrap_or(REVOCATION_POLL),
            fetch_cfg.revocations_heard.subscribe(),
        )));
        let network: Arc<dyn Network> = Arc::new(swarm.clone());
        let fetcher = Fetcher::new(fetch_cfg, network, store.clone(), store.clone())?;
        // Every download and every reader holds a lease, so eviction never takes a blob in use.
        let leases = store.clone();
        fetcher.set_leases(Arc::new(move |d| {
            leases.lease(d).map(|l| Box::new(l) as crate::fetch::Lease)
        }));

        background.push(tokio::spawn(reprovide_held(swarm.clone(), store.clone())));
        background.push(tokio::spawn(withdraw_evicted(swarm.clone(), store.clone())));
        if let Some(secs) = config.evict_unused_after_secs {
            background.push(tokio::spawn(evict_idle(
                store.clone(),
                Duration::from_secs(secs),
            )));
        }
        for digest in pinned {
            background.push(tokio::spawn(fetch_and_pin(
                fetcher.clone(),
                store.clone(),
                digest,
            )));
        }

        let (meta, announcer) = crate::meta::Meta::start(tags, Arc::new(swarm.clone()));
        background.push(announcer);
        let meta_inbound =
            swarm.accept_protocol(libp2p::StreamProtocol::new(crate::meta::META_PROTOCOL))?;
        let members = swarm.clone();
        let admit: crate::meta::Admit = Arc::new(move |peer| {
            let members = members.clone();
            Box::pin(async move { members.wait_member(&peer, Duration::from_secs(5)).await })
        });
        background.push(tokio::spawn(meta.clone().serve(meta_inbound, admit)));

        let source: Arc<dyn PieceSource> = store.clone();
        let oci_http = tls.client(Duration::from_secs(10)).map_err(tls_err)?;
        let state = OciState::new(fetcher.clone(), gateway_url, source)?
            .with_meta(meta)
            .with_gateway_http(oci_http, signer)
            .with_prefetch_token(prefetch_token)
            .with_pinning(store.pinning());
        let stats_state = StatsState {
            fetcher: fetcher.clone(),
            store: store.clone(),
            swarm: swarm.clone(),
            requests: state.requests.clone(),
        };
        let router = Router::new()
            .route("/flotilla/v1/stats", get(stats))
            .route("/flotilla/v1/store", get(store_listing))
            .route("/flotilla/v1/health", get(health::handle))
            .route("/metrics", get(metrics))
            .with_state(stats_state)
            .merge(oci::router(state));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let oci_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Node {
            oci_addr,
            peer_id,
            swarm,
            store,
            fetcher,
            listener: Some(listener),
            router,
            background,
            grace: Duration::from_secs(config.shutdown_grace_secs),
        })
    }

    /// The OCI endpoint's address.
    pub fn oci_addr(&self) -> SocketAddr {
        self.oci_addr
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The swarm handle.
    pub fn swarm(&self) -> &SwarmHandle {
        &self.swarm
    }

    /// The local store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The fetcher (blob downloads).
    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    /// Counters of what this node received and served.
    pub fn stats(&self) -> NodeStats {
        node_stats(&self.fetcher, &self.store, &self.swarm)
    }

    /// Serves the OCI endpoint until `shutdown` resolves, then gives in-flight requests the
    /// grace period and stops the swarm and the background tasks.
    ///
    /// # Errors
    /// [`NodeError::Serve`] if accepting connections fails for good.
    pub async fn serve(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        tracing::info!(addr = %self.oci_addr, peer_id = %self.peer_id, "node OCI endpoint listening");
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            let _ = signalled_tx.send(());
        };
        // The peer's address lets the prefetch route tell this host's callers from others.
        let app = self
            .router
            .clone()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let server = axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .into_future();
        tokio::pin!(server);
        let result = tokio::select! {
            biased;
            done = &mut server => done,
            _ = signalled_rx => match tokio::time::timeout(self.grace, server).await {
                Ok(done) => done,
                Err(_) => {
                    tracing::warn!("requests still in flight after the grace period; stopping anyway");
                    Ok(())
                }
            },
        };
        self.stop().await;
        result.map_err(NodeError::Serve)
    }

    /// Stops the swarm and background tasks and flushes the store.
    pub async fn stop(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
        }
        let _ = self.swarm.shutdown().await;
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "flushing the store at shutdown");
        }
        tracing::info!("node stopped");
    }
}

/// Starts a node and serves until `shutdown` resolves.
///
/// # Errors
/// As [`Node::start`] and [`Node::serve`].
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    Node::start(config).await?.serve(shutdown).await
}

#[derive(Clone)]
struct StatsState {
    fetcher: Fetcher,
    store: Arc<Store>,
    swarm: SwarmHandle,
    /// The OCI endpoint's request counts.
    requests: Arc<crate::metrics::RequestCounts>,
}

fn node_stats(fetcher: &Fetcher, store: &Store, swarm: &SwarmHandle) -> NodeStats {
    let TransferStats {
        peer_bytes,
        far_peer_bytes,
        origin_bytes,
        wasted_bytes,
        duplicate_bytes,
        cut_bytes,
        invalid_bytes,
        peers_banned,
        unsent_starts,
        ..
    } = fetcher.totals();
    let dht = swarm.dht_counters().snapshot();
    NodeStats {
        peer_bytes,
        far_peer_bytes,
        origin_bytes,
        wasted_bytes,
        duplicate_bytes,
        cut_bytes,
        invalid_bytes,
        peers_banned,
        served_bytes: store.served_total(),
        served_arriving_bytes: store.served_arriving_total(),
        stored_bytes: store.usage().0,
        pinned_bytes: store.pinned_usage().1,
        evicted_bytes: store.evicted_total().1,
        dht_provider_lookups: dht.0,
        dht_announcements: dht.1,
        dht_answered: dht.3,
        download_cap_wait_s: fetcher.download_cap_waited().as_secs_f64(),
        unsent_starts,
        known_peers: swarm.known_peers(),
    }
}

async fn stats(State(s): State<StatsState>) -> axum::Json<NodeStats> {
    axum::Json(node_stats(&s.fetcher, &s.store, &s.swarm))
}

/// One blob in `GET /flotilla/v1/store`.
#[derive(serde::Serialize)]
struct BlobListing {
    digest: flotilla_protocol::Digest,
    #[serde(flatten)]
    info: crate::store::EntryInfo,
}

/// `GET /flotilla/v1/store`: every blob in the store, most recently used first, with the
/// store's totals (SPEC §6.3).
async fn store_listing(State(s): State<StatsState>) -> axum::Json<serde_json::Value> {
    let (stored, capacity) = s.store.usage();
    let (pinned_blobs, pinned_bytes) = s.store.pinned_usage();
    let (evicted_blobs, evicted_bytes) = s.store.evicted_total();
    let list: Vec<BlobListing> = s
        .store
        .blobs()
        .into_iter()
        .map(|(digest, info)| BlobListing { digest, info })
        .collect();
    axum::Json(serde_json::json!({
        "stored_bytes": stored,
        "cache_bytes": capacity,
        "pinned_blobs": pinned_blobs,
        "pinned_bytes": pinned_bytes,
        "evicted_blobs": evicted_blobs,
        "evicted_bytes": evicted_bytes,
        "blobs": list,
    }))
}

/// `GET /metrics`: [`NodeStats`] in the Prometheus text format.
async fn metrics(State(s): State<StatsState>) -> impl axum::response::IntoResponse {
    use crate::metrics::{CONTENT_TYPE, Exposition, Kind};
    let n = node_stats(&s.fetcher, &s.store, &s.swarm);
    let mut e = Exposition::new();
    for (name, help, value) in [
        (
            "flotilla_node_peer_bytes_total",
            "Bytes of verified pieces received from peers.",
            n.peer_bytes,
        ),
        (
            "flotilla_node_far_peer_bytes_total",
            "The part of peer bytes received from peers of another site.",
            n.far_peer_bytes,
        ),
        (
            "flotilla_node_origin_bytes_total",
            "Bytes of verified pieces received from the gateway over HTTP.",
            n.origin_bytes,
        ),
        (
            "flotilla_node_wasted_bytes_total",
            "Bytes received and dropped: lost duplicates, pieces cut short, failed verification.",
            n.wasted_bytes,
        ),
        (
            "flotilla_node_duplicate_bytes_total",
            "The part of wasted bytes that were whole copies of pieces already held.",
            n.duplicate_bytes,
        ),
        (
            "flotilla_node_cut_bytes_total",
            "The part of wasted bytes from copies that ended part way (cancelled, lost upstream).",
            n.cut_bytes,
        ),
        (
            "flotilla_node_invalid_bytes_total",
            "The part of wasted bytes from pieces that failed verification.",
            n.invalid_bytes,
        ),
        (
            "flotilla_node_peers_banned_total",
            "Peers banned for sending corrupted pieces.",
            n.peers_banned,
        ),
        (
            "flotilla_node_served_bytes_total",
            "Piece bytes this node served to peers.",
            n.served_bytes,
        ),
        (
            "flotilla_node_served_arriving_bytes_total",
            "The part of served bytes passed on while the piece was still arriving here.",
            n.served_arriving_bytes,
        ),
        (
            "flotilla_node_evicted_bytes_total",
            "Bytes of blobs evicted to make room for others.",
            n.evicted_bytes,
        ),
    ] {
        e.metric(name, Kind::Counter, help, value as f64);
    }
    e.metric(
        "flotilla_node_stored_bytes",
        Kind::Gauge,
        "Bytes of blobs on disk.",
        n.stored_bytes as f64,
    )
    .metric(
        "flotilla_node_pinned_bytes",
        Kind::Gauge,
        "The part of the stored bytes in pinned blobs, which eviction never takes.",
        n.pinned_bytes as f64,
    )
    .metric(
        "flotilla_node_download_cap_wait_seconds_total",
        Kind::Counter,
        "Seconds downloads waited for the download cap, summed over them.",
        n.download_cap_wait_s,
    )
    .metric(
        "flotilla_node_unsent_starts_total",
        Kind::Counter,
        "Downloads that asked the gateway at once, as it had sent no byte of the blob yet.",
        n.unsent_starts as f64,
    )
    .metric(
        "flotilla_node_known_peers",
        Kind::Gauge,
        "Nodes in the DHT routing table.",
        n.known_peers as f64,
    )
    .metric(
        "flotilla_node_downloads_active",
        Kind::Gauge,
        "Blob downloads under way (each shared by every client reading that blob).",
        s.fetcher.active_downloads() as f64,
    );
    let (lookups, announcements, bootstraps, answered) = s.swarm.dht_counters().snapshot();
    e.family(
        "flotilla_node_dht_queries_total",
        Kind::Counter,
        "Kademlia queries this node started, by kind.",
        [
            (&[("kind", "provider_lookup")][..], lookups as f64),
            (&[("kind", "announcement")][..], announcements as f64),
            (&[("kind", "bootstrap")][..], bootstraps as f64),
        ],
    )
    .metric(
        "flotilla_node_dht_requests_answered_total",
        Kind::Counter,
        "Kademlia requests of other nodes this node answered.",
        answered as f64,
    );
    let h = health::check(&s).await;
    e.metric(
        "flotilla_node_ready",
        Kind::Gauge,
        "1 while the node holds a valid membership certificate and can fetch through the swarm.",
        f64::from(u8::from(h.ready)),
    )
    .metric(
        "flotilla_node_connected_peers",
        Kind::Gauge,
        "Peers with an open swarm connection.",
        h.connected_peers as f64,
    );
    s.requests.write(&mut e, "flotilla_node");
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        e.finish(),
    )
}

async fn gateway_info(
    http: &reqwest::Client,
    gateway_url: &str,
) -> Result<(PeerId, Vec<Multiaddr>), String> {
    let info: GatewayInfo = http
        .get(format!("{gateway_url}/flotilla/v1/info"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let peer = PeerId::from_str(&info.peer_id).map_err(|e| e.to_string())?;
    let addrs = info
        .addrs
        .iter()
        .filter_map(|a| Multiaddr::from_str(a).ok())
        .collect();
    Ok((peer, addrs))
}

async fn join_gateway(swarm: &SwarmHandle, peer: PeerId, addrs: &[Multiaddr]) {
    for addr in addrs {
        if let Err(e) = swarm.add_address(peer, addr.clone()).await {
            tracing::warn!(error = %e, %addr, "cannot add the gateway's address");
        }
    }
    match swarm.bootstrap().await {
        Ok(n) => tracing::info!(gateway = %peer, routing_table = n, "joined the gateway's swarm"),
        Err(e) => tracing::warn!(error = %e, "bootstrap through the gateway failed"),
    }
}

/// The fleet token from the config: `fleet_token`, else the contents of `fleet_token_file`
/// (read again at every use, so a rotated file needs no restart).
fn fleet_token(config: &NodeConfig) -> Result<FleetToken, NodeError> {
    let missing = || {
        NodeError::Config(
            "no fleet token: set fleet_token or fleet_token_file (--fleet-token, \
             FLOTILLA_FLEET_TOKEN); the gateway keeps it in <data_dir>/fleet.token"
                .to_owned(),
        )
    };
    match (&config.fleet_token, &config.fleet_token_file) {
        (Some(t), _) if t.trim().is_empty() => Err(missing()),
        (Some(t), _) => Ok(FleetToken::from(t.as_str())),
        (None, Some(path)) => FleetToken::file(path).map_err(NodeError::Config),
        (None, None) => Err(missing()),
    }
}

/// Makes the gateway's peer the fleet key and gets this node's certificate (stored or new);
/// a failure is logged, and the keeper retries.
async fn join_fleet(
    swarm: &SwarmHandle,
    enrollment: &Enrollment,
) -> Option<flotilla_protocol::membership::MemberCertificate> {
    if let Err(e) = swarm.set_fleet(enrollment.gateway).await {
        tracing::warn!(error = %e, "cannot set the fleet key");
        return None;
    }
    match enrollment.once(swarm).await {
        Ok(cert) => Some(cert),
        Err(e) => {
            tracing::error!(error = %e, "cannot join the fleet; retrying in the background");
            None
        }
    }
}

/// `Err` if the gateway at `url` is `peer` while the config pins another identity.
fn check_pinned(pinned: Option<PeerId>, peer: PeerId, url: &str) -> Result<(), NodeError> {
    match pinned {
        Some(p) if p != peer => Err(NodeError::Config(format!(
            "the gateway at {url} is {peer}, not the configured gateway_peer_id {p}"
        ))),
        _ => Ok(()),
    }
}

/// Retries `GET /flotilla/v1/info` (1 s doubling to 30 s) until the gateway answers, then
/// enrolls, joins it, and keeps the membership certificate fresh. `expected`: the identity the
/// node already trusts (pinned, or seen before), which the gateway must still have.
async fn keep_joining_gateway(
    http: reqwest::Client,
    gateway_url: String,
    swarm: SwarmHandle,
    membership: MembershipConfig,
    expected: Option<PeerId>,
) {
    let mut wait = Duration::from_secs(1);
    loop {
        match gateway_info(&http, &gateway_url).await {
            Ok((peer, _)) if expected.is_some_and(|e| e != peer) => tracing::error!(
                %peer,
                expected = ?expected.map(|e| e.to_string()),
                url = %gateway_url,
                "the gateway answers with another identity than the one this node trusts; not \
                 joining it (check gateway_peer_id, or restart the node to trust a re-keyed gateway)"
            ),
            Ok((peer, addrs)) => {
                let enrollment = membership.for_gateway(peer);
                let cert = join_fleet(&swarm, &enrollment).await;
                join_gateway(&swarm, peer, &addrs).await;
                enrollment.keep(swarm, cert).await;
                return;
            }
            Err(e) => tracing::debug!(error = %e, "gateway not reachable yet"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Every `every`, while the swarm has no connection to the gateway, re-reads the gateway's
/// swarm addresses and, if they changed (a restart on other ports), rejoins through them: the
/// gateway seeds its blobs into the swarm only if nodes can reach it there. An idle-closed
/// connection to unchanged addresses costs one `GET` and nothing else.
async fn watch_gateway(
    http: reqwest::Client,
    gateway_url: String,
    swarm: SwarmHandle,
    mut known: Vec<Multiaddr>,
    every: Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        // Until the gateway's identity is known, `keep_joining_gateway` does this job.
        let Some(fleet) = swarm.fleet() else {
            continue;
        };
        if swarm
            .connected_peers()
            .await
            .is_ok_and(|c| c.contains(&fleet))
        {
            continue;
        }
        match gateway_info(&http, &gateway_url).await {
            Ok((peer, addrs)) if peer == fleet => {
                if addrs != known {
                    tracing::info!(gateway = %peer, "the gateway's swarm addresses changed; rejoining");
                    join_gateway(&swarm, peer, &addrs).await;
                    known = addrs;
                }
            }
            Ok((peer, _)) => tracing::error!(
                %peer,
                expected = %fleet,
                url = %gateway_url,
                "the gateway answers with another identity; not rejoining it"
            ),
            Err(e) => tracing::debug!(error = %e, "gateway not reachable"),
        }
    }
}

/// Downloads a configured pinned blob if needed, then pins it.
async fn fetch_and_pin(fetcher: Fetcher, store: Arc<Store>, digest: Digest) {
    let complete = store.entry(&digest).is_some_and(|e| e.complete);
    if !complete {
        let done = match fetcher.open(&digest).await {
            Ok(download) => download.wait_complete().await,
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, %digest, "cannot fetch a pinned blob");
            return;
        }
    }
    match store.pin(&digest).await {
        Ok(_) => tracing::info!(%digest, "pinned"),
        Err(e) => tracing::warn!(error = %e, %digest, "cannot pin"),
    }
}
