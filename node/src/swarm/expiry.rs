//! Expiry of the provider records other peers send us.
//!
//! Kademlia's `MemoryStore` drops an expired provider record only when someone asks for that key,
//! and it counts every key with a record against `max_provided_keys`, ours included: on a
//! long-lived node, records of blobs nobody asks for any more would pile up until the node could
//! not even announce its own blobs. The swarm task stores incoming records itself
//! (`StoreInserts::FilterBoth`), notes their expiry here, and purges on a timer.

use std::collections::VecDeque;
use std::time::Instant;

use libp2p::PeerId;
use libp2p::kad::store::{MemoryStore, RecordStore};
use libp2p::kad::{ProviderRecord, RecordKey};

/// Most records examined per purge, so one purge never stalls the swarm task for long.
const PURGE_BATCH: usize = 10_000;

/// Received provider records in the order they expire (all share one TTL, so arrival order).
pub(super) struct ProviderExpiry {
    queue: VecDeque<(Instant, RecordKey, PeerId)>,
    cap: usize,
}

impl ProviderExpiry {
    /// Remembers at most `cap` pending expiries; beyond that the oldest are forgotten (their
    /// records are then dropped only when looked up, as without this).
    pub(super) fn new(cap: usize) -> Self {
        ProviderExpiry {
            queue: VecDeque::new(),
            cap,
        }
    }

    /// Notes a record just stored.
    pub(super) fn note(&mut self, record: &ProviderRecord) {
        let Some(expires) = record.expires else {
            return;
        };
        if self.queue.len() >= self.cap {
            self.queue.pop_front();
        }
        self.queue
            .push_back((expires, record.key.clone(), record.provider));
    }

    /// Removes the records that expired by `now` and were not renewed since; returns how many.
    pub(super) fn purge(&mut self, store: &mut MemoryStore, now: Instant) -> usize {
        let mut removed = 0;
        for _ in 0..PURGE_BATCH {
            match self.queue.front() {
                Some((expires, _, _)) if *expires <= now => {}
                _ => break,
            }
            let Some((_, key, provider)) = self.queue.pop_front() else {
                break;
            };
            let expired = store
                .providers(&key)
                .iter()
                .any(|r| r.provider == provider && r.is_expired(now));
            if expired {
                store.remove_provider(&key, &provider);
                removed += 1;
            }
        }
        removed
    }

    /// Pending expiries.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod unit {
    use std::time::Duration;

    use super::*;

    fn record(key: &[u8], provider: PeerId, expires: Instant) -> ProviderRecord {
        ProviderRecord {
            key: RecordKey::new(&key),
            provider,
            expires: Some(expires),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn purges_expired_records_but_not_renewed_ones() {
        let mut store = MemoryStore::new(PeerId::random());
        let mut expiry = ProviderExpiry::new(10);
        let now = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let old_a = record(b"k1", a, now);
        let old_b = record(b"k2", b, now);
        for r in [&old_a, &old_b] {
            store.add_provider(r.clone()).unwrap();
            expiry.note(r);
        }
        // b re-announced: its record now lives on.
        let renewed = record(b"k2", b, now + Duration::from_secs(60));
        store.add_provider(renewed.clone()).unwrap();
        expiry.note(&renewed);

        let later = now + Duration::from_secs(1);
        assert_eq!(expiry.purge(&mut store, later), 1);
        assert!(store.providers(&old_a.key).is_empty());
        assert_eq!(store.providers(&old_b.key).len(), 1);
        assert_eq!(expiry.len(), 1);
    }

    #[test]
    fn forgets_the_oldest_beyond_its_cap() {
        let mut expiry = ProviderExpiry::new(2);
        let now = Instant::now();
        for i in 0..3u8 {
            expiry.note(&record(&[i], PeerId::random(), now));
        }
        assert_eq!(expiry.len(), 2);
    }
}
