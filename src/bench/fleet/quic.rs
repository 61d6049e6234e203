//! Plain QUIC on loopback, the ceiling for the node's piece transfer: quinn (the version
//! libp2p-quic links) moving bytes over one stream in 1 MiB writes, sender and receiver each on
//! its own thread with its own single-threaded tokio runtime, as two processes would be.
//!
//! The transport mirrors what the node's libp2p-quic 0.14 transport configures (its stream and
//! connection windows, `flotilla_node::swarm::QUIC_*_WINDOW`; path MTU discovery, no spin bit,
//! 5 s keep-alive) and the UDP sockets get the 4 MiB buffers the node asks for, so the
//! difference between this figure and a piece transfer is flotilla's and libp2p's work on top
//! of QUIC, not tuning. TLS 1.3 runs on aws-lc-rs with either
//! libp2p-tls's cipher-suite order (ChaCha20-Poly1305 first, which is what peers negotiate) or
//! AES-128-GCM first, to show what the cipher costs.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use flotilla_node::swarm::{QUIC_CONNECTION_WINDOW, QUIC_STREAM_WINDOW};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, TokioRuntime, TransportConfig, VarInt};
use rustls::crypto::aws_lc_rs::{self as provider, cipher_suite};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::bench::data::{PIECE, fill};

/// The UDP socket buffers the node requests (`udp_buffer_bytes`).
const UDP_BUFFER: usize = 4 << 20;
/// Longest a transfer may take before the probe gives up (and the receiver thread with it).
const LIMIT: Duration = Duration::from_secs(300);

/// Which cipher suite the handshake picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suites {
    /// libp2p-tls's order: ChaCha20-Poly1305, AES-256-GCM, AES-128-GCM.
    Libp2p,
    /// AES-128-GCM first.
    AesFirst,
}

fn crypto_provider(suites: Suites) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = provider::default_provider();
    p.cipher_suites = match suites {
        Suites::Libp2p => vec![
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        Suites::AesFirst => vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
    };
    Arc::new(p)
}

/// The node's transport settings (`libp2p_quic::Config::new` and its conversion to quinn, with
/// the node's windows).
fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_uni_streams(0u32.into());
    t.max_concurrent_bidi_streams(256u32.into());
    t.datagram_receive_buffer_size(None);
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    t.max_idle_timeout(Some(VarInt::from_u32(10_000).into()));
    t.allow_spin(false);
    t.stream_receive_window(QUIC_STREAM_WINDOW.into());
    t.receive_window(QUIC_CONNECTION_WINDOW.into());
    Arc::new(t)
}

/// A loopback UDP socket with [`UDP_BUFFER`]-byte buffers (the kernel may grant less).
fn udp_socket() -> anyhow::Result<UdpSocket> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
    let s = socket2::SockRef::from(&sock);
    // Best effort, as in the node: the kernel caps the request at net.core.[rw]mem_max.
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    Ok(sock)
}

/// Configurations for both ends, trusting one fresh self-signed certificate.
fn configs(suites: Suites) -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .context("generating a certificate")?;
    let der: CertificateDer<'static> = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(crypto_provider(suites))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der)?;
    let client = rustls::ClientConfig::builder_with_provider(crypto_provider(suites))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let transport = transport();
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server)?));
    server.transport_config(Arc::clone(&transport));
    server.migration(false);
    let mut client = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client)?));
    client.transport_config(transport);
    Ok((server, client))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a runtime")
}

/// Receives one stream to its end into a [`PIECE`]-sized buffer, then answers with the byte
/// count so the sender's clock stops when the last byte has arrived.
async fn receive(endpoint: Endpoint) -> anyhow::Result<u64> {
    let incoming = endpoint.accept().await.context("endpoint closed")?;
    let conn = incoming.await.context("QUIC handshake (server)")?;
    let (mut send, mut recv) = conn.accept_bi().await.context("accepting the stream")?;
    let mut buf = vec![0u8; PIECE];
    let mut got = 0u64;
    while let Some(n) = recv.read(&mut buf).await.context("reading")? {
        got += n as u64;
    }
    send.write_all(&got.to_le_bytes()).await?;
    send.finish()?;
    // The sender closes the connection once it has read the answer.
    conn.closed().await;
    endpoint.wait_idle().await;
    Ok(got)
}

/// Sends `bytes` in [`PIECE`]-sized writes; the time from opening the stream (after the
/// handshake) to the receiver's answer.
async fn send(
    endpoint: Endpoint,
    config: quinn::ClientConfig,
    to: SocketAddr,
    bytes: u64,
) -> anyhow::Result<Duration> {
    let conn = endpoint
        .connect_with(config, to, "localhost")?
        .await
        .context("QUIC handshake (client)")?;
    let mut buf = vec![0u8; PIECE];
    fill(3, 0, &mut buf);
    let start = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(PIECE as u64) as usize;
        send.write_all(&buf[..n]).await.context("writing")?;
        left -= n as u64;
    }
    send.finish()?;
    let mut answer = [0u8; 8];
    recv.read_exact(&mut answer)
        .await
        .context("reading the receiver's count")?;
    let took = start.elapsed();
    let got = u64::from_le_bytes(answer);
    if got != bytes {
        bail!("the receiver got {got} bytes, {bytes} were sent");
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(took)
}

/// Time to move `bytes` over one QUIC stream on loopback with the cipher order `suites`.
/// Blocking (two threads, two runtimes): call it from `spawn_blocking`.
pub fn time_quinn(bytes: u64, suites: Suites) -> anyhow::Result<Duration> {
    let (server_config, client_config) = configs(suites)?;
    let server_socket = udp_socket()?;
    let to = server_socket.local_addr()?;
    let client_socket = udp_socket()?;
    let receiver = std::thread::Builder::new()
        .name("quinn-receiver".into())
        .spawn(move || -> anyhow::Result<u64> {
            let rt = runtime()?;
            rt.block_on(async move {
                let endpoint = Endpoint::new(
                    EndpointConfig::default(),
                    Some(server_config),
                    server_socket,
                    Arc::new(TokioRuntime),
                )?;
                tokio::time::timeout(LIMIT + Duration::from_secs(10), receive(endpoint))
                    .await
                    .context("plain QUIC receiver gave up")?
            })
        })
        .context("starting the receiver thread")?;
    let rt = runtime()?;
    let sent = rt.block_on(async move {
        let endpoint = Endpoint::new(
            EndpointConfig::default(),
            None,
            client_socket,
            Arc::new(TokioRuntime),
        )?;
        tokio::time::timeout(LIMIT, send(endpoint, client_config, to, bytes))
            .await
            .with_context(|| format!("plain QUIC transfer took over {LIMIT:?}"))?
    });
    let received = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?;
    let took = sent?;
    received?;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_cipher_orders_move_every_byte() {
        for suites in [Suites::Libp2p, Suites::AesFirst] {
            time_quinn(3 * PIECE as u64 + 5, suites).unwrap();
        }
    }
}
