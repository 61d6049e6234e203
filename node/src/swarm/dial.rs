//! The node's own dials (bootstrap peers, peers a stream is opened to): every known address of
//! the peer at once, QUIC ones listed first (TCP attempts start late, see [`super::eyeballs`]),
//! and every caller waiting for the same peer answered together.

use libp2p::core::Endpoint;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour as _};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::addr;
use super::task::Task;

/// Someone waiting for a connection to a peer.
pub(super) type Waiter = oneshot::Sender<Result<(), String>>;

/// A dial in progress.
pub(super) struct PendingDial {
    /// The connection attempt (all addresses race within it).
    connection: ConnectionId,
    waiters: Vec<Waiter>,
}

fn answer(waiters: Vec<Waiter>, result: &Result<(), String>) {
    for waiter in waiters {
        let _ = waiter.send(result.clone());
    }
}

impl Task {
    /// Answers `reply` once a connection to `peer` exists, dialing if there is none.
    pub(super) fn connect(&mut self, peer: PeerId, reply: Waiter) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
        } else if let Some(pending) = self.dials.get_mut(&peer) {
            pending.waiters.retain(|w| !w.is_closed());
            pending.waiters.push(reply);
        } else {
            self.dial(peer, vec![reply]);
        }
    }

    /// Dials `peer` at every address known for it.
    pub(super) fn dial(&mut self, peer: PeerId, waiters: Vec<Waiter>) {
        let (mut addrs, tcp) = addr::quic_first(self.addresses_of(peer));
        addrs.extend(tcp);
        if addrs.is_empty() {
            answer(waiters, &Err("no known address".to_owned()));
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::Disconnected)
            .addresses(addrs)
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(
                    peer,
                    PendingDial {
                        connection,
                        waiters,
                    },
                );
            }
            // Connected meanwhile.
            Err(DialError::DialPeerConditionFalse(_)) => answer(waiters, &Ok(())),
            Err(e) => answer(waiters, &Err(e.to_string())),
        }
    }

    /// Every dialable address known for `peer`: the address book, the routing table and the
    /// running Kademlia queries (the latter two through Kademlia's read-only dial-address hook).
    fn addresses_of(&mut self, peer: PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self.book.get(&peer).collect();
        addrs.extend(
            self.swarm
                .behaviour_mut()
                .kad
                .handle_pending_outbound_connection(
                    ConnectionId::new_unchecked(0),
                    Some(peer),
                    &[],
                    Endpoint::Dialer,
                )
                .unwrap_or_default(),
        );
        addrs
            .iter()
            .map(addr::without_p2p)
            .filter(addr::is_dialable)
            .collect()
    }

    /// A connection to `peer` exists: answers everyone waiting for it.
    pub(super) fn on_connected(&mut self, peer: PeerId) {
        if let Some(pending) = self.dials.remove(&peer) {
            answer(pending.waiters, &Ok(()));
        }
    }

    /// A dial failed; if it was ours, its waiters learn why.
    pub(super) fn on_dial_error(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        error: &DialError,
    ) {
        tracing::debug!(?peer, %error, "dial failed");
        let Some(peer) = peer else { return };
        if self
            .dials
            .get(&peer)
            .is_none_or(|p| p.connection != connection)
        {
            return;
        }
        if let Some(pending) = self.dials.remove(&peer) {
            answer(pending.waiters, &Err(error.to_string()));
        }
    }

    /// Drops waiters that gave up (their open_stream timed out).
    pub(super) fn prune_dials(&mut self) {
        for pending in self.dials.values_mut() {
            pending.waiters.retain(|w| !w.is_closed());
        }
    }
}
