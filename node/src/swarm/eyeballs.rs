//! "Happy eyeballs" between QUIC and TCP: a transport wrapper that starts its dials only after a
//! short delay.
//!
//! The swarm dials all known addresses of a peer at once and keeps the first connection that
//! comes up. Without a head start, TCP + noise + yamux wins that race about half the time on a
//! LAN, and the piece streams then run over TCP. Wrapped around the TCP transport, this gives
//! QUIC [`TCP_HEAD_START`] to finish its handshake (the losing attempt is dropped before it even
//! connects), while a peer whose UDP is blocked is still reached over TCP after that delay
//! rather than after QUIC's 5 s handshake timeout. RFC 8305 recommends the same 250 ms between
//! address families.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use libp2p::core::Transport;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};

/// How long QUIC has before a TCP dial to the same peer starts.
pub(super) const TCP_HEAD_START: Duration = Duration::from_millis(250);

/// A transport whose dials wait `delay` before they start.
pub(super) struct DelayedDial<T> {
    inner: T,
    delay: Duration,
}

impl<T> DelayedDial<T> {
    pub(super) fn new(inner: T, delay: Duration) -> Self {
        DelayedDial { inner, delay }
    }
}

impl<T> Transport for DelayedDial<T>
where
    T: Transport + Unpin,
    T::Dial: Send + 'static,
    T::Output: 'static,
    T::Error: 'static,
{
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<T::Output, T::Error>>;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        // libp2p's transports do no work until their dial future is polled, so the connection
        // attempt itself starts after the delay.
        let dial = self.inner.dial(addr, opts)?;
        let delay = self.delay;
        Ok(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            dial.await
        }
        .boxed())
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}
