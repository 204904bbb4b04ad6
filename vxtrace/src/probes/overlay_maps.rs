//! What the loader knows of the overlay, written into the maps the probes
//! attribute with: inner MAC to peer (`MAC_PEERS`, from the VXLAN devices'
//! FDB), VTEP addresses (`INNER_ADDRS`, from neighbour entries) and pod
//! subnets (`POD_SUBNETS`, from the routes via VTEPs). The underlay
//! program learns more from the traffic itself.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use aya::maps::{
    HashMap, PerCpuArray, PerCpuValues,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use vxtrace_common::{
    INNER_VTEP, InnerAddr, MAC_MEMO_SLOTS, MAC_SOURCE_FDB, MacKey, MacMemo, MacPeer, PeerKey,
    names::maps,
};

use super::Tracer;
use crate::{
    discovery::{Snapshot, VxlanDevice, peer_addr, peer_key},
    mac::is_group_mac,
    schema::MacMove,
};

/// bpf_map_update_elem flag: create only.
const BPF_NOEXIST: u64 = 1;

impl Tracer {
    /// Seeds the attribution maps from the watched devices' FDB, neighbour
    /// and route entries; returns how many MACs were seeded, and the MACs
    /// whose FDB entry changed its VTEP since the last call.
    pub fn seed_from(
        &mut self,
        snap: &Snapshot,
        watched: &[VxlanDevice],
    ) -> Result<(usize, Vec<MacMove>)> {
        let mut macs = 0;
        let mut moved = Vec::new();
        // What this FDB says, and nothing more: entries that left it are
        // forgotten, so the memory follows the FDB, not its history.
        let mut seeded = std::collections::HashMap::with_capacity(self.fdb_seeded.len());
        for entry in &snap.fdb {
            let Some(dev) = watched.iter().find(|d| d.ifindex == entry.ifindex) else {
                continue;
            };
            if is_group_mac(&entry.mac) {
                continue;
            }
            let vni = entry.vni.or(dev.vni).unwrap_or(0);
            let key = MacKey::new(vni, entry.mac);
            let before = self.fdb_seeded.get(&key).copied();
            if let Some(from) = self.seed_fdb_entry(key, &entry.dst, before)? {
                moved.push(MacMove {
                    device: dev.name.clone(),
                    mac: Some(entry.mac),
                    vni,
                    from,
                    to: entry.dst,
                });
            }
            seeded.insert(key, entry.dst);
            macs += 1;
        }
        self.fdb_seeded = seeded;
        if !moved.is_empty() {
            self.forget_mac_owners()?;
        }
        let is_watched = |i: u32| watched.iter().any(|d| d.ifindex == i);
        for (ifindex, addr, peer) in snap.vtep_addrs() {
            if is_watched(ifindex) {
                self.seed_vtep_addr(&addr, &peer)?;
            }
        }
        for (ifindex, net, len, peer) in snap.pod_subnets() {
            if is_watched(ifindex) {
                self.seed_pod_subnet(&net, len, &peer)?;
            }
        }
        // A subnet whose VTEP cannot be reached: its drops go under the
        // VTEP's own address, which names what is missing.
        for u in snap.unresolved_subnets() {
            if is_watched(u.ifindex) {
                self.seed_pod_subnet(&u.subnet, u.prefix_len, &u.vtep)?;
            }
        }
        Ok((macs, moved))
    }

    /// Tells the kernel programs that `mac` on `vni` lives behind `peer` (an
    /// FDB entry seen for the first time).
    pub fn seed_mac(&mut self, vni: u32, mac: [u8; 6], peer: &IpAddr) -> Result<()> {
        self.seed_fdb_entry(MacKey::new(vni, mac), peer, None)
            .map(|_| ())
    }

    /// Tells the kernel programs that `key`'s MAC lives behind `dst`, as an
    /// FDB entry says; `before`: the destination this entry had at the last
    /// call, if it was there. Returns the VTEP the MAC moved from, if it did.
    ///
    /// A changed destination is a move (EVPN MAC mobility, a migrated VM, a
    /// rescheduled pod): newer than anything learned from traffic, it
    /// replaces whatever the map holds. So does a new entry whose MAC the
    /// map has from an earlier FDB entry elsewhere (the entry went and came
    /// back between two reads). A MAC the traffic taught is otherwise kept:
    /// it says where the peer's packets really come from.
    fn seed_fdb_entry(
        &mut self,
        key: MacKey,
        dst: &IpAddr,
        before: Option<IpAddr>,
    ) -> Result<Option<IpAddr>> {
        let mut macs: HashMap<_, MacKey, MacPeer> =
            HashMap::try_from(self.map_mut(maps::MAC_PEERS)?)?;
        let value = MacPeer {
            peer: peer_key(dst),
            source: MAC_SOURCE_FDB,
            _pad: 0,
        };
        let from = match before {
            Some(b) if b == *dst => return Ok(None),
            Some(b) => Some(b),
            None => match macs.get(&key, 0) {
                Ok(known) if known.source == MAC_SOURCE_FDB && known.peer != value.peer => {
                    Some(peer_addr(&known.peer))
                }
                Ok(_) => return Ok(None),
                Err(_) => None,
            },
        };
        // A new MAC: BPF_NOEXIST, so a learned entry that raced in first
        // stays. A move: replace.
        let flags = if from.is_some() { 0 } else { BPF_NOEXIST };
        match macs.insert(key, value, flags) {
            Ok(()) => Ok(from),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(None)
            }
            Err(e) => Err(e).context("seeding the MAC-to-peer map"),
        }
    }

    /// Empties the VXLAN device programs' per-CPU memo of MAC owners, so
    /// the next frame of a moved MAC is counted on its new peer. Twice, a
    /// moment apart: a program that read the old owner just before the
    /// move may write it back into its memo just after the first pass.
    fn forget_mac_owners(&mut self) -> Result<()> {
        for pass in 0..2 {
            if pass > 0 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let mut memo: PerCpuArray<_, MacMemo> =
                PerCpuArray::try_from(self.map_mut(maps::MAC_MEMO)?)?;
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            for slot in 0..MAC_MEMO_SLOTS {
                let zeros = PerCpuValues::try_from(vec![MacMemo::default(); cpus])?;
                memo.set(slot, zeros, 0)
                    .context("clearing the MAC owner memo")?;
            }
        }
        Ok(())
    }

    /// `addr` is the VTEP (overlay) address of `peer` (from a neighbour entry).
    pub fn seed_vtep_addr(&mut self, addr: &IpAddr, peer: &IpAddr) -> Result<()> {
        let mut m: HashMap<_, PeerKey, InnerAddr> =
            HashMap::try_from(self.map_mut(maps::INNER_ADDRS)?)?;
        let v = InnerAddr {
            peer: peer_key(peer),
            kind: INNER_VTEP,
            _pad: 0,
        };
        m.insert(peer_key(addr), v, 0)
            .context("seeding the inner-address map")
    }

    /// Pod subnet `net/prefix_len` lives behind `peer` (from the routes).
    pub fn seed_pod_subnet(&mut self, net: &IpAddr, prefix_len: u8, peer: &IpAddr) -> Result<()> {
        let mut m: LpmTrie<_, [u8; 16], PeerKey> =
            LpmTrie::try_from(self.map_mut(maps::POD_SUBNETS)?)?;
        // IPv4 lives in the mapped range, so its prefix is 96 bits longer.
        let bits = match net {
            IpAddr::V4(_) => 96 + prefix_len as u32,
            IpAddr::V6(_) => prefix_len as u32,
        };
        m.insert(&LpmKey::new(bits, peer_key(net).addr), peer_key(peer), 0)
            .context("seeding the pod-subnet map")
    }
}
