//! Content discovery: `GET /v2/<name>/tags/list`, `GET /v2/_catalog` and
//! `GET /v2/<name>/referrers/<digest>`.
//!
//! Tags and catalog are paginated with `n` (page size) and `last` (exclusive start), in the
//! registry's lexical order. A page holds at most `min(n, max_list_entries)` entries; when more
//! remain, `Link: </v2/…?n=<n>&last=<last entry>>; rel="next"` says where the next page starts.
//! `n=0` gives an empty list and no `Link`, as the spec requires. An `n` that is not a
//! non-negative integer is `400 UNSUPPORTED`; a huge `n` is capped like any other.
//!
//! Referrers are one OCI image index (never paginated); an unknown repository or subject gives an
//! empty index, because the spec forbids 404 from this endpoint. `artifactType=` filters and is
//! acknowledged with `OCI-Filters-Applied: artifactType`.

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::Response;
use flotilla_protocol::manifest::{Descriptor, media_type};
use flotilla_protocol::{Digest, RepoName};
use serde::Serialize;

use super::headers::{self, OCI_FILTERS_APPLIED};
use super::{ApiResult, AppState, json_response, query};
use crate::error::{ApiError, ErrorCode};
use crate::registry::RegistryError;

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

#[derive(Serialize)]
struct Catalog {
    repositories: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReferrersIndex {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// `GET /v2/<name>/tags/list[?n=&last=]`.
pub(super) async fn tags(st: &AppState, repo: &RepoName, uri: &Uri) -> ApiResult {
    let p = Page::from_uri(st, uri)?;
    let tags = st
        .registry
        .tags_list(repo, Some(p.fetch()), p.last.as_deref())
        .await?;
    let (tags, next) = p.cut(tags);
    let mut res = json_response(
        StatusCode::OK,
        &TagList {
            name: repo.as_str(),
            tags,
        },
    );
    if let Some(last) = next {
        add_link(&mut res, &format!("/v2/{repo}/tags/list"), p.size, &last);
    }
    Ok(res)
}

/// `GET /v2/_catalog[?n=&last=]`.
pub(super) async fn catalog(st: &AppState, uri: &Uri) -> ApiResult {
    let p = Page::from_uri(st, uri)?;
    let repos = st
        .registry
        .catalog(Some(p.fetch()), p.last.as_deref())
        .await?;
    let (repositories, next) = p.cut(repos);
    let mut res = json_response(StatusCode::OK, &Catalog { repositories });
    if let Some(last) = next {
        add_link(&mut res, "/v2/_catalog", p.size, &last);
    }
    Ok(res)
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=]`.
pub(super) async fn referrers(st: &AppState, repo: &RepoName, d: &Digest, uri: &Uri) -> ApiResult {
    let q = query(uri);
    let filter = q
        .get("artifactType")
        .map(String::as_str)
        .filter(|s| !s.is_empty());
    let mut manifests = match st.registry.referrers(repo, d, filter).await {
        Ok(list) => list,
        Err(RegistryError::NameUnknown | RegistryError::ManifestUnknown) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if let Some(f) = filter {
        manifests.retain(|m| m.artifact_type.as_deref() == Some(f));
    }
    let mut res = json_response(
        StatusCode::OK,
        &ReferrersIndex {
            schema_version: 2,
            media_type: media_type::OCI_INDEX,
            manifests,
        },
    );
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::OCI_INDEX),
    );
    if filter.is_some() {
        h.insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(res)
}

/// One page request: its size and where it starts.
#[derive(Debug, PartialEq, Eq)]
struct Page {
    /// Entries to return at most (0 allowed).
    size: usize,
    /// Exclusive start.
    last: Option<String>,
}

impl Page {
    fn from_uri(st: &AppState, uri: &Uri) -> Result<Page, ApiError> {
        let q = query(uri);
        Page::new(
            q.get("n").map(String::as_str),
            q.get("last").cloned(),
            st.page_limit,
        )
    }

    fn new(n: Option<&str>, last: Option<String>, limit: usize) -> Result<Page, ApiError> {
        let size = match n {
            None => limit,
            Some(n) => parse_n(n)?.min(limit),
        };
        Ok(Page {
            size,
            last: last.filter(|l| !l.is_empty()),
        })
    }

    /// How many entries to ask the registry for: one more than the page, to learn whether more
    /// remain. For `n=0` one is still fetched, so an unknown repository is still a 404.
    fn fetch(&self) -> usize {
        self.size.saturating_add(1)
    }

    /// The page's entries, and the `last` of the next page if there is one.
    fn cut(&self, mut items: Vec<String>) -> (Vec<String>, Option<String>) {
        let more = items.len() > self.size;
        items.truncate(self.size);
        let next = if more && self.size > 0 {
            items.last().cloned()
        } else {
            None
        };
        (items, next)
    }
}

/// `n` as a page size: digits only; values past `usize` saturate (and are capped later).
fn parse_n(n: &str) -> Result<usize, ApiError> {
    let n = n.trim();
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::new(ErrorCode::Unsupported)
            .with_status(StatusCode::BAD_REQUEST)
            .with_message("invalid pagination parameter n: expected a non-negative integer")
            .with_detail(n.to_owned()));
    }
    Ok(n.bytes().fold(0usize, |acc, b| {
        acc.saturating_mul(10).saturating_add(usize::from(b - b'0'))
    }))
}

/// `Link: <path?n=<n>&last=<last>>; rel="next"`. Names and tags contain only URL-safe characters.
fn add_link(res: &mut Response, path: &str, n: usize, last: &str) {
    res.headers_mut().insert(
        header::LINK,
        headers::value(&format!("<{path}?n={n}&last={last}>; rel=\"next\"")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn n_parsing() {
        assert_eq!(parse_n("0").unwrap(), 0);
        assert_eq!(parse_n("25").unwrap(), 25);
        assert_eq!(parse_n("99999999999999999999999").unwrap(), usize::MAX);
        for bad in ["", "-1", "abc", "1.5", "+3", "0x10"] {
            let e = parse_n(bad).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn pages() {
        let p = Page::new(Some("2"), None, 100).unwrap();
        assert_eq!(p.fetch(), 3);
        assert_eq!(
            p.cut(names(&["a", "b", "c"])),
            (names(&["a", "b"]), Some("b".into()))
        );
        assert_eq!(p.cut(names(&["a", "b"])), (names(&["a", "b"]), None));
        // n above the configured cap is capped, and Link carries the cap.
        let p = Page::new(Some("500"), Some("x".into()), 3).unwrap();
        assert_eq!(p.size, 3);
        assert_eq!(p.last.as_deref(), Some("x"));
        // n=0: empty and no Link even when entries exist.
        let p = Page::new(Some("0"), None, 100).unwrap();
        assert_eq!(p.fetch(), 1);
        assert_eq!(p.cut(names(&["a"])), (vec![], None));
        // No n: the configured cap.
        let p = Page::new(None, Some(String::new()), 7).unwrap();
        assert_eq!(
            p,
            Page {
                size: 7,
                last: None
            }
        );
    }
}
