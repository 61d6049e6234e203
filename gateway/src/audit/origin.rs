//! Who sent a request and from where, as audit lines and notifications report it, and their
//! timestamps.
//!
//! The client address is the TCP peer (`ConnectInfo<SocketAddr>`, set by the server), unless the peer is a
//! trusted proxy (`[audit] trusted_proxies`): then `X-Forwarded-For` is read from the right (the
//! entry the nearest proxy appended) and the first address that is not a trusted proxy is the
//! client. Entries left of it were written by the client itself and prove nothing. A forwarded
//! address has no port (proxies do not forward it), so it is reported without one.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, Uri, header};

/// The request behind an event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The authenticated user (`None`: anonymous, or access control off).
    pub(crate) actor: Option<String>,
    /// The client's `ip:port` (or `ip`, when forwarded by a trusted proxy); `None` if unknown.
    pub(crate) remote: Option<String>,
    /// The `Host` the client addressed.
    pub(crate) host: Option<String>,
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) user_agent: Option<String>,
    /// The client's `X-Request-Id` when it is a plausible id, else a fresh UUID.
    pub(crate) request_id: String,
}

/// Longest header value copied into an origin; longer ones are cut (at a character boundary).
const MAX_FIELD: usize = 512;

impl Origin {
    /// The origin of a request, `peer` being its TCP peer.
    pub(crate) fn of(
        method: &Method,
        uri: &Uri,
        h: &HeaderMap,
        peer: Option<SocketAddr>,
        trusted: &[IpAddr],
    ) -> Origin {
        let request_id = text(h, "x-request-id")
            .filter(|id| {
                id.len() <= 128
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Origin {
            actor: None,
            remote: peer.map(|p| client(p, h, trusted)),
            host: text(h, header::HOST.as_str()).or_else(|| uri.host().map(str::to_owned)),
            method: method.to_string(),
            path: cut(uri.path().to_owned()),
            user_agent: text(h, header::USER_AGENT.as_str()),
            request_id,
        }
    }
}

/// A header's value as text (cut to [`MAX_FIELD`]), if present and visible ASCII.
fn text(h: &HeaderMap, name: &str) -> Option<String> {
    let v = h.get(name)?.to_str().ok()?.trim();
    (!v.is_empty()).then(|| cut(v.to_owned()))
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_FIELD {
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The client address of a request from `peer` (see the module docs).
fn client(peer: SocketAddr, h: &HeaderMap, trusted: &[IpAddr]) -> String {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|t| same_ip(t, ip));
    if !is_trusted(&peer.ip()) {
        return peer.to_string();
    }
    // Several headers are one list, in order.
    let entries: Vec<&str> = h
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        match parse_ip(entry) {
            Some(ip) if is_trusted(&ip) => continue,
            Some(ip) => return ip.to_string(),
            // Garbage where an address should be: the chain cannot be followed past it.
            None => break,
        }
    }
    peer.to_string()
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, or with a port.
fn parse_ip(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// Equal addresses, counting an IPv4-mapped IPv6 address as its IPv4 one.
fn same_ip(a: &IpAddr, b: &IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

/// `t` as RFC 3339 UTC with milliseconds (`2026-12-03T08:19:54.123Z`).
pub(crate) fn rfc3339_ms(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = crate::auth::token::rfc3339(d.as_secs());
    let stem = secs.strip_suffix('Z').unwrap_or(&secs);
    format!("{stem}.{:03}Z", d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;
    use axum::http::request::Parts;
    use std::time::Duration;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method("PUT").uri("/v2/a/manifests/v1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    impl Origin {
        fn of_parts(p: &Parts, peer: Option<SocketAddr>, trusted: &[IpAddr]) -> Origin {
            Origin::of(&p.method, &p.uri, &p.headers, peer, trusted)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_behind_trusted_proxies() {
        let peer: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let p = parts(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        assert_eq!(
            Origin::of_parts(&p, Some(peer), &[]).remote.as_deref(),
            Some("10.0.0.2:4000"),
            "untrusted peer: the header is ignored"
        );
        assert_eq!(
            Origin::of_parts(&p, Some(peer), &[ip("10.0.0.2")])
                .remote
                .as_deref(),
            Some("203.0.113.7"),
            "trusted peer: the right-most entry"
        );
        // A chain of trusted proxies is skipped; what the client wrote itself is not believed.
        let p = parts(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-for", "10.0.0.3"),
        ]);
        assert_eq!(
            Origin::of_parts(&p, Some(peer), &[ip("10.0.0.2"), ip("10.0.0.3")])
                .remote
                .as_deref(),
            Some("203.0.113.7")
        );
        // Garbage stops the walk: the peer is reported.
        let p = parts(&[("x-forwarded-for", "1.1.1.1, junk")]);
        assert_eq!(
            Origin::of_parts(&p, Some(peer), &[ip("10.0.0.2")])
                .remote
                .as_deref(),
            Some("10.0.0.2:4000")
        );
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:1".parse().unwrap();
        let p = parts(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(
            Origin::of_parts(&p, Some(mapped), &[ip("10.0.0.2")])
                .remote
                .as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(Origin::of_parts(&p, None, &[]).remote, None);
    }

    #[test]
    fn request_ids_user_agents_and_hosts() {
        let p = parts(&[
            ("x-request-id", "abc-123"),
            ("user-agent", "docker/27.0"),
            ("host", "registry:5000"),
        ]);
        let o = Origin::of_parts(&p, None, &[]);
        assert_eq!(o.request_id, "abc-123");
        assert_eq!(o.user_agent.as_deref(), Some("docker/27.0"));
        assert_eq!(o.host.as_deref(), Some("registry:5000"));
        assert_eq!(
            (o.method.as_str(), o.path.as_str()),
            ("PUT", "/v2/a/manifests/v1")
        );
        let o = Origin::of_parts(&parts(&[("x-request-id", "no spaces please")]), None, &[]);
        assert!(uuid::Uuid::parse_str(&o.request_id).is_ok());
        let long = "a".repeat(2000);
        let o = Origin::of_parts(&parts(&[("user-agent", &long)]), None, &[]);
        assert_eq!(o.user_agent.unwrap().len(), MAX_FIELD);
    }

    #[test]
    fn timestamps_have_milliseconds() {
        let t = UNIX_EPOCH + Duration::from_millis(1_714_564_800_007);
        assert_eq!(rfc3339_ms(t), "2024-05-01T12:00:00.007Z");
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
