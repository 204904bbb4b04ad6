//! Kernel drops by reason, attributed to the right peer, scoped by network
//! namespace; and the inner-frame anomalies of incidents 5 and 7.

use std::time::Duration;

use vxtrace::schema::ReasonSource;
use vxtrace_tests::{
    LabGuard, Watcher, json,
    scenarios::{self, drops, nft},
};

/// Incident 4: the receiver's host firewall drops UDP to the VXLAN port
/// (see [`scenarios::host_firewall`]).
#[test]
fn host_firewall_on_the_vxlan_port() {
    let lab = LabGuard::new("vt-fw", 2, false, 8472);
    scenarios::host_firewall(&lab);
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
/// so B's frames reach A addressed to a MAC that is not A's (see
/// [`scenarios::stale_neighbour`]).
#[test]
fn stale_neighbour_mac_on_the_peer() {
    let lab = LabGuard::new("vt-mac", 3, false, 8472);
    scenarios::stale_neighbour(&lab);
}

/// Incident 7: B masquerades pod traffic into the overlay, so A sees B's
/// VTEP address as the inner source (see [`scenarios::masquerade`]).
#[test]
fn masquerade_of_pod_traffic_on_the_peer() {
    let lab = LabGuard::new("vt-masq", 3, false, 8472);
    scenarios::masquerade(&lab);
}

/// Without BTF: a clear note, drops still counted by reason (as "other").
#[test]
fn without_btf_drops_are_counted_by_reason() {
    let lab = LabGuard::new("vt-nobtf", 2, false, 8472);
    scenarios::drop_vxlan_at_input(&lab, 2);
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
