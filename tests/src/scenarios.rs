//! Lab scenarios that hold on any layout (flannel, Calico, metadata
//! devices): each takes a lab that is up and asserts exact numbers, so
//! `overlay.rs`, `drops.rs` and `layouts.rs` run the same checks on
//! different overlays.

use std::time::Duration;

use vxtrace::schema::{Cause, DropHook, NetnsScope, ReasonSource, SizeDistribution, Summary};

use crate::{ICMP_IP_LEN, Lab, Watcher, json, outer_frame_len, peer_names, sh};

/// A peer's kernel drops of one reason (0 when none).
pub fn drops(s: &Summary, peer: &str, reason: &str) -> u64 {
    s.peer(peer).drops.get(reason).copied().unwrap_or(0)
}

/// `nft RULES` in namespace `ns`.
pub fn nft(ns: &str, rules: &str) {
    sh(&["ip", "netns", "exec", ns, "nft", rules]);
}

/// Node `node`'s host firewall drops everything to the lab's VXLAN port
/// (an nft input rule).
pub fn drop_vxlan_at_input(lab: &Lab, node: u8) {
    nft(
        &lab.node_ns(node),
        &format!(
            "add table inet vt; add chain inet vt in {{ type filter hook input priority 0 ; }}; add rule inet vt in udp dport {} drop",
            lab.port
        ),
    );
}

/// Drops the VXLAN packets that enter the underlay bridge from node
/// `from`'s port and leave by node `to`'s: one direction of one link, cut
/// on the path as a security group would (everything else, ARP included,
/// passes).
pub fn cut_path(lab: &Lab, from: u8, to: u8) {
    nft(
        &lab.bridge_ns(),
        &format!(
            "add table bridge vtcut; add chain bridge vtcut fw {{ type filter hook forward priority 0 ; }}; add rule bridge vtcut fw iifname \"veth{from}\" oifname \"veth{to}\" udp dport {} drop",
            lab.port
        ),
    );
}

/// 200 echoes A->B and 50 datagrams A->C, watched on A and B at once:
/// exact packets and bytes per peer and direction, outer sizes, and no
/// peer that was never talked to. Needs 3 nodes. Returns A's and B's
/// summaries, for checks of a layout's own.
pub fn three_nodes(lab: &Lab) -> (Summary, Summary) {
    let (ipv6, port) = (lab.ipv6, lab.port);
    let (a, b, c) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let on_a = Watcher::start(&lab.node_ns(1), &[]);
    let on_b = Watcher::start(&lab.node_ns(2), &[]);
    assert_eq!(on_a.attached.ports, vec![port]);

    assert_eq!(lab.ping(1, 2, 200, Duration::ZERO).unwrap(), 200);
    assert_eq!(lab.udp(1, 3, 50, 100).unwrap(), 50);

    let sa = on_a.stop();
    let sb = on_b.stop();

    // A's view.
    let (a_b, a_c) = (sa.peer(&b).counters, sa.peer(&c).counters);
    assert_eq!(a_b.tx_encap.packets, 200, "{}", json(&sa));
    assert_eq!(a_c.tx_encap.packets, 50, "{}", json(&sa));
    assert_eq!(a_b.tx_dev.packets, 200, "{}", json(&sa));
    assert_eq!(a_c.tx_dev.packets, 50, "{}", json(&sa));
    assert_eq!(a_b.rx_nic.packets, 200, "{}", json(&sa));
    assert_eq!(a_b.rx_decap.packets, 200, "{}", json(&sa));
    assert_eq!(a_c.rx_nic.packets, 0, "{}", json(&sa));
    assert_eq!(a_c.rx_decap.packets, 0, "{}", json(&sa));
    let echo = outer_frame_len(ICMP_IP_LEN, ipv6);
    assert_eq!(a_b.tx_encap.bytes, 200 * echo);
    assert_eq!(a_b.rx_nic.bytes, 200 * echo);
    assert_eq!(a_b.rx_decap.bytes, 200 * (ICMP_IP_LEN + 14));
    assert_eq!(a_b.tx_dev.bytes, 200 * (ICMP_IP_LEN + 14));
    let udp_ip_len = 100 + 8 + 20;
    assert_eq!(a_c.tx_encap.bytes, 50 * outer_frame_len(udp_ip_len, ipv6));
    assert_eq!(a_c.tx_dev.bytes, 50 * (udp_ip_len + 14));
    // Outer IP sizes: 84 + 50 (IPv4) or + 70 (IPv6) bytes for the echoes,
    // all in the bucket "<=256".
    let echo_ip = ICMP_IP_LEN + if ipv6 { 70 } else { 50 };
    assert!(echo_ip <= 256);
    let le256 = (0..vxtrace_common::SIZE_BUCKETS)
        .find(|i| SizeDistribution::label(*i) == "<=256")
        .unwrap();
    let (tx, rx) = (&a_b.outer_size.tx, &a_b.outer_size.rx);
    assert_eq!(tx.counts[le256], 200, "{}", json(&sa));
    assert_eq!(
        tx.quantile_bucket(0.99)
            .map(SizeDistribution::label)
            .as_deref(),
        Some("<=256"),
        "{}",
        json(tx)
    );
    assert_eq!(rx.total(), 200);
    let mut peers = peer_names(&sa);
    peers.sort();
    let mut expect = vec![b.clone(), c.clone()];
    expect.sort();
    assert_eq!(
        peers,
        expect,
        "A saw peers it never talked to: {}",
        json(&sa)
    );
    assert_eq!(a_b.malformed, 0);
    assert_eq!(sa.peer_map.evictions, 0);

    // B's view: the mirror image, and nothing about C.
    let b_a = sb.peer(&a);
    assert_eq!(b_a.counters.rx_nic.packets, 200, "{}", json(&sb));
    assert_eq!(b_a.counters.rx_decap.packets, 200, "{}", json(&sb));
    assert_eq!(b_a.counters.tx_encap.packets, 200, "{}", json(&sb));
    assert_eq!(b_a.counters.tx_dev.packets, 200, "{}", json(&sb));
    assert_eq!(peer_names(&sb), vec![a.clone()], "{}", json(&sb));
    assert!(b_a.hints.is_empty(), "{}", json(&sb));
    (sa, sb)
}

/// The receiver's host firewall drops UDP to the VXLAN port: B sees A's
/// packets at the NIC, never decapsulated, dropped by netfilter (finding
/// `host_firewall`); A, scoped to its own namespace, sees a one-way peer,
/// and scoped to all namespaces, B's drops of its packets. Needs 2 nodes.
pub fn host_firewall(lab: &Lab) {
    let (a, b) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(2).to_string(),
    );
    drop_vxlan_at_input(lab, 2);
    // B counts with the raw tracepoint, A with the default (the BTF-typed
    // one where the kernel has BTF): both programs' counts are checked.
    let on_b = Watcher::start(
        &lab.node_ns(2),
        &["--netns", "self", "--drop-hook", "raw-tracepoint"],
    );
    let on_a_self = Watcher::start(&lab.node_ns(1), &["--netns", "self"]);
    let on_a_all = Watcher::start(&lab.node_ns(1), &["--netns", "all"]);
    assert_eq!(on_a_all.attached.netns, NetnsScope::all());
    assert_eq!(on_b.attached.probes.drops.attached, DropHook::RawTracepoint);
    let default_hook = if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        DropHook::BtfTracepoint
    } else {
        DropHook::RawTracepoint
    };
    assert_eq!(
        on_a_all.attached.probes.drops.attached, default_hook,
        "{:?}",
        on_a_all.attached.probes.drops.skipped
    );
    assert_eq!(lab.ping(1, 2, 5, Duration::ZERO).unwrap(), 0);

    let sb = on_b.stop();
    let sa_self = on_a_self.stop();
    let sa_all = on_a_all.stop();
    // B: arrived at the NIC, never decapsulated, dropped by netfilter.
    let b_a = sb.peer(&a);
    assert_eq!(b_a.counters.rx_nic.packets, 5, "{}", json(&sb));
    assert_eq!(b_a.counters.rx_decap.packets, 0, "{}", json(&sb));
    assert_eq!(drops(&sb, &a, "NETFILTER_DROP"), 5, "{}", json(&sb));
    let loc = b_a
        .drop_locations
        .first()
        .unwrap_or_else(|| panic!("no drop location: {}", json(&sb)));
    assert_eq!(loc.reason, "NETFILTER_DROP");
    assert!(loc.location.contains('+'), "{loc:?}");
    let hints = b_a.hints.join("\n");
    assert!(hints.contains("host firewall"), "{hints}");
    assert!(
        b_a.findings.iter().any(|f| f.kind == Cause::HostFirewall),
        "{}",
        json(&sb)
    );
    assert_eq!(
        sb.drops_other.get("NETFILTER_DROP").copied().unwrap_or(0),
        0,
        "{}",
        json(&sb)
    );
    // A: sent, heard nothing back; its own namespace dropped nothing of B's.
    let a_b = sa_self.peer(&b);
    assert_eq!(a_b.counters.tx_encap.packets, 5);
    assert_eq!(a_b.counters.rx_nic.packets, 0);
    assert!(a_b.hints.join("\n").contains("one-way: sent 5, received 0"));
    assert_eq!(
        drops(&sa_self, &b, "NETFILTER_DROP"),
        0,
        "{}",
        json(&sa_self)
    );
    // Scoped to all namespaces (the default), A sees B's drops of its packets.
    assert_eq!(drops(&sa_all, &b, "NETFILTER_DROP"), 5, "{}", json(&sa_all));
}

/// B holds a stale MAC for A's VTEP (and an FDB entry for it), so B's
/// frames reach A addressed to a MAC that is not A's: counted as
/// `inner_dst_mac_mismatch`, dropped as OTHERHOST, finding
/// `stale_neighbour`; C's traffic is clean. Needs 3 nodes.
pub fn stale_neighbour(lab: &Lab) {
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let ns_b = lab.node_ns(2);
    let stale = "0e:76:78:00:00:99";
    sh(&[
        "ip",
        "-n",
        &ns_b,
        "neigh",
        "replace",
        &lab.vtep_ip(1).to_string(),
        "lladdr",
        stale,
        "dev",
        &lab.dev,
        "nud",
        "permanent",
    ]);
    sh(&[
        "bridge",
        "-n",
        &ns_b,
        "fdb",
        "append",
        stale,
        "dev",
        &lab.dev,
        "dst",
        &lab.underlay_ip(1).to_string(),
    ]);
    let on_a = Watcher::start(&lab.node_ns(1), &["--netns", "self"]);
    let kernel_has_reasons = on_a.attached.probes.reason_names != Some(ReasonSource::None);
    assert_eq!(lab.ping(2, 1, 4, Duration::ZERO).unwrap(), 0);
    assert_eq!(lab.ping(3, 1, 3, Duration::ZERO).unwrap(), 3);
    let sa = on_a.stop();
    let a_b = sa.peer(&b);
    assert_eq!(a_b.counters.inner_dst_mac_mismatch, 4, "{}", json(&sa));
    if kernel_has_reasons {
        assert_eq!(drops(&sa, &b, "OTHERHOST"), 4, "{}", json(&sa));
        assert!(
            a_b.findings.iter().any(|f| f.kind == Cause::StaleNeighbour),
            "{}",
            json(&sa)
        );
    } else {
        // Before 5.17 the kernel gives no reason: the drop shows where it
        // happened, the IP receive path's check of the frame's MAC.
        let loc = a_b
            .drop_locations
            .first()
            .unwrap_or_else(|| panic!("no drop location: {}", json(&sa)));
        assert_eq!(loc.count, 4, "{}", json(&sa));
        assert!(loc.location.starts_with("ip_rcv_core+"), "{loc:?}");
    }
    assert_eq!(
        sa.peer(&c).counters.inner_dst_mac_mismatch,
        0,
        "{}",
        json(&sa)
    );
    assert_eq!(drops(&sa, &c, "OTHERHOST"), 0);
    let hints = a_b.hints.join("\n");
    assert!(
        hints.contains("stale neighbour entry on the peer"),
        "{hints}"
    );
}

/// B masquerades its pods' traffic into the overlay, so A sees B's VTEP
/// address as the inner source (`inner_src_vtep`, finding `masquerade`);
/// C's traffic is clean. Needs 3 nodes.
pub fn masquerade(lab: &Lab) {
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    nft(
        &lab.node_ns(2),
        &format!(
            "add table ip vtnat; add chain ip vtnat post {{ type nat hook postrouting priority 100 ; }}; add rule ip vtnat post ip saddr {} oifname \"{}\" masquerade",
            lab.pod_cidr(2),
            lab.dev
        ),
    );
    let on_a = Watcher::start(&lab.node_ns(1), &["--netns", "self"]);
    assert_eq!(lab.ping(2, 1, 7, Duration::ZERO).unwrap(), 7);
    assert_eq!(lab.ping(3, 1, 3, Duration::ZERO).unwrap(), 3);
    // The nodes' own traffic to a pod (host network) leaves with their VTEP
    // address as source too, unforwarded: not masquerade.
    for node in [2, 3] {
        assert_eq!(
            vxtrace::lab::ping_from(&lab.node_ns(node), lab.pod_ip(1), 4, Duration::ZERO).unwrap(),
            4
        );
    }
    let sa = on_a.stop();
    let (a_b, a_c) = (sa.peer(&b), sa.peer(&c));
    assert_eq!(a_b.counters.inner_src_vtep, 7, "{}", json(&sa));
    assert_eq!(a_c.counters.inner_src_vtep, 0, "{}", json(&sa));
    assert_eq!(a_b.counters.inner_dst_mac_mismatch, 0);
    assert!(a_b.hints.join("\n").contains("masquerade"));
    assert!(
        a_b.findings.iter().any(|f| f.kind == Cause::Masquerade),
        "{}",
        json(&sa)
    );
}
