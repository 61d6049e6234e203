//! `POST /flotilla/v1/gc[?dry_run=true]`: a garbage collection now, while the gateway serves
//! (SPEC §2.4), with the configured `gc_min_age_secs`; the answer is the collection's report as
//! JSON; another parameter is `400 UNSUPPORTED`. With `[auth]` only an admin may ask (`401` without credentials, `403 DENIED` for
//! anyone else); without it, anyone (an open registry lets anyone delete as well). One
//! collection at a time: another request meanwhile gets `429 TOOMANYREQUESTS`.

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};

use super::{ApiResult, AppState, json_response};
use crate::error::{ApiError, ErrorCode};
use crate::registry::GcOptions;

/// Runs one collection for `req` (a `POST`).
pub(super) async fn trigger(st: &AppState, req: Request) -> ApiResult {
    if let Some(auth) = &st.auth {
        auth.require(
            req.headers(),
            req.uri(),
            |p, who| p.is_admin(who),
            "garbage collection is for admins",
        )
        .await?;
    }
    let dry_run = match req.uri().query() {
        None => false,
        Some(q) => dry_run(q).ok_or_else(|| {
            ApiError::new(ErrorCode::Unsupported)
                .with_status(StatusCode::BAD_REQUEST)
                .with_message("the only parameter is dry_run=true or dry_run=false")
        })?,
    };
    let Ok(_one) = st.gc_running.try_lock() else {
        return Err(ApiError::new(ErrorCode::TooManyRequests)
            .with_message("a garbage collection is running")
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")));
    };
    let report = st
        .registry
        .collect_garbage(GcOptions {
            min_age: st.gc_min_age,
            dry_run,
        })
        .await?;
    Ok(json_response(StatusCode::OK, &report))
}

/// `dry_run=true` / `dry_run=false` (and nothing else).
fn dry_run(query: &str) -> Option<bool> {
    match query {
        "" => Some(false),
        "dry_run=true" => Some(true),
        "dry_run=false" => Some(false),
        _ => None,
    }
}
