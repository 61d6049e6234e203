//! Test doubles for the fetcher and the OCI endpoint: test blobs with tables signed by a
//! "gateway" key, a fake [`Network`] whose streams are in-memory pipes to real transfer servers,
//! real stores in temporary directories (seeded with whole or partial blobs), a source that
//! serves corrupted bytes, and a tiny axum app posing as the gateway's HTTP endpoints.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flotilla_protocol::Digest;
use flotilla_protocol::piece::{PieceTableBuilder, SignedPieceTable};
use futures::FutureExt;
use futures::SinkExt as _;
use futures::future::BoxFuture;
use libp2p::PeerId;
use libp2p::identity::Keypair;
use tempfile::TempDir;

use crate::ports::{
    Held, Network, NetworkError, PeerStream, PieceFile, PieceSink, PieceSource, SourceError,
    Verdict,
};
use crate::store::{Store, StoreConfig};
use crate::transfer::{ServerLimits, run_server};

/// Logs to the test's output when `RUST_LOG` is set.
pub(crate) fn init_log() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// A blob, its bytes and its table signed by the test gateway.
#[derive(Clone)]
pub(crate) struct TestBlob {
    pub data: Arc<Vec<u8>>,
    pub digest: Digest,
    pub signed: Arc<SignedPieceTable>,
}

impl TestBlob {
    /// `len` pseudo-random bytes (from `seed`) cut into pieces of `piece_size`.
    pub fn new(len: usize, piece_size: u32, seed: u64, key: &Keypair) -> TestBlob {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let digest = Digest::sha256_of(&data);
        let mut b = PieceTableBuilder::new(piece_size).unwrap();
        b.update(&data);
        let table = b.finish(digest.clone()).unwrap();
        let signed = SignedPieceTable::sign(table, key).unwrap();
        TestBlob {
            data: Arc::new(data),
            digest,
            signed: Arc::new(signed),
        }
    }

    pub fn pieces(&self) -> u32 {
        self.signed.table.piece_count()
    }

    pub fn piece_bytes(&self, index: u32) -> &[u8] {
        let r = self.signed.table.piece_range(index).unwrap();
        &self.data[r.start as usize..r.end as usize]
    }
}

/// A real store in its own temporary directory.
pub(crate) struct TestStore {
    pub store: Arc<Store>,
    _dir: TempDir,
}

impl TestStore {
    pub async fn new() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig {
            dir: dir.path().to_owned(),
            capacity_bytes: 1 << 30,
            direct_io: true,
        })
        .await
        .unwrap();
        TestStore { store, _dir: dir }
    }

    /// Registers `blob` and stores the given pieces.
    pub async fn seed(&self, blob: &TestBlob, pieces: impl IntoIterator<Item = u32>) {
        PieceSink::register(&*self.store, blob.signed.clone())
            .await
            .unwrap();
        for i in pieces {
            let mut r = self.store.receive(&blob.digest, i).unwrap();
            r.write(blob.piece_bytes(i)).await.unwrap();
            assert_eq!(r.finish().await.unwrap(), Verdict::Verified);
        }
    }

    pub fn source(&self) -> Arc<dyn PieceSource> {
        self.store.clone()
    }
}

/// Serves a full copy's table and bit field, but every piece's bytes from a corrupted file.
pub(crate) struct CorruptSource {
    inner: Arc<Store>,
    file: Arc<std::fs::File>,
    pub reads: AtomicUsize,
    _dir: TempDir,
}

impl CorruptSource {
    /// `store` must hold all of `blob`.
    pub fn new(store: Arc<Store>, blob: &TestBlob) -> Arc<CorruptSource> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad");
        let bad: Vec<u8> = blob.data.iter().map(|b| b ^ 0x5a).collect();
        std::fs::write(&path, bad).unwrap();
        Arc::new(CorruptSource {
            inner: store,
            file: Arc::new(std::fs::File::open(&path).unwrap()),
            reads: AtomicUsize::new(0),
            _dir: dir,
        })
    }
}

impl PieceSource for CorruptSource {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        self.inner.held(digest)
    }

    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let real = self.inner.piece_file(digest, index);
        let file = self.file.clone();
        async move {
            let real = real.await?;
            // The real file is the blob laid out at its offsets, like the corrupted copy.
            Ok(PieceFile {
                file,
                offset: real.offset,
                len: real.len,
                // The corrupted copy is what must be read, never the real file.
                direct: None,
            })
        }
        .boxed()
    }

    fn served(&self, _: &Digest, _: u64) {}
}

/// A source that takes `delay` to produce each piece: a slow uploader.
pub(crate) struct SlowSource {
    pub inner: Arc<dyn PieceSource>,
    pub delay: std::time::Duration,
}

impl PieceSource for SlowSource {
    fn held(&self, digest: &Digest) -> BoxFuture<'static, Result<Option<Held>, SourceError>> {
        self.inner.held(digest)
    }

    fn piece_file(
        &self,
        digest: &Digest,
        index: u32,
    ) -> BoxFuture<'static, Result<PieceFile, SourceError>> {
        let real = self.inner.piece_file(digest, index);
        let delay = self.delay;
        async move {
            tokio::time::sleep(delay).await;
            real.await
        }
        .boxed()
    }

    fn served(&self, digest: &Digest, bytes: u64) {
        self.inner.served(digest, bytes);
    }
}

/// `tokio::io::DuplexStream` as a futures-io stream (what libp2p streams are).
pub(crate) struct Pipe(tokio::io::DuplexStream);

impl futures::io::AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures::io::AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

type Incoming = futures::channel::mpsc::Sender<(PeerId, PeerStream)>;

/// A network of in-memory peers, each running the real transfer server over its source.
pub(crate) struct FakeNetwork {
    local: PeerId,
    peers: Mutex<HashMap<PeerId, Incoming>>,
    providers: Mutex<Vec<PeerId>>,
    pub opens: Mutex<HashMap<PeerId, usize>>,
    pub lookups: AtomicUsize,
    pub provided: Mutex<Vec<Digest>>,
    /// Opening a stream to these peers takes this long.
    pub delays: Mutex<HashMap<PeerId, std::time::Duration>>,
    /// A provider lookup takes this long (a large fleet's lookup is many round trips).
    pub lookup_delay: Mutex<std::time::Duration>,
    servers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// This node's site label, if set (before the fetcher starts a download).
    pub site: std::sync::OnceLock<String>,
    /// Peers of our site, as a lookup of the site key finds them.
    site_providers: Mutex<Vec<PeerId>>,
    pub site_lookups: AtomicUsize,
}

impl FakeNetwork {
    pub fn new() -> Arc<FakeNetwork> {
        Arc::new(FakeNetwork {
            local: PeerId::random(),
            peers: Mutex::new(HashMap::new()),
            providers: Mutex::new(Vec::new()),
            opens: Mutex::new(HashMap::new()),
            lookups: AtomicUsize::new(0),
            provided: Mutex::new(Vec::new()),
            delays: Mutex::new(HashMap::new()),
            lookup_delay: Mutex::new(std::time::Duration::ZERO),
            servers: Mutex::new(Vec::new()),
            site: std::sync::OnceLock::new(),
            site_providers: Mutex::new(Vec::new()),
            site_lookups: AtomicUsize::new(0),
        })
    }

    /// Adds a provider serving from `source`; returns its id.
    pub fn add_peer(&self, source: Arc<dyn PieceSource>) -> PeerId {
        self.add_peer_at(source, None)
    }

    /// Adds a provider in `site` (told in its Welcome, and found by a lookup of our site key
    /// if it is ours); returns its id.
    pub fn add_peer_at(&self, source: Arc<dyn PieceSource>, site: Option<&str>) -> PeerId {
        let id = PeerId::random();
        let (tx, rx) = futures::channel::mpsc::channel(16);
        let label = site.map(str::to_owned);
        let server = tokio::spawn(run_server(rx, source, ServerLimits::default(), label));
        self.servers.lock().unwrap().push(server);
        self.peers.lock().unwrap().insert(id, tx);
        self.providers.lock().unwrap().push(id);
        if site.is_some() && site == self.site.get().map(String::as_str) {
            self.site_providers.lock().unwrap().push(id);
        }
        id
    }

    /// Leaves `peer` out of lookups of the blob key (a lookup of the site key still finds it).
    pub fn hide_from_blob_lookups(&self, peer: &PeerId) {
        self.providers.lock().unwrap().retain(|p| p != peer);
    }

    pub fn opens_of(&self, peer: &PeerId) -> usize {
        self.opens.lock().unwrap().get(peer).copied().unwrap_or(0)
    }

    pub fn total_opens(&self) -> usize {
        self.opens.lock().unwrap().values().sum()
    }
}

impl Drop for FakeNetwork {
    fn drop(&mut self) {
        for s in self.servers.lock().unwrap().drain(..) {
            s.abort();
        }
    }
}

impl Network for FakeNetwork {
    fn local_peer_id(&self) -> PeerId {
        self.local
    }

    fn find_providers(
        &self,
        _digest: &Digest,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, NetworkError>> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let mut p = self.providers.lock().unwrap().clone();
        p.truncate(limit);
        let delay = *self.lookup_delay.lock().unwrap();
        async move {
            tokio::time::sleep(delay).await;
            Ok(p)
        }
        .boxed()
    }

    fn open_stream(&self, peer: PeerId) -> BoxFuture<'static, Result<PeerStream, NetworkError>> {
        *self.opens.lock().unwrap().entry(peer).or_default() += 1;
        let server = self.peers.lock().unwrap().get(&peer).cloned();
        let local = self.local;
        let delay = self.delays.lock().unwrap().get(&peer).copied();
        async move {
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let Some(mut server) = server else {
                return Err(NetworkError::Unreachable {
                    peer,
                    reason: "unknown peer".to_owned(),
                });
            };
            let (a, b) = tokio::io::duplex(256 << 10);
            server
                .send((local, Box::new(Pipe(b)) as PeerStream))
                .await
                .map_err(|_| NetworkError::Stopped)?;
            Ok(Box::new(Pipe(a)) as PeerStream)
        }
        .boxed()
    }

    fn provide(&self, digest: &Digest) -> BoxFuture<'static, Result<(), NetworkError>> {
        self.provided.lock().unwrap().push(digest.clone());
        futures::future::ready(Ok(())).boxed()
    }

    fn unprovide(&self, _digest: &Digest) -> BoxFuture<'static, Result<(), NetworkError>> {
        futures::future::ready(Ok(())).boxed()
    }

    fn known_peers(&self) -> usize {
        self.peers.lock().unwrap().len()
    }

    fn site(&self) -> Option<&str> {
        self.site.get().map(String::as_str)
    }

    fn find_site_providers(
        &self,
        _digest: &Digest,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<PeerId>, NetworkError>> {
        self.site_lookups.fetch_add(1, Ordering::Relaxed);
        let mut p = self.site_providers.lock().unwrap().clone();
        p.truncate(limit);
        futures::future::ready(Ok(p)).boxed()
    }
}

/// The manifest the fake gateway serves for `library/alpine:latest`.
pub(crate) const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

/// What the fake gateway saw of one `/v2/` request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: Method,
    pub uri: String,
    pub accept: Vec<String>,
}

/// State of the fake gateway.
pub(crate) struct GatewayState {
    pub key: Keypair,
    pub blobs: Mutex<HashMap<Digest, TestBlob>>,
    pub origin_bytes: AtomicU64,
    pub table_requests: AtomicUsize,
    pub v2: Mutex<Vec<Seen>>,
    /// Answer every blob request with 503.
    pub refuse_blobs: std::sync::atomic::AtomicBool,
    /// More manifests to answer: path → (Content-Type, body).
    pub manifests: Mutex<HashMap<String, (&'static str, String)>>,
    /// What `GET /flotilla/v1/swarm/<digest>` says of `unsent` (none sent yet).
    pub unsent: std::sync::atomic::AtomicBool,
}

/// A fake gateway listening on loopback.
pub(crate) struct FakeGateway {
    pub state: Arc<GatewayState>,
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGateway {
    pub async fn start(key: Keypair) -> FakeGateway {
        let state = Arc::new(GatewayState {
            key,
            blobs: Mutex::new(HashMap::new()),
            origin_bytes: AtomicU64::new(0),
            table_requests: AtomicUsize::new(0),
            v2: Mutex::new(Vec::new()),
            refuse_blobs: std::sync::atomic::AtomicBool::new(false),
            manifests: Mutex::new(HashMap::new()),
            unsent: std::sync::atomic::AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/flotilla/v1/info", get(info))
            .route("/flotilla/v1/swarm/{digest}", get(swarm))
            .route("/flotilla/v1/pieces/{digest}", get(pieces))
            .route("/flotilla/v1/blobs/{digest}", get(blob))
            .fallback(v2)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGateway {
            state,
            addr,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn peer_id(&self) -> PeerId {
        self.state.key.public().to_peer_id()
    }

    pub fn add(&self, blob: &TestBlob) {
        self.state
            .blobs
            .lock()
            .unwrap()
            .insert(blob.digest.clone(), blob.clone());
    }

    pub fn origin_bytes(&self) -> u64 {
        self.state.origin_bytes.load(Ordering::Relaxed)
    }

    /// Answers `GET /v2/<repo>/manifests/<reference>` with `body` as `content_type`.
    pub fn add_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: &'static str,
        body: &str,
    ) {
        self.state.manifests.lock().unwrap().insert(
            format!("/v2/{repo}/manifests/{reference}"),
            (content_type, body.to_owned()),
        );
    }
}

async fn info(State(st): State<Arc<GatewayState>>) -> Response {
    let body = serde_json::json!({
        "peer_id": st.key.public().to_peer_id().to_base58(),
        "addrs": [],
    });
    axum::Json(body).into_response()
}

fn lookup(st: &GatewayState, digest: &str) -> Option<TestBlob> {
    let d: Digest = digest.parse().ok()?;
    st.blobs.lock().unwrap().get(&d).cloned()
}

async fn swarm(State(st): State<Arc<GatewayState>>) -> Response {
    let unsent = st.unsent.load(Ordering::Relaxed);
    axum::Json(serde_json::json!({ "fetchers": 1, "unsent": unsent })).into_response()
}

async fn pieces(State(st): State<Arc<GatewayState>>, Path(digest): Path<String>) -> Response {
    st.table_requests.fetch_add(1, Ordering::Relaxed);
    match lookup(&st, &digest) {
        Some(b) => b.signed.encode().unwrap().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn blob(
    State(st): State<Arc<GatewayState>>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(b) = lookup(&st, &digest) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if st.refuse_blobs.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let size = b.data.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, z)| Some((a.parse::<u64>().ok()?, z.parse::<u64>().ok()?)));
    let (start, end) = range.unwrap_or((0, size - 1));
    if start > end || end >= size {
        return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
    }
    let bytes = b.data[start as usize..=end as usize].to_vec();
    st.origin_bytes
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    let mut res = Response::new(Body::from(bytes));
    *res.status_mut() = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    res.headers_mut().insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")).unwrap(),
    );
    res
}

/// Answers `library/alpine` manifests and tags; records every request.
async fn v2(State(st): State<Arc<GatewayState>>, req: Request) -> Response {
    let seen = Seen {
        method: req.method().clone(),
        uri: req.uri().to_string(),
        accept: req
            .headers()
            .get_all(header::ACCEPT)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect(),
    };
    st.v2.lock().unwrap().push(seen);
    let path = req.uri().path();
    let extra = st.manifests.lock().unwrap().get(path).cloned();
    let (status, ctype, body, digest) = match (path, extra) {
        (_, Some((ctype, body))) => {
            let digest = Digest::sha256_of(body.as_bytes());
            (StatusCode::OK, ctype, body, Some(digest))
        }
        ("/v2/library/alpine/manifests/latest", None) => (
            StatusCode::OK,
            "application/vnd.oci.image.manifest.v1+json",
            MANIFEST.to_owned(),
            Some(Digest::sha256_of(MANIFEST.as_bytes())),
        ),
        ("/v2/library/alpine/tags/list", None) => (
            StatusCode::OK,
            "application/json",
            r#"{"name":"library/alpine","tags":["latest"]}"#.to_owned(),
            None,
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_owned(),
            None,
        ),
    };
    let len = body.len();
    let mut res = Response::new(if req.method() == Method::HEAD {
        Body::empty()
    } else {
        Body::from(body)
    });
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Some(d) = digest {
        h.insert(
            "docker-content-digest",
            HeaderValue::from_str(d.as_str()).unwrap(),
        );
    }
    if path.ends_with("/tags/list") {
        h.insert(
            header::LINK,
            HeaderValue::from_static(
                "</v2/library/alpine/tags/list?n=1&last=latest>; rel=\"next\"",
            ),
        );
    }
    res
}
