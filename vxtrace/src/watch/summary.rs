//! The summary at exit: every shown peer's totals and findings (built by
//! the same code as the live screen's), the run's own accounting, and what
//! only the end knows: conntrack's half-open flows and the kernel's PAWS
//! counters over the run.

use std::{collections::BTreeMap, net::IpAddr};

use vxtrace_common::PeerKey;

use super::{plan::Plan, tables::Tables};
use crate::{
    conntrack,
    discovery::Snapshot,
    mac::format_mac,
    netstat,
    schema::{
        Attachment, ConntrackStatus, DoctorFinding, DropMapStats, Node, PeerMapStats, PeerNode,
        Probes, Summary, round3,
    },
};

/// What the summary carries besides the tables.
pub struct RunFacts<'a> {
    pub duration_s: f64,
    pub interval_s: f64,
    pub plan: &'a Plan,
    pub attached: &'a [Attachment],
    pub probes: &'a Probes,
    pub doctor: &'a [DoctorFinding],
    pub node: &'a Node,
    pub peer_map_capacity: u32,
}

/// `snap` is what netlink showed at start (or at the last device
/// refresh); `at_exit`, when it could be read, what it shows now.
pub fn build(
    t: &Tables,
    facts: &RunFacts<'_>,
    snap: &Snapshot,
    at_exit: Option<&Snapshot>,
    netstat: &netstat::Baseline,
) -> Summary {
    let drops = t.drops_by_peer();
    let other = drops.get(&PeerKey::default()).cloned().unwrap_or_default();
    let (other_peers, retired_peers) = t.others();
    let g = &t.global;
    let entries = t.peers.kernel_entries as u64;
    let mut summary = Summary {
        node: Some(facts.node.clone()),
        duration_s: round3(facts.duration_s),
        interval_s: facts.interval_s,
        intervals: t.peers.intervals,
        peers: t.peer_summaries(&drops),
        peer_nodes: Vec::new(),
        other_peers,
        retired_peers,
        drops_other: other.by_reason.clone(),
        drop_locations_other: other.top_locations(),
        unresolved: t.unresolved_vteps(&drops),
        device_errors: netstat.device_deltas(),
        netstat_udp: netstat
            .udp_deltas()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect(),
        drop_map: DropMapStats {
            inserted: g.drop_keys_inserted,
            seen: g.drops_seen,
            out_of_scope: g.drops_out_of_scope,
        },
        unattributed: t.unattributed(),
        blind_spots: t.visibility.in_force(),
        peer_map: PeerMapStats {
            capacity: facts.peer_map_capacity,
            entries,
            inserted: g.peers_inserted,
            evictions: g.peers_inserted.saturating_sub(entries),
            insert_failed: g.peer_insert_failed,
        },
        probes: Some(Probes {
            reason_names: None,
            ..facts.probes.clone()
        }),
        netstat_paws: netstat.deltas(),
        conntrack: ConntrackStatus::default(),
        doctor: facts.doctor.to_vec(),
        devices: facts.plan.vxlan.clone(),
        underlays: facts.plan.underlays.clone(),
        ports: facts.plan.ports.clone(),
        attached: facts.attached.to_vec(),
    };
    add_conntrack(&mut summary, snap);
    summary.peer_nodes = peer_nodes(at_exit.unwrap_or(snap), &summary);
    summary
}

/// The summary's peers that are one node, by their underlay MAC.
fn peer_nodes(snap: &Snapshot, summary: &Summary) -> Vec<PeerNode> {
    let peers: Vec<IpAddr> = summary.peers.keys().copied().collect();
    snap.same_node_peers(&peers)
        .into_iter()
        .map(|(peers, mac)| PeerNode {
            peers,
            evidence: format!("same underlay MAC {}", format_mac(&mac)),
        })
        .collect()
}

/// Conntrack's half-open TCP flows, per peer (the peer that owns the
/// remote end: the server of a SYN_SENT flow, the client of a SYN_RECV one).
fn add_conntrack(summary: &mut Summary, snap: &Snapshot) {
    let flows = match conntrack::tcp_flows() {
        Ok(f) => f,
        Err(e) => {
            summary.conntrack = ConntrackStatus {
                available: false,
                tcp_flows: None,
                error: Some(format!("{e:#}")),
            };
            return;
        }
    };
    let owners = snap.inner_owners();
    let mut per_peer: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    for f in &flows {
        if f.syn_sent()
            && let Some(p) = owners.owner(&f.dst)
        {
            per_peer.entry(p).or_default().0 += 1;
        } else if f.syn_recv()
            && let Some(p) = owners.owner(&f.src)
        {
            per_peer.entry(p).or_default().1 += 1;
        }
    }
    summary.conntrack = ConntrackStatus {
        available: true,
        tcp_flows: Some(flows.len() as u64),
        error: None,
    };
    for (addr, peer) in summary.peers.iter_mut() {
        let (sent, recv) = per_peer.get(addr).copied().unwrap_or((0, 0));
        if let Some(o) = peer.counters.tcp.outcome.as_mut() {
            o.conntrack_syn_sent = sent;
            o.conntrack_syn_recv = recv;
        }
    }
}
