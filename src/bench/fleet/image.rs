//! The image a fleet run distributes: layers of pseudo-random bytes (generated on the fly, never
//! held whole), a small JSON config and an OCI manifest; pushing it to the gateway, and pulling
//! it through any OCI endpoint (a node's, or the gateway's own `/v2`) the way a container engine
//! does: manifest by tag, then every blob, a few at a time, each checked as it streams.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Client, StatusCode};
use serde_json::json;

use crate::bench::client::{self, BlobSpec, MANIFEST_ACCEPT};
use crate::bench::data::fill;
use crate::bench::limits::{Sha256, ShaImpl, digest_of, digest_of_blob};

const OCTET_STREAM: &str = "application/octet-stream";
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// With [`Verify::Sample`], bytes compared at each sample point.
const SAMPLE_LEN: usize = 32;
/// With [`Verify::Sample`], distance between sample points (each chunk's first bytes are
/// checked as well, so a chunk from the wrong offset is caught wherever it starts).
const SAMPLE_EVERY: u64 = 64 << 10;

/// What a blob holds.
#[derive(Debug, Clone)]
pub enum Content {
    /// The generator stream `seed` (see `bench/data.rs`).
    Generated {
        /// Generator seed.
        seed: u64,
    },
    /// A small payload kept in memory (the config).
    Inline(Vec<u8>),
}

/// One blob of the image.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// Its bytes.
    pub content: Content,
}

/// How a pulled blob is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Verify {
    /// SHA-256 of every byte, compared with the digest (what docker and containerd do).
    Sha256,
    /// The length, and 32 bytes at every 64 KiB and at the start of every chunk received,
    /// compared with the generator: catches misplaced, truncated or foreign data for almost no
    /// CPU (the node itself verifies every piece against the gateway-signed piece table).
    Sample,
}

impl Verify {
    /// For tables.
    pub fn describe(self) -> &'static str {
        match self {
            Verify::Sha256 => "SHA-256 of every blob",
            Verify::Sample => "length + 32 B every 64 KiB compared with the generator",
        }
    }
}

/// An image: config + layers, and the manifest naming them.
#[derive(Debug, Clone)]
pub struct Image {
    /// Repository.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// The manifest's exact bytes.
    pub manifest: Vec<u8>,
    /// Config first, then the layers.
    pub blobs: Vec<Blob>,
}

impl Image {
    /// Sum of the blob sizes (config + layers): what a pull moves besides the manifest.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.size).sum()
    }
}

/// `count` layers of generated data adding up to `size` bytes (the last takes the remainder),
/// seeds from `seed`, digests computed by streaming the generator through `sha`. Blocking.
pub fn layers(size: u64, count: u64, seed: u64, sha: ShaImpl) -> Vec<Blob> {
    let count = count.clamp(1, size.max(1));
    let each = size / count;
    (0..count)
        .map(|i| {
            let len = if i + 1 == count {
                size - each * (count - 1)
            } else {
                each
            };
            let seed = seed + i;
            Blob {
                digest: digest_of_blob(sha, seed, len),
                size: len,
                content: Content::Generated { seed },
            }
        })
        .collect()
}

/// The image `repo:tag` of `layers` with a config that lists them.
pub fn build(repo: &str, tag: &str, layers: Vec<Blob>) -> Image {
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let config = Blob {
        digest: digest_of(ShaImpl::AwsLc, &config),
        size: config.len() as u64,
        content: Content::Inline(config),
    };
    let descriptor = |b: &Blob, media_type: &str| json!({"mediaType": media_type, "digest": b.digest, "size": b.size});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(&config, CONFIG_MEDIA_TYPE),
        "layers": layers.iter().map(|l| descriptor(l, LAYER_MEDIA_TYPE)).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let mut blobs = vec![config];
    blobs.extend(layers);
    Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        manifest,
        blobs,
    }
}

/// Pushes one blob: generated ones streamed in a monolithic upload, inline ones from memory.
pub async fn push_blob(http: &Client, base: &str, repo: &str, blob: &Blob) -> anyhow::Result<()> {
    match &blob.content {
        Content::Generated { seed } => {
            let spec = BlobSpec {
                seed: *seed,
                size: blob.size,
                digest: blob.digest.clone(),
            };
            client::push_monolithic(http, base, repo, &spec).await?;
        }
        Content::Inline(data) => {
            let resp = http
                .post(format!("{base}/v2/{repo}/blobs/uploads/"))
                .header(CONTENT_LENGTH, 0)
                .send()
                .await
                .context("POST upload")?;
            if resp.status() != StatusCode::ACCEPTED {
                bail!("POST /blobs/uploads/: {}", resp.status());
            }
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .context("POST /blobs/uploads/: no Location")?;
            let url = if loc.starts_with("http") {
                loc.to_owned()
            } else {
                format!("{base}{loc}")
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let resp = http
                .put(format!("{url}{sep}digest={}", blob.digest))
                .header(CONTENT_TYPE, OCTET_STREAM)
                .body(data.clone())
                .send()
                .await
                .context("PUT config")?;
            if resp.status() != StatusCode::CREATED {
                bail!("PUT config: {}", resp.status());
            }
        }
    }
    Ok(())
}

/// Pushes every blob, then the manifest.
pub async fn push(http: &Client, base: &str, image: &Image) -> anyhow::Result<()> {
    for blob in &image.blobs {
        push_blob(http, base, &image.repo, blob)
            .await
            .with_context(|| format!("pushing {}", blob.digest))?;
    }
    let resp = http
        .put(format!("{base}/v2/{}/manifests/{}", image.repo, image.tag))
        .header(CONTENT_TYPE, MANIFEST_MEDIA_TYPE)
        .body(image.manifest.clone())
        .send()
        .await
        .context("PUT manifest")?;
    if resp.status() != StatusCode::CREATED {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        bail!("PUT manifest: {status}: {body}");
    }
    Ok(())
}

/// Checks a blob's bytes as they arrive.
struct Checker<'a> {
    blob: &'a Blob,
    verify: Verify,
    offset: u64,
    sha: Option<Sha256>,
    scratch: [u8; SAMPLE_LEN],
}

impl<'a> Checker<'a> {
    fn new(blob: &'a Blob, verify: Verify) -> Self {
        Checker {
            blob,
            verify,
            offset: 0,
            sha: (verify == Verify::Sha256).then(|| Sha256::new(ShaImpl::AwsLc)),
            scratch: [0; SAMPLE_LEN],
        }
    }

    fn update(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        let end = self.offset + chunk.len() as u64;
        if end > self.blob.size {
            bail!("more than the blob's {} bytes", self.blob.size);
        }
        match (self.verify, &self.blob.content) {
            (Verify::Sha256, _) => {
                if let Some(h) = &mut self.sha {
                    h.update(chunk);
                }
            }
            (Verify::Sample, Content::Inline(data)) => {
                let start = self.offset as usize;
                if data.get(start..start + chunk.len()) != Some(chunk) {
                    bail!("bytes at offset {start} differ from what was pushed");
                }
            }
            (Verify::Sample, Content::Generated { seed }) => {
                let mut at = self.offset;
                while at < end {
                    let n = (end - at).min(SAMPLE_LEN as u64) as usize;
                    fill(*seed, at, &mut self.scratch[..n]);
                    let i = (at - self.offset) as usize;
                    if chunk[i..i + n] != self.scratch[..n] {
                        bail!("bytes at offset {at} differ from what was pushed");
                    }
                    at = (at / SAMPLE_EVERY + 1) * SAMPLE_EVERY;
                }
            }
        }
        self.offset = end;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.offset != self.blob.size {
            bail!(
                "body ended after {} of {} bytes",
                self.offset,
                self.blob.size
            );
        }
        if let Some(h) = self.sha {
            let got = h.finish();
            if got != self.blob.digest {
                bail!("SHA-256 of the body is {got}");
            }
        }
        Ok(())
    }
}

/// What a pull needs besides the endpoint.
#[derive(Clone, Copy)]
pub struct PullOptions<'a> {
    /// How blobs are checked.
    pub verify: Verify,
    /// Blobs fetched at once (docker's `max-concurrent-downloads` is 3).
    pub parallel: usize,
    /// A blob that delivers no byte for this long fails.
    pub stall: Duration,
    /// Every body byte received is added here (for progress lines).
    pub received: &'a AtomicU64,
}

/// `GET /v2/<repo>/blobs/<digest>` from `base`, checked as it streams; how long the first body
/// byte took from the request (the whole time for an empty blob).
pub async fn get_blob(
    http: &Client,
    base: &str,
    repo: &str,
    blob: &Blob,
    opts: PullOptions<'_>,
) -> anyhow::Result<Duration> {
    let start = std::time::Instant::now();
    let mut first_byte = None;
    let url = format!("{base}/v2/{repo}/blobs/{}", blob.digest);
    let mut resp = tokio::time::timeout(opts.stall, http.get(&url).send())
        .await
        .with_context(|| format!("GET {url}: no answer in {:?}", opts.stall))?
        .with_context(|| format!("GET {url}"))?;
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        let body: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(400)
            .collect();
        bail!("GET {url}: {status}: {body}");
    }
    if let Some(len) = resp.content_length()
        && len != blob.size
    {
        bail!("GET {url}: Content-Length {len}, expected {}", blob.size);
    }
    let mut check = Checker::new(blob, opts.verify);
    loop {
        let chunk = tokio::time::timeout(opts.stall, resp.chunk())
            .await
            .with_context(|| {
                format!(
                    "GET {url}: no byte for {:?} after {} of {} bytes",
                    opts.stall, check.offset, blob.size
                )
            })?
            .with_context(|| {
                format!(
                    "GET {url}: body broke after {} of {} bytes",
                    check.offset, blob.size
                )
            })?;
        let Some(chunk) = chunk else { break };
        first_byte.get_or_insert_with(|| start.elapsed());
        opts.received
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        check.update(&chunk).with_context(|| format!("GET {url}"))?;
    }
    check.finish().with_context(|| format!("GET {url}"))?;
    Ok(first_byte.unwrap_or_else(|| start.elapsed()))
}

/// Pulls `image` from `base`: the manifest by tag (it must be the bytes pushed), then every blob,
/// [`PullOptions::parallel`] at a time.
pub async fn pull(
    http: &Client,
    base: &str,
    image: &Image,
    opts: PullOptions<'_>,
) -> anyhow::Result<()> {
    let url = format!("{base}/v2/{}/manifests/{}", image.repo, image.tag);
    let resp = tokio::time::timeout(
        opts.stall,
        http.get(&url).header("accept", MANIFEST_ACCEPT).send(),
    )
    .await
    .with_context(|| format!("GET {url}: no answer in {:?}", opts.stall))?
    .with_context(|| format!("GET {url}"))?;
    if resp.status() != StatusCode::OK {
        bail!("GET {url}: {}", resp.status());
    }
    let body = resp.bytes().await.with_context(|| format!("GET {url}"))?;
    if body.as_ref() != image.manifest.as_slice() {
        bail!("GET {url}: not the manifest that was pushed");
    }
    futures::stream::iter(&image.blobs)
        .map(|b| get_blob(http, base, &image.repo, b, opts))
        .buffer_unordered(opts.parallel.max(1))
        .try_collect::<Vec<Duration>>()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::data::small_blob;

    fn generated(seed: u64, size: u64) -> Blob {
        Blob {
            digest: digest_of_blob(ShaImpl::AwsLc, seed, size),
            size,
            content: Content::Generated { seed },
        }
    }

    fn feed(blob: &Blob, verify: Verify, data: &[u8], cuts: &[usize]) -> anyhow::Result<()> {
        let mut c = Checker::new(blob, verify);
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&data.len())) {
            c.update(&data[from..to])?;
            from = to;
        }
        c.finish()
    }

    #[test]
    fn checkers_accept_the_blob_however_it_is_cut() {
        let size = 3 * SAMPLE_EVERY as usize + 77;
        let blob = generated(5, size as u64);
        let data = small_blob(5, size);
        for verify in [Verify::Sha256, Verify::Sample] {
            feed(&blob, verify, &data, &[]).unwrap();
            feed(&blob, verify, &data, &[1, 40, 65_536, 65_540, 131_071]).unwrap();
        }
    }

    #[test]
    fn checkers_refuse_wrong_short_and_long_bodies() {
        let size = 2 * SAMPLE_EVERY as usize;
        let blob = generated(6, size as u64);
        let data = small_blob(6, size);
        for verify in [Verify::Sha256, Verify::Sample] {
            assert!(feed(&blob, verify, &data[..size - 1], &[]).is_err());
            let mut long = data.clone();
            long.push(0);
            assert!(feed(&blob, verify, &long, &[]).is_err());
        }
        // A sample point (offset 65536) corrupted, and a chunk from the wrong offset.
        let mut bad = data.clone();
        bad[SAMPLE_EVERY as usize] ^= 1;
        assert!(feed(&blob, Verify::Sample, &bad, &[]).is_err());
        assert!(feed(&blob, Verify::Sha256, &bad, &[]).is_err());
        let mut shifted = data.clone();
        shifted[1000..2000].copy_from_slice(&data[3000..4000]);
        assert!(feed(&blob, Verify::Sample, &shifted, &[1000, 2000]).is_err());
    }

    #[test]
    fn layers_add_up_and_the_manifest_names_them() {
        let ls = layers(10_000, 4, 1, ShaImpl::AwsLc);
        assert_eq!(ls.len(), 4);
        assert_eq!(ls.iter().map(|l| l.size).sum::<u64>(), 10_000);
        let image = build("bench/fleet", "latest", ls);
        assert_eq!(image.blobs.len(), 5);
        let parsed =
            flotilla_protocol::manifest::parse_manifest(Some(MANIFEST_MEDIA_TYPE), &image.manifest)
                .unwrap();
        let named: Vec<String> = parsed.blobs.iter().map(|d| d.digest.to_string()).collect();
        let ours: Vec<String> = image.blobs.iter().map(|b| b.digest.clone()).collect();
        assert_eq!(named, ours);
        assert_eq!(image.blob_bytes(), 10_000 + image.blobs[0].size);
    }
}
