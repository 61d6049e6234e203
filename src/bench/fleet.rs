//! `flotilla bench fleet`: a gateway and N nodes on loopback, every node pulling the same image
//! at once, against the same fleet pulling straight from the gateway.
//!
//! Order of a run:
//! 1. start `flotilla gateway` (swarm on loopback QUIC + TCP) and N `flotilla node`s, each a
//!    child process with its own temporary data directory;
//! 2. push an image of `--size` bytes in `--layers` layers (+ a small config) to the gateway,
//!    the data generated on the fly and never held whole;
//! 3. *direct*: N clients (one per node, in this process) pull the image from the gateway's own
//!    `/v2` at once: the baseline a fleet without flotilla pays;
//! 4. *fleet*: N clients pull it at once, each through its node's OCI endpoint: manifest by tag,
//!    then every blob, `--parallel` at a time, each blob checked as it streams (`--verify`);
//! 5. the two-node run (`fleet/pair.rs`), with the gateway's swarm off: node B fetches one blob
//!    from node A only into its store, then a client pulls it through node C from A; then plain
//!    quinn on the same box (`fleet/quic.rs`) as the ceiling.
//!
//! Both pulls record the time from the common start to each client's last byte, the gateway's
//! egress (its `/flotilla/v1/stats` before and after), CPU of every process (`/proc/<pid>/stat`)
//! and peak RSS (`VmHWM`). A client that fails (an error, or no byte for `--stall-secs`) is
//! reported with its node's log, the other phases still run, and the command exits non-zero.

mod image;
mod pair;
mod procs;
mod quic;
mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use flotilla_node::NodeStats;

use self::image::{Image, PullOptions, Verify};
use self::procs::{GatewayStats, Proc, stop_all};
use self::quic::Suites;
use self::report::{Fleet, Params, Pull, Quinn, Report};
use super::client;
use super::data::{human_bytes, parse_size};
use super::limits::ShaImpl;
use super::servers::{CpuSnapshot, own_cpu_time};

const REPO: &str = "bench/fleet";
const TAG: &str = "latest";
/// Seed of the first layer (the others follow); the pair blob uses its own.
const LAYER_SEED: u64 = 0xF1EE7;
const PAIR_SEED: u64 = 0x9A1B;
/// Default blob size of the two-node run and the plain QUIC probe (capped by --size).
const PAIR_SIZE: u64 = 512 << 20;
/// How often a running pull prints progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Most once-a-second samples of the gateway's egress kept per pull (an hour).
const TIMELINE_MAX: usize = 3600;

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

/// Flags of `flotilla bench fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Nodes, each a separate process with its own data directory.
    #[arg(long, default_value_t = 16)]
    nodes: usize,
    /// Bytes of the image's layers together (plain bytes, or with KiB/MiB/GiB or KB/MB/GB).
    #[arg(long, default_value = "1GiB", value_parser = size_arg)]
    size: u64,
    /// Layers the image is split into (equal sizes, the last takes the remainder).
    #[arg(long, default_value_t = 4)]
    layers: u64,
    /// Blobs each client fetches at once (docker's max-concurrent-downloads is 3).
    #[arg(long, default_value_t = 3)]
    parallel: usize,
    /// How the clients check what they pull: `sample` costs next to no CPU, so the clients take
    /// as little as possible of the cores the nodes share; `sha256` is what container engines do.
    #[arg(long, value_enum, default_value_t = Verify::Sample)]
    verify: Verify,
    /// Blob size of the two-node run and the plain QUIC probe [default: --size, at most 512 MiB].
    #[arg(long, value_parser = size_arg)]
    pair_size: Option<u64>,
    /// Runs of the plain QUIC probe per cipher order (the median is reported).
    #[arg(long, default_value_t = 3)]
    quinn_runs: usize,
    /// Fetches in the two-node run, each by a fresh node B between two plain QUIC probes; the
    /// one with the median ratio to plain quinn is reported, all are listed.
    #[arg(long, default_value_t = 3)]
    pair_runs: usize,
    /// A client that receives nothing for this many seconds fails.
    #[arg(long, default_value_t = 120)]
    stall_secs: u64,
    /// Skip the two-node run and the plain QUIC probe.
    #[arg(long)]
    skip_pair: bool,
    /// Also print the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// The flotilla binary to run as `gateway` and `node` [default: this executable].
    #[arg(long)]
    flotilla_bin: Option<PathBuf>,
    /// Where the temporary data directories go [default: the system temp dir]. Needs about
    /// (nodes + 1) × size free, plus 4 × the pair size.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the work directory (data and logs; the pair run's fresh nodes B keep only their
    /// logs) instead of removing it.
    #[arg(long)]
    keep_work_dir: bool,
    /// `FLOTILLA_LOG` of the gateway and nodes (their logs are in the work directory). Above
    /// `warn`, the OCI endpoints log a line per request.
    #[arg(long, default_value = "warn")]
    log: String,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark and prints the report. Ctrl-C stops it cleanly: the processes are killed
/// and the work directory removed.
pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    tokio::select! {
        done = run_to_end(args) => done,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; processes stopped, work directory removed"),
    }
}

/// Flushes dirty pages, so the push's writeback is not charged to the pulls.
async fn settle() {
    // Best effort: without `sync` the figures are only noisier.
    let _ = tokio::process::Command::new("sync").status().await;
}

async fn run_to_end(args: FleetArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.size == 0 || args.layers == 0 || args.parallel == 0 {
        bail!("--nodes, --size, --layers and --parallel must be positive");
    }
    let pair_size = args.pair_size.unwrap_or(args.size.min(PAIR_SIZE));
    if pair_size == 0 || args.quinn_runs == 0 || args.pair_runs == 0 {
        bail!("--pair-size, --quinn-runs and --pair-runs must be positive");
    }
    let cpu_start = CpuSnapshot::take()?;
    let bin = match &args.flotilla_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the flotilla executable")?,
    };
    let parent = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("flotilla-fleet-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))?;
    let work_path = work.path().to_owned();
    let _kept = if args.keep_work_dir {
        progress(format!("keeping {}", work_path.display()));
        let _ = work.keep();
        None
    } else {
        Some(work)
    };
    let http = client::new_client()?;

    progress(format!(
        "computing the digests of {} in {} layer(s)",
        human_bytes(args.size),
        args.layers
    ));
    let (size, count) = (args.size, args.layers);
    let layers =
        tokio::task::spawn_blocking(move || image::layers(size, count, LAYER_SEED, ShaImpl::AwsLc))
            .await?;
    let image = image::build(REPO, TAG, layers);
    let params = Params {
        nodes: args.nodes,
        size: args.size,
        image_bytes: image.blob_bytes(),
        layers: image.blobs.len() as u64 - 1,
        parallel: args.parallel,
        verify: args.verify,
        pair_size,
        pair_runs: args.pair_runs,
        // What the nodes started below will pick: they inherit this environment.
        node_workers: std::env::var("FLOTILLA_NODE_WORKER_THREADS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(flotilla_node::config::default_worker_threads),
    };

    let mut failures = Vec::new();
    let (push_mb_s, direct, fleet) = fleet_phases(
        &args,
        &bin,
        &work_path,
        &http,
        &image,
        &params,
        &mut failures,
    )
    .await?;

    let stall = Duration::from_secs(args.stall_secs);
    let (mut pair, mut quinn) = (None, None);
    if !args.skip_pair {
        let blob = tokio::task::spawn_blocking(move || {
            image::layers(pair_size, 1, PAIR_SEED, ShaImpl::AwsLc)
        })
        .await?
        .remove(0);
        let received = AtomicU64::new(0);
        let opts = PullOptions {
            verify: args.verify,
            parallel: 1,
            stall,
            received: &received,
        };
        // Plain quinn right before and right after each transfer, so that the ratios compare
        // transfers that met the same machine state.
        let probe = async || -> anyhow::Result<f64> {
            let (rate, _) = quinn_once(pair_size, Suites::Libp2p).await?;
            progress(format!("pair: plain quinn {rate:.0} MB/s"));
            Ok(rate)
        };
        match pair::run(
            &bin,
            &work_path.join("pair"),
            &http,
            &blob,
            opts,
            &args.log,
            args.pair_runs,
            probe,
        )
        .await
        {
            Ok(p) => pair = Some(p),
            Err(e) => failures.push(format!("two-node run: {e:#}")),
        }
        match measure_quinn(pair_size, args.quinn_runs).await {
            Ok(q) => quinn = Some(q),
            Err(e) => failures.push(format!("plain QUIC probe: {e:#}")),
        }
    }

    let report = Report {
        params,
        push_mb_s,
        direct,
        fleet,
        pair,
        quinn,
        failures,
        interference: CpuSnapshot::take()?.since(&cpu_start),
    };
    print!("{}", report.table());
    if args.json {
        println!("{}", report.json());
    }
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("[bench] FAILED: {f}");
        }
        bail!(
            "{} part(s) of the run failed (see above)",
            report.failures.len()
        );
    }
    Ok(())
}

/// Steps 1–4: the fleet's processes, the push, the direct pull and the pull through the nodes.
/// Every process is stopped (and reaped) before this returns.
async fn fleet_phases(
    args: &FleetArgs,
    bin: &Path,
    work: &Path,
    http: &reqwest::Client,
    image: &Image,
    params: &Params,
    failures: &mut Vec<String>,
) -> anyhow::Result<(f64, Pull, Fleet)> {
    let gateway = Proc::gateway(bin, &work.join("gateway"), true, &args.log, http).await?;
    progress(format!("gateway ready at {}", gateway.base));
    let start = Instant::now();
    image::push(http, &gateway.base, image).await?;
    let push_mb_s = mb_s(image.blob_bytes(), start.elapsed());
    progress(format!(
        "pushed {}:{} ({}) at {push_mb_s:.0} MB/s",
        image.repo,
        image.tag,
        human_bytes(image.blob_bytes())
    ));

    progress(format!("starting {} nodes", args.nodes));
    let listen = [
        "/ip4/127.0.0.1/udp/0/quic-v1".to_owned(),
        "/ip4/127.0.0.1/tcp/0".to_owned(),
    ];
    let started = futures::future::join_all((0..args.nodes).map(|i| {
        let dir = work.join(format!("node-{i:02}"));
        let listen = &listen;
        let gw = &gateway.base;
        let log = &args.log;
        async move { Proc::node(bin, &dir, i, gw, listen, &[], log, http).await }
    }))
    .await;
    let mut nodes = Vec::with_capacity(args.nodes);
    let mut start_error = None;
    for n in started {
        match n {
            Ok(p) => nodes.push(p),
            Err(e) => {
                start_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = start_error {
        nodes.push(gateway);
        stop_all(nodes).await?;
        return Err(e.context("starting the nodes"));
    }
    settle().await;

    let cx = Ctx {
        http,
        image,
        params,
        stall: Duration::from_secs(args.stall_secs),
    };
    let result = pulls(cx, &gateway, &mut nodes, failures).await;
    nodes.push(gateway);
    let stopped = stop_all(nodes).await;
    let (direct, fleet) = result?;
    stopped?;
    Ok((push_mb_s, direct, fleet))
}

/// Steps 3 and 4 with the processes running.
async fn pulls(
    cx: Ctx<'_>,
    gateway: &Proc,
    nodes: &mut [Proc],
    failures: &mut Vec<String>,
) -> anyhow::Result<(Pull, Fleet)> {
    let http = cx.http;
    let direct_targets = vec![gateway.base.clone(); nodes.len()];
    let (direct, errors) = pull_phase("direct", cx, &direct_targets, gateway, nodes).await?;
    for (i, e) in errors {
        failures.push(format!("direct pull by client {i} from the gateway: {e:#}"));
    }

    let node_targets: Vec<String> = nodes.iter().map(|n| n.base.clone()).collect();
    let mut idle_rss = 0;
    for n in nodes.iter() {
        idle_rss = idle_rss.max(n.peak_rss()?);
    }
    let (pull, errors) = pull_phase("fleet", cx, &node_targets, gateway, nodes).await?;
    for (i, e) in errors {
        failures.push(format!(
            "{} did not complete: {e:#}\n{}",
            nodes[i].name,
            nodes[i].log_tail()
        ));
    }

    let mut fleet = Fleet {
        pull,
        idle_rss,
        ..Fleet::default()
    };
    for n in nodes.iter_mut() {
        n.check_alive()?;
        let s: NodeStats = n.stats(http).await?;
        fleet.peer_bytes += s.peer_bytes;
        fleet.origin_bytes += s.origin_bytes;
        fleet.wasted_bytes += s.wasted_bytes;
        fleet.duplicate_bytes += s.duplicate_bytes;
        fleet.cut_bytes += s.cut_bytes;
        fleet.served_bytes += s.served_bytes;
        fleet.dht.0 += s.dht_provider_lookups;
        fleet.dht.1 += s.dht_announcements;
        fleet.dht.2 += s.dht_answered;
        fleet.node_peak_rss.push(n.peak_rss()?);
        let (count, first) = n.warnings();
        fleet.node_warnings += count;
        if count > 0 {
            progress(format!(
                "{}: {count} WARN/ERROR log lines, first: {}",
                n.name,
                first.join(" | ")
            ));
        }
    }
    Ok((direct, fleet))
}

/// What every pull phase shares.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    http: &'a reqwest::Client,
    image: &'a Image,
    params: &'a Params,
    stall: Duration,
}

/// All clients pull the image at once, client `i` from `targets[i]`. Returns the figures and
/// the clients that failed.
async fn pull_phase(
    name: &str,
    cx: Ctx<'_>,
    targets: &[String],
    gateway: &Proc,
    nodes: &[Proc],
) -> anyhow::Result<(Pull, Vec<(usize, anyhow::Error)>)> {
    let Ctx {
        http,
        image,
        params,
        stall,
    } = cx;
    let server_cpu = || -> anyhow::Result<Duration> {
        let mut t = gateway.cpu_time()?;
        for n in nodes {
            t += n.cpu_time()?;
        }
        Ok(t)
    };
    gateway.reset_peak_rss()?;
    let g0: GatewayStats = gateway.stats(http).await?;
    let cpu0 = server_cpu()?;
    let own0 = own_cpu_time()?;
    let received = AtomicU64::new(0);
    let done = AtomicUsize::new(0);
    let opts = PullOptions {
        verify: params.verify,
        parallel: params.parallel,
        stall,
        received: &received,
    };
    let total = image.blob_bytes() * targets.len() as u64;
    progress(format!(
        "{name}: {} clients pull {} each",
        targets.len(),
        human_bytes(image.blob_bytes())
    ));
    let start = Instant::now();
    let all = futures::future::join_all(targets.iter().map(|base| {
        let done = &done;
        async move {
            let r = image::pull(http, base, image, opts).await;
            done.fetch_add(1, Ordering::Relaxed);
            r.map(|()| start.elapsed())
        }
    }));
    tokio::pin!(all);
    // The gateway's egress once a second, on a task of its own so the pulls never wait for it.
    let timeline = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn({
        let (http, url, timeline) = (http.clone(), gateway.base.clone(), Arc::clone(&timeline));
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            for _ in 0..TIMELINE_MAX {
                every.tick().await;
                if let Ok(g) = procs::gateway_stats(&http, &url).await {
                    let point = (start.elapsed().as_secs_f64(), g.since(&g0).total());
                    timeline
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(point);
                }
            }
        }
    });
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let results = loop {
        tokio::select! {
            r = &mut all => break r,
            _ = tick.tick() => {
                let egress = timeline
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last()
                    .map_or(0, |p| p.1);
                progress(format!(
                    "{name}: {:.0} s, {}/{} done, {} of {} received, gateway sent {}",
                    start.elapsed().as_secs_f64(),
                    done.load(Ordering::Relaxed),
                    targets.len(),
                    human_bytes(received.load(Ordering::Relaxed)),
                    human_bytes(total),
                    human_bytes(egress),
                ));
            }
        }
    };
    sampler.abort();
    let timeline = std::mem::take(&mut *timeline.lock().unwrap_or_else(PoisonError::into_inner));
    let server_cpu = server_cpu()?.saturating_sub(cpu0);
    let client_cpu = own_cpu_time()?.saturating_sub(own0);
    let g1: GatewayStats = gateway.stats(http).await?;
    let mut completions = Vec::with_capacity(results.len());
    let mut errors = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(t) => completions.push(Some(t)),
            Err(e) => {
                completions.push(None);
                errors.push((i, e));
            }
        }
    }
    let pull = Pull {
        completions,
        egress: g1.since(&g0),
        server_cpu,
        client_cpu,
        gateway_peak_rss: gateway.peak_rss()?,
        egress_timeline: timeline,
    };
    progress(format!(
        "{name}: first {} s, last {} s, gateway egress {:.2} x image, {} failed",
        pull.first_s().map_or("—".into(), |s| format!("{s:.2}")),
        pull.last_s().map_or("—".into(), |s| format!("{s:.2}")),
        pull.egress_ratio(params),
        errors.len()
    ));
    Ok((pull, errors))
}

/// One plain quinn transfer of `bytes`: MB/s, and this process's CPU seconds per GiB (it runs
/// both ends and nothing else meanwhile).
async fn quinn_once(bytes: u64, suites: Suites) -> anyhow::Result<(f64, f64)> {
    let before = own_cpu_time()?;
    let took = tokio::task::spawn_blocking(move || quic::time_quinn(bytes, suites)).await??;
    let used = own_cpu_time()?.saturating_sub(before);
    let gib = bytes as f64 / f64::from(1u32 << 30);
    Ok((mb_s(bytes, took), used.as_secs_f64() / gib))
}

/// Plain quinn, `runs` times per cipher order, alternating.
async fn measure_quinn(bytes: u64, runs: usize) -> anyhow::Result<Quinn> {
    let mut q = Quinn::default();
    let mut cpu = Vec::new();
    for run in 0..runs {
        for suites in [Suites::Libp2p, Suites::AesFirst] {
            let (rate, cpu_per_gib) = quinn_once(bytes, suites).await?;
            progress(format!(
                "plain quinn ({suites:?}): run {}/{runs} {rate:.0} MB/s, {cpu_per_gib:.2} CPU-s/GiB",
                run + 1,
            ));
            match suites {
                Suites::Libp2p => {
                    q.runs.push(rate);
                    cpu.push(cpu_per_gib);
                }
                Suites::AesFirst => q.aes_runs.push(rate),
            }
        }
    }
    q.mb_s = median(q.runs.clone());
    q.aes_mb_s = median(q.aes_runs.clone());
    q.cpu_s_per_gib = median(cpu);
    Ok(q)
}
