//! Queries about a snapshot's devices: its VXLAN devices, the underlay
//! device each one names, whether one resolves peers on its own or is a
//! layer-2 segment, and the routed subnets it cannot reach.

use std::net::IpAddr;

use super::{Link, MissingEntry, Snapshot, Unresolved, VxlanDevice, netlink::vxlan_from_info};

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
