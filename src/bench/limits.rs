//! The limits a registry cannot beat on this machine, measured in the same run as the servers:
//! SHA-256 speed (sha2, ring, aws-lc-rs; a push must hash every byte once), plain loopback TCP
//! (a blob GET moves bytes over the same socket path) and disk writes with and without fsync (a
//! push must land the blob, durably if the server fsyncs).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use super::data::{PIECE, fill};

/// One of the SHA-256 implementations the binary links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShaImpl {
    /// RustCrypto `sha2` (0.10, pure Rust without the `asm` feature; uses SHA-NI when present).
    Sha2,
    /// `ring`.
    Ring,
    /// `aws-lc-rs` (what `flotilla_protocol::digest::Hasher` uses).
    AwsLc,
}

impl ShaImpl {
    /// All of them, in the order they are reported.
    pub const ALL: [ShaImpl; 3] = [ShaImpl::Sha2, ShaImpl::Ring, ShaImpl::AwsLc];

    /// The crate name, for tables.
    pub fn name(self) -> &'static str {
        match self {
            ShaImpl::Sha2 => "sha2",
            ShaImpl::Ring => "ring",
            ShaImpl::AwsLc => "aws-lc-rs",
        }
    }

    /// The crate name as a JSON key.
    pub fn key(self) -> &'static str {
        match self {
            ShaImpl::Sha2 => "sha2",
            ShaImpl::Ring => "ring",
            ShaImpl::AwsLc => "aws_lc_rs",
        }
    }
}

/// A streaming SHA-256 over whichever implementation was chosen.
pub enum Sha256 {
    /// RustCrypto.
    Sha2(sha2::Sha256),
    /// ring.
    Ring(ring::digest::Context),
    /// aws-lc-rs.
    AwsLc(aws_lc_rs::digest::Context),
}

impl Sha256 {
    /// A fresh hasher.
    pub fn new(which: ShaImpl) -> Sha256 {
        match which {
            ShaImpl::Sha2 => Sha256::Sha2(<sha2::Sha256 as sha2::Digest>::new()),
            ShaImpl::Ring => Sha256::Ring(ring::digest::Context::new(&ring::digest::SHA256)),
            ShaImpl::AwsLc => {
                Sha256::AwsLc(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
            }
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Sha256::Sha2(h) => sha2::Digest::update(h, data),
            Sha256::Ring(h) => h.update(data),
            Sha256::AwsLc(h) => h.update(data),
        }
    }

    /// The digest in OCI form, `sha256:<hex>`.
    pub fn finish(self) -> String {
        let bytes: Vec<u8> = match self {
            Sha256::Sha2(h) => sha2::Digest::finalize(h).to_vec(),
            Sha256::Ring(h) => h.finish().as_ref().to_vec(),
            Sha256::AwsLc(h) => h.finish().as_ref().to_vec(),
        };
        let mut s = String::with_capacity(7 + 64);
        s.push_str("sha256:");
        for b in bytes {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The digest of a small in-memory payload.
pub fn digest_of(which: ShaImpl, data: &[u8]) -> String {
    let mut h = Sha256::new(which);
    h.update(data);
    h.finish()
}

/// Time to hash `data` single-threaded, fed in [`PIECE`]-sized updates as a server would.
pub fn time_sha(which: ShaImpl, data: &[u8]) -> Duration {
    let start = Instant::now();
    let mut h = Sha256::new(which);
    for piece in data.chunks(PIECE) {
        h.update(piece);
    }
    std::hint::black_box(h.finish());
    start.elapsed()
}

/// The digest of blob `seed` of `size` bytes, streaming the generator through `which`.
pub fn digest_of_blob(which: ShaImpl, seed: u64, size: u64) -> String {
    let mut h = Sha256::new(which);
    let mut buf = vec![0u8; PIECE];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(PIECE as u64) as usize;
        fill(seed, pos, &mut buf[..n]);
        h.update(&buf[..n]);
        pos += n as u64;
    }
    h.finish()
}

/// Time to move `size` bytes over plain loopback TCP between two threads, sender writing from a
/// RAM buffer and receiver discarding, both with [`PIECE`]-sized buffers: the ceiling for any
/// HTTP blob GET over the same path.
pub fn time_tcp(size: u64) -> io::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> io::Result<()> {
        let (mut sock, _) = listener.accept()?;
        let mut buf = vec![0u8; PIECE];
        fill(1, 0, &mut buf);
        let mut left = size;
        while left > 0 {
            let n = left.min(PIECE as u64) as usize;
            sock.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let start = Instant::now();
    let mut sock = TcpStream::connect(addr)?;
    let mut buf = vec![0u8; PIECE];
    let mut got = 0u64;
    loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let elapsed = start.elapsed();
    sender
        .join()
        .map_err(|_| io::Error::other("TCP sender thread panicked"))??;
    if got != size {
        return Err(io::Error::other(format!(
            "plain TCP moved {got} bytes, expected {size}"
        )));
    }
    Ok(elapsed)
}

/// Times of writing `size` bytes into a new file in `dir`: until the last `write` returns (the
/// page cache's speed), and until `fsync` returns too (the floor of a durable push).
pub fn time_disk(dir: &Path, size: u64) -> io::Result<(Duration, Duration)> {
    let path = dir.join("disk-probe");
    let mut buf = vec![0u8; PIECE];
    fill(2, 0, &mut buf);
    let start = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let written = start.elapsed();
    file.sync_all()?;
    let synced = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok((written, synced))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::data::small_blob;

    #[test]
    fn all_implementations_agree() {
        let empty = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let data = small_blob(9, 3 * PIECE + 17);
        let whole = digest_of(ShaImpl::Sha2, &data);
        for which in ShaImpl::ALL {
            assert_eq!(digest_of(which, b""), empty, "{}", which.name());
            assert_eq!(digest_of(which, &data), whole, "{}", which.name());
            assert_eq!(
                digest_of_blob(which, 9, data.len() as u64),
                whole,
                "{}",
                which.name()
            );
        }
    }

    #[test]
    fn tcp_and_disk_probes_move_every_byte() {
        time_tcp(5 * PIECE as u64 + 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        time_disk(dir.path(), PIECE as u64 + 1).unwrap();
        assert!(!dir.path().join("disk-probe").exists());
    }
}
