//! The overlay failures the field reports most, reproduced with real kernel
//! behaviour in the lab, each counted exactly and named: bad outer
//! checksums, a port mismatch, a missing FDB entry, the VXLAN driver's own
//! drops, packets too big for the VXLAN device, and drops that lose no
//! traffic.

use std::{
    net::{IpAddr, Ipv4Addr, UdpSocket},
    time::Duration,
};

use vxtrace::schema::{Cause, Finding, MissingEntry, PeerSummary, Summary};
use vxtrace_tests::{
    LabGuard, RawUdp, Watcher, icmp_echo, json, kernel_has_reason, parse_mac, sh, vxlan_payload,
};

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => panic!("an IPv4 lab"),
    }
}

/// The peer's finding of this cause, or a failure that shows the summary.
fn finding<'a>(p: &'a PeerSummary, cause: Cause, s: &Summary) -> &'a Finding {
    p.findings
        .iter()
        .find(|f| f.kind == cause)
        .unwrap_or_else(|| panic!("no {} finding: {}", cause.as_str(), json(s)))
}

fn drops(p: &PeerSummary, reason: &str) -> u64 {
    p.drops.get(reason).copied().unwrap_or(0)
}

/// (port, rx, tx) of VXLAN on ports no device here uses.
fn mismatch(p: &PeerSummary) -> Vec<(u16, u64, u64)> {
    p.port_mismatch
        .iter()
        .map(|m| (m.port, m.rx, m.tx))
        .collect()
}

/// Drops at a location in this function (kernels that give no reason).
fn drops_at(p: &PeerSummary, function: &str) -> u64 {
    p.drop_locations
        .iter()
        .filter(|l| l.location.starts_with(&format!("{function}+")))
        .map(|l| l.count)
        .sum()
}

/// A VXLAN packet from node `from`'s underlay address to node `to`'s VXLAN
/// port, carrying an ICMP echo from pod `from` to pod `to`.
fn crafted(lab: &LabGuard, from: u8, to: u8) -> RawUdp {
    let inner = icmp_echo(lab.pod_ip(from), lab.pod_ip(to), 0, 1);
    RawUdp {
        src: v4(lab.underlay_ip(from)),
        dst: v4(lab.underlay_ip(to)),
        sport: 40_001,
        dport: lab.port,
        tos: 0,
        wrong_checksum: false,
        payload: vxlan_payload(
            0x08,
            lab.vni,
            parse_mac(&lab.vtep_mac(to)),
            parse_mac(&lab.vtep_mac(from)),
            &inner,
        ),
    }
}

/// A checksum-offload bug on the sender (or NAT rewriting the outer
/// header) leaves wrong outer UDP checksums: the receiver drops exactly
/// those packets as UDP_CSUM and counts them in UdpInCsumErrors; the rest
/// of the peer's traffic passes.
#[test]
fn bad_outer_udp_checksums() {
    let lab = LabGuard::new("vt-csum", 2, false, 8472);
    let a = lab.underlay_ip(1).to_string();
    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", "self"]);
    let good = crafted(&lab, 1, 2);
    let bad = RawUdp {
        wrong_checksum: true,
        ..crafted(&lab, 1, 2)
    };
    bad.send_from(&lab.node_ns(1), 7);
    good.send_from(&lab.node_ns(1), 4);
    // And ordinary traffic, both ways.
    assert_eq!(lab.ping(1, 2, 5, Duration::ZERO).unwrap(), 5);
    let sb = on_b.stop();
    let b_a = sb.peer(&a);
    assert_eq!(b_a.counters.rx_nic.packets, 16, "{}", json(&sb));
    assert_eq!(b_a.counters.rx_decap.packets, 9, "{}", json(&sb));
    assert_eq!(
        sb.netstat_udp.get("UdpInCsumErrors").copied(),
        Some(7),
        "{}",
        json(&sb)
    );
    if kernel_has_reason("UDP_CSUM") {
        assert_eq!(b_a.drops_outer.get("UDP_CSUM"), Some(&7), "{}", json(&sb));
        assert_eq!(drops(&b_a, "UDP_CSUM"), 7, "{}", json(&sb));
        let f = finding(&b_a, Cause::BadChecksum, &sb);
        assert!(f.headline.contains("7 VXLAN packets"), "{}", f.headline);
        assert!(f.fix.contains("tx-checksum-ip-generic off"), "{}", f.fix);
        // The checksum rule explains the gap; nothing else is raised.
        assert_eq!(b_a.findings.len(), 1, "{}", json(&sb));
    } else {
        assert_eq!(
            drops_at(&b_a, "udp_queue_rcv_one_skb") + drops_at(&b_a, "__udp4_lib_rcv"),
            7,
            "{}",
            json(&sb)
        );
    }
}

/// One node sends VXLAN to 4789, the other listens on 8472: the packets
/// reach the NIC and die as NO_SOCKET. The receiver names the mismatch
/// with both ports; an extra `--port` is recognised the same way.
#[test]
fn port_mismatch_between_nodes() {
    let lab = LabGuard::new("vt-pmis", 2, false, 8472);
    let a = lab.underlay_ip(1).to_string();
    let mut on_4789 = lab.lab.clone();
    on_4789.port = 4789;
    on_4789.recreate_vxlan(1).unwrap();

    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", "self"]);
    assert_eq!(on_b.attached.ports, vec![8472]);
    assert_eq!(on_b.attached.mismatch_ports, vec![4789]);
    assert_eq!(lab.ping(1, 2, 6, Duration::ZERO).unwrap(), 0);
    let sb = on_b.stop();
    let b_a = sb.peer(&a);
    assert_eq!(mismatch(&b_a), vec![(4789, 6, 0)], "{}", json(&sb));
    // Not this overlay's traffic: not counted as such.
    assert_eq!(b_a.counters.rx_nic.packets, 0, "{}", json(&sb));
    assert_eq!(b_a.counters.malformed, 0, "{}", json(&sb));
    if kernel_has_reason("NO_SOCKET") {
        assert_eq!(b_a.drops_outer.get("NO_SOCKET"), Some(&6), "{}", json(&sb));
    }
    let f = finding(&b_a, Cause::PortMismatch, &sb);
    assert!(
        f.headline.contains("port 4789") && f.headline.contains("listens on 8472"),
        "{}",
        f.headline
    );
    assert!(f.headline.contains("6 packets"), "{}", f.headline);
    assert!(b_a.drops_not_loss.is_empty(), "{}", json(&sb));

    // A custom port, given beside the device's own with --port.
    let mut on_4790 = lab.lab.clone();
    on_4790.port = 4790;
    on_4790.recreate_vxlan(1).unwrap();
    let on_b = Watcher::start(
        &lab.node_ns(2),
        &["--netns", "self", "--port", "8472", "--port", "4790"],
    );
    assert_eq!(on_b.attached.ports, vec![8472]);
    assert_eq!(on_b.attached.mismatch_ports, vec![4789, 4790]);
    assert_eq!(lab.ping(1, 2, 3, Duration::ZERO).unwrap(), 0);
    let sb = on_b.stop();
    let b_a = sb.peer(&a);
    assert_eq!(mismatch(&b_a), vec![(4790, 3, 0)], "{}", json(&sb));
    let f = finding(&b_a, Cause::PortMismatch, &sb);
    assert!(f.headline.contains("port 4790"), "{}", f.headline);
}

/// The overlay agent lost the FDB entry of a peer's VTEP MAC: frames to
/// its pods die in the VXLAN driver as they are sent. They are counted
/// against the VTEP the route points at, and the missing entry is named;
/// `doctor` finds the same from the tables alone.
#[test]
fn missing_fdb_entry_for_a_peer() {
    let lab = LabGuard::new("vt-nofdb", 2, false, 8472);
    let (ns_a, b) = (lab.node_ns(1), lab.underlay_ip(2).to_string());
    let (vtep_b, mac_b) = (lab.vtep_ip(2), lab.vtep_mac(2));
    sh(&[
        "bridge",
        "-n",
        &ns_a,
        "fdb",
        "del",
        &mac_b,
        "dev",
        "flannel.1",
        "dst",
        &b,
    ]);
    let on_a = Watcher::start(&ns_a, &["--netns", "self"]);
    let doctor = on_a
        .attached
        .doctor
        .iter()
        .map(|d| d.check.as_str())
        .collect::<Vec<_>>();
    assert!(doctor.contains(&"neighbour_without_fdb"), "{doctor:?}");
    assert_eq!(lab.ping(1, 2, 6, Duration::ZERO).unwrap(), 0);
    let sa = on_a.stop();
    let [u] = sa.unresolved.as_slice() else {
        panic!("one unresolved VTEP expected: {}", json(&sa));
    };
    assert_eq!(u.vtep, IpAddr::V4(vtep_b));
    assert_eq!(u.missing, MissingEntry::FdbEntry);
    assert_eq!(u.mac.as_deref(), Some(mac_b.as_str()));
    assert_eq!(u.subnets, vec!["10.244.1.0/24".to_string()]);
    let reason = if kernel_has_reason("NO_TX_TARGET") {
        "NO_TX_TARGET"
    } else if kernel_has_reason("VXLAN_NO_REMOTE") {
        "VXLAN_NO_REMOTE"
    } else {
        // Named by where it happens: the driver's transmit path.
        "VXLAN_TX_DROP"
    };
    assert_eq!(u.drops.get(reason), Some(&6), "{}", json(&sa));
    let f = u
        .finding
        .as_ref()
        .unwrap_or_else(|| panic!("no finding: {}", json(&sa)));
    assert_eq!(f.kind, Cause::MissingFdbEntry);
    assert!(f.headline.contains("6 frames"), "{}", f.headline);
    assert!(f.fix.contains("bridge fdb append"), "{}", f.fix);
    // Every kernel counts them on the device too (kernels without drop
    // reasons only there); the device's own multicast (IPv6 neighbour
    // discovery, which has no remote either) may add to it.
    let tx_dropped = sa
        .device_errors
        .get("flannel.1")
        .and_then(|d| d.get("tx_dropped"))
        .copied()
        .unwrap_or(0);
    assert!(tx_dropped >= 6, "{}", json(&sa));
    // The VTEP address is no peer of its own.
    assert!(!sa.peers.contains_key(&IpAddr::V4(vtep_b)), "{}", json(&sa));
}

/// Crafted VXLAN from a peer that the VXLAN driver refuses, each kind for
/// its own reason: an unknown VNI, reserved header bits, this device's own
/// MAC as inner source, a congestion mark on traffic that is not
/// ECN-capable, and (with learning on) a multicast inner source MAC.
/// Kernels before 6.13 give no reasons there: all are counted where they
/// happen, in the driver's receive path.
#[test]
fn vxlan_driver_drop_reasons() {
    let lab = LabGuard::new("vt-drv", 2, false, 8472);
    let (ns_a, ns_b) = (lab.node_ns(1), lab.node_ns(2));
    let a = lab.underlay_ip(1).to_string();
    let on_b = Watcher::start(&ns_b, &["--netns", "self"]);
    let base = crafted(&lab, 1, 2);
    let with_header = |flags: u8, vni: u32, src_mac: [u8; 6]| RawUdp {
        payload: vxlan_payload(
            flags,
            vni,
            parse_mac(&lab.vtep_mac(2)),
            src_mac,
            &icmp_echo(lab.pod_ip(1), lab.pod_ip(2), 0, 1),
        ),
        ..crafted(&lab, 1, 2)
    };
    let mac_a = parse_mac(&lab.vtep_mac(1));
    with_header(0x08, 7, mac_a).send_from(&ns_a, 3);
    with_header(0x0c, 1, mac_a).send_from(&ns_a, 4);
    with_header(0x08, 1, parse_mac(&lab.vtep_mac(2))).send_from(&ns_a, 5);
    RawUdp { tos: 3, ..base }.send_from(&ns_a, 6);
    sh(&[
        "ip",
        "-n",
        &ns_b,
        "link",
        "set",
        "flannel.1",
        "type",
        "vxlan",
        "learning",
    ]);
    with_header(0x08, 1, [0x01, 0x00, 0x5e, 0, 0, 1]).send_from(&ns_a, 2);
    let sb = on_b.stop();
    let b_a = sb.peer(&a);
    let expected: &[(&str, u64)] = if kernel_has_reason("VXLAN_VNI_NOT_FOUND") {
        &[
            ("VXLAN_VNI_NOT_FOUND", 3),
            ("VXLAN_INVALID_HDR", 4),
            ("LOCAL_MAC", 5),
            ("IP_TUNNEL_ECN", 6),
            ("MAC_INVALID_SOURCE", 2),
        ]
    } else {
        &[("VXLAN_RX_DROP", 20)]
    };
    for (reason, n) in expected {
        assert_eq!(drops(&b_a, reason), *n, "{reason}: {}", json(&sb));
    }
    assert!(b_a.drops_not_loss.is_empty(), "{}", json(&sb));
    assert_eq!(b_a.counters.unknown_vni, 3, "{}", json(&sb));
    assert_eq!(b_a.counters.malformed_rx, 4, "{}", json(&sb));
    assert_eq!(b_a.counters.rx_decap.packets, 0, "{}", json(&sb));
    let f = finding(&b_a, Cause::VxlanDriverDrops, &sb);
    assert!(f.headline.contains("dropped 20 packets"), "{}", f.headline);
    for (reason, _) in expected {
        assert!(
            f.cause.contains(reason),
            "{reason} unexplained: {}",
            f.cause
        );
    }
    if expected.len() > 1 {
        assert!(f.cause.contains("VNI"), "{}", f.cause);
        assert!(f.cause.contains("same MAC"), "{}", f.cause);
        assert!(f.cause.contains("ECN"), "{}", f.cause);
    }
}

/// A pod whose MTU (1500) is above the VXLAN device's (1450) sends
/// full-size datagrams with don't-fragment set: the node drops each as too
/// big and says how big, per peer; small ones pass.
#[test]
fn pod_mtu_above_the_vxlan_device() {
    let lab = LabGuard::new("vt-mtu", 2, false, 8472);
    let (ns_a, pod_a) = (lab.node_ns(1), lab.pod_ns(1));
    let b = lab.underlay_ip(2).to_string();
    for (ns, dev) in [(&ns_a, "cni0"), (&ns_a, "veth0"), (&pod_a, "eth0")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "mtu", "1500"]);
    }
    let on_a = Watcher::start(&ns_a, &["--netns", "self"]);
    let dst = (lab.pod_ip(2), 5555);
    vxtrace::netns::run_in(&pod_a, || {
        use std::os::fd::AsRawFd as _;
        let s = UdpSocket::bind("0.0.0.0:0")?;
        // Don't fragment, whatever the route learned: every large one is
        // sent at its full size.
        let probe: libc::c_int = libc::IP_PMTUDISC_PROBE;
        // SAFETY: setsockopt reads an int from a live local.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                &probe as *const libc::c_int as *const _,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0, "IP_MTU_DISCOVER");
        for _ in 0..5 {
            s.send_to(&[0x5a; 1472], dst)?;
            std::thread::sleep(Duration::from_millis(2));
        }
        for _ in 0..3 {
            s.send_to(&[0x5a; 100], dst)?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
    .unwrap();
    let sa = on_a.stop();
    let a_b = sa.peer(&b);
    assert_eq!(a_b.counters.tx_dev.packets, 3, "{}", json(&sa));
    assert_eq!(a_b.counters.tx_encap.packets, 3, "{}", json(&sa));
    if kernel_has_reason("PKT_TOO_BIG") {
        assert_eq!(drops(&a_b, "PKT_TOO_BIG"), 5, "{}", json(&sa));
        let t = a_b
            .too_big
            .unwrap_or_else(|| panic!("no too_big: {}", json(&sa)));
        assert_eq!((t.packets, t.largest_bytes), (5, 1500), "{}", json(&sa));
        let f = finding(&a_b, Cause::PacketTooBig, &sa);
        assert!(f.headline.contains("5 packets"), "{}", f.headline);
        assert!(f.headline.contains("1500 bytes"), "{}", f.headline);
    } else {
        assert_eq!(drops_at(&a_b, "ip_forward"), 5, "{}", json(&sa));
    }
}

/// A busy node drops packets that lose no traffic: a raw socket's filter
/// turning its copy away, datagrams to a port nothing listens on, echo
/// replies no ping socket wanted. They are counted apart, and a healthy
/// peer gets no finding from them.
#[test]
fn drops_that_are_not_loss_raise_nothing() {
    let lab = LabGuard::new("vt-quiet", 2, false, 8472);
    let a = lab.underlay_ip(1).to_string();
    // A raw ICMP socket in B's pod whose filter takes nothing: every echo
    // request's copy is declined (SOCKET_FILTER), as ping's own filter
    // declines other pings' replies.
    let filtered = vxtrace::netns::run_in(&lab.pod_ns(2), || {
        // SAFETY: a socket we own, and a one-instruction classic BPF
        // program ("return 0") that outlives the call.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut reject = [libc::sock_filter {
                code: 0x06, // BPF_RET | BPF_K
                jt: 0,
                jf: 0,
                k: 0,
            }];
            let prog = libc::sock_fprog {
                len: 1,
                filter: reject.as_mut_ptr(),
            };
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &prog as *const libc::sock_fprog as *const _,
                std::mem::size_of::<libc::sock_fprog>() as u32,
            );
            assert_eq!(
                rc,
                0,
                "SO_ATTACH_FILTER: {}",
                std::io::Error::last_os_error()
            );
            Ok(fd)
        }
    })
    .unwrap();
    // All namespaces: the pod's drops are in its own.
    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", "all"]);
    assert_eq!(lab.ping(1, 2, 10, Duration::ZERO).unwrap(), 10);
    vxtrace::netns::run_in(&lab.pod_ns(1), || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..4 {
            s.send_to(&[0x5a; 32], (lab.pod_ip(2), 5999))?;
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
    .unwrap();
    let sb = on_b.stop();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(filtered) };
    let b_a = sb.peer(&a);
    assert_eq!(b_a.counters.rx_decap.packets, 14, "{}", json(&sb));
    assert_eq!(
        b_a.drops_not_loss.get("SOCKET_FILTER"),
        Some(&10),
        "{}",
        json(&sb)
    );
    // NO_SOCKET: the 4 datagrams to the closed port, and the 10 echo
    // replies in A's pod, where the lab's pinger listens on a raw socket
    // and no ping socket takes them.
    assert_eq!(
        b_a.drops_not_loss.get("NO_SOCKET"),
        Some(&14),
        "{}",
        json(&sb)
    );
    // Every drop of the peer's traffic is of the not-loss kind (the node
    // may free a stray multicast packet of it too, NOT_SPECIFIED).
    assert_eq!(b_a.drops, b_a.drops_not_loss, "{}", json(&sb));
    assert!(b_a.drops_outer.is_empty(), "{}", json(&sb));
    assert!(b_a.findings.is_empty(), "{}", json(&sb));
    assert!(b_a.hints.is_empty(), "{}", json(&sb));
}
