//! Header parsing of the real kernel programs, on crafted frames, through
//! BPF_PROG_TEST_RUN: the verifier-approved object is what runs.

use std::net::IpAddr;

use aya::programs::{TestRun as _, TestRunOptions};
use vxtrace::probes::{AttachPolicy, Readout, Tracer, TracerConfig};
use vxtrace_common::{
    PeerKey, PeerStats,
    names::{maps, programs},
    packets_over,
};

const LOCAL4: [u8; 4] = [192, 0, 2, 11];
const PEER4: [u8; 4] = [192, 0, 2, 12];
const LOCAL6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
];
const PEER6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12,
];
const PEER_MAC: [u8; 6] = [0x0e, 0x76, 0x78, 0, 0, 2];
const LOCAL_MAC: [u8; 6] = [0x0e, 0x76, 0x78, 0, 0, 1];
/// A VXLAN device's ifindex, as registered with the programs. Test runs
/// pass it in the skb context, so it has to be a real device: the test runs
/// in its own namespace with a veth pair (the first gets ifindex 2, after lo).
const DEV_IFINDEX: u32 = 2;
const TC_NEXT: u32 = u32::MAX; // -1: the programs never change a verdict

/// The tests' configuration: both well-known ports, the local VTEP
/// addresses, 64 peers.
fn tracer_config() -> TracerConfig {
    TracerConfig {
        foreign_ports: Vec::new(),
        reason_too_big: None,
        ports: vec![8472, 4789],
        local_addrs: vec![IpAddr::from(LOCAL4), IpAddr::from(LOCAL6)],
        gbp: false,
        filter_vni: true,
        max_peers: 64,
        max_macs: 64,
        offsets: vxtrace_common::KernelOffsets::none(),
        netns_scope_all: true,
        raw_tp_has_reason: true,
        raw_tp_has_rx_sk: false,
    }
}

fn tracer() -> Tracer {
    let cfg = tracer_config();
    let mut t = Tracer::load(&cfg, &vxtrace::probes::LoaderBtf::None, AttachPolicy::Auto)
        .expect("loading the programs");
    t.register_device(DEV_IFINDEX, Some(1), Some(LOCAL_MAC), false)
        .unwrap();
    t
}

// ---- frame builders (network byte order throughout) ----

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

fn ipv6(src: [u8; 16], dst: [u8; 16], nh: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[nh, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

fn vxlan(flags: u32, vni_word: u32, inner: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&vni_word.to_be_bytes());
    h.extend_from_slice(inner);
    h
}

/// A decapsulated frame: peer VTEP MAC -> our VTEP MAC, a small IPv4 packet.
fn inner(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let ip = ipv4(
        [10, 244, 1, 2],
        [10, 244, 0, 2],
        1,
        0,
        &[8, 0, 0, 0, 0, 0, 0, 0],
    );
    eth(dst_mac, src_mac, 0x0800, &ip)
}

fn valid_vxlan(vni: u32) -> Vec<u8> {
    vxlan(0x0800_0000, vni << 8, &inner(PEER_MAC, LOCAL_MAC))
}

fn outer4(src: [u8; 4], dst: [u8; 4], dport: u16, vx: &[u8]) -> Vec<u8> {
    eth(
        LOCAL_MAC,
        PEER_MAC,
        0x0800,
        &ipv4(src, dst, 17, 0, &udp(dport, vx)),
    )
}

fn rx4(vx: &[u8]) -> Vec<u8> {
    outer4(PEER4, LOCAL4, 8472, vx)
}

/// Runs `prog` once on `frame` (with an optional skb context).
fn run(t: &Tracer, prog: &str, frame: &[u8], ctx: Option<&[u8]>) {
    let p = t.program(prog).unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: ctx,
        repeat: 1,
        ..Default::default()
    };
    let r = p.test_run(opts).expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, TC_NEXT, "{prog} changed the verdict");
}

/// An skb context with `ifindex` and `gso_segs` set (offsets from struct
/// __sk_buff, which is UAPI and stable).
fn skb_ctx(ifindex: u32, gso_segs: u32) -> Vec<u8> {
    let mut c = vec![0u8; 192];
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    if gso_segs > 1 {
        c[176..180].copy_from_slice(&1400u32.to_ne_bytes());
    }
    c
}

fn peer(r: &Readout, addr: &[u8]) -> PeerStats {
    let key = if addr.len() == 4 {
        PeerKey::from_v4(addr.try_into().unwrap())
    } else {
        PeerKey::from_v6(addr.try_into().unwrap())
    };
    r.peer(&key).unwrap_or_default()
}

/// Every case in a namespace of its own, with a veth standing in for the VXLAN device.
fn in_test_netns(f: impl FnOnce() + Send) {
    let ns = "vt-parse";
    if std::path::Path::new("/run/netns").join(ns).exists() {
        vxtrace_tests::sh(&["ip", "netns", "delete", ns]);
    }
    vxtrace_tests::sh(&["ip", "netns", "add", ns]);
    vxtrace_tests::sh(&[
        "ip", "-n", ns, "link", "add", "vt0", "type", "veth", "peer", "name", "vt1",
    ]);
    let result = vxtrace::netns::run_in(ns, || {
        // Every test run on one CPU: the per-peer map has an entry per
        // (peer, CPU), so a thread that moved between runs would split a
        // peer's counts into entries the tests do not expect.
        // SAFETY: no arguments.
        vxtrace_tests::pin_to_cpu(unsafe { libc::sched_getcpu() }.max(0) as usize);
        f();
        Ok(())
    });
    vxtrace_tests::sh(&["ip", "netns", "delete", ns]);
    result.unwrap();
}

#[test]
fn valid_vxlan_is_counted_per_peer_and_direction() {
    in_test_netns(|| {
        let t = tracer();
        let frame = rx4(&valid_vxlan(1));
        run(&t, programs::NIC_INGRESS, &frame, None);
        run(
            &t,
            programs::NIC_INGRESS,
            &outer4(PEER4, LOCAL4, 4789, &valid_vxlan(1)),
            None,
        );
        // Egress: local -> peer.
        run(
            &t,
            programs::NIC_EGRESS,
            &outer4(LOCAL4, PEER4, 8472, &valid_vxlan(1)),
            None,
        );
        let r = t.read().unwrap();
        let p = peer(&r, &PEER4);
        assert_eq!(p.rx_nic.packets, 2);
        assert_eq!(p.rx_nic.bytes, 2 * frame.len() as u64);
        assert_eq!(p.tx_encap.packets, 1);
        assert_eq!(p.tx_encap.bytes, frame.len() as u64);
        assert_eq!(p.malformed_rx + p.malformed_tx + p.unknown_vni, 0);
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.global.peers_inserted, 1);
    });
}

#[test]
fn vlan_tags_and_ipv6_underlay() {
    in_test_netns(|| {
        let t = tracer();
        let ip = ipv4(PEER4, LOCAL4, 17, 0, &udp(8472, &valid_vxlan(1)));
        let mut tagged = vec![0, 0x64];
        tagged.extend_from_slice(&0x0800u16.to_be_bytes());
        tagged.extend_from_slice(&ip);
        run(
            &t,
            programs::NIC_INGRESS,
            &eth(LOCAL_MAC, PEER_MAC, 0x8100, &tagged),
            None,
        );
        let mut qinq = vec![0, 0x10];
        qinq.extend_from_slice(&0x8100u16.to_be_bytes());
        qinq.extend_from_slice(&tagged);
        run(
            &t,
            programs::NIC_INGRESS,
            &eth(LOCAL_MAC, PEER_MAC, 0x88a8, &qinq),
            None,
        );
        let v6 = eth(
            LOCAL_MAC,
            PEER_MAC,
            0x86dd,
            &ipv6(PEER6, LOCAL6, 17, &udp(8472, &valid_vxlan(1))),
        );
        run(&t, programs::NIC_INGRESS, &v6, None);
        // An IPv6 extension header before UDP: not parsed, not counted.
        let hop = ipv6(PEER6, LOCAL6, 0, &udp(8472, &valid_vxlan(1)));
        run(
            &t,
            programs::NIC_INGRESS,
            &eth(LOCAL_MAC, PEER_MAC, 0x86dd, &hop),
            None,
        );
        let r = t.read().unwrap();
        assert_eq!(peer(&r, &PEER4).rx_nic.packets, 2);
        assert_eq!(peer(&r, &PEER6).rx_nic.packets, 1);
        assert_eq!(peer(&r, &PEER6).rx_nic.bytes, v6.len() as u64);
        assert_eq!(r.peers.len(), 2);
    });
}

#[test]
fn malformed_vxlan_is_counted_and_never_traffic() {
    in_test_netns(|| {
        let t = tracer();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("short header", vec![0x08, 0, 0, 0]),
            ("empty payload", vec![]),
            (
                "I flag clear",
                vxlan(0, 1 << 8, &inner(PEER_MAC, LOCAL_MAC)),
            ),
            ("garbage", vec![0xff; 40]),
            (
                "reserved flag bits",
                vxlan(
                    0x0800_0000 | 0x0001_0000,
                    1 << 8,
                    &inner(PEER_MAC, LOCAL_MAC),
                ),
            ),
            (
                "reserved byte after VNI",
                vxlan(0x0800_0000, (1 << 8) | 0x5, &inner(PEER_MAC, LOCAL_MAC)),
            ),
            (
                "truncated inner frame",
                vxlan(0x0800_0000, 1 << 8, &[0u8; 6]),
            ),
        ];
        for (_, vx) in &cases {
            run(&t, programs::NIC_INGRESS, &rx4(vx), None);
        }
        run(
            &t,
            programs::NIC_EGRESS,
            &outer4(LOCAL4, PEER4, 8472, &[1, 2, 3]),
            None,
        );
        let r = t.read().unwrap();
        let p = peer(&r, &PEER4);
        assert_eq!(p.malformed_rx, cases.len() as u64, "{p:?}");
        assert_eq!(p.malformed_tx, 1);
        assert_eq!(p.rx_nic.packets, 0);
        assert_eq!(p.tx_encap.packets, 0);
        assert_eq!(p.unknown_vni, 0);
        // Nothing was learned from garbage.
        run(
            &t,
            programs::VXLAN_INGRESS,
            &inner(PEER_MAC, LOCAL_MAC),
            Some(&skb_ctx(DEV_IFINDEX, 0)),
        );
        let r = t.read().unwrap();
        assert_eq!(peer(&r, &PEER4).rx_decap.packets, 0);
        assert_eq!(r.global.rx_decap_unattributed.packets, 1);
    });
}

#[test]
fn what_is_not_vxlan_to_us_is_ignored() {
    in_test_netns(|| {
        let t = tracer();
        // Another UDP port, TCP to the VXLAN port, a destination that is not
        // a local VTEP, a non-first fragment, ARP.
        run(
            &t,
            programs::NIC_INGRESS,
            &outer4(PEER4, LOCAL4, 9999, &valid_vxlan(1)),
            None,
        );
        let tcp = eth(
            LOCAL_MAC,
            PEER_MAC,
            0x0800,
            &ipv4(PEER4, LOCAL4, 6, 0, &udp(8472, &valid_vxlan(1))),
        );
        run(&t, programs::NIC_INGRESS, &tcp, None);
        run(
            &t,
            programs::NIC_INGRESS,
            &outer4(PEER4, [192, 0, 2, 99], 8472, &valid_vxlan(1)),
            None,
        );
        let frag = eth(
            LOCAL_MAC,
            PEER_MAC,
            0x0800,
            &ipv4(PEER4, LOCAL4, 17, 185, &udp(8472, &valid_vxlan(1))),
        );
        run(&t, programs::NIC_INGRESS, &frag, None);
        run(
            &t,
            programs::NIC_INGRESS,
            &eth([0xff; 6], PEER_MAC, 0x0806, &[0u8; 28]),
            None,
        );
        // Runt frame: shorter than an Ethernet header.
        run(&t, programs::NIC_INGRESS, &[0u8; 14], None);
        let r = t.read().unwrap();
        assert!(r.peers.is_empty(), "{:?}", r.peers);
    });
}

#[test]
fn unknown_vni_fragments_sizes_and_gso() {
    in_test_netns(|| {
        let t = tracer();
        run(&t, programs::NIC_INGRESS, &rx4(&valid_vxlan(7)), None);
        // First fragment (MF set, offset 0): counted, and flagged.
        let first = eth(
            LOCAL_MAC,
            PEER_MAC,
            0x0800,
            &ipv4(PEER4, LOCAL4, 17, 0x2000, &udp(8472, &valid_vxlan(1))),
        );
        run(&t, programs::NIC_INGRESS, &first, None);
        // Outer IP of 1480 and 1550 bytes.
        for total in [1480usize, 1550] {
            let mut vx = valid_vxlan(1);
            vx.resize(total - 20 - 8, 0);
            run(&t, programs::NIC_INGRESS, &rx4(&vx), None);
        }
        // A GRO aggregate of 10 segments counts as 10 packets.
        let frame = rx4(&valid_vxlan(1));
        run(&t, programs::NIC_INGRESS, &frame, Some(&skb_ctx(0, 10)));
        let r = t.read().unwrap();
        let p = peer(&r, &PEER4);
        assert_eq!(p.unknown_vni, 1);
        assert_eq!(p.rx_fragmented, 1);
        assert_eq!(packets_over(&p.rx_size, 1450), 1 + 1, "{p:?}");
        assert_eq!(packets_over(&p.rx_size, 1500), 1);
        assert_eq!(p.rx_nic.packets, 1 + 2 + 10);
    });
}

#[test]
fn decapsulated_frames_find_their_peer() {
    in_test_netns(|| {
        let mut t = tracer();
        let ctx = skb_ctx(DEV_IFINDEX, 0);
        // Before anything is known: unattributed.
        run(
            &t,
            programs::VXLAN_INGRESS,
            &inner(PEER_MAC, LOCAL_MAC),
            Some(&ctx),
        );
        // The NIC sees the peer's packet and learns its inner source MAC.
        run(&t, programs::NIC_INGRESS, &rx4(&valid_vxlan(1)), None);
        run(
            &t,
            programs::VXLAN_INGRESS,
            &inner(PEER_MAC, LOCAL_MAC),
            Some(&ctx),
        );
        run(
            &t,
            programs::VXLAN_INGRESS,
            &inner(PEER_MAC, LOCAL_MAC),
            Some(&ctx),
        );
        // Egress to the peer's MAC is attributed by the same entry.
        run(
            &t,
            programs::VXLAN_EGRESS,
            &inner(LOCAL_MAC, PEER_MAC),
            Some(&ctx),
        );
        // A MAC known only from the FDB.
        let other_mac = [0x0e, 0x76, 0x78, 0, 0, 3];
        let other: IpAddr = "192.0.2.13".parse().unwrap();
        t.seed_mac(1, other_mac, &other).unwrap();
        run(
            &t,
            programs::VXLAN_EGRESS,
            &inner(LOCAL_MAC, other_mac),
            Some(&ctx),
        );
        // Broadcast: belongs to no peer.
        run(
            &t,
            programs::VXLAN_EGRESS,
            &inner(LOCAL_MAC, [0xff; 6]),
            Some(&ctx),
        );
        // A device that is not registered: ignored.
        run(
            &t,
            programs::VXLAN_INGRESS,
            &inner(PEER_MAC, LOCAL_MAC),
            Some(&skb_ctx(1, 0)),
        );
        let r = t.read().unwrap();
        let p = peer(&r, &PEER4);
        let frame_len = inner(PEER_MAC, LOCAL_MAC).len() as u64;
        assert_eq!(p.rx_decap.packets, 2);
        assert_eq!(p.rx_decap.bytes, 2 * frame_len);
        assert_eq!(p.tx_dev.packets, 1);
        assert_eq!(peer(&r, &[192, 0, 2, 13]).tx_dev.packets, 1);
        assert_eq!(r.global.rx_decap_unattributed.packets, 1);
        assert_eq!(r.global.tx_dev_unattributed.packets, 1);
    });
}

/// The PAWS kprobe fallbacks pass the verifier, whatever this kernel can
/// attach them to.
#[test]
fn paws_kprobes_pass_the_verifier() {
    let mut t = tracer();
    for k in vxtrace::probes::PAWS_KPROBES {
        t.load_paws_kprobe(k.program)
            .unwrap_or_else(|e| panic!("{} must load: {e:#}", k.program));
    }
}

#[test]
fn peer_map_is_bounded_and_evictions_are_counted() {
    in_test_netns(|| {
        let t = tracer(); // 64 peers
        for i in 0..200u32 {
            let src = [198, 51, (i >> 8) as u8, i as u8];
            run(
                &t,
                programs::NIC_INGRESS,
                &outer4(src, LOCAL4, 8472, &valid_vxlan(1)),
                None,
            );
        }
        let r = t.read().unwrap();
        // 64 peers on every online CPU (an entry per peer and CPU).
        let online = aya::util::online_cpus().unwrap().len();
        assert!(r.peers.len() <= 64 * online, "{}", r.peers.len());
        assert_eq!(r.global.peers_inserted, 200);
        // Each peer the map still holds counted its one packet (in the map,
        // or in its slot for the peers that came first to one); the slots
        // hold at most one peer each.
        for (key, _) in &r.peers {
            assert_eq!(r.peer(&key.peer).unwrap().rx_nic.packets, 1);
        }
        let rows = *aya::util::online_cpus().unwrap().iter().max().unwrap() as usize + 1;
        assert!(r.peer_slots.len() <= vxtrace_common::PEER_SLOTS as usize * rows);
        assert!(r.peer_slots.iter().all(|(_, p)| p.rx_nic.packets == 1));
        // The slot maps are plain arrays with a row per online CPU number,
        // not per-CPU arrays (a copy for every possible CPU).
        for (name, per_row) in [
            (maps::PEER_SLOTS, vxtrace_common::PEER_SLOTS),
            (maps::DROP_SLOTS, vxtrace_common::DROP_SLOTS),
        ] {
            let loaded: Vec<_> = aya::maps::loaded_maps()
                .filter_map(Result::ok)
                .filter(|m| m.name_as_str() == Some(name))
                .collect();
            assert!(
                loaded.iter().any(|m| {
                    matches!(m.map_type(), Ok(aya::maps::MapType::Array))
                        && m.max_entries() == per_row * rows as u32
                }),
                "{name}: no plain array of {rows} rows of {per_row} slots loaded"
            );
        }
    });
}

/// An entry the LRU evicts and that comes back before the next read
/// starts over under the same key, with lower counts or with more: the
/// peer table keeps what it held, and the interval's change is what the
/// new entry counted.
#[test]
fn an_entry_evicted_and_back_between_two_reads_keeps_its_counts() {
    in_test_netns(|| {
        let t = tracer(); // 64 peers on every online CPU
        let addr = |i: u32| [198, 51, (i >> 8) as u8, i as u8];
        let send = |i: u32, packets: u32| {
            for _ in 0..packets {
                run(
                    &t,
                    programs::NIC_INGRESS,
                    &outer4(addr(i), LOCAL4, 8472, &valid_vxlan(1)),
                    None,
                );
            }
        };
        // The peer watched (0) must count in the map, not in a slot: a
        // peer that lands in the same slot takes it first.
        let watched = PeerKey::from_v4(addr(0));
        let holder = (1..10_000u32)
            .find(|i| PeerKey::from_v4(addr(*i)).slot() == watched.slot())
            .expect("a peer in the same slot");
        send(holder, 1);
        send(0, 5);
        let mut table = vxtrace::peers::PeerTable::new(100_000);
        table.update(&t.read().unwrap(), 1.0);
        let counted = |table: &vxtrace::peers::PeerTable| {
            let p = table.get(&IpAddr::from(addr(0))).expect("the watched peer");
            (p.total().rx_nic.packets, p.last_delta().rx_nic.packets)
        };
        assert_eq!(counted(&table), (5, 5));
        // New peers push its entry out of the map: seen in reads the
        // table is not given, as if they fell between two intervals.
        let gone = |r: &Readout| !r.peers.iter().any(|(k, _)| k.peer == watched);
        let mut next = 10_000;
        let mut push_out = || {
            for _ in 0..20 {
                for _ in 0..200 {
                    send(next, 1);
                    next += 1;
                }
                if gone(&t.read().unwrap()) {
                    return;
                }
            }
            panic!("the watched peer's entry was never evicted");
        };
        push_out();
        // Back, counting from zero under the same key.
        send(0, 2);
        table.update(&t.read().unwrap(), 1.0);
        assert_eq!(counted(&table), (7, 2));
        // Out again, and back counting past the 2 its last entry held: its
        // counts alone would pass for 7 more, not 9.
        push_out();
        send(0, 9);
        table.update(&t.read().unwrap(), 1.0);
        assert_eq!(counted(&table), (16, 9));
    });
}

/// A peer counted on two CPUs has an entry on each, and its counts are
/// their sum: 300 peers send one packet on each of two CPUs (the first
/// peers to reach a CPU's slots are counted there, the rest in their
/// entries, and every peer is listed on both CPUs).
#[test]
fn a_peer_seen_on_two_cpus_has_an_entry_on_each() {
    let online = aya::util::online_cpus().unwrap();
    if online.len() < 2 {
        eprintln!("one CPU online: nothing to show");
        return;
    }
    in_test_netns(|| {
        let cfg = TracerConfig {
            max_peers: 1024,
            filter_vni: false,
            ..tracer_config()
        };
        let t = Tracer::load(&cfg, &vxtrace::probes::LoaderBtf::None, AttachPolicy::Auto).unwrap();
        let src = |i: u32| [198, 18, (i >> 8) as u8, i as u8];
        for &cpu in &online[..2] {
            vxtrace_tests::pin_to_cpu(cpu as usize);
            for i in 0..300u32 {
                run(
                    &t,
                    programs::NIC_INGRESS,
                    &outer4(src(i), LOCAL4, 8472, &valid_vxlan(1)),
                    None,
                );
            }
        }
        let r = t.read().unwrap();
        assert_eq!(r.global.peers_inserted, 600);
        assert_eq!(r.peers.len(), 600);
        for i in 0..300u32 {
            let key = PeerKey::from_v4(src(i));
            let cpus: Vec<u32> = r
                .peers
                .iter()
                .filter(|(k, _)| k.peer == key)
                .map(|(k, _)| k.cpu)
                .collect();
            assert_eq!(cpus.len(), 2, "peer {i}: entries on {cpus:?}");
            assert!(cpus.contains(&online[0]) && cpus.contains(&online[1]));
            assert_eq!(r.peer(&key).unwrap().rx_nic.packets, 2, "peer {i}");
        }
    });
}

/// The batched read of the per-peer map sees every peer exactly once
/// (several batches of 1024).
#[test]
fn batched_map_read_sees_every_peer() {
    in_test_netns(|| {
        let cfg = TracerConfig {
            foreign_ports: Vec::new(),
            reason_too_big: None,
            ports: vec![8472],
            local_addrs: vec![IpAddr::from(LOCAL4)],
            gbp: false,
            filter_vni: false,
            max_peers: 4096,
            max_macs: 64,
            offsets: vxtrace_common::KernelOffsets::none(),
            netns_scope_all: true,
            raw_tp_has_reason: true,
            raw_tp_has_rx_sk: false,
        };
        let t = Tracer::load(&cfg, &vxtrace::probes::LoaderBtf::None, AttachPolicy::Auto).unwrap();
        for i in 0..2500u32 {
            let src = [198, 18, (i >> 8) as u8, i as u8];
            run(
                &t,
                programs::NIC_INGRESS,
                &outer4(src, LOCAL4, 8472, &valid_vxlan(1)),
                None,
            );
        }
        let started = std::time::Instant::now();
        let r = t.read().unwrap();
        eprintln!("read 2500 peers in {:?}", started.elapsed());
        assert_eq!(r.peers.len(), 2500);
        // The first peers to reach each slot are counted there, the rest
        // in the map: one packet each either way.
        assert!(!r.peer_slots.is_empty());
        for (key, _) in &r.peers {
            assert_eq!(r.peer(&key.peer).unwrap().rx_nic.packets, 1);
        }
        let in_map: u64 = r.peers.iter().map(|(_, p)| p.rx_nic.packets).sum();
        let in_slots: u64 = r.peer_slots.iter().map(|(_, p)| p.rx_nic.packets).sum();
        assert_eq!(in_map + in_slots, 2500);
    });
}
