//! Errors at the HTTP edge: the one table of OCI error codes, the response they become, the
//! mapping from storage errors, and the error `run`/`serve` return.
//!
//! Every error a client sees is an [`ApiError`]: an [`ErrorCode`] from [`ErrorCode::TABLE`] (which
//! fixes its default HTTP status and message), optionally a more precise status, a `detail`, and
//! extra headers (a 416 carries `Range` or `Content-Range`). It renders as the spec's
//! `{"errors":[{"code","message","detail"}]}`.
//!
//! Internal faults (disk, database) are logged with their real cause and reach the client only as
//! `500 UNKNOWN` with a fixed message; nothing a client sends is supposed to produce one.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::RegistryError;

/// An error code of the OCI distribution spec (plus distribution's legacy `TAG_INVALID` and
/// `RANGE_INVALID`, and `UNKNOWN` for internal faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The blob is not in the repository.
    BlobUnknown,
    /// An upload request that cannot be honoured (bad Content-Range, out-of-order chunk).
    BlobUploadInvalid,
    /// No such upload session (never existed, finished, cancelled or expired).
    BlobUploadUnknown,
    /// A digest that is malformed, unsupported, or does not match the content.
    DigestInvalid,
    /// A manifest refers to a blob or manifest that is not in the repository.
    ManifestBlobUnknown,
    /// A manifest that cannot be parsed or is not acceptable.
    ManifestInvalid,
    /// No such manifest (or tag) in the repository.
    ManifestUnknown,
    /// A repository name that breaks the grammar.
    NameInvalid,
    /// The repository does not exist.
    NameUnknown,
    /// A length that does not match the content, or a body over a limit.
    SizeInvalid,
    /// Authentication required.
    Unauthorized,
    /// Access denied.
    Denied,
    /// The operation (method, endpoint, parameter) is not supported.
    Unsupported,
    /// Rate limited.
    TooManyRequests,
    /// Legacy (distribution): a tag that breaks the grammar.
    TagInvalid,
    /// Legacy (distribution): an unsatisfiable `Range` on a blob GET.
    RangeInvalid,
    /// An internal fault; the cause is in the server log, never in the response.
    Unknown,
}

/// One row of [`ErrorCode::TABLE`].
#[derive(Debug, Clone, Copy)]
pub struct ErrorInfo {
    /// The code.
    pub code: ErrorCode,
    /// The wire identifier (`"BLOB_UNKNOWN"`).
    pub id: &'static str,
    /// The status used unless a call site states a more precise one.
    pub status: StatusCode,
    /// The human-readable message used unless a call site gives a more precise one.
    pub message: &'static str,
}

const fn row(
    code: ErrorCode,
    id: &'static str,
    status: StatusCode,
    message: &'static str,
) -> ErrorInfo {
    ErrorInfo {
        code,
        id,
        status,
        message,
    }
}

impl ErrorCode {
    /// Every code with its wire identifier, default status and message. Statuses follow the spec
    /// where it names one and distribution (the reference implementation docker is tested
    /// against) where it does not; `MANIFEST_BLOB_UNKNOWN` is 400 as in distribution.
    pub const TABLE: [ErrorInfo; 17] = [
        row(
            ErrorCode::BlobUnknown,
            "BLOB_UNKNOWN",
            StatusCode::NOT_FOUND,
            "blob unknown to registry",
        ),
        row(
            ErrorCode::BlobUploadInvalid,
            "BLOB_UPLOAD_INVALID",
            StatusCode::BAD_REQUEST,
            "blob upload invalid",
        ),
        row(
            ErrorCode::BlobUploadUnknown,
            "BLOB_UPLOAD_UNKNOWN",
            StatusCode::NOT_FOUND,
            "blob upload unknown to registry",
        ),
        row(
            ErrorCode::DigestInvalid,
            "DIGEST_INVALID",
            StatusCode::BAD_REQUEST,
            "provided digest did not match uploaded content",
        ),
        row(
            ErrorCode::ManifestBlobUnknown,
            "MANIFEST_BLOB_UNKNOWN",
            StatusCode::BAD_REQUEST,
            "manifest references a manifest or blob unknown to registry",
        ),
        row(
            ErrorCode::ManifestInvalid,
            "MANIFEST_INVALID",
            StatusCode::BAD_REQUEST,
            "manifest invalid",
        ),
        row(
            ErrorCode::ManifestUnknown,
            "MANIFEST_UNKNOWN",
            StatusCode::NOT_FOUND,
            "manifest unknown to registry",
        ),
        row(
            ErrorCode::NameInvalid,
            "NAME_INVALID",
            StatusCode::BAD_REQUEST,
            "invalid repository name",
        ),
        row(
            ErrorCode::NameUnknown,
            "NAME_UNKNOWN",
            StatusCode::NOT_FOUND,
            "repository name not known to registry",
        ),
        row(
            ErrorCode::SizeInvalid,
            "SIZE_INVALID",
            StatusCode::BAD_REQUEST,
            "provided length did not match content length",
        ),
        row(
            ErrorCode::Unauthorized,
            "UNAUTHORIZED",
            StatusCode::UNAUTHORIZED,
            "authentication required",
        ),
        row(
            ErrorCode::Denied,
            "DENIED",
            StatusCode::FORBIDDEN,
            "requested access to the resource is denied",
        ),
        row(
            ErrorCode::Unsupported,
            "UNSUPPORTED",
            StatusCode::METHOD_NOT_ALLOWED,
            "the operation is unsupported",
        ),
        row(
            ErrorCode::TooManyRequests,
            "TOOMANYREQUESTS",
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
        ),
        row(
            ErrorCode::TagInvalid,
            "TAG_INVALID",
            StatusCode::BAD_REQUEST,
            "invalid tag",
        ),
        row(
            ErrorCode::RangeInvalid,
            "RANGE_INVALID",
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalid content range",
        ),
        row(
            ErrorCode::Unknown,
            "UNKNOWN",
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal server error",
        ),
    ];

    /// This code's row of [`ErrorCode::TABLE`].
    pub fn info(self) -> &'static ErrorInfo {
        // TABLE lists the variants in declaration order; the unit test below keeps it that way.
        &Self::TABLE[self as usize]
    }

    /// The wire identifier.
    pub fn id(self) -> &'static str {
        self.info().id
    }

    /// The default HTTP status.
    pub fn status(self) -> StatusCode {
        self.info().status
    }

    /// The default message.
    pub fn message(self) -> &'static str {
        self.info().message
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// An error answer of the registry API (boxed: it travels in every handler's `Result`).
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorInner>);

#[derive(Debug)]
struct ApiErrorInner {
    code: ErrorCode,
    status: StatusCode,
    message: Cow<'static, str>,
    detail: Option<serde_json::Value>,
    headers: HeaderMap,
}

impl ApiError {
    /// An error with the code's default status and message.
    pub fn new(code: ErrorCode) -> Self {
        ApiError(Box::new(ApiErrorInner {
            code,
            status: code.status(),
            message: Cow::Borrowed(code.message()),
            detail: None,
            headers: HeaderMap::new(),
        }))
    }

    /// An internal fault: logs `cause` (with `context`) and answers 500 with a fixed message.
    pub fn internal(context: &str, cause: &dyn fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        ApiError::new(ErrorCode::Unknown)
    }

    /// Replaces the status (for the few cases where the spec asks for another one, e.g. 416).
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.0.status = status;
        self
    }

    /// Replaces the message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.0.message = message.into();
        self
    }

    /// Sets the `detail` member.
    pub fn with_detail(mut self, detail: impl Into<serde_json::Value>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.append(name, value);
        self
    }

    /// The code.
    pub fn code(&self) -> ErrorCode {
        self.0.code
    }

    /// The status the response will have.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The `detail` member, if any.
    pub fn detail(&self) -> Option<&serde_json::Value> {
        self.0.detail.as_ref()
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.0.headers
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        write!(f, "{} {}: {}", e.status.as_u16(), e.code, e.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
struct WireErrors<'a> {
    errors: [WireError<'a>; 1],
}

#[derive(Serialize)]
struct WireError<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = *self.0;
        let wire = WireErrors {
            errors: [WireError {
                code: e.code.id(),
                message: &e.message,
                detail: e.detail.as_ref(),
            }],
        };
        // Serialising strings and JSON values cannot fail; the fallback only keeps this total.
        let body = serde_json::to_vec(&wire).unwrap_or_else(|_| {
            format!(r#"{{"errors":[{{"code":"{}"}}]}}"#, e.code.id()).into_bytes()
        });
        let mut res = (e.status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.extend(e.headers);
        res
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError as E;
        let reason = e.to_string();
        match e {
            E::BlobUnknown => ApiError::new(ErrorCode::BlobUnknown),
            E::BlobUploadUnknown => ApiError::new(ErrorCode::BlobUploadUnknown),
            E::BlobUploadInvalid(_) => {
                ApiError::new(ErrorCode::BlobUploadInvalid).with_detail(reason)
            }
            E::DigestInvalid { .. } => ApiError::new(ErrorCode::DigestInvalid).with_detail(reason),
            // The upload handlers add `Range` and `Location`; this is the bare form.
            E::RangeInvalid { .. } => ApiError::new(ErrorCode::BlobUploadInvalid)
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .with_detail(reason),
            E::SizeInvalid(_) => ApiError::new(ErrorCode::SizeInvalid).with_detail(reason),
            E::ManifestUnknown => ApiError::new(ErrorCode::ManifestUnknown),
            E::ManifestInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid).with_detail(reason),
            E::ManifestBlobUnknown(d) => {
                ApiError::new(ErrorCode::ManifestBlobUnknown).with_detail(d.to_string())
            }
            E::ManifestTooLarge { limit } => manifest_too_large(limit),
            E::BlobTooLarge { limit } => ApiError::new(ErrorCode::SizeInvalid)
                .with_status(StatusCode::PAYLOAD_TOO_LARGE)
                .with_message("blob too large")
                .with_detail(serde_json::json!({ "limit": limit })),
            E::TooManyUploads { limit } => ApiError::new(ErrorCode::TooManyRequests)
                .with_message("too many upload sessions open")
                .with_detail(serde_json::json!({ "limit": limit })),
            E::NameUnknown => ApiError::new(ErrorCode::NameUnknown),
            E::TagInvalid => ApiError::new(ErrorCode::TagInvalid).with_detail(reason),
            E::Unsupported(_) => ApiError::new(ErrorCode::Unsupported).with_detail(reason),
            E::BodyRead(ref cause) => {
                // The client went away or sent a broken body: its problem, not ours.
                tracing::debug!(error = %cause, "request body read failed");
                ApiError::new(ErrorCode::BlobUploadInvalid)
                    .with_message("request body could not be read")
            }
            other => ApiError::internal("storage failure", &other),
        }
    }
}

/// `413 Payload Too Large` with `SIZE_INVALID` for a manifest over the configured limit.
pub(crate) fn manifest_too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::SizeInvalid)
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        .with_message("manifest too large")
        .with_detail(serde_json::json!({ "limit": limit }))
}

/// Why the gateway could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The storage engine could not be opened.
    #[error("opening storage failed: {0}")]
    Storage(#[from] RegistryError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Accepting or serving connections failed.
    #[error("serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The swarm (the gateway as a seed of the node swarm) could not start.
    #[error("swarm: {0}")]
    Swarm(String),
    /// The `[auth]` section cannot be put into effect.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The fleet join token cannot be read or created.
    #[error(transparent)]
    Fleet(crate::fleet::FleetError),
    /// The `[tls]` section cannot be put into effect.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The `[audit]` or `[notifications]` section cannot be put into effect.
    #[error(transparent)]
    Events(#[from] crate::audit::EventsError),
    /// A setting that cannot work (named in the message).
    #[error("invalid configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_in_declaration_order_and_complete() {
        for (i, row) in ErrorCode::TABLE.iter().enumerate() {
            assert_eq!(row.code as usize, i, "{} out of place", row.id);
            assert_eq!(row.code.info().id, row.id);
            assert!(
                row.id.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{} breaks the spec's code grammar",
                row.id
            );
        }
    }

    #[test]
    fn statuses_follow_the_spec() {
        use ErrorCode as C;
        let want = [
            (C::BlobUnknown, 404),
            (C::BlobUploadInvalid, 400),
            (C::BlobUploadUnknown, 404),
            (C::DigestInvalid, 400),
            (C::ManifestBlobUnknown, 400),
            (C::ManifestInvalid, 400),
            (C::ManifestUnknown, 404),
            (C::NameInvalid, 400),
            (C::NameUnknown, 404),
            (C::SizeInvalid, 400),
            (C::Unauthorized, 401),
            (C::Denied, 403),
            (C::Unsupported, 405),
            (C::TooManyRequests, 429),
            (C::TagInvalid, 400),
            (C::RangeInvalid, 416),
            (C::Unknown, 500),
        ];
        for (code, status) in want {
            assert_eq!(code.status().as_u16(), status, "{code}");
        }
    }

    #[tokio::test]
    async fn renders_the_spec_body_and_headers() {
        let res = ApiError::new(ErrorCode::BlobUploadInvalid)
            .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
            .with_detail("out of order")
            .with_header(header::RANGE, HeaderValue::from_static("0-9"))
            .into_response();
        assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(res.headers()[header::RANGE], "0-9");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"errors":[{"code":"BLOB_UPLOAD_INVALID","message":"blob upload invalid","detail":"out of order"}]})
        );
    }

    #[test]
    fn internal_errors_hide_the_cause() {
        let e = ApiError::internal("test", &"secret path /var/x");
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message().contains("secret"));
        assert!(e.detail().is_none());
    }
}
