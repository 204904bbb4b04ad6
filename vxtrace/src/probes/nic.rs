//! The underlay device's TC programs (`vxtrace_nic_ingress`,
//! `vxtrace_nic_egress`): VXLAN packets to and from each peer, counted in
//! the per-peer slots and map (`PEER_SLOTS`, `PEERS`) that every probe adds
//! to, which are read here.

use anyhow::Result;
use aya::maps::{MapData, PerCpuHashMap};
use vxtrace_common::{
    PeerKey, PeerSlot, PeerStats,
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

    /// Every peer in the per-peer map, summed over the CPUs.
    pub(super) fn read_peers(&self) -> Result<Vec<(PeerKey, PeerStats)>> {
        if let Some(batched) =
            self.read_batched(maps::PEERS, self.peers_last_read.get(), PeerStats::merge)
        {
            self.peers_last_read.set(batched.len());
            return Ok(batched);
        }
        let peers: PerCpuHashMap<&MapData, PeerKey, PeerStats> =
            PerCpuHashMap::try_from(self.map(maps::PEERS)?)?;
        let mut out = Vec::new();
        for item in peers.iter() {
            // A key evicted between "next key" and "lookup" is skipped; its
            // counts are already in the loader's totals.
            let Ok((key, per_cpu)) = item else { continue };
            let mut sum = PeerStats::default();
            for v in per_cpu.iter() {
                sum.merge(v);
            }
            out.push((key, sum));
        }
        Ok(out)
    }

    /// The peers in the per-CPU peer slots, each summed over its slots and
    /// CPUs. A slot keeps its peer for the whole run, so these counts never
    /// go back.
    pub(super) fn read_peer_slots(&self) -> Result<Vec<(PeerKey, PeerStats)>> {
        // Keyed by peer: with 64 slots per possible CPU there can be
        // thousands of taken slots on a large node.
        let mut out: rustc_hash::FxHashMap<PeerKey, PeerStats> = Default::default();
        self.read_per_cpu_array(maps::PEER_SLOTS, |slot: &PeerSlot| {
            if slot.taken != 0 {
                // `merge` adds the counters only (not the memo).
                out.entry(slot.peer).or_default().merge(&slot.stats);
            }
        })?;
        Ok(out.into_iter().collect())
    }
}
