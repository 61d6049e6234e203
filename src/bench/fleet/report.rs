//! The figures of a `bench fleet` run, the targets they are judged against, and their two
//! renderings: Markdown tables and one JSON object.

use crate::bench::report::{fmt, markdown};
use std::time::Duration;

use serde_json::{Value, json};

use super::image::Verify;
use super::procs::GatewayStats;
use crate::bench::data::human_bytes;
use crate::bench::servers::Interference;

/// Gateway egress per image size allowed (the whole fleet should cost the gateway about one copy).
pub const EGRESS_RATIO_MAX: f64 = 1.1;
/// The fleet size the egress target is set for.
pub const EGRESS_TARGET_NODES: usize = 16;
/// Most peak RSS a node may have, MiB.
pub const NODE_RSS_MAX_MIB: f64 = 64.0;
/// Least share of plain QUIC's throughput a piece transfer must reach.
pub const PIECE_VS_QUINN_MIN: f64 = 0.9;
/// Above this share of the machine used by other programs, the run is called unreliable.
const INTERFERENCE_WARN: f64 = 0.05;

/// What the run was asked to do.
#[derive(Debug, Clone)]
pub struct Params {
    /// Nodes.
    pub nodes: usize,
    /// Layer bytes (`--size`).
    pub size: u64,
    /// Config + layers: the bytes one pull moves.
    pub image_bytes: u64,
    /// Layers.
    pub layers: u64,
    /// Blobs fetched at once per puller.
    pub parallel: usize,
    /// How pulled blobs were checked.
    pub verify: Verify,
    /// Blob size of the two-node run and the plain QUIC probe.
    pub pair_size: u64,
    /// Fetches by a fresh node B in the two-node run.
    pub pair_runs: usize,
    /// Worker threads each node runs (its default, or `FLOTILLA_NODE_WORKER_THREADS`).
    pub node_workers: usize,
}

/// One fleet-wide pull (through the nodes, or straight from the gateway).
#[derive(Debug, Clone, Default)]
pub struct Pull {
    /// Per puller, from the common start to its last byte; `None` if it failed.
    pub completions: Vec<Option<Duration>>,
    /// What the gateway sent meanwhile.
    pub egress: GatewayStats,
    /// CPU of the gateway and every node process meanwhile.
    pub server_cpu: Duration,
    /// CPU of this process (the pulling clients) meanwhile.
    pub client_cpu: Duration,
    /// The gateway's peak RSS during the pull.
    pub gateway_peak_rss: u64,
    /// (seconds since the start, bytes the gateway has sent since), once a second.
    pub egress_timeline: Vec<(f64, u64)>,
}

impl Pull {
    fn done(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .completions
            .iter()
            .flatten()
            .map(Duration::as_secs_f64)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }

    fn all_done(&self) -> bool {
        !self.completions.is_empty() && self.completions.iter().all(Option::is_some)
    }

    /// The first puller's completion, seconds.
    pub fn first_s(&self) -> Option<f64> {
        self.done().first().copied()
    }

    /// The last puller's completion, seconds (`None` if any failed).
    pub fn last_s(&self) -> Option<f64> {
        if self.all_done() {
            self.done().last().copied()
        } else {
            None
        }
    }

    /// Gateway egress / image size.
    pub fn egress_ratio(&self, p: &Params) -> f64 {
        self.egress.total() as f64 / p.image_bytes.max(1) as f64
    }

    /// Per-puller MB/s (image bytes / own completion time): min, median, max.
    pub fn per_puller_mb_s(&self, p: &Params) -> Option<(f64, f64, f64)> {
        let rates: Vec<f64> = self
            .done()
            .iter()
            .rev()
            .map(|s| p.image_bytes as f64 / s.max(1e-9) / 1e6)
            .collect();
        let n = rates.len();
        if n == 0 {
            return None;
        }
        let median = if n % 2 == 1 {
            rates[n / 2]
        } else {
            (rates[n / 2 - 1] + rates[n / 2]) / 2.0
        };
        Some((rates[0], median, rates[n - 1]))
    }

    /// All bytes delivered / time to the last completion, MB/s.
    pub fn aggregate_mb_s(&self, p: &Params) -> Option<f64> {
        self.last_s()
            .map(|s| (p.image_bytes * p.nodes as u64) as f64 / s.max(1e-9) / 1e6)
    }

    fn per_gib(&self, p: &Params, cpu: Duration) -> f64 {
        let gib = (p.image_bytes as f64 * p.nodes as f64) / f64::from(1u32 << 30);
        cpu.as_secs_f64() / gib.max(1e-12)
    }

    /// Gateway + node CPU seconds per GiB delivered to the pullers.
    pub fn cpu_s_per_gib(&self, p: &Params) -> f64 {
        self.per_gib(p, self.server_cpu)
    }

    /// The pullers' CPU seconds per GiB.
    pub fn client_cpu_s_per_gib(&self, p: &Params) -> f64 {
        self.per_gib(p, self.client_cpu)
    }
}

/// The pull through the nodes, with what the nodes say about it.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    /// The pull.
    pub pull: Pull,
    /// Each node's peak RSS over its life, bytes.
    pub node_peak_rss: Vec<u64>,
    /// The largest node peak RSS before the pull (started, joined, idle), bytes.
    pub idle_rss: u64,
    /// Sum over nodes of verified bytes received from peers.
    pub peer_bytes: u64,
    /// … from the gateway over HTTP.
    pub origin_bytes: u64,
    /// … received and dropped.
    pub wasted_bytes: u64,
    /// … of it, whole copies of pieces already held.
    pub duplicate_bytes: u64,
    /// … of it, copies that ended part way.
    pub cut_bytes: u64,
    /// … served to peers.
    pub served_bytes: u64,
    /// Sum over nodes of Kademlia provider lookups, announcements and requests answered.
    pub dht: (u64, u64, u64),
    /// WARN/ERROR lines in the nodes' logs.
    pub node_warnings: usize,
}

impl Fleet {
    /// Largest node peak RSS.
    pub fn max_rss(&self) -> Option<u64> {
        self.node_peak_rss.iter().copied().max()
    }

    fn median_rss(&self) -> Option<u64> {
        let mut v = self.node_peak_rss.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    }
}

/// One of the two-node run's fetches by a fresh node B, as listed beside the reported one.
#[derive(Debug, Clone, Default)]
pub struct PairFetch {
    /// B's fetch, request to answer.
    pub time: Duration,
    /// CPU of A and B during it.
    pub cpu: Duration,
    /// Plain quinn right before and right after it, MB/s.
    pub quinn_around: (f64, f64),
}

impl PairFetch {
    /// Against the plain quinn runs around it.
    pub fn vs_quinn(&self, size: u64) -> Option<f64> {
        let q = (self.quinn_around.0 + self.quinn_around.1) / 2.0;
        (q > 0.0).then(|| mb_s(size, self.time) / q)
    }
}

/// The two-node run: fresh nodes B, one after the other, each fetch one blob that node A holds
/// into their store, then a client pulls it through node C from A. The figures of B's fetch
/// are those of the fetch with the median ratio to plain quinn around it: the machine's speed
/// drifts by tens of percent between one fetch and the next (other VMs on the host), so one
/// fetch alone says little.
#[derive(Debug, Clone, Default)]
pub struct Pair {
    /// A's pull of the blob from the gateway (no swarm there: HTTP origin only).
    pub seed_time: Duration,
    /// B's fetch (`POST /flotilla/v1/prefetch`): request to answer, every piece verified and
    /// written. It includes finding the table and A (plain quinn's clock starts after its
    /// handshake).
    pub time: Duration,
    /// The gateway's egress during B's fetch.
    pub egress: GatewayStats,
    /// Bytes B received from peers / from the gateway over HTTP / dropped.
    pub b_peer_bytes: u64,
    /// As above.
    pub b_origin_bytes: u64,
    /// As above.
    pub b_wasted_bytes: u64,
    /// Bytes A served during B's pull.
    pub a_served_bytes: u64,
    /// CPU of A and B during B's pull.
    pub cpu: Duration,
    /// Peak RSS of A and B.
    pub peak_rss: (u64, u64),
    /// Plain quinn (libp2p's cipher order, same size) right before and right after B's fetch,
    /// MB/s: the yardstick of `piece_vs_quinn`.
    pub quinn_around: (f64, f64),
    /// The client's pull through node C, unless it failed.
    pub client: Option<ClientPull>,
    /// Every fetch by a node B, in order (the reported one among them).
    pub fetches: Vec<PairFetch>,
}

/// A client pulls the blob through node C, whose only peer is A: the piece transfer with the
/// node's OCI endpoint streaming to a client on top (what `piece_mb_s` measured until
/// 2026-12-05).
#[derive(Debug, Clone, Default)]
pub struct ClientPull {
    /// GET through C's endpoint, first request to last byte.
    pub time: Duration,
    /// Of that, the time to the first body byte.
    pub first_byte: Duration,
    /// Bytes C received from peers.
    pub peer_bytes: u64,
    /// The gateway's HTTP blob bytes during it.
    pub gateway_http_bytes: u64,
    /// CPU of A and C during it.
    pub cpu: Duration,
    /// Plain quinn right before and right after it, MB/s.
    pub quinn_around: (f64, f64),
}

impl ClientPull {
    /// MB/s.
    pub fn mb_s(&self, size: u64) -> f64 {
        mb_s(size, self.time)
    }

    /// After the first body byte, MB/s.
    pub fn streaming_mb_s(&self, size: u64) -> f64 {
        mb_s(size, self.time.saturating_sub(self.first_byte))
    }

    /// Against the plain quinn runs around it.
    pub fn vs_quinn(&self, size: u64) -> Option<f64> {
        let q = (self.quinn_around.0 + self.quinn_around.1) / 2.0;
        (q > 0.0).then(|| self.mb_s(size) / q)
    }
}

/// Plain quinn, MB/s: the median of its runs for each cipher order.
#[derive(Debug, Clone, Default)]
pub struct Quinn {
    /// libp2p's cipher order (ChaCha20-Poly1305 negotiated): the yardstick.
    pub mb_s: f64,
    /// Every run.
    pub runs: Vec<f64>,
    /// CPU seconds (sender + receiver) per GiB with libp2p's cipher order.
    pub cpu_s_per_gib: f64,
    /// AES-128-GCM first.
    pub aes_mb_s: f64,
    /// Every run.
    pub aes_runs: Vec<f64>,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Inputs.
    pub params: Params,
    /// Push of the image to the gateway, MB/s.
    pub push_mb_s: f64,
    /// Every node's client pulling from the gateway's `/v2` directly.
    pub direct: Pull,
    /// Every node's client pulling through its node.
    pub fleet: Fleet,
    /// The two-node run, unless skipped or failed.
    pub pair: Option<Pair>,
    /// Plain QUIC, unless skipped or failed.
    pub quinn: Option<Quinn>,
    /// What went wrong (a node that did not complete, a phase that failed).
    pub failures: Vec<String>,
    /// CPU that other programs took during the run.
    pub interference: Interference,
}

struct Target {
    key: &'static str,
    label: String,
    value: Option<f64>,
    bound: f64,
    at_most: bool,
}

impl Target {
    fn pass(&self) -> Option<bool> {
        self.value.map(|v| {
            if self.at_most {
                v <= self.bound
            } else {
                v >= self.bound
            }
        })
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

impl Pair {
    /// B's fetch, MB/s.
    pub fn mb_s(&self, size: u64) -> f64 {
        mb_s(size, self.time)
    }

    /// The mean of the plain quinn runs around B's fetch, MB/s.
    pub fn quinn_mb_s(&self) -> f64 {
        (self.quinn_around.0 + self.quinn_around.1) / 2.0
    }
}

impl Report {
    /// B's fetch from A / plain quinn right before and after it (the machine's load drifts;
    /// runs minutes apart are not comparable on a shared machine).
    pub fn piece_vs_quinn(&self) -> Option<f64> {
        let pair = self.pair.as_ref()?;
        let quinn = pair.quinn_mb_s();
        (quinn > 0.0).then(|| pair.mb_s(self.params.pair_size) / quinn)
    }

    fn targets(&self) -> Vec<Target> {
        let p = &self.params;
        vec![
            Target {
                key: "gateway_egress_ratio",
                label: format!(
                    "gateway egress <= {EGRESS_RATIO_MAX} x image (set for {EGRESS_TARGET_NODES} nodes; this run {})",
                    p.nodes
                ),
                value: Some(self.fleet.pull.egress_ratio(p)),
                bound: EGRESS_RATIO_MAX,
                at_most: true,
            },
            Target {
                key: "node_peak_rss_mib",
                label: format!(
                    "node peak RSS <= {NODE_RSS_MAX_MIB} MiB (set for streaming one 4 GiB layer; this run {} layer(s) of {}, {} at a time)",
                    p.layers,
                    human_bytes(p.size / p.layers.max(1)),
                    p.parallel
                ),
                value: self.fleet.max_rss().map(mib),
                bound: NODE_RSS_MAX_MIB,
                at_most: true,
            },
            Target {
                key: "piece_vs_quinn",
                label: format!("node-to-node piece transfer >= {PIECE_VS_QUINN_MIN} x plain quinn"),
                value: self.piece_vs_quinn(),
                bound: PIECE_VS_QUINN_MIN,
                at_most: false,
            },
        ]
    }

    /// The report as Markdown.
    pub fn table(&self) -> String {
        let p = &self.params;
        let (f, d) = (&self.fleet.pull, &self.direct);
        let mut out = format!(
            "flotilla bench fleet: {} nodes pull a {} image ({} layer{} + config) at once, {} blobs at a time, on loopback; blobs checked by {}\n\n",
            p.nodes,
            human_bytes(p.size),
            p.layers,
            if p.layers == 1 { "" } else { "s" },
            p.parallel,
            p.verify.describe()
        );
        let mut rows = vec![vec![
            "metric".to_owned(),
            "through the nodes".to_owned(),
            "straight from the gateway".to_owned(),
        ]];
        let mut row = |label: &str, a: String, b: String| rows.push(vec![label.to_owned(), a, b]);
        let done = |x: &Pull| {
            format!(
                "{}/{}",
                x.completions.iter().flatten().count(),
                x.completions.len()
            )
        };
        row("pulls completed", done(f), done(d));
        row(
            "first completion (s)",
            fmt(f.first_s(), 2),
            fmt(d.first_s(), 2),
        );
        row(
            "last completion (s)",
            fmt(f.last_s(), 2),
            fmt(d.last_s(), 2),
        );
        row(
            "gateway egress / image size",
            format!("{:.2}", f.egress_ratio(p)),
            format!("{:.2}", d.egress_ratio(p)),
        );
        row(
            "gateway egress, HTTP + swarm (MiB)",
            format!(
                "{:.0} + {:.0}",
                mib(f.egress.http_blob_bytes),
                mib(f.egress.swarm_bytes)
            ),
            format!(
                "{:.0} + {:.0}",
                mib(d.egress.http_blob_bytes),
                mib(d.egress.swarm_bytes)
            ),
        );
        let rates = |x: &Pull| {
            x.per_puller_mb_s(p).map_or_else(
                || "—".to_owned(),
                |(lo, mid, hi)| format!("{lo:.0} / {mid:.0} / {hi:.0}"),
            )
        };
        row("per-node MB/s, min / median / max", rates(f), rates(d));
        row(
            "all nodes together (MB/s)",
            fmt(f.aggregate_mb_s(p), 0),
            fmt(d.aggregate_mb_s(p), 0),
        );
        row(
            "CPU, gateway + nodes (s/GiB delivered)",
            format!("{:.2}", f.cpu_s_per_gib(p)),
            format!("{:.2}", d.cpu_s_per_gib(p)),
        );
        row(
            "CPU, pulling clients (s/GiB)",
            format!("{:.2}", f.client_cpu_s_per_gib(p)),
            format!("{:.2}", d.client_cpu_s_per_gib(p)),
        );
        row(
            "node peak RSS, max / median (MiB)",
            match (self.fleet.max_rss(), self.fleet.median_rss()) {
                (Some(a), Some(b)) => format!("{:.1} / {:.1}", mib(a), mib(b)),
                _ => "—".to_owned(),
            },
            "—".to_owned(),
        );
        row(
            "node peak RSS before the pull, max (MiB)",
            format!("{:.1}", mib(self.fleet.idle_rss)),
            "—".to_owned(),
        );
        row(
            "gateway peak RSS (MiB)",
            format!("{:.1}", mib(f.gateway_peak_rss)),
            format!("{:.1}", mib(d.gateway_peak_rss)),
        );
        out.push_str(&markdown(&rows));
        let fl = &self.fleet;
        out.push_str(&format!(
            "\nnodes received {:.0} MiB from peers and {:.0} MiB from the gateway over HTTP, dropped {:.0} MiB ({:.0} in duplicate copies, {:.0} cut short); served {:.0} MiB to peers; {} WARN/ERROR lines in their logs. Image pushed at {:.0} MB/s.\n",
            mib(fl.peer_bytes),
            mib(fl.origin_bytes),
            mib(fl.wasted_bytes),
            mib(fl.duplicate_bytes),
            mib(fl.cut_bytes),
            mib(fl.served_bytes),
            fl.node_warnings,
            self.push_mb_s
        ));
        let n = fl.node_peak_rss.len().max(1) as f64;
        out.push_str(&format!(
            "DHT per node: {:.1} provider lookups, {:.1} announcements started, {:.1} requests of others answered.\n",
            fl.dht.0 as f64 / n,
            fl.dht.1 as f64 / n,
            fl.dht.2 as f64 / n,
        ));

        let mut rows = vec![vec![
            format!("two nodes, one {} blob", human_bytes(p.pair_size)),
            "value".to_owned(),
        ]];
        if let Some(pair) = &self.pair {
            rows.push(vec![
                "node B fetches it from node A into its store (MB/s)".into(),
                format!("{:.0}", pair.mb_s(p.pair_size)),
            ]);
            rows.push(vec![
                "B received from A / gateway HTTP / dropped (MiB)".into(),
                format!(
                    "{:.1} / {:.1} / {:.1}",
                    mib(pair.b_peer_bytes),
                    mib(pair.b_origin_bytes),
                    mib(pair.b_wasted_bytes)
                ),
            ]);
            rows.push(vec![
                "gateway egress during it, HTTP (MiB)".into(),
                format!("{:.2}", mib(pair.egress.http_blob_bytes)),
            ]);
            rows.push(vec![
                "CPU of A + B (s/GiB)".into(),
                format!(
                    "{:.2}",
                    pair.cpu.as_secs_f64() / (p.pair_size as f64 / f64::from(1u32 << 30))
                ),
            ]);
            rows.push(vec![
                "peak RSS A / B (MiB)".into(),
                format!("{:.1} / {:.1}", mib(pair.peak_rss.0), mib(pair.peak_rss.1)),
            ]);
            rows.push(vec![
                "plain quinn right before / after B's fetch (MB/s)".into(),
                format!("{:.0} / {:.0}", pair.quinn_around.0, pair.quinn_around.1),
            ]);
            if pair.fetches.len() > 1 {
                let each: Vec<String> = pair
                    .fetches
                    .iter()
                    .map(|f| fmt(f.vs_quinn(p.pair_size), 2))
                    .collect();
                rows.push(vec![
                    format!(
                        "each of {} fetches by a fresh B / plain quinn (the median above)",
                        pair.fetches.len()
                    ),
                    each.join(", "),
                ]);
            }
            if let Some(c) = &pair.client {
                rows.push(vec![
                    "a client pulls it through node C from node A (MB/s)".into(),
                    format!("{:.0}", c.mb_s(p.pair_size)),
                ]);
                rows.push(vec![
                    "of it: first body byte after (ms) / MB/s from then on".into(),
                    format!(
                        "{:.0} / {:.0}",
                        c.first_byte.as_secs_f64() * 1e3,
                        c.streaming_mb_s(p.pair_size)
                    ),
                ]);
                rows.push(vec![
                    "C received from A / gateway HTTP (MiB); CPU of A + C (s/GiB)".into(),
                    format!(
                        "{:.1} / {:.1}; {:.2}",
                        mib(c.peer_bytes),
                        mib(c.gateway_http_bytes),
                        c.cpu.as_secs_f64() / (p.pair_size as f64 / f64::from(1u32 << 30))
                    ),
                ]);
                rows.push(vec![
                    "the client's pull / plain quinn around it".into(),
                    fmt(c.vs_quinn(p.pair_size), 2),
                ]);
            }
            rows.push(vec![
                "node A's pull from the gateway, HTTP only (MB/s)".into(),
                format!("{:.0}", mb_s(p.pair_size, pair.seed_time)),
            ]);
        }
        if let Some(q) = &self.quinn {
            rows.push(vec![
                "plain quinn, one stream, libp2p's cipher order, median (MB/s)".into(),
                format!("{:.0}", q.mb_s),
            ]);
            rows.push(vec![
                "plain quinn, sender + receiver CPU (s/GiB)".into(),
                format!("{:.2}", q.cpu_s_per_gib),
            ]);
            rows.push(vec![
                "plain quinn, one stream, AES-128-GCM first, median (MB/s)".into(),
                format!("{:.0}", q.aes_mb_s),
            ]);
        }
        if rows.len() > 1 {
            rows.push(vec![
                "node-to-node piece transfer / plain quinn around it".into(),
                fmt(self.piece_vs_quinn(), 2),
            ]);
            out.push('\n');
            out.push_str(&markdown(&rows));
        }

        let mut rows = vec![vec![
            "target".to_owned(),
            "value".to_owned(),
            "result".to_owned(),
        ]];
        for t in self.targets() {
            let verdict = match t.pass() {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a",
            };
            rows.push(vec![t.label, fmt(t.value, 2), verdict.to_owned()]);
        }
        out.push('\n');
        out.push_str(&markdown(&rows));
        let i = &self.interference;
        out.push_str(&format!(
            "\nduring the run, other programs used {:.1} % and other VMs (steal) {:.1} % of the {} cores; each node ran {} worker thread(s)\n",
            i.other_share * 100.0,
            i.steal_share * 100.0,
            i.cores,
            self.params.node_workers
        ));
        if i.other_share + i.steal_share > INTERFERENCE_WARN {
            out.push_str(
                "WARNING: the machine was not quiet; these figures are not reliable, run again\n",
            );
        }
        for f in &self.failures {
            out.push_str(&format!(
                "FAILED: {}\n",
                f.lines().next().unwrap_or_default()
            ));
        }
        out
    }

    fn pull_json(&self, x: &Pull) -> Value {
        let p = &self.params;
        let per = x.per_puller_mb_s(p);
        json!({
            "completions_s": x.completions.iter().map(|c| c.map(|d| d.as_secs_f64())).collect::<Vec<_>>(),
            "first_completion_s": x.first_s(),
            "last_completion_s": x.last_s(),
            "gateway_http_blob_bytes": x.egress.http_blob_bytes,
            "gateway_swarm_bytes": x.egress.swarm_bytes,
            "gateway_egress_ratio": x.egress_ratio(p),
            "per_node_mb_s": per.map(|(lo, mid, hi)| json!({"min": lo, "median": mid, "max": hi})),
            "aggregate_mb_s": x.aggregate_mb_s(p),
            "cpu_s_per_gib": x.cpu_s_per_gib(p),
            "client_cpu_s_per_gib": x.client_cpu_s_per_gib(p),
            "gateway_peak_rss_mib": mib(x.gateway_peak_rss),
            "gateway_egress_timeline": x
                .egress_timeline
                .iter()
                .map(|(t, b)| json!([(t * 10.0).round() / 10.0, b]))
                .collect::<Vec<_>>(),
        })
    }

    /// The figures as one JSON object (one line).
    pub fn json(&self) -> Value {
        let p = &self.params;
        let f = &self.fleet;
        let targets = self.targets();
        let mut target_map = serde_json::Map::new();
        for t in &targets {
            let mut entry = serde_json::Map::new();
            entry.insert("value".into(), json!(t.value));
            entry.insert(
                (if t.at_most { "max" } else { "min" }).into(),
                json!(t.bound),
            );
            entry.insert("pass".into(), json!(t.pass()));
            if t.key == "gateway_egress_ratio" {
                entry.insert("set_for_nodes".into(), json!(EGRESS_TARGET_NODES));
                entry.insert("nodes".into(), json!(p.nodes));
            }
            if t.key == "node_peak_rss_mib" {
                entry.insert("set_for".into(), json!("streaming one 4 GiB layer"));
                entry.insert("layers".into(), json!(p.layers));
            }
            target_map.insert(t.key.to_owned(), Value::Object(entry));
        }
        let all_pass = targets.iter().all(|t| t.pass() == Some(true));
        let pair = self.pair.as_ref().map(|pair| {
            json!({
                "mb_s": pair.mb_s(p.pair_size),
                "seconds": pair.time.as_secs_f64(),
                "client": pair.client.as_ref().map(|c| json!({
                    "mb_s": c.mb_s(p.pair_size),
                    "seconds": c.time.as_secs_f64(),
                    "first_byte_s": c.first_byte.as_secs_f64(),
                    "streaming_mb_s": c.streaming_mb_s(p.pair_size),
                    "c_peer_bytes": c.peer_bytes,
                    "gateway_http_blob_bytes": c.gateway_http_bytes,
                    "cpu_s_per_gib": c.cpu.as_secs_f64() / (p.pair_size as f64 / f64::from(1u32 << 30)),
                    "quinn_around_mb_s": [c.quinn_around.0, c.quinn_around.1],
                    "vs_quinn": c.vs_quinn(p.pair_size),
                })),
                "seed_mb_s": mb_s(p.pair_size, pair.seed_time),
                "gateway_http_blob_bytes": pair.egress.http_blob_bytes,
                "gateway_swarm_bytes": pair.egress.swarm_bytes,
                "b_peer_bytes": pair.b_peer_bytes,
                "b_origin_bytes": pair.b_origin_bytes,
                "b_wasted_bytes": pair.b_wasted_bytes,
                "a_served_bytes": pair.a_served_bytes,
                "cpu_s_per_gib": pair.cpu.as_secs_f64() / (p.pair_size as f64 / f64::from(1u32 << 30)),
                "peak_rss_mib": [mib(pair.peak_rss.0), mib(pair.peak_rss.1)],
                "quinn_around_mb_s": [pair.quinn_around.0, pair.quinn_around.1],
                "fetches": pair.fetches.iter().map(|f| json!({
                    "mb_s": mb_s(p.pair_size, f.time),
                    "cpu_s_per_gib": f.cpu.as_secs_f64() / (p.pair_size as f64 / f64::from(1u32 << 30)),
                    "quinn_around_mb_s": [f.quinn_around.0, f.quinn_around.1],
                    "vs_quinn": f.vs_quinn(p.pair_size),
                })).collect::<Vec<_>>(),
            })
        });
        json!({
            "benchmark": "fleet",
            "params": {
                "nodes": p.nodes,
                "size_bytes": p.size,
                "image_bytes": p.image_bytes,
                "layers": p.layers,
                "parallel": p.parallel,
                "verify": match p.verify { Verify::Sha256 => "sha256", Verify::Sample => "sample" },
                "pair_size_bytes": p.pair_size,
                "pair_runs": p.pair_runs,
                "node_worker_threads": p.node_workers,
            },
            "gateway_egress_ratio": f.pull.egress_ratio(p),
            "first_completion_s": f.pull.first_s(),
            "last_completion_s": f.pull.last_s(),
            "direct_first_completion_s": self.direct.first_s(),
            "direct_last_completion_s": self.direct.last_s(),
            "direct_gateway_egress_ratio": self.direct.egress_ratio(p),
            "node_peak_rss_mib": f.max_rss().map(mib),
            "cpu_s_per_gib": f.pull.cpu_s_per_gib(p),
            "direct_cpu_s_per_gib": self.direct.cpu_s_per_gib(p),
            "piece_mb_s": self.pair.as_ref().map(|x| x.mb_s(p.pair_size)),
            "quinn_mb_s": self.pair.as_ref().map(Pair::quinn_mb_s),
            "quinn_median_mb_s": self.quinn.as_ref().map(|q| q.mb_s),
            "quinn_aes_mb_s": self.quinn.as_ref().map(|q| q.aes_mb_s),
            "piece_vs_quinn": self.piece_vs_quinn(),
            "piece_vs_quinn_runs": self.pair.as_ref().map(|x| x.fetches.iter().map(|f| f.vs_quinn(p.pair_size)).collect::<Vec<_>>()),
            "client_pull_vs_quinn": self.pair.as_ref().and_then(|x| x.client.as_ref()?.vs_quinn(p.pair_size)),
            "push_mb_s": self.push_mb_s,
            "fleet": self.pull_json(&f.pull),
            "direct": self.pull_json(&self.direct),
            "nodes": {
                "peak_rss_mib": f.node_peak_rss.iter().map(|&b| mib(b)).collect::<Vec<_>>(),
                "idle_peak_rss_mib": mib(f.idle_rss),
                "peer_bytes": f.peer_bytes,
                "origin_bytes": f.origin_bytes,
                "wasted_bytes": f.wasted_bytes,
                "duplicate_bytes": f.duplicate_bytes,
                "cut_bytes": f.cut_bytes,
                "served_bytes": f.served_bytes,
                "dht_provider_lookups": f.dht.0,
                "dht_announcements": f.dht.1,
                "dht_answered": f.dht.2,
                "log_warnings": f.node_warnings,
            },
            "pair": pair,
            "quinn": self.quinn.as_ref().map(|q| json!({
                "mb_s": q.mb_s, "runs_mb_s": q.runs, "cpu_s_per_gib": q.cpu_s_per_gib, "aes_mb_s": q.aes_mb_s, "aes_runs_mb_s": q.aes_runs,
            })),
            "failures": self.failures,
            "environment": {
                "cores": self.interference.cores,
                "other_cpu_share": self.interference.other_share,
                "steal_share": self.interference.steal_share,
                "quiet": self.interference.other_share + self.interference.steal_share <= INTERFERENCE_WARN,
            },
            "targets": target_map,
            "all_targets_pass": all_pass,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let secs = |s: f64| Some(Duration::from_secs_f64(s));
        let params = Params {
            nodes: 4,
            size: 1 << 30,
            image_bytes: (1 << 30) + 300,
            layers: 4,
            parallel: 3,
            verify: Verify::Sample,
            pair_size: 512 << 20,
            pair_runs: 3,
            node_workers: 1,
        };
        Report {
            push_mb_s: 900.0,
            direct: Pull {
                completions: vec![secs(4.0), secs(5.0), secs(6.0), secs(8.0)],
                egress: GatewayStats {
                    http_blob_bytes: 4 * params.image_bytes,
                    swarm_bytes: 0,
                },
                server_cpu: Duration::from_secs(2),
                client_cpu: Duration::from_secs(1),
                gateway_peak_rss: 30 << 20,
                egress_timeline: Vec::new(),
            },
            fleet: Fleet {
                pull: Pull {
                    completions: vec![secs(3.0), secs(9.0), None, secs(10.0)],
                    egress: GatewayStats {
                        http_blob_bytes: 1 << 20,
                        swarm_bytes: 1 << 30,
                    },
                    server_cpu: Duration::from_secs(12),
                    client_cpu: Duration::from_secs(1),
                    gateway_peak_rss: 30 << 20,
                    egress_timeline: vec![(1.0, 5), (2.0, 1 << 20)],
                },
                node_peak_rss: vec![40 << 20, 50 << 20, 45 << 20, 70 << 20],
                ..Fleet::default()
            },
            pair: Some(Pair {
                time: Duration::from_secs(1),
                quinn_around: (900.0, 1100.0),
                fetches: vec![
                    PairFetch {
                        time: Duration::from_secs(1),
                        cpu: Duration::from_secs(2),
                        quinn_around: (900.0, 1100.0),
                    },
                    PairFetch {
                        time: Duration::from_secs(2),
                        cpu: Duration::from_secs(2),
                        quinn_around: (1100.0, 900.0),
                    },
                ],
                ..Pair::default()
            }),
            quinn: Some(Quinn {
                mb_s: 1000.0,
                aes_mb_s: 1500.0,
                ..Quinn::default()
            }),
            failures: vec!["node 2: GET …: 502".into()],
            interference: Interference {
                other_share: 0.0,
                steal_share: 0.0,
                cores: 2,
            },
            params,
        }
    }

    #[test]
    fn a_failed_node_leaves_no_last_completion() {
        let r = report();
        let j = r.json();
        assert!(!j.to_string().contains('\n'));
        assert!(j["last_completion_s"].is_null());
        assert_eq!(j["first_completion_s"], 3.0);
        assert_eq!(j["direct_last_completion_s"], 8.0);
        let ratio = j["direct_gateway_egress_ratio"].as_f64().unwrap();
        assert!((ratio - 4.0).abs() < 1e-9);
        assert_eq!(j["node_peak_rss_mib"], 70.0);
        assert_eq!(j["targets"]["node_peak_rss_mib"]["pass"], false);
        assert_eq!(j["targets"]["gateway_egress_ratio"]["pass"], true);
        // 512 MiB in 1 s = 536.9 MB/s against the mean of 900 and 1100.
        let pvq = j["piece_vs_quinn"].as_f64().unwrap();
        assert!((pvq - 0.536_870_912).abs() < 1e-6, "{pvq}");
        assert_eq!(j["quinn_mb_s"], 1000.0);
        assert_eq!(j["targets"]["piece_vs_quinn"]["pass"], false);
        let runs = j["piece_vs_quinn_runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert!((runs[1].as_f64().unwrap() - 0.268_435_456).abs() < 1e-6);
        assert_eq!(j["pair"]["fetches"][1]["cpu_s_per_gib"], 4.0);
        assert!(r.table().contains("each of 2 fetches by a fresh B"));
        assert_eq!(j["all_targets_pass"], false);
        assert!(r.table().contains("FAILED: node 2"));
    }

    #[test]
    fn tables_are_aligned_markdown() {
        let table = report().table();
        for block in table.split("\n\n").filter(|b| b.starts_with('|')) {
            let block = block.trim_end_matches(|c| c != '|');
            let widths: Vec<usize> = block
                .lines()
                .filter(|l| l.starts_with('|'))
                .map(|l| l.chars().count())
                .collect();
            assert!(
                widths.windows(2).all(|w| w[0] == w[1]),
                "ragged table:\n{block}"
            );
        }
    }
}
