//! Kademlia and identify events: provider lookups (with the providers' addresses kept so they
//! can be dialed), announcements, bootstraps, storing others' provider records, and filing the
//! addresses identify reports.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use libp2p::core::Endpoint;
use libp2p::kad::store::RecordStore as _;
use libp2p::kad::{self, GetProvidersOk, ProviderRecord, QueryId, QueryResult, RecordKey};
use libp2p::swarm::{ConnectionId, NetworkBehaviour as _};
use libp2p::{Multiaddr, PeerId, identify};
use tokio::sync::oneshot;

use super::task::Task;
use super::{FIND_PROVIDERS_TIMEOUT, SwarmError, addr};
use crate::ports::NetworkError;

/// How long a provider lookup keeps collecting after its first holder turned up (unless it
/// reaches its limit first), at most: see [`settle_after`].
const FIND_SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
/// ... and at least.
const FIND_SETTLE_MIN: std::time::Duration = std::time::Duration::from_millis(20);

/// How long to keep collecting once the first holder turned up `first` after the lookup began:
/// as long again. Peers that are alive answer within about the round trips the first answer
/// took; one that is dead or gone holds the query until its dial times out. A fixed 500 ms
/// cost every fresh download on a fast network half a second whenever the query met a
/// provider that had left (`bench fleet`: a fresh node's first byte 520 ms; 32 ms now).
fn settle_after(first: std::time::Duration) -> std::time::Duration {
    first.clamp(FIND_SETTLE_MIN, FIND_SETTLE)
}

/// A provider lookup in progress.
pub(super) struct Find {
    key: RecordKey,
    started: tokio::time::Instant,
    limit: usize,
    found: Vec<PeerId>,
    reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>>,
}

impl Find {
    /// Answers with what was found; a failure counts only when nothing was.
    fn answer(self, failure: Option<String>) {
        let result = match failure {
            Some(reason) if self.found.is_empty() => Err(NetworkError::Query(reason)),
            _ => Ok(self.found),
        };
        let _ = self.reply.send(result);
    }
}

impl Task {
    pub(super) fn start_find(
        &mut self,
        key: RecordKey,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetworkError>>,
    ) {
        self.dht.provider_lookups.fetch_add(1, Ordering::Relaxed);
        let id = self.swarm.behaviour_mut().kad.get_providers(key.clone());
        self.finds.insert(
            id,
            Find {
                key,
                started: tokio::time::Instant::now(),
                limit,
                found: Vec::new(),
                reply,
            },
        );
        self.find_deadlines.push(Box::pin(async move {
            tokio::time::sleep(FIND_PROVIDERS_TIMEOUT).await;
            id
        }));
    }

    pub(super) fn on_find_deadline(&mut self, id: QueryId) {
        if let Some(find) = self.finds.remove(&id) {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            find.answer(Some(format!(
                "no provider found within {FIND_PROVIDERS_TIMEOUT:?}"
            )));
        }
    }

    fn finish_find(&mut self, id: QueryId, failure: Option<String>) {
        if let Some(find) = self.finds.remove(&id) {
            find.answer(failure);
        }
    }

    fn on_providers(&mut self, id: QueryId, providers: HashSet<PeerId>) {
        let Some(find) = self.finds.get(&id) else {
            return;
        };
        let room = find.limit.saturating_sub(find.found.len());
        let fresh: Vec<PeerId> = providers
            .into_iter()
            .filter(|p| *p != self.local && !find.found.contains(p))
            .take(room)
            .collect();
        let key = find.key.clone();
        for peer in &fresh {
            self.remember_provider_addresses(&key, *peer);
        }
        let Some(find) = self.finds.get_mut(&id) else {
            return;
        };
        let first = find.found.is_empty() && !fresh.is_empty();
        find.found.extend(fresh);
        if first && find.found.len() < find.limit {
            // The query itself ends only when every peer it asked has answered or timed out,
            // and a dead peer (the gateway, in an outage) holds it for the whole dial timeout:
            // answer with what came in shortly after the first holder instead.
            let settle = settle_after(find.started.elapsed());
            self.find_deadlines.push(Box::pin(async move {
                tokio::time::sleep(settle).await;
                id
            }));
        }
        if find.found.len() >= find.limit {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
            self.finish_find(id, None);
        }
    }

    /// Copies the addresses a provider came with into the address book, so it can be dialed
    /// after the lookup (Kademlia forgets them when the query ends, and never puts them in the
    /// routing table). They are in the local provider record (when this node stored one) or in
    /// the running query, which Kademlia exposes only through the swarm's dial-address hook;
    /// that hook only reads, so asking it here is safe.
    fn remember_provider_addresses(&mut self, key: &RecordKey, peer: PeerId) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut addrs: Vec<Multiaddr> = kad
            .store_mut()
            .providers(key)
            .into_iter()
            .filter(|r| r.provider == peer)
            .flat_map(|r| r.addresses)
            .collect();
        addrs.extend(
            kad.handle_pending_outbound_connection(
                ConnectionId::new_unchecked(0),
                Some(peer),
                &[],
                Endpoint::Dialer,
            )
            .unwrap_or_default(),
        );
        for address in addrs {
            let address = addr::without_p2p(&address);
            if addr::is_dialable(&address) {
                self.book.add(peer, address);
            }
        }
    }

    /// Stores a provider record another peer announced (filtering is on so the task can note
    /// its expiry, and keep non-members' records out). Kademlia only passes on records whose
    /// provider is the peer that sent them.
    pub(super) fn store_provider(&mut self, record: ProviderRecord) {
        if record.provider == self.local {
            return;
        }
        if !self.is_member(&record.provider) {
            self.hold_record(record);
            return;
        }
        match self
            .swarm
            .behaviour_mut()
            .kad
            .store_mut()
            .add_provider(record.clone())
        {
            Ok(()) => self.expiry.note(&record),
            Err(e) => {
                tracing::debug!(error = ?e, provider = %record.provider, "provider record not stored")
            }
        }
    }

    pub(super) fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                QueryResult::GetProviders(Ok(GetProvidersOk::FoundProviders {
                    providers, ..
                })) => {
                    self.on_providers(id, providers);
                    if step.last {
                        self.finish_find(id, None);
                    }
                }
                QueryResult::GetProviders(Ok(GetProvidersOk::FinishedWithNoAdditionalRecord {
                    ..
                })) => self.finish_find(id, None),
                QueryResult::GetProviders(Err(e)) => self.finish_find(id, Some(e.to_string())),
                QueryResult::StartProviding(result) => {
                    if let Some(reply) = self.provides.remove(&id) {
                        let result = result
                            .map(|_| ())
                            .map_err(|e| NetworkError::Query(format!("announcement: {e}")));
                        let _ = reply.send(result);
                    }
                }
                QueryResult::RepublishProvider(Err(e)) => {
                    tracing::debug!(error = %e, "re-announcement incomplete");
                }
                QueryResult::Bootstrap(result) => {
                    if step.last
                        && let Some(reply) = self.bootstraps.remove(&id)
                    {
                        let result = match result {
                            Ok(_) => Ok(self.refresh_known_peers()),
                            Err(e) => Err(SwarmError::Query(e.to_string())),
                        };
                        let _ = reply.send(result);
                    }
                }
                _ => {}
            },
            kad::Event::InboundRequest { request } => {
                self.dht.answered.fetch_add(1, Ordering::Relaxed);
                if let kad::InboundRequest::AddProvider {
                    record: Some(record),
                } = request
                {
                    self.store_provider(record);
                }
            }
            kad::Event::RoutingUpdated { .. } => {
                self.refresh_known_peers();
            }
            // Manual inserts (membership): a member goes into the routing table, a stranger's
            // address is kept for dialing only.
            kad::Event::RoutablePeer { peer, address }
            | kad::Event::PendingRoutablePeer { peer, address } => {
                self.learn_address(peer, address);
            }
            _ => {}
        }
    }

    /// Files the listen addresses a flotilla DHT node reports: into the routing table (which
    /// ignores inbound connections' addresses otherwise) and the address book. Loopback
    /// addresses count only from a peer reached over loopback.
    pub(super) fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received {
            connection_id,
            peer_id,
            info,
        } = event
        else {
            return;
        };
        if !info.protocols.contains(&self.kad_protocol) {
            tracing::debug!(peer = %peer_id, agent = %info.agent_version, "peer does not speak flotilla's DHT");
            return;
        }
        let via_loopback = self
            .connections
            .get(&connection_id)
            .is_some_and(|(_, remote)| addr::is_loopback(remote));
        let listen: Vec<Multiaddr> = info
            .listen_addrs
            .iter()
            .map(addr::without_p2p)
            .filter(|a| via_loopback || !addr::is_loopback(a))
            .collect();
        let (quic, other) = addr::quic_first(listen);
        for address in quic.into_iter().chain(other) {
            self.learn_address(peer_id, address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_lookup_settles_as_long_again_as_its_first_holder_took() {
        let ms = Duration::from_millis;
        assert_eq!(settle_after(ms(1)), FIND_SETTLE_MIN);
        assert_eq!(settle_after(ms(80)), ms(80));
        assert_eq!(settle_after(ms(3000)), FIND_SETTLE);
    }
}
