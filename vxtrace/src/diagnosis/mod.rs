//! The diagnosis engine: from what one node counted for one peer to the
//! likely causes, each with the segment where traffic is lost, the numbers
//! that show it, and the fix. A pure function of its input: the live
//! screen, the summary, `report` and the metrics all ask it, so they
//! cannot disagree.
//!
//! Every rule needs a few packets before it speaks ([`MIN_PACKETS`]), so a
//! packet in flight at the moment of reading raises nothing.

use std::{collections::BTreeMap, net::IpAddr};

pub mod link;

use crate::{
    reasons,
    schema::{
        Cause, Direction, Finding, MissingEntry, OutageRecord, PeerCounters, PeerSummary,
        PortMismatch, Segment, TcpOutcome, TooBigDrops, UnresolvedVtep,
    },
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
    let blind = unwatched_underlay(o).is_some();
    RULES
        .iter()
        .filter(|rule| !(blind && rule.needs_the_underlay()))
        .filter_map(|rule| {
            let seen = (rule.matches)(o)?;
            let (segment, direction) = seen.place.unwrap_or((rule.segment, rule.direction));
            let (cause, fix) = seen
                .words
                .unwrap_or((rule.meaning.to_string(), rule.fix.to_string()));
            Some(Finding {
                kind: rule.cause,
                headline: seen.headline,
                cause,
                segment,
                direction,
                evidence: seen.evidence,
                fix,
            })
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

/// The finding for a VTEP that pod subnets are routed to and that cannot
/// be reached: always (the state is wrong), with the drops as evidence.
pub fn diagnose_unresolved(u: &UnresolvedVtep) -> Option<Finding> {
    let dropped: u64 = u.drops.values().sum();
    let listed = u
        .drops
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let subnets = u.subnets.join(", ");
    let mac = u.mac.clone().unwrap_or_else(|| "MAC".into());
    let (kind, headline, cause, fix) = match u.missing {
        MissingEntry::FdbEntry => (
            Cause::MissingFdbEntry,
            format!(
                "no FDB entry for VTEP {} (MAC {mac}) on {}: {dropped} frames to {subnets} dropped",
                u.vtep, u.device
            ),
            "the overlay agent has not programmed the peer's FDB entry, or lost it: frames to its pods have no underlay address to go to",
            format!(
                "add the entry (`bridge fdb append {mac} dev {} dst <the peer node's address>`) or restart the overlay agent on this node",
                u.device
            ),
        ),
        MissingEntry::Neighbour => (
            Cause::MissingNeighbour,
            format!(
                "no neighbour entry for VTEP {} on {}: {dropped} frames to {subnets} dropped",
                u.vtep, u.device
            ),
            "the overlay agent has not programmed the peer's VTEP (neighbour) entry, or lost it: frames to its pods cannot be addressed",
            format!(
                "add the entry (`ip neigh replace {} lladdr <the peer's VTEP MAC> dev {} nud permanent`) or restart the overlay agent on this node",
                u.vtep, u.device
            ),
        ),
    };
    Some(Finding {
        kind,
        headline,
        cause: cause.to_string(),
        segment: Segment::SenderHost,
        direction: Direction::ToPeer,
        evidence: if listed.is_empty() {
            format!("routes to {subnets} via {}", u.vtep)
        } else {
            format!("routes to {subnets} via {}; {listed}", u.vtep)
        },
        fix,
    })
}

/// One cause: what it means, where the traffic is lost, the fix, and the
/// test of the counters that recognises it.
pub struct Rule {
    pub cause: Cause,
    pub segment: Segment,
    pub direction: Direction,
    /// What it means, in words.
    pub meaning: &'static str,
    pub fix: &'static str,
    matches: fn(&Observation<'_>) -> Option<Seen>,
}

impl Rule {
    /// Whether the rule concludes from the underlay device's counts, which
    /// a device vxtrace does not watch leaves short.
    fn needs_the_underlay(&self) -> bool {
        matches!(
            self.cause,
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
/// tell, another segment and direction than the rule's usual ones.
struct Seen {
    headline: String,
    evidence: String,
    place: Option<(Segment, Direction)>,
    /// Meaning and fix in words the counters chose (several drop reasons
    /// each with its own), instead of the rule's.
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

/// The rules, in the order their findings are shown.
pub const RULES: &[Rule] = &[
    Rule {
        cause: Cause::UnwatchedUnderlay,
        segment: Segment::None,
        direction: Direction::Both,
        meaning: "the VXLAN device decapsulated more of this peer's packets than vxtrace saw arrive at the underlay devices it watches: the peer's traffic crosses a device vxtrace does not watch (an uplink that came up later, a changed route), or a program ahead of vxtrace hides it. Nothing is lost; the underlay counts are a lower bound, so no loss is concluded from them",
        fix: "name every underlay device with --iface (or restart vxtrace after the uplinks changed); check `ip route get <peer>` and programs ahead of vxtrace (`bpftool net show`)",
        matches: unwatched_underlay,
    },
    Rule {
        cause: Cause::PawsRejects,
        segment: Segment::ReceiverHost,
        direction: Direction::Both,
        meaning: "their timestamps are older than the socket last saw: clients behind one NAT address with unrelated timestamps (tcp_tw_recycle, TIME_WAIT reuse)",
        fix: "stop SNAT between nodes and pods (or give each client its own address), and turn net.ipv4.tcp_tw_recycle off where the kernel has it",
        matches: paws_rejects,
    },
    Rule {
        cause: Cause::UnansweredSyn,
        segment: Segment::ReceiverHost,
        direction: Direction::Both,
        meaning: "the handshakes die before the SYN-ACK: on the server's node (a firewall, PAWS) or on the way back",
        fix: "run vxtrace on the server's node and look there for SYN-ACK drops or PAWS rejects; `conntrack -L -p tcp --state SYN_SENT` lists the stuck flows",
        matches: unanswered_syn,
    },
    Rule {
        cause: Cause::SynAckDropped,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "those connections cannot complete",
        fix: "check this node's firewall rules (input, output, forward) for the pods' ports; the drop reason names the kernel's check",
        matches: synack_dropped,
    },
    Rule {
        cause: Cause::HostFirewall,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "a firewall rule on this node drops the peer's VXLAN packets before they are decapsulated",
        fix: "allow the VXLAN UDP port (8472 for flannel, 4789 IANA) from the other nodes in the input rules (`nft list ruleset`, `iptables -L INPUT`); `vxtrace doctor` names the rule",
        matches: host_firewall,
    },
    Rule {
        cause: Cause::BadChecksum,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the peer writes wrong outer UDP checksums (a checksum-offload bug) or NAT on the way rewrote the outer header without fixing the checksum; only some traffic breaks, often Service traffic",
        fix: "on the peer, turn checksum offload off on its VXLAN device (`ethtool -K flannel.1 tx-checksum-ip-generic off`, with its device's name), and check for NAT between the nodes",
        matches: bad_checksum,
    },
    Rule {
        cause: Cause::PortMismatch,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the nodes use different VXLAN ports: nothing listens where the peer sends, so the kernel drops every packet (NO_SOCKET)",
        fix: "use one VXLAN port on every node (flannel: `Port` in net-conf.json, 8472 by default, 4789 where Windows nodes take part; Calico: 4789)",
        matches: port_mismatch,
    },
    Rule {
        cause: Cause::VxlanDriverDrops,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the VXLAN driver refused the packets",
        fix: "compare both nodes' VXLAN device settings (`ip -d link show type vxlan`)",
        matches: vxlan_driver_drops,
    },
    Rule {
        cause: Cause::PacketTooBig,
        segment: Segment::SenderHost,
        direction: Direction::ToPeer,
        meaning: "packets larger than the VXLAN device's MTU (pods with a larger MTU), or outer packets larger than the underlay's MTU with don't-fragment set, cannot be sent",
        fix: "give the pods an MTU no larger than the VXLAN device's, and the VXLAN device the underlay MTU minus 50 (IPv4 underlay) or 70 (IPv6)",
        matches: packet_too_big,
    },
    Rule {
        cause: Cause::PodTrafficFirewall,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "a forward or input rule on this node drops pod traffic of the overlay after decapsulation (or before encapsulation)",
        fix: "check the FORWARD chain's policy and rules for the pod subnets (Docker sets its policy to DROP); `vxtrace doctor` names the rule",
        matches: pod_traffic_firewall,
    },
    Rule {
        cause: Cause::StaleNeighbour,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the peer still has this node's old VTEP MAC (the VXLAN device was recreated, e.g. when the overlay agent restarted)",
        fix: "on the peer, replace the neighbour entry of this node's VTEP address with this VXLAN device's MAC (`ip neigh replace ADDR lladdr MAC dev DEV nud permanent`), or restart the overlay agent there",
        matches: stale_neighbour,
    },
    Rule {
        cause: Cause::Masquerade,
        segment: Segment::None,
        direction: Direction::FromPeer,
        meaning: "the peer SNATs pod-to-pod traffic into the overlay: servers here see the peer node, not the client pod",
        fix: "on the peer, exempt the cluster's pod network from MASQUERADE (flannel's --ip-masq rules; `iptables -t nat -L POSTROUTING`)",
        matches: masquerade,
    },
    Rule {
        cause: Cause::OneWay,
        segment: Segment::Path,
        direction: Direction::Both,
        meaning: "nothing from this peer reached the underlay device, so the loss is outside this host (path, security group, NAT) or on the peer",
        fix: "allow the VXLAN UDP port between the nodes (security group, cloud or hypervisor firewall), check that the peer's underlay address is reachable and not a NAT address, and run vxtrace on the peer to see whether it receives",
        matches: one_way,
    },
    Rule {
        cause: Cause::LostBeforeDecap,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "lost on this host between the NIC and the VXLAN device: no socket on the VXLAN port, a wrong VNI, bad checksums, or a firewall",
        fix: "check that this node's VXLAN device uses the port and VNI the peer sends to (`ip -d link show type vxlan`), and look at this peer's drop reasons",
        matches: lost_before_decap,
    },
    Rule {
        cause: Cause::LostWhileEncapsulating,
        segment: Segment::SenderHost,
        direction: Direction::ToPeer,
        meaning: "lost on this host while encapsulating: no FDB entry or route for the peer, the MTU, or the qdisc",
        fix: "check the VXLAN device's FDB entry for the peer (`bridge fdb show dev DEV`) and the route to the peer's underlay address; `vxtrace doctor` checks both",
        matches: lost_while_encapsulating,
    },
    Rule {
        cause: Cause::Malformed,
        segment: Segment::SenderHost,
        direction: Direction::FromPeer,
        meaning: "truncated, I flag clear or reserved bits set: a misconfigured sender, another protocol on the port, or a scan",
        fix: "see what sends them with `tcpdump -ni IFACE udp port PORT and host PEER`, and make the sender speak VXLAN (or move it to another port)",
        matches: malformed,
    },
    Rule {
        cause: Cause::UnknownVni,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the nodes disagree on the VNI: the kernel drops what no device here claims",
        fix: "give the VXLAN devices of both nodes the same VNI (flannel: the VNI in net-conf.json; `ip -d link show type vxlan`)",
        matches: unknown_vni,
    },
    Rule {
        cause: Cause::PathMtu,
        segment: Segment::Path,
        direction: Direction::ToPeer,
        meaning: "a path MTU below the VXLAN packet size loses the large packets (VXLAN adds 50 bytes on IPv4, 70 on IPv6); which sizes arrive shows only on the peer, so compare with its recording",
        fix: "set the VXLAN device's MTU to the path MTU minus 50 (IPv4 underlay) or 70 (IPv6), and the pods' MTU no higher",
        matches: path_mtu,
    },
    Rule {
        cause: Cause::KernelDrops,
        segment: Segment::ReceiverHost,
        direction: Direction::Both,
        meaning: "the kernel dropped them; the reason names its check, the location where",
        fix: "look up the reason and the drop location (`vxtrace report` lists the locations); drops that lose no traffic are listed apart",
        matches: kernel_drops,
    },
    Rule {
        cause: Cause::GroupedOutage,
        segment: Segment::Path,
        direction: Direction::Both,
        meaning: "a device on the path (a policer or rate limiter) blackholed this node's traffic to several peers at once",
        fix: "look for a policer or UDP rate limit on the underlay (switch, hypervisor, cloud NIC limits); the tx rate before each outage shows what triggers it",
        matches: grouped_outage,
    },
    Rule {
        cause: Cause::IntermittentOutage,
        segment: Segment::Path,
        direction: Direction::Both,
        meaning: "this peer alone stops answering for a while: the peer, its link, or the path to it",
        fix: "record on the peer too (`vxtrace watch --record`) and read both recordings with `vxtrace report`: it tells whether the peer received",
        matches: intermittent_outage,
    },
];

/// "a 1, b 2".
fn evidence(items: &[(&str, u64)]) -> String {
    items
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn nf_drops(o: &Observation<'_>) -> u64 {
    reasons::count(o.drops, reasons::NETFILTER_DROP)
}

fn paws_rejects(o: &Observation<'_>) -> Option<Seen> {
    let paws = o.tcp.paws_rejects.max(reasons::paws_rejects(o.drops));
    (paws > 0).then_some(())?;
    seen(
        format!(
            "TCP timestamps: {paws} segments of this peer's connections were dropped by the PAWS check"
        ),
        evidence(&[
            ("paws_rejects", paws),
            ("unanswered_syn", o.tcp.unanswered_syn),
        ]),
    )
}

fn unanswered_syn(o: &Observation<'_>) -> Option<Seen> {
    let (t, retrans) = (o.tcp, o.counters.tcp.syn_retrans);
    (t.unanswered_syn > 0).then_some(())?;
    seen(
        format!(
            "{} SYNs got no SYN-ACK in time ({retrans} retransmitted SYNs)",
            t.unanswered_syn
        ),
        evidence(&[
            ("unanswered_syn_out", t.unanswered_syn_out),
            ("unanswered_syn_in", t.unanswered_syn_in),
            ("syn_retrans", retrans),
        ]),
    )
}

fn synack_dropped(o: &Observation<'_>) -> Option<Seen> {
    let t = o.tcp;
    let n = t.synack_dropped;
    (n > 0).then_some(())?;
    let why = t
        .synack_dropped_reasons
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Our servers' SYN-ACKs (the peer's SYNs unanswered) die as they
    // leave; our clients' as they arrive.
    let place = (t.unanswered_syn_in > t.unanswered_syn_out)
        .then_some((Segment::SenderHost, Direction::ToPeer));
    Some(Seen {
        headline: format!(
            "{n} SYN-ACKs of handshakes with this peer were dropped on this node ({why})"
        ),
        evidence: format!("synack_dropped {n} ({why})"),
        place,
        words: None,
    })
}

fn host_firewall(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (nf, rx, decap) = (nf_drops(o), c.rx_nic.packets, c.rx_decap.packets);
    (nf > 0 && rx > decap).then_some(())?;
    seen(
        format!(
            "host firewall: {rx} packets from this peer reached the underlay device, {decap} were decapsulated, netfilter dropped {nf}"
        ),
        evidence(&[
            ("rx_nic", rx),
            ("rx_decap", decap),
            (reasons::NETFILTER_DROP, nf),
        ]),
    )
}

/// Loss-class drops of outer VXLAN packets, by reason: this node's own
/// packets to the peer and the peer's packets to this node alike.
fn outer_loss_drops(drops_outer: &BTreeMap<String, u64>) -> impl Iterator<Item = (&String, u64)> {
    drops_outer
        .iter()
        .filter(|(r, _)| reasons::class(r, true) == reasons::DropClass::Loss)
        .map(|(r, n)| (r, *n))
}

/// How many of the outer loss drops can be the peer's incoming packets: an
/// incoming packet dies between the underlay device and the VXLAN device,
/// so at most `rx_nic - rx_decap` of them are.
fn inbound_outer_drops(drops_outer: &BTreeMap<String, u64>, c: &PeerCounters) -> u64 {
    let between = c.rx_nic.packets.saturating_sub(c.rx_decap.packets);
    outer_loss_drops(drops_outer)
        .map(|(_, n)| n)
        .sum::<u64>()
        .min(between)
}

/// The rest, by reason: this node's own encapsulated packets to the peer,
/// dropped on this node before they left (an output rule, a full queue).
pub fn outbound_outer_drops(
    drops_outer: &BTreeMap<String, u64>,
    c: &PeerCounters,
) -> BTreeMap<String, u64> {
    let mut inbound = inbound_outer_drops(drops_outer, c);
    let mut out = BTreeMap::new();
    for (reason, n) in outer_loss_drops(drops_outer) {
        let taken = inbound.min(n);
        inbound -= taken;
        if n > taken {
            out.insert(reason.clone(), n - taken);
        }
    }
    out
}

fn bad_checksum(o: &Observation<'_>) -> Option<Seen> {
    let n = reasons::count(o.drops_outer, reasons::UDP_CSUM);
    (n > 0).then_some(())?;
    seen(
        format!(
            "bad outer UDP checksums: {n} VXLAN packets from this peer were dropped as UDP_CSUM"
        ),
        evidence(&[
            ("rx_nic", o.counters.rx_nic.packets),
            (reasons::UDP_CSUM, n),
        ]),
    )
}

fn port_mismatch(o: &Observation<'_>) -> Option<Seen> {
    let theirs: Vec<(u16, u64)> = o
        .port_mismatch
        .iter()
        .filter(|m| m.rx > 0)
        .map(|m| (m.port, m.rx))
        .collect();
    (!theirs.is_empty()).then_some(())?;
    let ports = |v: &[u16]| {
        v.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let their_ports: Vec<u16> = theirs.iter().map(|(p, _)| *p).collect();
    let n: u64 = theirs.iter().map(|(_, n)| n).sum();
    let dropped = reasons::count(o.drops_outer, reasons::NO_SOCKET);
    let ours = if o.local_ports.is_empty() {
        "no VXLAN device here uses it".to_string()
    } else {
        format!(
            "this node's VXLAN device listens on {}",
            ports(o.local_ports)
        )
    };
    seen(
        format!(
            "port mismatch: this peer sends VXLAN to UDP port {}, {ours} ({n} packets, {dropped} dropped as NO_SOCKET)",
            ports(&their_ports)
        ),
        format!(
            "port_mismatch {}, NO_SOCKET {dropped}",
            theirs
                .iter()
                .map(|(p, n)| format!("{p}:{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    )
}

fn vxlan_driver_drops(o: &Observation<'_>) -> Option<Seen> {
    let found: Vec<(&String, &u64)> = o
        .drops
        .iter()
        .filter(|(r, _)| reasons::is_tunnel_reason(r))
        .collect();
    (!found.is_empty()).then_some(())?;
    let n: u64 = found.iter().map(|(_, n)| **n).sum();
    let listed = found
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let words = |pick: fn((&'static str, &'static str)) -> &'static str| {
        found
            .iter()
            .map(|(r, _)| format!("{r}: {}", pick(reasons::tunnel_reason_words(r))))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // Frames with no remote die as they are sent; the rest as they arrive.
    let sending = found
        .iter()
        .all(|(r, _)| reasons::DIES_WHEN_SENT.contains(&r.as_str()));
    Some(Seen {
        headline: format!("the VXLAN driver dropped {n} packets of this peer's traffic: {listed}"),
        evidence: listed,
        place: sending.then_some((Segment::SenderHost, Direction::ToPeer)),
        words: Some((words(|w| w.0), words(|w| w.1))),
    })
}

fn packet_too_big(o: &Observation<'_>) -> Option<Seen> {
    let dropped = reasons::count(o.drops, reasons::PKT_TOO_BIG);
    let (n, largest) = match o.too_big {
        Some(t) => (t.packets.max(dropped), t.largest_bytes),
        None => (dropped, 0),
    };
    (n > 0).then_some(())?;
    let size = if largest > 0 {
        format!(", the largest {largest} bytes")
    } else {
        String::new()
    };
    seen(
        format!(
            "{n} packets of this peer's traffic were too big for their path and dropped (PKT_TOO_BIG){size}"
        ),
        evidence(&[(reasons::PKT_TOO_BIG, n), ("largest_bytes", largest)]),
    )
}

/// Loss-class drops no other rule explains.
fn kernel_drops(o: &Observation<'_>) -> Option<Seen> {
    let explained = |r: &str| {
        r == reasons::NETFILTER_DROP
            || r == reasons::OTHERHOST
            || r == reasons::PKT_TOO_BIG
            || reasons::PAWS.contains(&r)
            || reasons::is_tunnel_reason(r)
    };
    let unexplained: Vec<(&String, u64)> = o
        .drops
        .iter()
        .filter(|(r, _)| !explained(r))
        .map(|(r, n)| {
            // Outer checksum and closed-port drops have rules of their own;
            // what the socket layer turns away is not loss.
            let outer_ruled = reasons::count(o.drops_outer, reasons::UDP_CSUM)
                * u64::from(r.as_str() == reasons::UDP_CSUM)
                + reasons::count(o.drops_outer, reasons::NO_SOCKET)
                    * u64::from(r.as_str() == reasons::NO_SOCKET);
            let not_loss = reasons::count(o.drops_not_loss, r);
            (r, n.saturating_sub(outer_ruled + not_loss))
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    let n: u64 = unexplained.iter().map(|(_, n)| n).sum();
    (n >= MIN_PACKETS).then_some(())?;
    let listed = unexplained
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    seen(
        format!("the kernel dropped {n} packets of this peer's traffic: {listed}"),
        listed,
    )
}

fn pod_traffic_firewall(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    // Pod traffic is the inner packets; drops of VXLAN packets themselves
    // are the host firewall's or this host's sending path's.
    let nf = nf_drops(o).saturating_sub(reasons::count(o.drops_outer, reasons::NETFILTER_DROP));
    (nf > 0 && c.rx_nic.packets <= c.rx_decap.packets).then_some(())?;
    Some(Seen {
        headline: format!(
            "netfilter dropped {nf} packets of this peer's pod traffic (NETFILTER_DROP)"
        ),
        evidence: evidence(&[
            ("rx_decap", c.rx_decap.packets),
            ("tx_dev", c.tx_dev.packets),
            (reasons::NETFILTER_DROP, nf),
        ]),
        // Nothing decapsulated: the drops are of our pods' traffic to it.
        place: (c.rx_decap.packets == 0).then_some((Segment::SenderHost, Direction::ToPeer)),
        words: None,
    })
}

fn stale_neighbour(o: &Observation<'_>) -> Option<Seen> {
    let mismatch = o.counters.inner_dst_mac_mismatch;
    let otherhost = reasons::count(o.drops, reasons::OTHERHOST);
    (mismatch + otherhost > 0).then_some(())?;
    seen(
        format!(
            "stale neighbour entry on the peer: {mismatch} frames from it were addressed to a MAC that is not this VTEP's, {otherhost} dropped as OTHERHOST"
        ),
        evidence(&[
            ("inner_dst_mac_mismatch", mismatch),
            (reasons::OTHERHOST, otherhost),
        ]),
    )
}

fn masquerade(o: &Observation<'_>) -> Option<Seen> {
    let n = o.counters.inner_src_vtep;
    (n > 0).then_some(())?;
    seen(
        format!(
            "masquerade: {n} packets from this peer carry the peer's own VTEP address as inner source instead of a pod address"
        ),
        evidence(&[("inner_src_vtep", n)]),
    )
}

fn unwatched_underlay(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (rx, decap) = (c.rx_nic.packets, c.rx_decap.packets);
    (decap >= MIN_PACKETS && decap > rx + MIN_PACKETS.max(rx / 10)).then_some(())?;
    seen(
        format!(
            "decapsulated {decap} from this peer, but only {rx} seen arriving at the watched underlay devices"
        ),
        evidence(&[("rx_nic", rx), ("rx_decap", decap)]),
    )
}

fn one_way(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let tx = c.tx_encap.packets;
    (tx >= MIN_PACKETS && c.rx_nic.packets == 0).then_some(())?;
    seen(
        format!("one-way: sent {tx}, received 0"),
        evidence(&[("tx_encap", tx), ("rx_nic", 0)]),
    )
}

fn lost_before_decap(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (rx, decap) = (c.rx_nic.packets, c.rx_decap.packets);
    // Drops of the outer packets with a rule of their own (a firewall, bad
    // checksums, a closed port, the VXLAN driver) explain the gap.
    let explained = nf_drops(o) + inbound_outer_drops(o.drops_outer, c);
    (rx >= MIN_PACKETS && decap * 10 < rx * 9 && explained == 0).then_some(())?;
    seen(
        format!("arrived at the underlay device {rx}, decapsulated {decap}"),
        evidence(&[("rx_nic", rx), ("rx_decap", decap)]),
    )
}

fn lost_while_encapsulating(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (dev, encap) = (c.tx_dev.packets, c.tx_encap.packets);
    (dev >= MIN_PACKETS && encap * 10 < dev * 9).then_some(())?;
    let headline = format!("handed to the VXLAN device {dev}, left the underlay device {encap}");
    let outbound = outbound_outer_drops(o.drops_outer, c);
    if outbound.is_empty() {
        return seen(headline, evidence(&[("tx_dev", dev), ("tx_encap", encap)]));
    }
    // The encapsulated packets were made and then dropped here: the drop
    // reasons say by what.
    let listed = outbound
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let words = if outbound.contains_key(reasons::NETFILTER_DROP) {
        (
            "a firewall rule on this host (output or postrouting) drops the VXLAN packets it sends to this peer".to_string(),
            "find the output / postrouting rule that matches the VXLAN port towards this peer (`nft list ruleset`, `iptables -S OUTPUT`) and let the overlay's packets through".to_string(),
        )
    } else {
        (
            "this host dropped the VXLAN packets after encapsulating them (a queue, a route, a firewall)".to_string(),
            "look at the drop reasons and the route to the peer's underlay address".to_string(),
        )
    };
    Some(Seen {
        headline: format!(
            "{headline}; this host dropped its own encapsulated packets to the peer: {listed}"
        ),
        evidence: format!("tx_dev {dev}, tx_encap {encap}, {listed}"),
        place: None,
        words: Some(words),
    })
}

fn malformed(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let n = c.malformed_rx + c.malformed_tx;
    (n > 0).then_some(())?;
    Some(Seen {
        headline: format!("{n} packets to the VXLAN port were not valid VXLAN"),
        evidence: evidence(&[
            ("malformed_rx", c.malformed_rx),
            ("malformed_tx", c.malformed_tx),
        ]),
        // Only ours: this node sends them.
        place: (c.malformed_rx == 0).then_some((Segment::SenderHost, Direction::ToPeer)),
        words: None,
    })
}

fn unknown_vni(o: &Observation<'_>) -> Option<Seen> {
    let n = o.counters.unknown_vni;
    (n > 0).then_some(())?;
    seen(
        format!("{n} VXLAN packets carried a VNI no watched device uses"),
        evidence(&[("unknown_vni", n)]),
    )
}

fn path_mtu(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (big, frag) = (c.outer_size.tx_over_1500, c.fragmented.tx);
    (big + frag > 0 && c.rx_nic.packets == 0).then_some(())?;
    seen(
        format!(
            "{big} outer packets above 1500 bytes sent ({frag} fragmented) and nothing received"
        ),
        evidence(&[
            ("outer_size.tx_over_1500", big),
            ("fragmented.tx", frag),
            ("rx_nic", 0),
        ]),
    )
}

fn longest(outages: &[&OutageRecord]) -> f64 {
    outages
        .iter()
        .filter_map(|o| o.duration_s)
        .fold(0.0, f64::max)
}

fn grouped_outage(o: &Observation<'_>) -> Option<Seen> {
    let grouped: Vec<&OutageRecord> = o
        .outages
        .iter()
        .filter(|x| !x.silent_together.is_empty())
        .collect();
    (!grouped.is_empty()).then_some(())?;
    let mut together: Vec<String> = grouped
        .iter()
        .flat_map(|x| x.silent_together.iter().map(|a| a.to_string()))
        .collect();
    together.sort();
    together.dedup();
    let before: Vec<String> = grouped
        .iter()
        .map(|x| format!("{}", x.tx_pps_before))
        .collect();
    seen(
        format!(
            "{} outage(s) at the same moment as {}: several peers went silent together",
            grouped.len(),
            together.join(", ")
        ),
        format!(
            "{} grouped outage(s), longest {:.1} s; tx rate before: {} pkt/s",
            grouped.len(),
            longest(&grouped),
            before.join(", ")
        ),
    )
}

fn intermittent_outage(o: &Observation<'_>) -> Option<Seen> {
    let all: Vec<&OutageRecord> = o.outages.iter().collect();
    let alone = !all.is_empty() && all.iter().all(|x| x.silent_together.is_empty());
    alone.then_some(())?;
    seen(
        format!(
            "{} outage(s) of this peer alone, longest {:.1} s",
            all.len(),
            longest(&all)
        ),
        evidence(&[
            ("outages", all.len() as u64),
            (
                "sent_into_silence",
                all.iter().map(|x| x.sent_into_silence).sum(),
            ),
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let link_causes = [
            Cause::PathLoss,
            Cause::SubnetBlackhole,
            Cause::MissingFdbEntry,
            Cause::MissingNeighbour,
        ];
        for cause in RULES.iter().map(|r| r.cause).chain(link_causes) {
            let kind = serde_json::to_value(cause).unwrap();
            let row = format!("| `{}` |", kind.as_str().unwrap());
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
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
