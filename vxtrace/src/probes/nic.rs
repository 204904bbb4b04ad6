//! The underlay device's TC programs (`vxtrace_nic_ingress`,
//! `vxtrace_nic_egress`): VXLAN packets to and from each peer, counted in
//! the per-peer slots and map (`PEER_SLOTS`, `PEERS`) that every probe adds
//! to, which are read here.

use anyhow::Result;
use aya::maps::{HashMap, MapData};
use vxtrace_common::{
    PeerCpuKey, PeerKey, PeerSlot, PeerStats,
    names::{maps, programs},
};

use super::Tracer;
use crate::schema::Hook;

impl Tracer {
    /// Attaches the underlay programs to `iface`, both directions.
    pub fn attach_underlay(&mut self, iface: &str) -> Result<()> {
        self.attach_tc(programs::NIC_INGRESS, iface, Hook::Ingress)?;
        self.attach_tc(programs::NIC_EGRESS, iface, Hook::Egress)
    }

    /// Every entry of the per-peer map: one per peer and CPU that counted
    /// it.
    pub(super) fn read_peers(&self) -> Result<Vec<(PeerCpuKey, PeerStats)>> {
        // A plain map: one value a key, its counters and its `born` kept.
        let copy = |total: &mut PeerStats, v: &PeerStats| {
            total.merge(v);
            total.memo.born = v.memo.born;
        };
        if let Some(batched) = self.read_batched(maps::PEERS, self.peers_last_read.get(), copy) {
            self.peers_last_read.set(batched.len());
            return Ok(batched);
        }
        let peers: HashMap<&MapData, PeerCpuKey, PeerStats> =
            HashMap::try_from(self.map(maps::PEERS)?)?;
        // A key evicted between "next key" and "lookup" is skipped; its
        // counts are already in the loader's totals.
        Ok(peers.iter().filter_map(Result::ok).collect())
    }

    /// The peers in the peer slots (a row per CPU), each summed over its
    /// slots and CPUs. A slot keeps its peer for the whole run, so these counts never
    /// go back.
    pub(super) fn read_peer_slots(&self) -> Result<Vec<(PeerKey, PeerStats)>> {
        // Keyed by peer: with 64 slots per online CPU there can be
        // thousands of taken slots on a large node.
        let mut out: rustc_hash::FxHashMap<PeerKey, PeerStats> = Default::default();
        self.read_slots(maps::PEER_SLOTS, |slot: &PeerSlot| {
            if slot.taken != 0 {
                // `merge` adds the counters only (not the memo).
                out.entry(slot.peer).or_default().merge(&slot.stats);
            }
        })?;
        Ok(out.into_iter().collect())
    }
}
