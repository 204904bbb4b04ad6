//! Finds the VXLAN devices of this network namespace, their underlay
//! devices, and their forwarding databases, through rtnetlink.
//!
//! Devices are found by kind (`vxlan`), never by name, so flannel's
//! `flannel.1`, Cilium's `cilium_vxlan` and a hand-made `vxlan0` are all found.
//!
//! The code: `netlink` dumps links, addresses, FDB, neighbours and
//! routes into a [`Snapshot`]; `devices` and `peers` answer questions
//! over one (which devices, which underlay, who is behind an address);
//! this file holds the snapshot's types and the address helpers.

mod devices;
mod netlink;
mod peers;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
};

use netlink_packet_route::link::InfoVxlan;

pub use self::netlink::snapshot;
pub use crate::schema::{MissingEntry, VxlanDevice};

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

/// Neighbour and FDB entry states (`ndm_state`), a bit set.
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
/// FDB entry flags (`ndm_flags`).
const NTF_EXT_LEARNED: u8 = 0x10;
const NTF_STICKY: u8 = 0x40;

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
