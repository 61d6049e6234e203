//! flotilla's fleet simulator: a deterministic discrete-event simulation of a fleet pulling an
//! image, in which every host runs the production
//! [`flotilla_protocol::scheduler::Scheduler`] (one per layer, exactly as the node does) and the
//! simulator plays everything around it: DHT lookups and announcements, transfer sessions with
//! the node server's limits, the gateway as the origin, bandwidth shared by flows, latency
//! between sites, hosts joining and leaving.
//!
//! ```text
//! scenarios::build ─► Fleet ─► swarm::run ─────────┐
//!                         ├──► baseline::run ×2 ───┼─► report::build ─► Markdown / JSON / CSV / SVG
//!                         └──► report::Bound ──────┘
//! ```
//!
//! The baselines run on a second thread beside `swarm::run` (they share nothing with it).
//! The model (what a flow is, how the DHT and the origin behave, what the bound means) is
//! written down in `simulations/README.md`. The same fleet and seed give the same report, byte
//! for byte, except the wall time.

mod baseline;
mod flow;
mod model;
mod net;
mod plot;
mod queue;
mod report;
mod rng;
mod scenarios;
mod swarm;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use baseline::{Baseline, BaselineOutcome};
pub use model::{
    Fleet, GBIT, GIB, HostSpec, MBIT, MIB, OriginSpec, Params, Published, Site, parse_size,
};
pub use report::{BaselineSummary, Baselines, Bound, HostRow, Percentiles, Report, WanSite};
pub use scenarios::{Overrides, Scenario, build as build_scenario};
pub use swarm::{SwarmOutcome, SwarmStats};

/// The scheduler every simulated host runs: the protocol crate's, which the node runs too.
pub type HostScheduler = flotilla_protocol::scheduler::Scheduler<u32>;

/// Why a simulation could not run or write its results.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(
        "unknown scenario {0:?} (known: cold, rolling, hetero, churn, edge-20x50, gateway-gone, kraken-2600, fleet-10k, fleet-100k)"
    )]
    UnknownScenario(String),
    #[error("invalid size {0:?} (examples: 1GiB, 3GB, 512MiB, 4096)")]
    InvalidSize(String),
    #[error("invalid fleet: {0}")]
    InvalidFleet(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    #[error("cannot encode the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// How to run a fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunOptions {
    /// Also run the registry and whole-blob-from-one-peer baselines.
    pub baselines: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { baselines: true }
    }
}

/// The environment [`rerun_with_huge_pages`] adds. `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
/// makes `malloc` advise the kernel (in THP `madvise` mode here) to back what it gets with
/// huge pages, but only areas at least a huge page long, and its heap grows by the request
/// plus `top_pad` (128 KiB by default) at a time, so a heap grown in small steps got no huge
/// page at all. `MALLOC_TOP_PAD_` (the variable, not a second item in `GLIBC_TUNABLES`, which
/// glibc 2.36 here did not always honour) makes it grow 32 MiB at a time.
pub const HUGE_PAGE_ENV: [(&str, &str); 2] = [
    ("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1"),
    ("MALLOC_TOP_PAD_", "33554432"),
];

/// Set in the child [`rerun_with_huge_pages`] starts, so it does not start another.
const HUGE_PAGES_CHILD: &str = "FLOTILLA_SIM_HUGE_PAGES_CHILD";

/// On Linux, runs the current program again, with the same arguments, with glibc's `malloc`
/// asking for transparent huge pages ([`HUGE_PAGE_ENV`], read only at process start),
/// unless the caller set `GLIBC_TUNABLES` itself; returns how the child ended, which the caller
/// exits with, or `None`: run here. Call it first thing in `main` of a program about to
/// simulate. A 100,000-host run keeps ~2 GiB of state and touches it at random, so 4-KiB pages
/// cost a TLB miss on most of its cache misses. Where the kernel gives none (THP `never`),
/// nothing changes; the output never does.
pub fn rerun_with_huge_pages() -> Option<std::process::ExitStatus> {
    if !cfg!(target_os = "linux")
        || std::env::var_os("GLIBC_TUNABLES").is_some()
        || std::env::var_os(HUGE_PAGES_CHILD).is_some()
    {
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .envs(HUGE_PAGE_ENV)
        .env(HUGE_PAGES_CHILD, "1")
        .status()
        .ok()
}

/// Simulates `fleet` (swarm and, if asked, the baselines) and reports.
pub fn run(fleet: &Fleet, opts: RunOptions) -> Result<Report, SimError> {
    fleet.validate()?;
    // The baselines share nothing with the swarm run, so they take the machine's other core
    // (a 100,000-host fleet's baselines add about a sixth to the swarm's time when run after
    // it); each run is deterministic on its own, so the report is the same either way.
    let (swarm, wall_s, baselines) = std::thread::scope(|scope| {
        let baselines = opts.baselines.then(|| {
            scope.spawn(|| {
                (
                    baseline::run(fleet, Baseline::Registry),
                    baseline::run(fleet, Baseline::WholeBlobPeer),
                )
            })
        });
        let start = Instant::now();
        let swarm = swarm::run(fleet);
        let wall_s = start.elapsed().as_secs_f64();
        let baselines =
            baselines.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        (swarm, wall_s, baselines)
    });
    Ok(report::build(
        fleet,
        &swarm,
        baselines.as_ref().map(|(r, w)| (r, w)),
        wall_s,
    ))
}

/// Runs only the swarm part (for tests and callers that want the raw outcome).
pub fn run_swarm(fleet: &Fleet) -> Result<SwarmOutcome, SimError> {
    fleet.validate()?;
    Ok(swarm::run(fleet))
}

/// Runs one baseline alone.
pub fn run_baseline(fleet: &Fleet, which: Baseline) -> Result<BaselineOutcome, SimError> {
    fleet.validate()?;
    Ok(baseline::run(fleet, which))
}

/// The SVG of a report's completion-time CDF.
pub fn svg(report: &Report) -> Result<String, SimError> {
    plot::svg(report)
}

/// Writes `<dir>/<scenario>.csv` and `<dir>/<scenario>.svg`; returns their paths.
pub fn write_outputs(report: &Report, dir: &Path) -> Result<(PathBuf, PathBuf), SimError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SimError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let csv = dir.join(format!("{}.csv", report.scenario));
    std::fs::write(&csv, report.csv()).map_err(io(&csv))?;
    let svg_path = dir.join(format!("{}.svg", report.scenario));
    std::fs::write(&svg_path, plot::svg(report)?).map_err(io(&svg_path))?;
    Ok((csv, svg_path))
}

#[cfg(test)]
mod tests;
