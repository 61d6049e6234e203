//! Access control and HTTPS against the real gateway binary: each test starts a gateway from a
//! TOML config with `[auth]` (htpasswd made here with the bcrypt crate, the rules in
//! `harness::RULES`) and, for HTTPS, `[tls]` with a test CA made with rcgen.

/// Gateway processes with `[auth]`/`[tls]`, the HTTP(S) client, tokens, the test CA (also used
/// by `audit`).
pub(crate) mod harness;
/// Basic and anonymous access: `/v2/`, pulls and pushes per rule, 401 vs 403, catalog, mounts.
mod http;
/// A node behind an HTTPS gateway with access control: private CA, pinned identity, member reads.
mod node;
/// HTTPS with a TLS client, graceful shutdown, and docker login/push/pull over TLS.
mod tls;
/// The token flow: challenge, token endpoint, claims, scopes, expiry and forgeries.
mod token;
