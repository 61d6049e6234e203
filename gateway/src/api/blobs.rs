//! `HEAD`, `GET` and `DELETE /v2/<name>/blobs/<digest>`, and the answers that
//! `/flotilla/v1/blobs/<digest>` shares with them ([`head_answer`], [`send`]).
//!
//! Downloads are streamed from the blob file: a task reads 1 MiB chunks on tokio's blocking pool
//! (one `spawn_blocking` per chunk, so an idle slow client holds no thread) into a bounded channel
//! of [`QUEUE`] chunks that feeds the response body. At most `QUEUE + 2` chunks of one download are
//! in memory (queued, being read, being written); the whole blob never is. `HEAD` only stats.
//!
//! `Range` is honoured for one range (`a-b`, `a-`, `-n`) with 206; several ranges get the whole blob
//! with 200; unsatisfiable or malformed ranges get 416 with `Content-Range: bytes */<size>`
//! (see [`super::headers::parse_range`]).
//!
//! Every chunk a body yields is added to the seed's `http_blob_bytes` as it is handed to the
//! connection, so an aborted download counts what it sent (plus at most the chunk in flight).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::task::Poll;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use flotilla_protocol::{Digest, RepoName};
use tokio::sync::mpsc;

use super::headers::{self, DOCKER_CONTENT_DIGEST, RangeAnswer};
use super::{ApiResult, AppState};
use crate::audit::{Action, Event, Origin};
use crate::error::{ApiError, ErrorCode};
use crate::seed::Counters;
use flotilla_node::transfer::Pace;

/// Bytes read from disk per chunk. Large chunks keep per-chunk overhead (a blocking-pool hop, a
/// channel send, a body frame) negligible against the copy itself.
const CHUNK: usize = 1 << 20;
/// Chunks buffered between the disk reader and the socket writer.
const QUEUE: usize = 2;

/// `HEAD`: size and digest headers from the index, without touching the file.
pub(super) async fn head(st: &AppState, repo: &RepoName, d: &Digest, req: &HeaderMap) -> ApiResult {
    let size = st.registry.blob_stat(repo, d).await?;
    Ok(head_answer(d, size, req))
}

/// The `HEAD` answer for blob `d` of `size` bytes.
pub(super) fn head_answer(d: &Digest, size: u64, req: &HeaderMap) -> Response {
    if headers::if_none_match(req, d) {
        return not_modified(d);
    }
    blob_headers(StatusCode::OK, d, size, Body::empty())
}

/// `GET`: the blob, whole or one range, streamed.
pub(super) async fn get(st: &AppState, repo: &RepoName, d: &Digest, req: &HeaderMap) -> ApiResult {
    let (file, size) = st.registry.blob_open(repo, d).await?;
    send(st, d, file, size, req)
}

/// The `GET` answer for blob `d` held in `file` of `size` bytes: whole or one range, streamed.
pub(super) fn send(st: &AppState, d: &Digest, file: File, size: u64, req: &HeaderMap) -> ApiResult {
    if headers::if_none_match(req, d) {
        return Ok(not_modified(d));
    }
    let answer = match req.get(header::RANGE) {
        Some(r) if headers::if_range_allows(req, d) => match r.to_str() {
            Ok(r) => headers::parse_range(r, size),
            Err(_) => RangeAnswer::Unsatisfiable,
        },
        _ => RangeAnswer::Full,
    };
    match answer {
        RangeAnswer::Full => Ok(blob_headers(
            StatusCode::OK,
            d,
            size,
            file_body(
                file,
                0,
                size,
                st.registry.seed().counters(),
                st.registry.seed().egress_pace(),
            ),
        )),
        RangeAnswer::Partial { start, end } => {
            let len = end - start + 1;
            let mut res = blob_headers(
                StatusCode::PARTIAL_CONTENT,
                d,
                len,
                file_body(
                    file,
                    start,
                    len,
                    st.registry.seed().counters(),
                    st.registry.seed().egress_pace(),
                ),
            );
            res.headers_mut().insert(
                header::CONTENT_RANGE,
                headers::value(&format!("bytes {start}-{end}/{size}")),
            );
            Ok(res)
        }
        RangeAnswer::Unsatisfiable => Err(ApiError::new(ErrorCode::RangeInvalid)
            .with_message("requested range not satisfiable")
            .with_header(
                header::CONTENT_RANGE,
                headers::value(&format!("bytes */{size}")),
            )),
    }
}

/// `DELETE`: unlinks the blob from the repository; 202.
pub(super) async fn delete(
    st: &AppState,
    repo: &RepoName,
    d: &Digest,
    o: &Arc<Origin>,
) -> ApiResult {
    st.registry.blob_delete(repo, d).await?;
    let ev = Event::new(Action::BlobDelete, o).repo(repo).digest(d);
    st.events.record(ev).await;
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res.headers_mut()
        .insert(DOCKER_CONTENT_DIGEST, headers::value(d.as_str()));
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(res)
}

/// The headers of a blob answer; `len` is the length of this response's body (or would-be body).
fn blob_headers(status: StatusCode, d: &Digest, len: u64, body: Body) -> Response {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(DOCKER_CONTENT_DIGEST, headers::value(d.as_str()));
    h.insert(header::ETAG, headers::etag(d));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Content named by its digest never changes.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000"),
    );
    res
}

/// `304 Not Modified` for a matching `If-None-Match`.
fn not_modified(d: &Digest) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::NOT_MODIFIED;
    res.headers_mut().insert(header::ETAG, headers::etag(d));
    res.headers_mut()
        .insert(DOCKER_CONTENT_DIGEST, headers::value(d.as_str()));
    res
}

/// A body streaming `len` bytes of `file` from `start` (see the module docs), counting what it
/// yields into `counters`, no faster than `pace` allows (the gateway's upload cap, shared with
/// every other blob body and the swarm).
///
/// The caller sets `Content-Length`; if the file turns out shorter, the stream ends with an error
/// so the connection is cut rather than the response silently truncated.
pub(super) fn file_body(
    file: File,
    start: u64,
    len: u64,
    counters: Arc<Counters>,
    pace: Option<Arc<Pace>>,
) -> Body {
    if len == 0 {
        return Body::empty();
    }
    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(QUEUE);
    tokio::spawn(read_file(file, start, len, tx, pace));
    Body::from_stream(futures::stream::poll_fn(move |cx| {
        let next = rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next {
            counters.http_sent(chunk.len() as u64);
        }
        next
    }))
}

/// The producer side of [`file_body`]: stops at the end, on a read error (sent on), or when the
/// receiver is gone (the client went away).
async fn read_file(
    mut file: File,
    start: u64,
    len: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
    pace: Option<Arc<Pace>>,
) {
    let mut remaining = len;
    let mut seek_to = Some(start).filter(|&s| s > 0);
    // Under a cap, chunks of one burst, so the bytes go out evenly rather than a MiB at a time.
    let chunk = pace
        .as_ref()
        .map_or(CHUNK, |p| p.burst_bytes().clamp(16 << 10, CHUNK));
    while remaining > 0 {
        // Reserve queue space first, so a chunk is only read when it can be sent at once.
        let Ok(permit) = tx.reserve().await else {
            return;
        };
        let want = remaining.min(chunk as u64);
        let seek = seek_to.take();
        let joined = tokio::task::spawn_blocking(move || {
            let chunk = read_chunk(&mut file, seek, want);
            (file, chunk)
        })
        .await;
        let chunk = match joined {
            Ok((f, chunk)) => {
                file = f;
                chunk
            }
            Err(e) => {
                permit.send(Err(io::Error::other(e)));
                return;
            }
        };
        match chunk {
            Ok(bytes) => {
                remaining -= bytes.len() as u64;
                if let Some(p) = &pace {
                    p.take(bytes.len()).await;
                }
                permit.send(Ok(bytes));
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a blob file failed mid-response");
                permit.send(Err(e));
                return;
            }
        }
    }
}

/// Reads up to `want` bytes (after seeking to `seek`, if given). A file that ends early is an error.
fn read_chunk(file: &mut File, seek: Option<u64>, want: u64) -> io::Result<Bytes> {
    if let Some(pos) = seek {
        file.seek(SeekFrom::Start(pos))?;
    }
    // `read_to_end` into reserved capacity fills the buffer without zeroing it first.
    let mut buf = Vec::with_capacity(want as usize);
    (&mut *file).take(want).read_to_end(&mut buf)?;
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob file is shorter than its recorded size",
        ));
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::io::Write;

    async fn collect(body: Body) -> Result<Vec<u8>, axum::Error> {
        let mut out = Vec::new();
        let mut s = body.into_data_stream();
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    fn counters() -> Arc<Counters> {
        Arc::new(Counters::default())
    }

    fn temp_file(data: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(data).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f
    }

    #[tokio::test]
    async fn streams_whole_and_partial_across_chunk_boundaries() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let c = counters();
        let all = collect(file_body(
            temp_file(&data),
            0,
            data.len() as u64,
            c.clone(),
            None,
        ))
        .await
        .unwrap();
        assert_eq!(all, data);
        let (start, len) = (CHUNK as u64 - 3, CHUNK as u64 + 10);
        let part = collect(file_body(temp_file(&data), start, len, c.clone(), None))
            .await
            .unwrap();
        assert_eq!(part, &data[start as usize..(start + len) as usize]);
        assert!(
            collect(file_body(temp_file(&data), 0, 0, c.clone(), None))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(c.snapshot().http_blob_bytes, data.len() as u64 + len);
    }

    #[tokio::test]
    async fn an_abandoned_body_counts_only_what_it_yielded() {
        let data: Vec<u8> = vec![1u8; CHUNK * 5];
        let c = counters();
        let mut s =
            file_body(temp_file(&data), 0, data.len() as u64, c.clone(), None).into_data_stream();
        let first = s.next().await.unwrap().unwrap();
        drop(s);
        assert_eq!(c.snapshot().http_blob_bytes, first.len() as u64);
    }

    /// Two bodies under one cap of 4 MiB/s: 6 MiB between them take 1.5 s at least (less one
    /// burst), however they share it, and both arrive whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_sharing_a_cap_keep_to_it_together() {
        let pace = Arc::new(Pace::new(4 << 20));
        let a: Vec<u8> = (0..(4 << 20)).map(|i| (i % 251) as u8).collect();
        let b = vec![9u8; 2 << 20];
        let body = |data: &[u8]| {
            let len = data.len() as u64;
            collect(file_body(
                temp_file(data),
                0,
                len,
                counters(),
                Some(pace.clone()),
            ))
        };
        let t0 = std::time::Instant::now();
        let (got_a, got_b) = tokio::join!(body(&a), body(&b));
        let took = t0.elapsed();
        assert!(got_a.unwrap() == a && got_b.unwrap() == b);
        assert!(
            took >= std::time::Duration::from_millis(1400),
            "6 MiB at 4 MiB/s in {took:?}"
        );
        assert!(took < std::time::Duration::from_secs(30), "{took:?}");
    }

    #[tokio::test]
    async fn short_file_is_an_error_not_a_truncation() {
        let data = vec![7u8; 100];
        assert!(
            collect(file_body(temp_file(&data), 0, 200, counters(), None))
                .await
                .is_err()
        );
    }
}
