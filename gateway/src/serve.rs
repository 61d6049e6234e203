//! The gateway's HTTP server loop: the axum router on hyper, with the bounds `axum::serve` does
//! not set. A slow or silent client must not hold the gateway's resources forever:
//! - at most `max_connections` connections are served at once; beyond that, new ones wait in
//!   the kernel's accept backlog until a slot frees (nothing is accepted only to be dropped);
//! - a connection gets `header_timeout` to send a request's headers, the first request's and
//!   every later one's on a kept-alive connection, then it is closed;
//! - HTTP/1.1 only (registry clients speak it; the TLS listener offers only `http/1.1` in ALPN):
//!   hyper's protocol-sniffing builder would wait for a silent client's first bytes unbounded;
//! - request bodies have their own pause limit in the registry (`body_idle_secs`).
//!
//! Every request carries its TCP peer as `ConnectInfo<SocketAddr>`, for the audit log. On
//! shutdown the loop stops accepting at once and in-flight connections get `grace` to finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// Connection bounds (from [`crate::Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) max_connections: usize,
    pub(crate) header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown`, then drains for at most `grace`.
pub(crate) async fn serve_until<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
    limits: ConnLimits,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout.max(Duration::from_millis(100)));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, so a connection is never accepted that cannot be served.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (io, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            conn = listener.accept() => conn,
        };
        let svc = app
            .clone()
            .map_request(move |req: axum::http::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
        let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    // Dropping the listener refuses new connections while the old ones drain.
    drop(listener);
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections, draining in-flight requests"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period; stopping anyway");
    }
    Ok(())
}
