//! `HEAD` and `GET /v2/<name>/blobs/<digest>`, from the swarm.
//!
//! `HEAD` needs only the piece table (it gives the size): nothing is downloaded. `GET` opens
//! (or joins) the blob's download and streams the requested bytes in order: for each piece it
//! moves the download's read position there; a piece held whole is read from the store's file
//! in chunks of at most [`CHUNK`] bytes, one positioned read on tokio's blocking pool per chunk
//! (direct where possible: [`crate::direct_io`]); a piece still arriving is read the same way up
//! to what its copy has verified and written (the store's [`PieceSource::arriving`], as the
//! transfer server passes a piece on), each read kept only if that copy still owned the piece
//! after it. So the client gets each block as soon as it is verified — not a piece later —
//! never a byte that was not, and at most two chunks per response are in memory (the one
//! going out and, for a piece held whole, the next one, read meanwhile). If the download
//! fails midway the body ends with an error, so the client sees a broken transfer rather than a
//! short blob.
//!
//! `Range` is honoured for one range (`a-b`, `a-`, `-n`) with 206; several ranges get the whole
//! blob; an unsatisfiable or malformed one gets `416 RANGE_INVALID` with
//! `Content-Range: bytes */<size>`. `If-None-Match` with the blob's ETag (its quoted digest)
//! gets 304.

use std::io;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use flotilla_protocol::Digest;

use super::{CONTENT_DIGEST, OciError, OciState};
use crate::direct_io::{self, AlignedBuf};
use crate::fetch::Download;
use crate::ports::{Arriving, PieceFile, PieceSource};
use flotilla_protocol::piece::Bitfield;
use tokio::sync::watch;

/// Bytes read from the store per chunk.
const CHUNK: u64 = 1 << 20;

type Answer = Result<Response, OciError>;

/// `HEAD`: size and digest from the piece table.
pub(super) async fn head(st: &OciState, digest: &Digest, req: &HeaderMap) -> Answer {
    let table = st.fetcher.table(digest).await?;
    if if_none_match(req, digest) {
        return Ok(not_modified(digest));
    }
    Ok(blob_response(
        StatusCode::OK,
        digest,
        table.table.size,
        Body::empty(),
    ))
}

/// `GET`: the blob, whole or one range, streamed as its pieces verify.
pub(super) async fn get(st: &OciState, digest: &Digest, req: &HeaderMap) -> Answer {
    if if_none_match(req, digest) {
        // The ETag is the digest: only existence has to be checked, not the bytes.
        st.fetcher.table(digest).await?;
        return Ok(not_modified(digest));
    }
    let download = st.fetcher.open(digest).await?;
    let size = download.table.table.size;
    let answer = match req.get(header::RANGE) {
        Some(r) if if_range_allows(req, digest) => match r.to_str() {
            Ok(r) => parse_range(r, size),
            Err(_) => RangeAnswer::Unsatisfiable,
        },
        _ => RangeAnswer::Full,
    };
    match answer {
        RangeAnswer::Full => Ok(blob_response(
            StatusCode::OK,
            digest,
            size,
            body(download, st.source.clone(), 0, size),
        )),
        RangeAnswer::Partial { start, end } => {
            let len = end - start + 1;
            let mut res = blob_response(
                StatusCode::PARTIAL_CONTENT,
                digest,
                len,
                body(download, st.source.clone(), start, end + 1),
            );
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                value(&format!("bytes {start}-{end}/{size}")),
            );
            Ok(res)
        }
        RangeAnswer::Unsatisfiable => Err(OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "RANGE_INVALID",
            "requested range not satisfiable",
        )
        .header(header::CONTENT_RANGE, value(&format!("bytes */{size}")))),
    }
}

fn value(text: &str) -> HeaderValue {
    // Only ever called with ASCII built from numbers and digests.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn etag(digest: &Digest) -> HeaderValue {
    value(&format!("\"{digest}\""))
}

/// The headers of a blob answer, `len` being the bytes of this answer's body.
fn blob_response(status: StatusCode, digest: &Digest, len: u64, body: Body) -> Response {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(CONTENT_DIGEST, value(digest.as_str()));
    h.insert(header::ETAG, etag(digest));
    res
}

fn not_modified(digest: &Digest) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    res.headers_mut().insert(header::ETAG, etag(digest));
    res.headers_mut()
        .insert(CONTENT_DIGEST, value(digest.as_str()));
    res
}

/// Whether `If-None-Match` matches the blob's ETag (weak comparison, RFC 9110).
fn if_none_match(headers: &HeaderMap, digest: &Digest) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| {
            if tag == "*" {
                return true;
            }
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag.strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .is_some_and(|t| t == digest.as_str())
        })
}

/// Whether a `Range` must be honoured given `If-Range` (absent, or our strong ETag).
fn if_range_allows(headers: &HeaderMap, digest: &Digest) -> bool {
    match headers.get(header::IF_RANGE) {
        None => true,
        Some(v) => v.as_bytes() == etag(digest).as_bytes(),
    }
}

pub(crate) use flotilla_protocol::range::{RangeAnswer, parse_range};

/// Streams bytes `pos..end` of the blob, in order, as they verify.
struct Reader {
    download: Download,
    source: Arc<dyn PieceSource>,
    pos: u64,
    end: u64,
    /// The piece being read and where it lies, once it is held whole.
    current: Option<(u32, PieceFile)>,
    /// Which pieces the store offers while they arrive (fetched at the first piece not held).
    offer: Option<watch::Receiver<Bitfield>>,
    /// Pieces read (in part) from a copy still arriving: the client may have all their bytes
    /// before the store holds them.
    unsettled: Vec<u32>,
    /// The read of the next chunk of a held piece, started while the client took the one
    /// before: its blob offset and length, and the read.
    ahead: Option<(u64, u64, tokio::task::JoinHandle<io::Result<Bytes>>)>,
}

impl Reader {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let table = &self.download.table.table;
        let (piece, range) = table
            .piece_at(self.pos)
            .and_then(|p| Some((p, table.piece_range(p)?)))
            .ok_or_else(|| io::Error::other("read past the end of the blob"))?;
        let file = match &self.current {
            Some((p, f)) if *p == piece => f.clone(),
            _ => {
                self.download.set_read_position(piece);
                loop {
                    if self.download.has_piece(piece) {
                        break;
                    }
                    if let Some(arriving) = self.source.arriving(self.download.digest(), piece) {
                        match self.read_arriving(range.clone(), arriving).await? {
                            Some(bytes) => {
                                if self.unsettled.last() != Some(&piece) {
                                    self.unsettled.push(piece);
                                }
                                return Ok(Some(bytes));
                            }
                            // That copy ended, whole or lost: look again.
                            None => continue,
                        }
                    }
                    self.wait_held_or_offered(piece).await?;
                }
                let f = self
                    .source
                    .piece_file(self.download.digest(), piece)
                    .await
                    .map_err(io::Error::other)?;
                self.current = Some((piece, f.clone()));
                f
            }
        };
        let within = self.pos - range.start;
        let n = CHUNK.min(range.end - self.pos).min(self.end - self.pos);
        if within + n > u64::from(file.len) {
            return Err(io::Error::other(format!(
                "piece {piece} on disk is shorter than its table says"
            )));
        }
        let data = match self.ahead.take() {
            Some((at, len, job)) if at == self.pos && len == n => {
                job.await.map_err(io::Error::other)??
            }
            _ => read(file.clone(), within, n).await?,
        };
        self.pos += n;
        // The next chunk of this piece is read while the client takes this one: a direct read
        // waits on the disk, and one at a time the disk's latency and the socket's add up.
        let next = CHUNK.min(range.end - self.pos).min(self.end - self.pos);
        if next > 0 {
            let job = spawn_read(file, self.pos - range.start, next);
            self.ahead = Some((self.pos, next, job));
        }
        Ok(Some(data))
    }

    /// The next bytes at `pos` of a piece (lying at `range`) still arriving here, as soon as
    /// they are verified and written; `None` once that copy ends (whole or lost) before it
    /// has more for us. Bytes are kept only if the copy still owned the piece after the read
    /// (a copy lost meanwhile may have let another writer start the piece over): as the
    /// transfer server passes a piece on (SPEC §5.2).
    async fn read_arriving(
        &mut self,
        range: std::ops::Range<u64>,
        arriving: Arriving,
    ) -> io::Result<Option<Bytes>> {
        let Arriving {
            file,
            mut progress,
            valid,
        } = arriving;
        let within = self.pos - range.start;
        loop {
            let ready = u64::from(*progress.borrow_and_update()).min(u64::from(file.len));
            if ready > within {
                let n = CHUNK.min(ready - within).min(self.end - self.pos);
                let data = read(file, within, n).await?;
                if !valid() {
                    return Ok(None);
                }
                self.pos += n;
                return Ok(Some(data));
            }
            if progress.changed().await.is_err() {
                return Ok(None);
            }
        }
    }

    /// Waits until `piece` is held, or the store offers a piece it did not offer before (a
    /// copy of ours may have started arriving); an error if the download failed.
    async fn wait_held_or_offered(&mut self, piece: u32) -> io::Result<()> {
        if self.offer.is_none() {
            let held = self
                .source
                .held(self.download.digest())
                .await
                .map_err(io::Error::other)?;
            self.offer = held.map(|h| h.offer);
        }
        let (offer, download) = (&mut self.offer, &self.download);
        let offered = async {
            match offer {
                Some(offer) => {
                    offer.borrow_and_update();
                    loop {
                        if offer.changed().await.is_err() {
                            // The blob left the store: only the download can tell what next.
                            return std::future::pending().await;
                        }
                        if offer.borrow_and_update().get(piece) {
                            return;
                        }
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = download.wait_piece(piece) => r.map_err(io::Error::other),
            () = offered => Ok(()),
        }
    }
}

impl Drop for Reader {
    /// The download runs while a handle on it is held, and the pieces read from copies still
    /// arriving may not be held yet — the client can have every byte of a piece before its
    /// last block is written and the piece checked, and the server drops the body once it has
    /// sent `Content-Length` bytes, without asking for its end. So a handle stays until they
    /// are held (and, if that completes the blob, until the driver has counted them): the node
    /// keeps what it streamed, and counts it.
    fn drop(&mut self) {
        let pending: Vec<u32> = std::mem::take(&mut self.unsettled)
            .into_iter()
            .filter(|&p| !self.download.has_piece(p))
            .collect();
        if pending.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let download = self.download.clone();
        runtime.spawn(async move {
            for piece in pending {
                if download.wait_piece(piece).await.is_err() {
                    return;
                }
            }
            if download.have.borrow().is_complete() {
                let _ = download.wait_complete().await;
            }
        });
    }
}

/// Reads `n` bytes (at most [`CHUNK`]) at `within` of the piece in `file`, on the blocking pool.
async fn read(file: PieceFile, within: u64, n: u64) -> io::Result<Bytes> {
    spawn_read(file, within, n)
        .await
        .map_err(io::Error::other)?
}

/// Starts [`read`] on the blocking pool; dropping the handle leaves the read to finish unseen.
fn spawn_read(file: PieceFile, within: u64, n: u64) -> tokio::task::JoinHandle<io::Result<Bytes>> {
    let offset = file.offset + within;
    tokio::task::spawn_blocking(move || {
        // n <= CHUNK, so it fits a usize.
        let n = n as usize;
        let mut buf = AlignedBuf::with_capacity(n);
        direct_io::read_at(&file.file, file.direct.as_deref(), &mut buf, n, offset)
            .map(|()| buf.into_bytes())
    })
}

/// The response body for bytes `start..end` of the blob of `download`.
fn body(download: Download, source: Arc<dyn PieceSource>, start: u64, end: u64) -> Body {
    if let Some(piece) = download.table.table.piece_at(start) {
        // Tell the scheduler where this reader starts before the first poll of the body.
        download.set_read_position(piece);
    }
    let reader = Reader {
        download,
        source,
        pos: start,
        end,
        current: None,
        offer: None,
        unsettled: Vec::new(),
        ahead: None,
    };
    Body::from_stream(futures::stream::try_unfold(reader, |mut r| async move {
        Ok::<_, io::Error>(r.next_chunk().await?.map(|chunk| (chunk, r)))
    }))
}
