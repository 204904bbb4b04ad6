//! Maps and load-time configuration shared by all kernel programs.
//!
//! Sizes here are defaults; the loader resizes the open-ended maps
//! (`PEERS`, `MAC_PEERS`) before load.

use aya_ebpf::{
    EbpfContext,
    macros::map,
    maps::{HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
};
use aya_log_ebpf::warn;
use vxtrace_common::{
    Config, DEFAULT_MAX_MACS, DEFAULT_MAX_PEERS, DropKey, FlowKey, GlobalStats, Handshake,
    InnerAddr, MAC_MEMO_SLOTS, MacKey, MacMemo, MacPeer, PeerKey, PeerStats, VniInfo, VxlanDevice,
};

/// Written by the loader before load (`EbpfLoader::override_global`); never
/// written here. Read only through [`config`] so the compiler cannot fold
/// the default values into the code.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::empty();

#[inline(always)]
pub fn config() -> *const Config {
    &raw const CONFIG
}

/// A new peer's counters.
static ZERO_PEER_STATS: PeerStats = unsafe { core::mem::zeroed() };

/// Per-peer counters. LRU because peers are open-ended: anybody can send to
/// the VXLAN port.
#[map]
pub static PEERS: LruPerCpuHashMap<PeerKey, PeerStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_PEERS, 0);

/// Counters that belong to no peer (index 0 only).
#[map]
pub static GLOBAL: PerCpuArray<GlobalStats> = PerCpuArray::with_max_entries(1, 0);

/// Inner MAC (per VNI) to the underlay peer that owns it: learned from the
/// inner source MAC of packets arriving at the underlay device, and seeded by
/// the loader from the VXLAN devices' forwarding databases. Decapsulated
/// frames have no outer header left, so this is how they find their peer.
#[map]
pub static MAC_PEERS: LruHashMap<MacKey, MacPeer> =
    LruHashMap::with_max_entries(DEFAULT_MAX_MACS, 0);

/// The VXLAN device programs' memo of recent (device, MAC) -> peer answers
/// (see [`MacMemo`]).
#[map]
pub static MAC_MEMO: PerCpuArray<MacMemo> = PerCpuArray::with_max_entries(MAC_MEMO_SLOTS, 0);

/// Watched VXLAN devices by ifindex (filled by the loader).
#[map]
pub static VXLAN_DEVICES: HashMap<u32, VxlanDevice> = HashMap::with_max_entries(64, 0);

/// The peer's counters, creating them on first sight.
#[inline(always)]
pub fn peer_stats<C: EbpfContext>(ctx: &C, peer: &PeerKey) -> Option<*mut PeerStats> {
    if let Some(stats) = PEERS.get_ptr_mut(peer) {
        return Some(stats);
    }
    // BPF_NOEXIST: when two CPUs race to create the same peer, only one
    // insertion counts, so `peers_inserted` stays exact. The zero value
    // lives in read-only data: PeerStats is too big for the BPF stack.
    match PEERS.insert(
        peer,
        &ZERO_PEER_STATS,
        aya_ebpf::bindings::BPF_NOEXIST.into(),
    ) {
        Ok(()) => {
            if let Some(g) = global() {
                unsafe { (*g).peers_inserted += 1 };
            }
        }
        Err(_) => {
            if PEERS.get_ptr_mut(peer).is_none() {
                if let Some(g) = global() {
                    unsafe { (*g).peer_insert_failed += 1 };
                }
                // Rare (the LRU evicts rather than fails), so worth a line.
                warn!(ctx, "per-peer map insert failed; a packet went uncounted");
            }
        }
    }
    PEERS.get_ptr_mut(peer)
}

#[inline(always)]
pub fn global() -> Option<*mut GlobalStats> {
    GLOBAL.get_ptr_mut(0)
}

/// Watched VNIs: the NIC programs' VNI filter (when `Config::filter_vni` is
/// set) and the VTEP MAC that decapsulated frames should be addressed to.
#[map]
pub static VXLAN_DEVICES_BY_VNI: HashMap<u32, VniInfo> = HashMap::with_max_entries(64, 0);

/// Inner (pod / VTEP) addresses to the peer that owns them: VTEP addresses
/// from the loader (neighbour entries), pod addresses learned from the
/// inner source of arriving packets. Attributes dropped inner packets.
#[map]
pub static INNER_ADDRS: LruHashMap<PeerKey, InnerAddr> =
    LruHashMap::with_max_entries(DEFAULT_MAX_MACS, 0);

/// Pod subnets routed through a VXLAN device, to the peer behind them (from
/// the routes, neighbour and FDB entries). Keys are IPv6 or IPv4-mapped.
#[map]
pub static POD_SUBNETS: LpmTrie<[u8; 16], PeerKey> = LpmTrie::with_max_entries(4096, 0);

/// Drops by (peer, reason, location).
#[map]
pub static DROPS: LruPerCpuHashMap<DropKey, u64> = LruPerCpuHashMap::with_max_entries(16_384, 0);

/// TCP handshakes seen starting (SYN) and not yet answered (SYN-ACK),
/// keyed by the inner 4-tuple. The loader expires old entries as
/// "unanswered"; the LRU bounds the map under a SYN flood.
#[map]
pub static HANDSHAKES: LruHashMap<FlowKey, Handshake> = LruHashMap::with_max_entries(65_536, 0);

/// Completed handshakes (latency), one small record per connection.
#[map]
pub static HANDSHAKE_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Network namespaces (inode numbers) whose drops count, unless
/// `Config::netns_scope_all` is set.
#[map]
pub static NETNS_SCOPE: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);
