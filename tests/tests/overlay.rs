//! Exact per-peer counts across a real kernel VXLAN overlay (flannel's
//! layout, network namespaces), seen from both ends.

use std::time::Duration;

use vxtrace_tests::{LabGuard, Watcher, json, peer_names, scenarios, sh};

/// 200 echoes A->B and 50 datagrams A->C, watched on A and B at once
/// (see [`scenarios::three_nodes`]).
fn three_nodes(name: &str, ipv6: bool, port: u16) {
    let lab = LabGuard::new(name, 3, ipv6, port);
    scenarios::three_nodes(&lab);
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
