//! The plan: which VXLAN devices, underlay devices and ports to watch,
//! decided from the flags and what netlink shows, before anything is
//! loaded. Every way this can fail is a user error with what to do.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Result, bail};

use super::args::WatchArgs;
use crate::{
    discovery::{Snapshot, VxlanDevice},
    probes::shares_vni,
};

/// VXLAN's ports in the field: IANA's, and the Linux default flannel
/// uses.
pub const WELL_KNOWN_VXLAN_PORTS: [u16; 2] = [4789, 8472];

/// What to attach to.
#[derive(Debug)]
pub struct Plan {
    pub vxlan: Vec<VxlanDevice>,
    pub underlays: Vec<String>,
    pub ports: Vec<u16>,
    /// Ports where VXLAN means a port mismatch between nodes: the
    /// well-known VXLAN ports none of `ports`, and `--port` extras that no
    /// watched device uses.
    pub foreign_ports: Vec<u16>,
    /// The local VTEP addresses the kernel programs filter on (empty: any).
    pub local_addrs: Vec<IpAddr>,
    pub gbp: bool,
    pub filter_vni: bool,
    pub notes: Vec<String>,
    /// The underlay devices were named with --iface: they are not re-chosen
    /// when routes change.
    pub underlays_named: bool,
}

pub fn plan(args: &WatchArgs, snap: &Snapshot) -> Result<Plan> {
    let vxlan = choose_vxlan(args, snap)?;
    if vxlan.is_empty() && args.ifaces.is_empty() {
        bail!(
            "no VXLAN device in this network namespace; run vxtrace where the overlay is (on the node, or `ip netns exec NS vxtrace ...`), name one with --vxlan-dev, or watch an underlay device with --iface and --port"
        );
    }
    let mut notes = Vec::new();
    let underlays = choose_underlays(args, snap, &vxlan, &mut notes)?;
    let ports = choose_ports(args, &vxlan)?;
    for d in &vxlan {
        if !ports.contains(&d.port) {
            notes.push(format!(
                "{} uses UDP port {} which is not watched (--port {}): its packets are not counted at the underlay device",
                d.name,
                d.port,
                ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
            ));
        }
    }
    // The local filter only holds when every watched device names its
    // local address; otherwise any address of this host may be the VTEP.
    let local_addrs =
        if !vxlan.is_empty() && args.ifaces.is_empty() && vxlan.iter().all(|d| d.local.is_some()) {
            sorted(vxlan.iter().filter_map(|d| d.local))
        } else {
            Vec::new()
        };
    let filter_vni = !vxlan.is_empty() && vxlan.iter().all(|d| d.vni.is_some());
    let mut shared: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
    for d in vxlan.iter().filter(|d| shares_vni(d, &vxlan)) {
        shared.entry(d.vni.unwrap_or(0)).or_default().push(&d.name);
    }
    for (vni, names) in shared {
        notes.push(format!(
            "{} share VNI {vni}: frames arriving with it are not checked for a stale destination MAC (inner_dst_mac_mismatch)",
            names.join(" and ")
        ));
    }
    let gbp = vxlan.iter().any(|d| d.gbp);
    if vxlan.is_empty() {
        notes.push(
            "no VXLAN device watched: rx_decap and tx_dev are not measured, any VNI counts".into(),
        );
    }
    let (ports, foreign_ports) = split_foreign_ports(ports, &vxlan);
    Ok(Plan {
        vxlan,
        underlays,
        ports,
        foreign_ports,
        local_addrs,
        gbp,
        filter_vni,
        notes,
        underlays_named: !args.ifaces.is_empty(),
    })
}

/// Not loopback, link-local or multicast.
fn is_global(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_link_local() && !v.is_multicast(),
        IpAddr::V6(v) => {
            !v.is_loopback() && !v.is_multicast() && (v.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

fn sorted<T: Ord>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    items
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The VXLAN devices named with --vxlan-dev, or all of them.
fn choose_vxlan(args: &WatchArgs, snap: &Snapshot) -> Result<Vec<VxlanDevice>> {
    let all = snap.vxlan_devices();
    if args.vxlan_devs.is_empty() {
        return Ok(all);
    }
    let mut chosen = Vec::new();
    for name in &args.vxlan_devs {
        match all.iter().find(|d| &d.name == name) {
            Some(d) => chosen.push(d.clone()),
            None if snap.link_by_name(name).is_some() => bail!(
                "device {name} is not a VXLAN device; `ip -d link show type vxlan` lists the VXLAN devices here"
            ),
            None => bail!(
                "device {name} does not exist in this network namespace; `ip -d link show type vxlan` lists the VXLAN devices here (for a node's namespace use `ip netns exec NS vxtrace ...`)"
            ),
        }
    }
    Ok(chosen)
}

/// The underlay devices named with --iface, or each VXLAN device's.
fn choose_underlays(
    args: &WatchArgs,
    snap: &Snapshot,
    vxlan: &[VxlanDevice],
    notes: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut underlays: Vec<String> = Vec::new();
    for name in &args.ifaces {
        let Some(link) = snap.link_by_name(name) else {
            bail!(
                "underlay device {name} does not exist in this network namespace; `ip link` lists the devices here"
            );
        };
        if link.kind.as_deref() == Some("vxlan") {
            bail!(
                "{name} is a VXLAN device; --iface takes the underlay device (use --vxlan-dev for {name})"
            );
        }
        underlays.push(name.clone());
    }
    if args.ifaces.is_empty() {
        let mut chosen = UnderlayNotes::default();
        for dev in vxlan {
            underlays.extend(underlay_of(snap, dev, &mut chosen)?);
        }
        notes.extend(chosen.into_notes());
    }
    Ok(sorted(underlays))
}

/// How the underlays of VXLAN devices that name none were chosen, gathered
/// so that one note covers every device chosen the same way (an EVPN node
/// has a VXLAN device per VNI, all alike). Keyed by the underlays watched,
/// each with the VXLAN devices they were chosen for.
#[derive(Default)]
struct UnderlayNotes {
    /// Devices whose local address is on no device that sends: the devices
    /// that reach their peers are watched.
    by_remotes: BTreeMap<Vec<String>, Vec<String>>,
    /// Devices with no `dev`, no `local` and no remote yet: every device
    /// with an address is watched.
    any_with_address: BTreeMap<Vec<String>, Vec<String>>,
}

impl UnderlayNotes {
    fn into_notes(self) -> impl Iterator<Item = String> {
        let by_remotes = self.by_remotes.into_iter().map(|(underlays, devs)| {
            format!(
                "{}: the local address is on a device that sends nothing itself (a routed underlay: the VTEP address on lo or a dummy device); watching the devices with routes to the peers instead: {} (and any device a route to a peer goes through later)",
                devs.join(", "),
                underlays.join(", ")
            )
        });
        let any = self.any_with_address.into_iter().map(|(underlays, devs)| {
            format!(
                "{}: no underlay device named (no `dev`, no `local` on a device) and no peer known yet; watching every device with an address: {}",
                devs.join(", "),
                underlays.join(", ")
            )
        });
        by_remotes.chain(any)
    }
}

/// The underlay devices `vxlan`'s traffic uses now (routes change: an
/// uplink comes up, a route moves to another NIC), as at start.
pub fn current_underlays(snap: &Snapshot, vxlan: &[VxlanDevice]) -> Vec<String> {
    let mut notes = UnderlayNotes::default();
    sorted(
        vxlan
            .iter()
            .filter_map(|d| underlay_of(snap, d, &mut notes).ok())
            .flatten(),
    )
}

/// The devices that carry `dev`'s encapsulated traffic: its `dev`, the
/// owner of its `local` address, else the devices that reach its remotes
/// (its FDB entries' and lightweight-tunnel routes' destinations: a
/// metadata device, or a VTEP address on loopback with the peers behind
/// several NICs), else every device with an address.
fn underlay_of(
    snap: &Snapshot,
    dev: &VxlanDevice,
    notes: &mut UnderlayNotes,
) -> Result<Vec<String>> {
    if let Some(link) = snap.named_underlay(dev) {
        return Ok(vec![link.name.clone()]);
    }
    let route_remotes = snap
        .routes
        .iter()
        .filter(|r| r.ifindex == dev.ifindex)
        .filter_map(|r| r.encap_dst);
    let fdb_remotes = snap
        .fdb
        .iter()
        .filter(|e| e.ifindex == dev.ifindex && !e.dst.is_multicast() && !e.dst.is_unspecified())
        .map(|e| e.dst);
    let by_remotes = sorted(
        route_remotes
            .chain(fdb_remotes)
            .flat_map(|a| snap.route_devs(&a))
            .filter(|i| !snap.is_vxlan(*i))
            .filter_map(|i| snap.links.get(&i))
            .filter(|l| !l.loopback)
            .map(|l| l.name.clone()),
    );
    if !by_remotes.is_empty() {
        if dev.local.is_some() {
            notes
                .by_remotes
                .entry(by_remotes.clone())
                .or_default()
                .push(dev.name.clone());
        }
        return Ok(by_remotes);
    }
    // No `dev`, no `local` that names a device, and no remote known yet:
    // the kernel routes by destination, so any device with an address may
    // carry it.
    let candidates: Vec<String> = snap
        .links
        .values()
        .filter(|l| {
            l.up && !l.loopback
                && l.kind.as_deref() != Some("vxlan")
                && snap.addrs.get(&l.ifindex).is_some_and(|a| !a.is_empty())
        })
        .map(|l| l.name.clone())
        .collect();
    if candidates.is_empty() {
        bail!(
            "cannot tell which device carries {}'s encapsulated traffic (no `dev`, no `local`, no device with an address); pass --iface",
            dev.name
        );
    }
    notes
        .any_with_address
        .entry(candidates.clone())
        .or_default()
        .push(dev.name.clone());
    Ok(candidates)
}

/// Splits the chosen ports into those carrying this node's VXLAN and
/// those where VXLAN is a peer sending to the wrong port. With a watched
/// device's port among them, `--port` ports that no watched device uses are
/// of the second kind (watch 8472 and also recognise a peer sending to
/// 4790); otherwise (`--iface` without devices, or `--port` replacing the
/// devices' ports) every chosen port carries traffic.
fn split_foreign_ports(ports: Vec<u16>, vxlan: &[VxlanDevice]) -> (Vec<u16>, Vec<u16>) {
    let used: BTreeSet<u16> = vxlan.iter().map(|d| d.port).collect();
    let (traffic, extras): (Vec<u16>, Vec<u16>) = if ports.iter().any(|p| used.contains(p)) {
        ports.into_iter().partition(|p| used.contains(p))
    } else {
        (ports, Vec::new())
    };
    let foreign = sorted(
        WELL_KNOWN_VXLAN_PORTS
            .into_iter()
            .filter(|p| !traffic.contains(p))
            .chain(extras),
    );
    (traffic, foreign)
}

/// The ports given with --port, or the devices' own.
fn choose_ports(args: &WatchArgs, vxlan: &[VxlanDevice]) -> Result<Vec<u16>> {
    if !args.ports.is_empty() {
        return Ok(sorted(args.ports.iter().copied()));
    }
    let ports = sorted(vxlan.iter().map(|d| d.port));
    if ports.is_empty() {
        bail!("no VXLAN device to take the port from; pass --port (8472 for flannel, 4789 IANA)");
    }
    Ok(ports)
}

impl Plan {
    /// This node's VTEP addresses: each watched VXLAN device's local
    /// address, or (a device without one) the global addresses of the
    /// underlay devices.
    pub fn vteps(&self, snap: &Snapshot) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.vxlan.iter().filter_map(|d| d.local).collect();
        if self.vxlan.iter().any(|d| d.local.is_none()) || self.vxlan.is_empty() {
            for name in &self.underlays {
                let Some(link) = snap.link_by_name(name) else {
                    continue;
                };
                out.extend(
                    snap.addrs
                        .get(&link.ifindex)
                        .into_iter()
                        .flatten()
                        .filter(|a| is_global(a)),
                );
            }
        }
        sorted(out)
    }

    /// One line for the screen: each device with its VNI, port and local
    /// address, then the underlays.
    pub fn describe(&self) -> String {
        let any = || "any".to_string();
        let mut parts: Vec<String> = self
            .vxlan
            .iter()
            .map(|d| {
                format!(
                    "{} (vni {}, udp {}, local {})",
                    d.name,
                    d.vni.map(|v| v.to_string()).unwrap_or_else(any),
                    d.port,
                    d.local.map(|a| a.to_string()).unwrap_or_else(any)
                )
            })
            .collect();
        parts.push(format!("underlay {}", self.underlays.join(", ")));
        parts.join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Link, OverlayRoute};

    fn device(port: u16) -> VxlanDevice {
        VxlanDevice::for_test("flannel.1", 3, Some(1), port)
    }

    #[test]
    fn foreign_ports() {
        // The device's port: the other well-known one is a mismatch.
        assert_eq!(
            split_foreign_ports(vec![8472], &[device(8472)]),
            (vec![8472], vec![4789])
        );
        // An extra --port beside the device's: a mismatch port too.
        assert_eq!(
            split_foreign_ports(vec![4790, 8472], &[device(8472)]),
            (vec![8472], vec![4789, 4790])
        );
        // --port replacing the device's port: watched as traffic.
        assert_eq!(
            split_foreign_ports(vec![4789], &[device(8472)]),
            (vec![4789], vec![8472])
        );
        // No device (--iface): every chosen port is traffic.
        assert_eq!(
            split_foreign_ports(vec![4789, 8472], &[]),
            (vec![4789, 8472], vec![])
        );
    }

    /// A metadata device names no underlay device and no local address:
    /// the device that reaches its routes' remotes carries its traffic.
    #[test]
    fn metadata_device_underlay_from_route_remotes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut snap = Snapshot::default();
        snap.links.insert(2, Link::for_test("eth0", 2, "veth"));
        snap.links.insert(3, Link::for_test("vxm", 3, "vxlan"));
        snap.links.insert(4, Link::for_test("cni0", 4, "bridge"));
        snap.addrs.insert(2, vec![ip("192.0.2.11")]);
        snap.addrs.insert(4, vec![ip("10.244.0.1")]);
        snap.all_routes.push(OverlayRoute {
            ifindex: 2,
            dst: ip("192.0.2.0"),
            prefix_len: 24,
            gateway: None,
            encap_dst: None,
            encap_vni: None,
        });
        snap.routes.push(OverlayRoute {
            ifindex: 3,
            dst: ip("10.244.1.0"),
            prefix_len: 24,
            gateway: Some(ip("10.244.1.0")),
            encap_dst: Some(ip("192.0.2.12")),
            encap_vni: Some(61),
        });
        let dev = VxlanDevice::for_test("vxm", 3, None, 8472);
        let mut notes = UnderlayNotes::default();
        assert_eq!(underlay_of(&snap, &dev, &mut notes).unwrap(), vec!["eth0"]);
        assert_eq!(notes.into_notes().count(), 0);
        // Without such routes: every device with an address, said so.
        snap.routes.clear();
        let mut notes = UnderlayNotes::default();
        assert_eq!(
            underlay_of(&snap, &dev, &mut notes).unwrap(),
            vec!["eth0", "cni0"]
        );
        let said: Vec<String> = notes.into_notes().collect();
        assert_eq!(said.len(), 1);
        assert!(said[0].starts_with("vxm: "), "{said:?}");
        assert!(
            said[0].ends_with("every device with an address: eth0, cni0"),
            "{said:?}"
        );
    }

    /// Devices whose underlays were chosen alike share one note, which
    /// names them all; devices chosen differently get one note each.
    #[test]
    fn one_note_per_way_of_choosing() {
        let mut notes = UnderlayNotes::default();
        for dev in ["vxlan100", "vxlan200"] {
            notes
                .by_remotes
                .entry(vec!["eth0".into(), "eth1".into()])
                .or_default()
                .push(dev.into());
        }
        notes
            .by_remotes
            .entry(vec!["eth2".into()])
            .or_default()
            .push("vxlan300".into());
        let said: Vec<String> = notes.into_notes().collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("vxlan100, vxlan200: the local address"),
            "{said:?}"
        );
        assert!(said[0].contains("instead: eth0, eth1 (and any"), "{said:?}");
        assert!(said[1].starts_with("vxlan300: "), "{said:?}");
    }
}
