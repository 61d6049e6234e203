//! Shared helpers of the HTTP API tests: a client bound to one gateway that checks every response
//! it gets (no 5xx, the API-version header, well-formed OCI error bodies), deterministic blobs,
//! digests (computed here with `sha2`, independently of the code under test), and manifest
//! builders.
//!
//! Expectations come from the OCI distribution spec v1.1 ("the spec" in messages) and, where it is
//! silent, from flotilla's SPEC.md.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::Gateway;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI empty descriptor media type (the `{}` config of artifacts).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The `Accept` header of manifest requests: every manifest type the gateway stores.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Digest of the empty blob.
pub const EMPTY_SHA256: &str =
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// One answer, fully read.
pub struct Resp {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// `METHOD URL`, for failure messages.
    pub what: String,
}

impl Resp {
    /// A header as text, if present and ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header that must be present.
    pub fn must_header(&self, name: &str) -> &str {
        self.header(name).unwrap_or_else(|| {
            panic!(
                "{}: no `{name}` header; headers {:?}",
                self.what, self.headers
            )
        })
    }

    /// The body as (lossy, shortened) text, for messages.
    pub fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        if s.chars().count() > 600 {
            format!("{}…", s.chars().take(600).collect::<String>())
        } else {
            s.into_owned()
        }
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.what, self.text()))
    }

    /// Panics unless the status is `want`.
    pub fn expect(&self, want: u16) -> &Resp {
        assert_eq!(
            self.status.as_u16(),
            want,
            "{}: status {} (want {want}); body {}",
            self.what,
            self.status,
            self.text()
        );
        self
    }

    /// The `code`s of an OCI error body (empty if the body is not one).
    pub fn error_codes(&self) -> Vec<String> {
        codes_of(&self.body)
    }

    /// Panics unless the status is `status` and the body is an OCI error body holding `code`.
    pub fn expect_error(&self, status: u16, code: &str) -> &Resp {
        self.expect_error_in(&[status], &[code])
    }

    /// Panics unless the status is one of `statuses` and the OCI error body holds one of `codes`
    /// (for the few cases where the spec leaves the choice to the registry).
    pub fn expect_error_in(&self, statuses: &[u16], codes: &[&str]) -> &Resp {
        assert!(
            statuses.contains(&self.status.as_u16()),
            "{}: status {} (want one of {statuses:?}); body {}",
            self.what,
            self.status,
            self.text()
        );
        let got = self.error_codes();
        assert!(
            got.iter().any(|c| codes.contains(&c.as_str())),
            "{}: error codes {got:?} (want one of {codes:?}); body {}",
            self.what,
            self.text()
        );
        self
    }

    /// The `Location` header resolved against the gateway (it may be relative or absolute).
    pub fn location(&self, api: &Api) -> String {
        api.url(self.must_header("location"))
    }

    /// The `Docker-Content-Digest` header.
    pub fn digest(&self) -> &str {
        self.must_header("docker-content-digest")
    }

    /// The target of a `Link: <url>; rel="next"` header, if any.
    pub fn next_link(&self) -> Option<String> {
        let link = self.header("link")?;
        assert!(
            link.contains("rel=\"next\"") || link.contains("rel=next"),
            "{}: Link header without rel=\"next\": {link}",
            self.what
        );
        let start = link.find('<').map(|i| i + 1);
        let end = link.find('>');
        match (start, end) {
            (Some(s), Some(e)) if s < e => Some(link[s..e].to_owned()),
            _ => panic!("{}: malformed Link header {link:?} (RFC 5988)", self.what),
        }
    }
}

/// A client bound to one gateway process; every response goes through [`Api::send`].
pub struct Api {
    /// The gateway under test.
    pub gw: Gateway,
    http: reqwest::Client,
}

/// The HTTP client: no proxies from the environment, no redirects followed.
fn client() -> reqwest::Client {
    flotilla_node::gateway_http::client_builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build reqwest client")
}

impl Api {
    /// Starts a fresh gateway.
    pub fn start() -> Api {
        Api {
            gw: Gateway::start(),
            http: client(),
        }
    }

    /// Wraps an already started gateway (one started with extra flags).
    pub fn with_gateway(gw: Gateway) -> Api {
        Api { gw, http: client() }
    }

    /// SIGKILLs the gateway and starts it again on the same port and data directory; pooled
    /// connections to the dead process are dropped with the old client.
    pub fn restart(&mut self) {
        self.gw.restart();
        self.http = client();
    }

    /// An absolute URL for a path (`/v2/…`) or a `Location`/`Link` value (relative or absolute).
    pub fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else if path_or_url.starts_with('/') {
            format!("{}{path_or_url}", self.gw.url())
        } else {
            format!("{}/{path_or_url}", self.gw.url())
        }
    }

    /// A request builder for `method` on a path or URL.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends a request and reads the whole answer, checking what every answer must satisfy.
    pub async fn send(&self, rb: RequestBuilder) -> Resp {
        let req = rb.build().expect("build request");
        let what = format!("{} {}", req.method(), req.url());
        let is_head = req.method() == Method::HEAD;
        let res = self.http.execute(req).await.unwrap_or_else(|e| {
            panic!(
                "{what}: request failed: {e:?}\ngateway log:\n{}",
                self.log_tail()
            )
        });
        let status = res.status();
        let headers = res.headers().clone();
        let body = res
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e:?}"));
        let resp = Resp {
            status,
            headers,
            body,
            what,
        };
        check_common(&resp, is_head, &self.log_tail());
        resp
    }

    /// The last lines of the gateway log, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.gw.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path)).await
    }

    /// `HEAD path`.
    pub async fn head(&self, path: &str) -> Resp {
        self.send(self.req(Method::HEAD, path)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.req(Method::DELETE, path)).await
    }

    /// `GET /v2/<repo>/blobs/<digest>` with an optional `Range`.
    pub async fn get_blob(&self, repo: &str, digest: &str, range: Option<&str>) -> Resp {
        let mut rb = self.req(Method::GET, &format!("/v2/{repo}/blobs/{digest}"));
        if let Some(r) = range {
            rb = rb.header("Range", r);
        }
        self.send(rb).await
    }

    /// Monolithic `POST /v2/<repo>/blobs/uploads/?digest=` of `data` under `digest`.
    pub async fn post_blob(&self, repo: &str, digest: &str, data: &[u8]) -> Resp {
        let rb = self
            .req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .query(&[("digest", digest)])
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec());
        self.send(rb).await
    }

    /// Pushes `data` monolithically (expecting `201`) and returns its sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = sha256(data);
        let r = self.post_blob(repo, &d, data).await;
        r.expect(201);
        d
    }

    /// Asserts that `repo` serves exactly `data` at `digest`.
    pub async fn assert_blob(&self, repo: &str, digest: &str, data: &[u8]) {
        let r = self.get_blob(repo, digest, None).await;
        r.expect(200);
        assert_eq!(r.digest(), digest, "{}: Docker-Content-Digest", r.what);
        assert_eq!(r.body.len(), data.len(), "{}: body length", r.what);
        assert!(
            r.body == data,
            "{}: body differs from what was pushed",
            r.what
        );
    }

    /// Asserts that `repo` does not serve `digest` (HEAD and GET `404`, GET `BLOB_UNKNOWN`).
    pub async fn assert_no_blob(&self, repo: &str, digest: &str) {
        self.head(&format!("/v2/{repo}/blobs/{digest}"))
            .await
            .expect(404);
        self.get_blob(repo, digest, None)
            .await
            .expect_error(404, "BLOB_UNKNOWN");
    }

    /// `POST /v2/<repo>/blobs/uploads/` with `Content-Length: 0`.
    pub async fn post_upload(&self, repo: &str) -> Resp {
        self.send(
            self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .header("Content-Length", "0"),
        )
        .await
    }

    /// Starts an upload session, checking the spec's `202` + `Location` (which "MUST contain a
    /// UUID", the one `Docker-Upload-UUID` names); returns the location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self.post_upload(repo).await;
        r.expect(202);
        let id = r.must_header("docker-upload-uuid");
        let loc = r.location(self);
        assert!(
            loc.contains(id),
            "{}: Location {loc} does not contain the upload id {id}",
            r.what
        );
        loc
    }

    /// `PATCH location` with `data`, sending `Content-Range: start-end` when `start` is given.
    pub async fn patch(&self, location: &str, data: &[u8], start: Option<u64>) -> Resp {
        let mut rb = self
            .req(Method::PATCH, location)
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec());
        if let Some(s) = start {
            rb = rb.header("Content-Range", content_range(s, data.len()));
        }
        self.send(rb).await
    }

    /// `PATCH location` with `data` in order starting at `start`; expects `202` with the spec's
    /// `Location` and `Range: 0-<end>`. Returns the new location.
    pub async fn patch_ok(&self, location: &str, data: &[u8], start: u64) -> String {
        let r = self.patch(location, data, Some(start)).await;
        r.expect(202);
        let end = start + data.len() as u64 - 1;
        assert_eq!(
            r.must_header("range"),
            format!("0-{end}"),
            "{}: Range",
            r.what
        );
        r.must_header("docker-upload-uuid");
        r.location(self)
    }

    /// Closing `PUT location?digest=…` with `body` (none if empty), sending
    /// `Content-Range: start-end` when `start` is given.
    pub async fn put_upload(
        &self,
        location: &str,
        digest: &str,
        body: &[u8],
        start: Option<u64>,
    ) -> Resp {
        let mut rb = self.req(Method::PUT, location).query(&[("digest", digest)]);
        if body.is_empty() {
            rb = rb.header("Content-Length", "0");
        } else {
            rb = rb
                .header("Content-Type", "application/octet-stream")
                .body(body.to_vec());
            if let Some(s) = start {
                rb = rb.header("Content-Range", content_range(s, body.len()));
            }
        }
        self.send(rb).await
    }

    /// Closes an upload whose bytes are all sent, expecting `201` with `Location` and the digest.
    pub async fn close_ok(&self, location: &str, digest: &str) {
        let r = self.put_upload(location, digest, &[], None).await;
        r.expect(201);
        r.must_header("location");
        assert_eq!(r.digest(), digest, "{}: Docker-Content-Digest", r.what);
    }

    /// `PUT /v2/<repo>/manifests/<reference>` with `Content-Type: media_type`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        let rb = self
            .req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec());
        self.send(rb).await
    }

    /// `GET` (or `HEAD`) `/v2/<repo>/manifests/<reference>` accepting every manifest type.
    pub async fn manifest(&self, method: Method, repo: &str, reference: &str) -> Resp {
        let rb = self
            .req(method, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Accept", ACCEPT_MANIFESTS);
        self.send(rb).await
    }

    /// Asserts that `GET` and `HEAD` of `repo:reference` serve exactly `body` as `media_type`.
    pub async fn assert_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) {
        let d = sha256(body);
        let g = self.manifest(Method::GET, repo, reference).await;
        g.expect(200);
        assert_eq!(g.digest(), d, "{}: Docker-Content-Digest", g.what);
        assert_eq!(content_type(&g), media_type, "{}: Content-Type", g.what);
        assert!(
            g.body == body,
            "{}: body is not the exact bytes pushed",
            g.what
        );
        let h = self.manifest(Method::HEAD, repo, reference).await;
        h.expect(200);
        assert_eq!(h.digest(), d, "{}: Docker-Content-Digest", h.what);
        assert_eq!(content_type(&h), media_type, "{}: Content-Type", h.what);
        assert_eq!(
            h.must_header("content-length"),
            body.len().to_string(),
            "{}: Content-Length must be the manifest size",
            h.what
        );
    }

    /// Asserts that `repo:reference` is gone (`404 MANIFEST_UNKNOWN`, HEAD `404`).
    pub async fn assert_no_manifest(&self, repo: &str, reference: &str) {
        self.manifest(Method::GET, repo, reference)
            .await
            .expect_error(404, "MANIFEST_UNKNOWN");
        self.manifest(Method::HEAD, repo, reference)
            .await
            .expect(404);
    }

    /// Pushes a small OCI image (config + two layers derived from `seed`) and its manifest
    /// under `reference`; returns it.
    pub async fn push_image(&self, repo: &str, reference: &str, seed: u64) -> Image {
        let img = Image::new(seed);
        for b in std::iter::once(&img.config).chain(&img.layers) {
            self.push_blob(repo, b).await;
        }
        let r = self
            .put_manifest(repo, reference, OCI_MANIFEST, &img.manifest)
            .await;
        r.expect(201);
        assert_eq!(r.digest(), img.digest, "{}: Docker-Content-Digest", r.what);
        img
    }

    /// One raw HTTP/1.0 request with the path sent byte for byte (reqwest would normalise `..`);
    /// returns the status and the body. Checks the no-5xx rule too.
    pub async fn raw(&self, method: &str, path: &str) -> (u16, Vec<u8>) {
        raw_request(self.gw.addr, method, path).await
    }
}

/// A small OCI image: its blobs and the exact manifest bytes.
pub struct Image {
    /// Config blob.
    pub config: Vec<u8>,
    /// Layer blobs.
    pub layers: Vec<Vec<u8>>,
    /// Manifest bytes as pushed.
    pub manifest: Vec<u8>,
    /// sha256 of `manifest`.
    pub digest: String,
}

impl Image {
    /// The image for `seed` (nothing pushed).
    pub fn new(seed: u64) -> Image {
        let config = format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{}},\"seed\":{seed}}}"
        )
        .into_bytes();
        let layers = vec![
            blob(seed.wrapping_mul(31).wrapping_add(1), 3 * 1024 + 7),
            blob(seed.wrapping_mul(31).wrapping_add(2), 9 * 1024),
        ];
        let v = oci_manifest(
            desc(OCI_CONFIG, &config),
            layers.iter().map(|l| desc(OCI_LAYER, l)).collect(),
        );
        let manifest = manifest_bytes(&v);
        let digest = sha256(&manifest);
        Image {
            config,
            layers,
            manifest,
            digest,
        }
    }

    /// The descriptor of this image's manifest (for indexes and `subject` fields).
    pub fn descriptor(&self) -> Value {
        desc(OCI_MANIFEST, &self.manifest)
    }
}

/// Checks every answer: no 5xx, `Docker-Distribution-API-Version: registry/2.0`, no body on
/// `HEAD`, and a JSON 4xx body in the spec's error format.
fn check_common(r: &Resp, is_head: bool, log: &str) {
    assert!(
        !r.status.is_server_error(),
        "{}: server error {} (nothing a client sends may cause a 5xx); body {}\ngateway log:\n{log}",
        r.what,
        r.status,
        r.text()
    );
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0"),
        "{}: every response should carry Docker-Distribution-API-Version: registry/2.0",
        r.what
    );
    if is_head {
        assert!(r.body.is_empty(), "{}: HEAD answered with a body", r.what);
    }
    let is_json = r
        .header("content-type")
        .is_some_and(|ct| ct.contains("json"));
    if r.status.is_client_error() && is_json && !r.body.is_empty() {
        check_error_body(&r.what, &r.body);
    }
}

/// The spec's error body: `{"errors":[{"code":"UPPER_CASE","message":…,"detail":…}, …]}`,
/// where "The code field MUST be a unique identifier, containing only uppercase alphabetic
/// characters and underscores" and `message`, if present, is a string.
fn check_error_body(what: &str, body: &[u8]) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "{what}: JSON error body does not parse ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    let errors = v["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: error body without an `errors` array: {v}"));
    assert!(!errors.is_empty(), "{what}: empty `errors` array");
    for e in errors {
        let code = e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: error without a string `code`: {e}"));
        assert!(
            !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
            "{what}: code {code:?} is not uppercase letters and underscores"
        );
        if let Some(m) = e.get("message") {
            assert!(m.is_string(), "{what}: `message` must be a string: {e}");
        }
    }
}

/// Sends `METHOD path HTTP/1.0` on a fresh connection; returns status and body.
pub async fn raw_request(addr: SocketAddr, method: &str, path: &str) -> (u16, Vec<u8>) {
    raw_exchange(
        addr,
        &format!("{method} {path}"),
        "Content-Length: 0\r\n",
        b"",
        false,
    )
    .await
}

/// Sends `request_line HTTP/1.0`, the `headers` (each ending in CRLF) and `body` byte for byte
/// on a fresh connection, optionally shutting down the write side afterwards (a client that
/// goes away mid-body); returns status and body, checking the no-5xx rule.
pub async fn raw_exchange(
    addr: SocketAddr,
    request_line: &str,
    headers: &str,
    body: &[u8],
    half_close: bool,
) -> (u16, Vec<u8>) {
    try_raw_exchange(addr, request_line, headers, body, half_close, false)
        .await
        .unwrap_or_else(|e| panic!("{request_line}: connection failed: {e}"))
}

/// [`raw_exchange`], with connection errors (a reset while the body is still being written)
/// returned instead of panicking, and an optional pause between the headers and the body.
pub async fn try_raw_exchange(
    addr: SocketAddr,
    request_line: &str,
    headers: &str,
    body: &[u8],
    half_close: bool,
    pause_before_body: bool,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!("{request_line} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n");
    s.write_all(head.as_bytes()).await?;
    if pause_before_body {
        // Give the server time to answer from the headers alone, as it would with a slow client.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    s.write_all(body).await?;
    if half_close {
        s.shutdown().await?;
    }
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s"))??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{request_line}: no header end in {:?}",
                String::from_utf8_lossy(&buf)
            )
        });
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{request_line}: bad status line in {head:?}"));
    assert!(
        status < 500,
        "{request_line}: server error {status}: {head}"
    );
    Ok((status, buf[split + 4..].to_vec()))
}

/// The `code`s of an OCI error body given as bytes (empty if it is not one).
pub fn codes_of(body: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v["errors"].as_array().map(|a| {
                a.iter()
                    .filter_map(|e| e["code"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// `len` deterministic pseudo-random bytes for `seed` (xorshift64*).
pub fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    if x == 0 {
        x = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `sha512:<hex>` of `data`.
pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(Sha512::digest(data)))
}

/// The spec's chunk range `start-end` (inclusive, no unit) of `len` bytes at `start`.
pub fn content_range(start: u64, len: usize) -> String {
    format!("{start}-{}", start + len as u64 - 1)
}

/// The `Content-Type` of an answer without parameters.
pub fn content_type(r: &Resp) -> &str {
    r.must_header("content-type")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
}

/// A descriptor of `data` as `media_type`.
pub fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// An OCI image manifest.
pub fn oci_manifest(config: Value, layers: Vec<Value>) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
    })
}

/// An OCI image index.
pub fn oci_index(manifests: Vec<Value>) -> Value {
    json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests })
}

/// Manifest bytes as a client might send them: pretty-printed with a trailing newline, so a
/// registry that re-serialises instead of storing the exact bytes is caught.
pub fn manifest_bytes(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(v).expect("serialise manifest");
    b.push(b'\n');
    b
}

/// Collects a paginated list (`tags` or `repositories`) by following `Link` headers from
/// `first`; returns the entries and the number of pages.
pub async fn collect_pages(api: &Api, first: &str, field: &str) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        pages += 1;
        assert!(
            pages <= 1000,
            "more than 1000 pages following Link from {first}"
        );
        let r = api.get(&url).await;
        r.expect(200);
        let v = r.json();
        if let Some(items) = v[field].as_array() {
            out.extend(
                items
                    .iter()
                    .map(|t| t.as_str().expect("string entry").to_owned()),
            );
        } else {
            assert!(
                v[field].is_null(),
                "{}: `{field}` is neither a list nor null",
                r.what
            );
        }
        next = r.next_link();
    }
    (out, pages)
}
