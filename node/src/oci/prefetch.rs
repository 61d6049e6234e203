//! `POST /flotilla/v1/prefetch`: fetch an image's blobs, or one blob, into this node's store
//! before anyone pulls them — the hosts of a rolling update warmed ahead of their restart, an
//! edge site filled before its WAN goes down — and, if asked, pin them (never evicted).
//!
//! The body is JSON, one of
//! - `{"image": "<name>[:<tag>|@<digest>]", "platform": "<os>/<arch>[/<variant>]" | "all", "pin": bool}`
//! - `{"blob": "<digest>", "pin": bool}`
//!
//! The image's manifest is resolved as a client's pull through this node is
//! (`oci/manifests.rs`: from the gateway, else from tag records and kept manifests), so it is
//! kept for pulls while the gateway is unreachable too. An index is narrowed to `platform`
//! (default this host's, `linux/<GOARCH>`; `all` takes every entry), and every config and
//! layer blob is fetched through the swarm as a pull would fetch it, [`PARALLEL`] at a time like
//! docker, and at most [`MAX_BLOBS`] for all prefetches on the node together. The answer comes once every blob is held: `200` and a JSON report of what was
//! fetched from where. The prefetch lasts as long as its request: a client that goes away
//! cancels the blobs not yet held (their verified pieces stay, and the next prefetch or pull
//! resumes from them). Errors are the registry's (`404 MANIFEST_UNKNOWN` for an unknown tag or a
//! platform the index lacks, the blob errors of a pull, `400` for a malformed request).
//!
//! A prefetch starts downloads and may pin blobs, disk that eviction cannot take back, so it
//! is not taken from just anyone that reaches the endpoint: a caller on this host (its TCP peer
//! a loopback address) may, and one elsewhere only with the fleet token as a bearer token
//! (`401 UNAUTHORIZED` without it or with another; `403 DENIED` when the node has no token to
//! check against). Pulls stay open to every client that reaches the endpoint, as a registry
//! mirror's are.

use std::collections::HashSet;
use std::fmt;
use std::time::Instant;

use axum::Json;
use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flotilla_protocol::manifest::{Descriptor, ParsedManifest, media_type, parse_manifest};
use flotilla_protocol::{Digest, Reference, ReferenceError, RepoName, Tag};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{OciError, OciState, manifests, reference_error};
use crate::tags::MAX_MANIFEST_BYTES;

/// Largest request body.
const MAX_BODY: usize = 64 * 1024;
/// Blobs of one prefetch fetched at once (docker pulls three layers at a time).
pub const PARALLEL: usize = 3;
/// Blobs of all prefetches fetched at once on a node: a script warming many images at once
/// queues here instead of starting a download (and its sessions and buffers) per blob.
pub const MAX_BLOBS: usize = 6;
/// Most manifests one prefetch follows (an index, its children, theirs).
const MAX_MANIFESTS: usize = 256;

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    image: Option<String>,
    blob: Option<String>,
    platform: Option<String>,
    #[serde(default)]
    pin: bool,
}

/// The answer: what was fetched, blob by blob.
#[derive(Debug, Serialize)]
struct Report {
    /// `<name>:<tag>` or `<name>@<digest>` as resolved; absent for a single blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    /// The platform an index was narrowed to (`all`: not narrowed); absent for a single blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    /// Digests of the manifests read, the named one first.
    manifests: Vec<Digest>,
    blobs: Vec<BlobReport>,
    /// Size of every blob together.
    bytes: u64,
    /// Bytes received for them now (peers and the gateway; 0 when all were held already).
    fetched_bytes: u64,
    seconds: f64,
    pinned: bool,
}

#[derive(Debug, Serialize)]
struct BlobReport {
    digest: Digest,
    size: u64,
    /// Whether the node held all of it before this prefetch.
    held_before: bool,
    /// What the download this prefetch started or joined received, by source.
    peer_bytes: u64,
    origin_bytes: u64,
    wasted_bytes: u64,
    seconds: f64,
}

/// Which entries of an index to take.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Platform {
    All,
    One {
        os: String,
        arch: String,
        variant: Option<String>,
    },
}

impl Platform {
    /// This host's platform, in the GOOS/GOARCH terms images use.
    fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform::One {
            os: "linux".to_owned(),
            arch: arch.to_owned(),
            variant: None,
        }
    }

    fn parse(s: &str) -> Option<Platform> {
        if s == "all" {
            return Some(Platform::All);
        }
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = match parts.next() {
            Some(v) if !v.is_empty() => Some(v.to_owned()),
            Some(_) => return None,
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Platform::One {
            os: os.to_owned(),
            arch: arch.to_owned(),
            variant,
        })
    }

    /// Whether an index entry's `platform` is this one. Without a variant asked for, any
    /// variant of the architecture matches; arm64 without one is `v8`.
    fn matches(&self, platform: Option<&Value>) -> bool {
        let Platform::One { os, arch, variant } = self else {
            return true;
        };
        let Some(p) = platform else {
            return false;
        };
        let field = |name: &str| p.get(name).and_then(Value::as_str);
        if field("os") != Some(os) || field("architecture") != Some(arch) {
            return false;
        }
        match variant {
            None => true,
            Some(want) => {
                let have = field("variant").or((arch == "arm64").then_some("v8"));
                have == Some(want.as_str())
            }
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Platform::All => f.write_str("all"),
            Platform::One {
                os,
                arch,
                variant: None,
            } => write!(f, "{os}/{arch}"),
            Platform::One {
                os,
                arch,
                variant: Some(v),
            } => write!(f, "{os}/{arch}/{v}"),
        }
    }
}

/// `<name>[:<tag>|@<digest>]`, with a leading registry host (`localhost:5000/`,
/// `registry.example/`) dropped as docker reads it; no tag means `latest`.
fn parse_image(s: &str) -> Result<(RepoName, Reference), OciError> {
    let s = match s.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => s,
    };
    let (name, reference) = if let Some((name, digest)) = s.split_once('@') {
        let d: Digest = digest
            .parse()
            .map_err(|e| reference_error(&ReferenceError::BadDigest(e)))?;
        (name, Reference::Digest(d))
    } else {
        let slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, "latest"),
        };
        let tag: Tag = tag.parse().map_err(|e| reference_error(&e))?;
        (name, Reference::Tag(tag))
    };
    let name: RepoName = name.parse().map_err(|e| reference_error(&e))?;
    Ok((name, reference))
}

pub(super) fn malformed(detail: impl Into<String>) -> OciError {
    OciError::new(
        StatusCode::BAD_REQUEST,
        "UNSUPPORTED",
        "malformed prefetch request",
    )
    .detail(detail)
}

/// The JSON body of a `POST` to the prefetch or unpin route (`what`), once [`admit`] let its
/// caller in; the answer to send instead if not.
pub(super) async fn admitted_body<T: serde::de::DeserializeOwned>(
    st: &OciState,
    req: Request,
    what: &str,
) -> Result<T, Response> {
    if req.method() != Method::POST {
        return Err(super::method_not_allowed("POST"));
    }
    if let Err(e) = admit(st, &req) {
        let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>();
        tracing::warn!(peer = ?peer.map(|c| c.0), "{what} from another host refused");
        return Err(e.into_response());
    }
    let body = to_bytes(req.into_body(), MAX_BODY).await.map_err(|e| {
        malformed(format!("body unreadable or over {MAX_BODY} bytes: {e}")).into_response()
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| malformed(format!("body is not the expected JSON: {e}")).into_response())
}

/// Whether `req` may prefetch or unpin (see the module docs). Without the server's
/// `ConnectInfo` the caller counts as another host's.
fn admit(st: &OciState, req: &Request) -> Result<(), OciError> {
    let local = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|c| is_loopback(c.0.ip()));
    if local {
        return Ok(());
    }
    let Some(token) = st.prefetch_token.as_ref() else {
        return Err(OciError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            "this node takes prefetches and unpins from its own host only",
        ));
    };
    if crate::identity::membership::bearer_matches(req.headers(), &token.current()) {
        return Ok(());
    }
    Err(OciError::new(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "a prefetch or unpin from another host needs the fleet token (Authorization: Bearer …)",
    )
    .header(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"flotilla-node\""),
    ))
}

/// A loopback address, IPv4-mapped ones included (a dual-stack listener sees `::ffff:127.0.0.1`).
fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The route's handler (see the module docs).
pub(crate) async fn handle(State(st): State<OciState>, req: Request) -> Response {
    let ask: Ask = match admitted_body(&st, req, "prefetch").await {
        Ok(a) => a,
        Err(res) => return res,
    };
    match run(&st, ask).await {
        Ok(report) => {
            tracing::info!(
                image = report.image.as_deref().unwrap_or(""),
                blobs = report.blobs.len(),
                bytes = report.bytes,
                fetched_bytes = report.fetched_bytes,
                seconds = report.seconds,
                pinned = report.pinned,
                "prefetched"
            );
            Json(report).into_response()
        }
        Err(res) => res,
    }
}

/// What a prefetch or an unpin names, resolved: the image as read (absent for a blob), the
/// platform it was narrowed to, the manifests read, and the blobs with their manifest sizes.
pub(super) struct Targets {
    pub image: Option<String>,
    pub platform: Option<String>,
    pub manifests: Vec<Digest>,
    pub blobs: Vec<(Digest, Option<u64>)>,
}

/// Resolves exactly one of `image` (narrowed to `platform`) and `blob` (see the module docs).
pub(super) async fn targets(
    st: &OciState,
    image: Option<String>,
    blob: Option<String>,
    platform: Option<String>,
) -> Result<Targets, Response> {
    match (image, blob) {
        (Some(image), None) => {
            let (repo, reference) = parse_image(&image).map_err(IntoResponse::into_response)?;
            let platform = match platform.as_deref() {
                None => Platform::host(),
                Some(p) => Platform::parse(p).ok_or_else(|| {
                    malformed(format!(
                        "platform {p:?} is not <os>/<arch>[/<variant>] or \"all\""
                    ))
                    .into_response()
                })?,
            };
            let (manifests, blobs) = resolve(st, &repo, &reference, &platform).await?;
            let sep = if matches!(reference, Reference::Digest(_)) {
                '@'
            } else {
                ':'
            };
            Ok(Targets {
                image: Some(format!("{repo}{sep}{reference}")),
                platform: Some(platform.to_string()),
                manifests,
                blobs,
            })
        }
        (None, Some(blob)) => {
            if platform.is_some() {
                return Err(malformed("platform applies to an image, not a blob").into_response());
            }
            let digest: Digest = blob
                .parse()
                .map_err(|e| reference_error(&ReferenceError::BadDigest(e)).into_response())?;
            Ok(Targets {
                image: None,
                platform: None,
                manifests: Vec::new(),
                blobs: vec![(digest, None)],
            })
        }
        _ => Err(malformed("give exactly one of \"image\" and \"blob\"").into_response()),
    }
}

async fn run(st: &OciState, ask: Ask) -> Result<Report, Response> {
    let start = Instant::now();
    if ask.pin && st.pin.is_none() {
        return Err(malformed("this node cannot pin").into_response());
    }
    let Targets {
        image,
        platform,
        manifests,
        blobs,
    } = targets(st, ask.image, ask.blob, ask.platform).await?;
    let pin = ask.pin;
    let reports: Vec<BlobReport> = futures::stream::iter(blobs)
        .map(|(digest, size)| fetch_blob(st, digest, size, pin))
        .buffered(PARALLEL)
        .try_collect()
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Report {
        image,
        platform,
        manifests,
        bytes: reports.iter().map(|b| b.size).sum(),
        fetched_bytes: reports.iter().map(|b| b.peer_bytes + b.origin_bytes).sum(),
        blobs: reports,
        seconds: start.elapsed().as_secs_f64(),
        pinned: pin,
    })
}

/// The manifests read (the named one first) and the blobs to fetch with their sizes, each
/// once, in manifest order.
async fn resolve(
    st: &OciState,
    repo: &RepoName,
    reference: &Reference,
    platform: &Platform,
) -> Result<(Vec<Digest>, Vec<(Digest, Option<u64>)>), Response> {
    let mut read = Vec::new();
    let mut blobs = Vec::new();
    let mut seen = HashSet::new();
    let mut queued = HashSet::new();
    let mut queue = vec![reference.clone()];
    while let Some(next) = queue.pop() {
        if read.len() >= MAX_MANIFESTS {
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "manifest invalid",
            )
            .detail(format!("the image names over {MAX_MANIFESTS} manifests"))
            .into_response());
        }
        let m = manifest(st, repo, &next).await?;
        read.push(m.digest.clone());
        let children: Vec<&Descriptor> = if media_type::is_index(&m.media_type) {
            let wanted: Vec<&Descriptor> = m
                .manifests
                .iter()
                .filter(|d| platform.matches(d.platform.as_ref()))
                .collect();
            if wanted.is_empty() {
                let offered: Vec<String> = m
                    .manifests
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(describe))
                    .collect();
                return Err(OciError::new(
                    StatusCode::NOT_FOUND,
                    "MANIFEST_UNKNOWN",
                    "manifest unknown",
                )
                .detail(format!(
                    "{repo}@{} has no manifest for platform {platform} (it has: {})",
                    m.digest,
                    offered.join(", ")
                ))
                .into_response());
            }
            wanted
        } else {
            Vec::new()
        };
        // Children are read in index order (the queue is a stack), each once.
        let fresh: Vec<&Descriptor> = children
            .into_iter()
            .filter(|d| queued.insert(d.digest.clone()))
            .collect();
        for d in fresh.into_iter().rev() {
            queue.push(Reference::Digest(d.digest.clone()));
        }
        for b in &m.blobs {
            if seen.insert(b.digest.clone()) {
                blobs.push((b.digest.clone(), Some(b.size)));
            }
        }
    }
    Ok((read, blobs))
}

/// `os/arch[/variant]` of an index entry's platform, for error messages.
fn describe(p: &Value) -> String {
    let f = |n: &str| p.get(n).and_then(Value::as_str).unwrap_or("?");
    match p.get("variant").and_then(Value::as_str) {
        Some(v) => format!("{}/{}/{v}", f("os"), f("architecture")),
        None => format!("{}/{}", f("os"), f("architecture")),
    }
}

/// One manifest, through the endpoint's own manifest path.
async fn manifest(
    st: &OciState,
    repo: &RepoName,
    reference: &Reference,
) -> Result<ParsedManifest, Response> {
    let (parts, ()) = axum::http::Request::builder()
        .method(Method::GET)
        .uri(format!("/v2/{repo}/manifests/{reference}"))
        .header(header::ACCEPT, media_type::ACCEPTED.join(", "))
        .body(())
        .map_err(|e| malformed(e.to_string()).into_response())?
        .into_parts();
    let res = manifests::manifest(st, &parts, repo, reference)
        .await
        .map_err(IntoResponse::into_response)?;
    if res.status() != StatusCode::OK {
        // The gateway's own error (MANIFEST_UNKNOWN, NAME_UNKNOWN, DENIED …), passed on.
        return Err(res);
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = to_bytes(res.into_body(), MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| {
            super::unavailable("the manifest could not be read")
                .detail(format!("{repo}:{reference}: {e}"))
                .into_response()
        })?;
    let bad = |detail: String| {
        OciError::new(
            StatusCode::BAD_GATEWAY,
            "MANIFEST_INVALID",
            "manifest invalid",
        )
        .detail(detail)
        .into_response()
    };
    let parsed = parse_manifest(content_type.as_deref(), &body)
        .map_err(|e| bad(format!("{repo}:{reference}: {e}")))?;
    if let Reference::Digest(d) = reference
        && *d != parsed.digest
    {
        return Err(bad(format!(
            "{repo}@{d} answered a manifest whose digest is {}",
            parsed.digest
        )));
    }
    Ok(parsed)
}

/// Fetches one blob whole (or finds it held), then pins it if asked.
async fn fetch_blob(
    st: &OciState,
    digest: Digest,
    size: Option<u64>,
    pin: bool,
) -> Result<BlobReport, OciError> {
    let _slot = st.prefetch_slots.acquire().await.map_err(|_| {
        OciError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the node is shutting down",
        )
    })?;
    let start = Instant::now();
    let download = st.fetcher.open(&digest).await?;
    let actual = download.table.table.size;
    if size.is_some_and(|s| s != actual) {
        return Err(OciError::new(
            StatusCode::BAD_GATEWAY,
            "SIZE_INVALID",
            "provided length did not match content length",
        )
        .detail(format!(
            "the manifest gives {digest} {} bytes, its piece table {actual}",
            size.unwrap_or_default()
        )));
    }
    let held_before = download.is_complete();
    download.wait_complete().await?;
    let stats = download.stats();
    if pin && let Some(pinner) = &st.pin {
        // The download's lease keeps the blob until here, so "not held" means it went since.
        let pinned = pinner(digest.clone(), true)
            .await
            .and_then(|held| held.ok_or_else(|| "it is no longer held".to_owned()));
        if let Err(e) = pinned {
            tracing::error!(%digest, error = %e, "cannot pin a prefetched blob");
            return Err(OciError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "the blob was fetched but cannot be pinned",
            )
            .detail(e));
        }
    }
    Ok(BlobReport {
        digest,
        size: actual,
        held_before,
        peer_bytes: stats.peer_bytes,
        origin_bytes: stats.origin_bytes,
        wasted_bytes: stats.wasted_bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_parse_as_docker_reads_them() {
        let ok = |s: &str| {
            let (n, r) = parse_image(s).unwrap();
            format!("{n} {r}")
        };
        assert_eq!(ok("alpine"), "alpine latest");
        assert_eq!(ok("team/app:v1.2"), "team/app v1.2");
        assert_eq!(ok("localhost:5000/team/app:v1"), "team/app v1");
        assert_eq!(ok("registry.example/app"), "app latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(ok(&format!("team/app@{d}")), format!("team/app {d}"));
        let code = |s: &str| parse_image(s).unwrap_err().code;
        assert_eq!(code("Team/App:v1"), "NAME_INVALID");
        assert_eq!(code("app:-bad"), "TAG_INVALID");
        assert_eq!(code("app@sha256:abc"), "DIGEST_INVALID");
    }

    #[test]
    fn platforms_parse_and_match() {
        assert_eq!(Platform::parse("all"), Some(Platform::All));
        assert_eq!(Platform::parse("linux"), None);
        assert_eq!(Platform::parse("linux/"), None);
        assert_eq!(Platform::parse("linux/arm/v7/x"), None);
        let arm64 = Platform::parse("linux/arm64").unwrap();
        let v8 = Platform::parse("linux/arm64/v8").unwrap();
        let v7 = Platform::parse("linux/arm/v7").unwrap();
        let entry = json!({"os": "linux", "architecture": "arm64"});
        assert!(arm64.matches(Some(&entry)));
        assert!(v8.matches(Some(&entry)), "arm64 without a variant is v8");
        assert!(!v7.matches(Some(&entry)));
        let arm = json!({"os": "linux", "architecture": "arm", "variant": "v6"});
        assert!(!v7.matches(Some(&arm)));
        assert!(Platform::parse("linux/arm").unwrap().matches(Some(&arm)));
        assert!(
            !arm64.matches(None),
            "an entry without a platform is no platform's"
        );
        assert!(Platform::All.matches(None));
        assert_eq!(v7.to_string(), "linux/arm/v7");
        assert!(matches!(Platform::host(), Platform::One { os, .. } if os == "linux"));
    }
}
