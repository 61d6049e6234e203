//! `GET /flotilla/v1/health`: whether this node can fetch through the swarm, for a DaemonSet's
//! readiness probe and for an operator asking why pulls only ever come from the gateway.
//!
//! Ready means the node holds a valid membership certificate (SPEC §5.3): without one, members
//! refuse its piece requests, so it gets nothing from the swarm. The gateway being unreachable
//! does not make a node unready — it keeps serving what it and its peers hold (SPEC §6.4) — nor
//! does a full disk, which only stops new pieces; both are reported.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::StatsState;

/// The answer (`200` when `ready`, else `503`).
#[derive(Debug, Serialize)]
pub(super) struct Health {
    pub ready: bool,
    /// Why not ready (empty when ready).
    pub reasons: Vec<String>,
    /// This node's peer id (what the gateway's revocation list would name).
    pub peer_id: String,
    /// A valid membership certificate is held (always true on a swarm without membership).
    pub member: bool,
    /// When the certificate runs out (renewed half way through its life).
    pub certificate_not_after_unix_s: Option<u64>,
    /// The gateway's peer id (the fleet key), once learned.
    pub gateway_peer_id: Option<String>,
    /// Whether a swarm connection to the gateway is open now.
    pub gateway_connected: bool,
    pub connected_peers: usize,
    pub known_peers: usize,
    /// Why the latest piece write failed for want of space, until a write succeeds again.
    pub disk_full: Option<String>,
}

/// Gathers [`Health`] from the swarm and the store.
pub(super) async fn check(s: &StatsState) -> Health {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let fleet = s.swarm.fleet();
    let cert = s.swarm.certificate();
    let connected = s.swarm.connected_peers().await.unwrap_or_default();
    let mut reasons = Vec::new();
    let member = if !s.swarm.membership_enforced() {
        true
    } else if fleet.is_none() {
        reasons.push(
            "the gateway's identity is not known yet: it has not answered /flotilla/v1/info \
             since the node started"
                .to_owned(),
        );
        false
    } else {
        match &cert {
            None => {
                reasons.push(
                    "no membership certificate: enrollment failed or is under way (a wrong \
                     fleet token is logged as `cannot join the fleet`)"
                        .to_owned(),
                );
                false
            }
            Some(c) if c.not_after <= now => {
                reasons.push(format!(
                    "the membership certificate ran out at {} (Unix seconds) and was not renewed",
                    c.not_after
                ));
                false
            }
            Some(_) if s.swarm.is_revoked(&s.swarm.local_peer_id()) => {
                reasons.push(
                    "the gateway revoked this node's fleet membership (its revocation list \
                     names this peer id): members refuse it until an admin restores it"
                        .to_owned(),
                );
                false
            }
            Some(_) => true,
        }
    };
    Health {
        ready: member,
        reasons,
        peer_id: s.swarm.local_peer_id().to_string(),
        member,
        certificate_not_after_unix_s: cert.map(|c| c.not_after),
        gateway_peer_id: fleet.map(|f| f.to_string()),
        gateway_connected: fleet.is_some_and(|f| connected.contains(&f)),
        connected_peers: connected.len(),
        known_peers: crate::ports::Network::known_peers(&s.swarm),
        disk_full: s.store.disk_full_now(),
    }
}

/// The route's handler.
pub(super) async fn handle(State(s): State<StatsState>) -> Response {
    let h = check(&s).await;
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(h)).into_response()
}
