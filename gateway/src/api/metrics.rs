//! `GET /metrics`: the gateway's counters in the Prometheus text format — requests by method
//! and status, blob bytes sent over HTTP and the swarm, the origin's send pool and refusals,
//! garbage collection, the audit log and each notification endpoint. Open like
//! `/flotilla/v1/stats` (SPEC §3.6), the same figures, scrapeable — unless `[auth]` names
//! `metrics_users`: then only they and the admins may read it (SPEC §3.8).

use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use flotilla_node::metrics::{CONTENT_TYPE, Exposition, Kind};

use super::{ApiResult, AppState};

/// Answers `GET`/`HEAD /metrics`, checking `metrics_users` when `[auth]` sets it: anonymous
/// callers get the usual `401` challenge, other users `403 DENIED`.
pub(super) async fn serve(st: &AppState, headers: &HeaderMap, uri: &Uri) -> ApiResult {
    if let Some(auth) = &st.auth
        && auth.policy().metrics_restricted()
    {
        auth.require(
            headers,
            uri,
            |p, who| p.may_read_metrics(who),
            "metrics are for metrics_users and admins",
        )
        .await?;
    }
    Ok(answer(st))
}

/// The page (the dispatcher strips it for a `HEAD`).
fn answer(st: &AppState) -> Response {
    let mut res = render(st).into_response();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    res
}

fn render(st: &AppState) -> String {
    let mut e = Exposition::new();
    st.requests.write(&mut e, "flotilla_gateway");

    let seed = st.registry.seed().stats();
    e.family(
        "flotilla_gateway_blob_bytes_sent_total",
        Kind::Counter,
        "Blob bytes sent: HTTP bodies (clients and nodes) and swarm pieces.",
        [
            (&[("via", "http")][..], seed.http_blob_bytes as f64),
            (&[("via", "swarm")][..], seed.swarm_bytes as f64),
        ],
    );
    let gc = st.registry.gc_totals();
    let audit = st.events.audit_stats();
    for (name, kind, help, value) in [
        (
            "flotilla_gateway_piece_tables_computed_total",
            Kind::Counter,
            "Piece tables hashed and signed.",
            seed.tables_computed as f64,
        ),
        (
            "flotilla_gateway_origin_refused_total",
            Kind::Counter,
            "Piece ranges refused because another member was sent them moments ago.",
            st.origin_dedup.refused() as f64,
        ),
        (
            "flotilla_gateway_origin_waited_total",
            Kind::Counter,
            "Piece requests that waited for a send slot.",
            st.send_pool.waited() as f64,
        ),
        (
            "flotilla_gateway_origin_queue_full_total",
            Kind::Counter,
            "Piece requests refused because too many waited for a send slot.",
            st.send_pool.overflowed() as f64,
        ),
        (
            "flotilla_gateway_origin_sending",
            Kind::Gauge,
            "Piece answers streaming to members now.",
            st.send_pool.sending() as f64,
        ),
        (
            "flotilla_gateway_origin_send_limit",
            Kind::Gauge,
            "Piece answers allowed to stream at once now (0: no send pool).",
            st.send_pool.limit() as f64,
        ),
        (
            "flotilla_gateway_origin_waiting",
            Kind::Gauge,
            "Piece requests waiting for a send slot now.",
            st.send_pool.waiting() as f64,
        ),
        (
            "flotilla_gateway_connected_peers",
            Kind::Gauge,
            "Peers connected to the gateway's swarm (refreshed once a second).",
            st.registry.seed().connected_count() as f64,
        ),
        (
            "flotilla_gateway_available_bytes",
            Kind::Gauge,
            "Bytes the data directory's file system may still take (-1: unknown).",
            st.registry.available_bytes().map_or(-1.0, |b| b as f64),
        ),
        (
            "flotilla_gateway_gc_runs_total",
            Kind::Counter,
            "Garbage collections run to the end.",
            gc.runs as f64,
        ),
        (
            "flotilla_gateway_gc_blobs_removed_total",
            Kind::Counter,
            "Blob files garbage collection removed.",
            gc.blobs_removed as f64,
        ),
        (
            "flotilla_gateway_gc_bytes_removed_total",
            Kind::Counter,
            "Bytes of the blob files garbage collection removed.",
            gc.bytes_removed as f64,
        ),
        (
            "flotilla_gateway_gc_last_run_timestamp_seconds",
            Kind::Gauge,
            "When the last garbage collection ended (Unix seconds; 0: none yet).",
            gc.last_run_unix_s as f64,
        ),
        (
            "flotilla_gateway_audit_lines_written_total",
            Kind::Counter,
            "Audit log lines written.",
            audit.lines_written as f64,
        ),
        (
            "flotilla_gateway_audit_lines_dropped_total",
            Kind::Counter,
            "Audit log lines lost (channel full, writer stopped, write failed).",
            audit.lines_dropped as f64,
        ),
        (
            "flotilla_gateway_audit_write_errors_total",
            Kind::Counter,
            "Audit log writes or fsyncs that failed.",
            audit.write_errors as f64,
        ),
    ] {
        e.metric(name, kind, help, value);
    }

    let notify = st.events.notify_stats();
    let endpoints: Vec<[(&str, &str); 1]> = notify
        .iter()
        .map(|n| [("endpoint", n.name.as_str())])
        .collect();
    type Pick = fn(&crate::notify::NotifyStats) -> u64;
    let families: [(&str, Kind, &str, Pick); 5] = [
        (
            "flotilla_gateway_notifications_delivered_total",
            Kind::Counter,
            "Events a notification endpoint accepted.",
            |n| n.delivered,
        ),
        (
            "flotilla_gateway_notifications_failed_total",
            Kind::Counter,
            "Notification attempts that failed.",
            |n| n.failed,
        ),
        (
            "flotilla_gateway_notifications_dropped_total",
            Kind::Counter,
            "Events dropped because an endpoint's queue was full.",
            |n| n.dropped,
        ),
        (
            "flotilla_gateway_notifications_expired_total",
            Kind::Counter,
            "Events dropped after failing for their whole lifetime.",
            |n| n.expired,
        ),
        (
            "flotilla_gateway_notifications_pending",
            Kind::Gauge,
            "Events waiting for an endpoint now.",
            |n| n.pending,
        ),
    ];
    for (name, kind, help, pick) in families {
        if notify.is_empty() {
            continue;
        }
        e.family(
            name,
            kind,
            help,
            endpoints
                .iter()
                .zip(&notify)
                .map(|(l, n)| (&l[..], pick(n) as f64)),
        );
    }
    e.finish()
}
