//! `POST /flotilla/v1/unpin`: undoes a prefetch's `pin` — the blobs of an image, or one blob,
//! become evictable again (least recently used first, like any other), so pins from past
//! rollouts do not fill the disk for good.
//!
//! The body names what a prefetch names, and the image is resolved the same way (from the
//! gateway, else from kept manifests), narrowed to the same platform:
//! - `{"image": "<name>[:<tag>|@<digest>]", "platform": "<os>/<arch>[/<variant>]" | "all"}`
//! - `{"blob": "<digest>"}`
//!
//! The answer is `200` and a JSON report: for every blob, whether the node holds it and whether
//! it was pinned. A blob the node does not hold is reported, not an error (there is nothing to
//! unpin). A blob pinned by the node's configuration (`pinned`) is unpinned too, and pinned again
//! at the next start. Who may unpin is who may prefetch (see [`super::prefetch`]); errors are a
//! prefetch's.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flotilla_protocol::Digest;
use serde::{Deserialize, Serialize};

use super::prefetch::{Targets, admitted_body, malformed, targets};
use super::{OciError, OciState};

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    image: Option<String>,
    blob: Option<String>,
    platform: Option<String>,
}

/// The answer.
#[derive(Debug, Serialize)]
struct Report {
    /// `<name>:<tag>` or `<name>@<digest>` as resolved; absent for a single blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    /// The platform an index was narrowed to; absent for a single blob.
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
    /// Digests of the manifests read, the named one first.
    manifests: Vec<Digest>,
    blobs: Vec<BlobReport>,
    /// Blobs that were pinned and are not now.
    unpinned: usize,
}

#[derive(Debug, Serialize)]
struct BlobReport {
    digest: Digest,
    /// Whether the node holds the blob (whole or in part).
    held: bool,
    /// Whether it was pinned before this request.
    was_pinned: bool,
}

/// The route's handler (see the module docs).
pub(super) async fn handle(State(st): State<OciState>, req: Request) -> Response {
    // A node that cannot pin says so only to the callers it admits.
    let pin = st.pin.clone();
    let ask: Ask = match admitted_body(&st, req, "unpin").await {
        Ok(a) => a,
        Err(res) => return res,
    };
    let Some(pin) = pin else {
        return malformed("this node cannot pin or unpin").into_response();
    };
    let Targets {
        image,
        platform,
        manifests,
        blobs,
    } = match targets(&st, ask.image, ask.blob, ask.platform).await {
        Ok(t) => t,
        Err(res) => return res,
    };
    let mut reports = Vec::with_capacity(blobs.len());
    for (digest, _) in blobs {
        let was = match pin(digest.clone(), false).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(%digest, error = %e, "cannot unpin a blob");
                return OciError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "the blob cannot be unpinned",
                )
                .detail(format!("{digest}: {e}"))
                .into_response();
            }
        };
        reports.push(BlobReport {
            digest,
            held: was.is_some(),
            was_pinned: was == Some(true),
        });
    }
    let unpinned = reports.iter().filter(|b| b.was_pinned).count();
    tracing::info!(
        image = image.as_deref().unwrap_or(""),
        blobs = reports.len(),
        unpinned,
        "unpinned"
    );
    Json(Report {
        image,
        platform,
        manifests,
        blobs: reports,
        unpinned,
    })
    .into_response()
}
