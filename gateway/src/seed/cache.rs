//! A small least-recently-used map bounded by entry count and by total weight (bytes, or 1 per
//! entry), for the seed's decoded piece tables and open blob files.
//!
//! Eviction scans for the oldest entry: with a few thousand entries at most and one eviction per
//! insert beyond the bounds, that costs less than the hashing or the file open that filled it.

use std::collections::HashMap;
use std::hash::Hash;

/// The map (not synchronised: the seed wraps it in a mutex).
pub(crate) struct Lru<K, V> {
    max_entries: usize,
    max_weight: usize,
    weight: usize,
    tick: u64,
    map: HashMap<K, Slot<V>>,
}

struct Slot<V> {
    value: V,
    weight: usize,
    used: u64,
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    /// An empty map holding at most `max_entries` entries of at most `max_weight` in total (an
    /// entry heavier than that on its own is not kept).
    pub(crate) fn new(max_entries: usize, max_weight: usize) -> Self {
        Lru {
            max_entries: max_entries.max(1),
            max_weight,
            weight: 0,
            tick: 0,
            map: HashMap::new(),
        }
    }

    /// The value of `k`, marked as just used.
    pub(crate) fn get(&mut self, k: &K) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(k).map(|s| {
            s.used = tick;
            &s.value
        })
    }

    /// Inserts (or replaces) `k`, evicting the least recently used entries beyond the bounds.
    pub(crate) fn insert(&mut self, k: K, value: V, weight: usize) {
        if let Some(old) = self.map.remove(&k) {
            self.weight -= old.weight;
        }
        if weight > self.max_weight {
            return;
        }
        while !self.map.is_empty()
            && (self.map.len() >= self.max_entries || self.weight + weight > self.max_weight)
        {
            self.evict_oldest();
        }
        self.tick += 1;
        self.weight += weight;
        self.map.insert(
            k,
            Slot {
                value,
                weight,
                used: self.tick,
            },
        );
    }

    /// Drops `k`, if present.
    pub(crate) fn remove(&mut self, k: &K) {
        if let Some(s) = self.map.remove(k) {
            self.weight -= s.weight;
        }
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .map
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest
            && let Some(s) = self.map.remove(&k)
        {
            self.weight -= s.weight;
        }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_by_count_and_weight() {
        let mut c = Lru::new(3, 100);
        c.insert("a", 1, 10);
        c.insert("b", 2, 10);
        c.insert("c", 3, 10);
        assert_eq!(c.get(&"a"), Some(&1));
        c.insert("d", 4, 10);
        assert_eq!(c.get(&"b"), None, "b was the least recently used");
        assert_eq!(c.len(), 3);
        c.insert("e", 5, 85);
        assert_eq!(c.len(), 2, "weight bound evicts until e fits");
        assert_eq!(c.get(&"e"), Some(&5));
        c.insert("huge", 6, 101);
        assert_eq!(c.get(&"huge"), None);
        c.insert("e", 7, 1);
        assert_eq!(c.get(&"e"), Some(&7));
        assert_eq!(c.weight, c.map.values().map(|s| s.weight).sum::<usize>());
    }
}
