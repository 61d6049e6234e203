//! Ports for the servers the benchmarks and the integration tests start (the test crate includes
//! this file too), picked outside the kernel's ephemeral range.
//!
//! A port picked by binding port 0 and releasing it comes from the ephemeral range, the range
//! the kernel also hands to every later `bind(0)` and outgoing connection. A node started on
//! such a port listens on its swarm ports (port 0) first and its OCI endpoint after, so its own
//! swarm could take the port it was told to serve HTTP on: CI saw exactly that on 2026-12-04
//! (`cannot listen on 127.0.0.1:44483: Address already in use`, the node's own libp2p TCP
//! listener holding 44483). Ports below that range are never handed out by the kernel; this
//! process walks them in order from a random start, so it never hands one out twice, and two
//! processes picking at once start far apart.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Lowest port picked: below it live well-known services' ports (5000, 8080, …).
const POOL_FLOOR: u16 = 10_000;
/// A pool smaller than this is not worth walking; the kernel's pick is used instead.
const POOL_MIN: u32 = 2_000;
/// The kernel's default ephemeral range, used when `/proc` cannot be read.
const DEFAULT_EPHEMERAL: (u16, u16) = (32_768, 60_999);

/// Where this process is in its walk of the pool.
struct Walk {
    /// First port of the pool.
    low: u16,
    /// Ports in the pool.
    span: u32,
    /// Steps taken from the random start (each step looks at one port).
    steps: u32,
    /// The random start, as an offset into the pool.
    start: u32,
}

static WALK: Mutex<Option<Walk>> = Mutex::new(None);

/// A port on 127.0.0.1 that is free for both TCP and UDP and that this process has not handed
/// out before.
pub fn free_port() -> io::Result<u16> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A port on `ip` that is free for both TCP and UDP, outside the kernel's ephemeral range, and
/// that this process has not handed out before.
pub fn free_port_on(ip: IpAddr) -> io::Result<u16> {
    let mut guard = WALK.lock().unwrap_or_else(|e| e.into_inner());
    let walk = guard.get_or_insert_with(new_walk);
    if walk.span == 0 {
        drop(guard);
        return kernel_pick(ip);
    }
    while walk.steps < walk.span {
        let offset = (walk.start + walk.steps) % walk.span;
        walk.steps += 1;
        let port = walk.low + offset as u16;
        // std's TcpListener sets SO_REUSEADDR, as the servers we start do: a port whose old
        // connections linger in TIME_WAIT counts as free, as it is for them.
        if TcpListener::bind((ip, port)).is_ok() && UdpSocket::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!(
            "every port in {}..{} was handed out already or is in use",
            walk.low,
            u32::from(walk.low) + walk.span
        ),
    ))
}

/// The pool below (or, if there is no room, above) the ephemeral range, with a random start.
fn new_walk() -> Walk {
    let (eph_low, eph_high) = ephemeral_range();
    let (low, span) = if u32::from(eph_low).saturating_sub(u32::from(POOL_FLOOR)) >= POOL_MIN {
        (POOL_FLOOR, u32::from(eph_low) - u32::from(POOL_FLOOR))
    } else if 65_535 - u32::from(eph_high) >= POOL_MIN {
        (eph_high + 1, 65_535 - u32::from(eph_high))
    } else {
        (0, 0)
    };
    let mut h = RandomState::new().build_hasher();
    std::process::id().hash(&mut h);
    std::time::SystemTime::now().hash(&mut h);
    let start = if span == 0 {
        0
    } else {
        (h.finish() % u64::from(span)) as u32
    };
    Walk {
        low,
        span,
        steps: 0,
        start,
    }
}

/// `net.ipv4.ip_local_port_range`.
fn ephemeral_range() -> (u16, u16) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return DEFAULT_EPHEMERAL;
    };
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => (low, high),
        _ => DEFAULT_EPHEMERAL,
    }
}

/// Fallback when the ephemeral range leaves no room: the kernel's pick (may collide with a
/// later `bind(0)`, as the range itself was configured to allow).
fn kernel_pick(ip: IpAddr) -> io::Result<u16> {
    static HANDED_OUT: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let port = TcpListener::bind((ip, 0))?.local_addr()?.port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "every port the kernel offered was handed out already",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
        let (low, high) = ephemeral_range();
        let pooled = new_walk().span > 0;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let p = free_port().unwrap();
            assert!(seen.insert(p), "port {p} handed out twice");
            assert!(
                !pooled || !(low..=high).contains(&p),
                "port {p} is in the ephemeral range {low}..={high}"
            );
        }
    }
}
