//! flotilla's gateway: a complete OCI Distribution v1.1 registry on embedded storage (blob files
//! plus a sled database), served over HTTP with axum.
//!
//! # Layout
//! - [`config`]: the one configuration struct ([`Config`]); its `Default` is a working local setup.
//! - [`auth`]: access control (htpasswd users, per-repository rules, docker's token protocol),
//!   on when the config has an `[auth]` section.
//! - [`tls`]: HTTPS (rustls), on when the config has a `[tls]` section.
//! - [`audit`]: the append-only audit log, and the event hub ([`Events`]) that feeds it and
//!   [`notify`]: webhook notifications in distribution's event format.
//! - [`api`]: the HTTP API. One handler routes every `/v2/…` path; handlers in `api/` extract the
//!   request, call [`registry::Registry`], and build the response.
//! - [`error`]: the table of OCI error codes, the error response, and [`GatewayError`].
//! - [`registry`]: the storage service the API calls (blobs, uploads, manifests, tags, referrers).
//! - [`fleet`]: fleet membership: the join token, and certificates for nodes
//!   (`POST /flotilla/v1/join`).
//! - [`p2p`]: the gateway's swarm: serves pieces from its blob files and announces every blob.
//! - [`seed`]: the gateway as a seed of the node swarm: identity, signed piece tables, blob files
//!   as a piece source, egress counters ([`Seed`], from [`registry::Registry::seed`]).
//! - [`storage`]: how that service keeps its data on disk.
//!
//! Dependency direction: `api` → `auth`, `api` → `registry` → `seed` → `storage`, `api` and
//! `auth` → `audit` → `notify`; `config` and `error` are leaves (apart from the start-up errors
//! they wrap and the sections they re-export).
//!
//! # Example
//! Serve a registry on an ephemeral port until a shutdown signal:
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_gateway::GatewayError> {
//! let config = flotilla_gateway::Config {
//!     listen: "127.0.0.1:0".parse().unwrap(),
//!     ..Default::default()
//! };
//! flotilla_gateway::run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await
//! # }
//! ```

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod error;
pub mod fleet;
pub mod notify;
pub mod p2p;
pub mod registry;
pub mod seed;
mod serve;
pub mod storage;
pub mod tls;

use std::future::Future;
use std::time::Duration;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;

pub use api::{router, router_with_events};
pub use audit::Events;
pub use auth::Auth;
pub use config::Config;
pub use error::{ApiError, ErrorCode, GatewayError};
use registry::Registry;
pub use seed::{GatewaySource, Seed, SeedStats};

/// Opens the storage in `config.data_dir`, binds `config.listen`, and serves until `shutdown`
/// resolves; then drains in-flight requests (see [`serve`]).
///
/// # Errors
/// [`GatewayError::Storage`] if the data directory cannot be opened, [`GatewayError::Bind`] if the
/// address cannot be bound, [`GatewayError::Serve`] if serving fails.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    if config.upload_bytes_per_s == Some(0) {
        return Err(GatewayError::Config(
            "upload_bytes_per_s is 0: leave it out for no cap".to_owned(),
        ));
    }
    let registry = Registry::open(config.storage()).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
    serve(listener, registry, config, shutdown).await
}

/// Serves the API on an already bound listener until `shutdown` resolves: over HTTPS when
/// `config.tls` is set, with access control when `config.auth` is.
///
/// After the signal no new connections are accepted and in-flight requests are given
/// `config.shutdown_grace_secs` to finish; whatever still runs then is dropped. Then the audit
/// log is synced and queued notifications get [`EVENTS_GRACE`] to be delivered. `config.listen`
/// is ignored (the listener decides the address).
///
/// # Errors
/// [`GatewayError::Auth`], [`GatewayError::Tls`] or [`GatewayError::Events`] if those sections
/// cannot be put into effect, [`GatewayError::Serve`] if accepting connections fails for good.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    // Both are checked before anything starts, so a bad file stops the gateway at once.
    let auth = Auth::load(&config)?;
    let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
    let events = Events::start(&config)?;
    // The fleet token: configured, or the one in <data_dir>/fleet.token (created if missing).
    let mut config = config;
    config.fleet_token = Some(fleet::load_token(&config).map_err(GatewayError::Fleet)?);
    match listener.local_addr() {
        Ok(addr) => tracing::info!(
            %addr,
            data_dir = %config.data_dir.display(),
            https = tls.is_some(),
            auth = auth.is_some(),
            "gateway listening"
        ),
        Err(e) => tracing::warn!(error = %e, "gateway listening on an unknown address"),
    }
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let limits = serve::ConnLimits {
        max_connections: config.max_connections,
        header_timeout: Duration::from_secs(config.header_timeout_secs),
    };
    let p2p = p2p::P2p::start(registry.seed(), registry.revocations().clone(), &config).await?;
    let members = registry.members().clone();
    let app = router_with_events(registry, &config, auth, events.clone());
    let done = match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls).map_err(GatewayError::Serve)?;
            serve::serve_until(listener, app, shutdown, grace, limits).await
        }
        None => {
            // Small responses (manifests, upload answers) should not wait for Nagle.
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
            });
            serve::serve_until(listener, app, shutdown, grace, limits).await
        }
    };
    if let Some(p2p) = p2p {
        p2p.stop().await;
    }
    events.shutdown(EVENTS_GRACE).await;
    match tokio::task::spawn_blocking(move || members.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the members file"),
        Err(e) => tracing::warn!(error = %e, "the members flush failed"),
    }
    done.map_err(GatewayError::Serve)?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// How long, at shutdown, queued notifications may take to be delivered and the audit writer
/// to finish.
pub const EVENTS_GRACE: Duration = Duration::from_secs(5);
