//! Drop totals over the whole run, from successive reads of the kernel's
//! drop map (peer, reason, location), and their presentation.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use rustc_hash::FxHashMap;
use vxtrace_common::{DropKey, PeerKey};

use crate::{
    discovery::peer_addr,
    kernel::{DropReasons, Kallsyms},
    reasons,
    schema::DropLocation,
};

/// Drop locations a summary lists per peer (the largest).
pub const LOCATIONS_SHOWN: usize = 5;

/// Cumulative drop counts that never go backwards across LRU evictions.
#[derive(Default)]
pub struct DropTable {
    base: FxHashMap<DropKey, u64>,
    /// The drop map's counts at the last read (keys can be evicted).
    current: FxHashMap<DropKey, u64>,
    /// The drop program's slots at the last read (keys stay: no base).
    slots: FxHashMap<DropKey, u64>,
    /// Totals at the previous interval, per (peer, reason), for deltas.
    previous: FxHashMap<(PeerKey, u32), u64>,
    limit: usize,
    /// The kernel's ids of reasons a kprobe counts instead (the same
    /// segments would otherwise be counted twice).
    superseded: Vec<u32>,
    /// Name drops without a reason (and, where the kernel has it, its
    /// NOT_SPECIFIED id) by their location where it says what they are.
    infer_from_location: bool,
    not_specified: Option<u32>,
}

/// One peer's (or "other"'s) drops.
#[derive(Default, Debug, Clone)]
pub struct PeerDrops {
    pub by_reason: BTreeMap<String, u64>,
    /// Dropped SYN-ACKs by reason (also in `by_reason`).
    pub synack_by_reason: BTreeMap<String, u64>,
    /// Drops of outer VXLAN packets by reason (also in `by_reason`).
    pub outer_by_reason: BTreeMap<String, u64>,
    /// Drops that lose no traffic, by reason (also in `by_reason`).
    pub not_loss: BTreeMap<String, u64>,
    /// (count, reason, location), largest first.
    pub locations: Vec<(u64, String, String)>,
}

impl PeerDrops {
    pub fn total(&self) -> u64 {
        self.by_reason.values().sum()
    }

    pub fn get(&self, reason: &str) -> u64 {
        reasons::count(&self.by_reason, reason)
    }

    pub fn synack_dropped(&self) -> u64 {
        self.synack_by_reason.values().sum()
    }

    /// TCP timestamp (PAWS) rejects: the RFC 7323 drop reasons.
    pub fn paws_rejects(&self) -> u64 {
        reasons::paws_rejects(&self.by_reason)
    }

    /// The largest drop locations, as the summary lists them.
    pub fn top_locations(&self) -> Vec<DropLocation> {
        self.locations
            .iter()
            .take(LOCATIONS_SHOWN)
            .map(|(count, reason, location)| DropLocation {
                reason: reason.clone(),
                location: location.clone(),
                count: *count,
            })
            .collect()
    }
}

impl DropTable {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Default::default()
        }
    }

    /// Names drops by their location where the kernel gives no reason
    /// (before 5.17) or calls them NOT_SPECIFIED (`not_specified`: its id)
    /// in code that names no drops yet (the VXLAN driver before 6.13).
    pub fn infer_reasons_from_locations(&mut self, not_specified: Option<u32>) {
        self.infer_from_location = true;
        self.not_specified = not_specified;
    }

    /// Whether a drop of `reason` may be renamed by its location: Some(is
    /// it NOT_SPECIFIED).
    fn inferable(&self, reason: u32) -> Option<bool> {
        if reason == vxtrace_common::REASON_UNKNOWN {
            Some(false)
        } else if Some(reason) == self.not_specified {
            Some(true)
        } else {
            None
        }
    }

    /// Leaves out the kernel's own drops with this reason id from now on.
    pub fn supersede(&mut self, reason: u32) {
        self.superseded.push(reason);
    }

    /// Folds one read in: `map` from the drop map, `slots` from the drop
    /// program's slots (a key may be in both).
    pub fn update(
        &mut self,
        map: &FxHashMap<DropKey, u64>,
        slots: &FxHashMap<DropKey, u64>,
        syms: Option<&Kallsyms>,
    ) {
        let now = self.named(map, syms);
        self.slots = self.named(slots, syms);
        for (k, v) in &self.current {
            // Gone, or back with fewer drops than it had (evicted and
            // created anew between two reads): what it held is kept.
            if now.get(k).is_none_or(|n| n < v) {
                *self.base.entry(*k).or_default() += v;
            }
        }
        self.current = now;
        if self.base.len() > self.limit {
            // Bound memory: forget the locations of evicted keys, keep counts.
            let old = std::mem::take(&mut self.base);
            for (mut k, v) in old {
                k.location = 0;
                *self.base.entry(k).or_default() += v;
            }
        }
    }

    /// A read's drops without the superseded reasons, renamed by location
    /// where that is asked for.
    fn named(
        &self,
        read: &FxHashMap<DropKey, u64>,
        syms: Option<&Kallsyms>,
    ) -> FxHashMap<DropKey, u64> {
        let kept: FxHashMap<DropKey, u64> = read
            .iter()
            .filter(|(k, _)| !self.superseded.contains(&k.reason))
            .map(|(k, v)| (*k, *v))
            .collect();
        match syms {
            Some(syms) if self.infer_from_location => self.inferred(kept, syms),
            _ => kept,
        }
    }

    /// Reason-less drops renamed by their location.
    fn inferred(&self, now: FxHashMap<DropKey, u64>, syms: &Kallsyms) -> FxHashMap<DropKey, u64> {
        syms.prepare(
            now.keys()
                .filter(|k| self.inferable(k.reason).is_some())
                .map(|k| k.location),
        );
        let mut out = FxHashMap::default();
        for (mut k, v) in now {
            if let Some(not_specified) = self.inferable(k.reason)
                && let Some(r) = syms
                    .symbolize(k.location)
                    .and_then(|name| crate::kernel::reason_by_location(&name, not_specified))
            {
                k.reason = r;
            }
            *out.entry(k).or_default() += v;
        }
        out
    }

    fn totals(&self) -> FxHashMap<DropKey, u64> {
        let mut t = self.base.clone();
        for (k, v) in self.current.iter().chain(&self.slots) {
            *t.entry(*k).or_default() += v;
        }
        t
    }

    /// Cumulative drops per peer (the zero key = "other").
    pub fn by_peer(
        &self,
        reasons: &DropReasons,
        syms: Option<&Kallsyms>,
    ) -> HashMap<PeerKey, PeerDrops> {
        let mut out: HashMap<PeerKey, PeerDrops> = HashMap::new();
        let totals = self.totals();
        if let Some(s) = syms {
            s.prepare(totals.keys().map(|k| k.location));
        }
        for (k, n) in totals {
            let d = out.entry(k.peer).or_default();
            let reason = reasons.name(k.reason);
            *d.by_reason.entry(reason.clone()).or_default() += n;
            if k.kind == vxtrace_common::DROP_KIND_SYNACK {
                *d.synack_by_reason.entry(reason.clone()).or_default() += n;
            }
            let outer = k.kind == vxtrace_common::DROP_KIND_OUTER;
            if outer {
                *d.outer_by_reason.entry(reason.clone()).or_default() += n;
            }
            // A packet to a broadcast or multicast address that a host did
            // not want loses nothing, whatever the reason.
            let group = k.kind == vxtrace_common::DROP_KIND_GROUP;
            if group || reasons::class(&reason, outer) == reasons::DropClass::NotLoss {
                *d.not_loss.entry(reason.clone()).or_default() += n;
            }
            let loc = match (k.location, syms) {
                (0, _) => "unknown".to_string(),
                (addr, Some(s)) => s.symbolize(addr).unwrap_or_else(|| format!("0x{addr:x}")),
                (addr, None) => format!("0x{addr:x}"),
            };
            d.locations.push((n, reason, loc));
        }
        for d in out.values_mut() {
            d.locations
                .sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        }
        out
    }

    /// Drops per (peer, reason) since the previous call.
    pub fn interval_deltas(
        &mut self,
        reasons: &DropReasons,
    ) -> HashMap<PeerKey, BTreeMap<String, u64>> {
        let mut now: FxHashMap<(PeerKey, u32), u64> = FxHashMap::default();
        for (k, n) in self.totals() {
            *now.entry((k.peer, k.reason)).or_default() += n;
        }
        let mut out: HashMap<PeerKey, BTreeMap<String, u64>> = HashMap::new();
        for ((peer, reason), n) in &now {
            let before = self.previous.get(&(*peer, *reason)).copied().unwrap_or(0);
            if *n > before {
                *out.entry(*peer)
                    .or_default()
                    .entry(reasons.name(*reason))
                    .or_default() += n - before;
            }
        }
        self.previous = now;
        out
    }
}

/// Peers that have drops, as addresses (the zero key excluded).
pub fn drop_peers(d: &HashMap<PeerKey, PeerDrops>) -> Vec<IpAddr> {
    d.keys()
        .filter(|k| **k != PeerKey::default())
        .map(peer_addr)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(peer: &str, reason: u32, location: u64) -> DropKey {
        DropKey {
            peer: crate::discovery::peer_key(&peer.parse().unwrap()),
            reason,
            kind: 0,
            location,
        }
    }

    #[test]
    fn totals_survive_eviction_and_deltas_are_per_interval() {
        let mut reasons = DropReasons::default();
        reasons.names.insert(12, "NETFILTER_DROP".into());
        let mut t = DropTable::new(100);
        let mut now = FxHashMap::default();
        let peer = crate::discovery::peer_key(&"192.0.2.1".parse().unwrap());
        // The interval's drops and the peer's total, with the total's
        // location.
        let counted = |t: &mut DropTable| {
            let interval = t.interval_deltas(&reasons).values().next().unwrap()["NETFILTER_DROP"];
            let d = t.by_peer(&reasons, None);
            let p = &d[&peer];
            (interval, p.get("NETFILTER_DROP"), p.locations[0].2.clone())
        };
        now.insert(key("192.0.2.1", 12, 0x10), 5);
        t.update(&now, &FxHashMap::default(), None);
        assert_eq!(counted(&mut t), (5, 5, "0x10".to_string()));
        t.update(&FxHashMap::default(), &FxHashMap::default(), None); // evicted
        assert!(t.interval_deltas(&reasons).is_empty());
        now.insert(key("192.0.2.1", 12, 0x10), 2); // back from zero
        t.update(&now, &FxHashMap::default(), None);
        assert_eq!(counted(&mut t), (2, 7, "0x10".to_string()));
        // Evicted and created anew between two reads: back with fewer
        // drops than it had, under the same key. Nothing is lost.
        now.insert(key("192.0.2.1", 12, 0x10), 1);
        t.update(&now, &FxHashMap::default(), None);
        assert_eq!(counted(&mut t), (1, 8, "0x10".to_string()));
    }

    /// A key counted both in a slot and in the drop map adds up; when the
    /// map's part is evicted, the slot's part stays and the map's moves to
    /// the base, so the total never goes back.
    #[test]
    fn slots_and_the_map_add_up_across_an_eviction() {
        let mut reasons = DropReasons::default();
        reasons.names.insert(12, "NETFILTER_DROP".into());
        let storm = key("192.0.2.1", 12, 0x10);
        let mut t = DropTable::new(100);
        let slots = FxHashMap::from_iter([(storm, 1000)]);
        t.update(&FxHashMap::from_iter([(storm, 3)]), &slots, None);
        assert_eq!(
            t.interval_deltas(&reasons).values().next().unwrap()["NETFILTER_DROP"],
            1003
        );
        let slots = FxHashMap::from_iter([(storm, 1500)]);
        t.update(&FxHashMap::default(), &slots, None); // the map's part evicted
        assert_eq!(
            t.interval_deltas(&reasons).values().next().unwrap()["NETFILTER_DROP"],
            500
        );
        let d = t.by_peer(&reasons, None);
        let p = &d[&crate::discovery::peer_key(&"192.0.2.1".parse().unwrap())];
        assert_eq!(p.get("NETFILTER_DROP"), 1503);
    }

    /// A PAWS reject seen by both the kernel's reason and the kprobe is
    /// counted once, as the kprobe's.
    #[test]
    fn superseded_reasons_are_not_counted_twice() {
        let mut reasons = DropReasons::default();
        reasons.names.insert(70, "TCP_RFC7323_PAWS".into());
        reasons.names.insert(12, "NETFILTER_DROP".into());
        let mut t = DropTable::new(100);
        t.supersede(70);
        let mut now = FxHashMap::default();
        now.insert(key("192.0.2.1", 70, 0x10), 5);
        now.insert(
            key("192.0.2.1", vxtrace_common::REASON_KPROBE_PAWS, 0x20),
            5,
        );
        now.insert(key("192.0.2.1", 12, 0x30), 1);
        t.update(&now, &FxHashMap::default(), None);
        let d = t.by_peer(&reasons, None);
        let p = &d[&crate::discovery::peer_key(&"192.0.2.1".parse().unwrap())];
        assert_eq!(p.get("TCP_RFC7323_PAWS"), 5);
        assert_eq!(p.paws_rejects(), 5);
        assert_eq!(p.get("NETFILTER_DROP"), 1);
    }
}
