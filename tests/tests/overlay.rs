//! Exact per-peer counts across a real kernel VXLAN overlay (flannel's
//! layout, network namespaces), seen from both ends.

use std::time::Duration;

use vxtrace::schema::SizeDistribution;
use vxtrace_tests::{ICMP_IP_LEN, LabGuard, Watcher, json, outer_frame_len, peer_names, sh};

/// 200 echoes A->B and 50 datagrams A->C, watched on A and B at once.
fn three_nodes(name: &str, ipv6: bool, port: u16) {
    let lab = LabGuard::new(name, 3, ipv6, port);
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
    let udp_ip_len = 100 + 8 + 20;
    assert_eq!(a_c.tx_encap.bytes, 50 * outer_frame_len(udp_ip_len, ipv6));
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
}

#[test]
fn ipv4_underlay_flannel_port() {
    three_nodes("vt-v4", false, 8472);
}

#[test]
fn ipv6_underlay() {
    three_nodes("vt-v6", true, 8472);
}

#[test]
fn iana_port_4789() {
    three_nodes("vt-4789", false, 4789);
}

/// `--peer` shows one peer (even one that sent nothing) and sums the rest.
#[test]
fn peer_filter_shows_selected_and_sums_others() {
    let lab = LabGuard::new("vt-sel", 3, false, 8472);
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let silent = "192.0.2.99";
    let w = Watcher::start(&lab.node_ns(1), &["--peer", &c, "--peer", silent]);
    assert_eq!(lab.ping(1, 2, 30, Duration::ZERO).unwrap(), 30);
    assert_eq!(lab.ping(1, 3, 7, Duration::ZERO).unwrap(), 7);
    let s = w.stop();
    let mut shown = peer_names(&s);
    shown.sort();
    assert_eq!(shown, vec![c.clone(), silent.to_string()]);
    assert_eq!(s.peer(&c).counters.tx_encap.packets, 7);
    assert_eq!(s.peer(silent).counters.tx_encap.packets, 0);
    let others = s
        .other_peers
        .as_ref()
        .unwrap_or_else(|| panic!("no other_peers: {}", json(&s)));
    assert_eq!(others.count, 1, "{}", json(&s));
    assert_eq!(others.totals.tx_encap.packets, 30, "{}", json(&s));
    assert!(
        s.peer(&b).counters.tx_encap.packets == 0,
        "unselected peer shown"
    );
}

/// A port the overlay does not use: nothing is counted as VXLAN.
#[test]
fn other_port_counts_nothing() {
    let lab = LabGuard::new("vt-port", 2, false, 8472);
    let w = Watcher::start(&lab.node_ns(1), &["--port", "4789"]);
    assert_eq!(w.attached.ports, vec![4789]);
    let notes = w.attached.notes.join("\n");
    assert!(notes.contains("8472 which is not watched"), "{notes}");
    assert_eq!(lab.ping(1, 2, 20, Duration::ZERO).unwrap(), 20);
    let s = w.stop();
    for (peer, p) in &s.peers {
        let p = &p.counters;
        assert_eq!(p.tx_encap.packets, 0, "{peer}: {}", json(&s));
        assert_eq!(p.rx_nic.packets, 0, "{peer}: {}", json(&s));
        assert_eq!(p.malformed, 0, "{peer}: {}", json(&s));
    }
}

/// Two VXLAN devices (different VNI, port and name) in one node: both are
/// discovered by kind and counted.
#[test]
fn several_vxlan_devices() {
    let lab = LabGuard::new("vt-multi", 2, false, 8472);
    for (i, j) in [(1u8, 2u8), (2, 1)] {
        let ns = lab.node_ns(i);
        let local = lab.underlay_ip(i).to_string();
        let mac = format!("0e:42:00:00:00:{i:02x}");
        let peer_mac = format!("0e:42:00:00:00:{j:02x}");
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "add",
            "vx42",
            "type",
            "vxlan",
            "id",
            "42",
            "local",
            &local,
            "dev",
            "eth0",
            "dstport",
            "4789",
            "nolearning",
        ]);
        sh(&[
            "ip", "-n", &ns, "link", "set", "vx42", "address", &mac, "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("10.250.0.{i}/24"),
            "dev",
            "vx42",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "neigh",
            "add",
            &format!("10.250.0.{j}"),
            "lladdr",
            &peer_mac,
            "dev",
            "vx42",
            "nud",
            "permanent",
        ]);
        sh(&[
            "bridge",
            "-n",
            &ns,
            "fdb",
            "append",
            &peer_mac,
            "dev",
            "vx42",
            "dst",
            &lab.underlay_ip(j).to_string(),
        ]);
    }
    let b = lab.underlay_ip(2).to_string();
    let w = Watcher::start(&lab.node_ns(1), &[]);
    assert_eq!(w.attached.ports, vec![4789, 8472]);
    assert_eq!(w.attached.devices.len(), 2);
    // 10 pings over flannel.1 (pod to pod), 15 over vx42 (node to node).
    assert_eq!(lab.ping(1, 2, 10, Duration::ZERO).unwrap(), 10);
    let got = vxtrace::lab::ping_from(
        &lab.node_ns(1),
        "10.250.0.2".parse().unwrap(),
        15,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(got, 15);
    let s = w.stop();
    let p = s.peer(&b).counters;
    assert_eq!(p.tx_encap.packets, 25, "{}", json(&s));
    assert_eq!(p.rx_decap.packets, 25, "{}", json(&s));
    assert_eq!(p.tx_dev.packets, 25, "{}", json(&s));
}
