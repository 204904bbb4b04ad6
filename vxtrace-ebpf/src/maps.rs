//! Maps used by more than one probe, and the helpers that update the
//! counters in them. Maps that only one probe uses live in its module
//! under `probes/`.
//!
//! Sizes here are defaults; the loader resizes the open-ended maps
//! (`PEERS`, `MAC_PEERS`) before load. Each static's name is the map's name
//! in the object: it must equal the constant of the same name in
//! `vxtrace_common::names::maps`.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use aya_log_ebpf::warn;
use vxtrace_common::{
    DEFAULT_MAX_MACS, DEFAULT_MAX_PEERS, GlobalStats, InnerAddr, MAC_MEMO_SLOTS, MacKey, MacMemo,
    MacPeer, PEER_SLOT_BITS, PEER_SLOTS as PEER_SLOTS_PER_CPU, PeerCpuKey, PeerKey, PeerSlot,
    PeerStats, VniInfo, VxlanDevice, slot_index,
};

use crate::packet::same_addr;

/// A new peer's counters. It lives in read-only data because `PeerStats`
/// is too big for the BPF stack.
// SAFETY: `PeerStats` is `#[repr(C)]` and made only of integers and arrays
// of integers, so all-zero bytes are a valid value.
static ZERO_PEER_STATS: PeerStats = unsafe { core::mem::zeroed() };

/// Per-peer counters, an entry per (peer, CPU) that saw the peer (see
/// [`PeerCpuKey`]). LRU because peers are open-ended: anybody can send to
/// the VXLAN port. The loader sizes it for every peer on every online CPU.
/// Name: `names::maps::PEERS`.
#[map]
pub static PEERS: LruHashMap<PeerCpuKey, PeerStats> =
    LruHashMap::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// The CPU this program runs on: the CPU part of its [`PEERS`] keys and
/// the row of its slots.
#[inline(always)]
pub fn this_cpu() -> u32 {
    // SAFETY: a helper without arguments, allowed in every program type.
    unsafe { bpf_get_smp_processor_id() }
}

/// The counters of the peers that came first to each slot, a row of
/// slots per CPU (see [`PeerSlot`] and [`slot_index`]); the loader sizes
/// it for the online CPUs. Memory-mappable only so that the kernel starts
/// its elements on a page: each CPU's row is then whole cache lines that
/// no other CPU writes. Name: `names::maps::PEER_SLOTS`.
#[map]
pub static PEER_SLOTS: Array<PeerSlot> =
    Array::with_max_entries(PEER_SLOTS_PER_CPU, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Counters that belong to no peer (index 0 only). Name: `names::maps::GLOBAL`.
#[map]
pub static GLOBAL: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

/// Inner MAC (per VNI) to the underlay peer that owns it: learned from the
/// inner source MAC of packets arriving at the underlay device, and seeded by
/// the loader from the VXLAN devices' forwarding databases. Decapsulated
/// frames have no outer header left, so this is how they find their peer.
/// Name: `names::maps::MAC_PEERS`.
#[map]
pub static MAC_PEERS: LruHashMap<MacKey, MacPeer> =
    LruHashMap::with_max_entries(DEFAULT_MAX_MACS, 0);

/// The VXLAN device programs' per-CPU memo of recent (device, MAC) -> peer
/// answers (see [`MacMemo`]). The underlay program forgets a slot when it
/// sees a MAC arrive from another peer (a host moved), and the loader
/// clears them all when an FDB entry's destination changes.
/// Name: `names::maps::MAC_MEMO`.
#[map]
pub static MAC_MEMO: PerCpuArray<MacMemo> = PerCpuArray::with_max_entries(MAC_MEMO_SLOTS, 0);

/// Drops this CPU's memo of `mac`'s owner: the next frame looks it up.
#[inline(always)]
pub fn forget_mac_owner(mac: &[u8; 6]) {
    if let Some(m) = MAC_MEMO.get_ptr_mut(MacMemo::slot(mac)) {
        // SAFETY: this CPU's slot of a per-CPU array: non-null, aligned,
        // never freed; a one-byte store of a valid value.
        unsafe { (*m).valid = 0 };
    }
}

/// Watched VXLAN devices by ifindex (filled by the loader).
/// Name: `names::maps::VXLAN_DEVICES`.
#[map]
pub static VXLAN_DEVICES: HashMap<u32, VxlanDevice> = HashMap::with_max_entries(64, 0);

/// Watched VNIs: the NIC programs' VNI filter (when `Config::filter_vni` is
/// set) and the VTEP MAC that decapsulated frames should be addressed to.
/// Name: `names::maps::VXLAN_DEVICES_BY_VNI`.
#[map]
pub static VXLAN_DEVICES_BY_VNI: HashMap<u32, VniInfo> = HashMap::with_max_entries(64, 0);

/// Inner (pod / VTEP) addresses to the peer that owns them: VTEP addresses
/// from the loader (neighbour entries), pod addresses learned from the
/// inner source of arriving packets. Attributes dropped inner packets.
/// Name: `names::maps::INNER_ADDRS`.
#[map]
pub static INNER_ADDRS: LruHashMap<PeerKey, InnerAddr> =
    LruHashMap::with_max_entries(DEFAULT_MAX_MACS, 0);

/// Pod subnets routed through a VXLAN device, to the peer behind them (from
/// the routes, neighbour and FDB entries). Keys are IPv6 or IPv4-mapped.
/// Name: `names::maps::POD_SUBNETS`.
#[map]
pub static POD_SUBNETS: LpmTrie<[u8; 16], PeerKey> = LpmTrie::with_max_entries(4096, 0);

/// The peer's counters (this CPU's copy), creating them on first sight:
/// in its slot when the slot is the peer's or free, else in the peer map.
#[inline(always)]
pub fn peer_stats<C: EbpfContext>(ctx: &C, peer: &PeerKey) -> Option<*mut PeerStats> {
    let cpu = this_cpu();
    if let Some(slot) = PEER_SLOTS.get_ptr_mut(slot_index(cpu, peer.slot(), PEER_SLOT_BITS)) {
        // SAFETY: a PEER_SLOTS element in this CPU's row: aligned, never
        // freed, plain integers. Programs on this CPU are its only writers;
        // one interrupting this one to take the same free slot could at
        // worst leave a mixed address (TC programs do not nest).
        let slot = unsafe { &mut *slot };
        if slot.taken == 0 {
            list_peer(PeerCpuKey::new(*peer, cpu));
            // The peer, then `taken`, as volatile stores the compiler keeps
            // in order (the JIT and x86 keep stores in order too):
            // userspace reads `taken` first, so a taken slot it sees comes
            // with its peer.
            // SAFETY: plain stores to the slot above.
            unsafe {
                core::ptr::write_volatile(&mut slot.peer, *peer);
                core::ptr::write_volatile(&mut slot.taken, 1);
            }
            return Some(&mut slot.stats);
        }
        if same_addr(&slot.peer, peer) {
            return Some(&mut slot.stats);
        }
    }
    peer_in_map(ctx, PeerCpuKey::new(*peer, cpu))
}

/// Enters a peer that took a slot on this CPU in the peer map, which
/// lists every peer (the drop program looks peers up there, userspace
/// counts evictions from it). Its counts there stay zero. A failed
/// insertion loses nothing: the packet is counted in the slot.
#[inline(always)]
fn list_peer(key: PeerCpuKey) {
    if PEERS.get_ptr(&key).is_none()
        && PEERS
            .insert(
                &key,
                &ZERO_PEER_STATS,
                aya_ebpf::bindings::BPF_NOEXIST.into(),
            )
            .is_ok()
    {
        update_global(|g| g.peers_inserted += 1);
    }
}

/// The peer's counters in the peer map (this CPU's entry, `key`),
/// inserting them on first sight.
#[inline(always)]
fn peer_in_map<C: EbpfContext>(ctx: &C, key: PeerCpuKey) -> Option<*mut PeerStats> {
    if let Some(stats) = PEERS.get_ptr_mut(&key) {
        return Some(stats);
    }
    // BPF_NOEXIST: when a program interrupting this one on the same CPU
    // creates the entry first, only one insertion counts, so
    // `peers_inserted` stays exact. The zero value is passed by
    // reference, into read-only data: by value it would be copied to the
    // BPF stack, which it does not fit.
    let inserted = PEERS.insert(
        &key,
        &ZERO_PEER_STATS,
        aya_ebpf::bindings::BPF_NOEXIST.into(),
    );
    match inserted {
        Ok(()) => {
            let mut born = 0;
            update_global(|g| {
                g.peers_inserted += 1;
                born = g.peers_inserted as u32;
            });
            let stats = PEERS.get_ptr_mut(&key);
            if let Some(stats) = stats {
                // SAFETY: this CPU's entry, just inserted: non-null,
                // aligned, valid until the program returns; only
                // programs on this CPU write it.
                unsafe { (*stats).memo.born = born };
            }
            return stats;
        }
        Err(_) => {
            if PEERS.get_ptr_mut(&key).is_none() {
                update_global(|g| g.peer_insert_failed += 1);
                // Rare (the LRU evicts rather than fails), so worth a line.
                warn!(ctx, "per-peer map insert failed; a packet went uncounted");
            }
        }
    }
    PEERS.get_ptr_mut(&key)
}

/// Applies `update` to the host-wide counters (this CPU's copy).
#[inline(always)]
pub fn update_global(update: impl FnOnce(&mut GlobalStats)) {
    if let Some(global) = GLOBAL.get_ptr_mut(0) {
        // SAFETY: a per-CPU array slot: non-null, aligned and never freed.
        // Only programs on this CPU write it, and the reference ends with
        // `update`; a program that interrupts this one on the same CPU may
        // add to the same counter, and the adds are not atomic, which at
        // worst loses a count.
        update(unsafe { &mut *global });
    }
}
