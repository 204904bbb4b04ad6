//! TC programs on the VXLAN device itself. Ingress sees frames right after
//! decapsulation (`rx_decap`); egress sees frames the device is about to
//! encapsulate (`tx_dev`). Neither has an outer header, so the peer comes
//! from `MAC_PEERS`: the inner source MAC on ingress, the destination MAC on
//! egress (the same MAC in flannel's layout: the peer VTEP's).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TcContext};
use vxtrace_common::{
    Counter, FlowKey, HANDSHAKE_IN, HANDSHAKE_OUT, Handshake, HandshakeEvent, MAC_MEMO_SLOTS,
    MEMO_RECHECK, MacKey, PeerKey, PeerStats,
};

use crate::{
    maps::{HANDSHAKE_EVENTS, HANDSHAKES, MAC_MEMO, MAC_PEERS, VXLAN_DEVICES, global, peer_stats},
    packet::{ETH_HLEN, read, same_mac},
};

const TCP_FIN_SYN_RST_ACK: u8 = 0x17;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Inner TCP: addresses, ports and flags of a decapsulated / about to be
/// encapsulated frame.
struct InnerTcp {
    src: PeerKey,
    dst: PeerKey,
    sport: u16,
    dport: u16,
    flags: u8,
}

#[inline(always)]
fn parse_inner_tcp(ctx: &TcContext) -> Option<InnerTcp> {
    let proto = u16::from_be(read::<u16>(ctx, 12)?);
    let (src, dst, l4) = if proto == 0x0800 {
        let h: [u8; 20] = read(ctx, ETH_HLEN)?;
        let frag = u16::from_be_bytes([h[6], h[7]]);
        if h[9] != 6 || frag & 0x1fff != 0 {
            return None;
        }
        (
            PeerKey::from_v4([h[12], h[13], h[14], h[15]]),
            PeerKey::from_v4([h[16], h[17], h[18], h[19]]),
            ETH_HLEN + ((h[0] & 0x0f) as usize) * 4,
        )
    } else if proto == 0x86dd {
        let h: [u8; 40] = read(ctx, ETH_HLEN)?;
        if h[6] != 6 {
            return None;
        }
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&h[8..24]);
        d.copy_from_slice(&h[24..40]);
        (PeerKey::from_v6(s), PeerKey::from_v6(d), ETH_HLEN + 40)
    } else {
        return None;
    };
    // Ports to flags in one read: a 1-byte read compiles to a bounds check
    // the verifier cannot use.
    let h: [u8; 14] = read(ctx, l4)?;
    Some(InnerTcp {
        src,
        dst,
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        flags: h[13],
    })
}

/// Counts handshake packets and keeps the open-handshake map: a SYN opens
/// an entry, the SYN-ACK closes it (and reports the latency of our own
/// clients' handshakes).
#[inline(always)]
fn track_tcp(ctx: &TcContext, dir: Direction, peer: &PeerKey, stats: &mut PeerStats) {
    let Some(t) = parse_inner_tcp(ctx) else {
        return;
    };
    let flags = t.flags & TCP_FIN_SYN_RST_ACK;
    if flags & TCP_RST != 0 {
        match dir {
            Direction::Encap => stats.rst_sent += 1,
            Direction::Decap => stats.rst_received += 1,
        }
    }
    if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
        match dir {
            Direction::Encap => stats.syn_sent += 1,
            Direction::Decap => stats.syn_received += 1,
        }
        let key = FlowKey {
            client: t.src,
            server: t.dst,
            client_port: t.sport,
            server_port: t.dport,
            _pad: 0,
        };
        if HANDSHAKES.get_ptr(&key).is_some() {
            stats.syn_retrans += 1;
            return;
        }
        let value = Handshake {
            first_syn_ns: unsafe { bpf_ktime_get_ns() },
            peer: *peer,
            direction: match dir {
                Direction::Encap => HANDSHAKE_OUT,
                Direction::Decap => HANDSHAKE_IN,
            },
            reported: 0,
        };
        let _ = HANDSHAKES.insert(&key, &value, 0);
    } else if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK {
        match dir {
            Direction::Encap => stats.synack_sent += 1,
            Direction::Decap => stats.synack_received += 1,
        }
        let key = FlowKey {
            client: t.dst,
            server: t.src,
            client_port: t.dport,
            server_port: t.sport,
            _pad: 0,
        };
        let Some(open) = HANDSHAKES.get_ptr(&key) else {
            return;
        };
        let open = unsafe { *open };
        let _ = HANDSHAKES.remove(&key);
        if open.direction == HANDSHAKE_OUT && dir == Direction::Decap && open.reported == 0 {
            let event = HandshakeEvent {
                peer: *peer,
                latency_ns: unsafe { bpf_ktime_get_ns() } - open.first_syn_ns,
                direction: HANDSHAKE_OUT,
                _pad: 0,
            };
            if HANDSHAKE_EVENTS
                .output::<HandshakeEvent>(&event, 0)
                .is_err()
                && let Some(g) = global()
            {
                unsafe { (*g).handshake_events_lost += 1 };
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Decapsulated, being delivered.
    Decap,
    /// About to be encapsulated.
    Encap,
}

/// The peer that owns `mac` on the device `ifindex`: from the memo, or
/// from the device and MAC maps (then remembered). `None` for a device
/// vxtrace does not watch, or a MAC no peer owns.
#[inline(always)]
fn mac_owner(ifindex: u32, mac: [u8; 6]) -> Result<Option<PeerKey>, ()> {
    let slot = (mac[5] as u32 ^ mac[4] as u32) & (MAC_MEMO_SLOTS - 1);
    let mut memo = MAC_MEMO.get_ptr_mut(slot).map(|m| unsafe { &mut *m });
    if let Some(m) = memo.as_mut()
        && m.valid != 0
        && m.ifindex == ifindex
        && same_mac(&m.mac, &mac)
        && m.uses & (MEMO_RECHECK - 1) != 0
    {
        m.uses = m.uses.wrapping_add(1);
        return Ok(Some(m.peer));
    }
    let Some(dev) = (unsafe { VXLAN_DEVICES.get(ifindex) }) else {
        return Err(());
    };
    let owner = MAC_PEERS
        .get_ptr(&MacKey::new(dev.vni, mac))
        .map(|o| unsafe { (*o).peer });
    if let Some(m) = memo {
        // Only answers are remembered: an unknown MAC may be learned any
        // moment by the underlay program.
        m.valid = u8::from(owner.is_some());
        m.ifindex = ifindex;
        m.mac = mac;
        m.uses = 1;
        if let Some(peer) = owner {
            m.peer = peer;
        }
    }
    Ok(owner)
}

#[inline(always)]
pub fn handle(ctx: &TcContext, dir: Direction) {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
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
    let Ok(owner) = mac_owner(ifindex, mac) else {
        return; // not a watched device
    };
    let bytes = ctx.len() as u64;
    let segs = crate::packet::segments(ctx) as u64;
    if let Some(peer) = owner {
        if let Some(stats) = peer_stats(ctx, &peer) {
            let stats = unsafe { &mut *stats };
            match dir {
                Direction::Decap => stats.rx_decap.add(segs, bytes),
                Direction::Encap => stats.tx_dev.add(segs, bytes),
            }
            track_tcp(ctx, dir, &peer, stats);
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
