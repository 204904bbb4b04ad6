//! `vxtrace doctor`: static checks of the overlay's kernel state: FDB,
//! neighbours, routes, MTU, firewall and NAT rules, sysctls. Each finding
//! names its check, the device, the evidence and a concrete fix.
//!
//! Exit codes: 0 clean, 1 findings, 2 the checks could not run.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    process::Command,
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{
    discovery::{
        self, FdbOrigin, Snapshot, VxlanDevice, format_mac, is_group_mac, prefix_contains,
    },
    schema::{Check, DoctorFinding, DoctorReport, Evidence, EvidenceValue, Severity},
};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// One JSON object (`{"findings":[…],"notes":[…]}`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Check only this VXLAN device (repeatable; default: all).
    #[arg(long = "vxlan-dev", value_name = "DEV")]
    pub vxlan_devs: Vec<String>,
}

/// A finding of a check (the type every output of vxtrace carries).
pub type Finding = DoctorFinding;

/// Named values seen by a check: `evidence!({"mac": &mac, "dst": dst})`.
macro_rules! evidence {
    ({ $($k:literal : $v:expr),* $(,)? }) => {{
        let mut e = Evidence::new();
        $( e.insert($k.to_string(), EvidenceValue::from($v)); )*
        e
    }};
}

mod firewall;

/// The address typical of VM NAT networking defaults (VirtualBox/Vagrant).
const VM_NAT_DEFAULT: &str = "10.0.2.15";

fn finding(
    check: Check,
    severity: Severity,
    dev: &str,
    message: String,
    evidence: Evidence,
    fix: String,
) -> Finding {
    Finding {
        check,
        severity,
        device: dev.to_string(),
        message,
        evidence,
        fix,
    }
}

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
fn check_tables(snap: &Snapshot, dev: &VxlanDevice, underlay: Option<u32>, out: &mut Vec<Finding>) {
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

fn link_name(snap: &Snapshot, ifindex: u32) -> String {
    snap.links
        .get(&ifindex)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("ifindex {ifindex}"))
}

fn check_mtu(snap: &Snapshot, dev: &VxlanDevice, underlay: Option<u32>, out: &mut Vec<Finding>) {
    let Some(mtu) = dev.mtu else { return };
    let v6 = dev.local.map(|a| a.is_ipv6()).unwrap_or_else(|| {
        snap.fdb
            .iter()
            .any(|e| e.ifindex == dev.ifindex && e.dst.is_ipv6())
            || snap
                .routes
                .iter()
                .any(|r| r.ifindex == dev.ifindex && r.encap_dst.is_some_and(|a| a.is_ipv6()))
    });
    let overhead = if v6 { 70 } else { 50 };
    if let Some(ul) = underlay.and_then(|i| snap.links.get(&i))
        && let Some(ul_mtu) = ul.mtu
        && mtu + overhead > ul_mtu
    {
        out.push(finding(
                Check::MtuTooLarge,
                Severity::Error,
            &dev.name,
            format!(
                "{} MTU {mtu} + {overhead} bytes of VXLAN over {} = {} > {} MTU {ul_mtu}: full-size packets are dropped or fragmented",
                dev.name,
                if v6 { "IPv6" } else { "IPv4" },
                mtu + overhead,
                ul.name
            ),
            evidence!({"vxlan_mtu": mtu, "overhead": overhead, "underlay": &ul.name, "underlay_mtu": ul_mtu}),
            format!("set {} MTU to {} (ip link set {} mtu {}) or raise the underlay MTU", dev.name, ul_mtu - overhead, dev.name, ul_mtu - overhead),
        ));
    }
    for l in snap.links.values() {
        let pod_side = matches!(l.kind.as_deref(), Some("bridge") | Some("veth"))
            && Some(l.ifindex) != underlay
            && l.master.is_none_or(|m| {
                snap.links
                    .get(&m)
                    .is_some_and(|b| b.kind.as_deref() == Some("bridge"))
            });
        if pod_side
            && let Some(m) = l.mtu
            && m > mtu
            && !is_underlay_like(snap, l.ifindex)
        {
            out.push(finding(
                Check::PodMtuAboveVxlan,
                Severity::Warning,
                &dev.name,
                format!("{} has MTU {m}, above {} MTU {mtu}: large pod packets cannot cross the overlay", l.name, dev.name),
                evidence!({"interface": &l.name, "mtu": m, "vxlan_mtu": mtu}),
                format!("set pod interfaces' MTU to {mtu} or less (the CNI's mtu setting)"),
            ));
        }
    }
}

/// A device with an address outside every overlay route is an underlay-ish
/// device (e.g. a veth carrying the node's own address), not a pod one.
fn is_underlay_like(snap: &Snapshot, ifindex: u32) -> bool {
    let overlay_nets: Vec<_> = snap.routes.iter().map(|r| (r.dst, r.prefix_len)).collect();
    snap.addrs.get(&ifindex).is_some_and(|addrs| {
        addrs.iter().any(|a| {
            !a.is_loopback()
                && !matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
                && !overlay_nets
                    .iter()
                    .any(|(n, l)| prefix_contains(n, (*l).min(16), a))
        })
    })
}

/// Firewall and NAT checks over `nft -j list ruleset`.
fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether some route of the address family sends a subnet through a
/// VXLAN device via a peer's VTEP (a gateway, or a lightweight-tunnel
/// remote): the node then forwards traffic between the overlay and its
/// pods.
fn routes_subnets_through_overlay(snap: &Snapshot, v6: bool) -> bool {
    snap.routes
        .iter()
        .any(|r| r.dst.is_ipv6() == v6 && (r.gateway.is_some() || r.encap_dst.is_some()))
}

fn check_sysctls(
    snap: &Snapshot,
    devs: &[VxlanDevice],
    underlays: &[u32],
    nat_present: bool,
    out: &mut Vec<Finding>,
) {
    let dev0 = &devs[0].name;
    if sysctl("net/ipv4/tcp_tw_recycle") == Some(1) && nat_present {
        out.push(finding(
                Check::TcpTwRecycleWithNat,
                Severity::Error, dev0,
            "net.ipv4.tcp_tw_recycle=1 with NAT rules present: clients behind one address get their SYNs dropped (PAWS)".into(),
            evidence!({"tcp_tw_recycle": 1}),
            "sysctl -w net.ipv4.tcp_tw_recycle=0".into()));
    }
    // Only a node that routes subnets through the overlay (pods behind
    // it, as flannel and Calico lay it out) must forward; a VXLAN device
    // used as one layer-2 segment between hosts needs no forwarding.
    // Per family: whether it is IPv6, its sysctl, the evidence key, and
    // the family in words.
    for (v6, sysctl_name, key, family) in [
        (false, "net.ipv4.ip_forward", "ip_forward", ""),
        (
            true,
            "net.ipv6.conf.all.forwarding",
            "ipv6_forwarding",
            "IPv6 ",
        ),
    ] {
        if routes_subnets_through_overlay(snap, v6)
            && sysctl(&sysctl_name.replace('.', "/")) == Some(0)
        {
            let mut evidence = Evidence::new();
            evidence.insert(key.to_string(), EvidenceValue::from(0));
            out.push(finding(
                Check::IpForwardOff,
                Severity::Error,
                dev0,
                format!(
                    "{sysctl_name}=0: this node does not forward {family}pod traffic to and from the overlay"
                ),
                evidence,
                format!("sysctl -w {sysctl_name}=1"),
            ));
        }
    }
    let all = sysctl("net/ipv4/conf/all/rp_filter").unwrap_or(0);
    let mut names: Vec<(String, &str)> = devs
        .iter()
        .map(|d| (d.name.clone(), "VXLAN device"))
        .collect();
    names.extend(
        underlays
            .iter()
            .filter_map(|i| snap.links.get(i))
            .map(|l| (l.name.clone(), "underlay device")),
    );
    for (name, role) in names {
        // /proc/sys keeps the device name as it is ("flannel.1").
        let dev_v = sysctl(&format!("net/ipv4/conf/{name}/rp_filter")).unwrap_or(0);
        // The kernel uses the larger of "all" and the device's value.
        let effective = all.max(dev_v);
        if effective == 1 {
            out.push(finding(
                Check::RpFilterStrict,
                Severity::Warning, &name,
                format!("strict reverse-path filtering on {role} {name} (rp_filter: all={all}, {name}={dev_v}): packets from peers routed asymmetrically are dropped (IP_RPFILTER)"),
                evidence!({"device": &name, "all": all, "dev": dev_v}),
                format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2 (loose) and net.ipv4.conf.all.rp_filter=0 or 2")));
        }
    }
}

/// Runs every check on this namespace. Errors only when nothing can be checked.
pub async fn check(only: &[String]) -> Result<(Vec<Finding>, Vec<String>)> {
    let snap = discovery::snapshot().await?;
    let all = snap.vxlan_devices();
    let devs: Vec<VxlanDevice> = if only.is_empty() {
        all
    } else {
        all.into_iter().filter(|d| only.contains(&d.name)).collect()
    };
    if devs.is_empty() {
        bail!(
            "no VXLAN device to check in this network namespace; run it where the overlay is (ip netns exec NS vxtrace doctor) or name one with --vxlan-dev"
        );
    }
    Ok(check_snapshot(&snap, &devs))
}

pub fn check_snapshot(snap: &Snapshot, devs: &[VxlanDevice]) -> (Vec<Finding>, Vec<String>) {
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let mut underlays = Vec::new();
    for dev in devs {
        let underlay = snap.named_underlay(dev).map(|l| l.ifindex);
        if let Some(u) = underlay {
            underlays.push(u);
        }
        check_tables(snap, dev, underlay, &mut out);
        check_mtu(snap, dev, underlay, &mut out);
    }
    // Pod networks: the overlay routes plus this node's own (the subnets of
    // bridges that carry pods are not known generically; overlay routes
    // widened to /16 cover flannel's per-node /24s).
    let mut pod_nets: Vec<(IpAddr, u8)> = snap
        .routes
        .iter()
        .map(|r| {
            (
                r.dst,
                r.prefix_len.min(if r.dst.is_ipv4() { 16 } else { 64 }),
            )
        })
        .collect();
    pod_nets.sort();
    pod_nets.dedup();
    let mut nat_present = false;
    match Command::new("nft").args(["-j", "list", "ruleset"]).output() {
        Ok(o) if o.status.success() => match serde_json::from_slice::<Value>(&o.stdout) {
            Ok(v) => {
                let rules = firewall::from_nft(&v);
                nat_present |= firewall::rewrites_addresses(&rules);
                firewall::check(&rules, devs, &pod_nets, &mut out);
            }
            Err(e) => notes.push(format!(
                "nft -j output not understood ({e}): nftables checks skipped"
            )),
        },
        Ok(o) => notes.push(format!(
            "nft failed ({}): nftables checks skipped",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(_) => notes.push("nft not installed: nftables checks skipped".into()),
    }
    // Legacy iptables rules are invisible to nft; with the nft backend they
    // are already covered above.
    if let Ok(o) = Command::new("iptables-legacy-save").output()
        && o.status.success()
    {
        let rules = firewall::from_iptables(&String::from_utf8_lossy(&o.stdout));
        nat_present |= firewall::rewrites_addresses(&rules);
        firewall::check(&rules, devs, &pod_nets, &mut out);
    }
    check_sysctls(snap, devs, &underlays, nat_present, &mut out);
    out.dedup();
    (out, notes)
}

pub fn print_text(findings: &[Finding], notes: &[String]) {
    for n in notes {
        println!("note: {n}");
    }
    if findings.is_empty() {
        println!("no problems found");
        return;
    }
    for f in findings {
        println!(
            "[{}] {} ({}): {}\n    evidence: {}\n    fix: {}",
            f.severity,
            f.check,
            f.device,
            f.message,
            crate::schema::evidence_text(&f.evidence),
            f.fix
        );
    }
}

/// `vxtrace doctor`: returns the exit code.
pub fn run(args: DoctorArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vxtrace: error: starting the async runtime: {e}");
            return 2;
        }
    };
    match rt.block_on(check(&args.vxlan_devs)) {
        Ok((findings, notes)) => {
            let clean = findings.is_empty();
            if args.json {
                let report = DoctorReport { findings, notes };
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print_text(&findings, &notes);
            }
            if clean { 0 } else { 1 }
        }
        Err(e) => {
            eprintln!("vxtrace: error: {e:#}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forwarding matters where subnets are routed through the overlay
    /// (flannel's `via VTEP onlink`, a metadata device's encap routes),
    /// per address family; a device that is one L2 segment needs none.
    #[test]
    fn forwarding_is_needed_only_for_routed_subnets() {
        let route = |dst: &str, prefix_len, gateway: Option<&str>| discovery::OverlayRoute {
            ifindex: 3,
            dst: dst.parse().unwrap(),
            prefix_len,
            gateway: gateway.map(|g| g.parse().unwrap()),
            encap_dst: None,
            encap_vni: None,
        };
        let mut snap = Snapshot {
            routes: vec![route("10.50.0.0", 24, None)],
            ..Default::default()
        };
        assert!(!routes_subnets_through_overlay(&snap, false));
        snap.routes
            .push(route("10.244.1.0", 24, Some("10.244.1.0")));
        assert!(routes_subnets_through_overlay(&snap, false));
        assert!(!routes_subnets_through_overlay(&snap, true));
        snap.routes.push(route("fd00:1::", 64, Some("fd00:1::")));
        assert!(routes_subnets_through_overlay(&snap, true));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mac(last: u8) -> [u8; 6] {
        [0x0e, 0x65, 0x76, 0, 0, last]
    }

    fn entry(mac: [u8; 6], dst: &str, origin: FdbOrigin) -> discovery::FdbEntry {
        discovery::FdbEntry {
            ifindex: 3,
            mac,
            dst: ip(dst),
            vni: None,
            origin,
        }
    }

    fn route(ifindex: u32, dst: &str, prefix_len: u8, gw: Option<&str>) -> discovery::OverlayRoute {
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
    fn evpn_leaf() -> (Snapshot, VxlanDevice) {
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

    fn table_findings(snap: &Snapshot, dev: &VxlanDevice) -> Vec<Finding> {
        let mut out = Vec::new();
        check_tables(
            snap,
            dev,
            snap.named_underlay(dev).map(|l| l.ifindex),
            &mut out,
        );
        out
    }

    fn checks(out: &[Finding]) -> Vec<&str> {
        out.iter().map(|f| f.check.as_str()).collect()
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
}
