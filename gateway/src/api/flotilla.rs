//! flotilla's own endpoints, for nodes (repository-free, under `/flotilla/v1/`):
//!
//! - `GET /flotilla/v1/info`: `{"peer_id": "<base58>", "addrs": ["<multiaddr>/p2p/<peer id>", …]}`,
//!   the gateway's identity and its swarm listen addresses (empty while no swarm runs).
//! - `GET /flotilla/v1/pieces/<digest>`: the blob's signed piece table
//!   (`SignedPieceTable::encode`, `application/octet-stream`), computed on first request if
//!   needed; `404 BLOB_UNKNOWN` if no blob file of that digest is held.
//! - `GET`/`HEAD /flotilla/v1/blobs/<digest>`: the blob, as `GET /v2/<name>/blobs/<digest>`
//!   answers it (`Range`, `If-None-Match`, `If-Range`), whatever repositories link it: the
//!   origin fallback for pieces no peer serves. For a member, a piece range another member
//!   is being sent or was sent within the refusal window is answered `429` with
//!   `Flotilla-Holder`, unless the request offers `Flotilla-Alternatives: bytes=a-b,c-d,…`
//!   (at most 32 closed ranges) and one of them is free: that one is sent, with its
//!   `Content-Range` (SPEC §3.7; `400 RANGE_INVALID` for a malformed header).
//!   The answer carries `Flotilla-Swarm-Size`: how many table fetches of this blob the gateway
//!   saw in the last 30–60 s, this one included (nodes pulling it now).
//! - `GET /flotilla/v1/swarm/<digest>`: `{"fetchers": n}`, the same count without adding one;
//!   nodes poll it while a download starts.
//! - `GET /flotilla/v1/tags/<name>/<tag>`: the tag's signed record
//!   (`SignedTagRecord::encode`, `application/octet-stream`): the manifest digest or "deleted",
//!   with the sequence number of that tag write (spec §6.4); `404 MANIFEST_UNKNOWN` for a tag
//!   that never existed.
//! - `POST /flotilla/v1/join`: a fleet membership certificate for the node that presents the
//!   fleet token (`Authorization: Bearer`) and a proof of its key (`crate::fleet`); `401
//!   UNAUTHORIZED` without the right token, `400 UNSUPPORTED` for a bad proof.
//! - `GET /flotilla/v1/health`: whether the gateway can serve pulls (its index and blob files
//!   answer real probes, `200`, else `503`), with `reasons`, `warnings` for what stops only
//!   pushes (a failed probe write, a full disk), the swarm's listen addresses and connected
//!   peers, and the storage probes' results (`crate::registry::StorageHealth`).
//! - `POST /flotilla/v1/gc[?dry_run=true]`: a garbage collection now (see `collect.rs`).
//! - `GET /flotilla/v1/stats`: the seed's counters (`http_blob_bytes`, `swarm_bytes`,
//!   `tables_computed`) as JSON, with the audit log's (`audit`: `enabled`, `lines_written`,
//!   `lines_dropped`, `write_errors`) and one entry per notification endpoint
//!   (`notifications`: `name`, `delivered`, `failed`, `dropped`, `expired`, `pending`).
//!
//! Every answer carries `Flotilla-Revocations: <seq>`, the revocation list's (SPEC §5.3): nodes
//! that see it above the list they hold fetch the list at once.
//!
//! With a fleet (a join token configured, which is the default), `pieces`, `blobs`, `swarm` and
//! `tags` serve members only: the request must carry a valid `Flotilla-Member` header
//! ([`crate::fleet::Fleet::member`]), else `401 UNAUTHORIZED` with
//! `WWW-Authenticate: Flotilla-Member realm="flotilla-fleet"` (audited as `auth.failure`).
//! `revoked`, `revoke` and `restore` are in `revoke.rs`.
//! `info`, `join`, `stats`, `health` and `revoked` stay open: the first two are how a node finds the fleet
//! and joins it, the others how an operator or a probe watches the gateway.
//!
//! Errors use the OCI error bodies of the rest of the API: a malformed digest is
//! `400 DIGEST_INVALID`, an unknown path `404 UNSUPPORTED`, another method
//! `405 UNSUPPORTED` with `Allow`. `HEAD` is accepted wherever `GET` is.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use flotilla_protocol::{Digest, DigestError, ReferenceError, RepoName, Tag};

use super::headers::{self, DOCKER_CONTENT_DIGEST};
use super::{ApiResult, AppState, blobs, dedup, json_response, method_not_allowed, not_found};
use crate::error::{ApiError, ErrorCode};
use crate::registry::RegistryError;

/// Header on a piece table: nodes that fetched it in the last 30–60 s.
const SWARM_SIZE: &str = "flotilla-swarm-size";
/// Header on an origin refusal: the member that was sent the range.
const HOLDER: axum::http::HeaderName = axum::http::HeaderName::from_static("flotilla-holder");

/// Header on an origin request: other byte ranges the member would take instead (SPEC §3.7).
const ALTERNATIVES: axum::http::HeaderName =
    axum::http::HeaderName::from_static("flotilla-alternatives");

/// Header on an origin request: members the asker banned (their copies are no use to it).
const BANNED: axum::http::HeaderName = axum::http::HeaderName::from_static("flotilla-banned");
/// Most members one `Flotilla-Banned` header may name.
const MAX_BANNED: usize = 32;

/// The path prefix of these endpoints.
const PREFIX: &str = "/flotilla/v1/";

/// Whether `path` (percent-decoded) belongs to these endpoints rather than to `/v2/`.
pub(super) fn owns(path: &str) -> bool {
    path == "/flotilla" || path.starts_with("/flotilla/")
}

/// Header on every answer here: the revocation list's `seq`, so that a node that asks for
/// anything learns of a revocation at once instead of at its next poll (SPEC §5.3).
const REVOCATIONS: axum::http::HeaderName =
    axum::http::HeaderName::from_static(flotilla_node::gateway_http::REVOCATIONS_HEADER);

/// Routes one request under `/flotilla/` by path and method.
pub(super) async fn handle(st: &AppState, path: &str, req: Request) -> ApiResult {
    let mut res = route(st, path, req).await?;
    res.headers_mut().insert(
        REVOCATIONS,
        HeaderValue::from(st.registry.revocations().seq()),
    );
    Ok(res)
}

async fn route(st: &AppState, path: &str, req: Request) -> ApiResult {
    let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
    let m = req.method().clone();
    let get = m == Method::GET || m == Method::HEAD;
    let member_only = matches!(
        rest.split_once('/'),
        Some(("pieces" | "blobs" | "swarm" | "tags", _))
    );
    let member = match require_member(st, &req) {
        Ok(m) => m,
        Err(refused) if member_only => {
            let (e, origin) = *refused;
            record_refusal(st, origin, &e).await;
            return Err(e);
        }
        Err(_) => None,
    };
    match rest.split_once('/') {
        None if rest == "info" && get => Ok(info(st)),
        None if rest == "stats" && get => Ok(json_response(StatusCode::OK, &stats(st))),
        None if rest == "health" && get => Ok(health(st).await),
        None if rest == "info" || rest == "stats" || rest == "health" => {
            Err(method_not_allowed("GET, HEAD"))
        }
        None if rest == "join" && m == Method::POST => join(st, req).await,
        None if rest == "join" => Err(method_not_allowed("POST")),
        None if rest == "members" && get => {
            super::revoke::members(st, req.headers(), req.uri()).await
        }
        None if rest == "members" => Err(method_not_allowed("GET, HEAD")),
        None if rest == "revoked" && get => super::revoke::list(st, &req, m == Method::GET),
        None if rest == "revoked" => Err(method_not_allowed("GET, HEAD")),
        None if rest == "revoke" && m == Method::POST => super::revoke::change(st, req, true).await,
        None if rest == "restore" && m == Method::POST => {
            super::revoke::change(st, req, false).await
        }
        None if rest == "revoke" || rest == "restore" => Err(method_not_allowed("POST")),
        None if rest == "gc" && m == Method::POST => super::collect::trigger(st, req).await,
        None if rest == "gc" => Err(method_not_allowed("POST")),
        Some(("pieces", d)) if get => pieces(st, &parse_digest(d)?, m == Method::GET).await,
        Some(("pieces", _)) => Err(method_not_allowed("GET, HEAD")),
        Some(("swarm", d)) if get => {
            let d = parse_digest(d)?;
            let seed = st.registry.seed();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "fetchers": seed.swarm_size(&d), "unsent": seed.unsent(&d) }),
            ))
        }
        Some(("swarm", _)) => Err(method_not_allowed("GET, HEAD")),
        Some(("tags", name_tag)) if get => tag_record(st, name_tag, m == Method::GET).await,
        Some(("tags", _)) => Err(method_not_allowed("GET, HEAD")),
        Some(("blobs", d)) => match m {
            Method::HEAD => {
                let d = parse_digest(d)?;
                let size = st.registry.seed().blob_size(&d).await?;
                Ok(blobs::head_answer(&d, size, req.headers()))
            }
            Method::GET => {
                let d = parse_digest(d)?;
                let (file, size) = st.registry.seed().blob_open(&d).await?;
                st.registry.seed().note_sent(&d);
                let alternatives = alternatives(req.headers(), size)?;
                let distrusted = banned_by_asker(req.headers())?;
                let mut substituted = None;
                let piece = piece_range(req.headers(), size);
                // A member's piece waits for a send slot (`send_pool.rs`), with the refusal
                // window on or off; whole blobs and requests without a member identity do not.
                let pooled = member.is_some() && piece.is_some();
                // In a block: `holders` is not `Send`, and the wait for a send slot follows.
                let mut guard = {
                    let connected =
                        |p: &libp2p_identity::PeerId| st.registry.seed().is_connected(p);
                    let holders = dedup::Holders {
                        connected: &connected,
                        distrusted: &distrusted,
                    };
                    match (member, piece) {
                        (Some(m), Some(asked)) => {
                            let (guard, sent) = st
                                .origin_dedup
                                .admit_any(&d, asked, &alternatives, m, &holders)
                                .map_err(|holder| {
                                    ApiError::new(ErrorCode::TooManyRequests)
                                        .with_message(
                                            "being sent, or just sent, to another member: take \
                                             it from the swarm",
                                        )
                                        .with_header(
                                            header::RETRY_AFTER,
                                            HeaderValue::from_static("2"),
                                        )
                                        .with_header(HOLDER, headers::value(&holder.to_string()))
                                })?;
                            if sent != asked {
                                substituted = Some(sent);
                            }
                            guard
                        }
                        _ => None,
                    }
                };
                let slot = if pooled {
                    if let Some(g) = guard.as_mut() {
                        g.queued();
                    }
                    let slot = st.send_pool.acquire().await.map_err(|_| {
                        ApiError::new(ErrorCode::TooManyRequests)
                            .with_message("too many piece requests waiting: try again")
                            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
                    })?;
                    if let Some(g) = guard.as_mut() {
                        g.sending();
                    }
                    Some(slot)
                } else {
                    None
                };
                let res = match substituted {
                    // An alternative: answered as if it had been the `Range` asked for; its
                    // `Content-Range` says which one it is.
                    Some((start, end)) => {
                        let mut h = req.headers().clone();
                        h.insert(
                            header::RANGE,
                            headers::value(&format!("bytes={start}-{end}")),
                        );
                        h.remove(header::IF_RANGE);
                        blobs::send(st, &d, file, size, &h)?
                    }
                    None => blobs::send(st, &d, file, size, req.headers())?,
                };
                Ok(if guard.is_some() || slot.is_some() {
                    // The window starts, and the send slot frees, when the body ends (or the
                    // member goes away).
                    res.map(|body| {
                        Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                            let _held = &guard;
                            // The pool adapts its limit to the bytes its answers send.
                            if let (Some(slot), Some(data)) = (&slot, f.data_ref()) {
                                slot.sent(data.len());
                            }
                            f
                        }))
                    })
                } else {
                    res
                })
            }
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        _ => Err(not_found()),
    }
}

/// `POST /flotilla/v1/join`: a membership certificate for a node that shows the fleet token and
/// proves its key (SPEC §3.7, §5.3; see [`crate::fleet::Fleet::join`]).
async fn join(st: &AppState, req: Request) -> ApiResult {
    let Some(fleet) = &st.fleet else {
        return Err(not_found());
    };
    let from = st.events.origin(&req).remote.unwrap_or_default();
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, crate::fleet::MAX_JOIN_BODY)
        .await
        .map_err(|_| {
            ApiError::new(ErrorCode::Unsupported)
                .with_status(StatusCode::BAD_REQUEST)
                .with_message("join request body unreadable or too large")
        })?;
    let now = crate::fleet::unix_now();
    let (member, answer) = fleet.join(
        &parts.headers,
        &body,
        st.registry.seed().keypair(),
        st.registry.revocations(),
        now,
    )?;
    st.registry
        .members()
        .joined(member, &from, now, answer.not_after);
    Ok(json_response(StatusCode::OK, &answer))
}

/// With a fleet, `Ok` only for a request a member signed (see the module docs); a refusal
/// comes with the request's origin, for the audit line.
type Refusal = Box<(ApiError, crate::audit::Origin)>;

/// The ranges a `Flotilla-Alternatives` header offers (none without one); `400 RANGE_INVALID`
/// for one that is malformed.
fn alternatives(h: &axum::http::HeaderMap, size: u64) -> Result<Vec<(u64, u64)>, ApiError> {
    let Some(v) = h.get(ALTERNATIVES) else {
        return Ok(Vec::new());
    };
    let bad = |why: String| {
        ApiError::new(ErrorCode::RangeInvalid)
            .with_status(StatusCode::BAD_REQUEST)
            .with_message(why)
    };
    let text = v
        .to_str()
        .map_err(|_| bad("Flotilla-Alternatives is not text".to_owned()))?;
    flotilla_protocol::range::parse_alternatives(text, size).map_err(|e| bad(e.to_string()))
}

/// The members a `Flotilla-Banned` header names (comma-separated peer ids, at most
/// [`MAX_BANNED`]); `400 UNSUPPORTED` for one that is malformed.
fn banned_by_asker(h: &axum::http::HeaderMap) -> Result<Vec<libp2p_identity::PeerId>, ApiError> {
    let Some(v) = h.get(BANNED) else {
        return Ok(Vec::new());
    };
    let bad = || {
        ApiError::new(ErrorCode::Unsupported)
            .with_status(StatusCode::BAD_REQUEST)
            .with_message(format!(
                "Flotilla-Banned must be at most {MAX_BANNED} comma-separated peer ids"
            ))
    };
    let text = v.to_str().map_err(|_| bad())?;
    let ids: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if ids.len() > MAX_BANNED {
        return Err(bad());
    }
    ids.into_iter()
        .map(|s| s.parse().map_err(|_| bad()))
        .collect()
}

/// The byte range a `Range` header asks of a blob of `size`, if it asks for one satisfiable
/// range.
fn piece_range(h: &axum::http::HeaderMap, size: u64) -> Option<(u64, u64)> {
    let r = h.get(header::RANGE)?.to_str().ok()?;
    match headers::parse_range(r, size) {
        headers::RangeAnswer::Partial { start, end } => Some((start, end)),
        _ => None,
    }
}

fn require_member(
    st: &AppState,
    req: &Request,
) -> Result<Option<libp2p_identity::PeerId>, Refusal> {
    if st.fleet.is_none() {
        return Ok(None);
    }
    signed_by(st, req)
        .and_then(|m| m.ok_or_else(crate::fleet::member_required))
        .map(Some)
        .map_err(|e| Box::new((e, st.events.origin(req))))
}

/// The member whose `Flotilla-Member` header signs `req` for this gateway; `Ok(None)` without
/// one, `401` for one that does not verify (see [`crate::fleet::Fleet::member`]), `403
/// DENIED` for a member the gateway revoked.
pub(super) fn signed_by(
    st: &AppState,
    req: &Request,
) -> Result<Option<libp2p_identity::PeerId>, ApiError> {
    let member = crate::fleet::Fleet::member(
        req.headers(),
        req.method().as_str(),
        req.uri().path(),
        &st.registry.seed().peer_id(),
        crate::fleet::unix_now(),
    )?;
    match member {
        Some(m) if st.registry.revocations().contains(&m) => Err(crate::fleet::member_revoked()),
        m => Ok(m),
    }
}

/// Audits a request (from `origin`) refused for want of fleet membership as `auth.failure`.
pub(super) async fn record_refusal(st: &AppState, origin: crate::audit::Origin, e: &ApiError) {
    let origin = std::sync::Arc::new(origin);
    let mut ev = crate::audit::Event::new(crate::audit::Action::AuthFailure, &origin);
    ev.status = Some(e.status().as_u16());
    ev.reason = Some(format!("{} (fleet membership)", e.message()));
    st.events.record(ev).await;
}

/// A digest from the path, as `400 DIGEST_INVALID` if malformed.
fn parse_digest(text: &str) -> Result<Digest, ApiError> {
    text.parse().map_err(|e: DigestError| {
        ApiError::new(ErrorCode::DigestInvalid).with_detail(e.to_string())
    })
}

/// What `GET /flotilla/v1/stats` shows.
#[derive(serde::Serialize)]
struct Stats {
    #[serde(flatten)]
    seed: crate::seed::SeedStats,
    audit: crate::audit::AuditStats,
    notifications: Vec<crate::notify::NotifyStats>,
    /// What garbage collection removed since start.
    gc: crate::registry::GcTotals,
    /// Piece ranges refused because another member was sent them moments ago.
    origin_refused: u64,
    /// Piece answers streaming now, allowed to at once now, and waiting for a send slot now
    /// (`send_pool.rs`).
    origin_sending: usize,
    origin_send_limit: usize,
    origin_waiting: usize,
    /// Piece requests that waited for a send slot, and that were refused because too many
    /// waited, since start.
    origin_waited: u64,
    origin_queue_full: u64,
}

fn stats(st: &AppState) -> Stats {
    Stats {
        seed: st.registry.seed().stats(),
        audit: st.events.audit_stats(),
        notifications: st.events.notify_stats(),
        gc: st.registry.gc_totals(),
        origin_refused: st.origin_dedup.refused(),
        origin_sending: st.send_pool.sending(),
        origin_send_limit: st.send_pool.limit(),
        origin_waiting: st.send_pool.waiting(),
        origin_waited: st.send_pool.waited(),
        origin_queue_full: st.send_pool.overflowed(),
    }
}

/// `GET /flotilla/v1/tags/<name>/<tag>`: the name is everything before the last `/`.
async fn tag_record(st: &AppState, name_tag: &str, with_body: bool) -> ApiResult {
    let (name, tag) = name_tag.rsplit_once('/').ok_or_else(not_found)?;
    let repo: RepoName = name.parse().map_err(|e: ReferenceError| {
        ApiError::new(ErrorCode::NameInvalid).with_detail(e.to_string())
    })?;
    let tag: Tag = tag.parse().map_err(|e: ReferenceError| {
        ApiError::new(ErrorCode::TagInvalid).with_detail(e.to_string())
    })?;
    let signed = st
        .registry
        .tag_record(&repo, &tag)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::ManifestUnknown))?;
    let bytes = signed
        .encode()
        .map_err(|e| ApiError::from(RegistryError::from(e)))?;
    let len = bytes.len();
    let mut res = Response::new(if with_body {
        Body::from(bytes)
    } else {
        Body::empty()
    });
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// `GET /flotilla/v1/info`.
fn info(st: &AppState) -> Response {
    let seed = st.registry.seed();
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "peer_id": seed.peer_id().to_string(),
            "addrs": seed.swarm_addrs(),
        }),
    )
}

/// `GET /flotilla/v1/health`: `200` while pulls can be served (the index and the blob files
/// answer), else `503`; problems that stop only pushes (a failed write, a full disk) are
/// `warnings`.
async fn health(st: &AppState) -> Response {
    let storage = st.registry.storage_health().await;
    let mut reasons = Vec::new();
    let mut warnings = Vec::new();
    if let Some(e) = &storage.index_error {
        reasons.push(format!("the index does not answer: {e}"));
    }
    if let Some(e) = &storage.blobs_error {
        reasons.push(format!("the blob files cannot be read: {e}"));
    }
    if let Some(e) = &storage.write_error {
        warnings.push(if storage.disk_full {
            format!("the disk is full: pushes fail ({e})")
        } else {
            format!("the data directory cannot be written: pushes fail ({e})")
        });
    }
    let seed = st.registry.seed();
    let ready = storage.serves_pulls();
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &serde_json::json!({
            "ready": ready,
            "reasons": reasons,
            "warnings": warnings,
            "peer_id": seed.peer_id().to_string(),
            "swarm_addrs": seed.swarm_addrs().len(),
            "connected_peers": seed.connected_count(),
            "storage": storage,
        }),
    )
}

/// `GET /flotilla/v1/pieces/<digest>`.
async fn pieces(st: &AppState, d: &Digest, counted: bool) -> ApiResult {
    let table = st
        .registry
        .seed()
        .piece_table_bytes(d)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::BlobUnknown))?;
    let mut res = Response::new(Body::from(table.clone()));
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(table.len()));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(DOCKER_CONTENT_DIGEST, headers::value(d.as_str()));
    let seed = st.registry.seed();
    let fetchers = if counted {
        seed.note_table_fetch(d)
    } else {
        seed.swarm_size(d)
    };
    h.insert(SWARM_SIZE, HeaderValue::from(fetchers));
    Ok(res)
}
