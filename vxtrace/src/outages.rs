//! Outages and one-way peers, from the per-interval deltas.
//!
//! An outage of a peer: nothing arrives from it (rx_nic) for longer than a
//! threshold while we keep sending to it (tx_encap). Its start is the middle
//! of the last interval with rx, its end the middle of the interval in which
//! rx came back, so the error is at most one interval. Peers whose outages
//! start within the same second are named together: a subnet-wide
//! blackhole looks different from one broken peer.
//!
//! A one-way peer: tx > 0 and rx == 0 over a whole window.

use std::{collections::VecDeque, net::IpAddr};

use vxtrace_common::PeerKey;

use crate::schema::{
    Line, OneWay, Outage, OutageGroup, OutageRecord, Percentiles, Silences, round3,
};

/// Closed outages kept per peer (older ones are only counted).
const OUTAGES_KEPT: usize = 100;

#[derive(Default)]
struct State {
    /// Elapsed time (s) of the middle of the last interval with rx.
    last_rx: Option<f64>,
    sent_since_rx: u64,
    open: Option<Outage>,
    closed: VecDeque<Outage>,
    closed_total: u64,
    /// (elapsed end of interval, interval length, tx packets, rx packets).
    history: VecDeque<(f64, f64, u64, u64)>,
    one_way: bool,
    ever_one_way: bool,
    longest_silence_s: f64,
    /// Gaps between arrivals longer than an interval (silences), in ms;
    /// allocated at the first one, so steady peers cost nothing.
    silences_ms: Option<hdrhistogram::Histogram<u32>>,
}

/// When an interval ends: elapsed seconds, its length, and unix time at
/// elapsed 0.
struct Moment {
    now: f64,
    interval: f64,
    epoch: f64,
}

impl Moment {
    /// The middle of the interval: where an arrival or a silence is put.
    fn mid(&self) -> f64 {
        self.now - self.interval / 2.0
    }
}

impl State {
    /// Keeps the interval in the window's history.
    fn remember(&mut self, at: &Moment, tx: u64, rx: u64, window_s: f64) {
        self.history.push_back((at.now, at.interval, tx, rx));
        while self
            .history
            .front()
            .is_some_and(|(t, ..)| at.now - t > window_s.max(10.0) + at.interval)
        {
            self.history.pop_front();
        }
        if self.history.len() > 4096 {
            self.history.pop_front();
        }
    }

    /// Something arrived: the gap since the last arrival is a silence (if
    /// long), and an open outage ends.
    fn answered(&mut self, at: &Moment) -> Option<Outage> {
        let mid = at.mid();
        if let Some(last) = self.last_rx {
            let gap = mid - last;
            self.longest_silence_s = self.longest_silence_s.max(gap);
            if gap > at.interval * 1.5 {
                let h = self.silences_ms.get_or_insert_with(|| {
                    hdrhistogram::Histogram::new_with_bounds(1, 86_400_000, 2)
                        .expect("valid bounds")
                });
                let _ = h.record(((gap * 1000.0) as u64).clamp(1, 86_400_000));
            }
        }
        self.last_rx = Some(mid);
        let sent = std::mem::take(&mut self.sent_since_rx);
        let mut o = self.open.take()?;
        let end = at.epoch + mid;
        o.end = Some(round3(end));
        o.duration_s = Some(round3(end - o.start));
        o.sent_into_silence = sent;
        self.closed.push_back(o.clone());
        self.closed_total += 1;
        if self.closed.len() > OUTAGES_KEPT {
            self.closed.pop_front();
        }
        Some(o)
    }

    /// Sending into silence: the open outage grows, or one opens once the
    /// silence is longer than the threshold. True when one opened.
    fn went_silent(&mut self, at: &Moment, addr: IpAddr, threshold_s: f64) -> bool {
        if let Some(o) = self.open.as_mut() {
            o.sent_into_silence = self.sent_since_rx;
            return false;
        }
        let Some(last) = self.last_rx else {
            return false;
        };
        if at.now - last <= threshold_s || self.sent_since_rx == 0 {
            return false;
        }
        // tx rate over the 10 s before the silence began.
        let (mut pkts, mut secs) = (0u64, 0f64);
        for (t, len, tx, _) in &self.history {
            if *t <= last + at.interval && last - t < 10.0 {
                pkts += tx;
                secs += len;
            }
        }
        self.open = Some(Outage {
            peer: addr,
            start: round3(at.epoch + last),
            end: None,
            duration_s: None,
            sent_into_silence: self.sent_since_rx,
            tx_pps_before: if secs > 0.0 {
                round3(pkts as f64 / secs)
            } else {
                0.0
            },
            silent_together: Vec::new(),
        });
        true
    }

    /// One-way over the window: sending, nothing back, for all of it; an
    /// event when it becomes so.
    fn one_way_check(&mut self, at: &Moment, addr: IpAddr, window_s: f64) -> Option<OneWay> {
        // Something came back in this interval, which the window always
        // holds: not one-way, and no need to walk the history (most peers,
        // most intervals).
        if self.history.back().is_some_and(|(.., rx)| *rx > 0) {
            self.one_way = false;
            return None;
        }
        let (mut covered, mut sent, mut got) = (0f64, 0u64, 0u64);
        for (t, len, tx, rx) in &self.history {
            if at.now - t < window_s {
                covered += len;
                sent += tx;
                got += rx;
            }
        }
        let one_way = covered + at.interval / 2.0 >= window_s && sent > 0 && got == 0;
        let became = one_way && !self.one_way;
        self.one_way = one_way;
        if !became {
            return None;
        }
        self.ever_one_way = true;
        Some(OneWay {
            peer: addr,
            sent,
            received: 0,
            window_s,
        })
    }
}

pub struct OutageTracker {
    threshold_s: f64,
    window_s: f64,
    /// Unix time at elapsed 0.
    epoch: f64,
    /// Boxed: the map's empty slots stay small.
    peers: rustc_hash::FxHashMap<PeerKey, Box<State>>,
    limit: usize,
}

impl OutageTracker {
    pub fn new(threshold_s: f64, window_s: f64, epoch: f64, limit: usize) -> Self {
        Self {
            threshold_s,
            window_s,
            epoch,
            peers: Default::default(),
            limit,
        }
    }

    /// One interval ending at `now` (elapsed seconds) of length `interval`;
    /// `packets` gives each peer's (key, address, tx_encap packets, rx_nic
    /// packets) in it.
    pub fn update(
        &mut self,
        now: f64,
        interval: f64,
        packets: impl Iterator<Item = (PeerKey, IpAddr, u64, u64)>,
    ) -> Vec<Line> {
        let mut events = Vec::new();
        let mut started = Vec::new();
        let at = Moment {
            now,
            interval,
            epoch: self.epoch,
        };
        for (key, addr, tx, rx) in packets {
            // A multicast group (a device's flooding destination) never
            // answers from its own address: no silence to track.
            if addr.is_multicast() || (tx == 0 && rx == 0 && !self.peers.contains_key(&key)) {
                continue;
            }
            let s = self.peers.entry(key).or_default();
            s.remember(&at, tx, rx, self.window_s);
            if rx > 0 {
                events.extend(s.answered(&at).map(Line::OutageEnd));
            } else if tx > 0 || s.sent_since_rx > 0 {
                s.sent_since_rx += tx;
                if s.went_silent(&at, addr, self.threshold_s) {
                    started.push(key);
                }
            }
            events.extend(s.one_way_check(&at, addr, self.window_s).map(Line::OneWay));
        }
        if !started.is_empty() {
            events.extend(self.name_together(&started));
        }
        self.enforce_limit();
        events
    }

    /// The outages that just started, each naming the peers silent within
    /// a second of it; and one group event when there are several.
    fn name_together(&mut self, started: &[PeerKey]) -> Vec<Line> {
        let mut events = Vec::new();
        let opened: Vec<(PeerKey, f64, IpAddr)> = self
            .peers
            .iter()
            .filter_map(|(k, s)| s.open.as_ref().map(|o| (*k, o.start, o.peer)))
            .collect();
        for key in started {
            let Some(o) = self.peers.get_mut(key).and_then(|s| s.open.as_mut()) else {
                continue;
            };
            o.silent_together = opened
                .iter()
                .filter(|(k, t, _)| k != key && (t - o.start).abs() <= 1.0)
                .map(|(_, _, a)| *a)
                .collect();
            o.silent_together.sort();
            events.push(Line::OutageStart(o.clone()));
        }
        // One event naming every peer that went silent within a second of
        // the earliest of these.
        let first = started
            .iter()
            .filter_map(|k| self.peers.get(k)?.open.as_ref().map(|o| o.start))
            .fold(f64::MAX, f64::min);
        let mut peers: Vec<IpAddr> = opened
            .iter()
            .filter(|(_, t, _)| (t - first).abs() <= 1.0)
            .map(|(_, _, a)| *a)
            .collect();
        peers.sort();
        peers.dedup();
        if peers.len() >= 2 {
            events.push(Line::OutageGroup(OutageGroup {
                start: first,
                peers,
            }));
        }
        events
    }

    fn enforce_limit(&mut self) {
        if self.peers.len() <= self.limit {
            return;
        }
        // Forget the peers idle longest (no open outage).
        let mut idle: Vec<(f64, PeerKey)> = self
            .peers
            .iter()
            .filter(|(_, s)| s.open.is_none())
            .map(|(k, s)| (s.history.back().map(|h| h.0).unwrap_or(0.0), *k))
            .collect();
        idle.sort_by(|a, b| a.0.total_cmp(&b.0));
        let excess = self.peers.len() - self.limit;
        for (_, k) in idle.into_iter().take(excess) {
            self.peers.remove(&k);
        }
    }

    /// A peer's silences over the run, as the summary gives them.
    pub fn silences(&self, key: &PeerKey) -> Silences {
        let Some(s) = self.peers.get(key) else {
            return Silences::default();
        };
        Silences {
            outages: s
                .closed
                .iter()
                .map(OutageRecord::from)
                .chain(s.open.as_ref().map(|o| {
                    // Still silent: how long so far (to the last interval).
                    let mut r = OutageRecord::from(o);
                    r.duration_s = s
                        .history
                        .back()
                        .map(|(now, ..)| round3((self.epoch + now - o.start).max(0.0)));
                    r
                }))
                .collect(),
            outages_total: s.closed_total + u64::from(s.open.is_some()),
            one_way: s.ever_one_way,
            one_way_now: s.one_way,
            longest_silence_s: round3(s.longest_silence_s),
            rx_silences_ms: s
                .silences_ms
                .as_ref()
                .map(|h| Percentiles::of_u32(h, true))
                .unwrap_or_else(Percentiles::empty),
        }
    }

    /// Whether anything is known of the peer's silences.
    pub fn knows(&self, key: &PeerKey) -> bool {
        self.peers.contains_key(key)
    }

    /// Live: the open outage of a peer, if any (start elapsed-free: unix).
    pub fn open(&self, key: &PeerKey) -> Option<&Outage> {
        self.peers.get(key)?.open.as_ref()
    }

    pub fn one_way_now(&self, key: &PeerKey) -> bool {
        self.peers.get(key).is_some_and(|s| s.one_way)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str) -> (PeerKey, IpAddr) {
        let ip: IpAddr = a.parse().unwrap();
        (crate::discovery::peer_key(&ip), ip)
    }

    /// Feeds `steps` half-second intervals of (B rx, C rx) with tx always on.
    fn run(t: &mut OutageTracker, steps: &[(u64, u64)]) -> Vec<Line> {
        let (kb, b) = key("192.0.2.12");
        let (kc, c) = key("192.0.2.13");
        let mut all = Vec::new();
        for (i, (rb, rc)) in steps.iter().enumerate() {
            let now = 0.5 * (i + 1) as f64;
            all.extend(t.update(now, 0.5, [(kb, b, 10, *rb), (kc, c, 10, *rc)].into_iter()));
        }
        all
    }

    #[test]
    fn one_outage_of_three_seconds_for_one_peer() {
        let mut t = OutageTracker::new(1.0, 10.0, 0.0, 100);
        let mut steps = vec![(5, 5); 4];
        steps.extend(vec![(0, 5); 6]); // B silent 3 s
        steps.extend(vec![(5, 5); 4]);
        let ev = run(&mut t, &steps);
        let ends: Vec<&Outage> = ev
            .iter()
            .filter_map(|e| {
                if let Line::OutageEnd(o) = e {
                    Some(o)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].peer.to_string(), "192.0.2.12");
        assert!(
            (ends[0].duration_s.unwrap() - 3.0).abs() <= 0.5,
            "{:?}",
            ends[0]
        );
        assert_eq!(ends[0].sent_into_silence, 60);
        assert_eq!(ends[0].tx_pps_before, 20.0);
        assert!(!ev.iter().any(|e| matches!(e, Line::OutageGroup(_))));
    }

    /// An outage still open when the summary is made says how long it has
    /// lasted so far: last rx at 1.75 s (the middle of the fourth
    /// interval), last interval read at 5.0 s.
    #[test]
    fn an_ongoing_outage_has_its_length_so_far() {
        let mut t = OutageTracker::new(1.0, 10.0, 0.0, 100);
        let mut steps = vec![(5, 5); 4];
        steps.extend(vec![(0, 5); 6]);
        run(&mut t, &steps);
        let (kb, _) = key("192.0.2.12");
        let s = t.silences(&kb);
        assert_eq!(s.outages.len(), 1);
        assert!(s.outages[0].ongoing);
        assert_eq!(s.outages[0].duration_s, Some(3.25));
    }

    #[test]
    fn simultaneous_outages_are_grouped() {
        let mut t = OutageTracker::new(1.0, 10.0, 0.0, 100);
        let mut steps = vec![(5, 5); 4];
        steps.extend(vec![(0, 0); 6]);
        steps.extend(vec![(5, 5); 2]);
        let ev = run(&mut t, &steps);
        let groups: Vec<&Vec<IpAddr>> = ev
            .iter()
            .filter_map(|e| {
                if let Line::OutageGroup(g) = e {
                    Some(&g.peers)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].len(), 2);
        let starts = ev
            .iter()
            .filter(|e| matches!(e, Line::OutageStart(_)))
            .count();
        assert_eq!(starts, 2);
    }

    #[test]
    fn one_way_needs_a_whole_window() {
        let mut t = OutageTracker::new(1.0, 3.0, 0.0, 100);
        let ev = run(&mut t, &[(0, 5); 5]);
        assert!(!ev.iter().any(|e| matches!(e, Line::OneWay(_))));
        let ev = run(&mut t, &[(0, 5); 2]);
        let ow: Vec<&Line> = ev.iter().filter(|e| matches!(e, Line::OneWay(_))).collect();
        assert_eq!(ow.len(), 1);
    }
}
