//! Receiver-host loss per link, exported only where there is some: the
//! packets from a peer that reached this node's underlay device and were
//! not delivered by its VXLAN device (the running excess of `rx_nic` over
//! `rx_decap`). Exporting `rx_decap` for every link would cost Prometheus
//! a series per link to find the few links that lose on the receiving
//! host; this counter exists only for links with link series that lost
//! at least 1 % of what arrived (over up to ten seconds) within the last
//! quarter of an hour, so a healthy mesh exports none.
//!
//! The two counters are read together but not at the same instant of the
//! packet's way: a packet counted at the device and not yet decapsulated
//! makes a passing excess of a few packets. The counter follows the
//! largest excess seen, so such a passing excess adds once, never per
//! read, and the 1 % threshold keeps it from creating a series.

use rustc_hash::FxHashMap;
use vxtrace_common::PeerKey;

/// How long the growth is measured over at most, in seconds: a loss is
/// judged against what arrived since the window began, so a steady loss
/// of 1 % keeps its series while a few packets lost long ago do not.
const WINDOW_S: f64 = 10.0;
/// A window's growth that makes the series appear: at least this many
/// packets and this share of what arrived in the window.
const MIN_GROWTH: u64 = 3;
const MIN_SHARE: f64 = 0.01;

/// One peer's undelivered packets.
#[derive(Default)]
struct Excess {
    /// Arrived minus delivered since the start (may pass below zero when
    /// the decapsulation hook counts what the device hook missed).
    excess: i64,
    /// The largest excess seen: the counter's value.
    counted: u64,
    window_start: Option<f64>,
    window_growth: u64,
    window_arrived: u64,
    /// When a window last grew past the threshold.
    significant_at: Option<f64>,
}

#[derive(Default)]
pub struct Undelivered {
    peers: FxHashMap<PeerKey, Excess>,
}

impl Undelivered {
    /// Adds one interval of a peer's counters (at Unix time `ts`); returns
    /// the counter's value when the peer's loss is to be exported.
    pub fn add(
        &mut self,
        key: PeerKey,
        ts: f64,
        arrived: u64,
        delivered: u64,
        hold_s: f64,
    ) -> Option<u64> {
        let e = self.peers.entry(key).or_default();
        e.excess = e.excess.saturating_add(arrived as i64 - delivered as i64);
        if e.excess > e.counted as i64 {
            e.window_growth += e.excess as u64 - e.counted;
            e.counted = e.excess as u64;
        }
        e.window_arrived += arrived;
        // Judged at every read, over the window so far: a loss shows at
        // its first read with enough packets, so the series starts with
        // little of it uncounted by rate().
        if e.window_growth >= MIN_GROWTH
            && e.window_growth as f64 >= MIN_SHARE * e.window_arrived as f64
        {
            e.significant_at = Some(ts);
        }
        let start = *e.window_start.get_or_insert(ts);
        if ts - start >= WINDOW_S {
            e.window_start = Some(ts);
            e.window_growth = 0;
            e.window_arrived = 0;
        }
        e.significant_at
            .filter(|at| ts - at <= hold_s)
            .map(|_| e.counted)
    }

    /// Forgets the peers `keep` says no to (gone from the table).
    pub fn retain(&mut self, keep: impl Fn(&PeerKey) -> bool) {
        self.peers.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: f64 = 900.0;

    fn key() -> PeerKey {
        PeerKey::default()
    }

    /// A passing excess (counted at the device, decapsulated a read later)
    /// never makes a series, however long it goes on.
    #[test]
    fn in_flight_packets_are_not_loss() {
        let mut u = Undelivered::default();
        for s in 0..3600 {
            // 100 packets a second; one of them decapsulated a read late.
            let (arrived, delivered) = if s % 2 == 0 { (100, 99) } else { (100, 101) };
            assert_eq!(
                u.add(key(), f64::from(s), arrived, delivered, HOLD),
                None,
                "at {s} s"
            );
        }
    }

    /// 5 % of 100 packets a second lost: the series appears at the first
    /// read, follows the loss, and goes the hold time after the loss
    /// stops.
    #[test]
    fn a_loss_appears_within_a_window_and_goes_after_the_hold() {
        let mut u = Undelivered::default();
        let mut first = None;
        for s in 0..=120 {
            if let Some(v) = u.add(key(), f64::from(s), 100, 95, HOLD) {
                first.get_or_insert((s, v));
            }
        }
        assert_eq!(first, Some((0, 5)));
        let mut last = None;
        for s in 121..2000 {
            if u.add(key(), f64::from(s), 100, 100, HOLD).is_some() {
                last = Some(s);
            }
        }
        // The last read that lost was at 120 s.
        assert_eq!(last, Some(120 + HOLD as u32));
        assert_eq!(u.peers[&key()].counted, 5 * 121);
    }

    /// Below 1 % of what arrived nothing is exported.
    #[test]
    fn the_threshold_is_one_percent_of_a_window() {
        let mut u = Undelivered::default();
        // 1,000 a second, 9 lost a second: 0.9 %.
        for s in 0..600 {
            assert_eq!(u.add(key(), f64::from(s), 1000, 991, HOLD), None);
        }
        // 11 a second: 1.1 %.
        let shown = (600..700)
            .filter_map(|s| u.add(key(), f64::from(s), 1000, 989, HOLD))
            .count();
        assert!(shown > 0);
    }
}
