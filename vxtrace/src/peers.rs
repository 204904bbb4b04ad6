//! Per-peer totals over the whole run, built from successive reads of the
//! kernel's per-peer map.
//!
//! The kernel map is an LRU: a peer can be evicted and come back with its
//! counters at zero. Totals here never go backwards: when a key disappears,
//! its last values move into a base that later incarnations add to.
//! Userspace memory is bounded the same way: past a limit, peers that are
//! gone from the kernel map are folded into one "retired" total.

use std::{collections::HashMap, net::IpAddr};

use hdrhistogram::Histogram;
use vxtrace_common::{PeerKey, PeerStats};

use crate::{discovery::peer_addr, tracer::Readout};

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

    fn record(&mut self, delta: &PeerStats, seconds: f64) {
        let rate = |p: u64| ((p as f64 / seconds).round() as u64).min(100_000_000);
        let _ = self.tx_encap.record(rate(delta.tx_encap.packets));
        let _ = self.rx_nic.record(rate(delta.rx_nic.packets));
        let _ = self.rx_decap.record(rate(delta.rx_decap.packets));
    }
}

pub struct Peer {
    pub addr: IpAddr,
    /// Counts of earlier incarnations (before an LRU eviction).
    base: PeerStats,
    /// The kernel's current value.
    current: PeerStats,
    /// Total at the end of the previous interval.
    previous_total: PeerStats,
    /// Change over the last interval.
    pub last_delta: PeerStats,
    present: bool,
    /// Allocated once the peer has had traffic (idle peers cost no histogram).
    pub rates: Option<RateHistograms>,
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
    pub handshake_us: Option<Histogram<u64>>,
}

/// Silence from a peer we are sending to, long enough to call out live.
pub const SILENCE_WORTH_SHOWING_S: f64 = 3.0;

impl Peer {
    fn new(key: &PeerKey) -> Self {
        Peer {
            addr: peer_addr(key),
            base: PeerStats::default(),
            current: PeerStats::default(),
            previous_total: PeerStats::default(),
            last_delta: PeerStats::default(),
            present: false,
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

    pub fn total(&self) -> PeerStats {
        let mut t = self.base;
        t.merge(&self.current);
        t
    }
}

/// Everything known about peers so far.
pub struct PeerTable {
    pub peers: HashMap<PeerKey, Peer>,
    /// Totals of peers dropped from this table to bound its memory.
    pub retired: PeerStats,
    pub retired_count: u64,
    limit: usize,
    pub intervals: u64,
    /// Entries in the kernel map at the last read.
    pub kernel_entries: usize,
}

impl PeerTable {
    pub fn new(limit: usize) -> Self {
        Self {
            peers: HashMap::new(),
            retired: PeerStats::default(),
            retired_count: 0,
            limit,
            intervals: 0,
            kernel_entries: 0,
        }
    }

    /// Folds one read of the kernel map in; `seconds` is the interval length.
    pub fn update(&mut self, readout: &Readout, seconds: f64) {
        self.intervals += 1;
        self.kernel_entries = readout.peers.len();
        for (key, peer) in self.peers.iter_mut() {
            if peer.present && !readout.peers.contains_key(key) {
                // Evicted from the kernel map: keep what it had counted.
                let current = peer.current;
                peer.base.merge(&current);
                peer.current = PeerStats::default();
                peer.present = false;
            }
        }
        for (key, stats) in &readout.peers {
            let peer = self.peers.entry(*key).or_insert_with(|| Peer::new(key));
            peer.current = *stats;
            peer.present = true;
        }
        let intervals = self.intervals;
        for peer in self.peers.values_mut() {
            let total = peer.total();
            let delta = total.delta(&peer.previous_total);
            peer.previous_total = total;
            peer.last_delta = delta;
            if !delta.is_zero() {
                peer.last_active = intervals;
            }
            if delta.rx_nic.packets > 0 {
                peer.rx_silent_s = 0.0;
                peer.sent_into_silence = 0;
            } else if delta.tx_encap.packets > 0 || peer.sent_into_silence > 0 {
                peer.rx_silent_s += seconds;
                peer.sent_into_silence += delta.tx_encap.packets;
            }
            if peer.rates.is_none() && !total.is_zero() {
                peer.rates = Some(RateHistograms::new());
            }
            if let Some(rates) = peer.rates.as_mut()
                && seconds > 0.0
            {
                rates.record(&delta, seconds);
            }
        }
        self.enforce_limit();
    }

    fn enforce_limit(&mut self) {
        if self.peers.len() <= self.limit {
            return;
        }
        // Retire the longest-idle peers that the kernel no longer holds.
        let mut gone: Vec<(u64, PeerKey)> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.present)
            .map(|(k, p)| (p.last_active, *k))
            .collect();
        gone.sort();
        let excess = self.peers.len() - self.limit;
        for (_, key) in gone.into_iter().take(excess) {
            if let Some(p) = self.peers.remove(&key) {
                self.retired.merge(&p.total());
                self.retired_count += 1;
            }
        }
    }

    /// A completed handshake of one of our clients with the peer.
    pub fn record_handshake(&mut self, peer: &PeerKey, latency_ns: u64) {
        let p = self.peers.entry(*peer).or_insert_with(|| Peer::new(peer));
        let h = p.handshake_us.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
        });
        let _ = h.record((latency_ns / 1000).clamp(1, 3_600_000_000));
    }

    /// A SYN that got no SYN-ACK in time.
    pub fn record_unanswered(&mut self, peer: &PeerKey, outgoing: bool) {
        let p = self.peers.entry(*peer).or_insert_with(|| Peer::new(peer));
        if outgoing {
            p.unanswered_syn_out += 1;
        } else {
            p.unanswered_syn_in += 1;
        }
    }

    pub fn get(&self, addr: &IpAddr) -> Option<&Peer> {
        self.peers.get(&crate::discovery::peer_key(addr))
    }

    /// Peers sorted by address (a stable order for output).
    pub fn sorted(&self) -> Vec<&Peer> {
        let mut v: Vec<&Peer> = self.peers.values().collect();
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
                .insert(crate::discovery::peer_key(&addr.parse().unwrap()), s);
        }
        r
    }

    #[test]
    fn totals_survive_eviction_and_return() {
        let mut t = PeerTable::new(100);
        t.update(&readout(&[("192.0.2.1", 10)]), 1.0);
        t.update(&readout(&[]), 1.0); // evicted
        t.update(&readout(&[("192.0.2.1", 5)]), 1.0); // back, counting from 0
        let p = t.get(&"192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(p.total().tx_encap.packets, 15);
        assert_eq!(p.last_delta.tx_encap.packets, 5);
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
                .insert(crate::discovery::peer_key(&"192.0.2.1".parse().unwrap()), s);
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
