//! Per-peer totals over the whole run, built from successive reads of the
//! kernel's per-peer map.
//!
//! A peer's counts are in its per-CPU slots (the busiest peers, for the
//! whole run) plus its entry in the kernel map. The map is an LRU: a peer
//! can be evicted from it and come back with its counters at zero. Totals
//! here never go backwards: when a key disappears from the map, what the
//! map held for it moves into a base that later incarnations add to.
//! Userspace memory is bounded the same way: past a limit, peers that are
//! gone from the kernel map are folded into one "retired" total.
//!
//! Per peer this keeps two copies of the counter set (the total now and at
//! the previous interval) and, for a bounded number of peers, rate
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
    /// Counts of earlier incarnations (before an LRU eviction); rare, so
    /// boxed.
    base: Option<Box<PeerStats>>,
    /// The peer's counts in the per-CPU slots at the last read (a few
    /// peers have slots, so boxed).
    in_slots: Option<Box<PeerStats>>,
    /// Everything counted so far: `base` plus the kernel's current values
    /// (map and slots).
    total: PeerStats,
    /// `total` at the end of the previous interval.
    previous_total: PeerStats,
    /// The last read (interval number, from 1) whose kernel map held the
    /// peer; 0 = never.
    last_read: u64,
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

/// Silence from a peer we are sending to, long enough to call out live.
pub const SILENCE_WORTH_SHOWING_S: f64 = 3.0;

impl Peer {
    fn new(key: &PeerKey) -> Self {
        Peer {
            addr: peer_addr(key),
            base: None,
            in_slots: None,
            total: PeerStats::default(),
            previous_total: PeerStats::default(),
            last_read: 0,
            rates: None,
            last_active: 0,
            rx_silent_s: 0.0,
            sent_into_silence: 0,
            unanswered_syn_out: 0,
            unanswered_syn_in: 0,
            handshake_us: None,
        }
    }

    pub fn unanswered_syn(&self) -> u64 {
        self.unanswered_syn_out + self.unanswered_syn_in
    }

    /// Everything counted for the peer so far (borrowed: summing 10,000
    /// peers every interval should not copy each one's counters first).
    pub fn total(&self) -> &PeerStats {
        &self.total
    }

    /// Change over the last interval.
    pub fn last_delta(&self) -> PeerStats {
        self.total.delta(&self.previous_total)
    }

    pub fn last_packets(&self) -> LastPackets {
        let (t, p) = (&self.total, &self.previous_total);
        LastPackets {
            tx_encap: t.tx_encap.packets.saturating_sub(p.tx_encap.packets),
            rx_nic: t.rx_nic.packets.saturating_sub(p.rx_nic.packets),
            rx_decap: t.rx_decap.packets.saturating_sub(p.rx_decap.packets),
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
    pub retired_count: u64,
    limit: usize,
    pub intervals: u64,
    /// Entries in the kernel map at the last read.
    pub kernel_entries: usize,
    /// Rate histograms still to hand out to peers not asked for.
    rate_histograms_left: usize,
    /// Peers asked for (`--peer`): always given rate histograms.
    selected: Vec<PeerKey>,
}

impl PeerTable {
    pub fn new(limit: usize) -> Self {
        Self {
            peers: FxHashMap::default(),
            retired: PeerStats::default(),
            retired_count: 0,
            limit,
            intervals: 0,
            kernel_entries: 0,
            rate_histograms_left: RATE_HISTOGRAM_PEERS,
            selected: Vec::new(),
        }
    }

    /// Peers that always get rate histograms.
    pub fn select(&mut self, peers: impl IntoIterator<Item = PeerKey>) {
        self.selected.extend(peers);
    }

    /// Folds one read of the kernel map in; `seconds` is the interval length.
    pub fn update(&mut self, readout: &Readout, seconds: f64) {
        self.intervals += 1;
        self.kernel_entries = readout.peers.len();
        let slots: FxHashMap<PeerKey, &PeerStats> =
            readout.peer_slots.iter().map(|(k, s)| (*k, s)).collect();
        for key in slots.keys() {
            self.peers
                .entry(*key)
                .or_insert_with(|| Box::new(Peer::new(key)));
        }
        for (key, stats) in &readout.peers {
            let peer = self
                .peers
                .entry(*key)
                .or_insert_with(|| Box::new(Peer::new(key)));
            // The last total is kept where the new one is built: with
            // 10,000 peers, a pass over every peer's counters of its own
            // is a pass of cache misses.
            peer.previous_total = peer.total;
            match peer.base.as_deref() {
                Some(base) => peer.total = *base,
                None => peer.total.clear_counters(),
            }
            peer.total.merge(stats);
            if let Some(s) = slots.get(key) {
                peer.total.merge(s);
            }
            peer.last_read = self.intervals;
        }
        let intervals = self.intervals;
        for (key, peer) in self.peers.iter_mut() {
            let now_in_slots = slots.get(key).copied();
            if peer.last_read != intervals {
                // Not in this read of the map: its total so far is the
                // previous one (the others' were kept above).
                peer.previous_total = peer.total;
                if peer.last_read != 0 && peer.last_read + 1 == intervals {
                    // In the previous read, not in this one: evicted from
                    // the kernel map. What the map held becomes the base
                    // its next incarnation adds to (the slots' part stays
                    // theirs).
                    let in_map = match &peer.in_slots {
                        Some(s) => peer.total.delta(s),
                        None => peer.total,
                    };
                    peer.base = Some(Box::new(in_map));
                }
                if now_in_slots.is_some() || peer.in_slots.is_some() {
                    // Its slots' counts on top of the base.
                    match peer.base.as_deref() {
                        Some(base) => peer.total = *base,
                        None => peer.total.clear_counters(),
                    }
                    if let Some(s) = now_in_slots {
                        peer.total.merge(s);
                    }
                }
            }
            if let Some(s) = now_in_slots {
                peer.in_slots = Some(Box::new(*s));
            }
            let active = peer.total != peer.previous_total;
            if active {
                peer.last_active = intervals;
            }
            let packets = peer.last_packets();
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
            .filter(|(_, p)| p.last_read != self.intervals && p.in_slots.is_none())
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
            r.peers
                .push((crate::discovery::peer_key(&addr.parse().unwrap()), s));
        }
        r
    }

    fn with_slots(mut r: Readout, entries: &[(&str, u64)]) -> Readout {
        r.peer_slots = readout(entries).peers;
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
            r.peers
                .push((crate::discovery::peer_key(&"192.0.2.1".parse().unwrap()), s));
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
        let kept: u64 = t.peers.values().map(|p| p.total().tx_encap.packets).sum();
        assert_eq!(kept + t.retired.tx_encap.packets, 1 + 2 + 4);
    }
}
