//! vxtrace on a BGP EVPN fabric run by FRR (`vxtrace_tests::evpn`): a
//! spine route reflector, three leaves with their VTEP address on `lo` and
//! a bridged `vxlan100` whose FDB FRR programs, hosts behind the bridges.
//! Exact counts against tcpdump on the underlay, flooding through the
//! flood list, a host moving to another leaf, and `doctor` on the
//! layer-2 device: clean as FRR leaves it, and naming a VTEP the underlay
//! does not reach and a flood list that names this host.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Command,
    time::Duration,
};

use vxtrace::schema::{Check, DoctorReport, Line, Summary};
use vxtrace_tests::{
    ICMP_IP_LEN, Watcher,
    evpn::{
        self, EvpnLab, FdbRow, LEAVES, Packet, TEST_FRAME_LEN, UPLINK, VXLAN_DEV, gateway_mac, vtep,
    },
    json, outer_frame_len, run, sh,
};

fn doctor(ns: &str) -> (i32, DoctorReport) {
    let (code, out, err) = run(Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(vxtrace_tests::bin())
        .args(["doctor", "--json"]));
    assert!(!err.contains("panicked"), "{err}");
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not a doctor report ({e}): {out}; stderr: {err}"));
    (code, v)
}

fn key(a: Ipv4Addr) -> String {
    a.to_string()
}

/// (packets, bytes) of each of a peer's four counters.
fn counters(s: &Summary, peer: Ipv4Addr) -> [(u64, u64); 4] {
    let p = s.peer(&key(peer)).counters;
    [
        (p.tx_encap.packets, p.tx_encap.bytes),
        (p.rx_nic.packets, p.rx_nic.bytes),
        (p.rx_decap.packets, p.rx_decap.bytes),
        (p.tx_dev.packets, p.tx_dev.bytes),
    ]
}

/// The VXLAN device's own entries (those with a remote), sorted, as
/// (MAC, remote, flags, state).
fn vxlan_entries(rows: &[FdbRow]) -> Vec<(String, IpAddr, Vec<String>, String)> {
    let mut v: Vec<_> = rows
        .iter()
        .filter(|r| r.is_vxlan_entry())
        .map(|r| {
            (
                r.mac.clone(),
                r.dst.expect("a VXLAN entry"),
                r.flags.clone(),
                r.state.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

fn flags(f: &[&str]) -> Vec<String> {
    f.iter().map(|s| s.to_string()).collect()
}

/// What FRR programs on leaf1's `vxlan100`, and nothing else: each remote
/// host's MAC `extern_learn` behind its leaf's VTEP, the other gateways'
/// MACs `sticky static`, one flood entry per other VTEP; leaf1's own
/// host is the bridge's, never the VXLAN device's.
#[test]
fn evpn_frr_programs_the_leaf_fdb() {
    let lab = EvpnLab::up("evpn-fdb");
    let rows = lab.fdb(1);
    let v4 = |leaf| IpAddr::V4(vtep(leaf));
    let mut want = vec![
        (
            lab.host("h21").mac.clone(),
            v4(2),
            flags(&["self", "extern_learn"]),
            String::new(),
        ),
        (
            lab.host("h22").mac.clone(),
            v4(2),
            flags(&["self", "extern_learn"]),
            String::new(),
        ),
        (
            lab.host("h31").mac.clone(),
            v4(3),
            flags(&["self", "extern_learn"]),
            String::new(),
        ),
        (
            gateway_mac(2),
            v4(2),
            flags(&["self", "sticky"]),
            "static".into(),
        ),
        (
            gateway_mac(3),
            v4(3),
            flags(&["self", "sticky"]),
            "static".into(),
        ),
        (
            "00:00:00:00:00:00".into(),
            v4(2),
            flags(&["self"]),
            "permanent".into(),
        ),
        (
            "00:00:00:00:00:00".into(),
            v4(3),
            flags(&["self"]),
            "permanent".into(),
        ),
    ];
    want.sort();
    assert_eq!(vxlan_entries(&rows), want, "{rows:#?}");
    // The bridge sends the remote hosts to the VXLAN port.
    for h in ["h21", "h22", "h31"] {
        let mac = &lab.host(h).mac;
        assert!(
            rows.iter().any(|r| &r.mac == mac
                && r.master.as_deref() == Some(evpn::BRIDGE)
                && r.has_flag("extern_learn")),
            "{h}: {rows:#?}"
        );
    }
    // The spine reflects every leaf's routes to every other.
    let summary = lab.vtysh("spine", "show bgp l2vpn evpn summary");
    assert_eq!(
        summary.matches("Total number of neighbors 3").count(),
        1,
        "{summary}"
    );
}

/// 40 echoes from h11 (leaf1) to h21 (leaf2), counted by `vxtrace watch`
/// on leaf1 exactly as tcpdump sees them on leaf1's uplink: 40 VXLAN
/// packets of 148 bytes (84 IP + 14 inner Ethernet + 8 VXLAN + 8 UDP + 20
/// IP + 14 Ethernet) to leaf2's VTEP, 40 back, 40 frames of 98 bytes into
/// and out of `vxlan100`; nothing to or from leaf3, nothing unattributed
/// (the hosts' neighbour entries are permanent: no ARP). `doctor`, run at
/// start, has nothing to say.
#[test]
fn evpn_unicast_pings_counted_exactly() {
    const N: u64 = 40;
    let lab = EvpnLab::up("evpn-ping");
    let w = Watcher::start(&lab.leaf_ns(1), &[]);
    assert_eq!(w.attached.underlays, vec![UPLINK], "{}", json(&w.attached));
    assert!(w.attached.doctor.is_empty(), "{}", json(&w.attached.doctor));
    let dev = &w.attached.devices[0];
    assert_eq!(
        (dev.name.as_str(), dev.vni, dev.port, dev.bridged),
        (VXLAN_DEV, Some(evpn::VNI), evpn::PORT, true)
    );
    let cap = lab.capture(1);
    assert_eq!(lab.ping("h11", "h21", N as u32), N as u32);
    let s = w.stop();
    let wire = cap.stop();

    let outer = outer_frame_len(ICMP_IP_LEN, false);
    assert_eq!(outer, 148);
    let frame = ICMP_IP_LEN + 14;
    assert_eq!(
        counters(&s, vtep(2)),
        [
            (N, N * outer),
            (N, N * outer),
            (N, N * frame),
            (N, N * frame)
        ],
        "{}",
        json(&s)
    );
    assert_eq!(counters(&s, vtep(3)), [(0, 0); 4], "{}", json(&s));
    assert_eq!(s.unattributed.rx_decap.packets, 0, "{}", json(&s));
    assert_eq!(s.unattributed.tx_dev.packets, 0, "{}", json(&s));
    assert!(s.peer(&key(vtep(2))).findings.is_empty(), "{}", json(&s));
    // The wire agrees, packet for packet and byte for byte.
    assert_eq!(evpn::count(&wire, vtep(1), vtep(2)), N, "{wire:?}");
    assert_eq!(evpn::count(&wire, vtep(2), vtep(1)), N, "{wire:?}");
    assert_eq!(wire.len() as u64, 2 * N, "{wire:?}");
    assert!(wire.iter().all(|p: &Packet| p.len == outer), "{wire:?}");
}

/// Flooding through the flood list: h11 sends 25 frames to a MAC nobody
/// owns and 15 broadcasts (60-byte frames). leaf1's `vxlan100` takes each
/// once (40 `tx_dev`, unattributed: no peer owns those MACs) and sends a
/// copy to each VTEP of its flood list: 40 packets of 110 bytes (60 + 50)
/// to leaf2 and to leaf3, as tcpdump counts them, all of them flooded
/// copies (`tx_flood`), none unicast (`tx_encap`). Nobody answers a
/// flooded copy, so no peer gets a one-way, outage or loss finding. leaf2
/// receives 40 and delivers 40, attributed to leaf1 by h11's MAC.
#[test]
fn evpn_flooded_frames_counted_per_vtep() {
    const UNKNOWN: u64 = 25;
    const BROADCAST: u64 = 15;
    const N: u64 = UNKNOWN + BROADCAST;
    let lab = EvpnLab::up("evpn-flood");
    let on1 = Watcher::start(&lab.leaf_ns(1), &[]);
    let on2 = Watcher::start(&lab.leaf_ns(2), &[]);
    let cap = lab.capture(1);
    lab.send_unknown_unicast("h11", UNKNOWN as u32);
    lab.send_broadcast("h11", BROADCAST as u32);
    let s1 = on1.stop();
    let s2 = on2.stop();
    let wire = cap.stop();

    let outer = outer_frame_len(TEST_FRAME_LEN - 14, false);
    assert_eq!(outer, 110);
    for leaf in [2, 3] {
        assert_eq!(
            counters(&s1, vtep(leaf)),
            [(0, 0), (0, 0), (0, 0), (0, 0)],
            "leaf{leaf}: {}",
            json(&s1)
        );
        let p = s1.peer(&key(vtep(leaf)));
        assert_eq!(
            (p.counters.tx_flood.packets, p.counters.tx_flood.bytes),
            (N, N * outer),
            "leaf{leaf}: {}",
            json(&s1)
        );
        assert!(p.findings.is_empty(), "leaf{leaf}: {}", json(&s1));
        assert_eq!(evpn::count(&wire, vtep(1), vtep(leaf)), N, "{wire:?}");
    }
    assert_eq!(wire.len() as u64, 2 * N, "{wire:?}");
    assert_eq!(
        (s1.unattributed.tx_dev.packets, s1.unattributed.tx_dev.bytes),
        (N, N * TEST_FRAME_LEN),
        "{}",
        json(&s1)
    );
    assert_eq!(
        counters(&s2, vtep(1)),
        [(0, 0), (N, N * outer), (N, N * TEST_FRAME_LEN), (0, 0)],
        "{}",
        json(&s2)
    );
    assert_eq!(s2.unattributed.rx_decap.packets, 0, "{}", json(&s2));
}

/// h22 moves from leaf2 to leaf3 while vxtrace runs on leaf1: FRR
/// withdraws it from leaf2 and announces it from leaf3 with MAC mobility
/// (`MM:1`), and leaf1's `vxlan100` follows (one entry, `extern_learn`, to
/// leaf3's VTEP). vxtrace says the MAC moved, and counts exactly: the 20
/// echoes before the move on leaf2's peer, the 30 after it on leaf3's,
/// each way, and neither peer gets a finding.
#[test]
fn evpn_host_move_follows_to_the_new_vtep() {
    const BEFORE: u64 = 20;
    const AFTER: u64 = 30;
    let mut lab = EvpnLab::up("evpn-move");
    let mac = lab.host("h22").mac.clone();
    let mut w = Watcher::start(&lab.leaf_ns(1), &[]);
    assert_eq!(lab.ping("h11", "h22", BEFORE as u32), BEFORE as u32);
    lab.move_host("h22", 3);
    assert_eq!(lab.host("h22").leaf, 3);
    let entry = lab.wait_remote_mac(1, &mac, vtep(3));
    assert!(entry.has_flag("extern_learn"), "{entry:?}");
    // leaf3 announced it as a move: MAC mobility, sequence number 1.
    let routes = lab.vtysh("leaf1", "show bgp l2vpn evpn route type macip");
    let lines: Vec<&str> = routes.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(&format!("[{mac}]")))
        .unwrap_or_else(|| panic!("no route for {mac}: {routes}"));
    assert!(
        lines[at..(at + 3).min(lines.len())]
            .iter()
            .any(|l| l.contains("MM:1")),
        "{routes}"
    );
    // leaf2 now sends it to leaf3 too; leaf3 has it on its bridge.
    lab.wait_remote_mac(2, &mac, vtep(3));
    // leaf3's bridge has it on the host's port. (Its `vxlan100` may keep
    // the entry to leaf2 FRR installed before the move: the bridge, not
    // the VXLAN device, decides, and sends the host's frames to its port.)
    let (_, port_fdb, _) = run(Command::new("bridge").args([
        "-n",
        &lab.leaf_ns(3),
        "fdb",
        "show",
        "dev",
        &lab.host("h22").port,
    ]));
    assert!(port_fdb.contains(&mac), "{port_fdb}");
    // vxtrace follows the FDB: the move is an event.
    let moved = w
        .next_matching(
            |l| matches!(l, Line::MacMoved(m) if m.to == IpAddr::V4(vtep(3))),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no mac_moved event for {mac}"));
    let Line::MacMoved(moved) = moved else {
        unreachable!()
    };
    assert_eq!(moved.from, IpAddr::V4(vtep(2)));
    assert_eq!(
        moved.mac.map(|m| vxtrace::mac::format_mac(&m)),
        Some(mac.clone())
    );

    assert_eq!(lab.ping("h11", "h22", AFTER as u32), AFTER as u32);
    let s = w.stop();
    let outer = outer_frame_len(ICMP_IP_LEN, false);
    let frame = ICMP_IP_LEN + 14;
    let exact = |n: u64| {
        [
            (n, n * outer),
            (n, n * outer),
            (n, n * frame),
            (n, n * frame),
        ]
    };
    assert_eq!(counters(&s, vtep(2)), exact(BEFORE), "{}", json(&s));
    assert_eq!(counters(&s, vtep(3)), exact(AFTER), "{}", json(&s));
    for leaf in [2, 3] {
        assert!(
            s.peer(&key(vtep(leaf))).findings.is_empty(),
            "leaf{leaf}: {}",
            json(&s)
        );
    }
}

/// `doctor` on FRR's leaves, whose `vxlan100` is a layer-2 device: many
/// MACs behind one VTEP (`extern_learn`, `sticky static` for a static host
/// MAC and the gateways', and on leaf1 two hosts' MACs added by hand),
/// none with a neighbour entry on the VXLAN device: nothing to report. Then two real faults, each named exactly:
/// the underlay loses its route to leaf3's VTEP (its three entries, the
/// flood entry among them, go nowhere), and a flood list names leaf1's
/// own VTEP.
#[test]
fn evpn_doctor_is_clean_and_names_real_faults() {
    let lab = EvpnLab::up("evpn-doc");
    // Two sticky MACs behind leaf2's VTEP, as FRR installs EVPN's static
    // MACs and default gateways.
    lab.pin_host_mac("h21");
    let h21 = lab.host("h21").mac.clone();
    lab.wait_fdb(1, "h21's MAC sticky", |rows| {
        rows.iter()
            .any(|r| r.sends(&h21, vtep(2)) && r.has_flag("sticky"))
    });
    // And two silent hosts behind leaf2 programmed on leaf1 by hand
    // (static): a layer-2 device's FDB names hosts, several per VTEP.
    let leaf1 = lab.leaf_ns(1);
    for mac in ["0e:65:76:02:02:01", "0e:65:76:02:02:02"] {
        sh(&[
            "bridge",
            "-n",
            &leaf1,
            "fdb",
            "append",
            mac,
            "dev",
            VXLAN_DEV,
            "dst",
            &vtep(2).to_string(),
        ]);
    }
    for leaf in 1..=LEAVES {
        let (code, v) = doctor(&lab.leaf_ns(leaf));
        assert!(v.findings.is_empty(), "leaf{leaf}: {}", json(&v));
        assert_eq!(code, 0, "leaf{leaf}");
    }

    let route = format!("{}/32", vtep(3));
    sh(&["ip", "-n", &leaf1, "route", "del", &route]);
    let (code, v) = doctor(&leaf1);
    assert_eq!(code, 1, "{}", json(&v));
    let mut found: Vec<(Check, String)> = v
        .findings
        .iter()
        .map(|f| (f.check, json(&f.evidence["mac"])))
        .collect();
    found.sort_by_key(|(c, m)| (c.as_str(), m.clone()));
    let mut want = vec![
        (Check::FdbDstUnreachable, json(&"00:00:00:00:00:00")),
        (Check::FdbDstUnreachable, json(&gateway_mac(3))),
        (Check::FdbDstUnreachable, json(&lab.host("h31").mac)),
    ];
    want.sort_by_key(|(c, m)| (c.as_str(), m.clone()));
    assert_eq!(found, want, "{}", json(&v));
    for f in &v.findings {
        assert_eq!(json(&f.evidence["dst"]), json(&vtep(3).to_string()));
        assert!(
            f.fix.contains("does not carry VTEP 198.18.0.3") || f.message.starts_with("flood"),
            "{}",
            json(f)
        );
    }
    sh(&[
        "ip",
        "-n",
        &leaf1,
        "route",
        "add",
        &route,
        "via",
        &evpn::uplink_addrs(1).0.to_string(),
    ]);
    assert_eq!(doctor(&leaf1).0, 0);

    // A flood list copied to every leaf, this one's own VTEP included.
    sh(&[
        "bridge",
        "-n",
        &leaf1,
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        VXLAN_DEV,
        "dst",
        &vtep(1).to_string(),
    ]);
    let (code, v) = doctor(&leaf1);
    assert_eq!(code, 1, "{}", json(&v));
    assert_eq!(v.findings.len(), 1, "{}", json(&v));
    let f = &v.findings[0];
    assert_eq!(f.check, Check::FdbDstIsLocal, "{}", json(f));
    assert!(
        f.message
            .starts_with("flood entry 00:00:00:00:00:00 sends to 198.18.0.1"),
        "{}",
        json(f)
    );
    assert!(
        f.fix
            .contains("bridge fdb del 00:00:00:00:00:00 dev vxlan100 dst 198.18.0.1"),
        "{}",
        json(f)
    );
}

/// Subnet broadcasts (192.0.2.255) that h21, behind leaf2, sends reach
/// leaf1's bridge through the flood list. With no address on the bridge,
/// leaf1's kernel drops each. They are leaf2's host's traffic, but nothing
/// was lost: counted as "not loss" on leaf2's peer, never a finding.
#[test]
fn evpn_dropped_subnet_broadcasts_are_not_loss() {
    const N: u64 = 12;
    let lab = EvpnLab::up("evpn-bcast");
    let leaf1 = lab.leaf_ns(1);
    sh(&["ip", "-n", &leaf1, "addr", "flush", "dev", evpn::BRIDGE]);
    let w = Watcher::start(&leaf1, &[]);
    let h21 = lab.host("h21").ns.clone();
    vxtrace::netns::run_in(&h21, move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.set_broadcast(true)?;
        for _ in 0..N {
            s.send_to(b"vxtrace", "192.0.2.255:9")?;
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })
    .unwrap();
    let s = w.stop();
    let p = s.peer(&key(vtep(2)));
    let dropped: u64 = p.drops.values().sum();
    let not_loss: u64 = p.drops_not_loss.values().sum();
    assert_eq!((dropped, not_loss), (N, N), "{}", json(&s));
    assert!(p.findings.is_empty(), "{}", json(&s));
}
