//! The processes of a fleet run: one `flotilla gateway` and N `flotilla node`s, each a child
//! process on loopback with its own data directory and log file, and what can be read about
//! them: `GET /flotilla/v1/stats`, CPU time (`/proc/<pid>/stat`) and peak RSS (`VmHWM`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tokio::process::{Child, Command};

/// The fleet join token the benchmark's gateway is configured with and its nodes present.
const BENCH_FLEET_TOKEN: &str = "flotilla-bench-fleet";

/// The gateway's egress counters (`GET /flotilla/v1/stats`).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct GatewayStats {
    /// Blob body bytes sent over HTTP (`/v2` blob GETs and `/flotilla/v1/blobs`).
    pub http_blob_bytes: u64,
    /// Blob bytes sent to peers by its swarm.
    pub swarm_bytes: u64,
}

impl GatewayStats {
    /// What went out between `earlier` and `self`.
    pub fn since(&self, earlier: &GatewayStats) -> GatewayStats {
        GatewayStats {
            http_blob_bytes: self.http_blob_bytes.saturating_sub(earlier.http_blob_bytes),
            swarm_bytes: self.swarm_bytes.saturating_sub(earlier.swarm_bytes),
        }
    }

    /// Both counters together.
    pub fn total(&self) -> u64 {
        self.http_blob_bytes + self.swarm_bytes
    }
}

/// `GET <base>/flotilla/v1/stats` of a gateway.
pub async fn gateway_stats(http: &reqwest::Client, base: &str) -> anyhow::Result<GatewayStats> {
    stats_at(http, base).await
}

/// `GET <base>/flotilla/v1/stats` of a gateway or a node, decoded as `T`.
async fn stats_at<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    base: &str,
) -> anyhow::Result<T> {
    let url = format!("{base}/flotilla/v1/stats");
    let resp = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!("GET {url}: {}", resp.status());
    }
    resp.json().await.with_context(|| format!("decoding {url}"))
}

/// A running `flotilla gateway` or `flotilla node`.
pub struct Proc {
    /// `gateway`, `node 3`, … (for messages).
    pub name: String,
    /// `http://127.0.0.1:<port>`: the gateway's registry or the node's OCI endpoint.
    pub base: String,
    pid: u32,
    child: Child,
    log: PathBuf,
}

/// A loopback port (TCP and UDP) that was free a moment ago, outside the kernel's ephemeral
/// range, and not handed out before by this process.
pub fn free_port() -> anyhow::Result<u16> {
    crate::bench::ports::free_port().context("picking a free loopback port")
}

/// TOML string literal (the paths here are ours, but a quote in a temp dir name must not break
/// the file).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

impl Proc {
    /// Starts `flotilla gateway` with its data under `dir`; with `swarm`, its libp2p swarm
    /// listens on loopback QUIC and TCP (ephemeral ports), otherwise it runs none and nodes can
    /// reach it over HTTP only.
    pub async fn gateway(
        bin: &Path,
        dir: &Path,
        swarm: bool,
        log: &str,
        http: &reqwest::Client,
    ) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let p2p = if swarm {
            r#"["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0"]"#
        } else {
            "[]"
        };
        let config = dir.join("gateway.toml");
        let data = toml_str(&dir.join("data").to_string_lossy());
        let build = |port: u16| -> anyhow::Result<Command> {
            let text = format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = {data}\np2p_listen = {p2p}\nfleet_token = \"{BENCH_FLEET_TOKEN}\"\n"
            );
            std::fs::write(&config, text)
                .with_context(|| format!("writing {}", config.display()))?;
            let mut cmd = Command::new(bin);
            cmd.arg("gateway").arg("--config").arg(&config);
            Ok(cmd)
        };
        Self::spawn("gateway", build, &dir.join("gateway.log"), log, http).await
    }

    /// Starts `flotilla node` number `index` with its data under `dir`, talking to the gateway at
    /// `gateway`, its swarm on `p2p_listen`, bootstrapping from `bootstrap` as well.
    #[allow(clippy::too_many_arguments)]
    pub async fn node(
        bin: &Path,
        dir: &Path,
        index: usize,
        gateway: &str,
        p2p_listen: &[String],
        bootstrap: &[String],
        log: &str,
        http: &reqwest::Client,
    ) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let build = |port: u16| -> anyhow::Result<Command> {
            let mut cmd = Command::new(bin);
            cmd.arg("node")
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(dir.join("data"))
                .arg("--gateway")
                .arg(gateway)
                .arg("--p2p-listen")
                .arg(p2p_listen.join(","))
                .env("FLOTILLA_FLEET_TOKEN", BENCH_FLEET_TOKEN);
            if !bootstrap.is_empty() {
                cmd.arg("--bootstrap").arg(bootstrap.join(","));
            }
            Ok(cmd)
        };
        let name = format!("node {index}");
        Self::spawn(&name, build, &dir.join("node.log"), log, http).await
    }

    /// Starts the command `build` makes for a free port and waits until it answers. The port was
    /// free when picked and lies outside the kernel's ephemeral range, but another program may
    /// still take it before the process binds it, so a process that exits saying its address is
    /// in use is started again on another port, twice at most.
    async fn spawn(
        name: &str,
        build: impl Fn(u16) -> anyhow::Result<Command>,
        log: &Path,
        level: &str,
        http: &reqwest::Client,
    ) -> anyhow::Result<Proc> {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let port = free_port()?;
            let mut cmd = build(port)?;
            let log_file = std::fs::File::create(log)
                .with_context(|| format!("creating {}", log.display()))?;
            // A backtrace would push the error itself out of the log tail shown on failure.
            cmd.env("FLOTILLA_LOG", level)
                .env("RUST_BACKTRACE", "0")
                .env("RUST_LIB_BACKTRACE", "0")
                .env_remove("FLOTILLA_CONFIG")
                .env_remove("FLOTILLA_NODE_CONFIG")
                .env_remove("FLOTILLA_FLEET_TOKEN_FILE")
                .stdin(Stdio::null())
                .stdout(log_file.try_clone()?)
                .stderr(log_file)
                .kill_on_drop(true);
            let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
            let pid = child
                .id()
                .with_context(|| format!("{name} exited at once"))?;
            let mut p = Proc {
                name: name.to_owned(),
                base: format!("http://127.0.0.1:{port}"),
                pid,
                child,
                log: log.to_owned(),
            };
            match p.wait_ready(http).await {
                Ok(()) => return Ok(p),
                Err(e) => {
                    let exited = p.child.try_wait()?.is_some();
                    let in_use = std::fs::read_to_string(log)
                        .is_ok_and(|text| text.contains("Address already in use"));
                    if attempt == ATTEMPTS || !exited || !in_use {
                        return Err(e);
                    }
                    eprintln!("[bench] {name}: port {port} was taken, starting it again");
                }
            }
        }
        bail!("{name} could not be started")
    }

    /// Waits until `GET /v2/` answers (a node answers once it has joined the gateway's swarm), or
    /// fails with the end of the log.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/v2/", self.base);
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Its last words may still be on their way to the log file.
                tokio::time::sleep(Duration::from_millis(200)).await;
                bail!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if let Ok(resp) = http.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer GET /v2/ within 60 s:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        crate::bench::servers::log_tail(&self.log)
    }

    /// Lines of the log at level WARN or ERROR, how many there are and the first few, for the
    /// report.
    pub fn warnings(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_owned)
            .collect();
        let n = lines.len();
        (n, lines.into_iter().take(3).collect())
    }

    /// `GET /flotilla/v1/stats`, decoded.
    pub async fn stats<T: serde::de::DeserializeOwned>(
        &self,
        http: &reqwest::Client,
    ) -> anyhow::Result<T> {
        stats_at(http, &self.base)
            .await
            .with_context(|| format!("stats of {}", self.name))
    }

    /// User + system CPU time used so far, all threads.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // After the parenthesised command name, utime and stime are the 12th and 13th fields.
        let fields: Vec<&str> = text
            .rfind(')')
            .map(|i| text[i + 1..].split_whitespace().collect())
            .with_context(|| format!("malformed {path}"))?;
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("malformed {path}"))
        };
        // USER_HZ is 100 on every Linux build this runs on.
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }

    /// Peak resident set size (`VmHWM`) since start or the last [`Proc::reset_peak_rss`], bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            // A process that exited is a zombie until reaped: no memory, so no VmHWM.
            .with_context(|| {
                format!(
                    "no VmHWM in {path}: the process has exited; its log ends:\n{}",
                    self.log_tail()
                )
            })
    }

    /// Resets the kernel's peak-RSS mark to the current RSS.
    pub fn reset_peak_rss(&self) -> anyhow::Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid);
        std::fs::write(&path, "5").with_context(|| format!("writing {path} (needs Linux >= 4.0)"))
    }

    /// Fails (with the end of the log) if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status} during the benchmark:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Kills the process and reaps it (so its CPU time lands in this process's `cutime`).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// Stops every process in `procs`, reporting the first failure after trying them all.
pub async fn stop_all(procs: Vec<Proc>) -> anyhow::Result<()> {
    let mut first = Ok(());
    for p in procs {
        let name = p.name.clone();
        if let Err(e) = p.stop().await
            && first.is_ok()
        {
            first = Err(e.context(format!("stopping {name}")));
        }
    }
    first
}
