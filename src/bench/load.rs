//! Manifest GET under load, driven by `wrk` (Debian package `wrk`): a C event loop is the
//! leanest load generator available, which matters because it shares the two cores with the
//! server under test. A Lua script adds the `Accept` header and prints the summary as one line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::Command;

use super::client::MANIFEST_ACCEPT;

/// What one `wrk` run measured.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    /// Completed responses.
    pub requests: u64,
    /// Requests per second over the run.
    pub rps: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th-percentile latency.
    pub p99: Duration,
    /// Worst latency.
    pub max: Duration,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
}

/// The `wrk` binary: `explicit`, or `wrk` on PATH; a clear error if neither exists.
pub fn find_wrk(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!("--wrk-bin {} does not exist", p.display());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("wrk"))
        .find(|p| p.is_file())
        .context(
            "`wrk` not found on PATH: the manifest GET load is generated with it. \
             Install it with `apt-get install wrk` or point --wrk-bin at it",
        )
}

/// Writes the Lua script that sets the request and reports the summary.
pub fn write_script(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("manifest-get.lua");
    let script = format!(
        r#"wrk.method = "GET"
wrk.headers["Accept"] = "{MANIFEST_ACCEPT}"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "FLOTILLA-WRK requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d p50_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"#
    );
    std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs `wrk` against `url` with `connections` keep-alive connections on `threads` threads for
/// `duration` (whole seconds, the unit wrk takes). Fails if any response was not 2xx.
pub async fn run_wrk(
    wrk: &Path,
    script: &Path,
    url: &str,
    connections: u32,
    threads: u32,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let threads = threads.clamp(1, connections.max(1));
    let out = Command::new(wrk)
        .arg("-t")
        .arg(threads.to_string())
        .arg("-c")
        .arg(connections.to_string())
        .arg("-d")
        .arg(format!("{}s", duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(script)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", wrk.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}):\n{}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FLOTILLA-WRK "))
        .with_context(|| format!("wrk printed no summary line:\n{stdout}"))?;
    let fields: HashMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k, v)))
        .collect();
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .with_context(|| format!("wrk summary lacks {k}: {line}"))
    };
    let requests = get("requests")?;
    let duration_us = get("duration_us")?.max(1);
    let non_2xx = get("status")?;
    if non_2xx > 0 {
        bail!("{non_2xx} of {requests} manifest GETs to {url} were not 2xx");
    }
    if requests == 0 {
        bail!("wrk completed no request against {url}:\n{stdout}");
    }
    Ok(LoadResult {
        requests,
        rps: requests as f64 * 1e6 / duration_us as f64,
        p50: Duration::from_micros(get("p50_us")?),
        p99: Duration::from_micros(get("p99_us")?),
        max: Duration::from_micros(get("max_us")?),
        socket_errors: get("connect")? + get("read")? + get("write")? + get("timeout")?,
    })
}
