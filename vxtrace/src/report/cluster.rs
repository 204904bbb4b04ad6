//! `vxtrace report` over recordings of several nodes: joined by VTEP
//! address (a peer address on one node is a VTEP of another), every
//! directed link A→B is compared from both ends over the span both
//! recordings share, by wall clock: what A handed to its VXLAN device and
//! encapsulated to B, what reached B's underlay device from A and what B's
//! VXLAN device delivered. The first segment where packets go missing is
//! where they are lost; the diagnosis engine names the cause.
//!
//! Clocks: each node timestamps its own intervals. Packets in flight at
//! the window's edges, and those a clock difference of up to
//! `--clock-skew` moves across an edge, are not counted as loss.

use std::{collections::BTreeMap, net::IpAddr};

use super::read::{Recording, Sample};
use crate::{
    diagnosis::{
        link::{LinkObservation, diagnose_link},
        outbound_outer_drops,
    },
    schema::{
        Blackhole, ClusterReport, Link, Node, NodeReport, PeerSummary, Report, SizeDistribution,
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
    /// The node's first and last moment recorded.
    fn span(&self) -> (f64, f64) {
        self.rec.span().unwrap_or((0.0, 0.0))
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

/// Every directed link between recorded nodes, and the blackholes.
pub fn cluster_report(nodes: &[ClusterNode], skew: f64) -> ClusterReport {
    let pairs = link_pairs(nodes);
    let timings: Vec<Timing> = pairs
        .iter()
        .map(|p| timing(&nodes[p.a], &nodes[p.b], p, skew))
        .collect();
    let blackholes = blackholes(nodes, &pairs, &timings);
    let links = pairs
        .iter()
        .zip(&timings)
        .map(|(p, t)| link(nodes, p, t, &blackholes))
        .collect();
    ClusterReport {
        nodes: nodes
            .iter()
            .map(|n| {
                let (start, end) = n.span();
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

/// The span both nodes recorded.
fn shared(a: &ClusterNode, b: &ClusterNode) -> (f64, f64) {
    let (a0, a1) = a.span();
    let (b0, b1) = b.span();
    (a0.max(b0), a1.min(b1))
}

/// A peer's samples that overlap the window: a packet near an edge is
/// counted by both ends (or is in flight, see `link`).
fn within(samples: Option<&Vec<Sample>>, (w0, w1): (f64, f64)) -> Vec<&Sample> {
    samples
        .into_iter()
        .flatten()
        .filter(|s| s.ts > w0 && s.start() < w1)
        .collect()
}

fn link(nodes: &[ClusterNode], p: &Pair, timing: &Timing, blackholes: &[Blackhole]) -> Link {
    let (na, nb) = (&nodes[p.a], &nodes[p.b]);
    let window = shared(na, nb);
    let sent = within(na.rec.samples.get(&p.to), window);
    let got = within(nb.rec.samples.get(&p.from), window);
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
    }
}

/// Steps in which clock offsets are tried, seconds.
const OFFSET_STEP: f64 = 0.05;
/// Slack when matching a sender's interval with the receiver's, after the
/// clock offset is taken out.
const MATCH_SLACK: f64 = 0.1;
/// Seconds without sending that end a lost stretch.
const STRETCH_GAP: f64 = 5.0;

/// How far B's clock is ahead of A's, as the link's own traffic shows it:
/// the shift within ±`max` under which what B received matches what A
/// sent most closely, interval by interval (0 when nothing arrived, e.g.
/// a link that never worked).
fn clock_offset(sent: &[&Sample], got: &[&Sample], max: f64) -> f64 {
    if got.is_empty() {
        return 0.0;
    }
    let steps = (max / OFFSET_STEP).round() as i64;
    let cost = |d: f64| -> f64 {
        sent.iter()
            .map(|s| {
                let (a, b) = (s.start() + d, s.ts + d);
                // Each receiver interval weighted by how much of it the
                // shifted sender interval covers.
                let rx: f64 = got
                    .iter()
                    .map(|g| {
                        let overlap = (b.min(g.ts) - a.max(g.start())).max(0.0);
                        g.rx_nic as f64 * overlap / g.len.max(0.001)
                    })
                    .sum();
                (s.tx_encap as f64 - rx).abs()
            })
            .sum()
    };
    let mut best = (cost(0.0), 0.0f64);
    for k in (-steps..=steps).filter(|k| *k != 0) {
        let d = k as f64 * OFFSET_STEP;
        let c = cost(d);
        // Away from zero only for a clearly better match.
        if c < best.0 * 0.98 - 1e-9 || (c < best.0 - 1e-9 && d.abs() < best.1.abs()) {
            best = (c, d);
        }
    }
    best.1
}

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

fn timing(na: &ClusterNode, nb: &ClusterNode, p: &Pair, skew: f64) -> Timing {
    let window = shared(na, nb);
    let sent = within(na.rec.samples.get(&p.to), window);
    let got: Vec<&Sample> = within(nb.rec.samples.get(&p.from), window)
        .into_iter()
        .filter(|s| s.rx_nic > 0)
        .collect();
    let d = clock_offset(&sent, &got, skew);
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
fn blackholes(nodes: &[ClusterNode], pairs: &[Pair], timings: &[Timing]) -> Vec<Blackhole> {
    let mut out = Vec::new();
    for (a, na) in nodes.iter().enumerate() {
        let stretches: Vec<(IpAddr, Vec<(f64, f64)>)> = pairs
            .iter()
            .zip(timings)
            .filter(|(p, t)| p.a == a && !t.stretches.is_empty())
            .map(|(p, t)| (p.to, t.stretches.clone()))
            .collect();
        for (start, end, peers) in overlaps(&stretches) {
            let reached_by_others: Vec<String> = peers
                .iter()
                .filter(|to| others_reached(nodes, pairs, a, to, (start, end)))
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
/// window.
fn others_reached(
    nodes: &[ClusterNode],
    pairs: &[Pair],
    a: usize,
    to: &IpAddr,
    (w0, w1): (f64, f64),
) -> bool {
    pairs.iter().filter(|p| p.a != a && p.to == *to).any(|p| {
        nodes[p.b]
            .rec
            .samples
            .get(&p.from)
            .into_iter()
            .flatten()
            .any(|s| s.rx_nic > 0 && s.ts >= w0 && s.start() <= w1)
    })
}

/// The link matrix in words: rows from, columns to, loss and segment;
/// then each lossy link with its cause, evidence and fix.
pub fn text(r: &ClusterReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let names: Vec<&str> = r.nodes.iter().map(|n| n.name.as_str()).collect();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(20);
    let _ = writeln!(s, "links (rows: from, columns: to; loss %, where lost)\n");
    let _ = write!(s, "{:width$}", "");
    for n in &names {
        let _ = write!(s, "  {n:width$}");
    }
    let _ = writeln!(s);
    for from in &names {
        let _ = write!(s, "{from:width$}");
        for to in &names {
            let cell = if from == to {
                "-".to_string()
            } else {
                matrix_cell(r, from, to)
            };
            let _ = write!(s, "  {cell:width$}");
        }
        let _ = writeln!(s);
    }
    for l in r
        .links
        .iter()
        .filter(|l| l.loss_segment != crate::schema::Segment::None)
    {
        let _ = writeln!(
            s,
            "\n{} ({}) -> {} ({}): tx_dev {} · tx_encap {} · rx_nic {} · rx_decap {}; lost {} ({}%) on the {}",
            l.from_node,
            l.from,
            l.to_node,
            l.to,
            l.tx_dev,
            l.tx_encap,
            l.rx_nic,
            l.rx_decap,
            l.lost,
            l.loss_pct,
            l.loss_segment.as_str().replace('_', " ")
        );
        for f in &l.findings {
            let _ = writeln!(
                s,
                "  likely cause: {}\n    {}\n    evidence: {}\n    fix: {}",
                f.headline, f.cause, f.evidence, f.fix
            );
        }
    }
    for h in &r.blackholes {
        let _ = writeln!(s, "\nblackhole of {}: {}", h.node, h.evidence);
    }
    s
}

/// "0% none", "100% path"; the worst of the node pair's links.
fn matrix_cell(r: &ClusterReport, from: &str, to: &str) -> String {
    r.links
        .iter()
        .filter(|l| l.from_node == from && l.to_node == to)
        .max_by(|a, b| a.loss_pct.total_cmp(&b.loss_pct))
        .map(|l| format!("{:.0}% {}", l.loss_pct, l.loss_segment.as_str()))
        .unwrap_or_else(|| "no traffic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn sample(ts: f64, tx: u64, rx: u64) -> Sample {
        Sample {
            ts,
            len: 0.5,
            tx_encap: tx,
            rx_nic: rx,
            ..Default::default()
        }
    }

    /// A receiver whose clock runs 1.2 s ahead: the shift that lines the
    /// traffic up is found.
    #[test]
    fn clock_offsets_are_found_from_the_traffic() {
        let sent: Vec<Sample> = (0..20)
            .map(|i| sample(100.0 + i as f64 * 0.5, if i % 4 == 0 { 10 } else { 0 }, 0))
            .collect();
        let got: Vec<Sample> = sent
            .iter()
            .map(|s| sample(s.ts + 1.2, 0, s.tx_encap))
            .collect();
        let (s, g): (Vec<&Sample>, Vec<&Sample>) = (sent.iter().collect(), got.iter().collect());
        let d = clock_offset(&s, &g, 2.0);
        assert!((d - 1.2).abs() <= 0.25, "{d}");
        assert_eq!(clock_offset(&s, &[], 2.0), 0.0);
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
