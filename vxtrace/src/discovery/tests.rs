//! Unit tests of the snapshot's types, dumps' decoding and queries.

use netlink_packet_route::route::{RouteIp6Tunnel, RouteIpTunnel, RouteLwTunnelEncap};

use super::{netlink::tunnel_encap, *};

#[test]
fn keys_round_trip() {
    for a in ["192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1", "::1"] {
        let addr: IpAddr = a.parse().unwrap();
        let back = peer_addr(&peer_key(&addr));
        let expect = match addr {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        assert_eq!(back, expect, "{a}");
    }
}

#[test]
fn prefixes() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(prefix_contains(&ip("10.244.1.0"), 24, &ip("10.244.1.7")));
    assert!(!prefix_contains(&ip("10.244.1.0"), 24, &ip("10.244.2.7")));
    assert!(prefix_contains(&ip("0.0.0.0"), 0, &ip("192.0.2.1")));
    assert!(prefix_contains(&ip("fd00::"), 64, &ip("fd00::5")));
    assert!(!prefix_contains(&ip("fd00::"), 64, &ip("10.0.0.1")));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn route(ifindex: u32, net: &str, len: u8, gw: Option<&str>) -> OverlayRoute {
    OverlayRoute {
        ifindex,
        dst: ip(net),
        prefix_len: len,
        gateway: gw.map(ip),
        encap_dst: None,
        encap_vni: None,
    }
}

fn neighbour(ifindex: u32, addr: &str, mac: [u8; 6]) -> Neighbour {
    Neighbour {
        ifindex,
        addr: ip(addr),
        mac,
        permanent: false,
    }
}

/// A dual-stack peer's two addresses resolve to one MAC on the
/// underlay: one node. Peers behind a router resolve to nothing of
/// their own (the router's MAC is the gateway's entry): never grouped.
#[test]
fn same_node_peers_by_underlay_mac() {
    let mut snap = Snapshot::default();
    snap.links.insert(2, Link::for_test("eth0", 2, "veth"));
    let (node2, node3, router) = (
        [0x0e, 0, 0, 0, 0, 2],
        [0x0e, 0, 0, 0, 0, 3],
        [0x0e, 0, 0, 0, 0, 0xfe],
    );
    snap.all_routes = vec![
        route(2, "192.0.2.0", 24, None),
        route(2, "2001:db8:1::", 64, None),
        route(2, "0.0.0.0", 0, Some("192.0.2.1")),
        route(2, "::", 0, Some("2001:db8:1::1")),
    ];
    snap.link_neighbours = vec![
        neighbour(2, "192.0.2.12", node2),
        neighbour(2, "2001:db8:1::12", node2),
        neighbour(2, "192.0.2.13", node3),
        neighbour(2, "192.0.2.1", router),
        neighbour(2, "2001:db8:1::1", router),
    ];
    let peers = [
        "2001:db8:1::12",
        "192.0.2.12",
        "192.0.2.13",
        "198.51.100.7",
        "2001:db8:2::7",
    ]
    .map(ip);
    assert_eq!(
        snap.same_node_peers(&peers),
        vec![(vec![ip("192.0.2.12"), ip("2001:db8:1::12")], node2)]
    );
    // A neighbour entry on another device than the route's is no evidence.
    snap.link_neighbours[1].ifindex = 7;
    assert!(snap.same_node_peers(&peers).is_empty());
}

/// A metadata device's routes name their remotes: pod subnets and
/// VTEP addresses belong to them without an FDB.
#[test]
fn lightweight_tunnel_routes_name_their_remotes() {
    let mut snap = Snapshot::default();
    snap.links.insert(2, Link::for_test("eth0", 2, "veth"));
    snap.links.insert(3, Link::for_test("vxm", 3, "vxlan"));
    let mut r = route(3, "10.244.1.0", 24, Some("10.244.1.0"));
    r.encap_dst = Some(ip("192.0.2.12"));
    r.encap_vni = Some(61);
    snap.routes = vec![r];
    snap.neighbours = vec![neighbour(3, "10.244.1.0", [0x0e, 0x6d, 0x64, 0, 0, 2])];
    assert_eq!(
        snap.pod_subnets(),
        vec![(3, ip("10.244.1.0"), 24, ip("192.0.2.12"))]
    );
    assert_eq!(
        snap.vtep_addrs(),
        vec![(3, ip("10.244.1.0"), ip("192.0.2.12"))]
    );
    assert_eq!(
        snap.inner_owners().owner(&ip("10.244.1.9")),
        Some(ip("192.0.2.12"))
    );
}

#[test]
fn tunnel_encap_attributes() {
    let v4 = [
        RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(61)),
        RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination("192.0.2.12".parse().unwrap())),
    ];
    assert_eq!(tunnel_encap(&v4), (Some(ip("192.0.2.12")), Some(61)));
    let v6 = [
        RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(
            "2001:db8:1::12".parse().unwrap(),
        )),
        RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Id(7)),
    ];
    assert_eq!(tunnel_encap(&v6), (Some(ip("2001:db8:1::12")), Some(7)));
    assert_eq!(tunnel_encap(&[]), (None, None));
}

/// Who installed an FDB entry, from its state and flags as FRR,
/// flannel, `bridge fdb append` and a learning device leave them.
#[test]
fn fdb_origin_from_state_and_flags() {
    const REACHABLE: u16 = 0x02;
    const NTF_SELF: u8 = 0x02;
    let cases = [
        // A MAC a learning device saw behind a peer.
        (REACHABLE, NTF_SELF, FdbOrigin::Learned),
        // `bridge fdb append` (NOARP | PERMANENT), flannel's and Calico's.
        (NUD_NOARP | NUD_PERMANENT, NTF_SELF, FdbOrigin::Static),
        (NUD_PERMANENT, 0, FdbOrigin::Static),
        (NUD_NOARP, 0, FdbOrigin::Static),
        // FRR's remote MACs: `self extern_learn`, no state.
        (0, NTF_SELF | NTF_EXT_LEARNED, FdbOrigin::ExternLearn),
        (REACHABLE, NTF_EXT_LEARNED, FdbOrigin::ExternLearn),
        // FRR's static and default-gateway MACs: `self sticky static`.
        (NUD_NOARP, NTF_SELF | NTF_STICKY, FdbOrigin::Sticky),
        (
            NUD_NOARP,
            NTF_EXT_LEARNED | NTF_STICKY,
            FdbOrigin::ExternLearn,
        ),
    ];
    for (state, flags, origin) in cases {
        assert_eq!(
            FdbOrigin::from_kernel(state, flags),
            origin,
            "state {state:#x} flags {flags:#x}"
        );
    }
    assert!(FdbOrigin::ExternLearn.control_plane());
    assert!(FdbOrigin::Sticky.control_plane());
    assert!(!FdbOrigin::Static.control_plane());
    assert!(!FdbOrigin::Learned.control_plane());
}

/// A device enslaved to a bridge, or one no subnet is routed through
/// via a VTEP, is a layer-2 segment; flannel's and a metadata
/// device's routes make a routed one.
#[test]
fn layer2_devices() {
    let mut snap = Snapshot::default();
    let mut dev = VxlanDevice::for_test("vx", 3, Some(100), 4789);
    // The device's own connected subnet routes nothing to a peer.
    snap.routes = vec![route(3, "192.0.2.0", 24, None)];
    assert!(snap.is_layer2(&dev));
    snap.routes
        .push(route(3, "10.244.1.0", 24, Some("10.244.1.0")));
    assert!(!snap.is_layer2(&dev));
    dev.bridged = true;
    assert!(snap.is_layer2(&dev));
    dev.bridged = false;
    let mut encap = route(3, "10.244.2.0", 24, None);
    encap.encap_dst = Some(ip("198.18.0.2"));
    snap.routes = vec![encap];
    assert!(!snap.is_layer2(&dev));
    // Routes through another device do not count.
    snap.routes = vec![route(4, "10.244.1.0", 24, Some("10.244.1.0"))];
    assert!(snap.is_layer2(&dev));
}
