//! Totals of the small per-peer maps beside the main counters (VXLAN on a
//! foreign port, too-big drops), kept so that they never go backwards when
//! the kernel's LRU evicts a key: what a vanished key had counted moves
//! into a base that its next incarnation adds to.

use std::hash::Hash;

use rustc_hash::FxHashMap;

/// How two values of a map add up.
pub trait Tally: Copy + Default {
    fn tally(&mut self, other: &Self);
    /// Whether `self`, read after `before` under the same key, counts
    /// from zero again: the key was evicted and created anew between the
    /// two reads (a count never goes down otherwise).
    fn started_over(&self, before: &Self) -> bool;
}

impl Tally for u64 {
    fn tally(&mut self, other: &Self) {
        *self = self.wrapping_add(*other);
    }

    fn started_over(&self, before: &Self) -> bool {
        self < before
    }
}

impl Tally for vxtrace_common::TooBig {
    fn tally(&mut self, other: &Self) {
        self.count = self.count.wrapping_add(other.count);
        self.max_len = self.max_len.max(other.max_len);
    }

    fn started_over(&self, before: &Self) -> bool {
        self.count < before.count
    }
}

/// A map's totals since start.
pub struct Totals<K, V> {
    base: FxHashMap<K, V>,
    current: FxHashMap<K, V>,
}

impl<K, V> Default for Totals<K, V> {
    fn default() -> Self {
        Self {
            base: FxHashMap::default(),
            current: FxHashMap::default(),
        }
    }
}

impl<K: Copy + Eq + Hash, V: Tally> Totals<K, V> {
    /// Folds one read of the map in: what a key that vanished, or came
    /// back counting from zero, held moves into the base.
    pub fn update(&mut self, now: &[(K, V)]) {
        let now: FxHashMap<K, V> = now.iter().copied().collect();
        for (k, v) in &self.current {
            if now.get(k).is_none_or(|n| n.started_over(v)) {
                self.base.entry(*k).or_default().tally(v);
            }
        }
        self.current = now;
    }

    /// Every key's total.
    pub fn totals(&self) -> FxHashMap<K, V> {
        let mut t = self.base.clone();
        for (k, v) in &self.current {
            t.entry(*k).or_default().tally(v);
        }
        t
    }

    /// The total of the keys `wanted` picks.
    pub fn get(&self, wanted: impl Fn(&K) -> bool) -> Vec<(K, V)> {
        let mut out: FxHashMap<K, V> = FxHashMap::default();
        for (k, v) in self.base.iter().chain(&self.current) {
            if wanted(k) {
                out.entry(*k).or_default().tally(v);
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_survive_eviction() {
        let mut t: Totals<u32, u64> = Totals::default();
        t.update(&[(1, 5)]);
        t.update(&[]); // evicted
        t.update(&[(1, 2)]); // back, from zero
        assert_eq!(t.totals()[&1], 7);
        assert_eq!(t.get(|k| *k == 1), vec![(1, 7)]);
        // Evicted and back between two reads: lower than it was.
        t.update(&[(1, 1)]);
        assert_eq!(t.totals()[&1], 8);
        t.update(&[(1, 4)]);
        assert_eq!(t.totals()[&1], 11);
    }
}
