//! flotilla's integration tests: real processes, real clients, one test binary.
//!
//! Every test starts the real `flotilla` binary (see `support`) on a free loopback port with its
//! own temporary data directory, and talks to it the way users do.

/// The audit log and webhook notifications: audit lines, distribution's events, retries, hangs.
mod audit;
/// Access control (Basic, docker's token flow, per-repository rules) and HTTPS, with docker.
mod auth;
/// The command line: config file, environment, flags, SIGTERM, request logs.
mod cli;
/// Real clients: skopeo+umoci, docker, oras and python-dxf push and pull through the gateway.
mod clients;
/// kill -9 during concurrent pushes: nothing acknowledged lost, nothing reported corrupt.
mod crash;
/// Fleets of nodes pulling at once: correct bytes, gateway egress, kill -9 resume, a lying peer.
mod fleet;
/// flotilla's `/flotilla/v1/` endpoints for nodes: identity, signed piece tables, blobs, counters.
mod flotilla_api;
/// The OCI Distribution v1.1 HTTP API, endpoint by endpoint, against the real gateway binary.
mod http_api;
/// Fleet membership: enrolled nodes pull through each other; a node with a wrong token gets nothing.
mod membership;
/// Pulling through a partition: the gateway stopped after a push, the fleet still pulls the tag.
mod partition;
/// Harness shared by every module: start, stop, kill and restart a gateway process; require tools.
mod support;
