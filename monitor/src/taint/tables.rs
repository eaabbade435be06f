//! Bounded tables: what keeps a hostile guest from exhausting host memory.
//!
//! A guest decides how many processes, files and sockets it makes, so every
//! table the taint engine keeps for it has a fixed capacity. At capacity the
//! table makes room by evicting: first entries that were **retired** (a
//! process that exited, kept only so that paths through it can still be
//! shown), oldest retirement first; then the live entry **least recently
//! used**. An entry is used when it is inserted and whenever taint flows
//! out of it ([`Bounded::touch`]): a tainted process that forks a million
//! children stays, its oldest idle children go.
//! Each eviction is returned to the caller, which counts it and marks the
//! VM's tracking incomplete: an evicted entry loses its taint, and a chain
//! through it ends there.
//!
//! Insertion, lookup, removal and eviction cost O(log n) at most (a hash
//! map for the entries, two ordered maps for their ages).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
struct Slot<V> {
    value: V,
    /// Age: insertion order while live, retirement order once retired.
    seq: u64,
    retired: bool,
}

/// A map with a capacity that evicts retired entries first, then the oldest.
#[derive(Debug, Clone)]
pub struct Bounded<K, V> {
    map: HashMap<K, Slot<V>>,
    live: BTreeMap<u64, K>,
    retired: BTreeMap<u64, K>,
    cap: usize,
    next: u64,
}

/// One entry as a snapshot stores it (in age order, so ages survive).
#[derive(Debug, Serialize, Deserialize)]
pub struct Stored<K, V> {
    pub key: K,
    pub value: V,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// An empty table holding at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            live: BTreeMap::new(),
            retired: BTreeMap::new(),
            cap: cap.max(1),
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|s| &s.value)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|s| &mut s.value)
    }

    pub fn contains(&self, k: &K) -> bool {
        self.map.contains_key(k)
    }

    /// Whether `k` is there and retired.
    pub fn is_retired(&self, k: &K) -> bool {
        self.map.get(k).is_some_and(|s| s.retired)
    }

    fn tick(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Inserts or replaces `k` (a replaced entry becomes live and young
    /// again). Returns what had to be evicted to make room.
    pub fn insert(&mut self, k: K, v: V) -> Option<(K, V)> {
        self.remove(&k);
        let evicted = if self.map.len() >= self.cap {
            self.evict()
        } else {
            None
        };
        let seq = self.tick();
        self.live.insert(seq, k.clone());
        self.map.insert(
            k,
            Slot {
                value: v,
                seq,
                retired: false,
            },
        );
        evicted
    }

    /// Marks `k` as just used: it is the last live entry to be evicted.
    pub fn touch(&mut self, k: &K) {
        self.next += 1;
        let seq = self.next;
        let Some(slot) = self.map.get_mut(k) else {
            return;
        };
        if slot.retired {
            return;
        }
        self.live.remove(&slot.seq);
        slot.seq = seq;
        self.live.insert(seq, k.clone());
    }

    /// Removes `k`.
    pub fn remove(&mut self, k: &K) -> Option<V> {
        let slot = self.map.remove(k)?;
        if slot.retired {
            self.retired.remove(&slot.seq);
        } else {
            self.live.remove(&slot.seq);
        }
        Some(slot.value)
    }

    /// Marks `k` retired: still there, but the first to go when room is
    /// needed. Returns false when `k` is absent.
    pub fn retire(&mut self, k: &K) -> bool {
        let seq = self.tick();
        let Some(slot) = self.map.get_mut(k) else {
            return false;
        };
        if slot.retired {
            return true;
        }
        self.live.remove(&slot.seq);
        slot.seq = seq;
        slot.retired = true;
        self.retired.insert(seq, k.clone());
        true
    }

    /// Evicts one entry: the oldest retired, else the least recently used.
    fn evict(&mut self) -> Option<(K, V)> {
        let (_, k) = self.retired.pop_first().or_else(|| self.live.pop_first())?;
        let slot = self.map.remove(&k)?;
        Some((k, slot.value))
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter().map(|(k, s)| (k, &s.value))
    }

    /// Every entry with its retired flag, oldest first (live, then retired).
    pub fn to_stored(&self) -> Vec<Stored<K, V>>
    where
        V: Clone,
    {
        let one = |k: &K| {
            let s = &self.map[k];
            Stored {
                key: k.clone(),
                value: s.value.clone(),
                retired: s.retired,
            }
        };
        self.live
            .values()
            .map(one)
            .chain(self.retired.values().map(one))
            .collect()
    }

    /// A table of capacity `cap` holding `entries` (oldest first); entries
    /// beyond the capacity are evicted as they would have been.
    pub fn from_stored(cap: usize, entries: Vec<Stored<K, V>>) -> Self {
        Self::from_stored_evicting(cap, entries).0
    }

    /// As [`Bounded::from_stored`], with what had to be evicted (a bound
    /// lowered since the entries were stored): the caller counts it, as
    /// any eviction.
    pub fn from_stored_evicting(cap: usize, entries: Vec<Stored<K, V>>) -> (Self, Vec<(K, V)>) {
        // All in first, ages as stored; then down to the bound in the
        // table's own order of eviction.
        let mut t = Bounded::new(entries.len().max(cap));
        for e in entries {
            let retired = e.retired;
            let key = e.key.clone();
            t.insert(e.key, e.value);
            if retired {
                t.retire(&key);
            }
        }
        t.cap = cap.max(1);
        let mut evicted = Vec::new();
        while t.map.len() > t.cap {
            evicted.extend(t.evict());
        }
        (t, evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_tables_evict_retired_first_then_the_oldest() {
        let mut t = Bounded::new(3);
        assert!(t.insert(1, "a").is_none());
        assert!(t.insert(2, "b").is_none());
        assert!(t.insert(3, "c").is_none());
        assert!(t.retire(&2));
        assert_eq!(t.insert(4, "d"), Some((2, "b")), "retired goes first");
        assert_eq!(t.insert(5, "e"), Some((1, "a")), "then the oldest");
        assert_eq!(t.len(), 3);
        // Replacing or touching an entry makes it young again.
        assert!(t.insert(3, "c2").is_none());
        t.touch(&4);
        assert_eq!(t.insert(6, "f"), Some((5, "e")));
        assert_eq!(t.insert(5, "e"), Some((3, "c2")));
        assert_eq!(t.remove(&5), Some("e"));
        assert!(!t.retire(&5));
        t.touch(&5);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_flood_stays_within_capacity() {
        let mut t = Bounded::new(1000);
        let mut evicted = 0;
        for i in 0..1_000_000u64 {
            if t.insert(i, i).is_some() {
                evicted += 1;
            }
            if i % 3 == 0 {
                t.retire(&i);
            }
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(evicted, 999_000);
        assert!(t.live.len() + t.retired.len() == 1000);
    }

    #[test]
    fn stored_form_keeps_ages_and_retirement() {
        let mut t = Bounded::new(4);
        for i in 0..4 {
            t.insert(i, i * 10);
        }
        t.retire(&1);
        let back = Bounded::from_stored(4, t.to_stored());
        assert!(back.is_retired(&1) && !back.is_retired(&0));
        let mut back = back;
        assert_eq!(back.insert(9, 90), Some((1, 10)));
        assert_eq!(back.insert(8, 80), Some((0, 0)));
        // A lower bound evicts as the table would have: retired first.
        let (small, evicted) = Bounded::from_stored_evicting(2, t.to_stored());
        assert_eq!(small.len(), 2);
        assert_eq!(evicted.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 0]);
    }
}
