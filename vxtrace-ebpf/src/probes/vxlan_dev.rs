//! `vxtrace_vxlan_ingress` / `vxtrace_vxlan_egress`: TC programs on the
//! VXLAN device itself. Ingress sees frames right after decapsulation
//! (`rx_decap`); egress sees frames the device is about to encapsulate
//! (`tx_dev`). Neither has an outer header, so the peer comes from
//! `MAC_PEERS`: the inner source MAC on ingress, the destination MAC on
//! egress (the same MAC in flannel's layout: the peer VTEP's).
//! Metadata (`external`) devices have no FDB to seed that map; their
//! frames carry the remote in the skb's tunnel metadata instead, which is
//! read first (`tunnel_peer`).
//!
//! Inner TCP handshakes are tracked here too: SYNs open an entry in
//! `HANDSHAKES`, the SYN-ACK closes it, and our own clients' handshake
//! latency goes to userspace through `HANDSHAKE_EVENTS`.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, bpf_tunnel_key},
    helpers::{bpf_ktime_get_ns, bpf_skb_get_tunnel_key},
    macros::{classifier, map},
    maps::{LruHashMap, RingBuf},
    programs::TcContext,
};
use vxtrace_common::{
    Counter, FlowKey, HANDSHAKE_IN, HANDSHAKE_OUT, Handshake, HandshakeEvent, MEMO_RECHECK, MacKey,
    MacMemo, PeerKey, PeerStats, VxlanDevice,
};

use super::TC_NEXT;
use crate::{
    maps::{MAC_MEMO, MAC_PEERS, VXLAN_DEVICES, peer_stats, update_global},
    packet::{ETH_HLEN, parse_inner_tcp, read, same_mac, segments},
};

/// TCP handshakes seen starting (SYN) and not yet answered (SYN-ACK),
/// keyed by the inner 4-tuple. The loader expires old entries as
/// "unanswered"; the LRU bounds the map under a SYN flood.
/// Name: `names::maps::HANDSHAKES`.
#[map]
pub static HANDSHAKES: LruHashMap<FlowKey, Handshake> = LruHashMap::with_max_entries(65_536, 0);

/// Completed handshakes (latency), one small record per connection.
/// Name: `names::maps::HANDSHAKE_EVENTS`.
#[map]
pub static HANDSHAKE_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Frames a VXLAN device has just decapsulated.
/// Name: `names::programs::VXLAN_INGRESS`.
#[classifier]
pub fn vxtrace_vxlan_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Decap);
    TC_NEXT
}

/// Frames a VXLAN device is about to encapsulate.
/// Name: `names::programs::VXLAN_EGRESS`.
#[classifier]
pub fn vxtrace_vxlan_egress(ctx: TcContext) -> i32 {
    handle(&ctx, Direction::Encap);
    TC_NEXT
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Decapsulated, being delivered.
    Decap,
    /// About to be encapsulated.
    Encap,
}

const TCP_FIN_SYN_RST_ACK: u8 = 0x17;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Counts one frame on a VXLAN device, for its peer or as unattributed.
#[inline(always)]
fn handle(ctx: &TcContext, dir: Direction) {
    // SAFETY: `skb` is the context pointer the kernel passed to this run,
    // valid until the program returns; the verifier checks the field access.
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
    let Ok(peer) = frame_owner(ctx, dir, ifindex, mac) else {
        return; // not a watched device
    };
    let bytes = ctx.len() as u64;
    let segs = segments(ctx) as u64;
    if peer.is_known()
        && let Some(stats) = peer_stats(ctx, &peer)
    {
        // SAFETY: as in the underlay programs: this CPU's slot or entry,
        // valid memory until the program returns (an entry evicted
        // meanwhile may go to another key, which then gets this frame's
        // counts), written only by programs on this CPU, whose adds may
        // at worst lose a count.
        let stats = unsafe { &mut *stats };
        match dir {
            Direction::Decap => stats.rx_decap.add(segs, bytes),
            Direction::Encap => stats.tx_dev.add(segs, bytes),
        }
        track_tcp(ctx, dir, &peer, stats);
        return;
    }
    update_global(|g| {
        let counter: &mut Counter = match dir {
            Direction::Decap => &mut g.rx_decap_unattributed,
            Direction::Encap => &mut g.tx_dev_unattributed,
        };
        counter.add(segs, bytes);
    });
}

/// The peer a frame on the device `ifindex` belongs to: from the memo;
/// for a metadata device from the skb's tunnel metadata; else from the
/// device and MAC maps (then remembered). `Err` for a device vxtrace does
/// not watch, [`PeerKey::UNKNOWN`] for a MAC no peer owns.
#[inline(always)]
fn frame_owner(ctx: &TcContext, dir: Direction, ifindex: u32, mac: [u8; 6]) -> Result<PeerKey, ()> {
    let slot = MacMemo::slot(&mac);
    // SAFETY: this CPU's slot of a per-CPU array: non-null, aligned, never
    // freed, and written only by programs on this CPU. One that interrupts
    // this program could rewrite the slot; every field is an integer, so
    // the worst outcome is a wrong memo answer, dropped at the next recheck.
    let mut memo = MAC_MEMO.get_ptr_mut(slot).map(|m| unsafe { &mut *m });
    if let Some(m) = memo.as_mut()
        && m.valid != 0
        && m.ifindex == ifindex
        && same_mac(&m.mac, &mac)
        && m.uses & (MEMO_RECHECK - 1) != 0
    {
        m.uses = m.uses.wrapping_add(1);
        return Ok(m.peer);
    }
    // SAFETY: the entry is read right away (its VNI and flags). The loader
    // may replace it meanwhile; an integer read mid-update is a stale
    // answer, never an invalid value.
    let Some(dev) = (unsafe { VXLAN_DEVICES.get(ifindex) }) else {
        return Err(());
    };
    let (vni, flags) = (dev.vni, dev.flags);
    if flags & VxlanDevice::METADATA != 0 {
        // Never memoised: the MAC says nothing about the remote here.
        // Without tunnel metadata (a frame that reached the device some
        // other way) the MAC map is all there is.
        let peer = tunnel_peer(ctx, dir);
        return Ok(if peer.is_known() {
            peer
        } else {
            mac_peer(vni, mac)
        });
    }
    let owner = mac_peer(vni, mac);
    if let Some(m) = memo {
        // Only answers are remembered: an unknown MAC may be learned any
        // moment by the underlay program.
        m.valid = u8::from(owner.is_known());
        m.ifindex = ifindex;
        m.mac = mac;
        m.uses = 1;
        m.peer = owner;
    }
    Ok(owner)
}

/// The peer that owns `mac` on `vni`, from `MAC_PEERS` (else
/// [`PeerKey::UNKNOWN`]).
#[inline(always)]
fn mac_peer(vni: u32, mac: [u8; 6]) -> PeerKey {
    match MAC_PEERS.get_ptr(&MacKey::new(vni, mac)) {
        // SAFETY: a map value, valid until the program returns; a
        // concurrent rewrite gives a stale peer (integers), never an
        // invalid one.
        Some(o) => unsafe { (*o).peer },
        None => PeerKey::UNKNOWN,
    }
}

/// The helper's error for tunnel metadata of the other address family.
const EPROTO: i64 = 71;
const TUNNEL_KEY_SIZE: u32 = core::mem::size_of::<bpf_tunnel_key>() as u32;

/// The remote underlay address in the skb's tunnel metadata, if it has
/// any (else [`PeerKey::UNKNOWN`]). On ingress the metadata is what the VXLAN device found in the
/// outer headers, and the helper's `remote` field is the outer source. On
/// egress it is what a lightweight-tunnel route (`encap ip ... dst R`)
/// attached to the skb's route, or what a BPF program set, and the
/// destination R comes back in the `local` field: the helper copies the
/// key's source to `remote` and its destination to `local`, as suits
/// received packets. (Seen on 6.18: the route's metadata is still on the
/// skb at the device's TC egress hook; a frame without it falls back to
/// the MAC map.) IPv4 first; only an IPv6 tunnel answers EPROTO to that.
#[inline(always)]
fn tunnel_peer(ctx: &TcContext, dir: Direction) -> PeerKey {
    let mut key = MaybeUninit::<bpf_tunnel_key>::uninit();
    // SAFETY: the context pointer of this run and a stack buffer of exactly
    // TUNNEL_KEY_SIZE bytes, which the helper fills (or zeroes on error).
    let rc = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, key.as_mut_ptr(), TUNNEL_KEY_SIZE, 0) };
    if rc == 0 {
        // SAFETY: the helper filled the whole key; a u32 member of a union
        // of integers takes any bits.
        let addr = unsafe {
            let key = key.assume_init_ref();
            match dir {
                Direction::Decap => key.__bindgen_anon_1.remote_ipv4,
                Direction::Encap => key.__bindgen_anon_3.local_ipv4,
            }
        };
        // Host byte order, as the helper converts it.
        return if addr != 0 {
            PeerKey::from_v4(addr.to_be_bytes())
        } else {
            PeerKey::UNKNOWN
        };
    }
    if rc != -EPROTO {
        return PeerKey::UNKNOWN;
    }
    // SAFETY: as above, asking for the IPv6 form.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            key.as_mut_ptr(),
            TUNNEL_KEY_SIZE,
            BPF_F_TUNINFO_IPV6.into(),
        )
    };
    if rc != 0 {
        return PeerKey::UNKNOWN;
    }
    // SAFETY: the helper filled the whole key; a [u32; 4] member of a
    // union of integers takes any bits.
    let at: *const u32 = unsafe {
        let key = key.assume_init_ref();
        match dir {
            Direction::Decap => key.__bindgen_anon_1.remote_ipv6.as_ptr(),
            Direction::Encap => key.__bindgen_anon_3.local_ipv6.as_ptr(),
        }
    };
    // Four 4-byte loads: the address sits 4 bytes into the key, and the
    // compiler would otherwise merge them into 8-byte loads the verifier
    // refuses as misaligned stack accesses.
    // SAFETY: four u32s inside the key, in bounds and 4-byte aligned.
    let words: [u32; 4] = unsafe { core::array::from_fn(|i| core::ptr::read_volatile(at.add(i))) };
    if words[0] | words[1] | words[2] | words[3] == 0 {
        return PeerKey::UNKNOWN;
    }
    // The helper copied the address's bytes in network order, so the
    // words' memory is the address.
    PeerKey::from_v6_words(words)
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
        let key = FlowKey::new(t.src, t.sport, t.dst, t.dport);
        if HANDSHAKES.get_ptr(&key).is_some() {
            stats.syn_retrans += 1;
            return;
        }
        let value = Handshake {
            first_syn_ns: now_ns(),
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
        // The SYN-ACK's destination is the handshake's client.
        let key = FlowKey::new(t.dst, t.dport, t.src, t.sport);
        let Some(open) = HANDSHAKES.get_ptr(&key) else {
            return;
        };
        // SAFETY: a map value, valid until the program returns (removed
        // just below, freed only after that); copied out at once. The
        // loader may set `reported` meanwhile; the fields are integers.
        let open = unsafe { *open };
        let _ = HANDSHAKES.remove(&key);
        if open.direction == HANDSHAKE_OUT && dir == Direction::Decap && open.reported == 0 {
            let event = HandshakeEvent {
                peer: *peer,
                latency_ns: now_ns() - open.first_syn_ns,
                direction: HANDSHAKE_OUT,
                _pad: 0,
            };
            if HANDSHAKE_EVENTS
                .output::<HandshakeEvent>(&event, 0)
                .is_err()
            {
                update_global(|g| g.handshake_events_lost += 1);
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (what the loader compares with).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_ktime_get_ns() }
}
