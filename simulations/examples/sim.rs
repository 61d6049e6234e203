//! The simulator without the rest of the `flotilla` binary: `cargo run --release -p
//! flotilla-simulations --example sim -- --scenario NAME [--nodes N] [--seed S] [--size 1GiB]
//! [--max-peers K] [--refresh-s S] [--origin-dedup-s S] [--origin-rps R] [--fleet-size-hint]
//! [--streaming] [--max-time-s S] [--no-baselines] [--json] [--out-dir DIR]
//! [--no-site-labels] [--max-copies-per-piece K] [--origin-max-sends K] [--origin-fixed-sends] [--origin-refuse-excess]
//! [--max-sends-per-blob K] [--max-waiting-per-blob K] [--in-flight K] [--no-forward-arriving]
//! [--no-cancel-cuts]`. It prints what `flotilla sim` prints (both call the same library
//! functions), and builds in a fraction of the time, since it needs neither the node nor the
//! gateway. `--no-site-labels` is a what-if (`Params::site_labels` off: nodes without a
//! configured site, so without locality inputs); so is
//! `--origin-refuse-excess` (`Params::origin_queue_excess` off: an origin server at its
//! `--origin-max-sends K` piece sends — 32 as the gateway's `origin_max_sends`, 0 for no cap —
//! refuses the rest instead of holding them until a send slot frees); and `--origin-fixed-sends`
//! (`Params::origin_adaptive_sends` off: the limit stays at the most instead of adapting from 4);
//! and `--max-sends-per-blob K` with `--in-flight K` (`Params::max_sends_per_blob`,
//! `Params::fixed_in_flight`: a host sends at most K pieces of a layer at once — the node's 4 —
//! the rest wait and go rarest first; every download keeps exactly K requests out — the node's
//! 4); and `--no-forward-arriving` (`Params::forward_arriving` off: hosts serve whole pieces
//! only, as the node did before pieces protocol 2); and `--no-cancel-cuts`
//! (`Params::cancel_cuts_short` off: a piece being sent is never cut short by a Cancel, as the
//! node's server did before); and `--no-graceful-retire` (`Params::retire_gracefully` off: a
//! session the rotation policy replaces closes at once, cutting off the piece being sent, as the
//! node's driver did before).

use std::path::PathBuf;
use std::process::ExitCode;

use flotilla_simulations::{Overrides, RunOptions, Scenario};

fn main() -> ExitCode {
    if let Some(status) = flotilla_simulations::rerun_with_huge_pages() {
        return if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut scenario: Option<Scenario> = None;
    let mut o = Overrides::default();
    let mut opts = RunOptions::default();
    let mut json = false;
    let mut site_labels = true;
    let mut origin_max_sends = None;
    let mut origin_fixed_sends = false;
    let mut origin_refuse_excess = false;
    let mut max_sessions_per_blob = None;
    let mut max_copies_per_piece = None;
    let mut max_sends_per_blob = None;
    let mut max_waiting_per_blob = None;
    let mut fixed_in_flight = None;
    let mut announce_at_first_piece = false;
    let mut forward_arriving = true;
    let mut cancel_cuts = true;
    let mut graceful_retire = true;
    let mut unsent_hint = true;
    let mut out_dir = PathBuf::from("sim-out");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--scenario" => scenario = Some(value()?.parse()?),
            "--nodes" => o.nodes = Some(value()?.parse()?),
            "--seed" => o.seed = Some(value()?.parse()?),
            "--size" => o.size = Some(flotilla_simulations::parse_size(&value()?)?),
            "--max-peers" => o.max_peers = Some(value()?.parse()?),
            "--refresh-s" => o.refresh_s = Some(value()?.parse()?),
            "--origin-dedup-s" => o.origin_dedup_s = Some(value()?.parse()?),
            "--origin-rps" => o.origin_rps = Some(value()?.parse()?),
            "--max-time-s" => o.max_time_s = Some(value()?.parse()?),
            "--out-dir" => out_dir = PathBuf::from(value()?),
            "--fleet-size-hint" => o.fleet_size_hint = true,
            "--streaming" => o.streaming = true,
            "--no-site-labels" => site_labels = false,
            "--origin-max-sends" => origin_max_sends = Some(value()?.parse::<usize>()?),
            "--origin-refuse-excess" => origin_refuse_excess = true,
            "--origin-fixed-sends" => origin_fixed_sends = true,
            "--max-sessions-per-blob" => max_sessions_per_blob = Some(value()?.parse()?),
            "--max-copies-per-piece" => max_copies_per_piece = Some(value()?.parse()?),
            "--max-sends-per-blob" => max_sends_per_blob = Some(value()?.parse()?),
            "--max-waiting-per-blob" => max_waiting_per_blob = Some(value()?.parse()?),
            "--in-flight" => fixed_in_flight = Some(value()?.parse()?),
            "--announce-at-first-piece" => announce_at_first_piece = true,
            "--no-forward-arriving" => forward_arriving = false,
            "--no-cancel-cuts" => cancel_cuts = false,
            "--no-graceful-retire" => graceful_retire = false,
            "--no-unsent-hint" => unsent_hint = false,
            "--no-baselines" => opts.baselines = false,
            "--json" => json = true,
            name if !name.starts_with('-') && scenario.is_none() => scenario = Some(name.parse()?),
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let scenario = scenario.ok_or("name a scenario with --scenario NAME")?;
    let mut fleet = flotilla_simulations::build_scenario(scenario, &o)?;
    fleet.params.site_labels = site_labels;
    if let Some(k) = origin_max_sends {
        fleet.params.origin_max_sends = (k > 0).then_some(k);
    }
    fleet.params.origin_queue_excess = !origin_refuse_excess;
    fleet.params.origin_adaptive_sends = !origin_fixed_sends;
    fleet.params.announce_at_start = !announce_at_first_piece;
    fleet.params.forward_arriving = forward_arriving;
    fleet.params.cancel_cuts_short = cancel_cuts;
    fleet.params.retire_gracefully = graceful_retire;
    fleet.params.unsent_hint = unsent_hint;
    if let Some(m) = max_sessions_per_blob {
        fleet.params.max_sessions_per_blob = m;
    }
    if let Some(k) = max_sends_per_blob {
        fleet.params.max_sends_per_blob = k;
    }
    if let Some(k) = max_waiting_per_blob {
        fleet.params.max_waiting_per_blob = k;
    }
    if fixed_in_flight.is_some() {
        fleet.params.fixed_in_flight = fixed_in_flight;
    }
    if let Some(m) = max_copies_per_piece {
        fleet.params.max_copies_per_piece = m;
    }
    eprintln!(
        "simulating {scenario} ({}): {} hosts ...",
        scenario.describe(),
        fleet.hosts.len()
    );
    let report = flotilla_simulations::run(&fleet, opts)?;
    let (csv, svg) = flotilla_simulations::write_outputs(&report, &out_dir)?;
    print!("{}", report.markdown());
    eprintln!("wrote {} and {}", csv.display(), svg.display());
    if json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
