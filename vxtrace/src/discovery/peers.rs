//! Queries about peers over a snapshot: who is behind an inner MAC, a VTEP
//! address or a pod subnet, which route reaches an address, and which
//! peer addresses are one node.

use std::{collections::BTreeMap, net::IpAddr};

use super::{InnerOwners, OverlayRoute, Snapshot, prefix_contains};
use crate::mac::is_group_mac;

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
