//! `vxtrace_kfree_skb_raw` / `vxtrace_kfree_skb_tp`: kernel drops
//! (`skb:kfree_skb`) by reason, location and underlay peer. The raw
//! tracepoint is the one normally attached; the classic one is for kernels
//! where the raw one cannot attach. The PAWS kprobes count through
//! [`count`] too.
//!
//! The dropped skb is read with bpf_probe_read_kernel at offsets the loader
//! resolved from the running kernel's BTF (no struct layout is compiled in).
//! Its network header decides the peer: an outer VXLAN packet belongs to the
//! outer address that is not ours; an inner packet to the peer that owns its
//! source (or else destination) address, from the inner-address map and the
//! pod-subnet trie. Anything else is "other" (the zero peer), by reason.

use aya_ebpf::{
    macros::{map, raw_tracepoint, tracepoint},
    maps::{HashMap, LruPerCpuHashMap, lpm_trie::Key},
    programs::{RawTracePointContext, TracePointContext},
};
use vxtrace_common::{
    DROP_KIND_OUTER, DROP_KIND_PACKET, DROP_KIND_SYNACK, DropKey, NO_FIELD, PeerKey,
    REASON_UNKNOWN, TooBig,
};

use crate::{
    config::config,
    kernel_mem::{field, kread},
    maps::{INNER_ADDRS, PEERS, POD_SUBNETS, update_global},
    packet::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, is_local_vtep, is_vxlan_port},
};

/// Drops by (peer, reason, location). Name: `names::maps::DROPS`.
#[map]
pub static DROPS: LruPerCpuHashMap<DropKey, u64> = LruPerCpuHashMap::with_max_entries(16_384, 0);

/// Drops of packets too big for their path (PKT_TOO_BIG), per peer, with
/// the largest size. Name: `names::maps::TOO_BIG`.
#[map]
pub static TOO_BIG: LruPerCpuHashMap<PeerKey, TooBig> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// Network namespaces (inode numbers) whose drops count, unless
/// `Config::netns_scope_all` is set. Name: `names::maps::NETNS_SCOPE`.
#[map]
pub static NETNS_SCOPE: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// `skb:kfree_skb` as a raw tracepoint: arguments (skb, location, reason,
/// and on kernels >= 6.10 rx_sk). Name: `names::programs::DROPS_RAW`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn vxtrace_kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let reason = if config!(raw_tp_has_reason) != 0 {
        ctx.arg::<u64>(2) as u32
    } else {
        REASON_UNKNOWN
    };
    let rx_sk: u64 = if config!(raw_tp_has_rx_sk) != 0 {
        ctx.arg(3)
    } else {
        0
    };
    count(skb, location, reason, rx_sk);
    0
}

/// `skb:kfree_skb` as a classic tracepoint, for kernels where the raw one
/// cannot attach; field offsets come from its tracefs format file.
/// Name: `names::programs::DROPS_TP`.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn vxtrace_kfree_skb_tp(ctx: TracePointContext) -> u32 {
    let o = config!(offsets);
    if o.tp_skbaddr == NO_FIELD {
        return 0;
    }
    let skb: u64 = tp_field(&ctx, o.tp_skbaddr, 0);
    let location: u64 = tp_field(&ctx, o.tp_location, 0);
    let reason: u32 = tp_field(&ctx, o.tp_reason, REASON_UNKNOWN);
    let rx_sk: u64 = tp_field(&ctx, o.tp_rx_sk, 0);
    count(skb, location, reason, rx_sk);
    0
}

/// The classic tracepoint's field at `off`: `missing` when the kernel's
/// record has no such field (`NO_FIELD`) or the read fails.
#[inline(always)]
fn tp_field<T>(ctx: &TracePointContext, off: u32, missing: T) -> T {
    if off == NO_FIELD {
        return missing;
    }
    // SAFETY: read_at copies with bpf_probe_read_kernel, which checks the
    // address itself (a bad one is an error, here `missing`). The offset
    // is one the tracefs format file gave for this field, and every
    // field read is an integer, for which any bytes are a valid value.
    unsafe { ctx.read_at(off as usize) }.unwrap_or(missing)
}

/// The network namespace (inode number) of the skb: its device's, else
/// its socket's; 0 when neither is known.
#[inline(always)]
fn netns_of(skb: u64, rx_sk: u64) -> u32 {
    let o = config!(offsets);
    let dev: u64 = field(o.skb_dev).and_then(|f| kread(skb + f)).unwrap_or(0);
    let net: u64 = if dev != 0 {
        field(o.dev_nd_net)
            .and_then(|f| kread(dev + f))
            .unwrap_or(0)
    } else {
        // TCP clears skb->dev on receive; the socket tells the namespace.
        let mut sk: u64 = field(o.skb_sk).and_then(|f| kread(skb + f)).unwrap_or(0);
        if sk == 0 {
            sk = rx_sk;
        }
        field(o.sk_net).and_then(|f| kread(sk + f)).unwrap_or(0)
    };
    field(o.net_ns_inum)
        .and_then(|f| kread::<u32>(net + f))
        .unwrap_or(0)
}

/// The peer that owns an inner address: a known address first, else the
/// pod subnet it falls in.
#[inline(always)]
fn owner_of_inner(addr: &PeerKey) -> Option<PeerKey> {
    if let Some(a) = INNER_ADDRS.get_ptr(addr) {
        // SAFETY: a map value, valid until the program returns; a
        // concurrent rewrite gives a stale peer (integers), never an
        // invalid one.
        return Some(unsafe { (*a).peer });
    }
    let key = Key::new(128, addr.addr);
    POD_SUBNETS.get(&key).copied()
}

/// The peer a dropped packet belongs to, if any, and what kind of packet
/// it was.
#[inline(always)]
fn attribute(skb: u64) -> Option<(PeerKey, u32)> {
    let o = config!(offsets);
    if o.valid == 0 {
        return None;
    }
    let head: u64 = kread(skb + field(o.skb_head)?)?;
    let nh: u16 = kread(skb + field(o.skb_network_header)?)?;
    if nh == 0xffff {
        return None;
    }
    let proto = u16::from_be(kread::<u16>(skb + field(o.skb_protocol)?)?);
    let ip = head + nh as u64;
    let (src, dst, l4_proto, l4_off) = if proto == ETH_P_IP {
        let h: [u8; 20] = kread(ip)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let frag = u16::from_be_bytes([h[6], h[7]]);
        let l4 = if frag & 0x1fff == 0 { h[9] } else { 0 };
        (
            PeerKey::from_v4([h[12], h[13], h[14], h[15]]),
            PeerKey::from_v4([h[16], h[17], h[18], h[19]]),
            l4,
            ((h[0] & 0x0f) as u64) * 4,
        )
    } else if proto == ETH_P_IPV6 {
        let h: [u8; 40] = kread(ip)?;
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s.copy_from_slice(&h[8..24]);
        d.copy_from_slice(&h[24..40]);
        (PeerKey::from_v6(s), PeerKey::from_v6(d), h[6], 40)
    } else {
        return None;
    };
    if l4_proto == IPPROTO_UDP
        && let Some(ports) = kread::<[u16; 2]>(ip + l4_off)
        && is_vxlan_port(u16::from_be(ports[1]))
    {
        // Outer VXLAN: the peer is the address that is not ours.
        let outer = if config!(local_addr_count) > 0 {
            if is_local_vtep(&src) {
                Some(dst)
            } else if is_local_vtep(&dst) {
                Some(src)
            } else {
                None
            }
        } else if PEERS.get_ptr(&src).is_some() {
            Some(src)
        } else if PEERS.get_ptr(&dst).is_some() {
            Some(dst)
        } else {
            None
        };
        return outer.map(|p| (p, DROP_KIND_OUTER));
    }
    let mut kind = DROP_KIND_PACKET;
    if l4_proto == IPPROTO_TCP
        && let Some(flags) = kread::<u8>(ip + l4_off + 13)
        && flags & 0x16 == 0x12
    {
        kind = DROP_KIND_SYNACK;
    }
    owner_of_inner(&src)
        .or_else(|| owner_of_inner(&dst))
        .map(|p| (p, kind))
}

/// Records the size of a packet dropped as too big (rare: only these drops
/// pay for the read).
#[inline(always)]
fn count_too_big(skb: u64, peer: &PeerKey) {
    let len: u64 = field(config!(offsets).skb_len)
        .and_then(|f| kread::<u32>(skb + f))
        .unwrap_or(0)
        .into();
    if let Some(v) = TOO_BIG.get_ptr_mut(peer) {
        // SAFETY: this CPU's copy of a TOO_BIG value, alive until the
        // program returns; an interrupting program may update it too,
        // which at worst loses a count or a size.
        let v = unsafe { &mut *v };
        v.count += 1;
        if len > v.max_len {
            v.max_len = len;
        }
    } else {
        let _ = TOO_BIG.insert(
            peer,
            &TooBig {
                count: 1,
                max_len: len,
            },
            0,
        );
    }
}

/// Counts one drop: of the skb at `skb` (kernel memory), at `location`,
/// for `reason`; `rx_sk` is the receiving socket when the caller knows it.
#[inline(always)]
pub fn count(skb: u64, location: u64, reason: u32, rx_sk: u64) {
    if config!(netns_scope_all) == 0 {
        let inum = netns_of(skb, rx_sk);
        if NETNS_SCOPE.get_ptr(inum).is_none() {
            update_global(|g| g.drops_out_of_scope += 1);
            return;
        }
    }
    let (peer, kind) = attribute(skb).unwrap_or_default();
    if reason == config!(reason_too_big) {
        count_too_big(skb, &peer);
    }
    let key = DropKey {
        peer,
        reason,
        kind,
        location,
    };
    update_global(|g| g.drops_seen += 1);
    if let Some(n) = DROPS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of a DROPS value: non-null, aligned, and
        // kept alive until the program returns even if the LRU evicts the
        // entry. Only programs on this CPU write it; one that interrupts
        // this one may add too, and the add is not atomic, which at worst
        // loses a count.
        unsafe { *n += 1 };
        return;
    }
    if DROPS.insert(&key, &1u64, 1).is_ok() {
        update_global(|g| g.drop_keys_inserted += 1);
    } else if let Some(n) = DROPS.get_ptr_mut(&key) {
        // Another CPU created it first.
        // SAFETY: as for the lookup above.
        unsafe { *n += 1 };
    }
}
