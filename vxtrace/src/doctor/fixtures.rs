//! Snapshots of nodes as the doctor's tests see them.

use std::net::IpAddr;

use super::Finding;
use crate::discovery::{self, FdbOrigin, Snapshot, VxlanDevice};

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn mac(last: u8) -> [u8; 6] {
    [0x0e, 0x65, 0x76, 0, 0, last]
}

pub fn entry(mac: [u8; 6], dst: &str, origin: FdbOrigin) -> discovery::FdbEntry {
    discovery::FdbEntry {
        ifindex: 3,
        mac,
        dst: ip(dst),
        vni: None,
        origin,
    }
}

pub fn route(ifindex: u32, dst: &str, prefix_len: u8, gw: Option<&str>) -> discovery::OverlayRoute {
    discovery::OverlayRoute {
        ifindex,
        dst: ip(dst),
        prefix_len,
        gateway: gw.map(ip),
        encap_dst: None,
        encap_vni: None,
    }
}

/// A BGP EVPN leaf as FRR programs it: the VTEP address 198.18.0.1 on
/// `lo`, routes to the other VTEPs through `uplink`, `vxlan100` in a
/// bridge with remote hosts' MACs (`extern_learn`), static and
/// default-gateway MACs (`sticky`), and a flood list; and two hosts'
/// MACs programmed by hand (static).
pub fn evpn_leaf() -> (Snapshot, VxlanDevice) {
    let mut snap = Snapshot::default();
    let mut lo = discovery::Link::for_test("lo", 1, "loopback");
    lo.loopback = true;
    snap.links.insert(1, lo);
    snap.links
        .insert(2, discovery::Link::for_test("uplink", 2, "veth"));
    snap.links
        .insert(3, discovery::Link::for_test("vxlan100", 3, "vxlan"));
    snap.links
        .insert(4, discovery::Link::for_test("br100", 4, "bridge"));
    snap.addrs.insert(1, vec![ip("198.18.0.1")]);
    snap.addrs.insert(2, vec![ip("198.18.1.1")]);
    snap.addrs.insert(4, vec![ip("192.0.2.1")]);
    snap.all_routes = vec![
        route(2, "198.18.1.0", 31, None),
        route(2, "198.18.0.2", 32, Some("198.18.1.0")),
        route(2, "198.18.0.3", 32, Some("198.18.1.0")),
        route(4, "192.0.2.0", 24, None),
    ];
    snap.fdb = vec![
        entry(mac(0x21), "198.18.0.2", FdbOrigin::ExternLearn),
        entry(mac(0x22), "198.18.0.2", FdbOrigin::ExternLearn),
        entry(mac(0x23), "198.18.0.2", FdbOrigin::Sticky),
        entry(mac(0x02), "198.18.0.2", FdbOrigin::Sticky),
        entry(mac(0x31), "198.18.0.3", FdbOrigin::ExternLearn),
        entry(mac(0x03), "198.18.0.3", FdbOrigin::Sticky),
        // Hosts behind leaf 2 programmed by hand.
        entry(mac(0x24), "198.18.0.2", FdbOrigin::Static),
        entry(mac(0x25), "198.18.0.2", FdbOrigin::Static),
        entry([0; 6], "198.18.0.2", FdbOrigin::Static),
        entry([0; 6], "198.18.0.3", FdbOrigin::Static),
    ];
    let mut dev = VxlanDevice::for_test("vxlan100", 3, Some(100), 4789);
    dev.local = Some(ip("198.18.0.1"));
    dev.bridged = true;
    (snap, dev)
}

pub fn checks(out: &[Finding]) -> Vec<&str> {
    out.iter().map(|f| f.check.as_str()).collect()
}

/// A flannel node as its agent programs it: `flannel.1` (VNI 1, port 8472,
/// MTU 1450) over `eth0` (192.0.2.11, MTU 1500), pods on `cni0` behind a
/// veth; two peers, each with a route to its pod subnet via its VTEP
/// address, a permanent neighbour entry and an FDB entry.
pub fn flannel_node() -> (Snapshot, VxlanDevice) {
    let mut snap = Snapshot::default();
    let mut lo = discovery::Link::for_test("lo", 1, "loopback");
    lo.loopback = true;
    snap.links.insert(1, lo);
    snap.links
        .insert(2, discovery::Link::for_test("eth0", 2, "veth"));
    let mut vx = discovery::Link::for_test("flannel.1", 3, "vxlan");
    vx.mtu = Some(1450);
    snap.links.insert(3, vx);
    let mut cni0 = discovery::Link::for_test("cni0", 4, "bridge");
    cni0.mtu = Some(1450);
    snap.links.insert(4, cni0);
    let mut pod = discovery::Link::for_test("veth1a2b", 5, "veth");
    (pod.mtu, pod.master) = (Some(1450), Some(4));
    snap.links.insert(5, pod);
    snap.addrs.insert(1, vec![ip("127.0.0.1")]);
    snap.addrs.insert(2, vec![ip("192.0.2.11")]);
    snap.addrs.insert(3, vec![ip("10.244.0.0")]);
    snap.addrs.insert(4, vec![ip("10.244.0.1")]);
    snap.all_routes = vec![route(2, "192.0.2.0", 24, None)];
    for (peer, last) in [(1, 0x12), (2, 0x13)] {
        let vtep = format!("10.244.{peer}.0");
        snap.routes.push(route(3, &vtep, 24, Some(&vtep)));
        snap.neighbours.push(discovery::Neighbour {
            ifindex: 3,
            addr: ip(&vtep),
            mac: mac(last),
            permanent: true,
        });
        let underlay = format!("192.0.2.{}", 11 + peer);
        snap.fdb
            .push(entry(mac(last), &underlay, FdbOrigin::Static));
    }
    let mut dev = VxlanDevice::for_test("flannel.1", 3, Some(1), 8472);
    dev.local = Some(ip("192.0.2.11"));
    dev.link_ifindex = Some(2);
    (snap, dev)
}
