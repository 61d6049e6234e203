//! The registries under test, each a separate child process on a free loopback port with its own
//! data directory, and what the kernel tells about them: peak RSS (`VmHWM`, reset between phases
//! through `/proc/<pid>/clear_refs`) and CPU time (`/proc/<pid>/stat`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// Which registry a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `flotilla gateway`.
    Flotilla,
    /// Debian's `docker-registry` (distribution 2.8).
    Distribution,
}

impl Kind {
    /// Name in tables and JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Flotilla => "flotilla",
            Kind::Distribution => "distribution",
        }
    }
}

/// A running registry process.
pub struct Server {
    /// What it is.
    pub kind: Kind,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pid: u32,
    child: Child,
    log: PathBuf,
}

/// User + system CPU time used so far by all threads of this process (the benchmark client).
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    cpu_time("self")
}

/// User + system CPU time of process `pid` (a number or `self`), all threads.
fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the parenthesised command name: state is the first, utime the 12th.
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("malformed {path}"))
    };
    // USER_HZ is 100 on every Linux build this runs on.
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 10))
}

/// CPU accounting of the whole machine and of this process with its reaped children (servers,
/// wrk), to tell how much CPU other programs took during a run on a shared machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    /// user + nice + system ticks of all CPUs.
    busy: u64,
    /// Ticks the hypervisor ran something else while a vCPU wanted to run.
    steal: u64,
    /// utime + stime + cutime + cstime of this process.
    ours: u64,
    at: Instant,
}

/// What other programs took during a run, as shares of the machine (1.0 = every core busy).
#[derive(Debug, Clone, Copy)]
pub struct Interference {
    /// CPU used by processes outside this benchmark.
    pub other_share: f64,
    /// CPU the hypervisor gave to other guests.
    pub steal_share: f64,
    /// Cores of the machine.
    pub cores: usize,
}

impl CpuSnapshot {
    /// Reads `/proc/stat` and `/proc/self/stat`.
    pub fn take() -> anyhow::Result<CpuSnapshot> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|f| f.parse().ok())
                    .collect()
            })
            .context("malformed /proc/stat")?;
        let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
        Ok(CpuSnapshot {
            busy: field(0) + field(1) + field(2),
            steal: field(7),
            ours: own_ticks(&[11, 12, 13, 14])?,
            at: Instant::now(),
        })
    }

    /// The interference between `earlier` and now (children count once they are reaped).
    pub fn since(&self, earlier: &CpuSnapshot) -> Interference {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let capacity = self.at.duration_since(earlier.at).as_secs_f64() * 100.0 * cores as f64;
        let busy = self.busy.saturating_sub(earlier.busy);
        let ours = self.ours.saturating_sub(earlier.ours);
        let share = |ticks: u64| {
            if capacity > 0.0 {
                ticks as f64 / capacity
            } else {
                0.0
            }
        };
        Interference {
            other_share: share(busy.saturating_sub(ours)),
            steal_share: share(self.steal.saturating_sub(earlier.steal)),
            cores,
        }
    }
}

/// CPU time of this process's children that have been waited for (wrk, once it has exited).
pub fn reaped_children_cpu() -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(own_ticks(&[13, 14])? * 10))
}

/// The sum of `fields` of `/proc/self/stat` (counted from the field after the command name), in
/// clock ticks.
fn own_ticks(fields: &[usize]) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let after = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .context("malformed /proc/self/stat")?;
    let all: Vec<&str> = after.split_whitespace().collect();
    fields
        .iter()
        .map(|&i| {
            all.get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .context("malformed /proc/self/stat")
        })
        .sum()
}

/// A loopback port that was free a moment ago, outside the kernel's ephemeral range.
fn free_port() -> anyhow::Result<u16> {
    super::ports::free_port().context("picking a free loopback port")
}

impl Server {
    /// Starts `flotilla gateway` from `bin` with its data under `dir`.
    pub async fn start_flotilla(
        bin: &Path,
        dir: &Path,
        client: &reqwest::Client,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let data = dir.join("data");
        let log = dir.join("gateway.log");
        let mut cmd = Command::new(bin);
        cmd.arg("gateway")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data)
            // Per-request log lines are off on both sides (distribution's access log too).
            .env("FLOTILLA_LOG", "warn");
        Self::spawn(Kind::Flotilla, cmd, port, log, client).await
    }

    /// Starts distribution from `bin` with a filesystem-storage config under `dir`.
    pub async fn start_distribution(
        bin: &Path,
        dir: &Path,
        client: &reqwest::Client,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let data = dir.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let config = dir.join("config.yml");
        // Debian's default config minus auth and the health checker; the in-memory blob
        // descriptor cache stays, as in the packaged default.
        let yaml = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  cache:\n    blobdescriptor: inmemory\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            data.display()
        );
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("registry.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        Self::spawn(Kind::Distribution, cmd, port, log, client).await
    }

    async fn spawn(
        kind: Kind,
        mut cmd: Command,
        port: u16,
        log: PathBuf,
        client: &reqwest::Client,
    ) -> anyhow::Result<Server> {
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", kind.name()))?;
        let pid = child
            .id()
            .with_context(|| format!("{} exited at once", kind.name()))?;
        let mut server = Server {
            kind,
            base: format!("http://127.0.0.1:{port}"),
            pid,
            child,
            log,
        };
        server.wait_ready(client).await?;
        Ok(server)
    }

    /// Waits until `GET /v2/` answers, or fails with the end of the server's log.
    async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/v2/", self.base);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            if let Ok(resp) = client.get(&url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer GET /v2/ within 30 s:\n{}",
                    self.kind.name(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines the server wrote, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    fn status_field_kib(&self, field: &str) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .with_context(|| format!("no {field} in {path}"))
    }

    /// Peak resident set size since start or the last [`Server::reset_peak_rss`], in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        Ok(self.status_field_kib("VmHWM:")? * 1024)
    }

    /// Resets the kernel's peak-RSS mark to the current RSS, so the next phase's peak is its own.
    pub fn reset_peak_rss(&self) -> anyhow::Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid);
        std::fs::write(&path, "5").with_context(|| format!("writing {path} (needs Linux >= 4.0)"))
    }

    /// User + system CPU time the process has used so far, all threads.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time(&self.pid.to_string())
    }

    /// Fails if the server has died (a crash mid-benchmark must not read as a slow figure).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status} during the benchmark:\n{}",
                self.kind.name(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Stops the server.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// The last 20 lines of a log file, headed by its path, for error messages.
pub(in crate::bench) fn log_tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(20);
    format!(
        "--- last lines of {} ---\n{}",
        log.display(),
        lines[from..].join("\n")
    )
}
