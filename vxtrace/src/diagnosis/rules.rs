//! The node's rules: each cause one node can tell from its own counters
//! for a peer, described beside the test of the counters that recognises
//! it.

use std::collections::BTreeMap;

use super::{About, MIN_PACKETS, Observation, Rule, Seen, evidence, seen};
use crate::{
    reasons,
    schema::{Cause, Direction, OutageRecord, PeerCounters, Segment},
};

/// The rules, in the order their findings are shown.
pub const RULES: &[Rule] = &[
    UNWATCHED_UNDERLAY,
    PAWS_REJECTS,
    UNANSWERED_SYN,
    SYNACK_DROPPED,
    HOST_FIREWALL,
    BAD_CHECKSUM,
    PORT_MISMATCH,
    VXLAN_DRIVER_DROPS,
    PACKET_TOO_BIG,
    POD_TRAFFIC_FIREWALL,
    STALE_NEIGHBOUR,
    MASQUERADE,
    ONE_WAY,
    LOST_BEFORE_DECAP,
    LOST_WHILE_ENCAPSULATING,
    MALFORMED,
    UNKNOWN_VNI,
    PATH_MTU,
    KERNEL_DROPS,
    GROUPED_OUTAGE,
    INTERMITTENT_OUTAGE,
];

fn nf_drops(o: &Observation<'_>) -> u64 {
    reasons::count(o.drops, reasons::NETFILTER_DROP)
}

pub const PAWS_REJECTS: Rule = Rule {
    about: About {
        cause: Cause::PawsRejects,
        segment: Segment::ReceiverHost,
        direction: Direction::Both,
        meaning: "their timestamps are older than the socket last saw: clients behind one NAT address with unrelated timestamps (tcp_tw_recycle, TIME_WAIT reuse)",
        fix: "stop SNAT between nodes and pods (or give each client its own address), and turn net.ipv4.tcp_tw_recycle off where the kernel has it",
    },
    matches: paws_rejects,
};

fn paws_rejects(o: &Observation<'_>) -> Option<Seen> {
    let paws = o.tcp.paws_rejects.max(reasons::paws_rejects(o.drops));
    (paws > 0).then_some(())?;
    seen(
        format!(
            "TCP timestamps: {paws} segments of this peer's connections were dropped by the PAWS check"
        ),
        evidence([
            ("paws_rejects", paws),
            ("unanswered_syn", o.tcp.unanswered_syn),
        ]),
    )
}

pub const UNANSWERED_SYN: Rule = Rule {
    about: About {
        cause: Cause::UnansweredSyn,
        segment: Segment::ReceiverHost,
        direction: Direction::Both,
        meaning: "the handshakes die before the SYN-ACK: on the server's node (a firewall, PAWS) or on the way back",
        fix: "run vxtrace on the server's node and look there for SYN-ACK drops or PAWS rejects; `conntrack -L -p tcp --state SYN_SENT` lists the stuck flows",
    },
    matches: unanswered_syn,
};

fn unanswered_syn(o: &Observation<'_>) -> Option<Seen> {
    let (t, retrans) = (o.tcp, o.counters.tcp.syn_retrans);
    (t.unanswered_syn > 0).then_some(())?;
    seen(
        format!(
            "{} SYNs got no SYN-ACK in time ({retrans} retransmitted SYNs)",
            t.unanswered_syn
        ),
        evidence([
            ("unanswered_syn_out", t.unanswered_syn_out),
            ("unanswered_syn_in", t.unanswered_syn_in),
            ("syn_retrans", retrans),
        ]),
    )
}

pub const SYNACK_DROPPED: Rule = Rule {
    about: About {
        cause: Cause::SynAckDropped,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "those connections cannot complete",
        fix: "check this node's firewall rules (input, output, forward) for the pods' ports; the drop reason names the kernel's check",
    },
    matches: synack_dropped,
};

fn synack_dropped(o: &Observation<'_>) -> Option<Seen> {
    let t = o.tcp;
    let n = t.synack_dropped;
    (n > 0).then_some(())?;
    let why = evidence(&t.synack_dropped_reasons);
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

pub const HOST_FIREWALL: Rule = Rule {
    about: About {
        cause: Cause::HostFirewall,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "a firewall rule on this node drops the peer's VXLAN packets before they are decapsulated",
        fix: "allow the VXLAN UDP port (8472 for flannel, 4789 IANA) from the other nodes in the input rules (`nft list ruleset`, `iptables -L INPUT`); `vxtrace doctor` names the rule",
    },
    matches: host_firewall,
};

fn host_firewall(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (nf, rx, decap) = (nf_drops(o), c.rx_nic.packets, c.rx_decap.packets);
    (nf > 0 && rx > decap).then_some(())?;
    seen(
        format!(
            "host firewall: {rx} packets from this peer reached the underlay device, {decap} were decapsulated, netfilter dropped {nf}"
        ),
        evidence([
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

pub const BAD_CHECKSUM: Rule = Rule {
    about: About {
        cause: Cause::BadChecksum,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the peer writes wrong outer UDP checksums (a checksum-offload bug) or NAT on the way rewrote the outer header without fixing the checksum; only some traffic breaks, often Service traffic",
        fix: "on the peer, turn checksum offload off on its VXLAN device (`ethtool -K flannel.1 tx-checksum-ip-generic off`, with its device's name), and check for NAT between the nodes",
    },
    matches: bad_checksum,
};

fn bad_checksum(o: &Observation<'_>) -> Option<Seen> {
    let n = reasons::count(o.drops_outer, reasons::UDP_CSUM);
    (n > 0).then_some(())?;
    seen(
        format!(
            "bad outer UDP checksums: {n} VXLAN packets from this peer were dropped as UDP_CSUM"
        ),
        evidence([
            ("rx_nic", o.counters.rx_nic.packets),
            (reasons::UDP_CSUM, n),
        ]),
    )
}

pub const PORT_MISMATCH: Rule = Rule {
    about: About {
        cause: Cause::PortMismatch,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the nodes use different VXLAN ports: nothing listens where the peer sends, so the kernel drops every packet (NO_SOCKET)",
        fix: "use one VXLAN port on every node (flannel: `Port` in net-conf.json, 8472 by default, 4789 where Windows nodes take part; Calico: 4789)",
    },
    matches: port_mismatch,
};

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

pub const VXLAN_DRIVER_DROPS: Rule = Rule {
    about: About {
        cause: Cause::VxlanDriverDrops,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the VXLAN driver refused the packets",
        fix: "compare both nodes' VXLAN device settings (`ip -d link show type vxlan`)",
    },
    matches: vxlan_driver_drops,
};

fn vxlan_driver_drops(o: &Observation<'_>) -> Option<Seen> {
    let found: Vec<(&String, &u64)> = o
        .drops
        .iter()
        .filter(|(r, _)| reasons::is_tunnel_reason(r))
        .collect();
    (!found.is_empty()).then_some(())?;
    let n: u64 = found.iter().map(|(_, n)| **n).sum();
    let listed = evidence(found.iter().copied());
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

pub const PACKET_TOO_BIG: Rule = Rule {
    about: About {
        cause: Cause::PacketTooBig,
        segment: Segment::SenderHost,
        direction: Direction::ToPeer,
        meaning: "packets larger than the VXLAN device's MTU (pods with a larger MTU), or outer packets larger than the underlay's MTU with don't-fragment set, cannot be sent",
        fix: "give the pods an MTU no larger than the VXLAN device's, and the VXLAN device the underlay MTU minus 50 (IPv4 underlay) or 70 (IPv6)",
    },
    matches: packet_too_big,
};

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
        evidence([(reasons::PKT_TOO_BIG, n), ("largest_bytes", largest)]),
    )
}

pub const KERNEL_DROPS: Rule = Rule {
    about: About {
        cause: Cause::KernelDrops,
        segment: Segment::ReceiverHost,
        direction: Direction::Both,
        meaning: "the kernel dropped them; the reason names its check, the location where",
        fix: "look up the reason and the drop location (`vxtrace report` lists the locations); drops that lose no traffic are listed apart",
    },
    matches: kernel_drops,
};

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
    let listed = evidence(unexplained.iter().copied());
    seen(
        format!("the kernel dropped {n} packets of this peer's traffic: {listed}"),
        listed,
    )
}

pub const POD_TRAFFIC_FIREWALL: Rule = Rule {
    about: About {
        cause: Cause::PodTrafficFirewall,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "a forward or input rule on this node drops pod traffic of the overlay after decapsulation (or before encapsulation)",
        fix: "check the FORWARD chain's policy and rules for the pod subnets (Docker sets its policy to DROP); `vxtrace doctor` names the rule",
    },
    matches: pod_traffic_firewall,
};

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
        evidence: evidence([
            ("rx_decap", c.rx_decap.packets),
            ("tx_dev", c.tx_dev.packets),
            (reasons::NETFILTER_DROP, nf),
        ]),
        // Nothing decapsulated: the drops are of our pods' traffic to it.
        place: (c.rx_decap.packets == 0).then_some((Segment::SenderHost, Direction::ToPeer)),
        words: None,
    })
}

pub const STALE_NEIGHBOUR: Rule = Rule {
    about: About {
        cause: Cause::StaleNeighbour,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the peer still has this node's old VTEP MAC (the VXLAN device was recreated, e.g. when the overlay agent restarted)",
        fix: "on the peer, replace the neighbour entry of this node's VTEP address with this VXLAN device's MAC (`ip neigh replace ADDR lladdr MAC dev DEV nud permanent`), or restart the overlay agent there",
    },
    matches: stale_neighbour,
};

fn stale_neighbour(o: &Observation<'_>) -> Option<Seen> {
    let mismatch = o.counters.inner_dst_mac_mismatch;
    let otherhost = reasons::count(o.drops, reasons::OTHERHOST);
    (mismatch + otherhost > 0).then_some(())?;
    seen(
        format!(
            "stale neighbour entry on the peer: {mismatch} frames from it were addressed to a MAC that is not this VTEP's, {otherhost} dropped as OTHERHOST"
        ),
        evidence([
            ("inner_dst_mac_mismatch", mismatch),
            (reasons::OTHERHOST, otherhost),
        ]),
    )
}

pub const MASQUERADE: Rule = Rule {
    about: About {
        cause: Cause::Masquerade,
        segment: Segment::None,
        direction: Direction::FromPeer,
        meaning: "the peer SNATs pod-to-pod traffic into the overlay: servers here see the peer node, not the client pod",
        fix: "on the peer, exempt the cluster's pod network from MASQUERADE (flannel's --ip-masq rules; `iptables -t nat -L POSTROUTING`)",
    },
    matches: masquerade,
};

fn masquerade(o: &Observation<'_>) -> Option<Seen> {
    let n = o.counters.inner_src_vtep;
    (n > 0).then_some(())?;
    seen(
        format!(
            "masquerade: {n} packets from this peer carry the peer's own VTEP address as inner source instead of a pod address"
        ),
        evidence([("inner_src_vtep", n)]),
    )
}

pub const UNWATCHED_UNDERLAY: Rule = Rule {
    about: About {
        cause: Cause::UnwatchedUnderlay,
        segment: Segment::None,
        direction: Direction::Both,
        meaning: "the VXLAN device decapsulated more of this peer's packets than vxtrace saw arrive at the underlay devices it watches: the peer's traffic crosses a device vxtrace does not watch (an uplink that came up later, a changed route), or a program ahead of vxtrace hides it. Nothing is lost; the underlay counts are a lower bound, so no loss is concluded from them",
        fix: "name every underlay device with --iface (or restart vxtrace after the uplinks changed); check `ip route get <peer>` and programs ahead of vxtrace (`bpftool net show`)",
    },
    matches: unwatched_underlay,
};

fn unwatched_underlay(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (rx, decap) = (c.rx_nic.packets, c.rx_decap.packets);
    (decap >= MIN_PACKETS && decap > rx + MIN_PACKETS.max(rx / 10)).then_some(())?;
    seen(
        format!(
            "decapsulated {decap} from this peer, but only {rx} seen arriving at the watched underlay devices"
        ),
        evidence([("rx_nic", rx), ("rx_decap", decap)]),
    )
}

pub const ONE_WAY: Rule = Rule {
    about: About {
        cause: Cause::OneWay,
        segment: Segment::Path,
        direction: Direction::Both,
        meaning: "nothing from this peer reached the underlay device, so the loss is outside this host (path, security group, NAT) or on the peer",
        fix: "allow the VXLAN UDP port between the nodes (security group, cloud or hypervisor firewall), check that the peer's underlay address is reachable and not a NAT address, and run vxtrace on the peer to see whether it receives",
    },
    matches: one_way,
};

fn one_way(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let tx = c.tx_encap.packets;
    (tx >= MIN_PACKETS && c.rx_nic.packets == 0).then_some(())?;
    seen(
        format!("one-way: sent {tx}, received 0"),
        evidence([("tx_encap", tx), ("rx_nic", 0)]),
    )
}

pub const LOST_BEFORE_DECAP: Rule = Rule {
    about: About {
        cause: Cause::LostBeforeDecap,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "lost on the receiving host between the NIC and the VXLAN device: no socket on the VXLAN port, a wrong VNI, bad checksums, or a firewall",
        fix: "check that this node's VXLAN device uses the port and VNI the peer sends to (`ip -d link show type vxlan`), and look at this peer's drop reasons",
    },
    matches: lost_before_decap,
};

fn lost_before_decap(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (rx, decap) = (c.rx_nic.packets, c.rx_decap.packets);
    // Drops of the outer packets with a rule of their own (a firewall, bad
    // checksums, a closed port, the VXLAN driver) explain the gap.
    let explained = nf_drops(o) + inbound_outer_drops(o.drops_outer, c);
    (rx >= MIN_PACKETS && decap * 10 < rx * 9 && explained == 0).then_some(())?;
    seen(
        format!("arrived at the underlay device {rx}, decapsulated {decap}"),
        evidence([("rx_nic", rx), ("rx_decap", decap)]),
    )
}

pub const LOST_WHILE_ENCAPSULATING: Rule = Rule {
    about: About {
        cause: Cause::LostWhileEncapsulating,
        segment: Segment::SenderHost,
        direction: Direction::ToPeer,
        meaning: "lost on the sending host while encapsulating: no FDB entry or route for the peer, the MTU, or the qdisc",
        fix: "check the VXLAN device's FDB entry for the peer (`bridge fdb show dev DEV`) and the route to the peer's underlay address; `vxtrace doctor` checks both",
    },
    matches: lost_while_encapsulating,
};

fn lost_while_encapsulating(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (dev, encap) = (c.tx_dev.packets, c.tx_encap.packets);
    (dev >= MIN_PACKETS && encap * 10 < dev * 9).then_some(())?;
    let headline = format!("handed to the VXLAN device {dev}, left the underlay device {encap}");
    let outbound = outbound_outer_drops(o.drops_outer, c);
    if outbound.is_empty() {
        return seen(headline, evidence([("tx_dev", dev), ("tx_encap", encap)]));
    }
    // The encapsulated packets were made and then dropped here: the drop
    // reasons say by what.
    let listed = evidence(&outbound);
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

pub const MALFORMED: Rule = Rule {
    about: About {
        cause: Cause::Malformed,
        segment: Segment::SenderHost,
        direction: Direction::FromPeer,
        meaning: "truncated, I flag clear or reserved bits set: a misconfigured sender, another protocol on the port, or a scan",
        fix: "see what sends them with `tcpdump -ni IFACE udp port PORT and host PEER`, and make the sender speak VXLAN (or move it to another port)",
    },
    matches: malformed,
};

fn malformed(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let n = c.malformed_rx + c.malformed_tx;
    (n > 0).then_some(())?;
    Some(Seen {
        headline: format!("{n} packets to the VXLAN port were not valid VXLAN"),
        evidence: evidence([
            ("malformed_rx", c.malformed_rx),
            ("malformed_tx", c.malformed_tx),
        ]),
        // Only ours: this node sends them.
        place: (c.malformed_rx == 0).then_some((Segment::SenderHost, Direction::ToPeer)),
        words: None,
    })
}

pub const UNKNOWN_VNI: Rule = Rule {
    about: About {
        cause: Cause::UnknownVni,
        segment: Segment::ReceiverHost,
        direction: Direction::FromPeer,
        meaning: "the nodes disagree on the VNI: the kernel drops what no device here claims",
        fix: "give the VXLAN devices of both nodes the same VNI (flannel: the VNI in net-conf.json; `ip -d link show type vxlan`)",
    },
    matches: unknown_vni,
};

fn unknown_vni(o: &Observation<'_>) -> Option<Seen> {
    let n = o.counters.unknown_vni;
    (n > 0).then_some(())?;
    seen(
        format!("{n} VXLAN packets carried a VNI no watched device uses"),
        evidence([("unknown_vni", n)]),
    )
}

pub const PATH_MTU: Rule = Rule {
    about: About {
        cause: Cause::PathMtu,
        segment: Segment::Path,
        direction: Direction::ToPeer,
        meaning: "the path MTU between the nodes is below the VXLAN packet size (VXLAN adds 50 bytes on IPv4, 70 on IPv6): large packets are lost, small ones pass",
        fix: "set the VXLAN device's MTU to the path MTU minus 50 (IPv4 underlay) or 70 (IPv6), and the pods' MTU no higher; which sizes arrive shows only on the peer: read both nodes' recordings with `vxtrace report`",
    },
    matches: path_mtu,
};

fn path_mtu(o: &Observation<'_>) -> Option<Seen> {
    let c = o.counters;
    let (big, frag) = (c.outer_size.tx_over_1500, c.fragmented.tx);
    (big + frag > 0 && c.rx_nic.packets == 0).then_some(())?;
    seen(
        format!(
            "{big} outer packets above 1500 bytes sent ({frag} fragmented) and nothing received"
        ),
        evidence([
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

pub const GROUPED_OUTAGE: Rule = Rule {
    about: About {
        cause: Cause::GroupedOutage,
        segment: Segment::Path,
        direction: Direction::Both,
        meaning: "a device on the path (a policer or rate limiter) blackholed this node's traffic to several peers at once",
        fix: "look for a policer or UDP rate limit on the underlay (switch, hypervisor, cloud NIC limits); the tx rate before each outage shows what triggers it",
    },
    matches: grouped_outage,
};

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

pub const INTERMITTENT_OUTAGE: Rule = Rule {
    about: About {
        cause: Cause::IntermittentOutage,
        segment: Segment::Path,
        direction: Direction::Both,
        meaning: "this peer alone stops answering for a while: the peer, its link, or the path to it",
        fix: "record on the peer too (`vxtrace watch --record`) and read both recordings with `vxtrace report`: it tells whether the peer received",
    },
    matches: intermittent_outage,
};

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
        evidence([
            ("outages", all.len() as u64),
            (
                "sent_into_silence",
                all.iter().map(|x| x.sent_into_silence).sum(),
            ),
        ]),
    )
}
