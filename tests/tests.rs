//! flotilla's integration tests: real processes, real clients, one test binary.
//!
//! Every test starts the real `flotilla` binary (see `support`) on a free loopback port with its
//! own temporary data directory, and talks to it the way users do.

/// The command line: config file, environment, flags, SIGTERM, request logs.
mod cli;
/// kill -9 during concurrent pushes: nothing acknowledged lost, nothing reported corrupt.
mod crash;
/// The Docker engine: push, rmi, pull and inspect an imported image through the gateway.
mod docker;
/// The OCI Distribution v1.1 HTTP API, endpoint by endpoint, against the real gateway binary.
mod http_api;
/// oras and python-dxf: artifacts with a subject, referrers, blob push/pull.
mod oras;
/// skopeo + umoci: OCI, Docker v2s2 and two-platform index images copied in and back, identical.
mod skopeo;
/// Harness shared by every module: start, stop, kill and restart a gateway process; require tools.
mod support;
