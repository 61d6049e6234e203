//! Raising the socket buffers of the QUIC listeners.
//!
//! Neither libp2p-quic nor quinn sets SO_RCVBUF / SO_SNDBUF, and at the kernel default (208 KiB)
//! QUIC drops thousands of packets per GiB under load. libp2p does not hand out its sockets, so
//! this finds them: every descriptor of the process that is a UDP socket bound to one of the
//! listen ports. A root process uses SO_RCVBUFFORCE / SO_SNDBUFFORCE, which ignore
//! `net.core.rmem_max` / `wmem_max`; otherwise the kernel silently caps the request, which is why
//! the size actually granted is read back and reported.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use socket2::{Socket, Type};

/// What one socket got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tuned {
    /// The socket's local port.
    pub(super) port: u16,
    /// SO_RCVBUF as the kernel reports it (Linux doubles the request for its bookkeeping).
    pub(super) recv: usize,
    /// SO_SNDBUF as the kernel reports it.
    pub(super) send: usize,
    /// Whether the *FORCE options were allowed (root or CAP_NET_ADMIN).
    pub(super) forced: bool,
}

impl Tuned {
    /// Whether the kernel granted the whole request of `bytes` both ways (Linux reports twice
    /// what it granted).
    pub(super) fn granted(&self, bytes: usize) -> bool {
        let full = bytes.saturating_mul(2);
        self.recv >= full && self.send >= full
    }
}

/// Sets the buffers of every UDP socket of this process bound to one of `ports` to `bytes`.
///
/// # Errors
/// Only when `/proc/self/fd` cannot be listed; sockets that vanish or refuse are skipped.
pub(super) fn raise_buffers(ports: &[u16], bytes: usize) -> io::Result<Vec<Tuned>> {
    let mut tuned = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // The descriptor may have been closed (and reused) since it was listed; working on a
        // duplicate keeps that harmless, and the checks below reject whatever it became.
        let Ok(socket) = duplicate(fd) else { continue };
        if !matches!(socket.r#type(), Ok(t) if t == Type::DGRAM) {
            continue;
        }
        let Some(port) = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
        else {
            continue;
        };
        if !ports.contains(&port) {
            continue;
        }
        tuned.push(tune(&socket, port, bytes));
    }
    Ok(tuned)
}

fn tune(socket: &Socket, port: u16, bytes: usize) -> Tuned {
    let request = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let forced_recv = set_int_option(socket, libc::SO_RCVBUFFORCE, request).is_ok();
    if !forced_recv {
        let _ = socket.set_recv_buffer_size(bytes);
    }
    let forced_send = set_int_option(socket, libc::SO_SNDBUFFORCE, request).is_ok();
    if !forced_send {
        let _ = socket.set_send_buffer_size(bytes);
    }
    Tuned {
        port,
        recv: socket.recv_buffer_size().unwrap_or(0),
        send: socket.send_buffer_size().unwrap_or(0),
        forced: forced_recv && forced_send,
    }
}

/// A duplicate (close-on-exec) of a descriptor found in `/proc/self/fd`, owned by the caller.
#[allow(unsafe_code)]
fn duplicate(fd: RawFd) -> io::Result<Socket> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes plain integers and touches no memory of ours; on a
    // descriptor that is not open it fails with EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` was just returned by fcntl, so it is open, and nothing else owns it.
    Ok(Socket::from(unsafe { OwnedFd::from_raw_fd(dup) }))
}

/// setsockopt(SOL_SOCKET, name, value) for the options socket2 does not wrap (the *FORCE ones).
#[allow(unsafe_code)]
fn set_int_option(socket: &Socket, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("c_int size does not fit socklen_t"))?;
    // SAFETY: the descriptor stays open while `socket` is borrowed; the option value points at a
    // live c_int on this stack frame and `len` is its size, which is what SOL_SOCKET int options
    // read.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(&value).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn raises_the_buffers_of_the_matching_socket_only() {
        let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = target.local_addr().unwrap().port();
        let before = socket2::SockRef::from(&other).recv_buffer_size().unwrap();

        let tuned = raise_buffers(&[port], 4 << 20).unwrap();
        assert_eq!(tuned.len(), 1, "{tuned:?}");
        assert_eq!(tuned[0].port, port);
        assert!(tuned[0].recv > 0 && tuned[0].send > 0);
        // What the kernel reports is what the socket really has.
        let sock = socket2::SockRef::from(&target);
        assert_eq!(sock.recv_buffer_size().unwrap(), tuned[0].recv);
        if tuned[0].forced {
            assert!(tuned[0].granted(4 << 20), "{tuned:?}");
        }
        assert_eq!(
            socket2::SockRef::from(&other).recv_buffer_size().unwrap(),
            before
        );
    }
}
