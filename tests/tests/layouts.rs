//! The overlay layouts besides flannel's single stack, each on a real
//! kernel with exact counts: flannel's dual-stack (two VXLAN devices, an
//! IPv4 and an IPv6 peer per node), metadata (`external`) devices whose
//! frames are attributed from the tunnel metadata, and Calico's VXLAN
//! (with the incident checks of `drops.rs`, run on this layout).

use std::{net::IpAddr, time::Duration};

use vxtrace::schema::{PeerNode, Summary};
use vxtrace_tests::{
    ICMP_IP_LEN, ICMP6_IP_LEN, Lab, LabGuard, Layout, Watcher, json, outer_frame_len, peer_names,
    scenarios,
};

/// Packets and bytes of one peer: (tx_encap, rx_nic, rx_decap, tx_dev)
/// packets, each frame `inner` bytes of IP over an IPv4 or IPv6 underlay.
fn assert_exact(s: &Summary, peer: &str, sent: u64, received: u64, inner: u64, ipv6: bool) {
    let p = s.peer(peer).counters;
    let outer = outer_frame_len(inner, ipv6);
    let frame = inner + 14;
    let what = format!("peer {peer}: {}", json(s));
    assert_eq!(p.tx_encap.packets, sent, "tx_encap {what}");
    assert_eq!(p.tx_encap.bytes, sent * outer, "tx_encap bytes {what}");
    assert_eq!(p.tx_dev.packets, sent, "tx_dev {what}");
    assert_eq!(p.tx_dev.bytes, sent * frame, "tx_dev bytes {what}");
    assert_eq!(p.rx_nic.packets, received, "rx_nic {what}");
    assert_eq!(p.rx_nic.bytes, received * outer, "rx_nic bytes {what}");
    assert_eq!(p.rx_decap.packets, received, "rx_decap {what}");
    assert_eq!(p.rx_decap.bytes, received * frame, "rx_decap bytes {what}");
    assert_eq!(p.inner_dst_mac_mismatch, 0, "{what}");
    assert_eq!(p.malformed, 0, "{what}");
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The groups of a summary's `peer_nodes`, sorted.
fn groups(s: &Summary) -> Vec<PeerNode> {
    let mut g = s.peer_nodes.clone();
    g.sort_by(|a, b| a.peers.cmp(&b.peers));
    g
}

fn addr(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

/// flannel's dual-stack: `flannel.1` over IPv4 and `flannel-v6.1` over
/// IPv6 (same VNI and port) on one underlay device. Each node is two
/// peers, one per family, counted apart, with bytes from the header sizes
/// (outer IPv4 = inner + 50, IPv6 = inner + 70); both VTEP addresses are
/// the node's; and each node's two peer addresses are grouped as one node
/// by their underlay MAC.
#[test]
fn dual_stack_flannel() {
    let lab = LabGuard::build(Lab {
        dual_stack: true,
        ..Lab::new("vt-lds", 3, Layout::Flannel)
    });
    let v4 = |i| lab.underlay_v4(i).to_string();
    let v6 = |i| lab.underlay_v6(i).to_string();
    let on_a = Watcher::start(&lab.node_ns(1), &[]);
    let on_b = Watcher::start(&lab.node_ns(2), &[]);
    let mut devices: Vec<String> = on_a
        .attached
        .devices
        .iter()
        .map(|d| d.name.clone())
        .collect();
    devices.sort();
    assert_eq!(devices, vec!["flannel-v6.1", "flannel.1"]);
    assert_eq!(on_a.attached.underlays, vec!["eth0"]);
    assert_eq!(on_a.attached.ports, vec![8472]);
    let notes = on_a.attached.notes.join("\n");
    assert!(notes.contains("share VNI 1"), "{notes}");

    assert_eq!(lab.ping(1, 2, 100, Duration::ZERO).unwrap(), 100);
    assert_eq!(lab.ping6(1, 2, 60, Duration::ZERO).unwrap(), 60);
    assert_eq!(lab.ping(1, 3, 20, Duration::ZERO).unwrap(), 20);
    assert_eq!(lab.ping6(1, 3, 30, Duration::ZERO).unwrap(), 30);

    let sa = on_a.stop();
    let sb = on_b.stop();

    // A: four peers, two per node, each with its own family's traffic.
    assert_eq!(
        sorted(peer_names(&sa)),
        sorted(vec![v4(2), v6(2), v4(3), v6(3)]),
        "{}",
        json(&sa)
    );
    assert_exact(&sa, &v4(2), 100, 100, ICMP_IP_LEN, false);
    assert_exact(&sa, &v6(2), 60, 60, ICMP6_IP_LEN, true);
    assert_exact(&sa, &v4(3), 20, 20, ICMP_IP_LEN, false);
    assert_exact(&sa, &v6(3), 30, 30, ICMP6_IP_LEN, true);
    let node = sa.node.as_ref().expect("the summary names its node");
    assert_eq!(
        node.vteps,
        vec![addr(lab.underlay_v4(1)), addr(lab.underlay_v6(1))]
    );
    assert_eq!(
        groups(&sa),
        vec![
            PeerNode {
                peers: vec![addr(lab.underlay_v4(2)), addr(lab.underlay_v6(2))],
                evidence: format!("same underlay MAC {}", lab.underlay_mac(2).unwrap()),
            },
            PeerNode {
                peers: vec![addr(lab.underlay_v4(3)), addr(lab.underlay_v6(3))],
                evidence: format!("same underlay MAC {}", lab.underlay_mac(3).unwrap()),
            },
        ],
        "{}",
        json(&sa)
    );

    // B: the mirror image of A's traffic with it, and A as one node.
    assert_eq!(
        sorted(peer_names(&sb)),
        sorted(vec![v4(1), v6(1)]),
        "{}",
        json(&sb)
    );
    assert_exact(&sb, &v4(1), 100, 100, ICMP_IP_LEN, false);
    assert_exact(&sb, &v6(1), 60, 60, ICMP6_IP_LEN, true);
    assert_eq!(
        sb.node.as_ref().map(|n| n.vteps.clone()),
        Some(vec![addr(lab.underlay_v4(2)), addr(lab.underlay_v6(2))])
    );
    assert_eq!(
        groups(&sb),
        vec![PeerNode {
            peers: vec![addr(lab.underlay_v4(1)), addr(lab.underlay_v6(1))],
            evidence: format!("same underlay MAC {}", lab.underlay_mac(1).unwrap()),
        }],
        "{}",
        json(&sb)
    );
}

/// Metadata (`external`) devices: no VNI, no FDB, routes that carry the
/// remote and the VNI. Decapsulated and about-to-be-encapsulated frames
/// are attributed from the tunnel metadata (the MAC map has nothing for
/// them: learned MACs are keyed by the packets' VNI, and there is no FDB
/// to seed it), with the same exact counts as flannel's layout.
fn metadata_device(name: &str, ipv6: bool) {
    let lab = LabGuard::build(Lab {
        ipv6,
        vni: 61,
        ..Lab::new(name, 3, Layout::Metadata)
    });
    let (sa, _) = scenarios::three_nodes(&lab);
    let dev = sa
        .devices
        .iter()
        .find(|d| d.name == lab.dev)
        .unwrap_or_else(|| panic!("{} not watched: {}", lab.dev, json(&sa)));
    assert_eq!(dev.vni, None, "{}", json(&sa));
    // The underlay is the device that reaches the routes' remotes.
    assert_eq!(sa.underlays, vec!["eth0"], "{}", json(&sa));
    assert_eq!(
        sa.node.as_ref().map(|n| n.vteps.clone()),
        Some(vec![lab.underlay_ip(1)])
    );
    // Every decapsulated frame carried its remote.
    assert_eq!(sa.unattributed.rx_decap.packets, 0, "{}", json(&sa));
    let b = lab.underlay_ip(2).to_string();
    assert_eq!(sa.peer(&b).counters.unknown_vni, 0, "{}", json(&sa));
}

#[test]
fn metadata_device_ipv4_underlay() {
    metadata_device("vt-lmd4", false);
}

#[test]
fn metadata_device_ipv6_underlay() {
    metadata_device("vt-lmd6", true);
}

fn calico(name: &str, nodes: u8) -> LabGuard {
    LabGuard::build(Lab::new(name, nodes, Layout::Calico))
}

/// Calico's VXLAN (`vxlan.calico`, VNI 4096, port 4789, /26 blocks, the
/// tunnel address from the node's block): exact counts as for flannel.
#[test]
fn calico_exact_counts() {
    let lab = calico("vt-lcal", 3);
    assert_eq!(lab.port, 4789);
    let (sa, _) = scenarios::three_nodes(&lab);
    let dev = &sa.devices[0];
    assert_eq!(
        (dev.name.as_str(), dev.vni, dev.port),
        ("vxlan.calico", Some(4096), 4789)
    );
}

/// Calico: a host firewall on the VXLAN port (NETFILTER_DROP attributed to
/// the peer, finding host_firewall).
#[test]
fn calico_host_firewall() {
    scenarios::host_firewall(&calico("vt-lcfw", 2));
}

/// Calico: a stale neighbour MAC on the peer (inner_dst_mac_mismatch,
/// OTHERHOST, finding stale_neighbour).
#[test]
fn calico_stale_neighbour() {
    scenarios::stale_neighbour(&calico("vt-lcmac", 3));
}

/// Calico: the peer masquerades its pods' traffic (inner_src_vtep).
#[test]
fn calico_masquerade() {
    scenarios::masquerade(&calico("vt-lcmasq", 3));
}

/// Namespaces this test made, deleted however it ends.
struct Namespaces(Vec<String>);

impl Namespaces {
    /// Fresh namespaces of these names (a leftover of an earlier run is
    /// deleted first), loopback up.
    fn new(names: &[&str]) -> Self {
        let made = Self(names.iter().map(|n| n.to_string()).collect());
        for n in &made.0 {
            del_netns(n);
            vxtrace_tests::sh(&["ip", "netns", "add", n]);
            ip(n, "link set lo up");
        }
        made
    }
}

fn del_netns(name: &str) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            del_netns(ns);
        }
    }
}

/// `ip -n NS ARGS…` (ARGS split at spaces), which must succeed.
fn ip(ns: &str, args: &str) {
    let mut all = vec!["ip", "-n", ns];
    all.extend(args.split_whitespace());
    vxtrace_tests::sh(&all);
}

/// Routed-underlay node `i` of lab `lab` (a digit): its VTEP address
/// 10.9.{14-lab}.i on `lo` and a VXLAN device `vxr` (VNI 5000 + lab, no
/// `dev`) with overlay address 10.{195+lab}.0.i.
fn routed_vtep(ns: &str, i: u8, lab: u8) {
    let vtep = format!("10.9.{}.{i}", 14 - lab);
    ip(ns, &format!("addr add {vtep}/32 dev lo"));
    ip(
        ns,
        &format!(
            "link add vxr type vxlan id {} dstport 4789 local {vtep} nolearning",
            5000 + u32::from(lab)
        ),
    );
    ip(
        ns,
        &format!("link set vxr address 02:00:00:00:0{lab}:0{i} mtu 1450"),
    );
    ip(ns, &format!("addr add 10.{}.0.{i}/24 dev vxr", 195 + lab));
    ip(ns, "link set vxr up");
}

/// `ns` reaches routed-underlay node `i` of lab `lab` (see [`routed_vtep`]):
/// its neighbour entry and FDB entry, as an overlay agent programs them.
fn knows_vtep(ns: &str, i: u8, lab: u8) {
    let mac = format!("02:00:00:00:0{lab}:0{i}");
    ip(
        ns,
        &format!(
            "neigh add 10.{}.0.{i} lladdr {mac} dev vxr nud permanent",
            195 + lab
        ),
    );
    vxtrace_tests::sh(&[
        "bridge",
        "-n",
        ns,
        "fdb",
        "append",
        &mac,
        "dev",
        "vxr",
        "dst",
        &format!("10.9.{}.{i}", 14 - lab),
    ]);
}

/// A routed underlay: every node's VTEP address on its loopback (as BGP
/// fabrics announce it), node A reaching B and C through a NIC each, the
/// VXLAN device with a `local` address and no `dev`. The packets leave
/// through the NIC of each peer's route, not through `lo`: vxtrace
/// watches those NICs and counts each peer exactly.
#[test]
fn routed_underlay_vtep_on_loopback() {
    use vxtrace_tests::sh;
    let ns = |n: &str| format!("vt-rt-{n}");
    let (a, b, c) = (ns("a"), ns("b"), ns("c"));
    let _made = Namespaces::new(&[&a, &b, &c]);
    // A's links, a /30 each: two to B (ECMP, as a node with two uplinks),
    // one to C; routes to the loopback VTEPs.
    for (peer, nic, far, net) in [
        (&b, "up1", "dn1", 1),
        (&b, "up1b", "dn1b", 3),
        (&c, "up2", "dn2", 2),
    ] {
        sh(&[
            "ip", "link", "add", nic, "netns", &a, "type", "veth", "peer", "name", far, "netns",
            peer,
        ]);
        ip(&a, &format!("link set {nic} up"));
        ip(peer, &format!("link set {far} up"));
        ip(&a, &format!("addr add 169.254.{net}.1/30 dev {nic}"));
        ip(peer, &format!("addr add 169.254.{net}.2/30 dev {far}"));
    }
    ip(
        &a,
        "route add 10.9.9.2/32 nexthop via 169.254.1.2 nexthop via 169.254.3.2",
    );
    ip(&a, "route add 10.9.9.3/32 via 169.254.2.2");
    ip(&b, "route add 10.9.9.1/32 via 169.254.1.1");
    ip(&c, "route add 10.9.9.1/32 via 169.254.2.1");
    for (n, i) in [(&a, 1u8), (&b, 2), (&c, 3)] {
        routed_vtep(n, i, 5);
    }
    // A knows both peers; each peer knows A.
    knows_vtep(&a, 2, 5);
    knows_vtep(&a, 3, 5);
    knows_vtep(&b, 1, 5);
    knows_vtep(&c, 1, 5);

    let on_a = Watcher::start(&a, &["--netns", "self"]);
    let notes = on_a.attached.notes.join("\n");
    assert!(notes.contains("up1, up1b, up2"), "{notes}");
    let ping = |dst: &str, n| {
        vxtrace::lab::ping_from(&a, dst.parse().unwrap(), n, Duration::ZERO).unwrap()
    };
    assert_eq!(ping("10.200.0.2", 9), 9);
    assert_eq!(ping("10.200.0.3", 5), 5);
    let sa = on_a.stop();
    assert_exact(&sa, "10.9.9.2", 9, 9, ICMP_IP_LEN, false);
    assert_exact(&sa, "10.9.9.3", 5, 5, ICMP_IP_LEN, false);
    for peer in ["10.9.9.2", "10.9.9.3"] {
        assert!(sa.peer(peer).findings.is_empty(), "{}", json(&sa));
    }
    // Nor is the route through another NIC than the VTEP address's a fault.
    let (code, out, err) = vxtrace_tests::run(
        std::process::Command::new("ip")
            .args(["netns", "exec", &a])
            .arg(vxtrace_tests::bin())
            .arg("doctor"),
    );
    assert_eq!(code, 0, "{out}{err}");
}

/// A device that floods to a multicast group (`group 239.1.1.1`, learning
/// on, as plain VXLAN segments are set up): what it has no entry for goes
/// to the group, members answer from their own addresses. The group is
/// counted like a peer but its silence is no outage and no one-way link;
/// the member is counted exactly.
#[test]
fn multicast_group_is_not_a_silent_peer() {
    use vxtrace_tests::sh;
    let (a, b) = ("vt-mc-a", "vt-mc-b");
    let _made = Namespaces::new(&[a, b]);
    sh(&[
        "ip", "link", "add", "mc0", "netns", a, "type", "veth", "peer", "name", "mc0", "netns", b,
    ]);
    for (n, i) in [(a, 1), (b, 2)] {
        ip(n, "link set mc0 up");
        ip(n, &format!("addr add 172.31.77.{i}/24 dev mc0"));
        ip(
            n,
            "link add vxg type vxlan id 300 dstport 4789 group 239.1.1.1 dev mc0 ttl 5",
        );
        // No IPv6 on the overlay: its multicast chatter would blur the counts.
        vxtrace::netns::run_in(n, || {
            Ok(std::fs::write(
                "/proc/sys/net/ipv6/conf/vxg/disable_ipv6",
                "1",
            )?)
        })
        .unwrap();
        ip(n, &format!("addr add 192.168.77.{i}/24 dev vxg"));
        ip(n, "link set vxg up");
    }
    let mut on_a = Watcher::start(a, &["--netns", "self"]);
    // Addresses nobody has: their ARP requests are flooded to the group.
    let flooded = vxtrace_tests::unix_now();
    vxtrace::netns::run_in(a, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for host in 10..16 {
            let _ = s.send_to(b"x", format!("192.168.77.{host}:9"));
        }
        Ok(())
    })
    .unwrap();
    let member = "192.168.77.2".parse().unwrap();
    assert_eq!(
        vxtrace::lab::ping_from(a, member, 5, Duration::ZERO).unwrap(),
        5
    );
    // The group silent for longer than the outage threshold (1 s) and an
    // interval, as vxtrace reads it: the length of the silence is what is
    // tested.
    on_a.wait_for_read_after(flooded + 2.5, Duration::from_secs(20));
    let sa = on_a.stop();
    let group = sa.peer("239.1.1.1");
    // Everything sent to the group is a flooded copy (broadcast, or a MAC
    // the device had not learned): counted apart, never as traffic that
    // should be answered.
    assert!(group.counters.tx_flood.packets >= 6, "{}", json(&sa));
    assert_eq!(group.counters.tx_encap.packets, 0, "{}", json(&sa));
    assert!(group.findings.is_empty(), "{}", json(&sa));
    assert!(
        !group.silences.one_way && group.silences.outages_total == 0,
        "{}",
        json(&sa)
    );
    // B: its ARP reply and 5 echo replies in, 5 echoes out.
    let b_peer = sa.peer("172.31.77.2").counters;
    assert_eq!(b_peer.tx_encap.packets, 5, "{}", json(&sa));
    assert_eq!(b_peer.rx_nic.packets, 6, "{}", json(&sa));
    assert_eq!(b_peer.rx_decap.packets, 6, "{}", json(&sa));
}

/// A routed underlay whose uplinks change while vxtrace runs: node A
/// reaches B through `up1` at start; then a second uplink comes up and the
/// route to B's VTEP moves to it (as a fabric does when a link is added or
/// a path changes). vxtrace watches the new uplink within a refresh, says
/// so, and counts the echoes after the move exactly; no finding, where it
/// used to report "lost while encapsulating" with rx_decap above rx_nic.
#[test]
fn routed_underlay_uplink_added_while_running() {
    use vxtrace::schema::Line;
    use vxtrace_tests::sh;
    let ns = |n: &str| format!("vt-up-{n}");
    let (a, b) = (ns("a"), ns("b"));
    let _made = Namespaces::new(&[&a, &b]);
    let link = |nic: &str, far: &str, net: u8| {
        sh(&[
            "ip", "link", "add", nic, "netns", &a, "type", "veth", "peer", "name", far, "netns", &b,
        ]);
        ip(&a, &format!("link set {nic} up"));
        ip(&b, &format!("link set {far} up"));
        ip(&a, &format!("addr add 169.254.{net}.1/30 dev {nic}"));
        ip(&b, &format!("addr add 169.254.{net}.2/30 dev {far}"));
    };
    link("up1", "dn1", 1);
    ip(&a, "route add 10.9.8.2/32 via 169.254.1.2");
    ip(&b, "route add 10.9.8.1/32 via 169.254.1.1");
    for (n, i) in [(&a, 1u8), (&b, 2)] {
        routed_vtep(n, i, 6);
    }
    knows_vtep(&a, 2, 6);
    knows_vtep(&b, 1, 6);
    let mut on_a = Watcher::start(&a, &["--netns", "self"]);
    assert_eq!(on_a.attached.underlays, vec!["up1".to_string()]);
    let ping = |n| vxtrace::lab::ping_from(&a, "10.201.0.2".parse().unwrap(), n, Duration::ZERO);
    assert_eq!(ping(6).unwrap(), 6);
    // The new uplink; both ends route through it from now on.
    link("up2", "dn2", 2);
    ip(&a, "route replace 10.9.8.2/32 via 169.254.2.2");
    ip(&b, "route replace 10.9.8.1/32 via 169.254.2.1");
    let added = on_a
        .next_matching(
            |l| matches!(l, Line::DeviceAdded(d) if d.device == "up2"),
            Duration::from_secs(10),
        )
        .expect("no device_added event for up2");
    let Line::DeviceAdded(added) = added else {
        unreachable!()
    };
    assert!(added.message.contains("watching it"), "{}", added.message);
    assert_eq!(ping(8).unwrap(), 8);
    let sa = on_a.stop();
    assert_exact(&sa, "10.9.8.2", 14, 14, ICMP_IP_LEN, false);
    assert!(sa.peer("10.9.8.2").findings.is_empty(), "{}", json(&sa));
    assert_eq!(
        sa.underlays,
        vec!["up1".to_string(), "up2".to_string()],
        "{}",
        json(&sa)
    );
}
