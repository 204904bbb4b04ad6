//! Peers no recording given is from: a node that was not recorded, or
//! whose recording was left out. Each is in the report with its links,
//! not judged (one end's counts cannot show where traffic is lost), and
//! with what the recorded end's own engine found about it, as its
//! single-node report names it: a one-way peer stays one-way.

use std::{collections::BTreeSet, net::IpAddr};

use super::cluster::{ClusterNode, own_findings};
use crate::schema::{Direction, Link, LinkStatus, Segment, UnrecordedNode};

/// The peers of the recorded nodes that are no recorded node's VTEP,
/// grouped into nodes where a recording's kernel state shows two
/// addresses are one node. Multicast groups are flooding destinations,
/// not nodes.
pub fn unrecorded(nodes: &[ClusterNode]) -> Vec<UnrecordedNode> {
    let recorded: BTreeSet<IpAddr> = nodes
        .iter()
        .flat_map(|n| n.node.vteps.iter().copied())
        .collect();
    let peers: BTreeSet<IpAddr> = nodes
        .iter()
        .flat_map(|n| n.report.peers.keys().copied())
        .filter(|a| !recorded.contains(a) && !a.is_multicast() && !a.is_unspecified())
        .collect();
    let same_node: Vec<&[IpAddr]> = nodes
        .iter()
        .filter_map(|n| n.rec.summary.as_ref())
        .flat_map(|s| s.peer_nodes.iter().map(|p| p.peers.as_slice()))
        .collect();
    let mut out: Vec<UnrecordedNode> = Vec::new();
    for addr in &peers {
        if out.iter().any(|u| u.vteps.contains(addr)) {
            continue;
        }
        let mut vteps: Vec<IpAddr> = same_node
            .iter()
            .filter(|group| group.contains(addr))
            .flat_map(|group| group.iter().copied())
            .filter(|a| peers.contains(a))
            .chain([*addr])
            .collect();
        vteps.sort();
        vteps.dedup();
        let seen_by = nodes
            .iter()
            .filter(|n| vteps.iter().any(|v| n.report.peers.contains_key(v)))
            .map(|n| n.node.name.clone())
            .collect();
        out.push(UnrecordedNode {
            name: vteps[0].to_string(),
            vteps,
            seen_by,
        });
    }
    out
}

/// Both links between each recorded node and each unrecorded peer of it:
/// the recorded end's counts over its recording, its own findings about
/// the peer for that direction, not judged.
pub fn links(nodes: &[ClusterNode], unrecorded: &[UnrecordedNode]) -> Vec<Link> {
    let mut out = Vec::new();
    for u in unrecorded {
        for n in nodes {
            for peer in u.vteps.iter().filter(|v| n.report.peers.contains_key(v)) {
                let near = vtep_towards(n, peer);
                out.push(link(n, u, near, *peer, true));
                out.push(link(n, u, near, *peer, false));
            }
        }
    }
    out
}

/// The recorded node's address its traffic with `peer` uses: its VTEP of
/// the same family (the unspecified address when its recording names
/// none, as a first-release recording of a device without a local
/// address).
fn vtep_towards(n: &ClusterNode, peer: &IpAddr) -> IpAddr {
    let unspecified = if peer.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    n.node
        .vteps
        .iter()
        .find(|v| v.is_ipv4() == peer.is_ipv4())
        .copied()
        .unwrap_or(unspecified)
}

/// The link from the recorded node `n` to `u` (`outgoing`), or back.
fn link(n: &ClusterNode, u: &UnrecordedNode, near: IpAddr, peer: IpAddr, outgoing: bool) -> Link {
    let view = n.report.peers.get(&peer).cloned().unwrap_or_default();
    let findings = own_findings(
        n,
        &peer,
        if outgoing {
            Direction::ToPeer
        } else {
            Direction::FromPeer
        },
    );
    let primary = findings.first();
    let (from, to, from_node, to_node) = if outgoing {
        (near, peer, n.node.name.clone(), u.name.clone())
    } else {
        (peer, near, u.name.clone(), n.node.name.clone())
    };
    Link {
        from,
        to,
        from_node,
        to_node,
        tx_dev: if outgoing { view.tx_dev.packets } else { 0 },
        tx_encap: if outgoing { view.tx_encap.packets } else { 0 },
        rx_nic: if outgoing { 0 } else { view.rx_nic.packets },
        rx_decap: if outgoing { 0 } else { view.rx_decap.packets },
        drops: if outgoing {
            Default::default()
        } else {
            view.drops
        },
        loss_segment: Segment::NotJudged,
        lost: 0,
        loss_pct: 0.0,
        cause: primary.map(|f| f.kind),
        evidence: primary.map(|f| f.evidence.clone()).unwrap_or_default(),
        findings,
        window: n.span().unwrap_or((0.0, 0.0)),
        status: LinkStatus::FarEndNotRecorded,
        not_judged: Some(format!(
            "no recording of the far end ({}): only {}'s counts and findings; record on {} too (`vxtrace watch --record`) and give its recording to `vxtrace report` with {}'s",
            u.name, n.node.name, u.name, n.node.name
        )),
        clock_offset_s: None,
        suggested_clock_offset_s: None,
    }
}
