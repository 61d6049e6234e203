//! `flotilla sim --scenario NAME` (or `flotilla sim NAME`): runs the fleet simulator (the
//! `flotilla-simulations` crate, which drives the protocol crate's scheduler on every simulated
//! host) and prints a Markdown table; with `--json`, the same figures as one JSON object on the
//! last line of standard output. The CSV of completion times and the SVG of their CDF go to
//! `--out-dir`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use flotilla_simulations::{Overrides, RunOptions, Scenario};

/// Flags of `flotilla sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Scenario: cold, rolling, hetero, churn, edge-20x50, gateway-gone, kraken-2600,
    /// fleet-10k, fleet-100k.
    #[arg(
        long = "scenario",
        value_name = "NAME",
        value_parser = parse_scenario,
        required_unless_present = "scenario_arg",
        conflicts_with = "scenario_arg"
    )]
    scenario: Option<Scenario>,
    /// The scenario, given without `--scenario`.
    #[arg(value_name = "SCENARIO", value_parser = parse_scenario)]
    scenario_arg: Option<Scenario>,
    /// Number of hosts (edge-20x50 spreads them over its 20 sites).
    #[arg(long)]
    nodes: Option<usize>,
    /// Seed of every random choice; the same seed gives the same results.
    #[arg(long)]
    seed: Option<u64>,
    /// Image size, split evenly over the scenario's layers (1GiB, 3GB, 512MiB, bytes).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Seconds between a download's provider lookups [default: 10, the node's].
    #[arg(long)]
    refresh_s: Option<f64>,
    /// Candidate peers per layer (the scheduler's max_peers) [default: 32].
    #[arg(long)]
    max_peers: Option<usize>,
    /// Seconds the origin refuses a piece it is sending or sent; 0 turns it off [default: 2].
    #[arg(long)]
    origin_dedup_s: Option<f64>,
    /// Requests per second each origin server answers, refusals included [default: 20000].
    #[arg(long)]
    origin_rps: Option<f64>,
    /// Tell every scheduler the fleet's size up front (set_swarm_size), instead of the number
    /// of providers its lookups found (what the node does).
    #[arg(long)]
    fleet_size_hint: bool,
    /// Clients read each layer in order as it arrives (the scheduler's read position).
    #[arg(long)]
    streaming: bool,
    /// What-if: hosts without site labels (the node's `site` unset), so without locality.
    #[arg(long)]
    no_site_labels: bool,
    /// What-if: hosts serve whole pieces only, as the node did before pieces protocol 2 (it
    /// now passes a piece on while it arrives).
    #[arg(long)]
    no_forward_arriving: bool,
    /// What-if: a Cancel never cuts short a piece being sent, as the node's server did before
    /// (it now abandons the rest at its next part).
    #[arg(long)]
    no_cancel_cuts: bool,
    /// What-if: a session the rotation policy replaces closes at once, cutting off the piece
    /// being sent, as the node's driver did before (it now lets that piece finish).
    #[arg(long)]
    no_graceful_retire: bool,
    /// Stop the swarm run at this simulated time [default: 3600].
    #[arg(long)]
    max_time_s: Option<f64>,
    /// Skip the registry and whole-blob-from-one-peer baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Print one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Directory for <scenario>.csv and <scenario>.svg.
    #[arg(long, default_value = "sim-out")]
    out_dir: PathBuf,
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    s.parse()
        .map_err(|e: flotilla_simulations::SimError| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    flotilla_simulations::parse_size(s).map_err(|e| e.to_string())
}

/// Runs one scenario and prints its results.
pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let scenario = args
        .scenario
        .or(args.scenario_arg)
        .context("name a scenario with --scenario NAME")?;
    let overrides = Overrides {
        nodes: args.nodes,
        seed: args.seed,
        size: args.size,
        refresh_s: args.refresh_s,
        max_peers: args.max_peers,
        origin_dedup_s: args.origin_dedup_s,
        streaming: args.streaming,
        max_time_s: args.max_time_s,
        origin_rps: args.origin_rps,
        fleet_size_hint: args.fleet_size_hint,
    };
    let mut fleet = flotilla_simulations::build_scenario(scenario, &overrides)
        .context("building the scenario")?;
    fleet.params.site_labels = !args.no_site_labels;
    fleet.params.forward_arriving = !args.no_forward_arriving;
    fleet.params.cancel_cuts_short = !args.no_cancel_cuts;
    fleet.params.retire_gracefully = !args.no_graceful_retire;
    eprintln!(
        "simulating {} ({}): {} hosts ...",
        scenario,
        scenario.describe(),
        fleet.hosts.len()
    );
    let report = flotilla_simulations::run(
        &fleet,
        RunOptions {
            baselines: !args.no_baselines,
        },
    )?;
    let (csv, svg) = flotilla_simulations::write_outputs(&report, &args.out_dir)?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", csv.display(), svg.display());
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
