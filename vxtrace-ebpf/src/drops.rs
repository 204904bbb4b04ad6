//! Kernel drops (`skb:kfree_skb`) by reason, location and underlay peer.
//!
//! The dropped skb is read with bpf_probe_read_kernel at offsets the loader
//! resolved from the running kernel's BTF (no struct layout is compiled in).
//! Its network header decides the peer: an outer VXLAN packet belongs to the
//! outer address that is not ours; an inner packet to the peer that owns its
//! source (or else destination) address, from the inner-address map and the
//! pod-subnet trie. Anything else is "other" (the zero peer), by reason.

use aya_ebpf::{helpers::bpf_probe_read_kernel, maps::lpm_trie::Key};
use vxtrace_common::{DROP_KIND_PACKET, DROP_KIND_SYNACK, DropKey, NO_FIELD, PeerKey};

use crate::{
    maps::{DROPS, INNER_ADDRS, NETNS_SCOPE, PEERS, POD_SUBNETS, config, global},
    packet::{is_local_vtep, is_vxlan_port},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;

/// Reads a `T` from kernel memory (None for a null address or a fault).
#[inline(always)]
pub fn kread<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn field(off: u32) -> Option<u64> {
    if off == NO_FIELD {
        None
    } else {
        Some(off as u64)
    }
}

/// The network namespace (inode number) of the skb: its device's, else
/// its socket's; 0 when neither is known.
#[inline(always)]
fn netns_of(skb: u64, rx_sk: u64) -> u32 {
    let o = unsafe { core::ptr::read_volatile(&raw const (*config()).offsets) };
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

#[inline(always)]
fn owner_of_inner(addr: &PeerKey) -> Option<PeerKey> {
    if let Some(a) = INNER_ADDRS.get_ptr(addr) {
        return Some(unsafe { (*a).peer });
    }
    let key = Key::new(128, addr.addr);
    POD_SUBNETS.get(&key).copied()
}

/// The peer a dropped packet belongs to, if any, and what kind of packet
/// it was.
#[inline(always)]
fn attribute(skb: u64) -> Option<(PeerKey, u32)> {
    let o = unsafe { core::ptr::read_volatile(&raw const (*config()).offsets) };
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
        let cfg = config();
        let has_local = unsafe { core::ptr::read_volatile(&raw const (*cfg).local_addr_count) } > 0;
        let outer = if has_local {
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
        return outer.map(|p| (p, DROP_KIND_PACKET));
    }
    let mut kind = DROP_KIND_PACKET;
    if l4_proto == 6
        && let Some(flags) = kread::<u8>(ip + l4_off + 13)
        && flags & 0x16 == 0x12
    {
        kind = DROP_KIND_SYNACK;
    }
    owner_of_inner(&src)
        .or_else(|| owner_of_inner(&dst))
        .map(|p| (p, kind))
}

#[inline(always)]
pub fn handle(skb: u64, location: u64, reason: u32, rx_sk: u64) {
    let cfg = config();
    let all = unsafe { core::ptr::read_volatile(&raw const (*cfg).netns_scope_all) };
    if all == 0 {
        let inum = netns_of(skb, rx_sk);
        if unsafe { NETNS_SCOPE.get(inum) }.is_none() {
            if let Some(g) = global() {
                unsafe { (*g).drops_out_of_scope += 1 };
            }
            return;
        }
    }
    let (peer, kind) = attribute(skb).unwrap_or_default();
    let key = DropKey {
        peer,
        reason,
        kind,
        location,
    };
    if let Some(g) = global() {
        unsafe { (*g).drops_seen += 1 };
    }
    if let Some(n) = DROPS.get_ptr_mut(&key) {
        unsafe { *n += 1 };
        return;
    }
    if DROPS.insert(&key, &1u64, 1).is_ok() {
        if let Some(g) = global() {
            unsafe { (*g).drop_keys_inserted += 1 };
        }
    } else if let Some(n) = DROPS.get_ptr_mut(&key) {
        // Another CPU created it first.
        unsafe { *n += 1 };
    }
}
