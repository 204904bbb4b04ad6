//! `vxtrace_nic_ingress` / `vxtrace_nic_egress`: TC programs on the
//! underlay device. They count VXLAN packets leaving for a peer
//! (`tx_encap`) and arriving from one (`rx_nic`), plus malformed packets to
//! the VXLAN port. Arriving packets also teach `MAC_PEERS` which peer owns
//! each inner source MAC, which is how the VXLAN device's programs attribute
//! decapsulated frames, and `INNER_ADDRS` which peer owns each inner source
//! address. Arriving frames are checked for the two inner anomalies:
//! a destination MAC that is not ours, and a source address that is the
//! peer's own VTEP address.

use aya_ebpf::{
    macros::{classifier, map},
    maps::LruPerCpuHashMap,
    programs::TcContext,
};
use vxtrace_common::{
    DIR_RX, DIR_TX, INNER_LEARNED, INNER_VTEP, InnerAddr, MAC_SOURCE_LEARNED, MEMO_INNER,
    MEMO_INNER_VTEP, MEMO_MAC, MEMO_RECHECK, MEMO_TX_MAC, MEMO_VNI, MEMO_VNI_KNOWN, MacKey,
    MacPeer, PeerKey, PeerStats, PortKey,
};

use super::TC_NEXT;
use crate::{
    config::config,
    maps::{INNER_ADDRS, MAC_PEERS, VXLAN_DEVICES_BY_VNI, forget_mac_owner, peer_stats},
    packet::{
        ETH_HLEN, InnerSource, Outer, VXLAN_HLEN, Vxlan, inner_source, is_local_vtep, parse_outer,
        parse_vxlan, same_addr, same_mac, segments,
    },
};

/// VXLAN packets to a well-known VXLAN port no watched device uses, per
/// (peer, port, direction). Name: `names::maps::PORT_MISMATCH`.
#[map]
pub static PORT_MISMATCH: LruPerCpuHashMap<PortKey, u64> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// Counts one packet of a port mismatch.
#[inline(always)]
fn count_port_mismatch(peer: &PeerKey, port: u16, dir: Direction) {
    let key = PortKey {
        peer: *peer,
        port,
        dir: match dir {
            Direction::Ingress => DIR_RX,
            Direction::Egress => DIR_TX,
        },
        _pad: 0,
    };
    if let Some(n) = PORT_MISMATCH.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of a PORT_MISMATCH value, alive until
        // the program returns; a program interrupting this one may add
        // too, which at worst loses a count.
        unsafe { *n += 1 };
    } else {
        let _ = PORT_MISMATCH.insert(&key, &1, 0);
    }
}

/// Packets arriving at the underlay device. Name: `names::programs::NIC_INGRESS`.
#[classifier]
pub fn vxtrace_nic_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Ingress);
    TC_NEXT
}

/// Packets leaving the underlay device. Name: `names::programs::NIC_EGRESS`.
#[classifier]
pub fn vxtrace_nic_egress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Egress);
    TC_NEXT
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Arriving: the peer is the outer source.
    Ingress,
    /// Leaving: the peer is the outer destination.
    Egress,
}

/// Counts one packet on the underlay device.
#[inline(always)]
fn handle(ctx: &TcContext, dir: Direction) {
    // Fast path for everything that is not UDP to a VXLAN port: a few
    // loads and compares, no map access.
    let Some(outer) = parse_outer(ctx) else {
        return;
    };
    let (local, peer) = match dir {
        Direction::Ingress => (&outer.dst, &outer.src),
        Direction::Egress => (&outer.src, &outer.dst),
    };
    if !is_local_vtep(local) {
        return;
    }
    if outer.foreign {
        // VXLAN on a port no watched device uses: a port mismatch between
        // nodes (rare), counted apart; anything else on it is not ours.
        if let Vxlan::Valid { .. } = parse_vxlan(ctx, outer.payload_off) {
            count_port_mismatch(peer, outer.port, dir);
        }
        return;
    }
    let Some(stats) = peer_stats(ctx, peer) else {
        return;
    };
    // Parsed after the peer's counters are found, not before: the MACs
    // then need not live across the lookup. Kept across it, a malformed
    // header's (absent) MACs became a stack slot the compiler reloaded on
    // a path that never wrote it, and the 5.10 verifier refuses any read
    // of an unwritten slot (newer ones allow it to privileged programs).
    let vxlan = parse_vxlan(ctx, outer.payload_off);
    // SAFETY: this CPU's slot or this CPU's entry in PEERS: non-null,
    // aligned, and its memory stays valid until the program returns (an
    // entry the LRU evicts meanwhile may be handed to another key, which
    // at worst gets this packet's counts). Only programs on this CPU write
    // it; one that interrupts this program may add to the same counters,
    // and the adds are not atomic, which at worst loses a count.
    let stats = unsafe { &mut *stats };
    match vxlan {
        Vxlan::Malformed => match dir {
            Direction::Ingress => stats.malformed_rx += 1,
            Direction::Egress => stats.malformed_tx += 1,
        },
        Vxlan::Valid {
            vni,
            inner_dst,
            inner_src,
        } => {
            memo_begin(stats);
            let known = vni_known(stats, vni);
            if config!(filter_vni) != 0 && !known {
                stats.unknown_vni += 1;
                return;
            }
            let inner_off = outer.payload_off + VXLAN_HLEN;
            if dir == Direction::Egress && is_flood_copy(stats, vni, known, peer, inner_dst) {
                stats.tx_flood.add(segments(ctx) as u64, ctx.len() as u64);
                return;
            }
            count_traffic(ctx, stats, &outer, dir);
            if dir == Direction::Ingress {
                learn_mac(stats, vni, inner_src, peer);
                if known
                    && stats.memo.vni_check_dst_mac != 0
                    && inner_dst[0] & 1 == 0
                    && !same_mac(&inner_dst, &stats.memo.vni_mac)
                {
                    stats.inner_dst_mac_mismatch += 1;
                }
                if let Some(src) = inner_source(ctx, inner_off + ETH_HLEN - 2) {
                    inspect_inner_src(stats, &src, peer);
                }
            }
        }
    }
}

/// Counts a packet's use of the peer's lookup memo; every
/// `MEMO_RECHECK`-th packet finds it emptied, so the maps are read again.
#[inline(always)]
fn memo_begin(stats: &mut PeerStats) {
    let m = &mut stats.memo;
    m.uses = m.uses.wrapping_add(1);
    if m.uses & (MEMO_RECHECK - 1) == 0 {
        m.state = 0;
    }
}

/// Whether `vni` belongs to a watched device (its entry is then in the
/// memo). A different VNI than the memo's also forgets the learned MAC,
/// which is per VNI.
#[inline(always)]
fn vni_known(stats: &mut PeerStats, vni: u32) -> bool {
    let m = &mut stats.memo;
    if m.state & MEMO_VNI != 0 && m.vni == vni {
        return m.state & MEMO_VNI_KNOWN != 0;
    }
    m.state = (m.state & !(MEMO_VNI_KNOWN | MEMO_MAC | MEMO_TX_MAC)) | MEMO_VNI;
    m.vni = vni;
    // SAFETY: the entry is copied into the memo right away. The loader may
    // replace it meanwhile (a device re-registered); the fields are plain
    // integers, so a mixed read is a stale answer, corrected by the next
    // recheck, never an invalid value.
    match unsafe { VXLAN_DEVICES_BY_VNI.get(vni) } {
        Some(info) => {
            m.state |= MEMO_VNI_KNOWN;
            m.vni_check_dst_mac = info.check_dst_mac;
            m.vni_mac = info.mac;
            m.vni_floods = info.floods;
            true
        }
        None => false,
    }
}

/// The inner source address of a packet from `peer`: the peer's own VTEP
/// address on a packet the peer forwarded means it masquerades pod traffic
/// (the peer's own traffic, host network or its ICMP errors, carries that
/// address too, with a host's initial TTL); anything else is learned as
/// living behind the peer (for attributing dropped inner packets).
#[inline(always)]
fn inspect_inner_src(stats: &mut PeerStats, inner: &InnerSource, peer: &PeerKey) {
    let src = &inner.addr;
    let masqueraded = !inner.sent_by_the_host_itself();
    let m = &mut stats.memo;
    if m.state & MEMO_INNER != 0 && same_addr(&m.inner_src, src) {
        if m.state & MEMO_INNER_VTEP != 0 && masqueraded {
            stats.inner_src_vtep += 1;
        }
        return;
    }
    m.inner_src = *src;
    m.state = (m.state & !MEMO_INNER_VTEP) | MEMO_INNER;
    if let Some(known) = INNER_ADDRS.get_ptr(src) {
        // SAFETY: a map value, valid until the program returns (an entry
        // deleted meanwhile is freed only after that). Userspace or another
        // CPU may rewrite it; its fields are plain integers, so that gives
        // a stale answer, never an invalid value.
        let known = unsafe { &*known };
        if same_addr(&known.peer, peer) {
            if known.kind == INNER_VTEP {
                m.state |= MEMO_INNER_VTEP;
                if masqueraded {
                    stats.inner_src_vtep += 1;
                }
            }
            return;
        }
        if known.kind == INNER_VTEP {
            // Configuration says another peer owns it; do not overwrite.
            return;
        }
    }
    let value = InnerAddr {
        peer: *peer,
        kind: INNER_LEARNED,
        _pad: 0,
    };
    let _ = INNER_ADDRS.insert(src, &value, 0);
}

/// Adds the packet to the peer's traffic, size and fragment counters
/// (packets over 1450 and 1500 bytes are read off the size histogram).
#[inline(always)]
fn count_traffic(ctx: &TcContext, stats: &mut PeerStats, outer: &Outer, dir: Direction) {
    let segs = segments(ctx);
    // GSO/GRO aggregates carry one set of outer headers for many segments;
    // add the others so bytes approximate what crossed the wire.
    let hdrs = (outer.payload_off + VXLAN_HLEN) as u64;
    let bytes = ctx.len() as u64 + (segs as u64 - 1) * hdrs;
    let segs = segs as u64;
    // Per-segment outer size for the path-MTU buckets.
    let ip_len = if segs > 1 {
        outer.ip_len / segs as u32
    } else {
        outer.ip_len
    };
    let (counter, sizes, fragmented) = match dir {
        Direction::Egress => (
            &mut stats.tx_encap,
            &mut stats.tx_size,
            &mut stats.tx_fragmented,
        ),
        Direction::Ingress => (
            &mut stats.rx_nic,
            &mut stats.rx_size,
            &mut stats.rx_fragmented,
        ),
    };
    counter.add(segs, bytes);
    if let Some(b) = sizes.get_mut(vxtrace_common::size_bucket(ip_len)) {
        *b += segs;
    }
    if outer.first_fragment {
        *fragmented += 1;
    }
}

/// Remembers that `peer` sends frames with inner source `mac` on `vni`.
/// The memo first, then a lookup: the common case (already known) costs no
/// write.
#[inline(always)]
fn learn_mac(stats: &mut PeerStats, vni: u32, mac: [u8; 6], peer: &PeerKey) {
    let m = &mut stats.memo;
    if m.state & MEMO_MAC != 0 && same_mac(&m.mac, &mac) {
        return;
    }
    m.mac = mac;
    m.state |= MEMO_MAC;
    let key = MacKey::new(vni, mac);
    if let Some(known) = MAC_PEERS.get_ptr(&key)
        // SAFETY: a map value, valid until the program returns; a
        // concurrent rewrite gives a stale peer (integers), never an
        // invalid one.
        && same_addr(unsafe { &(*known).peer }, peer)
    {
        return;
    }
    let value = MacPeer {
        peer: *peer,
        source: MAC_SOURCE_LEARNED,
        _pad: 0,
    };
    let _ = MAC_PEERS.insert(&key, &value, 0);
    // The MAC is new, or arrives from another peer than before (a host
    // moved behind another VTEP): this CPU's VXLAN device program, which
    // decapsulates this very frame next, must not use its old answer.
    forget_mac_owner(&mac);
}

/// Whether a VXLAN packet leaving for `peer` is a flooded copy: its inner
/// frame goes to a broadcast or multicast MAC, or, on a device that
/// floods, to a MAC that does not live behind `peer` (unknown unicast,
/// replicated to every VTEP of the flood list). Unicast copies of a MAC
/// known behind the peer are remembered, so a flow costs no lookup.
#[inline(always)]
fn is_flood_copy(
    stats: &mut PeerStats,
    vni: u32,
    known: bool,
    peer: &PeerKey,
    dst: [u8; 6],
) -> bool {
    if dst[0] & 1 != 0 {
        return true;
    }
    let m = &mut stats.memo;
    if !known || m.vni_floods == 0 {
        return false;
    }
    if m.state & MEMO_TX_MAC != 0 && same_mac(&m.tx_dst_mac, &dst) {
        return false;
    }
    let owner = MAC_PEERS.get_ptr(&MacKey::new(vni, dst));
    // SAFETY: a map value, valid until the program returns; a concurrent
    // rewrite gives a stale peer (integers), never an invalid one.
    if owner.is_some_and(|o| same_addr(unsafe { &(*o).peer }, peer)) {
        m.tx_dst_mac = dst;
        m.state |= MEMO_TX_MAC;
        return false;
    }
    true
}
