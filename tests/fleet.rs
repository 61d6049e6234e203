//! Fleets of nodes pulling from one gateway over loopback: the claims of issue 3 measured end to
//! end. Images are pushed to the real `flotilla gateway` binary over plain HTTP, then pulled by
//! several nodes at once through their OCI endpoints, and every blob's sha256 is checked against
//! its digest. The gateway's egress counters (`/flotilla/v1/stats`) show how much of the image
//! left the gateway, which is the point of the swarm.
//!
//! Nodes run either in the test process ([`InNode`], which also allows test hooks such as a
//! lying piece source) or as `flotilla node` processes ([`NodeProc`], which can be killed with
//! SIGKILL). Every swarm listens on 127.0.0.1 only.

/// Peers that lie about their bit field or stall after accepting requests are banned.
mod byzantine;
/// A chain of nodes: a piece passed on while it arrives, under an upload cap.
mod chain;
/// containerd pulls an image through a node: as the gateway's mirror (`hosts.toml`) and by the
/// node's own address.
mod containerd;
/// A node whose disk fills: a clear refusal, no corruption, recovery when space returns.
mod disk_full;
/// docker pulls an image through a node's OCI endpoint.
mod docker;
/// A second Docker engine with the node as its registry mirror pulls a Docker Hub name.
mod docker_mirror;
/// A node with a download cap pulls from a peer and the gateway and keeps to it.
mod download_cap;
/// A node gives back the disk of blobs it has not used for a while.
mod idle;
/// Nodes in the test process: eight at once, and a peer that serves corrupted pieces.
mod in_process;
/// A fleet whose network drops UDP pulls over TCP (in a network namespace of its own).
mod no_udp;
/// A gateway with an upload cap: a fleet pulls at once and its blob bytes keep to the cap.
mod origin_cap;
/// `flotilla prefetch`: one platform of an image fetched and pinned ahead of its pull, then
/// pulled with the gateway stopped.
mod prefetch;
/// `flotilla node` processes: four at once, and a node killed mid-download that resumes.
mod processes;
/// A member the gateway revokes is cut off by its peers within a poll of the list.
mod revoke;
/// Nodes with site labels: each site takes the image from outside about once.
mod sites;
/// `flotilla up`, the README's first command: docker pushes to it and pulls through its node,
/// before and after a restart.
mod up;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_node::{Node, NodeConfig, NodeError, NodeOptions, NodeStats};
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::support::{Gateway, flotilla_bin, free_port, http_status, noise};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MIB: usize = 1 << 20;

/// Loopback-only swarm listen addresses (QUIC first, TCP as the fallback).
pub fn loopback_p2p() -> Vec<String> {
    vec![
        "/ip4/127.0.0.1/udp/0/quic-v1".to_owned(),
        "/ip4/127.0.0.1/tcp/0".to_owned(),
    ]
}

/// An HTTP client for the tests: no proxy, generous limits (debug builds are slow).
pub fn client() -> reqwest::Client {
    flotilla_node::gateway_http::client_builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .build()
        .expect("client")
}

/// `sha256:<hex>` computed with ring (fast even in debug builds), independently of the product.
pub fn digest_of(b: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(ring::digest::digest(&ring::digest::SHA256, b))
    )
}

/// The fleet join token every [`FleetGateway`] is configured with (`fleet_token` in its config
/// file) and every [`InNode`] and [`NodeProc`] presents, as an operator would set it.
pub const FLEET_TOKEN: &str = "flotilla-test-fleet-token";

/// A gateway process whose swarm listens on loopback only.
pub struct FleetGateway {
    /// The process.
    pub gw: Gateway,
    config_dir: tempfile::TempDir,
}

impl FleetGateway {
    /// Starts a gateway with a config file that puts its swarm on 127.0.0.1 and sets the fleet
    /// token to [`FLEET_TOKEN`].
    pub fn start() -> FleetGateway {
        Self::start_listening(&loopback_p2p(), "")
    }

    /// [`FleetGateway::start`] with `upload_bytes_per_s` set.
    pub fn start_capped(bytes_per_s: u64) -> FleetGateway {
        Self::start_listening(
            &loopback_p2p(),
            &format!("upload_bytes_per_s = {bytes_per_s}\n"),
        )
    }

    /// [`FleetGateway::start`] with `extra` lines in its config file.
    pub fn start_with_config(extra: &str) -> FleetGateway {
        Self::start_listening(&loopback_p2p(), extra)
    }

    /// Stops it and starts it again (same port, data and identity) with `token` as its fleet
    /// token: an operator rotating the token.
    pub fn restart_with_token(&mut self, token: &str) {
        let path = self.config_dir.path().join("gateway.toml");
        let text = std::fs::read_to_string(&path).expect("read config");
        let rotated = text.replacen(
            &format!("fleet_token = {FLEET_TOKEN:?}"),
            &format!("fleet_token = {token:?}"),
            1,
        );
        assert_ne!(rotated, text, "the config names no fleet token to rotate");
        std::fs::write(&path, rotated).expect("write config");
        assert!(self.gw.stop(), "the gateway did not stop cleanly");
        self.gw.restart();
    }

    /// A gateway with no swarm: nodes can take blobs from it over HTTP only, and find each
    /// other through the bootstrap peers they are given.
    pub fn start_without_swarm() -> FleetGateway {
        Self::start_listening(&[], "")
    }

    fn start_listening(p2p: &[String], extra: &str) -> FleetGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gateway.toml");
        let list = p2p
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &path,
            format!("p2p_listen = [{list}]\nfleet_token = {FLEET_TOKEN:?}\n{extra}"),
        )
        .expect("write config");
        let gw = Gateway::start_with_args(&["--config", path.to_str().expect("utf-8 path")]);
        FleetGateway {
            gw,
            config_dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.gw.url()
    }

    /// `GET /flotilla/v1/info`; panics unless the swarm announces addresses.
    pub async fn info(&self, http: &reqwest::Client) -> Value {
        let info = get_json(http, &format!("{}/flotilla/v1/info", self.url())).await;
        assert!(
            info["addrs"].as_array().is_some_and(|a| !a.is_empty()),
            "the gateway announces no swarm address once it answers /v2/: {info}"
        );
        info
    }

    /// `(http_blob_bytes, swarm_bytes)` once they have stopped changing.
    pub async fn egress(&self, http: &reqwest::Client) -> (u64, u64) {
        let url = format!("{}/flotilla/v1/stats", self.url());
        let mut last = (u64::MAX, u64::MAX);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = get_json(http, &url).await;
            let now = (
                s["http_blob_bytes"].as_u64().expect("http_blob_bytes"),
                s["swarm_bytes"].as_u64().expect("swarm_bytes"),
            );
            if now == last || Instant::now() > deadline {
                return now;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// `GET url` as JSON; panics on anything but 200.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let body = get_text(http, url).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// `GET url` as text, asserting `200` (a `/metrics` page).
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    let r = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status();
    let body = r.text().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// A node's `GET /flotilla/v1/stats`.
pub async fn node_stats(http: &reqwest::Client, base: &str) -> NodeStats {
    let v = get_json(http, &format!("{base}/flotilla/v1/stats")).await;
    serde_json::from_value(v).expect("NodeStats JSON")
}

/// A node's counters once they have stopped changing: a client gets a piece as soon as the
/// store verified it, and the download driver counts it a moment later.
pub async fn settled_stats(http: &reqwest::Client, base: &str) -> NodeStats {
    let mut last = node_stats(http, base).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = node_stats(http, base).await;
        let same = (
            now.peer_bytes,
            now.origin_bytes,
            now.wasted_bytes,
            now.served_bytes,
        ) == (
            last.peer_bytes,
            last.origin_bytes,
            last.wasted_bytes,
            last.served_bytes,
        );
        if same || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// An OCI image pushed to the gateway: its blobs (config first) and exact manifest bytes.
pub struct Image {
    /// Repository.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// `(digest, bytes)` of the config, then each layer.
    pub blobs: Vec<(String, Vec<u8>)>,
    /// The manifest as pushed.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub digest: String,
}

impl Image {
    /// Total bytes of the blobs (what a pull must move).
    pub fn size(&self) -> u64 {
        self.blobs.iter().map(|(_, b)| b.len() as u64).sum()
    }

    /// Builds an image with a small config and layers of `layer_sizes` bytes of noise, and
    /// pushes it (monolithic POSTs, then the manifest PUT) to `gateway` as `repo:tag`.
    pub async fn push(
        http: &reqwest::Client,
        gateway: &str,
        repo: &str,
        tag: &str,
        layer_sizes: &[usize],
        seed: u64,
    ) -> Image {
        let config =
            format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":{seed}}}").into_bytes();
        let mut blobs = vec![(digest_of(&config), config)];
        for (i, &n) in layer_sizes.iter().enumerate() {
            let b = noise(n, seed * 100 + i as u64 + 1);
            blobs.push((digest_of(&b), b));
        }
        for (d, b) in &blobs {
            let url = format!("{gateway}/v2/{repo}/blobs/uploads/?digest={d}");
            let r = http
                .post(&url)
                .header("Content-Type", "application/octet-stream")
                .body(b.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST {url}: {e}"));
            assert_eq!(r.status(), 201, "POST {url}");
        }
        let desc = |mt: &str, (d, b): &(String, Vec<u8>)| json!({"mediaType": mt, "digest": d, "size": b.len()});
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, &blobs[0]),
            "layers": blobs[1..].iter().map(|b| desc(OCI_LAYER, b)).collect::<Vec<_>>(),
        }))
        .expect("manifest JSON");
        let url = format!("{gateway}/v2/{repo}/manifests/{tag}");
        let r = http
            .put(&url)
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        assert_eq!(r.status(), 201, "PUT {url}");
        Image {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            blobs,
            digest: digest_of(&manifest),
            manifest,
        }
    }
}

/// Pulls `img` by tag through the OCI endpoint at `base` the way a client does: the manifest,
/// then every blob it names at once, each streamed and hashed. Panics unless the manifest is
/// byte-identical and every blob's sha256 and size match. Returns how long it took.
pub async fn pull(http: &reqwest::Client, base: &str, img: &Image) -> Duration {
    let t0 = Instant::now();
    let url = format!("{base}/v2/{}/manifests/{}", img.repo, img.tag);
    let r = http
        .get(&url)
        .header("Accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let header = r
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(header.as_deref(), Some(img.digest.as_str()), "GET {url}");
    let body = r.bytes().await.expect("manifest body");
    assert!(body == img.manifest, "GET {url}: manifest bytes differ");
    let m: Value = serde_json::from_slice(&body).expect("manifest JSON");
    let descs: Vec<(String, u64)> = std::iter::once(&m["config"])
        .chain(m["layers"].as_array().expect("layers"))
        .map(|d| {
            (
                d["digest"].as_str().expect("digest").to_owned(),
                d["size"].as_u64().expect("size"),
            )
        })
        .collect();
    let gets = descs
        .iter()
        .map(|(d, size)| pull_blob(http, base, &img.repo, d, *size));
    futures::future::join_all(gets).await;
    t0.elapsed()
}

/// How long the pulls of one test step may take together (debug build, two shared cores).
pub const PULL_LIMIT: Duration = Duration::from_secs(45);

/// [`pull`] through every endpoint in `bases` at once; `Err` if they did not all finish within
/// [`PULL_LIMIT`] (the caller prints the evidence, then fails).
pub async fn pull_all(
    http: &reqwest::Client,
    bases: &[String],
    img: &Image,
) -> Result<Vec<Duration>, String> {
    let pulls = futures::future::join_all(bases.iter().map(|b| pull(http, b, img)));
    tokio::time::timeout(PULL_LIMIT, pulls).await.map_err(|_| {
        format!(
            "pulling {}:{} through {bases:?} did not finish within {PULL_LIMIT:?}",
            img.repo, img.tag
        )
    })
}

/// Streams one blob, hashing as it comes; panics unless its sha256 and size match.
pub async fn pull_blob(http: &reqwest::Client, base: &str, repo: &str, digest: &str, size: u64) {
    let url = format!("{base}/v2/{repo}/blobs/{digest}");
    let r = http
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut n = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap_or_else(|e| panic!("GET {url}: body broke after {n} bytes: {e}"));
        n += chunk.len() as u64;
        ctx.update(&chunk);
    }
    assert_eq!(n, size, "GET {url}: length");
    let got = format!("sha256:{}", hex::encode(ctx.finish()));
    assert_eq!(
        got, digest,
        "GET {url}: the bytes do not hash to the digest"
    );
}

/// Prints the gateway's egress against the image size and returns the ratio.
pub async fn report_egress(
    what: &str,
    http: &reqwest::Client,
    gw: &FleetGateway,
    img: &Image,
) -> f64 {
    let (http_bytes, swarm_bytes) = gw.egress(http).await;
    let egress = http_bytes + swarm_bytes;
    let ratio = egress as f64 / img.size() as f64;
    println!(
        "[{what}] gateway egress {egress} B (http {http_bytes} + swarm {swarm_bytes}) for an image of {} B: {ratio:.3} x",
        img.size()
    );
    ratio
}

/// Prints one node's counters.
pub fn print_stats(what: &str, name: &str, s: &NodeStats) {
    println!(
        "[{what}] {name}: peer {} (far {}) origin {} wasted {} (duplicates {} cut {} invalid {}) served {} (while arriving {}) stored {} known_peers {}",
        s.peer_bytes,
        s.far_peer_bytes,
        s.origin_bytes,
        s.wasted_bytes,
        s.duplicate_bytes,
        s.cut_bytes,
        s.invalid_bytes,
        s.served_bytes,
        s.served_arriving_bytes,
        s.stored_bytes,
        s.known_peers
    );
}

/// Checks what a node that started empty and pulled `img` once reports: every byte it holds
/// verified exactly once, from a peer or the origin. Adds what is wrong to `failures`.
pub fn check_fresh_node(name: &str, s: &NodeStats, img: &Image, failures: &mut Vec<String>) {
    let received = s.peer_bytes + s.origin_bytes;
    if received != img.size() {
        failures.push(format!(
            "{name}: peer_bytes + origin_bytes = {received}, but it started empty and now holds the \
             {} B image (every verified piece must be counted once): {s:?}",
            img.size()
        ));
    }
    if s.stored_bytes != img.size() {
        failures.push(format!(
            "{name}: stored_bytes = {}, want the image size {}",
            s.stored_bytes,
            img.size()
        ));
    }
    check_honest_waste(name, s, failures);
}

/// Checks that a node among honest peers dropped no corrupt piece and that its dropped bytes
/// add up by kind. Adds what is wrong to `failures`.
pub fn check_honest_waste(name: &str, s: &NodeStats, failures: &mut Vec<String>) {
    if s.invalid_bytes != 0 {
        failures.push(format!(
            "{name}: {} B failed verification, but every peer is honest: {s:?}",
            s.invalid_bytes
        ));
    }
    if s.wasted_bytes != s.duplicate_bytes + s.cut_bytes + s.invalid_bytes {
        failures.push(format!(
            "{name}: wasted_bytes is not duplicates + cut + invalid: {s:?}"
        ));
    }
}

/// Panics listing every failure, if any.
pub fn assert_no_failures(what: &str, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "[{what}] {} failed expectation(s):\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// The lines of `log` at WARN or ERROR level (evidence for reports).
pub fn warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

/// A log file shared by everything a test runs in its process (see [`log_runtime`]).
#[derive(Clone)]
pub struct LogFile {
    file: Arc<Mutex<std::fs::File>>,
    /// Where it is.
    pub path: PathBuf,
}

impl LogFile {
    /// Creates (truncates) `path`, or `$FLEET_LOG_DIR/<file name>` when that variable is set
    /// (to keep the log after the test's temporary directory is gone).
    pub fn create(path: &Path) -> LogFile {
        let path = match (std::env::var_os("FLEET_LOG_DIR"), path.file_name()) {
            (Some(dir), Some(name)) => PathBuf::from(dir).join(name),
            _ => path.to_path_buf(),
        };
        let path = path.as_path();
        LogFile {
            file: Arc::new(Mutex::new(
                std::fs::File::create(path).expect("create log file"),
            )),
            path: path.to_path_buf(),
        }
    }

    /// Everything logged so far.
    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A multi-threaded runtime whose threads log into `log` (INFO and up, or the filter in
/// `FLEET_LOG`), and the dispatcher to install on the thread that calls `block_on`. Scoped dispatchers, not a global one: other
/// tests share this process.
pub fn log_runtime(log: &LogFile) -> (tokio::runtime::Runtime, tracing::Dispatch) {
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("FLEET_LOG").unwrap_or_else(|_| "info".to_owned()),
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    let on_start = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            // The guard would restore the previous default when dropped; the thread keeps this
            // one for its whole life instead.
            std::mem::forget(tracing::dispatcher::set_default(&on_start));
        })
        .build()
        .expect("runtime");
    (rt, dispatch)
}

/// A node running in the test process, serving until [`InNode::stop`].
pub struct InNode {
    /// `http://127.0.0.1:PORT` of its OCI endpoint.
    pub url: String,
    /// Its peer id.
    pub peer_id: String,
    /// Its swarm (cloned before the node was moved into `serve`).
    pub swarm: flotilla_node::swarm::SwarmHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), NodeError>>,
}

impl InNode {
    /// Starts a node on `data_dir` against `gateway`, with loopback swarm addresses and the
    /// fleet token [`FLEET_TOKEN`].
    pub async fn start(gateway: &str, data_dir: &Path, options: NodeOptions) -> InNode {
        Self::start_with_token(gateway, FLEET_TOKEN, data_dir, options).await
    }

    /// [`InNode::start`] presenting `token` to the gateway.
    pub async fn start_with_token(
        gateway: &str,
        token: &str,
        data_dir: &Path,
        options: NodeOptions,
    ) -> InNode {
        Self::start_tuned(gateway, token, data_dir, options, |_| {}).await
    }

    /// [`InNode::start_with_token`] with the configuration changed by `tune` first.
    pub async fn start_tuned(
        gateway: &str,
        token: &str,
        data_dir: &Path,
        options: NodeOptions,
        tune: impl FnOnce(&mut NodeConfig),
    ) -> InNode {
        let mut config = NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            gateway: gateway.to_owned(),
            p2p_listen: loopback_p2p(),
            shutdown_grace_secs: 2,
            fleet_token: Some(token.to_owned()),
            ..NodeConfig::default()
        };
        tune(&mut config);
        // A node stopped moments ago in this process may still hold its database lock while
        // its aborted tasks are dropped (a process's exit releases it at once).
        let deadline = Instant::now() + Duration::from_secs(10);
        let node = loop {
            match Node::start_with(config.clone(), options.clone()).await {
                Ok(node) => break node,
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("node on {} did not start: {e}", data_dir.display()),
            }
        };
        let url = format!("http://{}", node.oci_addr());
        let peer_id = node.peer_id().to_string();
        let swarm = node.swarm().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async move {
            let _ = rx.await;
        }));
        InNode {
            url,
            peer_id,
            swarm,
            stop: Some(tx),
            task,
        }
    }

    /// Stops it and waits (at most 20 s) for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(Duration::from_secs(20), &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("node {} stopped with an error: {e}", self.url),
            Ok(Err(e)) => panic!("node {} task failed: {e}", self.url),
            Err(_) => {
                self.task.abort();
                panic!("node {} did not stop within 20 s", self.url);
            }
        }
    }
}

/// A `flotilla node` process with its own data directory and log file.
pub struct NodeProc {
    child: Option<Child>,
    /// Its OCI endpoint's address (kept across restarts).
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    log_path: PathBuf,
    gateway: String,
}

impl NodeProc {
    /// Starts `flotilla node` against `gateway` with data in `dir/data` and its log in
    /// `dir/node.log` (or `$FLEET_LOG_DIR/node-<port>.log`), and waits until its `/v2/` answers.
    /// It logs at INFO, or with the filter in `FLEET_NODE_LOG`.
    pub fn start(gateway: &str, dir: &Path) -> NodeProc {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log_path = match std::env::var_os("FLEET_LOG_DIR") {
            Some(d) => PathBuf::from(d).join(format!("node-{}.log", addr.port())),
            None => dir.join("node.log"),
        };
        let mut n = NodeProc {
            child: None,
            addr,
            data_dir: dir.join("data"),
            log_path,
            gateway: gateway.to_owned(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        writeln!(log, "==== flotilla node starting ====").expect("write node log");
        let child = Command::new(flotilla_bin())
            .arg("node")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--gateway")
            .arg(&self.gateway)
            .arg("--p2p-listen")
            .arg(loopback_p2p().join(","))
            .env("FLOTILLA_FLEET_TOKEN", FLEET_TOKEN)
            .env(
                "FLOTILLA_LOG",
                std::env::var("FLEET_NODE_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            // Plain text in the log file, so that its lines can be searched.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn flotilla node");
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
                panic!("node exited early ({status}); log:\n{}", self.log());
            }
            if http_status(self.addr, "GET", "/v2/") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node not ready after 30 s; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the node logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data directory and port (after [`NodeProc::kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
