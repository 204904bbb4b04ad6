//! The diagnosis engine: from what one node counted for one peer to the
//! likely causes, each with the segment where traffic is lost, the numbers
//! that show it, and the fix. A pure function of its input: the live
//! screen, the summary, `report` and the metrics all ask it, so they
//! cannot disagree.
//!
//! Each cause is described once, by an [`About`] (what it means, where the
//! traffic is lost, the fix) standing beside the code that recognises it:
//! the rules one node judges from its own counters in `rules`, the
//! causes only both ends of a link show in [`link`], the VTEPs that cannot
//! be reached in `unresolved`. The link engine names the node rules'
//! causes with the node rules' words.
//!
//! Rules that compare two counts (sent against received, arrived against
//! decapsulated) wait for [`MIN_PACKETS`], so packets in flight at the
//! moment of reading raise nothing. Rules that count something the kernel
//! or the packet parser reported (a drop, a PAWS reject, a malformed
//! packet, a masqueraded source) speak at the first one: a counted event
//! is not in flight.

use std::{collections::BTreeMap, net::IpAddr};

pub mod link;
mod rules;
mod unresolved;

pub use rules::{RULES, outbound_outer_drops};
pub use unresolved::diagnose_unresolved;

use crate::schema::{
    Cause, Direction, Finding, OutageRecord, PeerCounters, PeerSummary, PortMismatch, Segment,
    TcpOutcome, TooBigDrops, evidence_text as evidence,
};

/// Packets a traffic rule needs before it concludes anything.
pub const MIN_PACKETS: u64 = 5;

/// Everything the engine looks at for one peer, cumulative over a run.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    pub counters: &'a PeerCounters,
    /// Kernel drops of the peer's traffic, by reason name.
    pub drops: &'a BTreeMap<String, u64>,
    /// Of those, the drops of outer VXLAN packets.
    pub drops_outer: &'a BTreeMap<String, u64>,
    /// Of those, the drops that lose no traffic.
    pub drops_not_loss: &'a BTreeMap<String, u64>,
    pub tcp: &'a TcpOutcome,
    pub outages: &'a [OutageRecord],
    /// VXLAN on well-known ports no device here uses, by port.
    pub port_mismatch: &'a [PortMismatch],
    pub too_big: Option<&'a TooBigDrops>,
    /// The VXLAN ports this node's devices use.
    pub local_ports: &'a [u16],
}

impl<'a> Observation<'a> {
    /// What a summary (or a report's rebuilt summary) holds about a peer.
    pub fn of_summary(p: &'a PeerSummary, tcp: &'a TcpOutcome, local_ports: &'a [u16]) -> Self {
        Self {
            counters: &p.counters,
            drops: &p.drops,
            drops_outer: &p.drops_outer,
            drops_not_loss: &p.drops_not_loss,
            tcp,
            outages: &p.silences.outages,
            port_mismatch: &p.port_mismatch,
            too_big: p.too_big.as_ref(),
            local_ports,
        }
    }
}

/// The findings for one peer, most telling first.
///
/// When the VXLAN device decapsulated clearly more of the peer's packets
/// than arrived at the watched underlay devices, some of the peer's
/// traffic crosses a device vxtrace does not see (a new uplink, a changed
/// route, a program ahead of vxtrace): the underlay counts are a lower
/// bound, so nothing is concluded from them (no one-way, no loss, no
/// outage); the finding says so instead.
pub fn diagnose(o: &Observation<'_>) -> Vec<Finding> {
    let blind = (rules::UNWATCHED_UNDERLAY.matches)(o).is_some();
    RULES
        .iter()
        .filter(|rule| !(blind && rule.needs_the_underlay()))
        .filter_map(|rule| {
            let seen = (rule.matches)(o)?;
            let mut f = rule.about.finding(seen.headline, seen.evidence);
            if let Some((segment, direction)) = seen.place {
                (f.segment, f.direction) = (segment, direction);
            }
            if let Some((cause, fix)) = seen.words {
                (f.cause, f.fix) = (cause, fix);
            }
            Some(f)
        })
        .collect()
}

/// The findings for a summary's peer; `local_ports`: the VXLAN ports of
/// the node that counted it.
pub fn diagnose_summary(p: &PeerSummary, local_ports: &[u16]) -> Vec<Finding> {
    let tcp = p.tcp_outcome();
    diagnose(&Observation::of_summary(p, &tcp, local_ports))
}

/// The findings for the peer at `addr`. A multicast group is where a
/// device floods what it has no entry for: the members answer from their
/// own addresses, so silence from the group itself says nothing.
pub fn diagnose_peer(addr: &IpAddr, p: &PeerSummary, local_ports: &[u16]) -> Vec<Finding> {
    let mut found = diagnose_summary(p, local_ports);
    if addr.is_multicast() {
        found.retain(|f| {
            !matches!(
                f.kind,
                Cause::OneWay | Cause::PathMtu | Cause::GroupedOutage | Cause::IntermittentOutage
            )
        });
    }
    found
}

/// What a cause means, where its traffic is lost and what to do: the one
/// description of a cause, which every finding of it starts from.
#[derive(Clone, Copy, Debug)]
pub struct About {
    pub cause: Cause,
    pub segment: Segment,
    pub direction: Direction,
    /// What it means, in words.
    pub meaning: &'static str,
    /// What to change or check. Upper-case words (DEV, MAC, ADDR) stand
    /// for what the reader fills in; `fill` does where they are known.
    pub fix: &'static str,
}

impl About {
    /// A finding of this cause, with what was seen.
    pub fn finding(&self, headline: String, evidence: String) -> Finding {
        Finding {
            kind: self.cause,
            headline,
            cause: self.meaning.to_string(),
            segment: self.segment,
            direction: self.direction,
            evidence,
            fix: self.fix.to_string(),
        }
    }
}

/// Every cause's description: the node's rules, the link's own causes and
/// the unreachable VTEPs'.
pub fn causes() -> impl Iterator<Item = &'static About> {
    RULES
        .iter()
        .map(|r| &r.about)
        .chain(link::CAUSES.iter().copied())
        .chain(unresolved::CAUSES.iter().copied())
}

/// `text` with each whole upper-case placeholder word (`DEV`) replaced by
/// its value; other words, and placeholders inside longer words, stay.
fn fill(text: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match values.iter().find(|(k, _)| *k == word.as_str()) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(word),
        }
        word.clear();
    };
    for ch in text.chars() {
        if ch.is_ascii_alphanumeric() || ch == '_' {
            word.push(ch);
        } else {
            flush(&mut word, &mut out);
            out.push(ch);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// One cause a node recognises from its counters for a peer.
pub struct Rule {
    pub about: About,
    matches: fn(&Observation<'_>) -> Option<Seen>,
}

impl Rule {
    /// Whether the rule concludes from the underlay device's counts, which
    /// a device vxtrace does not watch leaves short.
    fn needs_the_underlay(&self) -> bool {
        matches!(
            self.about.cause,
            Cause::OneWay
                | Cause::LostBeforeDecap
                | Cause::LostWhileEncapsulating
                | Cause::PathMtu
                | Cause::GroupedOutage
                | Cause::IntermittentOutage
        )
    }
}

/// What a rule saw: the headline and the numbers; and, where the counters
/// tell, another segment and direction than the cause's usual ones.
struct Seen {
    headline: String,
    evidence: String,
    place: Option<(Segment, Direction)>,
    /// Meaning and fix in words the counters chose (several drop reasons
    /// each with its own), instead of the cause's.
    words: Option<(String, String)>,
}

fn seen(headline: String, evidence: String) -> Option<Seen> {
    Some(Seen {
        headline,
        evidence,
        place: None,
        words: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{MissingEntry, UnresolvedVtep};

    /// The VXLAN port of the node in these cases.
    const PORTS: &[u16] = &[8472];

    /// The peer's summary a case describes.
    fn summary_of(case: &Case) -> PeerSummary {
        let (mut c, mut d, mut t) = Default::default();
        (case.setup)(&mut c, &mut d, &mut t);
        let mut p = PeerSummary {
            counters: c,
            drops: d,
            ..Default::default()
        };
        p.counters.tcp.outcome = Some(t);
        p.silences.outages = case.outages.clone();
        (case.extra)(&mut p);
        p
    }

    /// A test case: what was counted, and what the engine must conclude.
    struct Case {
        name: &'static str,
        setup: fn(&mut PeerCounters, &mut BTreeMap<String, u64>, &mut TcpOutcome),
        /// What the counters above do not hold (outer drops, ports, sizes).
        extra: fn(&mut PeerSummary),
        outages: Vec<OutageRecord>,
        cause: Cause,
        segment: Segment,
        headline_starts: &'static str,
        evidence: &'static str,
        fix_mentions: &'static str,
    }

    fn outage(together: &[&str], duration: f64) -> OutageRecord {
        OutageRecord {
            start: 100.0,
            end: Some(100.0 + duration),
            duration_s: Some(duration),
            sent_into_silence: 40,
            silent_together: together.iter().map(|a| a.parse().unwrap()).collect(),
            tx_pps_before: 20.0,
            ongoing: false,
        }
    }

    /// Healthy traffic both ways, which no rule may mind.
    fn healthy(c: &mut PeerCounters) {
        for t in [
            &mut c.tx_dev,
            &mut c.tx_encap,
            &mut c.rx_nic,
            &mut c.rx_decap,
        ] {
            t.packets = 200;
            t.bytes = 200 * 148;
        }
    }

    #[allow(
        clippy::too_many_lines,
        reason = "tests are exempt: a test's steps and its table of cases read in order"
    )]
    fn cases() -> Vec<Case> {
        vec![
            Case {
                name: "one-way",
                setup: |c, _, _| c.tx_encap.packets = 200,
                extra: |_| {},
                outages: vec![],
                cause: Cause::OneWay,
                segment: Segment::Path,
                headline_starts: "one-way: sent 200, received 0",
                evidence: "tx_encap 200, rx_nic 0",
                fix_mentions: "security group",
            },
            Case {
                name: "host firewall",
                setup: |c, d, _| {
                    c.tx_encap.packets = 5;
                    c.rx_nic.packets = 5;
                    d.insert("NETFILTER_DROP".into(), 5);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::HostFirewall,
                segment: Segment::ReceiverHost,
                headline_starts: "host firewall: 5 packets",
                evidence: "rx_nic 5, rx_decap 0, NETFILTER_DROP 5",
                fix_mentions: "input rules",
            },
            Case {
                name: "forward drop of pod traffic",
                setup: |c, d, _| {
                    healthy(c);
                    d.insert("NETFILTER_DROP".into(), 6);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::PodTrafficFirewall,
                segment: Segment::ReceiverHost,
                headline_starts: "netfilter dropped 6 packets of this peer's pod traffic",
                evidence: "rx_decap 200, tx_dev 200, NETFILTER_DROP 6",
                fix_mentions: "FORWARD",
            },
            Case {
                name: "lost between NIC and VXLAN device",
                setup: |c, _, _| {
                    c.tx_encap.packets = 10;
                    c.rx_nic.packets = 10;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::LostBeforeDecap,
                segment: Segment::ReceiverHost,
                headline_starts: "arrived at the underlay device 10, decapsulated 0",
                evidence: "rx_nic 10, rx_decap 0",
                fix_mentions: "VNI",
            },
            Case {
                name: "lost while encapsulating",
                setup: |c, _, _| {
                    healthy(c);
                    c.tx_encap.packets = 100;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::LostWhileEncapsulating,
                segment: Segment::SenderHost,
                headline_starts: "handed to the VXLAN device 200, left the underlay device 100",
                evidence: "tx_dev 200, tx_encap 100",
                fix_mentions: "bridge fdb show",
            },
            Case {
                name: "an output rule drops our own VXLAN packets to the peer",
                setup: |c, d, _| {
                    healthy(c);
                    c.tx_encap.packets = 0;
                    d.insert("NETFILTER_DROP".into(), 200);
                },
                // All outer: they cannot be the peer's packets, every one
                // of which was decapsulated.
                extra: |p| {
                    p.drops_outer.insert("NETFILTER_DROP".into(), 200);
                },
                outages: vec![],
                cause: Cause::LostWhileEncapsulating,
                segment: Segment::SenderHost,
                headline_starts: "handed to the VXLAN device 200, left the underlay device 0; this host dropped its own encapsulated packets to the peer: NETFILTER_DROP 200",
                evidence: "tx_dev 200, tx_encap 0, NETFILTER_DROP 200",
                fix_mentions: "output / postrouting rule",
            },
            Case {
                name: "stale neighbour",
                setup: |c, d, _| {
                    c.inner_dst_mac_mismatch = 4;
                    d.insert("OTHERHOST".into(), 4);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::StaleNeighbour,
                segment: Segment::ReceiverHost,
                headline_starts: "stale neighbour entry on the peer: 4 frames",
                evidence: "inner_dst_mac_mismatch 4, OTHERHOST 4",
                fix_mentions: "ip neigh replace",
            },
            Case {
                name: "unwatched underlay: decapsulated more than arrived",
                setup: |c, _, _| {
                    c.tx_dev.packets = 80;
                    c.tx_encap.packets = 0;
                    c.rx_nic.packets = 0;
                    c.rx_decap.packets = 80;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::UnwatchedUnderlay,
                segment: Segment::None,
                headline_starts: "decapsulated 80 from this peer, but only 0 seen arriving",
                evidence: "rx_nic 0, rx_decap 80",
                fix_mentions: "--iface",
            },
            Case {
                name: "masquerade",
                setup: |c, _, _| {
                    healthy(c);
                    c.inner_src_vtep = 7;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::Masquerade,
                segment: Segment::None,
                headline_starts: "masquerade: 7 packets",
                evidence: "inner_src_vtep 7",
                fix_mentions: "MASQUERADE",
            },
            Case {
                name: "PAWS",
                setup: |c, d, t| {
                    healthy(c);
                    d.insert("TCP_RFC7323_PAWS".into(), 5);
                    t.paws_rejects = 5;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::PawsRejects,
                segment: Segment::ReceiverHost,
                headline_starts: "TCP timestamps: 5 segments",
                evidence: "paws_rejects 5, unanswered_syn 0",
                fix_mentions: "tcp_tw_recycle",
            },
            Case {
                name: "unanswered SYNs",
                setup: |c, _, t| {
                    healthy(c);
                    c.tcp.syn_retrans = 3;
                    t.unanswered_syn = 2;
                    t.unanswered_syn_out = 2;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::UnansweredSyn,
                segment: Segment::ReceiverHost,
                headline_starts: "2 SYNs got no SYN-ACK in time (3 retransmitted SYNs)",
                evidence: "unanswered_syn_out 2, unanswered_syn_in 0, syn_retrans 3",
                fix_mentions: "conntrack",
            },
            Case {
                name: "SYN-ACKs dropped here",
                setup: |c, _, t| {
                    healthy(c);
                    t.synack_dropped = 1;
                    t.unanswered_syn_in = 1;
                    t.synack_dropped_reasons.insert("NETFILTER_DROP".into(), 1);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::SynAckDropped,
                segment: Segment::SenderHost,
                headline_starts: "1 SYN-ACKs of handshakes with this peer were dropped on this node (NETFILTER_DROP 1)",
                evidence: "synack_dropped 1 (NETFILTER_DROP 1)",
                fix_mentions: "firewall rules",
            },
            Case {
                name: "malformed",
                setup: |c, _, _| {
                    healthy(c);
                    c.malformed_rx = 20;
                    c.malformed = 20;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::Malformed,
                segment: Segment::SenderHost,
                headline_starts: "20 packets to the VXLAN port were not valid VXLAN",
                evidence: "malformed_rx 20, malformed_tx 0",
                fix_mentions: "tcpdump",
            },
            Case {
                name: "unknown VNI",
                setup: |c, _, _| {
                    healthy(c);
                    c.unknown_vni = 9;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::UnknownVni,
                segment: Segment::ReceiverHost,
                headline_starts: "9 VXLAN packets carried a VNI",
                evidence: "unknown_vni 9",
                fix_mentions: "same VNI",
            },
            Case {
                name: "path MTU",
                setup: |c, _, _| {
                    c.tx_encap.packets = 3;
                    c.outer_size.tx_over_1500 = 3;
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::PathMtu,
                segment: Segment::Path,
                headline_starts: "3 outer packets above 1500 bytes sent (0 fragmented)",
                evidence: "outer_size.tx_over_1500 3, fragmented.tx 0, rx_nic 0",
                fix_mentions: "minus 50",
            },
            Case {
                name: "policer: peers silent together",
                setup: |c, _, _| healthy(c),
                extra: |_| {},
                outages: vec![outage(&["192.0.2.13"], 3.0)],
                cause: Cause::GroupedOutage,
                segment: Segment::Path,
                headline_starts: "1 outage(s) at the same moment as 192.0.2.13",
                evidence: "1 grouped outage(s), longest 3.0 s; tx rate before: 20 pkt/s",
                fix_mentions: "policer",
            },
            Case {
                name: "intermittent outage",
                setup: |c, _, _| healthy(c),
                extra: |_| {},
                outages: vec![outage(&[], 2.5)],
                cause: Cause::IntermittentOutage,
                segment: Segment::Path,
                headline_starts: "1 outage(s) of this peer alone, longest 2.5 s",
                evidence: "outages 1, sent_into_silence 40",
                fix_mentions: "vxtrace report",
            },
            Case {
                name: "bad outer checksums",
                setup: |c, d, _| {
                    c.tx_encap.packets = 10;
                    c.rx_nic.packets = 10;
                    d.insert("UDP_CSUM".into(), 10);
                },
                extra: |p| {
                    p.drops_outer.insert("UDP_CSUM".into(), 10);
                },
                outages: vec![],
                cause: Cause::BadChecksum,
                segment: Segment::ReceiverHost,
                headline_starts: "bad outer UDP checksums: 10 VXLAN packets",
                evidence: "rx_nic 10, UDP_CSUM 10",
                fix_mentions: "tx-checksum-ip-generic off",
            },
            Case {
                name: "port mismatch",
                setup: |c, d, _| {
                    healthy(c);
                    d.insert("NO_SOCKET".into(), 12);
                },
                extra: |p| {
                    p.drops_outer.insert("NO_SOCKET".into(), 12);
                    p.port_mismatch.push(PortMismatch {
                        port: 4789,
                        rx: 12,
                        tx: 0,
                    });
                },
                outages: vec![],
                cause: Cause::PortMismatch,
                segment: Segment::ReceiverHost,
                headline_starts: "port mismatch: this peer sends VXLAN to UDP port 4789, this node's VXLAN device listens on 8472 (12 packets, 12 dropped as NO_SOCKET)",
                evidence: "port_mismatch 4789:12, NO_SOCKET 12",
                fix_mentions: "one VXLAN port on every node",
            },
            Case {
                name: "the VXLAN driver's reasons",
                setup: |c, d, _| {
                    healthy(c);
                    d.insert("VXLAN_VNI_NOT_FOUND".into(), 3);
                    d.insert("IP_TUNNEL_ECN".into(), 2);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::VxlanDriverDrops,
                segment: Segment::ReceiverHost,
                headline_starts: "the VXLAN driver dropped 5 packets of this peer's traffic: IP_TUNNEL_ECN 2, VXLAN_VNI_NOT_FOUND 3",
                evidence: "IP_TUNNEL_ECN 2, VXLAN_VNI_NOT_FOUND 3",
                fix_mentions: "the same VNI",
            },
            Case {
                name: "the VXLAN driver's transmit path (a kernel that names no reason)",
                setup: |c, d, _| {
                    healthy(c);
                    d.insert("VXLAN_TX_DROP".into(), 7);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::VxlanDriverDrops,
                segment: Segment::SenderHost,
                headline_starts: "the VXLAN driver dropped 7 packets of this peer's traffic: VXLAN_TX_DROP 7",
                evidence: "VXLAN_TX_DROP 7",
                fix_mentions: "ip route get",
            },
            Case {
                name: "too big",
                setup: |c, d, _| {
                    healthy(c);
                    d.insert("PKT_TOO_BIG".into(), 4);
                },
                extra: |p| {
                    p.too_big = Some(TooBigDrops {
                        packets: 4,
                        largest_bytes: 1500,
                    });
                },
                outages: vec![],
                cause: Cause::PacketTooBig,
                segment: Segment::SenderHost,
                headline_starts: "4 packets of this peer's traffic were too big for their path and dropped (PKT_TOO_BIG), the largest 1500 bytes",
                evidence: "PKT_TOO_BIG 4, largest_bytes 1500",
                fix_mentions: "MTU",
            },
            Case {
                name: "other kernel drops",
                setup: |c, d, _| {
                    healthy(c);
                    d.insert("NEIGH_FAILED".into(), 7);
                },
                extra: |_| {},
                outages: vec![],
                cause: Cause::KernelDrops,
                segment: Segment::ReceiverHost,
                headline_starts: "the kernel dropped 7 packets of this peer's traffic: NEIGH_FAILED 7",
                evidence: "NEIGH_FAILED 7",
                fix_mentions: "drop location",
            },
        ]
    }

    /// One row per cause: the cause is found, alone, with its segment,
    /// evidence and fix.
    #[test]
    fn each_cause_with_its_evidence_and_fix() {
        let mut seen = Vec::new();
        for case in cases() {
            let found = diagnose_summary(&summary_of(&case), PORTS);
            assert_eq!(found.len(), 1, "{}: {found:#?}", case.name);
            let f = &found[0];
            assert_eq!(f.kind, case.cause, "{}", case.name);
            assert_eq!(f.segment, case.segment, "{}", case.name);
            assert!(
                f.headline.starts_with(case.headline_starts),
                "{}: {}",
                case.name,
                f.headline
            );
            assert_eq!(f.evidence, case.evidence, "{}", case.name);
            assert!(
                f.fix.contains(case.fix_mentions),
                "{}: {}",
                case.name,
                f.fix
            );
            seen.push(f.kind);
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), RULES.len(), "a rule without a test row");
    }

    #[test]
    fn a_healthy_peer_has_no_findings() {
        let mut p = PeerSummary::default();
        healthy(&mut p.counters);
        assert!(diagnose_summary(&p, PORTS).is_empty());
        // Drops that lose no traffic, as a busy healthy node has them, are
        // no finding.
        for (r, n) in [
            ("NO_SOCKET", 300),
            ("SOCKET_FILTER", 209),
            ("NOT_SPECIFIED", 12),
        ] {
            p.drops.insert(r.into(), n);
            p.drops_not_loss.insert(r.into(), n);
        }
        assert!(
            diagnose_summary(&p, PORTS).is_empty(),
            "{:#?}",
            diagnose_summary(&p, PORTS)
        );
        // A few packets in flight at the moment of reading are no finding.
        let mut p = PeerSummary::default();
        p.counters.tx_encap.packets = MIN_PACKETS - 1;
        assert!(diagnose_summary(&p, PORTS).is_empty());
    }

    /// Flooded traffic to a multicast group is never answered from the
    /// group's address: no one-way finding for it, as there is for a peer.
    #[test]
    fn a_multicast_group_is_not_one_way() {
        let mut p = PeerSummary::default();
        p.counters.tx_encap.packets = 30;
        let unicast: IpAddr = "192.0.2.12".parse().unwrap();
        let kinds = |a: &IpAddr| -> Vec<Cause> {
            diagnose_peer(a, &p, PORTS).iter().map(|f| f.kind).collect()
        };
        assert_eq!(kinds(&unicast), vec![Cause::OneWay]);
        assert!(kinds(&"239.1.1.1".parse().unwrap()).is_empty());
    }

    /// The README's table of causes names every cause the engine has.
    #[test]
    fn the_readme_lists_every_cause() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for about in causes() {
            let row = format!("| `{}` |", about.cause);
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
    }

    /// Each cause has one description, whichever engine finds it.
    #[test]
    fn every_cause_is_described_once() {
        for cause in Cause::ALL {
            let n = causes().filter(|a| a.cause == *cause).count();
            assert_eq!(n, 1, "{cause} is described {n} times");
        }
    }

    /// Rules that compare counts say nothing of fewer packets than
    /// MIN_PACKETS, whatever the pattern: they may be in flight.
    #[test]
    fn packets_in_flight_raise_nothing() {
        let few = MIN_PACKETS - 1;
        let patterns: [fn(&mut PeerCounters, u64); 4] = [
            |c, n| c.tx_encap.packets = n,
            |c, n| c.rx_nic.packets = n,
            |c, n| c.rx_decap.packets = n,
            |c, n| c.tx_dev.packets = n,
        ];
        for (i, set) in patterns.iter().enumerate() {
            let mut p = PeerSummary::default();
            set(&mut p.counters, few);
            let found = diagnose_summary(&p, PORTS);
            assert!(found.is_empty(), "pattern {i}: {found:#?}");
            // The same with enough packets is a finding: the pattern is one
            // a rule looks for.
            set(&mut p.counters, MIN_PACKETS * 2);
            assert!(!diagnose_summary(&p, PORTS).is_empty(), "pattern {i}");
        }
    }

    #[test]
    fn placeholders_are_filled_as_whole_words() {
        let text = "`ip neigh replace ADDR lladdr MAC dev DEV` (MACs, DEVICE, ADDRESS stay)";
        assert_eq!(
            fill(
                text,
                &[("MAC", "aa:bb"), ("DEV", "vx0"), ("ADDR", "10.0.0.1")]
            ),
            "`ip neigh replace 10.0.0.1 lladdr aa:bb dev vx0` (MACs, DEVICE, ADDRESS stay)"
        );
    }

    /// An unreachable VTEP's fix names its own device and MAC.
    #[test]
    fn an_unresolved_vteps_fix_is_written_for_it() {
        let mut u = UnresolvedVtep {
            vtep: "10.244.1.0".parse().unwrap(),
            device: "vx-blue".into(),
            subnets: vec!["10.244.1.0/24".into()],
            mac: Some("0a:00:00:00:00:02".into()),
            missing: MissingEntry::FdbEntry,
            drops: BTreeMap::from([("NO_TX_TARGET".to_string(), 3)]),
            finding: None,
        };
        let f = diagnose_unresolved(&u);
        assert_eq!(f.kind, Cause::MissingFdbEntry);
        assert_eq!(
            f.headline,
            "no FDB entry for VTEP 10.244.1.0 (MAC 0a:00:00:00:00:02) on vx-blue: 3 frames to 10.244.1.0/24 dropped"
        );
        assert_eq!(
            f.evidence,
            "routes to 10.244.1.0/24 via 10.244.1.0; NO_TX_TARGET 3"
        );
        assert!(
            f.fix.contains(
                "`bridge fdb append 0a:00:00:00:00:02 dev vx-blue dst <the peer node's address>`"
            ),
            "{}",
            f.fix
        );
        u.missing = MissingEntry::Neighbour;
        u.mac = None;
        u.drops.clear();
        let f = diagnose_unresolved(&u);
        assert_eq!(f.kind, Cause::MissingNeighbour);
        assert_eq!(f.evidence, "routes to 10.244.1.0/24 via 10.244.1.0");
        assert!(
            f.fix.contains("`ip neigh replace 10.244.1.0 lladdr <the peer's VTEP MAC> dev vx-blue nud permanent`"),
            "{}",
            f.fix
        );
    }

    /// No user-facing text points at internal documents or numbering.
    #[test]
    fn texts_speak_the_users_language() {
        for case in cases() {
            for f in diagnose_summary(&summary_of(&case), PORTS) {
                let text = f.hint().to_lowercase();
                assert!(!text.contains("incident"), "{text}");
                assert!(!text.contains("issue"), "{text}");
                assert!(!text.contains('#'), "{text}");
            }
        }
    }
}
