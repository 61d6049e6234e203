//! Revoking fleet members (SPEC §3.7, §5.3):
//!
//! - `GET /flotilla/v1/revoked`: the signed revocation list (`SignedRevocationList::encode`,
//!   `application/octet-stream`, `ETag: "<seq>"`, `304` for a matching `If-None-Match`), what
//!   nodes poll; with `Accept: application/json`, the list for people instead: `{"seq",
//!   "peers": {"<peer id>": {"revoked_unix_s", "reason"}}}`. Open, like `info`.
//! - `POST /flotilla/v1/revoke` with `{"peer_id", "reason"?}`: revokes a member at once (its
//!   certificate stops counting at the gateway, then at every node within one poll).
//! - `POST /flotilla/v1/restore` with `{"peer_id"}`: undoes it.
//! - `GET /flotilla/v1/members`: who joined (`crate::fleet::Members`), latest first, each with
//!   whether it is connected to the gateway's swarm now and whether it is revoked: where an
//!   admin finds the peer id of a host to revoke.
//!
//! Changes and the member list are for admins when `[auth]` is on (like garbage collection), open otherwise (like
//! every other write of an open gateway), audited as `member.revoke` / `member.restore`, and
//! answered with the list as JSON plus `"changed"` (false when there was nothing to do).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use libp2p_identity::PeerId;
use serde::Deserialize;

use super::{ApiResult, AppState, json_response};
use crate::audit::{Action, Event};
use crate::error::{ApiError, ErrorCode};
use crate::fleet::{MAX_REASON, RevokeError};

/// Largest body of a revoke or restore request.
const MAX_BODY: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    peer_id: String,
    #[serde(default)]
    reason: String,
}

/// `GET /flotilla/v1/revoked`.
pub(super) fn list(st: &AppState, req: &Request, with_body: bool) -> ApiResult {
    let rev = st.registry.revocations();
    let wants_json = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        return Ok(listing(st, None));
    }
    let (seq, bytes) = rev
        .signed(st.registry.seed().keypair())
        .map_err(|e| ApiError::internal("signing the revocation list", &e))?;
    let etag = format!("\"{seq}\"");
    let unchanged = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if unchanged {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let len = bytes.len();
        let mut r = Response::new(if with_body {
            Body::from(bytes)
        } else {
            Body::empty()
        });
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        res.headers_mut().insert(header::ETAG, v);
    }
    Ok(res)
}

/// The list as JSON, with `changed` when answering a change.
fn listing(st: &AppState, changed: Option<bool>) -> Response {
    let (seq, peers) = st.registry.revocations().listing();
    let mut body = serde_json::json!({ "seq": seq, "peers": peers });
    if let Some(c) = changed {
        body["changed"] = serde_json::Value::Bool(c);
    }
    json_response(StatusCode::OK, &body)
}

/// With `[auth]`, refuses anyone but an admin. (Headers and URI, not the request: its body
/// is not `Sync`, so a borrow of it may not live across the check.)
async fn admins_only(
    st: &AppState,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
    what: &str,
) -> Result<(), ApiError> {
    if let Some(auth) = &st.auth {
        auth.require(headers, uri, |p, who| p.is_admin(who), what)
            .await?;
    }
    Ok(())
}

/// `GET /flotilla/v1/members`.
pub(super) async fn members(
    st: &AppState,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> ApiResult {
    admins_only(st, headers, uri, "the member list is for admins").await?;
    let seed = st.registry.seed();
    let revoked = st.registry.revocations();
    let list: Vec<serde_json::Value> = st
        .registry
        .members()
        .list()
        .into_iter()
        .map(|(peer, m)| {
            serde_json::json!({
                "peer_id": peer.to_string(),
                "first_joined_unix_s": m.first_joined_unix_s,
                "last_joined_unix_s": m.last_joined_unix_s,
                "certificate_not_after_unix_s": m.certificate_not_after_unix_s,
                "addr": m.addr,
                "joins": m.joins,
                "connected": seed.is_connected(&peer),
                "revoked": revoked.contains(&peer),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "count": list.len(), "members": list }),
    ))
}

/// `POST /flotilla/v1/revoke` (`revoke` true) or `/restore`.
pub(super) async fn change(st: &AppState, req: Request, revoke: bool) -> ApiResult {
    admins_only(
        st,
        req.headers(),
        req.uri(),
        "revoking fleet members is for admins",
    )
    .await?;
    let origin = Arc::new(st.events.origin(&req));
    let bad = |why: String| {
        ApiError::new(ErrorCode::Unsupported)
            .with_status(StatusCode::BAD_REQUEST)
            .with_message("invalid revocation request")
            .with_detail(why)
    };
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|_| {
            bad(format!(
                "the body is unreadable or longer than {MAX_BODY} bytes"
            ))
        })?;
    let c: Change = serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))?;
    let peer: PeerId = c
        .peer_id
        .parse()
        .map_err(|e| bad(format!("peer_id {:?}: {e}", c.peer_id)))?;
    if peer == st.registry.seed().peer_id() {
        return Err(bad(
            "that is the gateway's own peer id (the fleet key)".to_owned()
        ));
    }
    if c.reason.len() > MAX_REASON {
        return Err(bad(format!("the reason is longer than {MAX_REASON} bytes")));
    }
    let rev = st.registry.revocations().clone();
    let reason = c.reason.clone();
    let now = crate::fleet::unix_now();
    let changed = tokio::task::spawn_blocking(move || {
        if revoke {
            rev.revoke(peer, &reason, now)
        } else {
            rev.restore(peer)
        }
    })
    .await
    .map_err(|e| ApiError::internal("the revocation task", &e))?
    .map_err(|e| match e {
        RevokeError::Full => bad(e.to_string()),
        other => ApiError::internal("changing the revocation list", &other),
    })?;
    if changed {
        let (action, what) = if revoke {
            tracing::warn!(%peer, reason = %c.reason, "fleet member revoked");
            (Action::MemberRevoke, format!("peer {peer}: {}", c.reason))
        } else {
            tracing::info!(%peer, "fleet member restored");
            (Action::MemberRestore, format!("peer {peer}"))
        };
        let mut ev = Event::new(action, &origin);
        ev.reason = Some(what);
        st.events.record(ev).await;
    }
    Ok(listing(st, Some(changed)))
}
