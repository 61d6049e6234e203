//! Test harness: gateway processes on loopback, temp data dirs, and required external tools.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `flotilla` binary built for this test run.
pub fn flotilla_bin() -> &'static str {
    env!("CARGO_BIN_EXE_flotilla")
}

/// Picks ports outside the kernel's ephemeral range (shared with `flotilla bench`).
#[path = "../src/bench/ports.rs"]
mod ports;

/// A loopback port (TCP and UDP) that was free a moment ago, outside the kernel's ephemeral
/// range, so no server's `bind(0)` or outgoing connection can take it, and never handed out
/// before in this test process.
pub fn free_port() -> u16 {
    ports::free_port().unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// [`free_port`] on another loopback address.
pub fn free_port_on(ip: std::net::IpAddr) -> u16 {
    ports::free_port_on(ip).unwrap_or_else(|e| panic!("no free port on {ip}: {e}"))
}

/// Panics (loudly, naming the package) unless `tool` is on PATH: a test that cannot run its
/// client must fail, never pass silently. `.ci/run` installs every tool named here.
pub fn require_tool(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "required test tool `{tool}` is not installed; run `bash .ci/run` or install it (see README.md)"
    );
}

/// A running `flotilla gateway` process with its own data directory.
pub struct Gateway {
    child: Option<Child>,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    log_path: PathBuf,
    extra_args: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts a gateway on a free port with a fresh temporary data directory.
    pub fn start() -> Gateway {
        Self::start_with_args(&[])
    }

    /// Like [`Gateway::start`], with extra command-line flags.
    pub fn start_with_args(args: &[&str]) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let mut g = Gateway {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            log_path: tmp.path().join("gateway.log"),
            data_dir,
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        };
        g.spawn();
        g
    }

    /// Starts a gateway on an existing data directory (for restart/crash tests).
    pub fn start_in(data_dir: &Path, log_path: &Path) -> Gateway {
        let mut g = Gateway {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
            data_dir: data_dir.to_path_buf(),
            log_path: log_path.to_path_buf(),
            extra_args: Vec::new(),
            _tmp: None,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open gateway log");
        let child = Command::new(flotilla_bin())
            .arg("gateway")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn flotilla gateway");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited early ({status}); log:\n{}", self.log());
            }
            if http_status(self.addr, "GET", "/v2/") == Some(200) {
                return;
            }
            if Instant::now() > deadline {
                panic!("gateway not ready after 30 s; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fleet join token the gateway created in its data directory.
    pub fn fleet_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("fleet.token"))
            .expect("the gateway's fleet.token")
            .trim()
            .to_owned()
    }

    /// `127.0.0.1:PORT`, the registry host part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The process id of the running gateway.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a graceful exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        // SAFETY-free: sending a signal through the `kill` command keeps `unsafe` out of tests.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the gateway again on the same data directory and port (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Minimal blocking HTTP/1.0 request used for readiness checks; returns the status code.
pub fn http_status(addr: SocketAddr, method: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd args…` to completion; panics with its output unless it succeeds. Returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "`{cmd} {}` failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` deterministic pseudo-random bytes (xorshift64), different for each `seed`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// A fleet member for tests that call the gateway's member-only endpoints (`/flotilla/v1/blobs`,
/// `pieces`, `swarm`, `tags`) themselves: a fresh key, enrolled with the fleet token, signing
/// each request it is given.
pub struct Member {
    signer: flotilla_node::gateway_http::MemberSigner,
    /// Its peer id.
    pub peer: libp2p_identity::PeerId,
}

impl Member {
    /// Enrolls a new key with the gateway at `gateway_url` (its `/flotilla/v1/info` names the
    /// fleet key) using `token`.
    pub async fn enroll(http: &reqwest::Client, gateway_url: &str, token: &str) -> Member {
        let info: serde_json::Value = http
            .get(format!("{gateway_url}/flotilla/v1/info"))
            .send()
            .await
            .expect("info request")
            .json()
            .await
            .expect("info JSON");
        let gateway: libp2p_identity::PeerId = info["peer_id"]
            .as_str()
            .expect("peer_id")
            .parse()
            .expect("gateway peer id");
        let key = libp2p_identity::Keypair::generate_ed25519();
        let cert =
            flotilla_node::identity::membership::enroll(http, gateway_url, &gateway, &key, token)
                .await
                .expect("enrollment with the fleet token");
        let peer = key.public().to_peer_id();
        let signer = flotilla_node::gateway_http::MemberSigner::new();
        signer.set(key, cert, gateway);
        Member { signer, peer }
    }

    /// `rb`, a `method` request to `url`, signed as this member.
    pub fn sign(
        &self,
        rb: reqwest::RequestBuilder,
        method: &reqwest::Method,
        url: &str,
    ) -> reqwest::RequestBuilder {
        self.signer.sign(rb, method, url)
    }

    /// A signed `GET` of `url`.
    pub fn get(&self, http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
        self.sign(http.get(url), &reqwest::Method::GET, url)
    }
}
