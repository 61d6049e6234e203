//! The `flotilla` command: one binary for the gateway, the node and the tools around them.
//!
//! Flags are parsed here (clap, each flag also readable from a `FLOTILLA_*` environment variable),
//! then resolved against an optional TOML config file and the library defaults: flag or
//! environment variable first, then the file, then the default.

mod bench;
mod fleet;
mod prefetch;
mod sim;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flotilla",
    version,
    about = "Peer-to-peer distribution of container image layers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a gateway and a node on this machine with embedded defaults: push to
    /// localhost:5000, pull through the node at localhost:5001.
    Up(UpArgs),
    /// Run the gateway: an OCI Distribution registry on embedded storage that seeds the swarm.
    Gateway(GatewayArgs),
    /// Run a fleet node: fetches layers from peers and serves a local read-only OCI endpoint.
    Node(NodeArgs),
    /// Collect garbage in a stopped gateway's data directory now: delete the blob files no
    /// manifest references (a running gateway does this itself every `gc_interval_secs`).
    Gc(GcArgs),
    /// Ask a node to fetch an image (or one blob) into its store ahead of its pulls, and
    /// print what came from where.
    Prefetch(prefetch::PrefetchArgs),
    /// Ask a node to unpin an image's blobs (or one blob) that a prefetch pinned: they become
    /// evictable again.
    Unpin(prefetch::UnpinArgs),
    /// Administer the fleet at its gateway: list members, revoke or restore one.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Run a benchmark and print a table (and, with --json, one JSON object on the last line).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulate a fleet pulling an image (the node's scheduler on every host) and print a table
    /// (and, with --json, one JSON object on the last line).
    Sim(sim::SimArgs),
}

/// A byte count flag: `20GiB`, `512MiB`, `1500MB` or plain bytes (see
/// [`bench::data::parse_size`]).
fn bytes_arg(s: &str) -> Result<u64, String> {
    bench::data::parse_size(s)
}

/// A rate flag, in bytes per second: a byte count (`100MB`, `12MiB`, plain bytes) or a link
/// speed in bits, `kbit`, `Mbit` or `Gbit` (powers of 1000: `100Mbit` is 12,500,000 B/s), as
/// operators usually know a host's uplink.
fn rate_arg(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    for (suffix, bits) in [("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9)] {
        if let Some(n) = lower.strip_suffix(suffix) {
            let n: f64 = n
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("{s:?} is not a rate (examples: 100Mbit, 1Gbit, 50MB)"))?;
            return Ok((n * bits / 8.0).round() as u64);
        }
    }
    bench::data::parse_size(t)
}

#[derive(Debug, Args)]
struct GatewayArgs {
    /// TOML config file (fields as in `flotilla_gateway::Config`); flags and env override it.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "FLOTILLA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for blobs and metadata [default: ./flotilla-data].
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest manifest accepted, in bytes [default: 4194304].
    #[arg(long, env = "FLOTILLA_MAX_MANIFEST_BYTES")]
    max_manifest_bytes: Option<usize>,
    /// Seconds an idle upload session lives before it and its data are removed [default: 3600].
    #[arg(long, env = "FLOTILLA_UPLOAD_TTL_SECS")]
    upload_ttl_secs: Option<u64>,
    /// Blob bytes per second the gateway may send, HTTP bodies and swarm pieces together
    /// (`125MB`, `1Gbit`, plain bytes) [default: no cap].
    #[arg(long, env = "FLOTILLA_UPLOAD_BYTES_PER_S", value_parser = rate_arg)]
    upload_bytes_per_s: Option<u64>,
    /// Seconds between two garbage collections; 0: never on its own [default: 86400].
    #[arg(long, env = "FLOTILLA_GC_INTERVAL_SECS")]
    gc_interval_secs: Option<u64>,
    /// An unreferenced blob written or used within this many seconds is kept [default: 3600].
    #[arg(long, env = "FLOTILLA_GC_MIN_AGE_SECS")]
    gc_min_age_secs: Option<u64>,
    /// Most entries in one page of tags or catalog when the client sends no `n` [default: 10000].
    #[arg(long, env = "FLOTILLA_MAX_LIST_ENTRIES")]
    max_list_entries: Option<usize>,
    /// Largest blob accepted (`64GiB`, plain bytes) [default: 1 TiB].
    #[arg(long, env = "FLOTILLA_MAX_BLOB_BYTES", value_parser = bytes_arg)]
    max_blob_bytes: Option<u64>,
    /// Most upload sessions open at once [default: 1024].
    #[arg(long, env = "FLOTILLA_MAX_UPLOADS")]
    max_uploads: Option<usize>,
    /// Seconds a request body may pause before it is cut off [default: 60].
    #[arg(long, env = "FLOTILLA_BODY_IDLE_SECS")]
    body_idle_secs: Option<u64>,
    /// Most client connections open at once [default: 4096].
    #[arg(long, env = "FLOTILLA_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds a connection may take to send request headers or sit idle between requests
    /// [default: 30].
    #[arg(long, env = "FLOTILLA_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: Option<u64>,
    /// Seconds in-flight requests get to finish after SIGTERM [default: 30].
    #[arg(long, env = "FLOTILLA_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Args)]
struct NodeArgs {
    /// TOML config file (fields as in `flotilla_node::NodeConfig`); flags and env override it.
    #[arg(long, env = "FLOTILLA_NODE_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the local read-only OCI endpoint [default: 127.0.0.1:5001].
    #[arg(long, env = "FLOTILLA_NODE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory for the identity, pieces and index [default: ./flotilla-node-data].
    #[arg(long, env = "FLOTILLA_NODE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Base URL of the gateway [default: http://127.0.0.1:5000].
    #[arg(long, env = "FLOTILLA_GATEWAY")]
    gateway: Option<String>,
    /// libp2p listen address (repeatable) [default: /ip4/0.0.0.0/udp/0/quic-v1 and /ip4/0.0.0.0/tcp/0].
    #[arg(
        long = "p2p-listen",
        env = "FLOTILLA_NODE_P2P_LISTEN",
        value_delimiter = ','
    )]
    p2p_listen: Vec<String>,
    /// Extra bootstrap peer, a multiaddr ending in /p2p/<peer id> (repeatable).
    #[arg(long, env = "FLOTILLA_NODE_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Most bytes of blobs kept on disk (`20GiB`, plain bytes) [default: 20 GiB].
    #[arg(long, env = "FLOTILLA_NODE_CACHE_BYTES", value_parser = bytes_arg)]
    cache_bytes: Option<u64>,
    /// Blob digest never evicted (repeatable).
    #[arg(long = "pin", env = "FLOTILLA_NODE_PIN", value_delimiter = ',')]
    pinned: Vec<String>,
    /// Piece bytes to and from disk around the page cache where the file system allows
    /// (true/false) [default: true].
    #[arg(long, env = "FLOTILLA_NODE_DIRECT_IO", action = clap::ArgAction::Set)]
    direct_io: Option<bool>,
    /// Requested UDP socket buffer size for QUIC [default: 4194304].
    #[arg(long, env = "FLOTILLA_NODE_UDP_BUFFER_BYTES")]
    udp_buffer_bytes: Option<usize>,
    /// The fleet join token (the gateway's <data_dir>/fleet.token).
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN", hide_env_values = true)]
    fleet_token: Option<String>,
    /// A file holding the fleet join token.
    #[arg(long, env = "FLOTILLA_FLEET_TOKEN_FILE")]
    fleet_token_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https:// gateway (besides the system's).
    #[arg(long, env = "FLOTILLA_GATEWAY_CA_FILE")]
    gateway_ca_file: Option<PathBuf>,
    /// The gateway's expected peer id; a gateway with another identity is refused.
    #[arg(long, env = "FLOTILLA_GATEWAY_PEER_ID")]
    gateway_peer_id: Option<String>,
    /// This host's site label (1-63 of A-Z a-z 0-9 . _ -): nodes of one site find each other
    /// and take each piece from outside the site about once [default: none].
    #[arg(long, env = "FLOTILLA_NODE_SITE")]
    site: Option<String>,
    /// Most bytes per second of pieces sent to peers, all of them together (`50MB`,
    /// `500Mbit`, plain bytes) [default: no cap].
    #[arg(long, env = "FLOTILLA_NODE_UPLOAD_BYTES_PER_S", value_parser = rate_arg)]
    upload_bytes_per_s: Option<u64>,
    /// Most bytes per second of pieces received, from peers and the gateway together (`50MB`,
    /// `500Mbit`, plain bytes) [default: no cap].
    #[arg(long, env = "FLOTILLA_NODE_DOWNLOAD_BYTES_PER_S", value_parser = rate_arg)]
    download_bytes_per_s: Option<u64>,
    /// Evict blobs unused for this many seconds, pinned ones excepted [default: only when the
    /// cache needs room].
    #[arg(long, env = "FLOTILLA_NODE_EVICT_UNUSED_AFTER_SECS")]
    evict_unused_after_secs: Option<u64>,
    /// Threads for the node's network, transfer and HTTP work [default: half the CPUs, 1 to 4].
    #[arg(long, env = "FLOTILLA_NODE_WORKER_THREADS")]
    worker_threads: Option<usize>,
}

impl NodeArgs {
    fn resolve(self) -> anyhow::Result<flotilla_node::NodeConfig> {
        let mut cfg: flotilla_node::NodeConfig = load_config(self.config.as_deref())?;
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = self.gateway {
            cfg.gateway = v;
        }
        if !self.p2p_listen.is_empty() {
            cfg.p2p_listen = self.p2p_listen;
        }
        if !self.bootstrap.is_empty() {
            cfg.bootstrap = self.bootstrap;
        }
        if let Some(v) = self.fleet_token {
            cfg.fleet_token = Some(v);
        }
        if let Some(v) = self.fleet_token_file {
            cfg.fleet_token_file = Some(v);
        }
        if let Some(v) = self.gateway_ca_file {
            cfg.gateway_ca_file = Some(v);
        }
        if let Some(v) = self.gateway_peer_id {
            cfg.gateway_peer_id = Some(v);
        }
        if let Some(v) = self.cache_bytes {
            cfg.cache_bytes = v;
        }
        if !self.pinned.is_empty() {
            cfg.pinned = self.pinned;
        }
        if let Some(v) = self.udp_buffer_bytes {
            cfg.udp_buffer_bytes = v;
        }
        if let Some(v) = self.direct_io {
            cfg.direct_io = v;
        }
        if let Some(v) = self.site {
            cfg.site = Some(v);
        }
        if let Some(v) = self.upload_bytes_per_s {
            cfg.upload_bytes_per_s = Some(v);
        }
        if let Some(v) = self.download_bytes_per_s {
            cfg.download_bytes_per_s = Some(v);
        }
        if let Some(v) = self.evict_unused_after_secs {
            cfg.evict_unused_after_secs = Some(v);
        }
        if let Some(v) = self.worker_threads {
            cfg.worker_threads = Some(v);
        }
        if cfg.worker_threads == Some(0) {
            anyhow::bail!("worker_threads is 0: leave it out for the default");
        }
        Ok(cfg)
    }
}

#[derive(Debug, Args)]
struct GcArgs {
    /// The gateway's TOML config file (for `data_dir` and `gc_min_age_secs`).
    #[arg(long, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's data directory [default: ./flotilla-data].
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep unreferenced blobs written within this many seconds [default: the config's
    /// `gc_min_age_secs`, 3600].
    #[arg(long)]
    min_age_secs: Option<u64>,
    /// Only report what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `flotilla gc`: one collection in a data directory no gateway has open.
async fn gc(args: GcArgs) -> anyhow::Result<()> {
    let mut cfg: flotilla_gateway::Config = load_config(args.config.as_deref())?;
    if let Some(v) = args.data_dir {
        cfg.data_dir = v;
    }
    let mut storage = cfg.storage();
    storage.gc.interval = None;
    let dir = cfg.data_dir.display().to_string();
    // Opening would create an empty registry there; a mistyped path should say so instead.
    anyhow::ensure!(
        cfg.data_dir.join("meta").is_dir(),
        "{dir} holds no gateway data (no meta/ directory): give the gateway's --data-dir"
    );
    let registry = match flotilla_gateway::registry::Registry::open(storage).await {
        Ok(r) => r,
        // sled says so when another process holds the database.
        Err(e) if e.to_string().contains("could not acquire lock") => {
            return Err(anyhow::Error::new(e).context(format!(
                "{dir} is in use by a running gateway: stop it, or let its own collection run \
                 (gc_interval_secs)"
            )));
        }
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {dir}"))),
    };
    let opts = flotilla_gateway::registry::GcOptions {
        min_age: std::time::Duration::from_secs(args.min_age_secs.unwrap_or(cfg.gc_min_age_secs)),
        dry_run: args.dry_run,
    };
    let r = registry
        .collect_garbage(opts)
        .await
        .context("collecting garbage")?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let gone = if r.dry_run { "to remove" } else { "removed" };
        let rows = [
            ("manifests held".to_owned(), r.manifests_held as u64),
            (
                format!("manifest records {gone}"),
                r.manifest_records_removed as u64,
            ),
            ("blobs referenced".to_owned(), r.blobs_live as u64),
            (
                "blobs unreferenced, kept as recent".to_owned(),
                r.blobs_recent as u64,
            ),
            (format!("blobs {gone}"), r.blobs_removed as u64),
            (format!("bytes {gone}"), r.bytes_removed),
            (format!("repository links {gone}"), r.links_removed as u64),
        ];
        for (what, n) in rows {
            println!("{what:<36}{n:>14}");
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Directory for everything: the gateway's data here, the node's in `<dir>/node`
    /// [default: ./flotilla-data].
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Gateway address: push here [default: 127.0.0.1:5000].
    #[arg(long, env = "FLOTILLA_LISTEN")]
    listen: Option<SocketAddr>,
    /// Node address: pull through the swarm here [default: 127.0.0.1:5001].
    #[arg(long, env = "FLOTILLA_NODE_LISTEN")]
    node_listen: Option<SocketAddr>,
}

impl GatewayArgs {
    fn resolve(self) -> anyhow::Result<flotilla_gateway::Config> {
        let mut cfg: flotilla_gateway::Config = load_config(self.config.as_deref())?;
        if let Some(v) = self.listen {
            cfg.listen = v;
        }
        if let Some(v) = self.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = self.max_manifest_bytes {
            cfg.max_manifest_bytes = v;
        }
        if let Some(v) = self.upload_ttl_secs {
            cfg.upload_ttl_secs = v;
        }
        if let Some(v) = self.gc_interval_secs {
            cfg.gc_interval_secs = v;
        }
        if let Some(v) = self.upload_bytes_per_s {
            cfg.upload_bytes_per_s = Some(v);
        }
        if let Some(v) = self.gc_min_age_secs {
            cfg.gc_min_age_secs = v;
        }
        if let Some(v) = self.max_blob_bytes {
            cfg.max_blob_bytes = v;
        }
        if let Some(v) = self.max_uploads {
            cfg.max_uploads = v;
        }
        if let Some(v) = self.body_idle_secs {
            cfg.body_idle_secs = v;
        }
        if let Some(v) = self.max_connections {
            cfg.max_connections = v;
        }
        if let Some(v) = self.header_timeout_secs {
            cfg.header_timeout_secs = v;
        }
        if let Some(v) = self.max_list_entries {
            cfg.max_list_entries = v;
        }
        if let Some(v) = self.shutdown_grace_secs {
            cfg.shutdown_grace_secs = v;
        }
        Ok(cfg)
    }
}

/// The TOML file at `path` (every key optional), or the defaults when there is none.
fn load_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

fn init_tracing() -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // stderr, as the README says: stdout is for what a command prints (`gc --json`'s report).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    // One JSON object per line for log shippers (Loki, Elasticsearch, journald's JSON
    // readers); text otherwise, coloured only on a terminal so that files stay searchable.
    match std::env::var("FLOTILLA_LOG_FORMAT").as_deref() {
        Ok("json") => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        Ok("text") | Err(std::env::VarError::NotPresent) => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        Ok(other) => anyhow::bail!("FLOTILLA_LOG_FORMAT is {other:?}: use \"text\" or \"json\""),
        Err(e) => anyhow::bail!("FLOTILLA_LOG_FORMAT: {e}"),
    }
    Ok(())
}

/// Resolves when SIGTERM or SIGINT arrives, so servers can drain in-flight requests.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            // Without signal handlers there is nothing to wait for but Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

/// `flotilla up`: the gateway and a node in one process, the node bootstrapping from the
/// gateway; one signal stops both.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    let mut gw = flotilla_gateway::Config::default();
    if let Some(dir) = args.data_dir {
        gw.data_dir = dir;
    }
    if let Some(listen) = args.listen {
        gw.listen = listen;
    }
    // The node gets the gateway's fleet token in-process (created on first start).
    let fleet_token = flotilla_gateway::fleet::load_token(&gw).context("fleet token")?;
    let mut node = flotilla_node::NodeConfig {
        data_dir: gw.data_dir.join("node"),
        gateway: format!("http://{}", gw.listen),
        fleet_token: Some(fleet_token),
        ..Default::default()
    };
    if let Some(listen) = args.node_listen {
        node.listen = listen;
    }
    let (gw_addr, node_addr) = (gw.listen, node.listen);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx2 = stop_rx.clone();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut gateway = tokio::spawn(async move {
        flotilla_gateway::run(gw, stopped(stop_rx.clone()))
            .await
            .context("gateway")
    });
    let mut node = tokio::spawn(async move {
        flotilla_node::run(node, stopped(stop_rx2))
            .await
            .context("node")
    });
    // One line for a newcomer once both answer: where to push and where to pull.
    tokio::spawn(async move {
        for addr in [gw_addr, node_addr] {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        tracing::info!(
            "ready: docker push localhost:{}/team/app:v1, then docker pull localhost:{}/team/app:v1",
            gw_addr.port(),
            node_addr.port()
        );
    });
    let stop_tx_again = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    // Whichever stops first (an error, or the signal) stops the other.
    let (first, other) = tokio::select! {
        g = &mut gateway => (g.context("gateway task")?, node),
        n = &mut node => (n.context("node task")?, gateway),
    };
    let _ = stop_tx_again.send(true);
    let second = other.await.context("task")?;
    first?;
    second?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Sim(_))
        && let Some(status) = flotilla_simulations::rerun_with_huge_pages()
    {
        std::process::exit(status.code().unwrap_or(1));
    }
    // One TLS provider for the whole process (aws-lc-rs, as libp2p's QUIC uses), so nothing
    // that asks rustls for the default can find none.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The node sizes its own pool: on a host it shares, threads beyond the work it has only
    // hand tasks to each other (docs/benchmarks.md). Everything else takes tokio's default.
    let runtime = |workers: Option<usize>| {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if let Some(n) = workers {
            b.worker_threads(n);
        }
        b.enable_all().build()
    };
    match cli.command {
        Command::Gateway(args) => {
            init_tracing()?;
            let cfg = args.resolve()?;
            runtime(None)?.block_on(flotilla_gateway::run(cfg, shutdown_signal()))?;
            Ok(())
        }
        Command::Node(args) => {
            init_tracing()?;
            let cfg = args.resolve()?;
            let workers = cfg
                .worker_threads
                .unwrap_or_else(flotilla_node::config::default_worker_threads);
            tracing::info!(worker_threads = workers, "node runtime");
            runtime(Some(workers))?.block_on(flotilla_node::run(cfg, shutdown_signal()))?;
            Ok(())
        }
        Command::Up(args) => {
            init_tracing()?;
            runtime(None)?.block_on(up(args))
        }
        Command::Gc(args) => {
            init_tracing()?;
            runtime(None)?.block_on(gc(args))
        }
        Command::Prefetch(args) => runtime(None)?.block_on(prefetch::run(args)),
        Command::Unpin(args) => runtime(None)?.block_on(prefetch::unpin(args)),
        Command::Fleet(cmd) => runtime(None)?.block_on(fleet::run(cmd)),
        Command::Bench(cmd) => runtime(None)?.block_on(bench::run(cmd)),
        Command::Sim(args) => sim::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_config(args: &[&str]) -> flotilla_node::NodeConfig {
        let cli = Cli::try_parse_from(args).expect("the arguments parse");
        let Command::Node(node) = cli.command else {
            panic!("not the node command");
        };
        node.resolve().expect("the node config resolves")
    }

    #[test]
    fn direct_io_is_on_unless_the_flag_or_the_toml_turns_it_off() {
        assert!(node_config(&["flotilla", "node"]).direct_io);
        assert!(!node_config(&["flotilla", "node", "--direct-io", "false"]).direct_io);
        assert!(node_config(&["flotilla", "node", "--direct-io", "true"]).direct_io);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let file = dir.path().join("node.toml");
        std::fs::write(&file, "direct_io = false\n").expect("the config file is written");
        let path = file.to_str().expect("a UTF-8 path");
        assert!(!node_config(&["flotilla", "node", "--config", path]).direct_io);
        assert!(Cli::try_parse_from(["flotilla", "node", "--direct-io", "maybe"]).is_err());
    }

    #[test]
    fn worker_threads_come_from_the_flag_and_zero_is_refused() {
        assert_eq!(node_config(&["flotilla", "node"]).worker_threads, None);
        let c = node_config(&["flotilla", "node", "--worker-threads", "3"]);
        assert_eq!(c.worker_threads, Some(3));
        let cli = Cli::try_parse_from(["flotilla", "node", "--worker-threads", "0"])
            .expect("the arguments parse");
        let Command::Node(node) = cli.command else {
            panic!("not the node command");
        };
        let err = node.resolve().expect_err("0 workers are refused");
        assert!(err.to_string().contains("worker_threads"), "{err}");
    }

    #[test]
    fn sizes_and_rates_take_units_and_link_speeds() {
        let c = node_config(&[
            "flotilla",
            "node",
            "--cache-bytes",
            "20GiB",
            "--upload-bytes-per-s",
            "100Mbit",
            "--download-bytes-per-s",
            "12MiB",
        ]);
        assert_eq!(c.cache_bytes, 20 << 30);
        assert_eq!(c.upload_bytes_per_s, Some(12_500_000));
        assert_eq!(c.download_bytes_per_s, Some(12 << 20));
        assert_eq!(rate_arg("1Gbit"), Ok(125_000_000));
        assert_eq!(rate_arg("1.5 Gbit"), Ok(187_500_000));
        assert_eq!(rate_arg("4096"), Ok(4096));
        assert!(rate_arg("fastMbit").is_err());
        assert!(rate_arg("-1Mbit").is_err());
        assert!(bytes_arg("lots").is_err());
        assert!(
            Cli::try_parse_from(["flotilla", "node", "--cache-bytes", "1.5GiB"]).is_err(),
            "fractions of sizes are refused"
        );
    }
}
