//! Black-box tests of the gateway's OCI Distribution v1.1 HTTP API: every endpoint and error path,
//! driven with reqwest against the real `flotilla gateway` binary (one fresh gateway per test).
//!
//! Expectations come from the distribution spec v1.1 (and RFC 9110 for ranges); where the spec
//! leaves a choice open, from flotilla's SPEC.md. Every response passes `util::Api::send`, which
//! fails the test on any 5xx, a missing `Docker-Distribution-API-Version`, or a malformed OCI
//! error body.

/// Shared client, blob and manifest helpers.
mod util;

/// `/v2/`, unknown paths, invalid names/tags/digests, wrong methods, odd queries.
mod base;
/// Blob `HEAD`/`GET`/`DELETE`, repository scoping, `Range` requests.
mod blobs;
/// Concurrent pushes of one blob and to one tag.
mod concurrency;
/// Bounds on blob size, open uploads, stalled bodies, connections and header time.
mod limits;
/// Manifest push/pull/delete for every accepted type, validation errors, size limit.
mod manifests;
/// The referrers API: `subject`, `OCI-Subject`, `artifactType` filtering, deletion.
mod referrers;
/// Tag listing and the catalog with `n`, `last` and `Link` pagination.
mod tags;
/// Blob uploads: monolithic, POST+PUT, chunked, streamed, resume, cancel, digests, mounts.
mod uploads;
