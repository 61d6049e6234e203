//! The HTTP side of the benchmark: OCI distribution-spec pushes (monolithic POST + PUT, and
//! chunked POST + PATCH… + PUT), streamed blob GETs, and a small image to load manifest GETs on.
//!
//! Bodies are generated on the fly (see `data`) and blob GET bodies are counted, not hashed, by a
//! bare HTTP/1.1 reader, so the client's share of the two cores is as small as it can be and the
//! figures measure the server.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Body, Client, Response, StatusCode};

use super::data::{PIECE, body_stream, small_blob};
use super::limits::{ShaImpl, digest_of};

/// `Accept` for manifest GETs: what docker and containerd send.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

const OCTET_STREAM: &str = "application/octet-stream";

/// The HTTP client: HTTP/1.1 keep-alive, no proxies, no timeouts that a slow 1 GiB push could hit.
pub fn new_client() -> anyhow::Result<Client> {
    flotilla_node::gateway_http::client_builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4)
        .build()
        .context("building the HTTP client")
}

/// A blob to push: `size` bytes of generator stream `seed`, and its digest.
#[derive(Debug, Clone)]
pub struct BlobSpec {
    /// Generator seed.
    pub seed: u64,
    /// Length in bytes.
    pub size: u64,
    /// `sha256:<hex>`.
    pub digest: String,
}

/// Fails with the server's answer unless `resp` has status `want`.
async fn expect(resp: Response, want: StatusCode, what: &str) -> anyhow::Result<Response> {
    if resp.status() == want {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(400).collect();
    bail!("{what}: expected {want}, got {status}: {body}")
}

/// The absolute URL of an upload session from a `Location` header (which may be relative).
fn location(base: &str, resp: &Response, what: &str) -> anyhow::Result<String> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .with_context(|| format!("{what}: no Location header"))?;
    Ok(
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_owned()
        } else {
            format!("{base}{loc}")
        },
    )
}

fn with_digest(url: &str, digest: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}digest={digest}")
}

async fn start_upload(client: &Client, base: &str, repo: &str) -> anyhow::Result<String> {
    let resp = client
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .context("POST upload")?;
    let resp = expect(resp, StatusCode::ACCEPTED, "POST /blobs/uploads/").await?;
    location(base, &resp, "POST /blobs/uploads/")
}

/// One timed transfer.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// From the first request to the last response (push) or the last byte (GET).
    pub total: Duration,
    /// Push: time the server took to answer after the last body byte was handed to the socket,
    /// summed over the requests (fsync, rename, metadata). GET: time to the first response byte.
    pub wait: Duration,
}

/// A request body of bytes `start..start + len` of `blob` that records when its last piece was
/// handed over (hyper stops polling a body once `Content-Length` bytes are out, so the end is
/// recognised by the count, not by the end of the stream).
fn timed_body(blob: &BlobSpec, start: u64, len: u64) -> (Body, Arc<OnceLock<Instant>>) {
    let sent = Arc::new(OnceLock::new());
    let mark = Arc::clone(&sent);
    let mut left = len;
    let stream = body_stream(blob.seed, start, len).inspect(move |piece| {
        if let Ok(piece) = piece {
            left = left.saturating_sub(piece.len() as u64);
            if left == 0 {
                let _ = mark.set(Instant::now());
            }
        }
    });
    (Body::wrap_stream(stream), sent)
}

/// The time from when `sent` was marked until now (zero if the body was never finished).
fn since_sent(sent: &OnceLock<Instant>) -> Duration {
    sent.get().map_or(Duration::ZERO, |t| t.elapsed())
}

/// Monolithic push: POST to open a session, then one PUT `?digest=` carrying the whole blob as
/// a streamed body with a `Content-Length`. Times the POST to the PUT's 201.
pub async fn push_monolithic(
    client: &Client,
    base: &str,
    repo: &str,
    blob: &BlobSpec,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let url = start_upload(client, base, repo).await?;
    let (body, sent) = timed_body(blob, 0, blob.size);
    let resp = client
        .put(with_digest(&url, &blob.digest))
        .header(CONTENT_TYPE, OCTET_STREAM)
        .header(CONTENT_LENGTH, blob.size)
        .body(body)
        .send()
        .await
        .context("PUT blob")?;
    let wait = since_sent(&sent);
    expect(resp, StatusCode::CREATED, "PUT blob (monolithic)").await?;
    Ok(Sample {
        total: start.elapsed(),
        wait,
    })
}

/// Chunked push: POST, then one PATCH per `chunk` bytes with `Content-Range`, following each
/// returned `Location`, then an empty PUT `?digest=`. Times the POST to the 201.
pub async fn push_chunked(
    client: &Client,
    base: &str,
    repo: &str,
    blob: &BlobSpec,
    chunk: u64,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let mut url = start_upload(client, base, repo).await?;
    let mut offset = 0u64;
    let mut wait = Duration::ZERO;
    while offset < blob.size {
        let len = chunk.min(blob.size - offset);
        let (body, sent) = timed_body(blob, offset, len);
        let resp = client
            .patch(&url)
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_LENGTH, len)
            .header(CONTENT_RANGE, format!("{}-{}", offset, offset + len - 1))
            .body(body)
            .send()
            .await
            .context("PATCH chunk")?;
        wait += since_sent(&sent);
        let resp = expect(resp, StatusCode::ACCEPTED, "PATCH chunk").await?;
        url = location(base, &resp, "PATCH chunk")?;
        offset += len;
    }
    let put_start = Instant::now();
    let resp = client
        .put(with_digest(&url, &blob.digest))
        .header(CONTENT_LENGTH, 0)
        .send()
        .await
        .context("PUT (close chunked upload)")?;
    wait += put_start.elapsed();
    expect(resp, StatusCode::CREATED, "PUT (close chunked upload)").await?;
    Ok(Sample {
        total: start.elapsed(),
        wait,
    })
}

/// GET a blob and count its body, over a bare HTTP/1.1 connection read with the same
/// [`PIECE`]-sized buffer as the plain TCP probe, so that `blob GET / plain TCP` compares the
/// servers against an identical receiver (a full HTTP client costs as much CPU as the server
/// here and would share the two cores with it). Fails unless the status is 200, exactly
/// `Content-Length` = `blob.size` bytes arrive, and any `Docker-Content-Digest` names the blob.
/// Blocking: call it from `spawn_blocking`. Times the connect to the last byte.
pub fn get_blob(base: &str, repo: &str, blob: &BlobSpec) -> anyhow::Result<Sample> {
    let host = base
        .strip_prefix("http://")
        .with_context(|| format!("{base} is not an http:// URL"))?;
    let start = Instant::now();
    let mut sock = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    sock.set_nodelay(true)?;
    let request = format!(
        "GET /v2/{repo}/blobs/{} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        blob.digest
    );
    sock.write_all(request.as_bytes())?;
    let mut buf = vec![0u8; PIECE];
    let mut filled = 0;
    let mut first_byte = None;
    let head_len = loop {
        let n = sock
            .read(&mut buf[filled..])
            .context("reading response head")?;
        first_byte.get_or_insert_with(|| start.elapsed());
        if n == 0 {
            bail!("GET blob: connection closed before the response head");
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            bail!("GET blob: response head larger than {PIECE} bytes");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("GET blob: expected 200, got {status:?}");
    }
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("docker-content-digest") && value != blob.digest {
            bail!(
                "GET blob: Docker-Content-Digest {value} is not {}",
                blob.digest
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!(
                "GET blob: answered with Transfer-Encoding {value}; a blob GET must carry Content-Length"
            );
        }
    }
    let length = length.context("GET blob: no Content-Length")?;
    if length != blob.size {
        bail!("GET blob: Content-Length {length}, expected {}", blob.size);
    }
    let mut got = (filled - head_len) as u64;
    while got < length {
        let n = sock.read(&mut buf).context("reading blob body")?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let total = start.elapsed();
    if got != length {
        bail!("GET blob returned {got} bytes, expected {length}");
    }
    Ok(Sample {
        total,
        wait: first_byte.unwrap_or(total),
    })
}

/// Pushes a small blob from memory (POST + PUT) and returns its digest.
async fn push_small(
    client: &Client,
    base: &str,
    repo: &str,
    data: Vec<u8>,
) -> anyhow::Result<String> {
    let digest = digest_of(ShaImpl::AwsLc, &data);
    let url = start_upload(client, base, repo).await?;
    let resp = client
        .put(with_digest(&url, &digest))
        .header(CONTENT_TYPE, OCTET_STREAM)
        .body(data)
        .send()
        .await
        .context("PUT small blob")?;
    expect(resp, StatusCode::CREATED, "PUT small blob").await?;
    Ok(digest)
}

/// Pushes a one-layer OCI image (config + 4 KiB layer + manifest) as `<repo>:<tag>` and returns
/// the manifest's size in bytes, after checking that a GET with [`MANIFEST_ACCEPT`] returns it.
pub async fn push_image(
    client: &Client,
    base: &str,
    repo: &str,
    tag: &str,
) -> anyhow::Result<usize> {
    let layer = small_blob(42, 4096);
    let layer_len = layer.len();
    let layer_digest = push_small(client, base, repo, layer).await?;
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#
    )
    .into_bytes();
    let config_len = config.len();
    let config_digest = push_small(client, base, repo, config).await?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_digest}","size":{layer_len}}}]}}"#
    );
    let len = manifest.len();
    let url = format!("{base}/v2/{repo}/manifests/{tag}");
    let resp = client
        .put(&url)
        .header(CONTENT_TYPE, "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .context("PUT manifest")?;
    expect(resp, StatusCode::CREATED, "PUT manifest").await?;
    let resp = client
        .get(&url)
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .context("GET manifest")?;
    let resp = expect(resp, StatusCode::OK, "GET manifest").await?;
    let body = resp.bytes().await.context("reading manifest")?;
    if body.as_ref() != manifest.as_bytes() {
        bail!("GET manifest returned different bytes than were pushed");
    }
    Ok(len)
}
