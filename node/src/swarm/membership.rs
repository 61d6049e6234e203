//! Fleet membership in the swarm: who counts as a member, and the handshake that proves it.
//!
//! [`Members`] is the state every part of the swarm reads (cheaply, without the task): the fleet
//! key's peer id, this node's own certificate, and the peers whose certificates verified, each
//! until its certificate's `not_after`. The fleet's own peer (the gateway) is a member by
//! definition. Before the fleet is known nobody is.
//!
//! # The handshake: `/flotilla/member/1.0.0`
//! On a peer's first connection each side that holds a certificate opens one stream and sends
//! `u16 length || MemberCertificate::encode`; the other side verifies it (fleet key, names the
//! connection's peer, valid now), answers one byte (`0` accepted, `1` refused) and closes. Each
//! direction is independent: a peer is a member for *this* node once its own certificate
//! verified here. A renewed certificate is sent again to every connected peer.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_protocol::membership::{MAX_CERT_BYTES, MemberCertificate};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, StreamProtocol};
use tokio::sync::{Semaphore, mpsc, watch};

/// Protocol name of the membership handshake.
pub const MEMBER_PROTOCOL: &str = "/flotilla/member/1.0.0";
/// How long one handshake (either side) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stream to or from a peer that is not a member yet waits for its handshake (which
/// starts with the connection) before it is refused; at most half the stranger grace period,
/// so the refusal goes out before the disconnect.
const MEMBER_WAIT: Duration = Duration::from_secs(5);
/// Handshakes answered at once; beyond that, new handshake streams are dropped (the peer stays a
/// stranger and is disconnected after the grace period, then tries again).
const MAX_INBOUND_HANDSHAKES: usize = 64;
/// Verdict byte: the certificate was accepted.
const ACCEPTED: u8 = 0;
/// Verdict byte: the certificate was refused.
const REFUSED: u8 = 1;

/// Unix seconds now (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Who is a member, shared by the task, the handle and the stream gates.
pub(crate) struct Members {
    /// `false`: an open swarm, every peer counts as a member.
    enforced: bool,
    /// See [`MEMBER_WAIT`].
    handshake_wait: Duration,
    local: PeerId,
    state: RwLock<State>,
    /// Bumped on every change, so waiters can re-check.
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    fleet: Option<PeerId>,
    certificate: Option<MemberCertificate>,
    /// Peers whose certificates verified, with their `not_after` (Unix seconds, skew included).
    verified: HashMap<PeerId, u64>,
    /// When connected peers that are not members yet first connected (their handshake runs).
    connected_at: HashMap<PeerId, Instant>,
    /// Peers the gateway revoked (its signed revocation list, SPEC §5.3): strangers whatever
    /// certificate they show.
    revoked: HashSet<PeerId>,
}

impl Members {
    pub(crate) fn new(
        enforced: bool,
        local: PeerId,
        fleet: Option<PeerId>,
        grace: Duration,
    ) -> Self {
        Members {
            enforced,
            handshake_wait: MEMBER_WAIT.min(grace / 2),
            local,
            state: RwLock::new(State {
                fleet,
                certificate: None,
                verified: HashMap::new(),
                connected_at: HashMap::new(),
                revoked: HashSet::new(),
            }),
            changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn enforced(&self) -> bool {
        self.enforced
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether `peer` may exchange pieces and write DHT records here now.
    pub(crate) fn is_member(&self, peer: &PeerId) -> bool {
        if !self.enforced {
            return true;
        }
        let state = self.read();
        if state.fleet.as_ref() == Some(peer) {
            return true;
        }
        if state.revoked.contains(peer) {
            return false;
        }
        state.verified.get(peer).is_some_and(|until| {
            unix_now() <= until.saturating_add(flotilla_protocol::membership::MAX_CLOCK_SKEW_SECS)
        })
    }

    /// Waits at most `limit` for `peer` to become a member (its handshake may be in flight).
    pub(crate) async fn wait_member(&self, peer: &PeerId, limit: Duration) -> bool {
        let mut changes = self.changed.subscribe();
        let wait = async {
            loop {
                if self.is_member(peer) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or(false)
    }

    /// Waits for `peer`'s handshake while its connection is young (at most [`MEMBER_WAIT`], or
    /// half the grace period, after it first connected); a peer connected for longer without a
    /// valid certificate is answered at once.
    pub(crate) async fn wait_handshake(&self, peer: &PeerId) -> bool {
        if self.is_member(peer) {
            return true;
        }
        let since = self.read().connected_at.get(peer).copied();
        let left = match since {
            Some(at) => self.handshake_wait.saturating_sub(at.elapsed()),
            None => self.handshake_wait,
        };
        self.wait_member(peer, left).await
    }

    /// A first connection to `peer` (not a member yet): its handshake is running from now.
    pub(crate) fn note_connected(&self, peer: PeerId) {
        if self.enforced {
            self.write()
                .connected_at
                .entry(peer)
                .or_insert_with(Instant::now);
        }
    }

    pub(crate) fn fleet(&self) -> Option<PeerId> {
        self.read().fleet
    }

    /// Sets the fleet key; a different one than before voids every verified peer.
    pub(crate) fn set_fleet(&self, fleet: PeerId) {
        {
            let mut state = self.write();
            if state.fleet != Some(fleet) {
                state.fleet = Some(fleet);
                state.verified.clear();
                if state
                    .certificate
                    .as_ref()
                    .is_some_and(|c| c.signer_peer_id() != Some(fleet))
                {
                    state.certificate = None;
                }
            }
        }
        self.bump();
    }

    /// This node's certificate, if it holds one.
    pub(crate) fn certificate(&self) -> Option<MemberCertificate> {
        self.read().certificate.clone()
    }

    /// Takes this node's own certificate after checking it names this node and is signed by
    /// the fleet key (which must be known by then).
    pub(crate) fn set_certificate(&self, cert: MemberCertificate) -> Result<(), String> {
        let mut state = self.write();
        let fleet = state
            .fleet
            .ok_or_else(|| "the fleet key is not known yet".to_owned())?;
        cert.verify(&fleet, &self.local, unix_now())
            .map_err(|e| e.to_string())?;
        state.certificate = Some(cert);
        Ok(())
    }

    /// Verifies a certificate `peer` presented and, if good, makes it a member.
    pub(crate) fn admit(&self, peer: PeerId, cert: &MemberCertificate) -> Result<(), String> {
        let Some(fleet) = self.fleet() else {
            return Err("this node does not know its fleet yet".to_owned());
        };
        cert.verify(&fleet, &peer, unix_now())
            .map_err(|e| e.to_string())?;
        {
            let mut state = self.write();
            if state.revoked.contains(&peer) {
                return Err("the gateway revoked this member".to_owned());
            }
            state.verified.insert(peer, cert.not_after);
            state.connected_at.remove(&peer);
        }
        self.bump();
        Ok(())
    }

    /// Replaces the revoked peers (the gateway's latest list); returns those newly revoked.
    /// Their memberships end at once: the stream gates refuse them and the stranger sweep
    /// disconnects them without a grace period.
    pub(crate) fn set_revoked(&self, peers: &[PeerId]) -> Vec<PeerId> {
        let fresh: Vec<PeerId> = {
            let mut state = self.write();
            let next: HashSet<PeerId> = peers.iter().copied().collect();
            let fresh = next.difference(&state.revoked).copied().collect();
            for p in &next {
                state.verified.remove(p);
            }
            state.revoked = next;
            fresh
        };
        self.bump();
        fresh
    }

    /// Whether the gateway revoked `peer`.
    pub(crate) fn is_revoked(&self, peer: &PeerId) -> bool {
        self.read().revoked.contains(peer)
    }

    /// Forgets a peer that disconnected (it presents its certificate again on reconnecting).
    pub(crate) fn forget(&self, peer: &PeerId) {
        let mut state = self.write();
        state.connected_at.remove(peer);
        if state.verified.remove(peer).is_some() {
            drop(state);
            self.bump();
        }
    }
}

/// Sends this node's certificate to `peer` and reads the verdict: `Ok(true)` accepted.
pub(crate) async fn push(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    cert: Vec<u8>,
) -> Result<bool, String> {
    let exchange = async {
        let mut stream = control
            .open_stream(peer, StreamProtocol::new(MEMBER_PROTOCOL))
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(cert.len()).map_err(|_| "certificate too long".to_owned())?;
        let mut msg = len.to_be_bytes().to_vec();
        msg.extend_from_slice(&cert);
        stream.write_all(&msg).await.map_err(|e| e.to_string())?;
        stream.flush().await.map_err(|e| e.to_string())?;
        let mut verdict = [0u8; 1];
        stream
            .read_exact(&mut verdict)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.close().await;
        Ok(verdict[0] == ACCEPTED)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {HANDSHAKE_TIMEOUT:?}"))?
}

/// Answers every inbound handshake: verifies the certificate against the fleet and the
/// connection's peer, answers the verdict, and tells the task (`admitted`) who became a member.
/// Ends when the swarm stops or the task drops `admitted`'s receiver.
pub(crate) async fn accept_handshakes(
    mut incoming: libp2p_stream::IncomingStreams,
    members: Arc<Members>,
    admitted: mpsc::Sender<PeerId>,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND_HANDSHAKES));
    loop {
        let next = tokio::select! {
            next = incoming.next() => next,
            () = admitted.closed() => return,
        };
        let Some((peer, mut stream)) = next else {
            return;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "membership handshake dropped: too many at once");
            continue;
        };
        let members = members.clone();
        let admitted = admitted.clone();
        tokio::spawn(async move {
            let judged = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let mut len = [0u8; 2];
                stream
                    .read_exact(&mut len)
                    .await
                    .map_err(|e| e.to_string())?;
                let len = usize::from(u16::from_be_bytes(len));
                if len > MAX_CERT_BYTES {
                    return Err(format!("certificate of {len} bytes"));
                }
                let mut bytes = vec![0u8; len];
                stream
                    .read_exact(&mut bytes)
                    .await
                    .map_err(|e| e.to_string())?;
                let cert = MemberCertificate::decode(&bytes).map_err(|e| e.to_string())?;
                members.admit(peer, &cert)
            })
            .await
            .unwrap_or_else(|_| Err("handshake timed out".to_owned()));
            let verdict = match &judged {
                Ok(()) => {
                    tracing::debug!(%peer, "fleet member verified");
                    let _ = admitted.send(peer).await;
                    ACCEPTED
                }
                Err(reason) => {
                    tracing::info!(%peer, %reason, "membership certificate refused");
                    REFUSED
                }
            };
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                stream.write_all(&[verdict]).await?;
                stream.close().await
            })
            .await;
            drop(permit);
        });
    }
}
