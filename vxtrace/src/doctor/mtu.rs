//! MTU checks: the VXLAN device's MTU against its underlay's, and pod
//! interfaces' MTU against the VXLAN device's.

use std::net::IpAddr;

use super::{Finding, finding};
use crate::{
    discovery::{Snapshot, VxlanDevice, prefix_contains},
    schema::{Check, Evidence, EvidenceValue, Severity},
};

pub(super) fn check(
    snap: &Snapshot,
    dev: &VxlanDevice,
    underlay: Option<u32>,
    out: &mut Vec<Finding>,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::fixtures::{checks, flannel_node};

    fn mtu_findings(snap: &Snapshot, dev: &VxlanDevice) -> Vec<Finding> {
        let mut out = Vec::new();
        check(snap, dev, dev.link_ifindex, &mut out);
        out
    }

    #[test]
    fn a_flannel_node_is_clean() {
        let (snap, dev) = flannel_node();
        assert!(mtu_findings(&snap, &dev).is_empty());
    }

    /// The VXLAN device's MTU plus the 50 bytes of VXLAN over IPv4 must fit
    /// the underlay's.
    #[test]
    fn mtu_too_large() {
        let (snap, mut dev) = flannel_node();
        dev.mtu = Some(1500);
        let out = mtu_findings(&snap, &dev);
        assert_eq!(checks(&out), vec!["mtu_too_large"], "{out:?}");
        assert_eq!(out[0].evidence["overhead"], EvidenceValue::from(50));
        assert!(
            out[0].fix.starts_with("set flannel.1 MTU to 1450"),
            "{}",
            out[0].fix
        );
        // Over IPv6 the overhead is 70.
        dev.local = Some("2001:db8::11".parse().unwrap());
        dev.mtu = Some(1440);
        let out = mtu_findings(&snap, &dev);
        assert_eq!(out[0].evidence["overhead"], EvidenceValue::from(70));
    }

    /// A pod's interface above the VXLAN device's MTU; the underlay and
    /// devices with an address outside the overlay are not pods'.
    #[test]
    fn pod_mtu_above_vxlan() {
        let (mut snap, dev) = flannel_node();
        snap.links.get_mut(&5).unwrap().mtu = Some(1500);
        let out = mtu_findings(&snap, &dev);
        assert_eq!(checks(&out), vec!["pod_mtu_above_vxlan"], "{out:?}");
        assert_eq!(
            out[0].evidence["interface"],
            EvidenceValue::from("veth1a2b")
        );
        snap.addrs.insert(5, vec!["198.51.100.7".parse().unwrap()]);
        assert!(mtu_findings(&snap, &dev).is_empty());
    }
}
