//! Finds the VXLAN devices of this network namespace, their underlay
//! devices, and their forwarding databases, through rtnetlink.
//!
//! Devices are found by kind (`vxlan`), never by name, so flannel's
//! `flannel.1`, Cilium's `cilium_vxlan` and a hand-made `vxlan0` are all found.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use crate::schema::{MissingEntry, VxlanDevice};
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

/// A network interface, as much of it as vxtrace needs.
#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub ifindex: u32,
    pub kind: Option<String>,
    pub up: bool,
    pub loopback: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    /// The bridge (or other master) this device is enslaved to.
    pub master: Option<u32>,
    /// The XDP program attached to the device, if any: it sees packets
    /// before any TC program and may drop, transmit or redirect them.
    pub xdp: Option<XdpProgram>,
    /// The kernel's own packet counters for the device.
    pub stats: Option<LinkStats>,
    vxlan: Option<Vec<InfoVxlan>>,
}

/// An XDP program on a device, as netlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpProgram {
    pub id: u32,
    /// `native` (the driver), `generic` (the stack), `offloaded` (the NIC)
    /// or `multi` (several modes at once).
    pub mode: &'static str,
}

/// A device's packet counters (rtnetlink's link statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
}

#[cfg(test)]
impl Link {
    /// A link with just a name, an index and a kind (unit tests).
    pub(crate) fn for_test(name: &str, ifindex: u32, kind: &str) -> Self {
        Self {
            name: name.to_string(),
            ifindex,
            kind: Some(kind.to_string()),
            up: true,
            loopback: false,
            mac: None,
            mtu: Some(1500),
            master: None,
            xdp: None,
            stats: None,
            vxlan: (kind == "vxlan").then(Vec::new),
        }
    }
}

/// A forwarding-database entry of a VXLAN device: inner MAC -> remote VTEP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdbEntry {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub dst: IpAddr,
    /// Per-entry VNI (metadata devices); `None` means the device's own.
    pub vni: Option<u32>,
    /// Who put the entry there.
    pub origin: FdbOrigin,
}

impl FdbEntry {
    /// Learned from traffic by a device with learning on.
    pub fn learned(&self) -> bool {
        self.origin == FdbOrigin::Learned
    }

    /// An all-zeros MAC: where the device sends what it has no entry for
    /// (broadcast, multicast, unknown unicast). One per remote is a flood
    /// list (BGP EVPN's head-end replication); a default `remote` or
    /// `group` is one such entry.
    pub fn is_flood(&self) -> bool {
        self.mac == [0; 6]
    }
}

/// Who put an FDB entry on a VXLAN device, as the kernel's state and flags
/// tell (`bridge fdb show`: `permanent` / `static`, `extern_learn`,
/// `sticky`, or none of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdbOrigin {
    /// Learned by the device from arriving traffic (learning on): a MAC
    /// seen behind a peer.
    Learned,
    /// Programmed permanent or static by an overlay agent (flannel, Calico)
    /// or by hand (`bridge fdb append`), a default `remote` included.
    Static,
    /// Installed by a routing control plane from BGP EVPN routes
    /// (`extern_learn`: FRR's zebra for each remote MAC).
    ExternLearn,
    /// `sticky`: a MAC that must not move. FRR installs EVPN's static MACs
    /// and the default-gateway MACs of `advertise-default-gw` so (`static
    /// sticky`), in place of `extern_learn`.
    Sticky,
}

impl FdbOrigin {
    /// From an FDB entry's `ndm_state` and `ndm_flags`: the control
    /// plane's flags first (FRR's sticky entries are also static).
    pub fn from_kernel(state: u16, flags: u8) -> Self {
        if flags & NTF_EXT_LEARNED != 0 {
            FdbOrigin::ExternLearn
        } else if flags & NTF_STICKY != 0 {
            FdbOrigin::Sticky
        } else if state & (NUD_NOARP | NUD_PERMANENT) != 0 {
            // `bridge fdb add` gives NOARP | PERMANENT: either bit means
            // programmed, not learned.
            FdbOrigin::Static
        } else {
            FdbOrigin::Learned
        }
    }

    /// Installed by a BGP EVPN control plane.
    pub fn control_plane(self) -> bool {
        matches!(self, FdbOrigin::ExternLearn | FdbOrigin::Sticky)
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// An IP neighbour entry (ARP / NDP) with a link-layer address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub permanent: bool,
}

/// A route whose output device is a VXLAN device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayRoute {
    pub ifindex: u32,
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// The remote of a lightweight-tunnel route (`encap ip id VNI dst
    /// REMOTE`), as metadata (`external`) VXLAN devices are routed.
    pub encap_dst: Option<IpAddr>,
    /// That route's VNI.
    pub encap_vni: Option<u32>,
}

/// A snapshot of what netlink says about this namespace.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub links: BTreeMap<u32, Link>,
    /// Addresses by ifindex.
    pub addrs: BTreeMap<u32, Vec<IpAddr>>,
    pub fdb: Vec<FdbEntry>,
    /// Neighbour entries of the VXLAN devices (VTEP addresses).
    pub neighbours: Vec<Neighbour>,
    /// Neighbour entries of every other device (the underlay's ARP / NDP).
    pub link_neighbours: Vec<Neighbour>,
    pub routes: Vec<OverlayRoute>,
    /// Unicast routes of the main table (any device), for reachability.
    pub all_routes: Vec<OverlayRoute>,
}

impl Snapshot {
    pub fn link_by_name(&self, name: &str) -> Option<&Link> {
        self.links.values().find(|l| l.name == name)
    }

    pub fn vxlan_devices(&self) -> Vec<VxlanDevice> {
        self.links
            .values()
            .filter_map(|l| {
                let info = l.vxlan.as_ref()?;
                Some(vxlan_from_info(l, info))
            })
            .collect()
    }

    /// The interface that holds `addr`, if any.
    pub fn owner_of(&self, addr: &IpAddr) -> Option<&Link> {
        self.addrs
            .iter()
            .find(|(_, addrs)| addrs.contains(addr))
            .and_then(|(idx, _)| self.links.get(idx))
    }

    /// The one device that carries `dev`'s encapsulated traffic, when the
    /// configuration names it: the VXLAN device's `dev`, else the owner of
    /// its `local` address. An address on loopback or a dummy device (a
    /// routed underlay: the VTEP address on `lo`, peers reached through
    /// several NICs) names none: packets leave wherever the route to each
    /// peer goes.
    pub fn named_underlay(&self, dev: &VxlanDevice) -> Option<&Link> {
        let by_link = dev.link_ifindex.and_then(|i| self.links.get(&i));
        by_link.or_else(|| {
            dev.local
                .as_ref()
                .and_then(|a| self.owner_of(a))
                .filter(|l| !l.loopback && l.kind.as_deref() != Some("dummy"))
        })
    }

    pub fn is_vxlan(&self, ifindex: u32) -> bool {
        self.links
            .get(&ifindex)
            .is_some_and(|l| l.kind.as_deref() == Some("vxlan"))
    }
}

fn vxlan_from_info(link: &Link, info: &[InfoVxlan]) -> VxlanDevice {
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

/// Neighbour and FDB entry states (`ndm_state`), a bit set.
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// FDB entry flags (`ndm_flags`).
const NTF_EXT_LEARNED: u8 = 0x10;
const NTF_STICKY: u8 = 0x40;

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

/// `addr` as the 16-byte key the kernel programs use (IPv4 mapped into IPv6).
pub fn peer_key(addr: &IpAddr) -> vxtrace_common::PeerKey {
    match addr {
        IpAddr::V4(a) => vxtrace_common::PeerKey::from_v4(a.octets()),
        IpAddr::V6(a) => vxtrace_common::PeerKey::from_v6(a.octets()),
    }
}

/// The address a kernel key stands for (mapped IPv4 shown as IPv4).
pub fn peer_addr(key: &vxtrace_common::PeerKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// True for the all-zeros MAC of a default (flood) FDB entry, and for
/// multicast/broadcast MACs, which belong to no single peer.
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    *mac == [0; 6] || mac[0] & 1 == 1
}

/// Is `addr` inside `net/len`?
pub fn prefix_contains(net: &IpAddr, len: u8, addr: &IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let len = len.min(32) as u32;
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(*n) & mask == u32::from(*a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let len = len.min(128) as u32;
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(*n) & mask == u128::from(*a) & mask
        }
        _ => false,
    }
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
fn tunnel_encap(encap: &[RouteLwTunnelEncap]) -> (Option<IpAddr>, Option<u32>) {
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

impl Snapshot {
    /// The underlay address behind an inner MAC of a VXLAN device (its FDB).
    pub fn fdb_dst(&self, ifindex: u32, mac: &[u8; 6]) -> Option<IpAddr> {
        self.fdb
            .iter()
            .find(|e| e.ifindex == ifindex && &e.mac == mac)
            .map(|e| e.dst)
    }

    /// Overlay (VTEP) addresses of peers: neighbour IP -> MAC -> FDB -> peer,
    /// or (metadata devices) the remote of the routes via that address.
    /// Returns (VXLAN ifindex, VTEP address, peer).
    pub fn vtep_addrs(&self) -> Vec<(u32, IpAddr, IpAddr)> {
        self.neighbours
            .iter()
            .filter_map(|n| {
                let peer = self
                    .fdb_dst(n.ifindex, &n.mac)
                    .or_else(|| self.encap_via(n.ifindex, &n.addr))?;
                Some((n.ifindex, n.addr, peer))
            })
            .collect()
    }

    /// The remote of the lightweight-tunnel routes via `gw` on device
    /// `ifindex`, if they agree on one.
    fn encap_via(&self, ifindex: u32, gw: &IpAddr) -> Option<IpAddr> {
        let mut remotes = self
            .routes
            .iter()
            .filter(|r| r.ifindex == ifindex && r.gateway.as_ref() == Some(gw))
            .filter_map(|r| r.encap_dst);
        let first = remotes.next()?;
        remotes.all(|r| r == first).then_some(first)
    }

    /// The most specific main-table route to `addr`.
    pub fn route_to(&self, addr: &IpAddr) -> Option<&OverlayRoute> {
        self.all_routes
            .iter()
            .filter(|r| prefix_contains(&r.dst, r.prefix_len, addr))
            .max_by_key(|r| r.prefix_len)
    }

    /// The device of that route (local addresses are not in the main
    /// table and give None).
    pub fn route_dev(&self, addr: &IpAddr) -> Option<u32> {
        self.route_to(addr).map(|r| r.ifindex)
    }

    /// Every device of the most specific routes to `addr`: several for an
    /// ECMP route (one entry per next hop).
    pub fn route_devs(&self, addr: &IpAddr) -> Vec<u32> {
        let Some(longest) = self.route_to(addr).map(|r| r.prefix_len) else {
            return Vec::new();
        };
        self.all_routes
            .iter()
            .filter(|r| r.prefix_len == longest && prefix_contains(&r.dst, r.prefix_len, addr))
            .map(|r| r.ifindex)
            .collect()
    }

    /// Peers that are one node as this node's underlay shows it: directly
    /// connected (their routes have no gateway) and resolved by the
    /// neighbour table (ARP / NDP) of the device that reaches them to one
    /// MAC. Returns each group of two or more, sorted, with the MAC.
    /// Peers behind a router all resolve to the router's MAC, so they are
    /// never grouped; nor are peers without a neighbour entry (no traffic
    /// lately, or a point-to-point underlay).
    pub fn same_node_peers(&self, peers: &[IpAddr]) -> Vec<(Vec<IpAddr>, [u8; 6])> {
        let mut by_mac: BTreeMap<(u32, [u8; 6]), Vec<IpAddr>> = BTreeMap::new();
        for peer in peers {
            let Some(route) = self.route_to(peer) else {
                continue;
            };
            if route.gateway.is_some() || self.is_vxlan(route.ifindex) {
                continue;
            }
            let Some(n) = self
                .link_neighbours
                .iter()
                .find(|n| n.ifindex == route.ifindex && n.addr == *peer)
            else {
                continue;
            };
            if is_group_mac(&n.mac) {
                continue;
            }
            by_mac.entry((n.ifindex, n.mac)).or_default().push(*peer);
        }
        by_mac
            .into_iter()
            .filter(|(_, peers)| peers.len() > 1)
            .map(|((_, mac), mut peers)| {
                peers.sort();
                peers.dedup();
                (peers, mac)
            })
            .collect()
    }

    /// The device the main table routes `addr` through (longest prefix;
    /// local addresses are not in the main table and give None).
    /// Who owns which inner (VTEP or pod) address, from the VXLAN devices'
    /// neighbour, FDB and route entries: built once, asked many times.
    pub fn inner_owners(&self) -> InnerOwners {
        InnerOwners {
            vteps: self
                .vtep_addrs()
                .into_iter()
                .map(|(_, a, p)| (a, p))
                .collect(),
            subnets: self
                .pod_subnets()
                .into_iter()
                .map(|(_, n, l, p)| (n, l, p))
                .collect(),
        }
    }

    /// Pod subnets behind peers: route via a VTEP address -> its neighbour
    /// MAC -> FDB -> peer, or (metadata devices) the route's own remote.
    /// Returns (VXLAN ifindex, subnet, prefix length, peer).
    pub fn pod_subnets(&self) -> Vec<(u32, IpAddr, u8, IpAddr)> {
        self.routes
            .iter()
            .filter_map(|r| {
                if let Some(remote) = r.encap_dst {
                    return Some((r.ifindex, r.dst, r.prefix_len, remote));
                }
                let gw = r.gateway?;
                let n = self
                    .neighbours
                    .iter()
                    .find(|n| n.ifindex == r.ifindex && n.addr == gw)?;
                Some((
                    r.ifindex,
                    r.dst,
                    r.prefix_len,
                    self.fdb_dst(r.ifindex, &n.mac)?,
                ))
            })
            .collect()
    }
}

/// A pod subnet routed through a VXLAN device to a VTEP that cannot be
/// reached: frames to it are dropped as they are sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub ifindex: u32,
    /// The VXLAN device's name.
    pub device: String,
    pub subnet: IpAddr,
    pub prefix_len: u8,
    /// The VTEP address the route goes via.
    pub vtep: IpAddr,
    pub mac: Option<[u8; 6]>,
    pub missing: MissingEntry,
}

impl Snapshot {
    /// Whether a VXLAN device finds peers without programmed entries: a
    /// metadata (`external`) device has no FDB by design; `l2miss` /
    /// `l3miss` let the agent fill entries on a miss; a default remote (an
    /// all-zero FDB entry) floods what the device does not know.
    pub fn resolves_on_its_own(&self, dev: &VxlanDevice) -> bool {
        dev.vni.is_none() || dev.fills_on_demand || self.fdb_dst(dev.ifindex, &[0; 6]).is_some()
    }

    /// Whether `dev` carries one layer-2 segment rather than routed
    /// subnets: enslaved to a bridge (hosts behind it, as on a BGP EVPN
    /// leaf), or no route sends a subnet through it via a peer's VTEP (a
    /// gateway, or a tunnel's remote). There the FDB holds hosts' MACs:
    /// many behind one VTEP, none with a neighbour entry on the device
    /// (neighbours live on the bridge or in the hosts).
    pub fn is_layer2(&self, dev: &VxlanDevice) -> bool {
        dev.bridged
            || !self
                .routes
                .iter()
                .any(|r| r.ifindex == dev.ifindex && (r.gateway.is_some() || r.encap_dst.is_some()))
    }

    /// Pod subnets whose route goes via a VTEP with no neighbour entry, or
    /// whose neighbour's MAC has no FDB entry, on devices that do not
    /// resolve peers on their own.
    pub fn unresolved_subnets(&self) -> Vec<Unresolved> {
        let programmed: Vec<u32> = self
            .vxlan_devices()
            .iter()
            .filter(|d| !self.resolves_on_its_own(d))
            .map(|d| d.ifindex)
            .collect();
        self.routes
            .iter()
            .filter(|r| programmed.contains(&r.ifindex))
            .filter_map(|r| {
                let gw = r.gateway?;
                let n = self
                    .neighbours
                    .iter()
                    .find(|n| n.ifindex == r.ifindex && n.addr == gw);
                let (mac, missing) = match n {
                    None => (None, MissingEntry::Neighbour),
                    Some(n) if self.fdb_dst(r.ifindex, &n.mac).is_none() => {
                        (Some(n.mac), MissingEntry::FdbEntry)
                    }
                    Some(_) => return None,
                };
                Some(Unresolved {
                    ifindex: r.ifindex,
                    device: self
                        .links
                        .get(&r.ifindex)
                        .map(|l| l.name.clone())
                        .unwrap_or_default(),
                    subnet: r.dst,
                    prefix_len: r.prefix_len,
                    vtep: gw,
                    mac,
                    missing,
                })
            })
            .collect()
    }
}

/// The peer behind each VTEP address and pod subnet (see
/// [`Snapshot::inner_owners`]).
pub struct InnerOwners {
    vteps: BTreeMap<IpAddr, IpAddr>,
    subnets: Vec<(IpAddr, u8, IpAddr)>,
}

impl InnerOwners {
    /// The peer that owns `addr`: a VTEP address exactly, else the longest
    /// pod subnet containing it.
    pub fn owner(&self, addr: &IpAddr) -> Option<IpAddr> {
        if let Some(peer) = self.vteps.get(addr) {
            return Some(*peer);
        }
        self.subnets
            .iter()
            .filter(|(net, len, _)| prefix_contains(net, *len, addr))
            .max_by_key(|(_, len, _)| *len)
            .map(|(_, _, peer)| *peer)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn group_macs() {
        assert!(is_group_mac(&[0; 6]));
        assert!(is_group_mac(&[0xff; 6]));
        assert!(is_group_mac(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert!(!is_group_mac(&[0x0e, 0x76, 0x78, 0, 0, 1]));
    }
}
