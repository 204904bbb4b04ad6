//! TC programs on the VXLAN device itself. Ingress sees frames right after
//! decapsulation (`rx_decap`); egress sees frames the device is about to
//! encapsulate (`tx_dev`). Neither has an outer header, so the peer comes
//! from `MAC_PEERS`: the inner source MAC on ingress, the destination MAC on
//! egress (the same MAC in flannel's layout: the peer VTEP's).

use aya_ebpf::programs::TcContext;
use vxtrace_common::{Counter, MacKey};

use crate::{
    maps::{MAC_PEERS, VXLAN_DEVICES, global, peer_stats},
    packet::{ETH_HLEN, read},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Decapsulated, being delivered.
    Decap,
    /// About to be encapsulated.
    Encap,
}

#[inline(always)]
pub fn handle(ctx: &TcContext, dir: Direction) {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(dev) = (unsafe { VXLAN_DEVICES.get(ifindex) }) else {
        return;
    };
    if (ctx.len() as usize) < ETH_HLEN {
        return;
    }
    // Destination MAC at 0, source MAC at 6.
    let mac_off = match dir {
        Direction::Decap => 6,
        Direction::Encap => 0,
    };
    let Some(mac) = read::<[u8; 6]>(ctx, mac_off) else {
        return;
    };
    let bytes = ctx.len() as u64;
    let segs = crate::packet::segments(ctx) as u64;
    let key = MacKey::new(dev.vni, mac);
    if let Some(owner) = MAC_PEERS.get_ptr(&key) {
        let peer = unsafe { (*owner).peer };
        if let Some(stats) = peer_stats(ctx, &peer) {
            let stats = unsafe { &mut *stats };
            match dir {
                Direction::Decap => stats.rx_decap.add(segs, bytes),
                Direction::Encap => stats.tx_dev.add(segs, bytes),
            }
            return;
        }
    }
    if let Some(g) = global() {
        let g = unsafe { &mut *g };
        let counter: &mut Counter = match dir {
            Direction::Decap => &mut g.rx_decap_unattributed,
            Direction::Encap => &mut g.tx_dev_unattributed,
        };
        counter.add(segs, bytes);
    }
}
