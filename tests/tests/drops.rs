//! Kernel drops by reason, attributed to the right peer, scoped by network
//! namespace; and the inner-frame anomalies of incidents 5 and 7.

use std::time::Duration;

use vxtrace::schema::{DropHook, NetnsScope, ReasonSource, Summary};
use vxtrace_tests::{LabGuard, Watcher, json, sh};

/// A peer's kernel drops of one reason (0 when none).
fn drops(s: &Summary, peer: &str, reason: &str) -> u64 {
    s.peer(peer).drops.get(reason).copied().unwrap_or(0)
}

fn nft(ns: &str, rules: &str) {
    sh(&["ip", "netns", "exec", ns, "nft", rules]);
}

/// Incident 4: the receiver's host firewall drops UDP to the VXLAN port.
#[test]
fn host_firewall_on_the_vxlan_port() {
    let lab = LabGuard::new("vt-fw", 2, false, 8472);
    let (a, b) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(2).to_string(),
    );
    nft(
        &lab.node_ns(2),
        "add table inet vt; add chain inet vt in { type filter hook input priority 0 ; }; add rule inet vt in udp dport 8472 drop",
    );
    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", "self"]);
    let on_a_self = Watcher::start(&lab.node_ns(1), &["--netns", "self"]);
    let on_a_all = Watcher::start(&lab.node_ns(1), &["--netns", "all"]);
    assert_eq!(on_a_all.attached.netns, NetnsScope::all());
    assert_eq!(
        on_a_all.attached.probes.drops.attached,
        DropHook::RawTracepoint
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

/// A forward-path drop of inner pod traffic on B: attributed to peer A via
/// the pod subnet routed to A's VTEP.
#[test]
fn forward_drop_of_inner_pod_traffic() {
    let lab = LabGuard::new("vt-fwd", 3, false, 8472);
    let (a, c) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    nft(
        &lab.node_ns(2),
        "add table inet vt; add chain inet vt fw { type filter hook forward priority 0 ; }; add rule inet vt fw ip saddr 10.244.0.0/24 ip daddr 10.244.1.0/24 drop",
    );
    // The namespace by name, as `ip netns` knows it.
    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", &lab.node_ns(2)]);
    assert_eq!(lab.ping(1, 2, 6, Duration::ZERO).unwrap(), 0);
    // C's traffic passes.
    assert_eq!(lab.ping(3, 2, 5, Duration::ZERO).unwrap(), 5);
    let sb = on_b.stop();
    assert_eq!(sb.peer(&a).counters.rx_decap.packets, 6, "{}", json(&sb));
    assert_eq!(drops(&sb, &a, "NETFILTER_DROP"), 6, "{}", json(&sb));
    assert_eq!(drops(&sb, &c, "NETFILTER_DROP"), 0, "{}", json(&sb));
    assert_eq!(sb.peer(&c).counters.rx_decap.packets, 5);
}

/// Incident 5: B holds a stale MAC for A's VTEP (and an FDB entry for it),
/// so B's frames reach A addressed to a MAC that is not A's.
#[test]
fn stale_neighbour_mac_on_the_peer() {
    let lab = LabGuard::new("vt-mac", 3, false, 8472);
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
        "flannel.1",
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
        "flannel.1",
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

/// Incident 7: B masquerades pod traffic into the overlay, so A sees B's
/// VTEP address as the inner source.
#[test]
fn masquerade_of_pod_traffic_on_the_peer() {
    let lab = LabGuard::new("vt-masq", 3, false, 8472);
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    nft(
        &lab.node_ns(2),
        "add table ip vtnat; add chain ip vtnat post { type nat hook postrouting priority 100 ; }; add rule ip vtnat post ip saddr 10.244.1.0/24 oifname \"flannel.1\" masquerade",
    );
    let on_a = Watcher::start(&lab.node_ns(1), &["--netns", "self"]);
    assert_eq!(lab.ping(2, 1, 7, Duration::ZERO).unwrap(), 7);
    assert_eq!(lab.ping(3, 1, 3, Duration::ZERO).unwrap(), 3);
    let sa = on_a.stop();
    let (a_b, a_c) = (sa.peer(&b), sa.peer(&c));
    assert_eq!(a_b.counters.inner_src_vtep, 7, "{}", json(&sa));
    assert_eq!(a_c.counters.inner_src_vtep, 0, "{}", json(&sa));
    assert_eq!(a_b.counters.inner_dst_mac_mismatch, 0);
    assert!(a_b.hints.join("\n").contains("masquerade"));
}

/// Without BTF: a clear note, drops still counted by reason (as "other").
#[test]
fn without_btf_drops_are_counted_by_reason() {
    let lab = LabGuard::new("vt-nobtf", 2, false, 8472);
    nft(
        &lab.node_ns(2),
        "add table inet vt; add chain inet vt in { type filter hook input priority 0 ; }; add rule inet vt in udp dport 8472 drop",
    );
    let on_b = Watcher::start(&lab.node_ns(2), &["--btf", "none", "--netns", "self"]);
    let notes = on_b.attached.notes.join("\n");
    assert!(notes.contains("not attributed to peers"), "{notes}");
    assert_eq!(
        on_b.attached.probes.reason_names,
        Some(ReasonSource::Tracefs)
    );
    assert_eq!(lab.ping(1, 2, 3, Duration::ZERO).unwrap(), 0);
    let sb = on_b.stop();
    let nf = sb.drops_other.get("NETFILTER_DROP").copied().unwrap_or(0);
    assert!(nf >= 3, "{}", json(&sb));
    let a = lab.underlay_ip(1).to_string();
    assert_eq!(
        sb.peer(&a).counters.rx_nic.packets,
        3,
        "TC counting still works: {}",
        json(&sb)
    );
}
