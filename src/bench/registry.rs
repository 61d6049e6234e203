//! `flotilla bench registry`: the gateway and distribution side by side on loopback.
//!
//! Order of a run: start both servers; measure SHA-256 ×3 and the disk; push and fetch a blob of
//! size/8 to record the small-blob peak RSS; then monolithic pushes, chunked pushes and blob GETs
//! at full size, alternating servers inside each repetition so drift in this noisy VM hits both
//! alike, with the plain TCP probe run inside the GET repetitions so that it meets the same
//! machine state as the GETs; last, manifest GETs under `wrk` load. Each server figure is the
//! median of `--repeat` runs, and so is plain TCP (2 runs per GET repetition); SHA-256 and the
//! disk are the best run (see [`measure_limits`]). `sync` runs between operations so one server's
//! writeback does not land in the other's timing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;

use super::client::{self, BlobSpec, Sample};
use super::data::{human_bytes, parse_size};
use super::limits::{self, ShaImpl};
use super::load;
use super::report::{Figures, Limits, Params, Report, Throughput};
use super::servers::{CpuSnapshot, Kind, Server, own_cpu_time, reaped_children_cpu};

const BLOB_REPO: &str = "bench/blob";
const IMAGE_REPO: &str = "bench/image";
const IMAGE_TAG: &str = "latest";
/// Bytes each SHA-256 implementation hashes per repetition (capped by --size for quick runs).
const SHA_BYTES: u64 = 256 << 20;
/// Runs of the plain TCP probe per GET repetition.
const TCP_RUNS_PER_REP: usize = 2;

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s)
}

/// Flags of `flotilla bench registry`.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Blob size for GET and push (plain bytes, or with KiB/MiB/GiB or KB/MB/GB).
    #[arg(long, default_value = "1GiB", value_parser = size_arg)]
    size: u64,
    /// Chunk size of the chunked push.
    #[arg(long, default_value = "16MiB", value_parser = size_arg)]
    chunk: u64,
    /// Concurrent keep-alive connections for the manifest GET load.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads for the manifest GET load (they share the cores with the server).
    #[arg(long, default_value_t = 1)]
    load_threads: u32,
    /// Seconds of manifest GET load per server (after one second of warm-up).
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Repetitions of each throughput measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Also print the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// distribution's binary (Debian package `docker-registry`).
    #[arg(long, default_value = "/usr/bin/docker-registry")]
    registry_bin: PathBuf,
    /// The flotilla binary to run as `gateway` [default: this executable].
    #[arg(long)]
    flotilla_bin: Option<PathBuf>,
    /// The wrk binary [default: `wrk` on PATH].
    #[arg(long)]
    wrk_bin: Option<PathBuf>,
    /// Where the servers' temporary data directories go [default: the system temp dir]. Needs
    /// about 2 × --repeat × --size free per server.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Run the gateway alone (no ratios to distribution).
    #[arg(long, conflicts_with = "skip_flotilla")]
    skip_distribution: bool,
    /// Run distribution alone (to try the harness without a gateway build).
    #[arg(long)]
    skip_flotilla: bool,
    /// Drop the page cache before each push (root only). On VMs where memory the guest has not
    /// used yet is slow to fault in, pushes slow down as the pushed blobs fill the page cache;
    /// with this flag every push writes into recycled memory, which isolates the servers' speed.
    #[arg(long)]
    drop_caches: bool,
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// Flushes dirty pages so one server's writeback is not charged to the next measurement, and
/// with `drop_caches` empties the page cache as well.
async fn settle(drop_caches: bool) -> anyhow::Result<()> {
    // Best effort: without `sync` the figures are only noisier.
    let _ = tokio::process::Command::new("sync").status().await;
    if drop_caches {
        std::fs::write("/proc/sys/vm/drop_caches", "1")
            .context("--drop-caches: writing /proc/sys/vm/drop_caches (needs root)")?;
    }
    Ok(())
}

/// [`client::get_blob`] off the async threads.
async fn get_blob(base: &str, blob: &BlobSpec) -> anyhow::Result<Sample> {
    let (base, blob) = (base.to_owned(), blob.clone());
    tokio::task::spawn_blocking(move || client::get_blob(&base, BLOB_REPO, &blob)).await?
}

/// Runs `op(server, repetition)` against every server `repeat` times, alternating which goes
/// first, and returns per server the median MB/s, server and client CPU per GiB and the server's
/// peak RSS over the phase. `drop_caches` is passed to [`settle`] before each operation;
/// `each_rep` runs at the start of every repetition.
async fn throughput_phase(
    name: &str,
    servers: &mut [Server],
    repeat: usize,
    bytes: u64,
    drop_caches: bool,
    mut each_rep: impl AsyncFnMut() -> anyhow::Result<()>,
    op: impl AsyncFn(&Server, usize) -> anyhow::Result<Sample>,
) -> anyhow::Result<Vec<Throughput>> {
    for s in servers.iter() {
        s.reset_peak_rss()?;
    }
    let mut runs = vec![Vec::with_capacity(repeat); servers.len()];
    let mut waits = vec![Vec::with_capacity(repeat); servers.len()];
    let mut cpu = vec![Duration::ZERO; servers.len()];
    let mut own_cpu = vec![Duration::ZERO; servers.len()];
    for rep in 0..repeat {
        each_rep().await?;
        for k in 0..servers.len() {
            let i = (k + rep) % servers.len();
            settle(drop_caches).await?;
            let before = servers[i].cpu_time()?;
            let own_before = own_cpu_time()?;
            let sample = op(&servers[i], rep)
                .await
                .with_context(|| format!("{name} against {}", servers[i].kind.name()))?;
            let server = &mut servers[i];
            server.check_alive()?;
            own_cpu[i] += own_cpu_time()?.saturating_sub(own_before);
            cpu[i] += server.cpu_time()?.saturating_sub(before);
            let rate = mbps(bytes, sample.total);
            waits[i].push(sample.wait.as_secs_f64() * 1e3);
            progress(format!(
                "{name} {}: run {}/{repeat} {rate:.0} MB/s",
                server.kind.name(),
                rep + 1
            ));
            runs[i].push(rate);
        }
    }
    let gib = (bytes as f64 * repeat as f64) / f64::from(1u32 << 30);
    let mut out = Vec::with_capacity(servers.len());
    for (i, s) in servers.iter().enumerate() {
        out.push(Throughput {
            mbps: median(runs[i].clone()),
            wait_ms: median(waits[i].clone()),
            runs: runs[i].clone(),
            cpu_s_per_gib: cpu[i].as_secs_f64() / gib,
            client_cpu_s_per_gib: own_cpu[i].as_secs_f64() / gib,
            peak_rss: s.peak_rss()?,
        });
    }
    Ok(out)
}

/// Runs the benchmark and prints the report. Ctrl-C stops it cleanly: the servers are killed and
/// their data directories removed (a killed benchmark would otherwise leave both running).
pub async fn run(args: RegistryArgs) -> anyhow::Result<()> {
    tokio::select! {
        done = run_to_end(args) => done,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; servers stopped, work directory removed"),
    }
}

async fn run_to_end(args: RegistryArgs) -> anyhow::Result<()> {
    if args.size == 0 || args.chunk == 0 {
        bail!("--size and --chunk must be positive");
    }
    if args.repeat == 0 || args.connections == 0 || args.duration_secs == 0 {
        bail!("--repeat, --connections and --duration-secs must be positive");
    }
    if !args.skip_distribution && !args.registry_bin.is_file() {
        bail!(
            "{} not found: distribution is the baseline of this benchmark. Install it with \
             `apt-get install docker-registry`, point --registry-bin at it, or pass --skip-distribution",
            args.registry_bin.display()
        );
    }
    let wrk = load::find_wrk(args.wrk_bin.as_deref())?;
    if args.drop_caches {
        settle(true).await?;
    }
    let cpu_start = CpuSnapshot::take()?;
    let flotilla_bin = match &args.flotilla_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating the flotilla executable")?,
    };
    let parent = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let work = tempfile::Builder::new()
        .prefix("flotilla-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a work directory in {}", parent.display()))?;
    let http = client::new_client()?;

    let mut servers = Vec::new();
    if !args.skip_flotilla {
        let dir = work.path().join("flotilla");
        std::fs::create_dir_all(&dir)?;
        servers.push(Server::start_flotilla(&flotilla_bin, &dir, &http).await?);
        progress(format!(
            "flotilla gateway ready at {}",
            servers[servers.len() - 1].base
        ));
    }
    if !args.skip_distribution {
        let dir = work.path().join("distribution");
        std::fs::create_dir_all(&dir)?;
        servers.push(Server::start_distribution(&args.registry_bin, &dir, &http).await?);
        progress(format!(
            "distribution ready at {}",
            servers[servers.len() - 1].base
        ));
    }

    let limits = measure_limits(&args, work.path().to_owned()).await?;
    let fastest = limits.fastest;

    // Every push sends a blob the server has never seen (a seed per repetition): re-pushing a
    // known blob is not what clients do (they HEAD first), and a server may shortcut it.
    progress(format!("computing blob digests with {}", fastest.name()));
    let small = (args.size / 8).max(1);
    let (repeat, size) = (args.repeat as u64, args.size);
    let (mono, chunked, small_mono, small_chunked) = tokio::task::spawn_blocking(move || {
        let spec = |seed: u64, size: u64| BlobSpec {
            seed,
            size,
            digest: limits::digest_of_blob(fastest, seed, size),
        };
        let mono: Vec<BlobSpec> = (0..repeat).map(|r| spec(0xA00 + r, size)).collect();
        let chunked: Vec<BlobSpec> = (0..repeat).map(|r| spec(0xB00 + r, size)).collect();
        (mono, chunked, spec(0xA5, small), spec(0xB5, small))
    })
    .await?;

    // Small-blob pass: the peak RSS that the full-size figures are compared with.
    let mut small_peaks = Vec::new();
    for s in servers.iter_mut() {
        s.reset_peak_rss()?;
        client::push_monolithic(&http, &s.base, BLOB_REPO, &small_mono).await?;
        client::push_chunked(&http, &s.base, BLOB_REPO, &small_chunked, args.chunk).await?;
        get_blob(&s.base, &small_mono).await?;
        get_blob(&s.base, &small_chunked).await?;
        s.check_alive()?;
        small_peaks.push(s.peak_rss()?);
        progress(format!(
            "{}: {} blob pass done, peak RSS {}",
            s.kind.name(),
            human_bytes(small),
            human_bytes(small_peaks[small_peaks.len() - 1])
        ));
    }

    let push = throughput_phase(
        "monolithic push",
        &mut servers,
        args.repeat,
        size,
        args.drop_caches,
        async || Ok(()),
        async |s: &Server, rep| {
            client::push_monolithic(&http, &s.base, BLOB_REPO, &mono[rep]).await
        },
    )
    .await?;
    let chunk = args.chunk;
    let push_chunked = throughput_phase(
        "chunked push",
        &mut servers,
        args.repeat,
        size,
        args.drop_caches,
        async || Ok(()),
        async |s: &Server, rep| {
            client::push_chunked(&http, &s.base, BLOB_REPO, &chunked[rep], chunk).await
        },
    )
    .await?;
    // The first blob was pushed minutes ago: read it once so every timed GET is served from the
    // page cache, as a hot layer is, and not from the disk; warm the TCP probe alike.
    for s in servers.iter() {
        get_blob(&s.base, &mono[0]).await?;
    }
    tokio::task::spawn_blocking(move || limits::time_tcp(size))
        .await?
        .context("plain TCP probe")?;
    let mut tcp_runs = Vec::new();
    let get = throughput_phase(
        "blob GET",
        &mut servers,
        args.repeat,
        size,
        false,
        async || {
            for _ in 0..TCP_RUNS_PER_REP {
                let took = tokio::task::spawn_blocking(move || limits::time_tcp(size))
                    .await?
                    .context("plain TCP probe")?;
                tcp_runs.push(mbps(size, took));
            }
            progress(format!(
                "plain TCP: {:.0} MB/s",
                tcp_runs[tcp_runs.len() - 1]
            ));
            Ok(())
        },
        async |s: &Server, _| get_blob(&s.base, &mono[0]).await,
    )
    .await?;
    let mut limits = limits;
    // Median, like the GET figure it is compared with: both met the same machine states.
    limits.tcp_mbps = median(tcp_runs);

    let script = load::write_script(work.path())?;
    let mut manifest_bytes = 0;
    let mut figures = Vec::new();
    let duration = Duration::from_secs(args.duration_secs);
    for (i, s) in servers.iter_mut().enumerate() {
        manifest_bytes = client::push_image(&http, &s.base, IMAGE_REPO, IMAGE_TAG).await?;
        let url = format!("{}/v2/{IMAGE_REPO}/manifests/{IMAGE_TAG}", s.base);
        settle(false).await?;
        s.reset_peak_rss()?;
        load::run_wrk(
            &wrk,
            &script,
            &url,
            args.connections,
            args.load_threads,
            Duration::from_secs(1),
        )
        .await?;
        let before = s.cpu_time()?;
        let wrk_before = reaped_children_cpu()?;
        let result = load::run_wrk(
            &wrk,
            &script,
            &url,
            args.connections,
            args.load_threads,
            duration,
        )
        .await?;
        let cpu = s.cpu_time()?.saturating_sub(before);
        let wrk_cpu = reaped_children_cpu()?.saturating_sub(wrk_before);
        s.check_alive()?;
        let manifest_peak = s.peak_rss()?;
        progress(format!(
            "manifest GET {}: {:.0} req/s, p99 {:.2} ms",
            s.kind.name(),
            result.rps,
            result.p99.as_secs_f64() * 1e3
        ));
        figures.push((
            s.kind,
            Figures {
                push: push[i].clone(),
                push_chunked: push_chunked[i].clone(),
                get: get[i].clone(),
                manifest: result,
                manifest_cpu_us_per_request: cpu.as_secs_f64() * 1e6 / result.requests as f64,
                manifest_client_cpu_us_per_request: wrk_cpu.as_secs_f64() * 1e6
                    / result.requests as f64,
                peak_rss_small_blob: small_peaks[i],
                peak_rss_manifest: manifest_peak,
            },
        ));
    }
    for s in servers {
        s.stop().await?;
    }
    let interference = CpuSnapshot::take()?.since(&cpu_start);

    let pick = |kind: Kind| {
        figures
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| f.clone())
    };
    let report = Report {
        params: Params {
            size: args.size,
            small_size: small,
            chunk: args.chunk,
            connections: args.connections,
            load_threads: args.load_threads,
            duration_secs: args.duration_secs,
            repeat: args.repeat,
            manifest_bytes,
        },
        limits,
        flotilla: pick(Kind::Flotilla),
        distribution: pick(Kind::Distribution),
        interference,
    };
    print!("{}", report.table());
    if args.json {
        println!("{}", report.json());
    }
    Ok(())
}

/// The limits, each the best of `--repeat` runs: noise on a shared VM only ever slows a probe
/// down, so the fastest run is the closest to the machine's limit (and the strictest yardstick).
/// SHA-256 ×3 on an in-memory buffer, and the disk; `tcp_mbps` is left at 0 for the GET phase,
/// which runs the plain TCP probe between its GETs, to fill in.
async fn measure_limits(args: &RegistryArgs, dir: PathBuf) -> anyhow::Result<Limits> {
    let repeat = args.repeat;
    let size = args.size;
    let sha_bytes = SHA_BYTES.min(size.max(32 << 20));
    progress(format!(
        "limits: SHA-256 on {} in memory, disk with {}",
        human_bytes(sha_bytes),
        human_bytes(size)
    ));
    let best = |v: Vec<f64>| v.into_iter().fold(0.0, f64::max);
    tokio::task::spawn_blocking(move || -> anyhow::Result<Limits> {
        let buf = super::data::small_blob(0x5A, sha_bytes as usize);
        let mut sha = Vec::new();
        for which in ShaImpl::ALL {
            let runs: Vec<f64> = (0..repeat)
                .map(|_| mbps(sha_bytes, limits::time_sha(which, &buf)))
                .collect();
            sha.push((which, best(runs)));
        }
        drop(buf);
        let (mut written, mut synced) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            let (w, s) = limits::time_disk(&dir, size).context("disk probe")?;
            written.push(mbps(size, w));
            synced.push(mbps(size, s));
        }
        Ok(Limits::new(sha, 0.0, best(written), best(synced)))
    })
    .await?
}
