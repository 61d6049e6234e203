//! The two-node run behind `piece_mb_s`: a gateway with no swarm (so it can only be the HTTP
//! origin), node A that pulls one blob from it, then node B, whose only peer is A, fetching the
//! same blob into its store (`POST /flotilla/v1/prefetch`): the piece transfer between two
//! nodes over QUIC, every piece verified and written, no client, repeated by fresh nodes B
//! between plain quinn probes (the median is reported). Then the last B stops and node C, whose
//! only peer is A too, serves a client pulling the blob through its OCI endpoint: the same
//! transfer with the client's stream on top. The gateway's HTTP egress during each shows
//! whether the node fell back to the origin.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use flotilla_node::NodeStats;

use super::image::{Blob, PullOptions, get_blob, push_blob};
use super::procs::{GatewayStats, Proc, free_port, stop_all};
use super::report::{ClientPull, Pair, PairFetch};
use crate::bench::data::human_bytes;

const PAIR_REPO: &str = "bench/pair";

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

/// Runs the two-node transfer of `blob` with processes under `dir`, B's fetch `runs` times.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    dir: &Path,
    http: &reqwest::Client,
    blob: &Blob,
    opts: PullOptions<'_>,
    log: &str,
    runs: usize,
    probe: impl AsyncFnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Pair> {
    let gateway = Proc::gateway(bin, &dir.join("gateway"), false, log, http).await?;
    let mut procs = vec![gateway];
    let result = run_with(bin, dir, http, blob, opts, log, runs, probe, &mut procs).await;
    let stopped = stop_all(procs).await;
    let pair = result?;
    stopped?;
    Ok(pair)
}

#[allow(clippy::too_many_arguments)]
async fn run_with(
    bin: &Path,
    dir: &Path,
    http: &reqwest::Client,
    blob: &Blob,
    opts: PullOptions<'_>,
    log: &str,
    runs: usize,
    mut probe: impl AsyncFnMut() -> anyhow::Result<f64>,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<Pair> {
    let gw = procs[0].base.clone();
    push_blob(http, &gw, PAIR_REPO, blob)
        .await
        .context("pushing the pair blob")?;

    // A's identity is made here so that B can be told A's full address before either starts.
    let a_dir = dir.join("a");
    let a_id = flotilla_node::identity::load_or_create(&a_dir.join("data"))
        .context("creating node A's identity")?
        .public()
        .to_peer_id();
    let a_port = free_port()?;
    let a_addr = format!("/ip4/127.0.0.1/udp/{a_port}/quic-v1");
    let a = Proc::node(
        bin,
        &a_dir,
        0,
        &gw,
        std::slice::from_ref(&a_addr),
        &[],
        log,
        http,
    )
    .await?;
    procs.push(a);
    progress(format!(
        "pair: node A pulls the {} blob from the gateway (HTTP only)",
        human_bytes(blob.size)
    ));
    let start = Instant::now();
    get_blob(http, &procs[1].base, PAIR_REPO, blob, opts)
        .await
        .context("node A's pull from the gateway")?;
    let seed_time = start.elapsed();

    // B and C: QUIC only, as A, since the figures are compared with plain quinn; A their only
    // peer.
    let behind_a = async |name: &str, index| {
        Proc::node(
            bin,
            &dir.join(name),
            index,
            &gw,
            &["/ip4/127.0.0.1/udp/0/quic-v1".to_owned()],
            &[format!("{a_addr}/p2p/{a_id}")],
            log,
            http,
        )
        .await
    };
    // Each fetch by a fresh node B (A and the blob stay): the median of their ratios to plain
    // quinn is what the run reports, since one fetch alone meets whatever the machine was doing.
    let mut fetches: Vec<Pair> = Vec::with_capacity(runs);
    for run in 0..runs {
        let b = behind_a(&format!("b{run}"), 1 + run).await?;
        procs.push(b);
        // After B's start: B connects to A during the probe, as C does before its pull.
        let quinn_before = probe().await?;
        if let Some(last) = fetches.last_mut() {
            last.quinn_around.1 = quinn_before;
        }
        let (gateway, a, b) = (&procs[0], &procs[1], &procs[2]);
        let g0: GatewayStats = gateway.stats(http).await?;
        let a0: NodeStats = a.stats(http).await?;
        let cpu0 = a.cpu_time()? + b.cpu_time()?;
        progress(format!(
            "pair: node B ({} of {runs}) fetches it from node A into its store",
            run + 1
        ));
        let start = Instant::now();
        prefetch(http, &b.base, blob).await?;
        let time = start.elapsed();
        let cpu = (a.cpu_time()? + b.cpu_time()?).saturating_sub(cpu0);
        let g1: GatewayStats = gateway.stats(http).await?;
        let a1: NodeStats = a.stats(http).await?;
        let bs: NodeStats = b.stats(http).await?;
        let peak_rss = (a.peak_rss()?, b.peak_rss()?);
        let pair = Pair {
            seed_time,
            time,
            egress: g1.since(&g0),
            b_peer_bytes: bs.peer_bytes,
            b_origin_bytes: bs.origin_bytes,
            b_wasted_bytes: bs.wasted_bytes,
            a_served_bytes: a1.served_bytes.saturating_sub(a0.served_bytes),
            cpu,
            peak_rss,
            quinn_around: (quinn_before, 0.0),
            client: None,
            fetches: Vec::new(),
        };
        progress(format!(
            "pair: {:.0} MB/s from A ({:.1} MiB from A, {:.1} MiB from the gateway over HTTP)",
            pair.mb_s(blob.size),
            pair.b_peer_bytes as f64 / f64::from(1u32 << 20),
            pair.egress.http_blob_bytes as f64 / f64::from(1u32 << 20),
        ));
        fetches.push(pair);
        for p in procs.iter_mut() {
            p.check_alive()?;
        }
        // B goes, so that the next B's (and C's) only source is A, as this one's was; its copy
        // of the blob goes too (its log stays), so the work dir holds one B's data at a time.
        if let Some(b) = procs.pop() {
            b.stop().await.context("stopping node B")?;
            let data = dir.join(format!("b{run}")).join("data");
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("removing node B's data {}", data.display()))?;
        }
    }

    let c = behind_a("c", 1 + runs).await?;
    procs.push(c);
    // After C's start, as each B's fetch came after that B's: all had the probe's time to
    // connect to A.
    let quinn_between = probe().await?;
    if let Some(last) = fetches.last_mut() {
        last.quinn_around.1 = quinn_between;
    }
    let mut pair = median_fetch(fetches, blob.size)?;
    let (gateway, a, c) = (&procs[0], &procs[1], &procs[2]);
    let g0: GatewayStats = gateway.stats(http).await?;
    let cpu0 = a.cpu_time()? + c.cpu_time()?;
    progress("pair: a client pulls it through node C, which fetches it from node A");
    let start = Instant::now();
    let first_byte = get_blob(http, &c.base, PAIR_REPO, blob, opts)
        .await
        .context("the pull through node C from node A")?;
    let time = start.elapsed();
    let cpu = (a.cpu_time()? + c.cpu_time()?).saturating_sub(cpu0);
    let g1: GatewayStats = gateway.stats(http).await?;
    let cs: NodeStats = c.stats(http).await?;
    let quinn_after = probe().await?;
    pair.client = Some(ClientPull {
        time,
        first_byte,
        peer_bytes: cs.peer_bytes,
        gateway_http_bytes: g1.since(&g0).http_blob_bytes,
        cpu,
        quinn_around: (quinn_between, quinn_after),
    });
    for p in procs.iter_mut() {
        p.check_alive()?;
    }
    Ok(pair)
}

/// The fetch with the median ratio to plain quinn (the lower of the middle two for an even
/// count), with every fetch listed and the highest peak RSS of any B.
fn median_fetch(fetches: Vec<Pair>, size: u64) -> anyhow::Result<Pair> {
    let all: Vec<PairFetch> = fetches
        .iter()
        .map(|p| PairFetch {
            time: p.time,
            cpu: p.cpu,
            quinn_around: p.quinn_around,
        })
        .collect();
    let b_rss = fetches.iter().map(|p| p.peak_rss.1).max().unwrap_or(0);
    let mut ranked: Vec<(f64, Pair)> = all
        .iter()
        .map(|f| f.vs_quinn(size).unwrap_or(0.0))
        .zip(fetches)
        .collect();
    ranked.sort_by(|x, y| x.0.total_cmp(&y.0));
    let at = ranked.len().saturating_sub(1) / 2;
    let (_, mut pair) = ranked
        .into_iter()
        .nth(at)
        .context("the pair run made no fetch")?;
    pair.peak_rss.1 = b_rss;
    pair.fetches = all;
    Ok(pair)
}

/// Asks the node at `base` to fetch `blob` into its store; returns once it holds it.
async fn prefetch(http: &reqwest::Client, base: &str, blob: &Blob) -> anyhow::Result<()> {
    let url = format!("{base}/flotilla/v1/prefetch");
    let res = http
        .post(&url)
        .json(&serde_json::json!({ "blob": blob.digest }))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = res.status();
    let answer: serde_json::Value = res
        .json()
        .await
        .with_context(|| format!("POST {url}: the answer is not JSON"))?;
    if !status.is_success() || answer["bytes"].as_u64() != Some(blob.size) {
        anyhow::bail!("POST {url}: {status}: {answer}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn fetch(secs: f64, quinn: (f64, f64), b_rss: u64) -> Pair {
        Pair {
            time: Duration::from_secs_f64(secs),
            cpu: Duration::from_secs(1),
            quinn_around: quinn,
            peak_rss: (10, b_rss),
            ..Pair::default()
        }
    }

    #[test]
    fn the_fetch_with_the_median_ratio_is_reported_and_every_fetch_listed() {
        // 100 MB: ratios 0.5, 1.0 and 0.8, out of order.
        let size = 100_000_000;
        let fetches = vec![
            fetch(1.0, (200.0, 200.0), 30),
            fetch(1.0, (100.0, 100.0), 50),
            fetch(1.25, (100.0, 100.0), 40),
        ];
        let pair = median_fetch(fetches, size).unwrap();
        assert_eq!(pair.time, Duration::from_secs_f64(1.25));
        assert_eq!(pair.peak_rss, (10, 50), "the highest B's RSS");
        assert_eq!(pair.fetches.len(), 3);
        let ratios: Vec<f64> = pair
            .fetches
            .iter()
            .map(|f| f.vs_quinn(size).unwrap())
            .collect();
        assert_eq!(ratios, vec![0.5, 1.0, 0.8]);
        // Even counts take the lower of the middle two.
        let two = vec![fetch(1.0, (100.0, 100.0), 1), fetch(1.0, (200.0, 200.0), 1)];
        let pair = median_fetch(two, size).unwrap();
        assert_eq!(pair.quinn_around, (200.0, 200.0));
        assert!(median_fetch(Vec::new(), size).is_err());
    }
}
