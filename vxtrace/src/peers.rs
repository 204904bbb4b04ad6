//! Per-peer totals over the whole run, built from successive reads of the
//! kernel's per-peer map.
//!
//! A peer's counts are in its slots, a row per CPU (the busiest peers, for the
//! whole run) plus its entries in the kernel map, one for each CPU that
//! counted it. The map is an LRU: an entry can be evicted and come back
//! with its counters at zero. Totals here never go backwards: when an
//! entry disappears from the map, what it held moves into a base that
//! later entries add to.
//! Userspace memory is bounded the same way: past a limit, peers that are
//! gone from the kernel map are folded into one "retired" total.
//!
//! Totals are kept up to date by the change of each entry since it was
//! last read, not rebuilt from every entry every interval: an entry whose
//! counters did not move costs one comparison, and a peer's interval
//! change is the sum of its entries' changes.
//!
//! Per peer this keeps two copies of the counter set (the total and the
//! last interval's change) and, for a bounded number of peers, rate
//! histograms: with 10,000 peers the table must stay within a few tens of
//! MiB and be updated in a few milliseconds.

use std::net::IpAddr;

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;
use vxtrace_common::{PeerKey, PeerStats};

use crate::{discovery::peer_addr, probes::Readout};

/// Per-interval rate histograms of one peer (packets per second).
pub struct RateHistograms {
    pub tx_encap: Histogram<u32>,
    pub rx_nic: Histogram<u32>,
    pub rx_decap: Histogram<u32>,
}

impl RateHistograms {
    fn new() -> Self {
        // One significant digit (buckets of at most 1/16th) up to
        // 100 Mpkt/s: about 1.5 KiB a histogram, so 10,000 peers stay
        // within tens of MiB. Rates are an overview; totals are exact.
        let h = || Histogram::new_with_bounds(1, 100_000_000, 1).expect("valid bounds");
        Self {
            tx_encap: h(),
            rx_nic: h(),
            rx_decap: h(),
        }
    }

    fn record(&mut self, packets: LastPackets, seconds: f64) {
        let rate = |p: u64| ((p as f64 / seconds).round() as u64).min(100_000_000);
        let _ = self.tx_encap.record(rate(packets.tx_encap));
        let _ = self.rx_nic.record(rate(packets.rx_nic));
        let _ = self.rx_decap.record(rate(packets.rx_decap));
    }
}

/// A peer's packets in the last interval, of the counters every interval
/// needs (the whole counter set is [`Peer::last_delta`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct LastPackets {
    pub tx_encap: u64,
    pub rx_nic: u64,
    pub rx_decap: u64,
}

/// Peers that get rate histograms (about 4.5 KiB each), besides the ones
/// asked for with `--peer`: beyond this, peers have totals only.
pub const RATE_HISTOGRAM_PEERS: usize = 1024;

pub struct Peer {
    pub addr: IpAddr,
    /// The peer's counts in the slots (every CPU's row) at the last read (a few
    /// peers have slots, so boxed).
    in_slots: Option<Box<PeerStats>>,
    /// The peer's entries in the kernel map at the last read, one per CPU
    /// that counted it: what an entry held when it was last seen is what
    /// moves to `base` when it is evicted.
    in_map: Vec<MapEntry>,
    /// The read (interval number) that last brought this peer's
    /// entries in, and how many of them it saw.
    built: u64,
    entries_seen: u32,
    /// Everything counted so far and the last interval's change.
    counts: Counts,
    /// Allocated once the peer has had traffic (idle peers cost no histogram).
    pub rates: Option<Box<RateHistograms>>,
    /// Interval number of the last change.
    pub last_active: u64,
    /// Seconds since something last arrived from the peer while we kept
    /// sending to it (0 when it answers).
    pub rx_silent_s: f64,
    /// Packets sent to the peer during that silence.
    pub sent_into_silence: u64,
    /// SYNs that got no SYN-ACK within the timeout: our clients' SYNs to
    /// the peer (out) and the peer's SYNs to our servers (in).
    pub unanswered_syn_out: u64,
    pub unanswered_syn_in: u64,
    /// SYN -> SYN-ACK latency of our clients' handshakes, in microseconds.
    pub handshake_us: Option<Box<Histogram<u64>>>,
}

/// One entry of a peer in the kernel map: its CPU and what it held at the
/// last read that saw it.
struct MapEntry {
    cpu: u32,
    /// The read (interval number) that last saw it.
    seen: u64,
    stats: PeerStats,
}

/// A peer's sums of what the kernel counted for it.
#[derive(Default)]
struct Counts {
    /// Counts of map entries the LRU evicted; rare, so boxed.
    base: Option<Box<PeerStats>>,
    /// Everything counted so far: `base` plus the kernel's current values
    /// (map and slots).
    total: PeerStats,
    /// What `total` grew by in the last interval.
    change: PeerStats,
    /// Whether `change` has a counter above zero (an idle peer's is
    /// cleared once, not every interval).
    changed: bool,
}

impl Counts {
    fn start_interval(&mut self) {
        if self.changed {
            self.change.clear_counters();
            self.changed = false;
        }
    }

    /// Adds what a kernel value (`last`, as last read) gained by `now` to
    /// the total and the interval's change, and keeps `now` as the last
    /// read. A value created by another insertion than the last read's
    /// (`born`), or a counter below its last read, means the value started
    /// over (an LRU entry evicted and created again between two reads):
    /// what it held moves to the base, and all it holds now is new. What
    /// the total gains, `all` (every peer's sum) gains too.
    fn absorb(&mut self, last: &mut PeerStats, now: &PeerStats, all: &mut PeerStats) {
        let (before, after) = (last.counter_words(), now.counter_words());
        let reborn = last.memo.born != now.memo.born;
        if before == after && !reborn {
            return;
        }
        if reborn || before.iter().zip(after).any(|(b, a)| a < b) {
            // (A first read is a new entry too; its `last` is empty.)
            if !last.is_zero() {
                self.base.get_or_insert_with(Box::default).merge(last);
            }
            if !now.is_zero() {
                self.total.merge(now);
                self.change.merge(now);
                all.merge(now);
                self.changed = true;
            }
        } else {
            let total = self.total.counter_words_mut();
            let change = self.change.counter_words_mut();
            let all = all.counter_words_mut();
            for (i, (b, a)) in before.iter().zip(after).enumerate() {
                let gained = a - b;
                total[i] = total[i].wrapping_add(gained);
                change[i] = change[i].wrapping_add(gained);
                all[i] = all[i].wrapping_add(gained);
            }
            self.changed = true;
        }
        *last = *now;
    }
}

/// Silence from a peer we are sending to, long enough to call out live.
pub const SILENCE_WORTH_SHOWING_S: f64 = 3.0;

impl Peer {
    fn new(key: &PeerKey) -> Self {
        Peer {
            addr: peer_addr(key),
            in_slots: None,
            in_map: Vec::new(),
            built: 0,
            entries_seen: 0,
            counts: Counts::default(),
            rates: None,
            last_active: 0,
            rx_silent_s: 0.0,
            sent_into_silence: 0,
            unanswered_syn_out: 0,
            unanswered_syn_in: 0,
            handshake_us: None,
        }
    }

    /// Starts this interval for the peer: nothing changed yet.
    fn start_interval(&mut self, interval: u64) {
        self.built = interval;
        self.entries_seen = 0;
        self.counts.start_interval();
    }

    pub fn unanswered_syn(&self) -> u64 {
        self.unanswered_syn_out + self.unanswered_syn_in
    }

    /// Everything counted for the peer so far (borrowed: summing 10,000
    /// peers every interval should not copy each one's counters first).
    pub fn total(&self) -> &PeerStats {
        &self.counts.total
    }

    /// Change over the last interval.
    pub fn last_delta(&self) -> PeerStats {
        self.counts.change
    }

    pub fn last_packets(&self) -> LastPackets {
        let c = &self.counts.change;
        LastPackets {
            tx_encap: c.tx_encap.packets,
            rx_nic: c.rx_nic.packets,
            rx_decap: c.rx_decap.packets,
        }
    }
}

/// Everything known about peers so far.
pub struct PeerTable {
    /// Boxed: a map sized for 10,000 peers holds 16,384 slots, and a
    /// slot should not be a whole counter set.
    pub peers: FxHashMap<PeerKey, Box<Peer>>,
    /// Totals of peers dropped from this table to bound its memory.
    pub retired: PeerStats,
    /// Everything counted for every peer so far: `retired` plus every
    /// kept peer's total. Kept up to date as the counts come in, so the
    /// node's totals (checked against the kernel's device counters every
    /// interval) need no pass over 10,000 peers' records.
    all: PeerStats,
    pub retired_count: u64,
    limit: usize,
    pub intervals: u64,
    /// Entries in the kernel map at the last read.
    pub kernel_entries: usize,
    /// Rate histograms still to hand out to peers not asked for.
    rate_histograms_left: usize,
    /// Peers asked for (`--peer`): always given rate histograms.
    selected: Vec<PeerKey>,
    /// Every peer's packets in the last interval, in one compact list:
    /// the outage tracker reads them from here rather than from each
    /// peer's record, which a pass over 10,000 of them would fetch from
    /// memory again.
    pub interval_packets: Vec<(PeerKey, IpAddr, LastPackets)>,
}

impl PeerTable {
    pub fn new(limit: usize) -> Self {
        Self {
            peers: FxHashMap::default(),
            retired: PeerStats::default(),
            all: PeerStats::default(),
            retired_count: 0,
            limit,
            intervals: 0,
            kernel_entries: 0,
            rate_histograms_left: RATE_HISTOGRAM_PEERS,
            selected: Vec::new(),
            interval_packets: Vec::new(),
        }
    }

    /// Everything counted for every peer so far, the retired ones included.
    pub fn all(&self) -> &PeerStats {
        &self.all
    }

    /// Peers that always get rate histograms.
    pub fn select(&mut self, peers: impl IntoIterator<Item = PeerKey>) {
        self.selected.extend(peers);
    }

    /// Folds one read of the kernel map in; `seconds` is the interval length.
    pub fn update(&mut self, readout: &Readout, seconds: f64) {
        self.intervals += 1;
        let intervals = self.intervals;
        self.kernel_entries = readout.peers.len();
        let slots: FxHashMap<PeerKey, &PeerStats> =
            readout.peer_slots.iter().map(|(k, s)| (*k, s)).collect();
        for key in slots.keys() {
            self.peers
                .entry(*key)
                .or_insert_with(|| Box::new(Peer::new(key)));
        }
        // One pass over the entries, in the order the kernel gives them:
        // each entry's change goes to its peer's total (with 10,000 peers,
        // every pass over all of them is a pass of cache misses); the pass
        // over every peer below handles the slots and the entries this
        // read did not see.
        for (key, stats) in &readout.peers {
            let peer = &mut **self
                .peers
                .entry(key.peer)
                .or_insert_with(|| Box::new(Peer::new(&key.peer)));
            if peer.built != intervals {
                peer.start_interval(intervals);
            }
            let Some(i) = peer.in_map.iter().position(|e| e.cpu == key.cpu) else {
                // One more entry's room, not the four a vector of small
                // elements starts with: most peers have one.
                peer.in_map.reserve_exact(1);
                peer.in_map.push(MapEntry {
                    cpu: key.cpu,
                    seen: intervals,
                    stats: PeerStats::default(),
                });
                peer.entries_seen += 1;
                let last = peer.in_map.len() - 1;
                peer.counts
                    .absorb(&mut peer.in_map[last].stats, stats, &mut self.all);
                continue;
            };
            if peer.in_map[i].seen == intervals {
                // The same entry twice in one read: a key-by-key walk
                // (kernels without batched reads) starts over when the
                // LRU evicts the key it stood on. Counted once.
                continue;
            }
            peer.in_map[i].seen = intervals;
            peer.entries_seen += 1;
            peer.counts
                .absorb(&mut peer.in_map[i].stats, stats, &mut self.all);
        }
        self.interval_packets.clear();
        for (key, peer) in self.peers.iter_mut() {
            let peer = &mut **peer;
            if peer.built != intervals {
                // No entry in this read.
                peer.start_interval(intervals);
            }
            if let Some(now) = slots.get(key) {
                let last = peer.in_slots.get_or_insert_with(Box::default);
                peer.counts.absorb(last, now, &mut self.all);
            }
            if (peer.entries_seen as usize) < peer.in_map.len() {
                // Entries this read did not see were evicted: what they
                // held moves into the base (it is in the total already).
                let base = peer.counts.base.get_or_insert_with(Box::default);
                for e in peer.in_map.iter().filter(|e| e.seen != intervals) {
                    base.merge(&e.stats);
                }
                peer.in_map.retain(|e| e.seen == intervals);
            }
            let active = peer.counts.changed;
            if active {
                peer.last_active = intervals;
            }
            let packets = peer.last_packets();
            self.interval_packets.push((*key, peer.addr, packets));
            if packets.rx_nic > 0 {
                peer.rx_silent_s = 0.0;
                peer.sent_into_silence = 0;
            } else if packets.tx_encap > 0 || peer.sent_into_silence > 0 {
                peer.rx_silent_s += seconds;
                peer.sent_into_silence += packets.tx_encap;
            }
            if peer.rates.is_none() && active {
                if self.selected.contains(key) {
                    peer.rates = Some(Box::new(RateHistograms::new()));
                } else if self.rate_histograms_left > 0 {
                    self.rate_histograms_left -= 1;
                    peer.rates = Some(Box::new(RateHistograms::new()));
                }
            }
            if let Some(rates) = peer.rates.as_mut()
                && seconds > 0.0
            {
                rates.record(packets, seconds);
            }
        }
        self.enforce_limit();
    }

    fn enforce_limit(&mut self) {
        if self.peers.len() <= self.limit {
            return;
        }
        // Retire the longest-idle peers that the kernel no longer holds (a
        // peer with slots is held by them for the whole run).
        let mut gone: Vec<(u64, PeerKey)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.in_map.is_empty() && p.in_slots.is_none())
            .map(|(k, p)| (p.last_active, *k))
            .collect();
        gone.sort();
        let excess = self.peers.len() - self.limit;
        for (_, key) in gone.into_iter().take(excess) {
            if let Some(p) = self.peers.remove(&key) {
                self.retired.merge(p.total());
                self.retired_count += 1;
            }
        }
        // The interval's packets list only the peers the table keeps, as
        // the outage tracker saw them when it read the table itself.
        let peers = &self.peers;
        self.interval_packets
            .retain(|(key, ..)| peers.contains_key(key));
    }

    /// A completed handshake of one of our clients with the peer.
    pub fn record_handshake(&mut self, peer: &PeerKey, latency_ns: u64) {
        let p = self
            .peers
            .entry(*peer)
            .or_insert_with(|| Box::new(Peer::new(peer)));
        let h = p.handshake_us.get_or_insert_with(|| {
            Box::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
        });
        let _ = h.record((latency_ns / 1000).clamp(1, 3_600_000_000));
    }

    /// A SYN that got no SYN-ACK in time.
    pub fn record_unanswered(&mut self, peer: &PeerKey, outgoing: bool) {
        let p = self
            .peers
            .entry(*peer)
            .or_insert_with(|| Box::new(Peer::new(peer)));
        if outgoing {
            p.unanswered_syn_out += 1;
        } else {
            p.unanswered_syn_in += 1;
        }
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&Peer> {
        self.peers
            .get(&crate::discovery::peer_key(addr))
            .map(|p| &**p)
    }

    /// Peers sorted by address (a stable order for output).
    pub fn sorted(&self) -> Vec<&Peer> {
        let mut v: Vec<&Peer> = self.peers.values().map(|p| &**p).collect();
        v.sort_by_key(|p| p.addr);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readout(entries: &[(&str, u64)]) -> Readout {
        let mut r = Readout::default();
        for (addr, tx) in entries {
            let mut s = PeerStats::default();
            s.tx_encap.add(*tx, *tx * 100);
            r.add_peer(crate::discovery::peer_key(&addr.parse().unwrap()), s);
        }
        r
    }

    /// The running sum of every peer equals the retired peers' totals
    /// plus every kept peer's, counter by counter.
    fn assert_all_adds_up(t: &PeerTable) {
        let mut sum = t.retired;
        for p in t.peers.values() {
            sum.merge(p.total());
        }
        assert_eq!(sum.counter_words(), t.all().counter_words());
    }

    fn with_slots(mut r: Readout, entries: &[(&str, u64)]) -> Readout {
        r.peer_slots = readout(entries)
            .peers
            .into_iter()
            .map(|(k, s)| (k.peer, s))
            .collect();
        r
    }

    /// A peer counted in slots and in the map: the two add up; when the
    /// map's entry is evicted its part moves to the base and the slots'
    /// part stays, so the total never goes back; a peer held only by slots
    /// is never retired.
    #[test]
    fn slots_and_the_map_add_up_across_an_eviction() {
        let mut t = PeerTable::new(1);
        let a = "192.0.2.1";
        t.update(&with_slots(readout(&[(a, 3)]), &[(a, 100)]), 1.0);
        let total = |t: &PeerTable| t.get(&a.parse().unwrap()).unwrap().total().tx_encap.packets;
        assert_eq!(total(&t), 103);
        t.update(&with_slots(readout(&[]), &[(a, 150)]), 1.0); // map part evicted
        assert_eq!(total(&t), 153);
        t.update(&with_slots(readout(&[(a, 2)]), &[(a, 160)]), 1.0); // back in the map
        assert_eq!(total(&t), 165);
        let p = t.get(&a.parse().unwrap()).unwrap();
        assert_eq!(p.last_delta().tx_encap.packets, 12);
        // Another peer pushes the table over its limit of 1: the slot
        // holder stays.
        t.update(&with_slots(readout(&[]), &[(a, 170)]), 1.0);
        t.update(&with_slots(readout(&[("192.0.2.2", 1)]), &[(a, 171)]), 1.0);
        assert_eq!(total(&t), 3 + 2 + 171);
        assert_eq!(t.all().tx_encap.packets, 3 + 2 + 171 + 1);
        assert_all_adds_up(&t);
    }

    /// An entry read twice in one read (a key-by-key walk can start over)
    /// counts once.
    #[test]
    fn an_entry_read_twice_counts_once() {
        let mut r = readout(&[("192.0.2.1", 7)]);
        r.peers.push(r.peers[0]);
        let mut t = PeerTable::new(10);
        t.update(&r, 1.0);
        let p = t.get(&"192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(p.total().tx_encap.packets, 7);
        assert_eq!(p.in_map.len(), 1);
    }

    /// A peer counted on two CPUs: its entries add up; when one CPU's
    /// entry is evicted while the other grows, what the evicted one held
    /// stays in the total, and a new entry on that CPU adds to it.
    #[test]
    fn entries_on_two_cpus_add_up_and_one_can_be_evicted() {
        let key = crate::discovery::peer_key(&"192.0.2.1".parse().unwrap());
        let read = |entries: &[(u32, u64)]| {
            let mut r = Readout::default();
            for (cpu, tx) in entries {
                let mut s = PeerStats::default();
                s.tx_encap.add(*tx, *tx);
                r.peers
                    .push((vxtrace_common::PeerCpuKey::new(key, *cpu), s));
            }
            r
        };
        let mut t = PeerTable::new(10);
        let total = |t: &PeerTable| t.peers[&key].total().tx_encap.packets;
        t.update(&read(&[(0, 10), (1, 4)]), 1.0);
        assert_eq!(total(&t), 14);
        // CPU 1's entry evicted, CPU 0's grew: the 4 stay.
        t.update(&read(&[(0, 25)]), 1.0);
        assert_eq!(total(&t), 29);
        assert_eq!(t.peers[&key].last_delta().tx_encap.packets, 15);
        // CPU 1 counts the peer again, from zero.
        t.update(&read(&[(0, 25), (1, 3)]), 1.0);
        assert_eq!(total(&t), 32);
        // Every entry gone: the total stands, and the peer can be retired.
        t.update(&read(&[]), 1.0);
        assert_eq!(total(&t), 32);
        assert!(t.peers[&key].in_map.is_empty());
        assert_all_adds_up(&t);
    }

    /// An entry evicted and created again between two reads comes back
    /// with lower counts under the same key: what it held stays in the
    /// total, and all it holds now is the interval's change. An entry that
    /// did not move changes nothing.
    #[test]
    fn an_entry_that_starts_over_between_reads_keeps_what_it_held() {
        let mut t = PeerTable::new(10);
        let a = "192.0.2.1";
        let peer = |t: &PeerTable| {
            let p = t.get(&a.parse().unwrap()).unwrap();
            (p.total().tx_encap.packets, p.last_delta().tx_encap.packets)
        };
        t.update(&readout(&[(a, 10)]), 1.0);
        assert_eq!(peer(&t), (10, 10));
        t.update(&readout(&[(a, 10)]), 1.0);
        assert_eq!(peer(&t), (10, 0));
        assert!(t.get(&a.parse().unwrap()).unwrap().last_delta().is_zero());
        t.update(&readout(&[(a, 3)]), 1.0);
        assert_eq!(peer(&t), (13, 3));
        t.update(&readout(&[(a, 8)]), 1.0);
        assert_eq!(peer(&t), (18, 5));
        // Evicted for good: the total stands.
        t.update(&readout(&[]), 1.0);
        assert_eq!(peer(&t), (18, 0));
        assert_eq!(t.all().tx_encap.packets, 18);
        assert_all_adds_up(&t);
    }

    /// An entry created again between two reads that counted past what
    /// the old one held looks like one that kept counting: only the
    /// insertion it came from (`born`) tells them apart.
    #[test]
    fn an_entry_created_again_that_counted_past_the_old_one_keeps_what_it_held() {
        let mut t = PeerTable::new(10);
        let a = "192.0.2.1";
        let born = |n: u32, tx: u64| {
            let mut r = readout(&[(a, tx)]);
            r.peers[0].1.memo.born = n;
            r
        };
        let peer = |t: &PeerTable| {
            let p = t.get(&a.parse().unwrap()).unwrap();
            (p.total().tx_encap.packets, p.last_delta().tx_encap.packets)
        };
        t.update(&born(1, 5), 1.0);
        assert_eq!(peer(&t), (5, 5));
        t.update(&born(1, 6), 1.0);
        assert_eq!(peer(&t), (6, 1));
        t.update(&born(2, 9), 1.0);
        assert_eq!(peer(&t), (15, 9));
        // Created again and read before it counted anything: nothing to
        // add, the old counts kept.
        t.update(&born(3, 0), 1.0);
        assert_eq!(peer(&t), (15, 0));
        t.update(&born(3, 2), 1.0);
        assert_eq!(peer(&t), (17, 2));
        assert_eq!(t.all().tx_encap.packets, 17);
        assert_all_adds_up(&t);
    }

    #[test]
    fn totals_survive_eviction_and_return() {
        let mut t = PeerTable::new(100);
        t.update(&readout(&[("192.0.2.1", 10)]), 1.0);
        t.update(&readout(&[]), 1.0); // evicted
        t.update(&readout(&[("192.0.2.1", 5)]), 1.0); // back, counting from 0
        let p = t.get(&"192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(p.total().tx_encap.packets, 15);
        assert_eq!(p.last_delta().tx_encap.packets, 5);
        let rates = p.rates.as_ref().unwrap();
        assert_eq!(rates.tx_encap.len(), 3);
        assert_eq!(rates.tx_encap.max(), 10);
    }

    #[test]
    fn silence_while_sending_is_tracked_and_reset() {
        let mut t = PeerTable::new(10);
        let both = |tx: u64, rx: u64| {
            let mut r = Readout::default();
            let mut s = PeerStats::default();
            s.tx_encap.add(tx, tx);
            s.rx_nic.add(rx, rx);
            r.add_peer(crate::discovery::peer_key(&"192.0.2.1".parse().unwrap()), s);
            r
        };
        t.update(&both(10, 10), 1.0);
        t.update(&both(20, 10), 1.0);
        t.update(&both(35, 10), 1.0);
        let p = t.get(&"192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(p.rx_silent_s, 2.0);
        assert_eq!(p.sent_into_silence, 25);
        t.update(&both(40, 11), 1.0);
        let p = t.get(&"192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(p.rx_silent_s, 0.0);
        assert_eq!(p.sent_into_silence, 0);
    }

    #[test]
    fn memory_is_bounded_without_losing_counts() {
        let mut t = PeerTable::new(2);
        t.update(
            &readout(&[("192.0.2.1", 1), ("192.0.2.2", 2), ("192.0.2.3", 3)]),
            1.0,
        );
        assert_eq!(t.peers.len(), 3, "present peers are never retired");
        t.update(&readout(&[("192.0.2.3", 4)]), 1.0);
        assert_eq!(t.peers.len(), 2);
        assert_eq!(t.retired_count, 1);
        // The retired peer is not among the interval's packets either.
        assert_eq!(t.interval_packets.len(), 2);
        assert!(
            t.interval_packets
                .iter()
                .all(|(k, ..)| t.peers.contains_key(k))
        );
        let kept: u64 = t.peers.values().map(|p| p.total().tx_encap.packets).sum();
        assert_eq!(kept + t.retired.tx_encap.packets, 1 + 2 + 4);
        // Retiring a peer moves its total, it does not lose or add any.
        assert_eq!(t.all().tx_encap.packets, 1 + 2 + 4);
        assert_all_adds_up(&t);
    }
}
