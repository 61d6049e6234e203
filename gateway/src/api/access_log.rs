//! The request log and the headers every response carries.
//!
//! One middleware wraps every request: it adds `Docker-Distribution-API-Version: registry/2.0`
//! (clients use it to recognise a registry, on errors too) and wraps the response body so that
//! exactly one `tracing` line is written per request when the body is finished or dropped, with
//! method, path, status, the body bytes actually sent, and the duration up to that point. Logging
//! at the end of the body (rather than when the handler returns) makes the duration of a download
//! the transfer time and shows aborted transfers as `complete=false`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

use flotilla_node::metrics::RequestCounts;

use super::headers::DOCKER_API_VERSION;

/// The middleware (use with `axum::middleware::from_fn_with_state`).
pub(crate) async fn layer(
    State(counts): State<Arc<RequestCounts>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut res = next.run(req).await;
    res.headers_mut()
        .insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    let status = res.status();
    // What a complete body has: its exact size, else the declared length (streamed blobs; hyper
    // stops polling once that many bytes are out). A HEAD answer declares a length it never sends.
    let declared = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let head = method == Method::HEAD;
    res.map(|body| {
        let expected = if head {
            Some(0)
        } else {
            body.size_hint().exact().or(declared)
        };
        Body::new(LoggedBody {
            inner: body,
            line: LogLine {
                method,
                path,
                status,
                start,
                bytes: 0,
                expected,
                ended: false,
                failed: false,
                counts,
            },
        })
    })
}

/// What the log line says; written once, on drop.
struct LogLine {
    method: Method,
    path: String,
    status: StatusCode,
    start: Instant,
    bytes: u64,
    expected: Option<u64>,
    ended: bool,
    failed: bool,
    counts: Arc<RequestCounts>,
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let complete = !self.failed && (self.ended || self.expected == Some(self.bytes));
        let seconds = self.start.elapsed().as_secs_f64();
        self.counts
            .record(&self.method, self.status.as_u16(), self.bytes, seconds);
        let duration_ms = seconds * 1e3;
        let duration = format!("{duration_ms:.3}ms");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    method = %self.method,
                    path = %self.path,
                    status = self.status.as_u16(),
                    bytes = self.bytes,
                    duration = %duration,
                    complete,
                    "request"
                )
            };
        }
        if routine(&self.path, self.status) {
            line!(debug);
        } else {
            line!(info);
        }
    }
}

/// A successful answer to what nodes and probes ask all the time — the revocation list every
/// node polls (~170 a second at 10,000 nodes, nearly all `304`) and the health probe — is
/// logged at debug level, so the request log keeps what people and clients did.
fn routine(path: &str, status: StatusCode) -> bool {
    matches!(path, "/flotilla/v1/revoked" | "/flotilla/v1/health")
        && (status.is_success() || status == StatusCode::NOT_MODIFIED)
}

/// A response body that counts what passes through and logs when dropped; size hints and
/// end-of-stream pass through unchanged so `Content-Length` framing is kept.
struct LoggedBody {
    inner: Body,
    line: LogLine,
}

impl HttpBody for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.line.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.line.failed = true,
            Poll::Ready(None) => this.line.ended = true,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
