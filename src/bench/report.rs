//! The figures of a `bench registry` run, the targets they are judged against, and their two
//! renderings: Markdown tables (readable in a terminal and pasted as-is into
//! docs/benchmarks.md) and one JSON object. Every ratio is flotilla / distribution (or
//! flotilla / limit): above 1 is better for rates, below 1 is better for latency and memory.

use serde_json::{Value, json};

use super::data::human_bytes;
use super::limits::ShaImpl;
use super::load::LoadResult;
use super::servers::Interference;

/// What the run was asked to do.
#[derive(Debug, Clone)]
pub struct Params {
    /// Blob size of the throughput phases.
    pub size: u64,
    /// Blob size of the small pass that the peak RSS is compared with.
    pub small_size: u64,
    /// Chunk size of the chunked push.
    pub chunk: u64,
    /// Manifest GET connections.
    pub connections: u32,
    /// wrk threads.
    pub load_threads: u32,
    /// Seconds of manifest GET load.
    pub duration_secs: u64,
    /// Repetitions per throughput figure.
    pub repeat: usize,
    /// Size of the manifest fetched under load.
    pub manifest_bytes: usize,
}

/// The machine's limits measured in the same run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// MB/s of each SHA-256 implementation, single-threaded.
    pub sha: Vec<(ShaImpl, f64)>,
    /// The fastest of them.
    pub fastest: ShaImpl,
    /// Its MB/s.
    pub fastest_mbps: f64,
    /// Plain loopback TCP, MB/s.
    pub tcp_mbps: f64,
    /// Disk write into the page cache, MB/s.
    pub disk_write_mbps: f64,
    /// Disk write + fsync, MB/s.
    pub disk_fsync_mbps: f64,
}

impl Limits {
    /// Picks the fastest SHA-256 from `sha`.
    pub fn new(
        sha: Vec<(ShaImpl, f64)>,
        tcp_mbps: f64,
        disk_write_mbps: f64,
        disk_fsync_mbps: f64,
    ) -> Limits {
        let (fastest, fastest_mbps) = sha
            .iter()
            .copied()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((ShaImpl::AwsLc, 0.0));
        Limits {
            sha,
            fastest,
            fastest_mbps,
            tcp_mbps,
            disk_write_mbps,
            disk_fsync_mbps,
        }
    }
}

/// One throughput phase on one server.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Median MB/s.
    pub mbps: f64,
    /// Every run's MB/s, in order.
    pub runs: Vec<f64>,
    /// Median milliseconds the server took to answer after the last body byte (push, summed
    /// over a chunked push's requests), or to send the first byte (GET).
    pub wait_ms: f64,
    /// Server CPU seconds (user + system, all threads) per GiB moved.
    pub cpu_s_per_gib: f64,
    /// The benchmark client's CPU seconds per GiB moved (it shares the cores with the server).
    pub client_cpu_s_per_gib: f64,
    /// Peak RSS of the server during the phase, bytes.
    pub peak_rss: u64,
}

/// Everything measured on one server.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Monolithic push.
    pub push: Throughput,
    /// Chunked push.
    pub push_chunked: Throughput,
    /// Blob GET.
    pub get: Throughput,
    /// Manifest GET under load.
    pub manifest: LoadResult,
    /// Server CPU per manifest GET, microseconds.
    pub manifest_cpu_us_per_request: f64,
    /// wrk's CPU per manifest GET, microseconds (it shares the cores with the server).
    pub manifest_client_cpu_us_per_request: f64,
    /// Peak RSS while pushing and fetching the small blobs.
    pub peak_rss_small_blob: u64,
    /// Peak RSS during the manifest load.
    pub peak_rss_manifest: u64,
}

impl Figures {
    /// Peak RSS over the full-size blob phases.
    pub fn peak_rss_blob(&self) -> u64 {
        self.push
            .peak_rss
            .max(self.push_chunked.peak_rss)
            .max(self.get.peak_rss)
    }

    /// Peak RSS over the whole run.
    pub fn peak_rss(&self) -> u64 {
        self.peak_rss_blob()
            .max(self.peak_rss_small_blob)
            .max(self.peak_rss_manifest)
    }

    /// How much the blob-phase peak grew from the small blob to the full size (1.0 = flat).
    pub fn rss_growth(&self) -> f64 {
        self.peak_rss_blob() as f64 / self.peak_rss_small_blob.max(1) as f64
    }

    /// Peak RSS growth per byte of blob growth from the small to the full size: 0 is flat, 1
    /// means the blob is held whole. Bounded buffers give a small positive value (a longer
    /// transfer samples more of their fluctuation), a blob-sized buffer gives about 1.
    pub fn rss_slope(&self, params: &Params) -> f64 {
        let grew = self.peak_rss_blob() as f64 - self.peak_rss_small_blob as f64;
        grew / (params.size.saturating_sub(params.small_size).max(1)) as f64
    }
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Inputs.
    pub params: Params,
    /// Limits.
    pub limits: Limits,
    /// The gateway's figures, unless skipped.
    pub flotilla: Option<Figures>,
    /// distribution's figures, unless skipped.
    pub distribution: Option<Figures>,
    /// CPU that other programs and other guests took during the run.
    pub interference: Interference,
}

/// A target: a ratio, the bound it must meet, and which side of the bound passes.
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

/// Above this share of the machine used by other programs, the report says the run is unreliable.
const INTERFERENCE_WARN: f64 = 0.05;

/// Largest [`Figures::rss_slope`] that counts as flat: at 1 GiB, 18 MiB more than at 128 MiB.
const RSS_SLOPE_MAX: f64 = 0.02;

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(in crate::bench) fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Renders rows as an aligned Markdown table; the first row is the header, column 0 is
/// left-aligned and the rest right-aligned.
pub(in crate::bench) fn markdown(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
            .max(3)
    };
    let widths: Vec<usize> = (0..cols).map(width).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push('|');
        for (c, w) in widths.iter().enumerate() {
            let cell = row.get(c).map_or("", String::as_str);
            if c == 0 {
                out.push_str(&format!(" {cell:<w$} |"));
            } else {
                out.push_str(&format!(" {cell:>w$} |"));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (c, w) in widths.iter().enumerate() {
                let dashes = "-".repeat(*w);
                if c == 0 {
                    out.push_str(&format!(" {dashes} |"));
                } else {
                    out.push_str(&format!(" {}: |", &dashes[1..]));
                }
            }
            out.push('\n');
        }
    }
    out
}

impl Report {
    fn both<T>(&self, f: impl Fn(&Figures) -> T) -> (Option<T>, Option<T>) {
        (
            self.flotilla.as_ref().map(&f),
            self.distribution.as_ref().map(&f),
        )
    }

    fn targets(&self) -> Vec<Target> {
        let (get_f, get_d) = self.both(|f| f.get.mbps);
        let push_f = self.flotilla.as_ref().map(|f| f.push.mbps);
        let chunked_f = self.flotilla.as_ref().map(|f| f.push_chunked.mbps);
        let (man_f, man_d) = self.both(|f| f.manifest.rps);
        let sha = Some(self.limits.fastest_mbps);
        let fastest = self.limits.fastest.name();
        vec![
            Target {
                key: "blob_get_vs_tcp",
                label: "blob GET >= 0.8x plain TCP".into(),
                value: ratio(get_f, Some(self.limits.tcp_mbps)),
                bound: 0.8,
                at_most: false,
            },
            Target {
                key: "blob_get_vs_distribution",
                label: "blob GET ahead of distribution".into(),
                value: ratio(get_f, get_d),
                bound: 1.0,
                at_most: false,
            },
            Target {
                key: "push_vs_sha256",
                label: format!("monolithic push >= 0.9x SHA-256 ({fastest})"),
                value: ratio(push_f, sha),
                bound: 0.9,
                at_most: false,
            },
            Target {
                key: "push_chunked_vs_sha256",
                label: format!("chunked push >= 0.9x SHA-256 ({fastest})"),
                value: ratio(chunked_f, sha),
                bound: 0.9,
                at_most: false,
            },
            Target {
                key: "manifest_get_vs_distribution",
                label: "manifest GET >= 3x distribution".into(),
                value: ratio(man_f, man_d),
                bound: 3.0,
                at_most: false,
            },
            Target {
                key: "rss_slope",
                label: format!(
                    "RSS flat in blob size: Δpeak RSS / Δblob size ({} → {}) <= {RSS_SLOPE_MAX}",
                    human_bytes(self.params.small_size),
                    human_bytes(self.params.size)
                ),
                value: self.flotilla.as_ref().map(|f| f.rss_slope(&self.params)),
                bound: RSS_SLOPE_MAX,
                at_most: true,
            },
        ]
    }

    /// The tables, as printed and as pasted into docs/benchmarks.md.
    pub fn table(&self) -> String {
        let p = &self.params;
        let mut out = format!(
            "flotilla bench registry: {} blob, {} chunks, manifest GET ({} B) with {} connections for {} s; \
             median of {} runs (SHA-256 and disk: best run)\n\n",
            human_bytes(p.size),
            human_bytes(p.chunk),
            p.manifest_bytes,
            p.connections,
            p.duration_secs,
            p.repeat
        );
        let mut rows = vec![vec![
            "metric".to_owned(),
            "flotilla".to_owned(),
            "distribution".to_owned(),
            "flotilla/distribution".to_owned(),
        ]];
        let mut row = |label: String, pair: (Option<f64>, Option<f64>), decimals: usize| {
            rows.push(vec![
                label,
                fmt(pair.0, decimals),
                fmt(pair.1, decimals),
                fmt(ratio(pair.0, pair.1), 2),
            ]);
        };
        let chunk = human_bytes(p.chunk);
        let small = human_bytes(p.small_size);
        let size = human_bytes(p.size);
        row("blob GET (MB/s)".into(), self.both(|f| f.get.mbps), 0);
        row(
            "push, monolithic (MB/s)".into(),
            self.both(|f| f.push.mbps),
            0,
        );
        row(
            format!("push, chunked {chunk} (MB/s)"),
            self.both(|f| f.push_chunked.mbps),
            0,
        );
        row(
            "manifest GET (req/s)".into(),
            self.both(|f| f.manifest.rps),
            0,
        );
        row(
            "manifest GET p50 (ms)".into(),
            self.both(|f| ms(f.manifest.p50)),
            2,
        );
        row(
            "manifest GET p99 (ms)".into(),
            self.both(|f| ms(f.manifest.p99)),
            2,
        );
        row(
            "blob GET, time to first byte (ms)".into(),
            self.both(|f| f.get.wait_ms),
            2,
        );
        row(
            "monolithic push, answer after last byte (ms)".into(),
            self.both(|f| f.push.wait_ms),
            1,
        );
        row(
            "chunked push, answers after last bytes, sum (ms)".into(),
            self.both(|f| f.push_chunked.wait_ms),
            1,
        );
        row(
            "server CPU, blob GET (s/GiB)".into(),
            self.both(|f| f.get.cpu_s_per_gib),
            2,
        );
        row(
            "server CPU, monolithic push (s/GiB)".into(),
            self.both(|f| f.push.cpu_s_per_gib),
            2,
        );
        row(
            "server CPU, chunked push (s/GiB)".into(),
            self.both(|f| f.push_chunked.cpu_s_per_gib),
            2,
        );
        row(
            "client CPU, blob GET (s/GiB)".into(),
            self.both(|f| f.get.client_cpu_s_per_gib),
            2,
        );
        row(
            "client CPU, monolithic push (s/GiB)".into(),
            self.both(|f| f.push.client_cpu_s_per_gib),
            2,
        );
        row(
            "server CPU per manifest GET (µs)".into(),
            self.both(|f| f.manifest_cpu_us_per_request),
            1,
        );
        row(
            "wrk CPU per manifest GET (µs)".into(),
            self.both(|f| f.manifest_client_cpu_us_per_request),
            1,
        );
        row(
            format!("peak RSS, {small} blobs (MiB)"),
            self.both(|f| mib(f.peak_rss_small_blob)),
            1,
        );
        row(
            format!("peak RSS, {size} blobs (MiB)"),
            self.both(|f| mib(f.peak_rss_blob())),
            1,
        );
        row(
            "peak RSS, manifest load (MiB)".into(),
            self.both(|f| mib(f.peak_rss_manifest)),
            1,
        );
        row(
            "peak RSS, whole run (MiB)".into(),
            self.both(|f| mib(f.peak_rss())),
            1,
        );
        out.push_str(&markdown(&rows));

        let l = &self.limits;
        let f = self.flotilla.as_ref();
        let versus = |what: &str, v: Option<f64>, limit: f64| {
            ratio(v, Some(limit)).map_or_else(String::new, |r| format!("{what} {r:.2}"))
        };
        let get = f.map(|f| f.get.mbps);
        let push = f.map(|f| f.push.mbps);
        let mut rows = vec![vec![
            "limit, same run".to_owned(),
            "MB/s".to_owned(),
            "flotilla / limit".to_owned(),
        ]];
        rows.push(vec![
            format!("plain loopback TCP, {size}"),
            format!("{:.0}", l.tcp_mbps),
            versus("blob GET", get, l.tcp_mbps),
        ]);
        rows.push(vec![
            format!("disk write to page cache, {size}"),
            format!("{:.0}", l.disk_write_mbps),
            versus("monolithic push", push, l.disk_write_mbps),
        ]);
        rows.push(vec![
            format!("disk write + fsync, {size}"),
            format!("{:.0}", l.disk_fsync_mbps),
            versus("monolithic push", push, l.disk_fsync_mbps),
        ]);
        for (which, v) in &l.sha {
            let fastest = *which == l.fastest;
            rows.push(vec![
                format!(
                    "SHA-256 {}, one core{}",
                    which.name(),
                    if fastest { " (fastest)" } else { "" }
                ),
                format!("{v:.0}"),
                if fastest {
                    versus("monolithic push", push, *v)
                } else {
                    String::new()
                },
            ]);
        }
        out.push('\n');
        out.push_str(&markdown(&rows));

        let mut rows = vec![vec![
            "target".to_owned(),
            "ratio".to_owned(),
            "result".to_owned(),
        ]];
        for t in self.targets() {
            let verdict = match t.pass() {
                Some(true) => "PASS",
                Some(false) => "MISS",
                None => "n/a",
            };
            // A bound below 0.1 (the RSS slope) needs a third decimal to be read against it.
            let decimals = if t.bound < 0.1 { 3 } else { 2 };
            rows.push(vec![t.label, fmt(t.value, decimals), verdict.to_owned()]);
        }
        out.push('\n');
        out.push_str(&markdown(&rows));
        let i = &self.interference;
        out.push_str(&format!(
            "\nduring the run, other programs used {:.1} % and other VMs (steal) {:.1} % of the {} cores\n",
            i.other_share * 100.0,
            i.steal_share * 100.0,
            i.cores
        ));
        if i.other_share + i.steal_share > INTERFERENCE_WARN {
            out.push_str(
                "WARNING: the machine was not quiet; these figures are not reliable, run again\n",
            );
        }
        out
    }

    fn server_json(&self, f: &Figures) -> Value {
        let phase = |t: &Throughput| {
            json!({
                "mbps": t.mbps,
                "runs_mbps": t.runs,
                "wait_ms": t.wait_ms,
                "cpu_s_per_gib": t.cpu_s_per_gib,
                "client_cpu_s_per_gib": t.client_cpu_s_per_gib,
                "peak_rss_bytes": t.peak_rss,
            })
        };
        json!({
            "blob_get_mbps": f.get.mbps,
            "push_mbps": f.push.mbps,
            "push_chunked_mbps": f.push_chunked.mbps,
            "manifest_get_rps": f.manifest.rps,
            "manifest_get_p50_ms": ms(f.manifest.p50),
            "manifest_get_p99_ms": ms(f.manifest.p99),
            "manifest_get_max_ms": ms(f.manifest.max),
            "manifest_get_requests": f.manifest.requests,
            "manifest_get_socket_errors": f.manifest.socket_errors,
            "manifest_cpu_us_per_request": f.manifest_cpu_us_per_request,
            "manifest_client_cpu_us_per_request": f.manifest_client_cpu_us_per_request,
            "peak_rss_bytes": f.peak_rss(),
            "peak_rss_small_blob_bytes": f.peak_rss_small_blob,
            "peak_rss_blob_bytes": f.peak_rss_blob(),
            "peak_rss_manifest_bytes": f.peak_rss_manifest,
            "rss_growth": f.rss_growth(),
            "rss_slope": f.rss_slope(&self.params),
            "phases": {
                "blob_get": phase(&f.get),
                "push": phase(&f.push),
                "push_chunked": phase(&f.push_chunked),
            },
        })
    }

    /// The same figures as one JSON object (one line).
    pub fn json(&self) -> Value {
        let p = &self.params;
        let l = &self.limits;
        let sha: serde_json::Map<String, Value> = l
            .sha
            .iter()
            .map(|(w, v)| (w.key().to_owned(), json!(v)))
            .collect();
        let (get_f, get_d) = self.both(|f| f.get.mbps);
        let (push_f, push_d) = self.both(|f| f.push.mbps);
        let (chunk_f, chunk_d) = self.both(|f| f.push_chunked.mbps);
        let (man_f, man_d) = self.both(|f| f.manifest.rps);
        let (p99_f, p99_d) = self.both(|f| ms(f.manifest.p99));
        let (rss_f, rss_d) = self.both(|f| f.peak_rss() as f64);
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
            target_map.insert(t.key.to_owned(), Value::Object(entry));
        }
        let all_pass = targets.iter().all(|t| t.pass() == Some(true));
        json!({
            "benchmark": "registry",
            "params": {
                "size_bytes": p.size,
                "small_size_bytes": p.small_size,
                "chunk_bytes": p.chunk,
                "connections": p.connections,
                "load_threads": p.load_threads,
                "duration_secs": p.duration_secs,
                "repeat": p.repeat,
                "manifest_bytes": p.manifest_bytes,
            },
            "limits": {
                "tcp_mbps": l.tcp_mbps,
                "disk_write_mbps": l.disk_write_mbps,
                "disk_write_fsync_mbps": l.disk_fsync_mbps,
                "sha256_mbps": sha,
                "sha256_fastest": l.fastest.name(),
                "sha256_fastest_mbps": l.fastest_mbps,
            },
            "flotilla": self.flotilla.as_ref().map(|f| self.server_json(f)),
            "distribution": self.distribution.as_ref().map(|f| self.server_json(f)),
            "blob_get_vs_tcp": ratio(get_f, Some(l.tcp_mbps)),
            "blob_get_vs_distribution": ratio(get_f, get_d),
            "push_vs_sha256": ratio(push_f, Some(l.fastest_mbps)),
            "push_chunked_vs_sha256": ratio(chunk_f, Some(l.fastest_mbps)),
            "push_vs_distribution": ratio(push_f, push_d),
            "push_vs_disk_fsync": ratio(push_f, Some(l.disk_fsync_mbps)),
            "push_chunked_vs_disk_fsync": ratio(chunk_f, Some(l.disk_fsync_mbps)),
            "push_chunked_vs_distribution": ratio(chunk_f, chunk_d),
            "manifest_get_vs_distribution": ratio(man_f, man_d),
            "manifest_p99_vs_distribution": ratio(p99_f, p99_d),
            "peak_rss_vs_distribution": ratio(rss_f, rss_d),
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
    use std::time::Duration;

    fn throughput(mbps: f64, rss_mib: u64) -> Throughput {
        Throughput {
            mbps,
            runs: vec![mbps],
            wait_ms: 1.0,
            cpu_s_per_gib: 1.0,
            client_cpu_s_per_gib: 0.5,
            peak_rss: rss_mib << 20,
        }
    }

    fn figures(get: f64, push: f64, rps: f64, rss_mib: u64) -> Figures {
        Figures {
            push: throughput(push, rss_mib),
            push_chunked: throughput(push, rss_mib),
            get: throughput(get, rss_mib),
            manifest: LoadResult {
                requests: 1000,
                rps,
                p50: Duration::from_micros(500),
                p99: Duration::from_millis(2),
                max: Duration::from_millis(5),
                socket_errors: 0,
            },
            manifest_cpu_us_per_request: 50.0,
            manifest_client_cpu_us_per_request: 20.0,
            peak_rss_small_blob: 20 << 20,
            peak_rss_manifest: 30 << 20,
        }
    }

    fn report(distribution: bool) -> Report {
        Report {
            params: Params {
                size: 1 << 30,
                small_size: 1 << 27,
                chunk: 16 << 20,
                connections: 64,
                load_threads: 1,
                duration_secs: 5,
                repeat: 3,
                manifest_bytes: 402,
            },
            limits: Limits::new(
                vec![
                    (ShaImpl::Sha2, 100.0),
                    (ShaImpl::Ring, 200.0),
                    (ShaImpl::AwsLc, 150.0),
                ],
                2000.0,
                1500.0,
                400.0,
            ),
            flotilla: Some(figures(1800.0, 190.0, 30000.0, 22)),
            distribution: distribution.then(|| figures(900.0, 100.0, 1000.0, 40)),
            interference: Interference {
                other_share: 0.01,
                steal_share: 0.0,
                cores: 2,
            },
        }
    }

    #[test]
    fn json_carries_the_ratios_and_verdicts() {
        let j = report(true).json();
        assert!(!j.to_string().contains('\n'));
        assert_eq!(j["limits"]["sha256_fastest"], "ring");
        let close = |key: &str, want: f64| {
            let got = j[key].as_f64().unwrap_or_else(|| panic!("{key} missing"));
            assert!((got - want).abs() < 1e-9, "{key}: {got} != {want}");
        };
        close("blob_get_vs_tcp", 0.9);
        close("blob_get_vs_distribution", 2.0);
        close("push_vs_sha256", 0.95);
        close("push_vs_distribution", 1.9);
        close("manifest_get_vs_distribution", 30.0);
        assert_eq!(j["targets"]["blob_get_vs_tcp"]["pass"], true);
        assert_eq!(j["targets"]["rss_slope"]["max"], RSS_SLOPE_MAX);
        assert_eq!(j["targets"]["rss_slope"]["pass"], true);
        assert_eq!(j["all_targets_pass"], true);
    }

    #[test]
    fn skipped_distribution_gives_nulls_and_na() {
        let r = report(false);
        let j = r.json();
        assert!(j["distribution"].is_null());
        assert!(j["blob_get_vs_distribution"].is_null());
        assert!(j["targets"]["manifest_get_vs_distribution"]["pass"].is_null());
        assert_eq!(j["all_targets_pass"], false);
        let table = r.table();
        assert!(table.contains("| manifest GET >= 3x distribution"));
        assert!(table.contains("n/a"));
    }

    #[test]
    fn tables_are_aligned_markdown() {
        let table = report(true).table();
        for block in table.split("\n\n").skip(1).filter(|b| b.starts_with('|')) {
            let widths: Vec<usize> = block.lines().map(|l| l.chars().count()).collect();
            assert!(
                widths.windows(2).all(|w| w[0] == w[1]),
                "ragged table:\n{block}"
            );
            assert!(block.lines().nth(1).is_some_and(|l| l.starts_with("| ---")));
        }
    }
}
