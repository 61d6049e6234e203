//! `flotilla bench …`: benchmarks that print a table and, with `--json`, the same figures as one
//! JSON object on the last line of standard output (progress goes to standard error).
//!
//! `bench registry` compares the gateway with Debian's `docker-registry` (distribution 2.8) on
//! loopback and measures, in the same run, the limits that bound the figures: plain loopback TCP,
//! disk write + fsync, and three SHA-256 implementations.
//!
//! `bench fleet` starts a gateway and N nodes on loopback and has every node pull one image at
//! once, against the same fleet pulling straight from the gateway; then a two-node piece
//! transfer against plain QUIC. Results of both live in docs/benchmarks.md.

mod client;
pub(crate) mod data;
mod fleet;
mod limits;
mod load;
mod ports;
mod registry;
mod report;
mod servers;

use clap::Subcommand;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Gateway vs distribution on loopback: blob GET, monolithic and chunked push, manifest GET
    /// under load, peak RSS; plus plain TCP, disk and SHA-256 as the physical limits.
    Registry(registry::RegistryArgs),
    /// A gateway and N nodes on loopback: every node pulls one image at once, against the same
    /// fleet pulling straight from the gateway; gateway egress, completion times, CPU, node RSS,
    /// and a two-node piece transfer against plain QUIC.
    Fleet(fleet::FleetArgs),
}

/// Runs one benchmark.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Registry(args) => registry::run(args).await,
        BenchCommand::Fleet(args) => fleet::run(args).await,
    }
}
