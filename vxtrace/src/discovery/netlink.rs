//! The netlink dumps: links, addresses, the VXLAN devices' FDB, neighbour
//! entries and routes of the current namespace, read through rtnetlink
//! into a [`Snapshot`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    address::AddressAttribute,
    link::{
        InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
        XdpAttached,
    },
    neighbour::{NeighbourAddress, NeighbourAttribute},
    route::{
        RouteAddress, RouteAttribute, RouteIp6Tunnel, RouteIpTunnel, RouteLwTunnelEncap,
        RouteMessage,
    },
};

use super::{
    FdbEntry, FdbOrigin, Link, LinkStats, NUD_PERMANENT, Neighbour, OverlayRoute, Snapshot,
    VxlanDevice, XdpProgram,
};

pub(super) fn vxlan_from_info(link: &Link, info: &[InfoVxlan]) -> VxlanDevice {
    let mut dev = VxlanDevice {
        name: link.name.clone(),
        ifindex: link.ifindex,
        vni: None,
        // The kernel's default when no dstport is given.
        port: 8472,
        local: None,
        link_ifindex: None,
        mac: link.mac,
        mtu: link.mtu,
        gbp: false,
        learning: false,
        fills_on_demand: false,
        bridged: link.master.is_some(),
    };
    let mut external = false;
    for attr in info {
        match attr {
            InfoVxlan::Id(id) => dev.vni = Some(*id),
            InfoVxlan::Port(p) => dev.port = *p,
            InfoVxlan::Local(a) if !a.is_unspecified() => dev.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) if !a.is_unspecified() => dev.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Link(idx) if *idx != 0 => dev.link_ifindex = Some(*idx),
            InfoVxlan::Gbp => dev.gbp = true,
            InfoVxlan::Learning(l) => dev.learning = *l,
            InfoVxlan::L2Miss(true) | InfoVxlan::L3Miss(true) => dev.fills_on_demand = true,
            InfoVxlan::CollectMetadata(true) => external = true,
            _ => {}
        }
    }
    if external {
        dev.vni = None;
    }
    dev
}

fn link_from_msg(msg: LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        ifindex: msg.header.index,
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        loopback: msg.header.flags.contains(LinkFlags::Loopback),
        mac: None,
        mtu: None,
        master: None,
        xdp: None,
        stats: None,
        vxlan: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(&a);
                link.mac = Some(m);
            }
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Controller(m) if m != 0 => link.master = Some(m),
            LinkAttribute::Stats64(s) => {
                link.stats = Some(LinkStats {
                    rx_packets: s.rx_packets,
                    tx_packets: s.tx_packets,
                })
            }
            LinkAttribute::Xdp(xdp) => link.xdp = xdp_program(&xdp),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => {
                            link.kind = Some(match kind {
                                InfoKind::Vxlan => "vxlan".to_string(),
                                other => other.to_string(),
                            })
                        }
                        LinkInfo::Data(InfoData::Vxlan(v)) => link.vxlan = Some(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The XDP program in a link's IFLA_XDP attributes, if one is attached.
fn xdp_program(attrs: &[LinkXdp]) -> Option<XdpProgram> {
    let mut id = None;
    let mut mode = "native";
    for a in attrs {
        match a {
            LinkXdp::ProgId(i) if *i != 0 => id = Some(*i),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = "generic",
            LinkXdp::Attached(XdpAttached::Hardware) => mode = "offloaded",
            LinkXdp::Attached(XdpAttached::Multiple) => mode = "multi",
            LinkXdp::Attached(XdpAttached::None) => return None,
            _ => {}
        }
    }
    Some(XdpProgram { id: id?, mode })
}

/// Reads links, addresses, the VXLAN devices' FDB, the neighbour entries,
/// and the routes of the current network namespace.
pub async fn snapshot() -> Result<Snapshot> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let task = tokio::spawn(conn);
    let result = async {
        let mut snap = Snapshot::default();
        dump_links(&handle, &mut snap).await?;
        dump_addrs(&handle, &mut snap).await?;
        dump_fdb(&handle, &mut snap).await?;
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            dump_neighbours(&handle, family, &mut snap).await?;
            dump_routes(&handle, family, &mut snap).await?;
        }
        Ok(snap)
    }
    .await;
    task.abort();
    result
}

async fn dump_links(handle: &rtnetlink::Handle, snap: &mut Snapshot) -> Result<()> {
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await.context("dumping links")? {
        let link = link_from_msg(msg);
        snap.links.insert(link.ifindex, link);
    }
    Ok(())
}

async fn dump_addrs(handle: &rtnetlink::Handle, snap: &mut Snapshot) -> Result<()> {
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await.context("dumping addresses")? {
        let index = msg.header.index;
        for attr in msg.attributes {
            if let AddressAttribute::Address(a) = attr {
                snap.addrs.entry(index).or_default().push(a);
            }
        }
    }
    Ok(())
}

/// The VXLAN devices' forwarding databases.
async fn dump_fdb(handle: &rtnetlink::Handle, snap: &mut Snapshot) -> Result<()> {
    let mut neigh = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute();
    while let Some(msg) = neigh.try_next().await.context("dumping the bridge FDB")? {
        let ifindex = msg.header.ifindex;
        if !snap.is_vxlan(ifindex) {
            continue;
        }
        let origin = FdbOrigin::from_kernel(u16::from(msg.header.state), msg.header.flags.bits());
        // Entries of the bridge the device is a port of (`master br0`)
        // carry no remote and are left out.
        let (mac, dst, vni) = neighbour_fields(msg.attributes);
        if let (Some(mac), Some(dst)) = (mac, dst) {
            snap.fdb.push(FdbEntry {
                ifindex,
                mac,
                dst,
                vni,
                origin,
            });
        }
    }
    Ok(())
}

/// Neighbour entries with a link-layer address: the VXLAN devices' (VTEP
/// address to MAC) apart from the others' (the underlay's ARP / NDP).
async fn dump_neighbours(
    handle: &rtnetlink::Handle,
    family: AddressFamily,
    snap: &mut Snapshot,
) -> Result<()> {
    let mut neigh = handle
        .neighbours()
        .get()
        .set_address_family(family)
        .execute();
    while let Some(msg) = neigh.try_next().await.context("dumping neighbours")? {
        let ifindex = msg.header.ifindex;
        let permanent = u16::from(msg.header.state) & NUD_PERMANENT != 0;
        let (mac, addr, _) = neighbour_fields(msg.attributes);
        if let (Some(mac), Some(addr)) = (mac, addr) {
            let n = Neighbour {
                ifindex,
                addr,
                mac,
                permanent,
            };
            if snap.is_vxlan(ifindex) {
                snap.neighbours.push(n);
            } else {
                snap.link_neighbours.push(n);
            }
        }
    }
    Ok(())
}

/// Every unicast route of the main table (which device reaches an
/// address), and the routes through VXLAN devices (pod subnets).
async fn dump_routes(
    handle: &rtnetlink::Handle,
    family: AddressFamily,
    snap: &mut Snapshot,
) -> Result<()> {
    let mut req = RouteMessage::default();
    req.header.address_family = family;
    let mut routes = handle.route().get(req).execute();
    while let Some(msg) = routes.try_next().await.context("dumping routes")? {
        let mut oif = None;
        let mut dst = None;
        let mut gateway = None;
        let mut multipath = Vec::new();
        let (mut encap_dst, mut encap_vni) = (None, None);
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Oif(i) => oif = Some(*i),
                RouteAttribute::Destination(a) => dst = route_ip(a),
                RouteAttribute::Gateway(a) => gateway = route_ip(a),
                RouteAttribute::Encap(encap) => (encap_dst, encap_vni) = tunnel_encap(encap),
                RouteAttribute::MultiPath(hops) => multipath = hops.clone(),
                _ => {}
            }
        }
        // An ECMP route (two uplinks of a routed fabric) names its devices
        // per next hop: one entry per device.
        let next_hops: Vec<(u32, Option<IpAddr>)> = match oif {
            Some(i) => vec![(i, gateway)],
            None => multipath
                .iter()
                .map(|h| {
                    let gw = h.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => route_ip(g),
                        _ => None,
                    });
                    (h.interface_index, gw)
                })
                .collect(),
        };
        let prefix_len = msg.header.destination_prefix_length;
        let unicast_main =
            msg.header.kind == netlink_packet_route::route::RouteType::Unicast && main_table(&msg);
        for (ifindex, gateway) in next_hops {
            if unicast_main {
                let unspecified = match family {
                    AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                };
                snap.all_routes.push(OverlayRoute {
                    ifindex,
                    dst: dst.unwrap_or(unspecified),
                    prefix_len,
                    gateway,
                    encap_dst,
                    encap_vni,
                });
            }
            if let Some(dst) = dst
                && snap.is_vxlan(ifindex)
            {
                snap.routes.push(OverlayRoute {
                    ifindex,
                    dst,
                    prefix_len,
                    gateway,
                    encap_dst,
                    encap_vni,
                });
            }
        }
    }
    Ok(())
}

/// MAC, IP address and VNI of a neighbour / FDB message.
fn neighbour_fields(
    attrs: Vec<NeighbourAttribute>,
) -> (Option<[u8; 6]>, Option<IpAddr>, Option<u32>) {
    let (mut mac, mut addr, mut vni) = (None, None, None);
    for attr in attrs {
        match attr {
            NeighbourAttribute::LinkLayerAddress(a) if a.len() == 6 => {
                let mut m = [0u8; 6];
                m.copy_from_slice(&a);
                mac = Some(m);
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(a))
            }
            // Bridge-family (FDB) entries carry the remote as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => addr = ip_from_bytes(&b),
            NeighbourAttribute::Vni(v) => vni = Some(v),
            _ => {}
        }
    }
    (mac, addr, vni)
}

/// Remote and VNI of an `encap ip` / `encap ip6` route.
pub(super) fn tunnel_encap(encap: &[RouteLwTunnelEncap]) -> (Option<IpAddr>, Option<u32>) {
    let (mut dst, mut vni) = (None, None);
    for e in encap {
        match e {
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Destination(a)) => dst = Some(IpAddr::V4(*a)),
            RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Destination(a)) => dst = Some(IpAddr::V6(*a)),
            RouteLwTunnelEncap::Ip(RouteIpTunnel::Id(id))
            | RouteLwTunnelEncap::Ip6(RouteIp6Tunnel::Id(id)) => vni = u32::try_from(*id).ok(),
            _ => {}
        }
    }
    (dst.filter(|a| !a.is_unspecified()), vni)
}

fn main_table(msg: &RouteMessage) -> bool {
    let table = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(msg.header.table as u32);
    table == 254
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(a)))
        }
        _ => None,
    }
}
