//! flotilla's integration tests: real processes, real clients, one test binary.
//!
//! Every test starts the real `flotilla` binary (see `support`) on a free loopback port with its
//! own temporary data directory, and talks to it the way users do.

/// The command line: config file, environment, flags, SIGTERM, request logs.
mod cli;
/// Harness shared by every module: start, stop, kill and restart a gateway process; require tools.
mod support;
