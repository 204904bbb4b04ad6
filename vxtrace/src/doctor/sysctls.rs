//! Kernel settings that break an overlay: forwarding off on a node that
//! routes pod subnets through it, strict reverse-path filtering on the
//! devices its packets cross, and `tcp_tw_recycle` beside NAT.

use super::{Finding, finding, link_name};
use crate::{
    discovery::{Snapshot, VxlanDevice},
    schema::{Check, Evidence, EvidenceValue, Severity},
};

/// What a finding about a setting of the whole node names as its device,
/// as /proc/sys/net/ipv4/conf/all does.
const WHOLE_NODE: &str = "all";

/// A sysctl's value by its path under /proc/sys (`net/ipv4/ip_forward`).
pub(super) fn read(path: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The device of the first route of the address family that sends a
/// subnet through a VXLAN device via a peer's VTEP (a gateway, or a
/// lightweight-tunnel remote): such a node forwards traffic between the
/// overlay and its pods.
fn device_routing_subnets(snap: &Snapshot, v6: bool) -> Option<u32> {
    snap.routes
        .iter()
        .find(|r| r.dst.is_ipv6() == v6 && (r.gateway.is_some() || r.encap_dst.is_some()))
        .map(|r| r.ifindex)
}

/// The sysctl checks; `sysctl` reads a value (see [`read`]).
pub(super) fn check(
    snap: &Snapshot,
    devs: &[VxlanDevice],
    underlays: &[u32],
    nat_present: bool,
    sysctl: &dyn Fn(&str) -> Option<i64>,
    out: &mut Vec<Finding>,
) {
    if sysctl("net/ipv4/tcp_tw_recycle") == Some(1) && nat_present {
        out.push(finding(
            Check::TcpTwRecycleWithNat,
            Severity::Error,
            WHOLE_NODE,
            "net.ipv4.tcp_tw_recycle=1 with NAT rules present: clients behind one address get their SYNs dropped (PAWS)".into(),
            evidence!({"tcp_tw_recycle": 1}),
            "sysctl -w net.ipv4.tcp_tw_recycle=0".into(),
        ));
    }
    check_forwarding(snap, sysctl, out);
    check_rp_filter(snap, devs, underlays, sysctl, out);
}

/// Only a node that routes subnets through the overlay (pods behind it,
/// as flannel and Calico lay it out) must forward; a VXLAN device used as
/// one layer-2 segment between hosts needs no forwarding. Reported against
/// the device whose routes need it.
fn check_forwarding(snap: &Snapshot, sysctl: &dyn Fn(&str) -> Option<i64>, out: &mut Vec<Finding>) {
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
        let Some(ifindex) = device_routing_subnets(snap, v6) else {
            continue;
        };
        if sysctl(&sysctl_name.replace('.', "/")) == Some(0) {
            let dev = link_name(snap, ifindex);
            let mut evidence = Evidence::new();
            evidence.insert(key.to_string(), EvidenceValue::from(0));
            out.push(finding(
                Check::IpForwardOff,
                Severity::Error,
                &dev,
                format!(
                    "{sysctl_name}=0: this node does not forward {family}pod traffic to and from the overlay ({dev} routes pod subnets)"
                ),
                evidence,
                format!("sysctl -w {sysctl_name}=1"),
            ));
        }
    }
}

/// Strict reverse-path filtering on a VXLAN or underlay device.
fn check_rp_filter(
    snap: &Snapshot,
    devs: &[VxlanDevice],
    underlays: &[u32],
    sysctl: &dyn Fn(&str) -> Option<i64>,
    out: &mut Vec<Finding>,
) {
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
        if all.max(dev_v) == 1 {
            out.push(finding(
                Check::RpFilterStrict,
                Severity::Warning,
                &name,
                format!("strict reverse-path filtering on {role} {name} (rp_filter: all={all}, {name}={dev_v}): packets from peers routed asymmetrically are dropped (IP_RPFILTER)"),
                evidence!({"device": &name, "all": all, "dev": dev_v}),
                format!("sysctl -w net.ipv4.conf.{name}.rp_filter=2 (loose) and net.ipv4.conf.all.rp_filter=0 or 2"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::doctor::fixtures::{checks, flannel_node, route};

    /// Sysctl values as a map, the rest unset.
    fn settings(values: &[(&str, i64)]) -> impl Fn(&str) -> Option<i64> {
        let m: BTreeMap<String, i64> = values.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        move |path: &str| m.get(path).copied()
    }

    fn run(snap: &Snapshot, dev: &VxlanDevice, nat: bool, values: &[(&str, i64)]) -> Vec<Finding> {
        let mut out = Vec::new();
        check(
            snap,
            std::slice::from_ref(dev),
            &[2],
            nat,
            &settings(values),
            &mut out,
        );
        out
    }

    /// Forwarding matters where subnets are routed through the overlay
    /// (flannel's `via VTEP onlink`, a metadata device's encap routes),
    /// per address family; a device that is one L2 segment needs none.
    #[test]
    fn forwarding_is_needed_only_for_routed_subnets() {
        let mut snap = Snapshot {
            routes: vec![route(3, "10.50.0.0", 24, None)],
            ..Default::default()
        };
        assert_eq!(device_routing_subnets(&snap, false), None);
        snap.routes
            .push(route(7, "10.244.1.0", 24, Some("10.244.1.0")));
        assert_eq!(device_routing_subnets(&snap, false), Some(7));
        assert_eq!(device_routing_subnets(&snap, true), None);
        snap.routes.push(route(8, "fd00:1::", 64, Some("fd00:1::")));
        assert_eq!(device_routing_subnets(&snap, true), Some(8));
    }

    #[test]
    fn ip_forward_off() {
        let (snap, dev) = flannel_node();
        let out = run(&snap, &dev, false, &[("net/ipv4/ip_forward", 0)]);
        assert_eq!(checks(&out), vec!["ip_forward_off"], "{out:?}");
        assert_eq!(out[0].device, "flannel.1");
        assert_eq!(out[0].evidence["ip_forward"], EvidenceValue::from(0));
        assert_eq!(out[0].fix, "sysctl -w net.ipv4.ip_forward=1");
        // No IPv6 routes through the overlay: IPv6 forwarding is not needed.
        let out = run(&snap, &dev, false, &[("net/ipv6/conf/all/forwarding", 0)]);
        assert!(out.is_empty(), "{out:?}");
        assert!(run(&snap, &dev, false, &[("net/ipv4/ip_forward", 1)]).is_empty());
    }

    /// Strict on one device, or on "all": the device's finding names both
    /// values; loose (2) anywhere is fine, and the larger value counts.
    #[test]
    fn rp_filter_strict() {
        let (snap, dev) = flannel_node();
        let out = run(&snap, &dev, false, &[("net/ipv4/conf/eth0/rp_filter", 1)]);
        assert_eq!(checks(&out), vec!["rp_filter_strict"], "{out:?}");
        assert_eq!(out[0].device, "eth0");
        assert!(
            out[0].message.contains("underlay device eth0"),
            "{}",
            out[0].message
        );
        let out = run(&snap, &dev, false, &[("net/ipv4/conf/all/rp_filter", 1)]);
        let devices: Vec<&str> = out.iter().map(|f| f.device.as_str()).collect();
        assert_eq!(devices, vec!["flannel.1", "eth0"], "{out:?}");
        let loose = [
            ("net/ipv4/conf/all/rp_filter", 1),
            ("net/ipv4/conf/eth0/rp_filter", 2),
            ("net/ipv4/conf/flannel.1/rp_filter", 2),
        ];
        assert!(run(&snap, &dev, false, &loose).is_empty());
    }

    /// Only where NAT rules are present, and reported for the whole node.
    #[test]
    fn tcp_tw_recycle_with_nat() {
        let (snap, dev) = flannel_node();
        let recycle = [("net/ipv4/tcp_tw_recycle", 1)];
        assert!(run(&snap, &dev, false, &recycle).is_empty());
        let out = run(&snap, &dev, true, &recycle);
        assert_eq!(checks(&out), vec!["tcp_tw_recycle_with_nat"], "{out:?}");
        assert_eq!(out[0].device, WHOLE_NODE);
        // Kernels since 4.12 have no such setting: nothing to say.
        assert!(run(&snap, &dev, true, &[]).is_empty());
    }
}
