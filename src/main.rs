//! The `flotilla` command: one binary for the gateway, the node and the tools around them.
//!
//! Flags are parsed here (clap, each flag also readable from a `FLOTILLA_*` environment variable),
//! then resolved against an optional TOML config file and the library defaults: flag or
//! environment variable first, then the file, then the default.

mod bench;

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
    /// Run the gateway: an OCI Distribution registry on embedded storage.
    Gateway(GatewayArgs),
    /// Run a benchmark and print a table (and, with --json, one JSON object on the last line).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
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
    /// Most entries in one page of tags or catalog when the client sends no `n` [default: 10000].
    #[arg(long, env = "FLOTILLA_MAX_LIST_ENTRIES")]
    max_list_entries: Option<usize>,
    /// Seconds in-flight requests get to finish after SIGTERM [default: 30].
    #[arg(long, env = "FLOTILLA_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
}

impl GatewayArgs {
    fn resolve(self) -> anyhow::Result<flotilla_gateway::Config> {
        let mut cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => flotilla_gateway::Config::default(),
        };
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
        if let Some(v) = self.max_list_entries {
            cfg.max_list_entries = v;
        }
        if let Some(v) = self.shutdown_grace_secs {
            cfg.shutdown_grace_secs = v;
        }
        Ok(cfg)
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("FLOTILLA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Gateway(args) => {
            init_tracing();
            let cfg = args.resolve()?;
            rt.block_on(flotilla_gateway::run(cfg, shutdown_signal()))?;
            Ok(())
        }
        Command::Bench(cmd) => rt.block_on(bench::run(cmd)),
    }
}
