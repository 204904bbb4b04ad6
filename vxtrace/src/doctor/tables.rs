//! The FDB, neighbour and route checks of one VXLAN device: where each
//! entry sends, entries that lack their counterpart, and MACs or
//! addresses that appear twice.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{Finding, finding, link_name};
use crate::{
    discovery::{self, FdbOrigin, Snapshot, VxlanDevice},
    mac::{format_mac, is_group_mac},
    schema::{Check, Evidence, EvidenceValue, Severity},
};

/// The address typical of VM NAT networking defaults (VirtualBox/Vagrant).
const VM_NAT_DEFAULT: &str = "10.0.2.15";

/// One VXLAN device's FDB and neighbour entries, as the checks see them.
struct DeviceTables<'a> {
    snap: &'a Snapshot,
    dev: &'a VxlanDevice,
    underlay: Option<u32>,
    /// A layer-2 device ([`Snapshot::is_layer2`]): its FDB holds hosts'
    /// MACs, not one VTEP MAC per peer.
    layer2: bool,
    /// Entries of one unicast MAC each.
    fdb: Vec<&'a discovery::FdbEntry>,
    /// Flood entries (all-zeros MAC): where what has no entry goes.
    flood: Vec<&'a discovery::FdbEntry>,
    /// Multicast neighbour entries (IPv6 ND on the device) belong to no
    /// peer and are left out.
    neigh: Vec<&'a discovery::Neighbour>,
    /// This host's own addresses.
    own: BTreeSet<IpAddr>,
}

/// FDB, neighbour and route checks of one VXLAN device.
pub(super) fn check(
    snap: &Snapshot,
    dev: &VxlanDevice,
    underlay: Option<u32>,
    out: &mut Vec<Finding>,
) {
    let entries = || snap.fdb.iter().filter(|e| e.ifindex == dev.ifindex);
    let t = DeviceTables {
        snap,
        dev,
        underlay,
        layer2: snap.is_layer2(dev),
        fdb: entries().filter(|e| !is_group_mac(&e.mac)).collect(),
        flood: entries().filter(|e| e.is_flood()).collect(),
        neigh: snap
            .neighbours
            .iter()
            .filter(|n| n.ifindex == dev.ifindex && !is_group_mac(&n.mac) && !n.addr.is_multicast())
            .collect(),
        own: snap.addrs.values().flatten().copied().collect(),
    };
    // On a layer-2 device many MACs behind one VTEP are normal, and a
    // remote MAC needs no neighbour entry here.
    if !t.layer2 {
        check_fdb_duplicates(&t, out);
        for e in &t.fdb {
            check_fdb_neighbour(&t, e, out);
        }
    }
    for e in t.fdb.iter().chain(&t.flood) {
        check_fdb_dst(&t, e, out);
    }
    check_neighbours(&t, out);
    // Such a device learns or floods what it lacks: a missing entry is no fault.
    if !snap.resolves_on_its_own(dev) {
        check_routes(&t, out);
    }
}

/// Entries an overlay agent programs one per peer: its VTEP MAC. Learned
/// MACs and a control plane's (BGP EVPN) are hosts' MACs behind a peer.
fn vtep_entry(e: &discovery::FdbEntry) -> bool {
    e.origin == FdbOrigin::Static
}

/// Several VTEP MACs behind one underlay address (routed devices).
fn check_fdb_duplicates(t: &DeviceTables<'_>, out: &mut Vec<Finding>) {
    let (fdb, dev) = (&t.fdb, t.dev);
    let mut by_dst: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
    for e in fdb.iter().filter(|e| vtep_entry(e)) {
        by_dst.entry(e.dst).or_default().push(format_mac(&e.mac));
    }
    for (dst, macs) in &by_dst {
        if macs.len() > 1 {
            let vm = dst.to_string() == VM_NAT_DEFAULT;
            out.push(finding(
                Check::FdbDuplicateUnderlay,
                Severity::Error,
                &dev.name,
                format!(
                    "{} VTEP MACs point at one underlay address {dst}{}",
                    macs.len(),
                    if vm { " (10.0.2.15: the VM NAT default address)" } else { "" }
                ),
                evidence!({"dst": dst, "macs": macs}),
                if vm {
                    "every node registered its NAT interface (10.0.2.15) as its public address: set the node's real address (flannel --iface / --public-ip, kubelet --node-ip)".into()
                } else {
                    "each node needs its own underlay address: check the nodes' public-ip annotations (flannel.alpha.coreos.com/public-ip) and remove stale FDB entries (bridge fdb del)".into()
                },
            ));
        }
    }
}

/// How a finding names an FDB entry: a flood entry, or a MAC's entry
/// with who installed it.
fn entry_text(e: &discovery::FdbEntry) -> String {
    let by = match e.origin {
        FdbOrigin::ExternLearn => " (extern_learn: BGP EVPN)",
        FdbOrigin::Sticky => " (sticky: BGP EVPN)",
        FdbOrigin::Learned | FdbOrigin::Static => "",
    };
    if e.is_flood() {
        format!("flood entry 00:00:00:00:00:00{by}")
    } else {
        format!("FDB entry {}{by}", format_mac(&e.mac))
    }
}

/// Where one FDB entry (a MAC's, or a flood entry) sends.
fn check_fdb_dst(t: &DeviceTables<'_>, e: &discovery::FdbEntry, out: &mut Vec<Finding>) {
    let (snap, dev, own, underlay) = (t.snap, t.dev, &t.own, t.underlay);
    let mac = format_mac(&e.mac);
    let entry = entry_text(e);
    if own.contains(&e.dst) {
        let fix = if e.origin.control_plane() {
            "another VTEP announces this host's VTEP address as its own (two VTEPs with one address): give each VTEP its own address (the VXLAN device's `local`, announced by BGP)"
            .to_string()
        } else if t.layer2 {
            format!(
                "this host sends to itself: a list of VTEPs copied to every host names this one too; remove the entry (bridge fdb del {mac} dev {} dst {})",
                dev.name, e.dst
            )
        } else {
            "a peer registered this node's address as its own: fix that node's public address, then `bridge fdb del` the entry".to_string()
        };
        out.push(finding(
            Check::FdbDstIsLocal,
            Severity::Error,
            &dev.name,
            format!(
                "{entry} sends to {}, one of this host's own addresses",
                e.dst
            ),
            evidence!({"mac": &mac, "dst": e.dst}),
            fix,
        ));
    } else if e.dst.to_string() == VM_NAT_DEFAULT {
        out.push(finding(
            Check::FdbDstVmNat,
            Severity::Error,
            &dev.name,
            format!("{entry} sends to 10.0.2.15, the VM NAT default address"),
            evidence!({"mac": &mac, "dst": e.dst}),
            "the peer registered its NAT interface address: set its real node address (flannel --iface)".into(),
        ));
    } else if e.dst.is_multicast() {
        // A group is reached through the device's own `dev`, not by a route.
    } else {
        match (snap.route_dev(&e.dst), underlay) {
            (None, _) => out.push(finding(
                Check::FdbDstUnreachable,
                Severity::Error,
                &dev.name,
                format!("{entry} sends to {}, which no route reaches", e.dst),
                evidence!({"mac": &mac, "dst": e.dst}),
                if e.origin.control_plane() {
                    format!("the underlay does not carry VTEP {}'s address, though BGP EVPN announces MACs behind it: announce every VTEP address into the underlay (its loopback /32 in the fabric's routing) or add a route to it", e.dst)
                } else {
                    "add a route to the peer's underlay address, or fix the peer's registered address".into()
                },
            )),
            (Some(i), Some(ul)) if i != ul => out.push(finding(
                Check::FdbDstWrongInterface,
                Severity::Warning,
                &dev.name,
                format!(
                    "{entry} sends to {} through {}, not through the VXLAN device's underlay {}",
                    e.dst,
                    link_name(snap, i),
                    link_name(snap, ul)
                ),
                evidence!({"mac": &mac, "dst": e.dst, "route_dev": link_name(snap, i), "underlay": link_name(snap, ul)}),
                "the peer's address is reached through another interface: check the routes or the VXLAN device's `dev`".into(),
            )),
            _ => {}
        }
    }
}

/// Whether a neighbour entry uses a VTEP entry's MAC (routed devices).
fn check_fdb_neighbour(t: &DeviceTables<'_>, e: &discovery::FdbEntry, out: &mut Vec<Finding>) {
    if !vtep_entry(e) || t.neigh.iter().any(|n| n.mac == e.mac) {
        return;
    }
    out.push(finding(
        Check::FdbWithoutNeighbour,
        Severity::Warning,
        &t.dev.name,
        format!("FDB entry {} -> {} has no neighbour entry using that MAC", format_mac(&e.mac), e.dst),
        evidence!({"mac": format_mac(&e.mac), "dst": e.dst}),
        "a leftover of a removed peer, or a missing neighbour entry: `bridge fdb del` it or let the overlay agent re-sync".into(),
    ));
}

/// Neighbours whose MAC no FDB entry sends anywhere; one MAC for several
/// neighbours.
fn check_neighbours(t: &DeviceTables<'_>, out: &mut Vec<Finding>) {
    let (fdb, dev) = (&t.fdb, t.dev);
    let mut macs_seen: BTreeMap<[u8; 6], Vec<IpAddr>> = BTreeMap::new();
    // A metadata (`external`) device has no FDB (each route names its
    // remote); others may learn or flood what they lack.
    let resolves = t.snap.resolves_on_its_own(dev);
    for n in &t.neigh {
        macs_seen.entry(n.mac).or_default().push(n.addr);
        if !resolves && !fdb.iter().any(|e| e.mac == n.mac) {
            out.push(finding(
                Check::NeighbourWithoutFdb,
                if n.permanent { Severity::Error } else { Severity::Warning },
                &dev.name,
                format!(
                    "{}neighbour {} has MAC {} but no FDB entry sends that MAC anywhere: frames to it are dropped",
                    if n.permanent { "PERMANENT " } else { "" },
                    n.addr,
                    format_mac(&n.mac)
                ),
                evidence!({"addr": n.addr, "mac": format_mac(&n.mac), "permanent": n.permanent}),
                "the peer's VTEP was recreated with a new MAC: replace the neighbour entry with the new MAC (ip neigh replace … lladdr NEW) or restart the overlay agent".into(),
            ));
        }
    }
    for (mac, addrs) in macs_seen {
        if addrs.len() > 1 {
            out.push(finding(
                Check::DuplicateMac,
                Severity::Warning,
                &dev.name,
                format!("MAC {} is the neighbour entry of {} addresses", format_mac(&mac), addrs.len()),
                evidence!({"mac": format_mac(&mac), "addrs": addrs}),
                "two peers share a VTEP MAC (a cloned VM?): give each node's VXLAN device its own MAC".into(),
            ));
        }
    }
}

/// Pod-subnet routes via a VTEP address no neighbour entry resolves.
fn check_routes(t: &DeviceTables<'_>, out: &mut Vec<Finding>) {
    let (snap, dev, neigh) = (t.snap, t.dev, &t.neigh);
    for r in snap.routes.iter().filter(|r| r.ifindex == dev.ifindex) {
        if let Some(gw) = r.gateway
            && !neigh.iter().any(|n| n.addr == gw)
        {
            out.push(finding(
                Check::RouteWithoutNeighbour,
                Severity::Error,
                &dev.name,
                format!("route {}/{} via {gw} has no neighbour entry for {gw}", r.dst, r.prefix_len),
                evidence!({"route": format!("{}/{}", r.dst, r.prefix_len), "via": gw}),
                "the overlay agent did not program the peer's VTEP: add the neighbour (ip neigh add GW lladdr MAC dev DEV nud permanent) or restart the agent".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::{checks, entry, evpn_leaf, flannel_node, ip, mac, route};

    fn table_findings(snap: &Snapshot, dev: &VxlanDevice) -> Vec<Finding> {
        let mut out = Vec::new();
        check(
            snap,
            dev,
            snap.named_underlay(dev).map(|l| l.ifindex),
            &mut out,
        );
        out
    }

    /// Many MACs behind one VTEP, none with a neighbour entry on the
    /// device, sticky and static ones among them: a healthy EVPN leaf.
    #[test]
    fn evpn_leaf_is_clean() {
        let (snap, dev) = evpn_leaf();
        assert!(snap.is_layer2(&dev));
        let out = table_findings(&snap, &dev);
        assert!(out.is_empty(), "{out:?}");
    }

    /// The same static entries on a routed device (flannel's: one VTEP MAC
    /// per peer, each with a neighbour entry) are still a duplicate and
    /// leftovers.
    #[test]
    fn routed_device_keeps_its_vtep_checks() {
        let (mut snap, mut dev) = evpn_leaf();
        dev.bridged = false;
        snap.routes = vec![route(3, "10.244.1.0", 24, Some("10.244.1.0"))];
        snap.neighbours = vec![discovery::Neighbour {
            ifindex: 3,
            addr: ip("10.244.1.0"),
            mac: mac(0x21),
            permanent: true,
        }];
        for e in &mut snap.fdb {
            if !e.is_flood() {
                e.origin = FdbOrigin::Static;
            }
        }
        let out = table_findings(&snap, &dev);
        let mut found = checks(&out);
        found.sort();
        // Six MACs behind 198.18.0.2, two behind 198.18.0.3; every MAC
        // but the neighbour's has no neighbour entry.
        assert_eq!(
            found,
            vec![
                "fdb_duplicate_underlay",
                "fdb_duplicate_underlay",
                "fdb_without_neighbour",
                "fdb_without_neighbour",
                "fdb_without_neighbour",
                "fdb_without_neighbour",
                "fdb_without_neighbour",
                "fdb_without_neighbour",
                "fdb_without_neighbour",
            ],
            "{out:?}"
        );
        // A control plane's entries on such a device are no VTEP entries.
        for e in &mut snap.fdb {
            if e.mac != mac(0x21) && !e.is_flood() {
                e.origin = FdbOrigin::ExternLearn;
            }
        }
        assert!(table_findings(&snap, &dev).is_empty());
    }

    /// The underlay does not carry a VTEP's address: every entry behind it,
    /// the flood entry included, is named, though no underlay device is
    /// named (the VTEP address is on `lo`).
    #[test]
    fn unreachable_vtep_on_a_layer2_device() {
        let (mut snap, dev) = evpn_leaf();
        assert!(snap.named_underlay(&dev).is_none());
        snap.all_routes.retain(|r| r.dst != ip("198.18.0.3"));
        let out = table_findings(&snap, &dev);
        assert_eq!(checks(&out), vec!["fdb_dst_unreachable"; 3], "{out:?}");
        assert!(
            out.iter()
                .all(|f| f.evidence["dst"] == EvidenceValue::from(ip("198.18.0.3")))
        );
        let messages: Vec<&str> = out.iter().map(|f| f.message.as_str()).collect();
        assert!(
            messages
                .iter()
                .any(|m| m.starts_with("flood entry 00:00:00:00:00:00 sends to 198.18.0.3")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("(extern_learn: BGP EVPN)")),
            "{messages:?}"
        );
        assert!(
            out[0]
                .fix
                .contains("underlay does not carry VTEP 198.18.0.3"),
            "{}",
            out[0].fix
        );
    }

    /// A flood list that names this host's own VTEP, and a multicast group
    /// (reached through the device's `dev`, not a route), which is fine.
    #[test]
    fn flood_entries_are_checked() {
        let (mut snap, dev) = evpn_leaf();
        snap.fdb
            .push(entry([0; 6], "198.18.0.1", FdbOrigin::Static));
        snap.fdb.push(entry([0; 6], "239.1.1.1", FdbOrigin::Static));
        let out = table_findings(&snap, &dev);
        assert_eq!(checks(&out), vec!["fdb_dst_is_local"], "{out:?}");
        assert!(
            out[0].message.starts_with("flood entry"),
            "{}",
            out[0].message
        );
        assert!(
            out[0].fix.contains("copied to every host"),
            "{}",
            out[0].fix
        );
    }

    /// Which checks speak for a device, sorted.
    fn found(snap: &Snapshot, dev: &VxlanDevice) -> Vec<String> {
        let mut v: Vec<String> = checks(&table_findings(snap, dev))
            .into_iter()
            .map(String::from)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_flannel_node_is_clean() {
        let (snap, dev) = flannel_node();
        assert!(
            found(&snap, &dev).is_empty(),
            "{:?}",
            table_findings(&snap, &dev)
        );
    }

    /// A peer registered this node's address as its own.
    #[test]
    fn fdb_dst_is_local() {
        let (mut snap, dev) = flannel_node();
        snap.fdb[0].dst = ip("192.0.2.11");
        assert_eq!(found(&snap, &dev), vec!["fdb_dst_is_local"]);
        let f = &table_findings(&snap, &dev)[0];
        assert_eq!(f.device, "flannel.1");
        assert!(f.fix.contains("public address"), "{}", f.fix);
    }

    /// Two nodes that registered their VM NAT address: both entries go
    /// there, and the duplicate says why.
    #[test]
    fn fdb_dst_vm_nat_and_duplicate_underlay() {
        let (mut snap, dev) = flannel_node();
        for e in &mut snap.fdb {
            e.dst = ip("10.0.2.15");
        }
        assert_eq!(
            found(&snap, &dev),
            vec!["fdb_dst_vm_nat", "fdb_dst_vm_nat", "fdb_duplicate_underlay"]
        );
        let out = table_findings(&snap, &dev);
        let dup = out
            .iter()
            .find(|f| f.check == Check::FdbDuplicateUnderlay)
            .unwrap();
        assert!(dup.message.contains("VM NAT default"), "{}", dup.message);
        assert!(dup.fix.contains("--public-ip"), "{}", dup.fix);
        assert_eq!(
            dup.evidence["macs"],
            EvidenceValue::from(vec![
                "0e:65:76:00:00:12".to_string(),
                "0e:65:76:00:00:13".to_string()
            ])
        );
    }

    /// An entry to an address no route reaches, and one reached through
    /// another device than the VXLAN device's underlay.
    #[test]
    fn fdb_dst_unreachable_and_wrong_interface() {
        let (mut snap, dev) = flannel_node();
        snap.fdb[0].dst = ip("203.0.113.9");
        snap.links
            .insert(6, discovery::Link::for_test("eth1", 6, "veth"));
        snap.all_routes.push(route(6, "198.51.100.0", 24, None));
        snap.fdb[1].dst = ip("198.51.100.13");
        assert_eq!(
            found(&snap, &dev),
            vec!["fdb_dst_unreachable", "fdb_dst_wrong_interface"]
        );
        let out = table_findings(&snap, &dev);
        let wrong = out
            .iter()
            .find(|f| f.check == Check::FdbDstWrongInterface)
            .unwrap();
        assert_eq!(wrong.severity, Severity::Warning);
        assert_eq!(wrong.evidence["route_dev"], EvidenceValue::from("eth1"));
        assert_eq!(wrong.evidence["underlay"], EvidenceValue::from("eth0"));
    }

    /// A VTEP MAC's entry that no neighbour entry uses: a leftover.
    #[test]
    fn fdb_without_neighbour() {
        let (mut snap, dev) = flannel_node();
        snap.fdb
            .push(entry(mac(0x14), "192.0.2.14", FdbOrigin::Static));
        assert_eq!(found(&snap, &dev), vec!["fdb_without_neighbour"]);
        let f = &table_findings(&snap, &dev)[0];
        assert_eq!(f.evidence["dst"], EvidenceValue::from(ip("192.0.2.14")));
    }

    /// The peer's FDB entry is gone: its permanent neighbour entry's
    /// frames are dropped (an error); a learned one is a warning.
    #[test]
    fn neighbour_without_fdb() {
        let (mut snap, dev) = flannel_node();
        snap.fdb.remove(1);
        let out = table_findings(&snap, &dev);
        assert_eq!(checks(&out), vec!["neighbour_without_fdb"]);
        assert_eq!(out[0].severity, Severity::Error);
        assert!(
            out[0].message.starts_with("PERMANENT neighbour 10.244.2.0"),
            "{}",
            out[0].message
        );
        snap.neighbours[1].permanent = false;
        assert_eq!(table_findings(&snap, &dev)[0].severity, Severity::Warning);
    }

    /// Two neighbour entries with one MAC (a cloned VM).
    #[test]
    fn duplicate_mac() {
        let (mut snap, dev) = flannel_node();
        snap.neighbours[1].mac = mac(0x12);
        // The second peer's own FDB entry is then a leftover too.
        assert_eq!(
            found(&snap, &dev),
            vec!["duplicate_mac", "fdb_without_neighbour"]
        );
        let out = table_findings(&snap, &dev);
        let dup = out.iter().find(|f| f.check == Check::DuplicateMac).unwrap();
        assert_eq!(
            dup.evidence["addrs"],
            EvidenceValue::from(vec![ip("10.244.1.0"), ip("10.244.2.0")])
        );
    }

    /// A pod subnet routed via a VTEP address with no neighbour entry.
    #[test]
    fn route_without_neighbour() {
        let (mut snap, dev) = flannel_node();
        snap.routes
            .push(route(3, "10.244.4.0", 24, Some("10.244.4.0")));
        assert_eq!(found(&snap, &dev), vec!["route_without_neighbour"]);
        let f = &table_findings(&snap, &dev)[0];
        assert_eq!(f.evidence["route"], EvidenceValue::from("10.244.4.0/24"));
        // A device that fills its entries on demand (an l3miss agent's)
        // needs none in advance.
        let mut on_demand = dev.clone();
        on_demand.fills_on_demand = true;
        assert!(found(&snap, &on_demand).is_empty());
    }
}
