//! TC programs on the underlay device: VXLAN packets leaving for a peer
//! (`tx_encap`) and arriving from one (`rx_nic`), plus malformed packets to
//! the VXLAN port. Arriving packets also teach `MAC_PEERS` which peer owns
//! each inner source MAC, which is how the VXLAN device's programs attribute
//! decapsulated frames.

use aya_ebpf::programs::TcContext;
use vxtrace_common::{MAC_SOURCE_LEARNED, MacKey, MacPeer, PeerKey, PeerStats};

use crate::{
    maps::{MAC_PEERS, VXLAN_DEVICES_BY_VNI, config, peer_stats},
    packet::{
        Outer, VXLAN_HLEN, Vxlan, is_local_vtep, is_vxlan_port, parse_outer, parse_vxlan, segments,
    },
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

#[inline(always)]
pub fn handle(ctx: &TcContext, dir: Direction) {
    // Fast path for everything that is not UDP to a VXLAN port: one header
    // walk and a few compares, no map access.
    let Some(outer) = parse_outer(ctx) else {
        return;
    };
    if !is_vxlan_port(outer.dst_port) {
        return;
    }
    let (local, peer) = match dir {
        Direction::Ingress => (&outer.dst, &outer.src),
        Direction::Egress => (&outer.src, &outer.dst),
    };
    if !is_local_vtep(local) {
        return;
    }
    let vxlan = parse_vxlan(ctx, outer.payload_off);
    let Some(stats) = peer_stats(ctx, peer) else {
        return;
    };
    // SAFETY: a per-CPU map value; only this CPU writes it, and the BPF
    // program cannot be preempted by another program on this CPU touching it
    // except through the same non-atomic adds, which may at worst lose a count.
    let stats = unsafe { &mut *stats };
    match vxlan {
        Vxlan::Malformed => match dir {
            Direction::Ingress => stats.malformed_rx += 1,
            Direction::Egress => stats.malformed_tx += 1,
        },
        Vxlan::Valid { vni, inner_src } => {
            if !vni_watched(vni) {
                stats.unknown_vni += 1;
                return;
            }
            count_traffic(ctx, stats, &outer, dir);
            if dir == Direction::Ingress {
                learn_mac(vni, inner_src, peer);
            }
        }
    }
}

#[inline(always)]
fn vni_watched(vni: u32) -> bool {
    let filter = unsafe { core::ptr::read_volatile(&raw const (*config()).filter_vni) };
    filter == 0 || unsafe { VXLAN_DEVICES_BY_VNI.get(vni) }.is_some()
}

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
    let (counter, over_1450, over_1500, fragmented) = match dir {
        Direction::Egress => (
            &mut stats.tx_encap,
            &mut stats.tx_over_1450,
            &mut stats.tx_over_1500,
            &mut stats.tx_fragmented,
        ),
        Direction::Ingress => (
            &mut stats.rx_nic,
            &mut stats.rx_over_1450,
            &mut stats.rx_over_1500,
            &mut stats.rx_fragmented,
        ),
    };
    counter.add(segs, bytes);
    if ip_len > 1450 {
        *over_1450 += segs;
    }
    if ip_len > 1500 {
        *over_1500 += segs;
    }
    if outer.first_fragment {
        *fragmented += 1;
    }
}

/// Remembers that `peer` sends frames with inner source `mac` on `vni`.
/// A lookup first: the common case (already known) costs no write.
#[inline(always)]
fn learn_mac(vni: u32, mac: [u8; 6], peer: &PeerKey) {
    let key = MacKey::new(vni, mac);
    if let Some(known) = MAC_PEERS.get_ptr(&key) {
        let known = unsafe { &*known };
        let a: [u64; 2] = unsafe { core::mem::transmute(known.peer.addr) };
        let b: [u64; 2] = unsafe { core::mem::transmute(peer.addr) };
        if a[0] == b[0] && a[1] == b[1] {
            return;
        }
    }
    let value = MacPeer {
        peer: *peer,
        source: MAC_SOURCE_LEARNED,
        _pad: 0,
    };
    let _ = MAC_PEERS.insert(&key, &value, 0);
}
