//! Lining two nodes' clocks up from their traffic. Each node stamps its
//! own intervals; what one node sends the other counts at the same moment,
//! so the shift under which what arrived matches what was sent is how far
//! apart the two clocks are. A link that lost everything tells nothing;
//! the other direction usually does, so both directions are asked.

use super::read::Sample;

/// One direction between two nodes as both ends counted it: the sender's
/// intervals for the receiver (`tx_encap`) and the receiver's for the
/// sender (`rx_nic`).
pub struct Flow<'a> {
    sent: Vec<&'a Sample>,
    /// By time, for the look-ups.
    got: Vec<&'a Sample>,
    /// The receiver's clock against the sender's, for an offset `d` of the
    /// pair's second node ahead of its first: `+d` when the receiver is
    /// the second node, `-d` when it is the first.
    sign: f64,
}

impl<'a> Flow<'a> {
    /// `receiver_is_second`: the receiver is the pair's second node, whose
    /// clock the offset is of.
    pub fn new(
        sent: Option<&'a Vec<Sample>>,
        got: Option<&'a Vec<Sample>>,
        receiver_is_second: bool,
    ) -> Self {
        let sent: Vec<&Sample> = sent
            .into_iter()
            .flatten()
            .filter(|s| s.tx_encap > 0)
            .collect();
        let mut got: Vec<&Sample> = got.into_iter().flatten().filter(|s| s.rx_nic > 0).collect();
        got.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        Self {
            sent,
            got,
            sign: if receiver_is_second { 1.0 } else { -1.0 },
        }
    }

    /// Packets that could line up at best: what was sent, or what
    /// arrived, whichever is less.
    fn most(&self) -> f64 {
        let sent: u64 = self.sent.iter().map(|s| s.tx_encap).sum();
        let got: u64 = self.got.iter().map(|s| s.rx_nic).sum();
        sent.min(got) as f64
    }

    /// Packets that line up if the second node's clock is `d` ahead of the
    /// first's: for each interval of the sender, what the receiver counted
    /// in the intervals that overlap it, up to what was sent. Where in an
    /// interval a packet went is not known, so any overlap counts: about
    /// an interval's worth of offsets matches equally, and the one nearest
    /// zero is taken (a shift by the period of periodic traffic matches
    /// fewer, when the packets at the ends of the traffic find nothing).
    fn matched(&self, d: f64) -> f64 {
        let shift = self.sign * d;
        self.sent
            .iter()
            .map(|s| {
                let (a, b) = (s.start() + shift, s.ts + shift);
                let first = self.got.partition_point(|g| g.ts <= a);
                let rx: u64 = self.got[first..]
                    .iter()
                    .take_while(|g| g.start() < b)
                    .map(|g| g.rx_nic)
                    .sum();
                rx.min(s.tx_encap) as f64
            })
            .sum()
    }
}

/// Offsets are tried in steps of this many seconds.
pub const OFFSET_STEP: f64 = 0.05;
/// Up to this many offsets are tried one by one; a wider range gets a
/// coarse pass first.
const FINE_STEPS: f64 = 4000.0;
/// No offset matches as well as this share of the best: clocks are
/// taken to agree.
const AS_GOOD: f64 = 0.98;
/// Work allowed for the coarse pass (offsets × sending intervals); beyond
/// it, its steps widen.
const COARSE_WORK: f64 = 3e8;

/// How far the pair's second node's clock is ahead of its first's, within
/// `lo..=hi` seconds, as the flows line up best, and how many packets line
/// up at that offset; among offsets that match as many, the one nearest
/// zero. `None` when nothing lines up anywhere in the range (nothing
/// arrived, e.g. links that lost everything, or no shift brings the two
/// ends' traffic together).
pub fn best_offset(flows: &[Flow<'_>], lo: f64, hi: f64) -> Option<(f64, f64)> {
    if lo > hi {
        return None;
    }
    let matched = |d: f64| flows.iter().map(|f| f.matched(d)).sum::<f64>();
    let fine = |lo: f64, hi: f64| pick(grid(lo, hi, OFFSET_STEP).map(|d| (d, matched(d))));
    if (hi - lo) / OFFSET_STEP <= FINE_STEPS {
        return fine(lo, hi);
    }
    // Coarse: steps of the shortest interval, so that one lands in the
    // interval-long range of offsets that match best (wider only to keep
    // the pass bounded); then the fine steps around its choice.
    let shortest = flows
        .iter()
        .flat_map(|f| f.sent.iter().chain(&f.got))
        .map(|s| s.len)
        .fold(f64::MAX, f64::min);
    let sending: usize = flows.iter().map(|f| f.sent.len()).sum();
    let step = shortest
        .max(OFFSET_STEP)
        .max((hi - lo) * sending as f64 / COARSE_WORK);
    let (coarse, _) = pick(grid(lo, hi, step).map(|d| (d, matched(d))))?;
    fine((coarse - step).max(lo), (coarse + step).min(hi))
}

/// Whether the flows line up convincingly at an offset where `matched`
/// packets do: half of what could line up at best, at least.
pub fn convincing(flows: &[Flow<'_>], matched: f64) -> bool {
    let most: f64 = flows.iter().map(Flow::most).sum();
    most > 0.0 && matched >= most / 2.0
}

/// The best of the (offset, packets matched) candidates: no offset at all
/// when that matches nearly as well (within `AS_GOOD`: chance matches of
/// a lossy link's traffic must not move well-kept clocks apart), else the
/// one nearest zero among those that match the most (any of those lines
/// every matched packet up). `None` when none matches anything.
fn pick(scored: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64)> {
    let scored: Vec<(f64, f64)> = scored.collect();
    let best = scored.iter().map(|s| s.1).fold(0.0, f64::max);
    if best <= 0.0 {
        return None;
    }
    if let Some(zero) = scored.iter().find(|s| s.0 == 0.0 && s.1 >= best * AS_GOOD) {
        return Some(*zero);
    }
    scored
        .into_iter()
        .filter(|s| s.1 >= best)
        .min_by(|a, b| a.0.abs().total_cmp(&b.0.abs()))
        .map(|(d, m)| (crate::schema::round3(d), m))
}

/// Multiples of `step` within `lo..=hi` (zero among them when in range).
fn grid(lo: f64, hi: f64, step: f64) -> impl Iterator<Item = f64> {
    ((lo / step).ceil() as i64..=(hi / step).floor() as i64).map(move |k| k as f64 * step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts: f64, tx: u64, rx: u64) -> Sample {
        Sample {
            ts,
            len: 0.5,
            tx_encap: tx,
            rx_nic: rx,
            ..Default::default()
        }
    }

    /// A sender's bursts, and the receiver's view of them with its clock
    /// `ahead` seconds ahead.
    fn traffic(ahead: f64) -> (Vec<Sample>, Vec<Sample>) {
        let sent: Vec<Sample> = (0..40)
            .map(|i| sample(100.0 + i as f64 * 0.5, if i % 6 == 0 { 10 } else { 0 }, 0))
            .collect();
        let got = sent
            .iter()
            .map(|s| sample(s.ts + ahead, 0, s.tx_encap))
            .collect();
        (sent, got)
    }

    /// A receiver whose clock runs 1.2 s ahead: the shift that lines the
    /// traffic up is found (to an interval: where in it the packets went is
    /// not known), within the range asked; nothing arrived, nothing to
    /// line up.
    #[test]
    fn clock_offsets_are_found_from_the_traffic() {
        let (sent, got) = traffic(1.2);
        let flows = [Flow::new(Some(&sent), Some(&got), true)];
        let (d, m) = best_offset(&flows, -2.0, 2.0).unwrap();
        assert!((d - 1.2).abs() <= 0.5, "{d}");
        assert!(convincing(&flows, m), "{m}");
        assert_eq!(best_offset(&flows, -0.5, 0.5), None);
        let silent = [Flow::new(Some(&sent), None, true)];
        assert_eq!(best_offset(&silent, -2.0, 2.0), None);
    }

    /// The same traffic seen from the other end (the first node
    /// receiving): the offset of the second node's clock is the same.
    #[test]
    fn either_direction_tells_the_offset() {
        let (sent, got) = traffic(-3.0);
        // The second node sent, the first (3 s ahead of it) received.
        let flows = [Flow::new(Some(&sent), Some(&got), false)];
        let (d, _) = best_offset(&flows, -5.0, 5.0).unwrap();
        assert!((d - 3.0).abs() <= 0.5, "{d}");
    }

    /// Clocks that agree stay put on a lossy link: a shift that hides a
    /// lost interval by overlapping its neighbours matches a little more,
    /// not enough to move them.
    #[test]
    fn a_lossy_link_does_not_move_clocks_that_agree() {
        let sent: Vec<Sample> = (1..=100)
            .map(|i| sample(100.0 + i as f64 * 0.5, 10, 0))
            .collect();
        let got: Vec<Sample> = sent
            .iter()
            .enumerate()
            .map(|(i, s)| sample(s.ts, 0, if i == 50 { 0 } else { 10 }))
            .collect();
        let flows = [Flow::new(Some(&sent), Some(&got), true)];
        assert_eq!(best_offset(&flows, -2.0, 2.0), Some((0.0, 990.0)));
    }

    /// An hour apart: the coarse pass finds it, the fine one pins it.
    #[test]
    fn an_hour_apart_is_found_over_a_wide_range() {
        let (sent, got) = traffic(3600.0);
        let flows = [Flow::new(Some(&sent), Some(&got), true)];
        let (d, m) = best_offset(&flows, -4000.0, 4000.0).unwrap();
        assert!((d - 3600.0).abs() <= 0.5, "{d}");
        assert!(convincing(&flows, m));
    }
}
