//! The gateway as a member of the node swarm: it runs the same swarm and transfer server as a
//! node, serves pieces straight from its blob files, and announces every blob it holds — those
//! on disk at start and each one as it lands — so nodes find it as a provider.
//!
//! Only fleet members (nodes holding a certificate the gateway issued, see [`crate::fleet`]) get
//! pieces from it, enter its routing table or leave provider records there.
//!
//! Nodes treat the gateway's peer id as the scheduler's *origin* (see the node's fetch driver),
//! so its pieces are asked for only when no other peer has them, whichever transport carries
//! them.

use std::str::FromStr as _;
use std::sync::Arc;

use flotilla_node::ports::Network as _;
use flotilla_node::swarm::{self, FleetConfig, SwarmConfig, SwarmHandle};
use flotilla_node::transfer::{self, ServerLimits};
use libp2p::Multiaddr;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::GatewayError;
use crate::fleet::Revocations;
use crate::seed::Seed;

/// The running swarm side of the gateway.
pub struct P2p {
    swarm: SwarmHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl P2p {
    /// Starts the swarm on `config.p2p_listen` with the gateway's identity, the transfer server
    /// over its blob files, and the announcer. `Ok(None)` when `p2p_listen` is empty.
    ///
    /// # Errors
    /// [`GatewayError::Swarm`] if an address is invalid or the swarm cannot start.
    pub async fn start(
        seed: &Seed,
        revocations: Arc<Revocations>,
        config: &Config,
    ) -> Result<Option<P2p>, GatewayError> {
        if config.p2p_listen.is_empty() {
            return Ok(None);
        }
        let listen = config
            .p2p_listen
            .iter()
            .map(|a| {
                Multiaddr::from_str(a)
                    .map_err(|e| GatewayError::Swarm(format!("p2p_listen {a:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut cfg = SwarmConfig::new(seed.keypair().clone());
        cfg.listen = listen;
        cfg.udp_buffer_bytes = config.udp_buffer_bytes;
        // The gateway's key is the fleet key: it is a member by definition and needs no
        // certificate; nodes must show theirs (SPEC §5.3).
        cfg.fleet = Some(FleetConfig::new(Some(seed.peer_id())));
        let (swarm, incoming) = swarm::spawn(cfg)
            .await
            .map_err(|e| GatewayError::Swarm(e.to_string()))?;
        let addrs: Vec<String> = swarm.listen_addrs().iter().map(|a| a.to_string()).collect();
        tracing::info!(peer_id = %seed.peer_id(), ?addrs, "gateway swarm listening");
        seed.set_swarm_addrs(addrs);
        let mut tasks = vec![tokio::spawn(transfer::run_server_sharing(
            incoming,
            seed.source(),
            ServerLimits::default(),
            None,
            seed.egress_pace(),
        ))];
        tasks.push(tokio::spawn(announce(seed.clone(), swarm.clone())));
        tasks.push(tokio::spawn(track_connected(seed.clone(), swarm.clone())));
        tasks.push(tokio::spawn(follow_revocations(revocations, swarm.clone())));
        Ok(Some(P2p { swarm, tasks }))
    }

    /// Stops the announcer, the transfer server and the swarm.
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        let _ = self.swarm.shutdown().await;
    }
}

/// Keeps the swarm's revoked peers those of the gateway's list, from start and at every
/// change: a revoked member is disconnected within a second and refused from then on.
async fn follow_revocations(revocations: Arc<Revocations>, swarm: SwarmHandle) {
    let mut changes = revocations.subscribe();
    loop {
        for peer in swarm.set_revoked(&revocations.peers()) {
            tracing::info!(%peer, "revoked member: the gateway's swarm refuses it");
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the seed's set of connected peers current (once a second): the origin's refusal window
/// lasts longer for a member that is still connected (`crate::api::dedup`).
async fn track_connected(seed: Seed, swarm: SwarmHandle) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match swarm.connected_peers().await {
            Ok(peers) => seed.set_connected(peers),
            // The swarm stopped: nobody counts as connected.
            Err(_) => {
                seed.set_connected([]);
                return;
            }
        }
    }
}

/// Provides every blob held now, then each new one as it lands, and stops providing each one
/// garbage collection removes. New blobs are subscribed to before the listing, so none falls
/// between the two; if notices were lost, the listing is read again.
async fn announce(seed: Seed, swarm: SwarmHandle) {
    let mut new_blobs = seed.subscribe_new_blobs();
    let mut removed = seed.subscribe_removed_blobs();
    let mut relist = true;
    loop {
        if relist {
            relist = false;
            match seed.held_digests().await {
                Ok(all) => {
                    tracing::info!(blobs = all.len(), "announcing held blobs to the swarm");
                    for digest in all {
                        if let Err(e) = swarm.provide(&digest).await {
                            tracing::warn!(error = %e, %digest, "cannot announce a blob");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list held blobs to announce"),
            }
        }
        tokio::select! {
            landed = new_blobs.recv() => match landed {
                Ok(digest) => {
                    if let Err(e) = swarm.provide(&digest).await {
                        tracing::warn!(error = %e, %digest, "cannot announce a blob");
                    }
                }
                Err(RecvError::Lagged(_)) => relist = true,
                Err(RecvError::Closed) => return,
            },
            gone = removed.recv() => match gone {
                // Pushed again since (its landing may be read first): still provided.
                Ok(digest) if seed.blob_size(&digest).await.is_ok() => {}
                Ok(digest) => {
                    if let Err(e) = swarm.unprovide(&digest).await {
                        tracing::warn!(error = %e, %digest, "cannot withdraw a removed blob");
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "removed blobs not withdrawn from the swarm");
                }
                Err(RecvError::Closed) => return,
            },
        }
    }
}
