//! `vxtrace report` over recordings of several nodes: joined by VTEP
//! address (a peer address on one node is a VTEP of another), every
//! directed link A→B is compared from both ends over the span both
//! recordings share, by wall clock: what A handed to its VXLAN device and
//! encapsulated to B, what reached B's underlay device from A and what B's
//! VXLAN device delivered. The first segment where packets go missing is
//! where they are lost; the diagnosis engine names the cause.
//!
//! Clocks: each node timestamps its own intervals. The two nodes' traffic
//! lines their clocks up (within `--clock-skew`, see `clock`); packets in
//! flight at the window's edges are not counted as loss. Recordings that
//! share no time, even so, are not judged: comparing them would read as
//! "nothing lost" (or everything).
//!
//! A peer no recording given is from keeps its links, not judged, with
//! the recorded end's counts and findings (`far_end`).

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    clock::{self, Flow},
    far_end,
    read::{Recording, Sample},
};
use crate::{
    diagnosis::{
        link::{LinkObservation, diagnose_link},
        outbound_outer_drops,
    },
    schema::{
        Blackhole, ClusterReport, Direction, Finding, Link, LinkStatus, Node, NodeReport,
        PeerSummary, Report, Segment, SizeDistribution,
    },
};

/// One node: who, what it recorded, and its own report.
pub struct ClusterNode {
    pub node: Node,
    pub rec: Recording,
    pub report: Report,
    /// Its whole-run view of each peer.
    pub peers: BTreeMap<IpAddr, PeerSummary>,
}

impl ClusterNode {
    /// The node's first and last moment recorded, by its clock.
    pub fn span(&self) -> Option<(f64, f64)> {
        self.rec.span()
    }
}

/// Groups recordings by the node that wrote them (its VTEP addresses,
/// else its name); recordings of one node are read as one.
pub fn nodes(recs: Vec<Recording>) -> Vec<ClusterNode> {
    let mut by_node: Vec<(Node, Recording)> = Vec::new();
    for rec in recs {
        let node = rec.node.clone().unwrap_or_default();
        let same = by_node.iter_mut().find(|(n, _)| {
            if n.vteps.is_empty() || node.vteps.is_empty() {
                n.name == node.name
            } else {
                n.vteps.iter().any(|v| node.vteps.contains(v))
            }
        });
        match same {
            Some((_, existing)) => existing.absorb(rec),
            None => by_node.push((node, rec)),
        }
    }
    disambiguate(&mut by_node);
    by_node
        .into_iter()
        .map(|(node, rec)| {
            let report = super::report(&rec);
            let peers = rec.peers();
            ClusterNode {
                node,
                rec,
                report,
                peers,
            }
        })
        .collect()
}

/// Nodes that share a name (recordings of the first release carry the
/// host name, which network-namespace labs share) get their VTEP added.
fn disambiguate(nodes: &mut [(Node, Recording)]) {
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.name.clone()).collect();
    for (node, _) in nodes.iter_mut() {
        if names.iter().filter(|n| **n == node.name).count() > 1
            && let Some(v) = node.vteps.first()
        {
            node.name = format!("{} ({v})", node.name);
        }
    }
}

/// Every directed link between recorded nodes, the links of peers no
/// recording is from, and the blackholes.
pub fn cluster_report(nodes: &[ClusterNode], skew: f64) -> ClusterReport {
    let pairs = link_pairs(nodes);
    let lineups = line_up(nodes, &pairs, skew);
    let timings: Vec<Option<Timing>> = pairs
        .iter()
        .zip(&lineups)
        .map(|(p, l)| match l {
            Lineup::Shared(s) => Some(timing(&nodes[p.a], &nodes[p.b], p, s)),
            Lineup::Apart { .. } => None,
        })
        .collect();
    let blackholes = blackholes(nodes, &pairs, &lineups, &timings);
    let mut links: Vec<Link> = pairs
        .iter()
        .zip(&lineups)
        .zip(&timings)
        .map(|((p, lineup), timing)| match (lineup, timing) {
            (Lineup::Shared(s), Some(t)) => link(nodes, p, s, t, &blackholes),
            _ => apart_link(nodes, p, lineup, skew),
        })
        .collect();
    let unrecorded = far_end::unrecorded(nodes);
    links.extend(far_end::links(nodes, &unrecorded));
    ClusterReport {
        nodes: nodes
            .iter()
            .map(|n| {
                let (start, end) = n.span().unwrap_or((0.0, 0.0));
                NodeReport {
                    name: n.node.name.clone(),
                    vteps: n.node.vteps.clone(),
                    start,
                    end,
                    report: n.report.clone(),
                }
            })
            .collect(),
        clock_skew_s: skew,
        links,
        blackholes,
        unrecorded,
    }
}

/// A directed link: sender and receiver (indexes into the nodes), and
/// their VTEP addresses.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Pair {
    a: usize,
    b: usize,
    from: IpAddr,
    to: IpAddr,
}

/// The links both ends know: A counted B's VTEP as a peer, or B counted
/// A's; the VTEPs of one address family talk to each other.
fn link_pairs(nodes: &[ClusterNode]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for (a, na) in nodes.iter().enumerate() {
        for (b, nb) in nodes.iter().enumerate() {
            if a == b {
                continue;
            }
            for to in &nb.node.vteps {
                for from in na.node.vteps.iter().filter(|f| f.is_ipv4() == to.is_ipv4()) {
                    let known =
                        na.rec.samples.contains_key(to) || nb.rec.samples.contains_key(from);
                    if known {
                        pairs.push(Pair {
                            a,
                            b,
                            from: *from,
                            to: *to,
                        });
                    }
                }
            }
        }
    }
    pairs
}

/// Two recorded nodes' clocks lined up, seen from the sender of a link.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Shared {
    /// How far the receiver's clock is ahead of the sender's, seconds.
    offset: f64,
    /// The span both recorded, by the sender's clock.
    window: (f64, f64),
}

impl Shared {
    /// A receiver's time, by the sender's clock.
    fn sender_time(&self, t: f64) -> f64 {
        t - self.offset
    }
}

/// Whether two recordings can be compared.
#[derive(Clone, Debug, PartialEq)]
enum Lineup {
    Shared(Shared),
    /// Not enough time in common: `shared` seconds at the offset the
    /// traffic gives within the skew (or none); `suggested`: the offset
    /// (receiver's clock ahead of the sender's) under which the traffic
    /// lines up, searched over every shift that brings the recordings
    /// together, if it does.
    Apart {
        shared: f64,
        suggested: Option<f64>,
    },
}

impl Lineup {
    /// The same, seen from the other node.
    fn mirrored(&self) -> Self {
        match self {
            Lineup::Shared(s) => Lineup::Shared(Shared {
                offset: -s.offset,
                window: (s.window.0 + s.offset, s.window.1 + s.offset),
            }),
            Lineup::Apart { shared, suggested } => Lineup::Apart {
                shared: *shared,
                suggested: suggested.map(|d| -d),
            },
        }
    }
}

/// Seconds in common, at least, to judge a link: more than an interval
/// and its slack at each end of the window, whose packets may be counted
/// by one node only.
fn min_shared(a: &ClusterNode, b: &ClusterNode) -> f64 {
    let longest = |n: &ClusterNode| {
        n.rec
            .samples
            .values()
            .flatten()
            .map(|s| s.len)
            .fold(n.rec.first_len, f64::max)
    };
    2.0 * (longest(a).max(longest(b)) + MATCH_SLACK)
}

/// Each pair's lineup (from its sender's side): the clock offset both
/// directions' traffic gives within ±`skew` (0 when it gives none), the
/// window both recorded under it, and if that is too short, the offset the
/// traffic would need.
fn line_up(nodes: &[ClusterNode], pairs: &[Pair], skew: f64) -> Vec<Lineup> {
    let mut done: BTreeMap<(usize, usize), Lineup> = BTreeMap::new();
    pairs
        .iter()
        .map(|p| {
            let (first, second) = (p.a.min(p.b), p.a.max(p.b));
            let l = done
                .entry((first, second))
                .or_insert_with(|| line_up_pair(nodes, pairs, first, second, skew));
            if p.a == first {
                l.clone()
            } else {
                l.mirrored()
            }
        })
        .collect()
}

/// The lineup of nodes `a` and `b`, from `a`'s side.
fn line_up_pair(nodes: &[ClusterNode], pairs: &[Pair], a: usize, b: usize, skew: f64) -> Lineup {
    let flows: Vec<Flow<'_>> = pairs
        .iter()
        .filter(|p| (p.a, p.b) == (a, b) || (p.a, p.b) == (b, a))
        .map(|p| {
            Flow::new(
                nodes[p.a].rec.samples.get(&p.to),
                nodes[p.b].rec.samples.get(&p.from),
                p.b == b,
            )
        })
        .collect();
    let (Some((a0, a1)), Some((b0, b1))) = (nodes[a].span(), nodes[b].span()) else {
        return Lineup::Apart {
            shared: 0.0,
            suggested: None,
        };
    };
    let offset = clock::best_offset(&flows, -skew, skew).map_or(0.0, |(d, _)| d);
    let window = (a0.max(b0 - offset), a1.min(b1 - offset));
    let shared = window.1 - window.0;
    if shared > min_shared(&nodes[a], &nodes[b]) {
        return Lineup::Shared(Shared { offset, window });
    }
    // Every shift that brings the two recordings together.
    let suggested = clock::best_offset(&flows, b0 - a1, b1 - a0)
        .filter(|(_, matched)| clock::convincing(&flows, *matched))
        .map(|(d, _)| d);
    Lineup::Apart {
        shared: shared.max(0.0),
        suggested,
    }
}

/// A peer's samples that overlap the window: a packet near an edge is
/// counted by both ends (or is in flight, see `link`). `clock` maps the
/// samples' times to the window's clock.
fn within(
    samples: Option<&Vec<Sample>>,
    (w0, w1): (f64, f64),
    clock: impl Fn(f64) -> f64,
) -> Vec<&Sample> {
    samples
        .into_iter()
        .flatten()
        .filter(|s| clock(s.ts) > w0 && clock(s.start()) < w1)
        .collect()
}

/// The sender's own clock.
fn own(t: f64) -> f64 {
    t
}

fn link(
    nodes: &[ClusterNode],
    p: &Pair,
    shared: &Shared,
    timing: &Timing,
    blackholes: &[Blackhole],
) -> Link {
    let (na, nb) = (&nodes[p.a], &nodes[p.b]);
    let window = shared.window;
    let sent = within(na.rec.samples.get(&p.to), window, own);
    let got = within(nb.rec.samples.get(&p.from), window, |t| {
        shared.sender_time(t)
    });
    let sum = |v: &[&Sample], f: fn(&Sample) -> u64| v.iter().map(|s| f(s)).sum::<u64>();
    let tx_encap = sum(&sent, |s| s.tx_encap);
    // In flight at the edges: what A sent within an interval of either
    // end of the window may be counted by one end only.
    let in_flight = sent
        .iter()
        .filter(|s| near_edge(s, window))
        .map(|s| s.tx_encap)
        .sum();
    let a_view = na.report.peers.get(&p.to);
    let b_view = nb.report.peers.get(&p.from);
    let drops = b_view.map(|v| v.drops.clone()).unwrap_or_default();
    // What B dropped of A's traffic that loses it (not a closed port
    // answering, not a socket filter). B's drops "for A" also hold B's
    // own encapsulated packets to A that died on B: those belong to B→A.
    let not_loss: u64 = b_view.map(|v| v.drops_not_loss.values().sum()).unwrap_or(0);
    let b_own: u64 = nb
        .peers
        .get(&p.from)
        .map(|s| {
            outbound_outer_drops(&s.drops_outer, &s.counters)
                .values()
                .sum()
        })
        .unwrap_or(0);
    let receiver_drops = drops
        .values()
        .sum::<u64>()
        .saturating_sub(not_loss)
        .saturating_sub(b_own);
    let sizes = |n: &ClusterNode, peer: &IpAddr, tx: bool| -> SizeDistribution {
        n.peers
            .get(peer)
            .map(|s| {
                if tx {
                    s.counters.outer_size.tx
                } else {
                    s.counters.outer_size.rx
                }
            })
            .unwrap_or_default()
    };
    let (sent_sizes, arrived_sizes) = (sizes(na, &p.to, true), sizes(nb, &p.from, false));
    let blackhole = blackholes
        .iter()
        .find(|h| h.vteps.contains(&p.from) && h.peers.contains(&p.to))
        .map(|h| h.evidence.clone());
    let obs = LinkObservation {
        from: na.node.name.clone(),
        to: nb.node.name.clone(),
        tx_dev: sum(&sent, |s| s.tx_dev),
        tx_encap,
        rx_nic: sum(&got, |s| s.rx_nic),
        rx_decap: sum(&got, |s| s.rx_decap),
        in_flight,
        lost_in_silence: timing.lost,
        receiver_drops,
        sent_sizes: &sent_sizes,
        arrived_sizes: &arrived_sizes,
        sender_findings: a_view.map(|v| v.causes.as_slice()).unwrap_or(&[]),
        receiver_findings: b_view.map(|v| v.causes.as_slice()).unwrap_or(&[]),
        blackhole,
    };
    let d = diagnose_link(&obs);
    let primary = d.findings.first();
    Link {
        from: p.from,
        to: p.to,
        from_node: na.node.name.clone(),
        to_node: nb.node.name.clone(),
        tx_dev: obs.tx_dev,
        tx_encap: obs.tx_encap,
        rx_nic: obs.rx_nic,
        rx_decap: obs.rx_decap,
        drops,
        loss_segment: d.segment,
        lost: d.lost,
        loss_pct: d.loss_pct,
        cause: primary.map(|f| f.kind),
        evidence: primary.map(|f| f.evidence.clone()).unwrap_or_default(),
        findings: d.findings,
        window,
        status: LinkStatus::Judged,
        not_judged: None,
        clock_offset_s: Some(shared.offset),
        suggested_clock_offset_s: None,
    }
}

/// The findings a node's own report names about a peer, for traffic in
/// `direction` (seen from that node): what stays to say of a link that
/// cannot be judged.
pub(super) fn own_findings(n: &ClusterNode, peer: &IpAddr, direction: Direction) -> Vec<Finding> {
    n.report
        .peers
        .get(peer)
        .map(|v| {
            v.causes
                .iter()
                .filter(|f| f.direction == direction || f.direction == Direction::Both)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// A link between recordings that share no time: each end's own counts,
/// over its own recording, not compared; each end's own findings; why it
/// is not judged and what to do.
fn apart_link(nodes: &[ClusterNode], p: &Pair, lineup: &Lineup, skew: f64) -> Link {
    let (na, nb) = (&nodes[p.a], &nodes[p.b]);
    let Lineup::Apart { shared, suggested } = lineup else {
        unreachable!("a link without a shared span")
    };
    let a_view = na.report.peers.get(&p.to);
    let b_view = nb.report.peers.get(&p.from);
    let mut findings = own_findings(na, &p.to, Direction::ToPeer);
    findings.extend(own_findings(nb, &p.from, Direction::FromPeer));
    let primary = findings.first();
    Link {
        from: p.from,
        to: p.to,
        from_node: na.node.name.clone(),
        to_node: nb.node.name.clone(),
        tx_dev: a_view.map_or(0, |v| v.tx_dev.packets),
        tx_encap: a_view.map_or(0, |v| v.tx_encap.packets),
        rx_nic: b_view.map_or(0, |v| v.rx_nic.packets),
        rx_decap: b_view.map_or(0, |v| v.rx_decap.packets),
        drops: b_view.map(|v| v.drops.clone()).unwrap_or_default(),
        loss_segment: Segment::NotJudged,
        lost: 0,
        loss_pct: 0.0,
        cause: primary.map(|f| f.kind),
        evidence: primary.map(|f| f.evidence.clone()).unwrap_or_default(),
        findings,
        window: (0.0, 0.0),
        status: LinkStatus::NoSharedSpan,
        not_judged: Some(apart_words(na, nb, *shared, *suggested, skew)),
        clock_offset_s: None,
        suggested_clock_offset_s: *suggested,
    }
}

/// Why two recordings are not compared, and what to do.
fn apart_words(
    a: &ClusterNode,
    b: &ClusterNode,
    shared: f64,
    suggested: Option<f64>,
    skew: f64,
) -> String {
    let span = |n: &ClusterNode| match n.span() {
        Some((t0, t1)) => format!("{}'s from {} to {}", n.node.name, utc(t0), utc(t1)),
        None => format!("{}'s holds no interval", n.node.name),
    };
    let how_much = if shared > 0.0 {
        format!("share only {shared:.1} s, too little to tell loss from packets in flight")
    } else {
        "share no time".to_string()
    };
    let what_to_do = match suggested {
        Some(d) if d.abs() > skew => format!(
            "the traffic lines up if {}'s clock is {:.1} s {} {}'s: if the clocks are that far apart, re-run with --clock-skew {}; if the recordings were taken at different times, record on both nodes at the same time",
            b.node.name,
            d.abs(),
            if d > 0.0 { "ahead of" } else { "behind" },
            a.node.name,
            (d.abs() + 1.0).ceil()
        ),
        _ => "nothing in the traffic lines them up under a larger --clock-skew: record on both nodes at the same time".to_string(),
    };
    format!(
        "the recordings {how_much} ({}, {}, each by its own clock); {what_to_do}",
        span(a),
        span(b)
    )
}

/// Unix time as `2024-05-01T10:00:01Z`.
pub(super) fn utc(t: f64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t.max(0.0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Slack when matching a sender's interval with the receiver's, after the
/// clock offset is taken out.
const MATCH_SLACK: f64 = 0.1;
/// Seconds without sending that end a lost stretch.
const STRETCH_GAP: f64 = 5.0;

/// Whether a sample lies within an interval of either end of the window
/// (what it counted may be counted by one end only).
fn near_edge(s: &Sample, (w0, w1): (f64, f64)) -> bool {
    let margin = s.len + MATCH_SLACK;
    s.start() < w0 + margin || s.ts > w1 - margin
}

/// A link over time, once the clocks are lined up.
struct Timing {
    /// Stretches in which A sent and B received nothing from A, as (start,
    /// end) in A's time: from the last packet that arrived before to the
    /// first one after (or the last one lost).
    stretches: Vec<(f64, f64)>,
    /// Packets A sent in those stretches, away from the window's edges.
    lost: u64,
}

fn timing(na: &ClusterNode, nb: &ClusterNode, p: &Pair, shared: &Shared) -> Timing {
    let window = shared.window;
    let sent = within(na.rec.samples.get(&p.to), window, own);
    let got: Vec<&Sample> = within(nb.rec.samples.get(&p.from), window, |t| {
        shared.sender_time(t)
    })
    .into_iter()
    .filter(|s| s.rx_nic > 0)
    .collect();
    let d = shared.offset;
    let mut t = Timing {
        stretches: Vec::new(),
        lost: 0,
    };
    // Quiet intervals do not end a stretch (a sender waiting for replies
    // sends less), an arrival does, and so does a long silence.
    let mut open: Option<(f64, f64)> = None;
    let mut last_heard: Option<f64> = None;
    for s in sent.iter().filter(|s| s.tx_encap > 0) {
        let heard = got
            .iter()
            .any(|g| g.start() < s.ts + d + MATCH_SLACK && g.ts > s.start() + d - MATCH_SLACK);
        if heard {
            if let Some((a, _)) = open.take() {
                t.stretches.push((a, s.start()));
            }
            last_heard = Some(s.ts);
            continue;
        }
        if !near_edge(s, window) {
            t.lost += s.tx_encap;
        }
        open = match open {
            Some((a, b)) if s.start() - b <= STRETCH_GAP => Some((a, s.ts)),
            other => {
                t.stretches.extend(other);
                let start = last_heard
                    .filter(|h| s.start() - h <= STRETCH_GAP)
                    .unwrap_or(s.start());
                Some((start, s.ts))
            }
        };
    }
    t.stretches.extend(open);
    t
}

/// A node whose traffic to two or more peers was lost in the same
/// seconds: one event, naming the peers and whether others reached them.
fn blackholes(
    nodes: &[ClusterNode],
    pairs: &[Pair],
    lineups: &[Lineup],
    timings: &[Option<Timing>],
) -> Vec<Blackhole> {
    let mut out = Vec::new();
    for (a, na) in nodes.iter().enumerate() {
        let stretches: Vec<(IpAddr, Vec<(f64, f64)>)> = pairs
            .iter()
            .zip(timings)
            .filter_map(|(p, t)| Some((p, t.as_ref()?)))
            .filter(|(p, t)| p.a == a && !t.stretches.is_empty())
            .map(|(p, t)| (p.to, t.stretches.clone()))
            .collect();
        for (start, end, peers) in overlaps(&stretches) {
            let reached_by_others: Vec<String> = peers
                .iter()
                .filter(|to| others_reached(nodes, pairs, lineups, a, to, (start, end)))
                .map(|to| to.to_string())
                .collect();
            out.push(Blackhole {
                node: na.node.name.clone(),
                vteps: na.node.vteps.clone(),
                start,
                end,
                peers: peers.clone(),
                evidence: format!(
                    "{}'s packets to {} lost from {} to {} UTC ({:.0} s){}",
                    na.node.name,
                    peers
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::sinks::events::clock(start),
                    crate::sinks::events::clock(end),
                    end - start,
                    if reached_by_others.is_empty() {
                        String::new()
                    } else {
                        format!(
                            ", while other nodes reached {}",
                            reached_by_others.join(", ")
                        )
                    }
                ),
            });
        }
    }
    out
}

/// Stretches of different links that overlap in time, joined: each group
/// that holds two or more peers is one event, from its first lost packet
/// to its last.
fn overlaps(stretches: &[(IpAddr, Vec<(f64, f64)>)]) -> Vec<(f64, f64, Vec<IpAddr>)> {
    let mut all: Vec<(f64, f64, IpAddr)> = stretches
        .iter()
        .flat_map(|(peer, s)| s.iter().map(move |(a, b)| (*a, *b, *peer)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut groups: Vec<(f64, f64, Vec<IpAddr>)> = Vec::new();
    for (a, b, peer) in all {
        match groups.last_mut() {
            Some(g) if a < g.1 => {
                g.1 = g.1.max(b);
                if !g.2.contains(&peer) {
                    g.2.push(peer);
                }
            }
            _ => groups.push((a, b, vec![peer])),
        }
    }
    groups
        .into_iter()
        .filter(|g| g.2.len() >= 2)
        .map(|(a, b, mut peers)| {
            peers.sort();
            (a, b, peers)
        })
        .collect()
}

/// Whether some node other than `a` got packets through to `to` in the
/// window (by `a`'s clock).
fn others_reached(
    nodes: &[ClusterNode],
    pairs: &[Pair],
    lineups: &[Lineup],
    a: usize,
    to: &IpAddr,
    (w0, w1): (f64, f64),
) -> bool {
    pairs.iter().filter(|p| p.a != a && p.to == *to).any(|p| {
        // The receiver's clock against a's, as a's link to it lined them up.
        let Some(Lineup::Shared(clocks)) = pairs
            .iter()
            .zip(lineups)
            .find(|(q, _)| q.a == a && q.b == p.b)
            .map(|(_, l)| l)
        else {
            return false;
        };
        nodes[p.b]
            .rec
            .samples
            .get(&p.from)
            .into_iter()
            .flatten()
            .any(|s| {
                s.rx_nic > 0
                    && clocks.sender_time(s.ts) >= w0
                    && clocks.sender_time(s.start()) <= w1
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        report::{
            lines::{Counts, header, interval, ip},
            matrix,
        },
        schema::Cause,
    };

    const T0: f64 = 1_700_000_000.0;
    /// Bursts of 10 echoes node1 -> node2 in these of its 40 half-second
    /// intervals (none at the edges): 60 packets each way.
    const BURSTS: [u64; 6] = [6, 12, 18, 24, 30, 36];

    /// Two nodes' recordings: node1 sends its bursts to node2, whose
    /// answers die on the path (node2 -> node1 loses all 60), and 5
    /// packets a burst to `third` (192.0.2.13), which records nothing and
    /// answers nothing. node2's clock is `ahead` seconds ahead of node1's,
    /// its intervals 0.2 s out of step.
    fn two_nodes(ahead: f64) -> Vec<Recording> {
        two_nodes_and(ahead, "192.0.2.13")
    }

    fn two_nodes_and(ahead: f64, third: &str) -> Vec<Recording> {
        let node1 = std::iter::once(header("node1", "192.0.2.11", T0)).chain((1..=40).map(|i| {
            let burst = BURSTS.contains(&i);
            let (to_2, to_3) = if burst {
                (Counts::both_ways(10, 0), Counts::both_ways(5, 0))
            } else {
                Default::default()
            };
            interval(
                T0 + 0.5 * i as f64,
                0.5,
                &[("192.0.2.12", to_2), (third, to_3)],
            )
        }));
        let node2 =
            std::iter::once(header("node2", "192.0.2.12", T0 + ahead)).chain((1..=40).map(|i| {
                let c = if BURSTS.contains(&i) {
                    Counts::both_ways(10, 10)
                } else {
                    Default::default()
                };
                interval(T0 + ahead + 0.2 + 0.5 * i as f64, 0.5, &[("192.0.2.11", c)])
            }));
        vec![Recording::of_lines(node1), Recording::of_lines(node2)]
    }

    fn link<'a>(r: &'a ClusterReport, from: &str, to: &str) -> &'a Link {
        r.links
            .iter()
            .find(|l| l.from_node == from && l.to_node == to)
            .unwrap_or_else(|| panic!("no link {from} -> {to}: {:#?}", r.links))
    }

    /// A peer no recording is from is a node of the report: its links
    /// not judged, the recorded end's counts and its own one-way finding
    /// as its single-node report names it. The recorded pair is judged.
    #[test]
    fn a_node_without_a_recording_keeps_its_links_and_findings() {
        let nodes = nodes(two_nodes(0.0));
        let r = cluster_report(&nodes, 2.0);
        let c = ip("192.0.2.13");
        assert_eq!(
            r.unrecorded,
            vec![crate::schema::UnrecordedNode {
                name: "192.0.2.13".into(),
                vteps: vec![c],
                seen_by: vec!["node1".into()],
            }]
        );
        let out = link(&r, "node1", "192.0.2.13");
        assert_eq!(out.status, LinkStatus::FarEndNotRecorded);
        assert_eq!(out.loss_segment, Segment::NotJudged);
        assert_eq!((out.tx_dev, out.tx_encap, out.rx_nic), (30, 30, 0));
        assert_eq!(out.cause, Some(Cause::OneWay));
        assert_eq!(out.findings[0].headline, "one-way: sent 30, received 0");
        assert_eq!(out.evidence, "tx_encap 30, rx_nic 0");
        assert_eq!(out.findings, nodes[0].report.peers[&c].causes);
        assert!(
            out.not_judged
                .as_deref()
                .is_some_and(|w| w.starts_with("no recording of the far end (192.0.2.13)")),
            "{out:#?}"
        );
        let back = link(&r, "192.0.2.13", "node1");
        assert_eq!(back.status, LinkStatus::FarEndNotRecorded);
        assert_eq!((back.tx_encap, back.rx_nic, back.rx_decap), (0, 0, 0));
        let lost = link(&r, "node2", "node1");
        assert_eq!(lost.status, LinkStatus::Judged);
        assert_eq!((lost.tx_encap, lost.rx_nic), (60, 0));
        assert_eq!((lost.loss_segment, lost.lost), (Segment::Path, 60));
        let fine = link(&r, "node1", "node2");
        assert_eq!((fine.tx_encap, fine.rx_nic), (60, 60));
        assert_eq!(fine.loss_segment, Segment::None);
        let words = matrix::text(&r);
        assert!(words.contains("far end not recorded"), "{words}");
        assert!(
            words.contains(
                "node1 (192.0.2.11) -> 192.0.2.13: not judged: no recording of the far end"
            ),
            "{words}"
        );
        assert!(
            words.contains("likely cause: one-way: sent 30, received 0"),
            "{words}"
        );
    }

    /// A multicast group a device floods to is not a node.
    #[test]
    fn a_multicast_group_is_no_unrecorded_node() {
        let r = cluster_report(&nodes(two_nodes_and(0.0, "239.1.1.1")), 2.0);
        assert!(r.unrecorded.is_empty(), "{:#?}", r.unrecorded);
        assert_eq!(r.links.len(), 2, "{:#?}", r.links);
        assert!(r.links.iter().all(|l| l.status == LinkStatus::Judged));
    }

    /// node2's clock an hour ahead: the recordings share no time, every
    /// link between them is not judged (never "none"), no window runs
    /// backwards, and the traffic names the offset; with a --clock-skew
    /// that covers it, the links are judged with exact counts.
    #[test]
    fn recordings_that_share_no_time_are_not_judged() {
        let r = cluster_report(&nodes(two_nodes(3600.0)), 2.0);
        for l in &r.links {
            assert!(l.window.0 <= l.window.1, "{l:#?}");
            assert_ne!(l.loss_segment, Segment::None, "{l:#?}");
        }
        for (from, to) in [("node1", "node2"), ("node2", "node1")] {
            let l = link(&r, from, to);
            assert_eq!(l.status, LinkStatus::NoSharedSpan, "{l:#?}");
            assert_eq!(l.loss_segment, Segment::NotJudged);
            assert_eq!(l.window, (0.0, 0.0));
            // 3600 s, and node2's intervals 0.2 s out of step: known to an
            // interval.
            let d = l
                .suggested_clock_offset_s
                .expect("an offset from the traffic");
            let ahead = if from == "node1" { 3600.2 } else { -3600.2 };
            assert!((d - ahead).abs() <= 0.5, "{d}");
            let words = l.not_judged.as_deref().unwrap();
            assert!(words.starts_with("the recordings share no time"), "{words}");
            // A second more than the offset found.
            let skew = format!("re-run with --clock-skew {}", (d.abs() + 1.0).ceil());
            assert!(words.contains(&skew), "{words}");
        }
        let words = matrix::text(&r);
        assert!(words.contains("no shared span"), "{words}");
        assert!(!words.contains("% none"), "{words}");

        let r = cluster_report(&nodes(two_nodes(3600.0)), 3601.0);
        let lost = link(&r, "node2", "node1");
        assert_eq!(lost.status, LinkStatus::Judged, "{lost:#?}");
        assert_eq!((lost.tx_encap, lost.rx_nic), (60, 0));
        assert_eq!((lost.loss_segment, lost.lost), (Segment::Path, 60));
        assert!((lost.clock_offset_s.unwrap() + 3600.2).abs() <= 0.5);
        let fine = link(&r, "node1", "node2");
        assert_eq!((fine.tx_encap, fine.rx_nic), (60, 60));
        assert_eq!(fine.loss_segment, Segment::None);
    }

    /// Recordings of different times whose traffic lines up nowhere: not
    /// judged, and the words say to record at the same time.
    #[test]
    fn recordings_of_different_times_say_to_record_together() {
        let mut recs = two_nodes(600.0);
        // node2 heard nothing of node1.
        recs[1] = Recording::of_lines(
            std::iter::once(header("node2", "192.0.2.12", T0 + 600.0)).chain((1..=40).map(|i| {
                interval(
                    T0 + 600.0 + 0.5 * i as f64,
                    0.5,
                    &[(
                        "192.0.2.11",
                        Counts {
                            tx_dev: 1,
                            tx_encap: 1,
                            ..Default::default()
                        },
                    )],
                )
            })),
        );
        let r = cluster_report(&nodes(recs), 2.0);
        let l = link(&r, "node1", "node2");
        assert_eq!(l.status, LinkStatus::NoSharedSpan);
        assert_eq!(l.suggested_clock_offset_s, None);
        let words = l.not_judged.as_deref().unwrap();
        assert!(
            words.ends_with("nothing in the traffic lines them up under a larger --clock-skew: record on both nodes at the same time"),
            "{words}"
        );
    }

    #[test]
    fn overlapping_losses_are_one_event() {
        let b = ip("192.0.2.12");
        let c = ip("192.0.2.13");
        let d = ip("192.0.2.14");
        let stretches = vec![
            (b, vec![(10.0, 14.0)]),
            (c, vec![(10.5, 14.0)]),
            (d, vec![(30.0, 31.0)]),
        ];
        let o = overlaps(&stretches);
        assert_eq!(o, vec![(10.0, 14.0, vec![b, c])]);
    }
}
