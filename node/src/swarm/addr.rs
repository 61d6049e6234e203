//! Small questions about multiaddrs: which transport, loopback or not, dialable at all, and the
//! `/p2p/<peer id>` suffix.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// The peer id an address ends in, and the address without it.
pub(super) fn split_p2p(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, base)),
        _ => None,
    }
}

/// The address without a trailing `/p2p/<peer id>`.
pub(super) fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    split_p2p(addr).map_or_else(|| addr.clone(), |(_, base)| base)
}

/// A QUIC v1 address.
pub(super) fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// A plain TCP address (no QUIC, websocket or relay on top).
pub(super) fn is_tcp(addr: &Multiaddr) -> bool {
    let mut it = addr.iter().skip(1);
    matches!(it.next(), Some(Protocol::Tcp(_))) && it.all(|p| matches!(p, Protocol::P2p(_)))
}

/// The UDP port of a QUIC address.
pub(super) fn quic_port(addr: &Multiaddr) -> Option<u16> {
    if !is_quic(addr) {
        return None;
    }
    addr.iter().find_map(|p| match p {
        Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

/// An address on a loopback IP.
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// An address this swarm's transports can dial: a concrete IP, then TCP or UDP + QUIC v1 on a
/// non-zero port, then at most a `/p2p` suffix.
pub(super) fn is_dialable(addr: &Multiaddr) -> bool {
    let mut it = addr.iter();
    let ip_ok = match it.next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified() && !ip.is_multicast(),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified() && !ip.is_multicast(),
        _ => false,
    };
    if !ip_ok {
        return false;
    }
    let transport_ok = match it.next() {
        Some(Protocol::Tcp(port)) => port != 0,
        Some(Protocol::Udp(port)) => port != 0 && matches!(it.next(), Some(Protocol::QuicV1)),
        _ => false,
    };
    transport_ok && it.all(|p| matches!(p, Protocol::P2p(_)))
}

/// Splits addresses into QUIC ones and the others, each without duplicates, order kept.
pub(super) fn quic_first(addrs: Vec<Multiaddr>) -> (Vec<Multiaddr>, Vec<Multiaddr>) {
    let mut quic = Vec::new();
    let mut other = Vec::new();
    for addr in addrs {
        let list = if is_quic(&addr) {
            &mut quic
        } else {
            &mut other
        };
        if !list.contains(&addr) {
            list.push(addr);
        }
    }
    (quic, other)
}

#[cfg(test)]
mod unit {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn classifies_addresses() {
        let quic = ma("/ip4/10.0.0.1/udp/4001/quic-v1");
        let tcp = ma("/ip4/10.0.0.1/tcp/4001");
        assert!(is_quic(&quic) && !is_tcp(&quic));
        assert!(is_tcp(&tcp) && !is_quic(&tcp));
        assert_eq!(quic_port(&quic), Some(4001));
        assert_eq!(quic_port(&tcp), None);
        assert!(is_dialable(&quic) && is_dialable(&tcp));
        assert!(!is_dialable(&ma("/ip4/0.0.0.0/tcp/4001")));
        assert!(!is_dialable(&ma("/ip4/10.0.0.1/tcp/0")));
        assert!(!is_dialable(&ma("/ip4/10.0.0.1/udp/4001/quic")));
        assert!(!is_dialable(&ma("/dns4/example.com/tcp/4001")));
        assert!(is_loopback(&ma("/ip6/::1/tcp/1")));
        assert!(!is_loopback(&tcp));
    }

    #[test]
    fn splits_the_peer_id() {
        let peer = PeerId::random();
        let addr = ma("/ip4/10.0.0.1/tcp/4001").with(Protocol::P2p(peer));
        let (p, base) = split_p2p(&addr).unwrap();
        assert_eq!(p, peer);
        assert_eq!(base, ma("/ip4/10.0.0.1/tcp/4001"));
        assert_eq!(without_p2p(&addr), base);
        assert!(split_p2p(&base).is_none());
        assert!(is_dialable(&addr));
    }

    #[test]
    fn orders_quic_first_without_duplicates() {
        let q = ma("/ip4/10.0.0.1/udp/1/quic-v1");
        let t = ma("/ip4/10.0.0.1/tcp/1");
        let (quic, other) = quic_first(vec![t.clone(), q.clone(), t.clone(), q.clone()]);
        assert_eq!(quic, vec![q]);
        assert_eq!(other, vec![t]);
    }
}
