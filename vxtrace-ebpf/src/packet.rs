//! Header parsing, done once per packet: Ethernet (with up to two VLAN
//! tags), IPv4 / IPv6, UDP, the VXLAN header and the inner Ethernet header.
//!
//! Reads use direct packet access when the bytes are in the linear part of
//! the skb (the common case, and the cheap one) and fall back to
//! `bpf_skb_load_bytes` when they are not.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use vxtrace_common::{MAX_LOCAL_ADDRS, MAX_PORTS, PeerKey, VXLAN_FLAG_I};

use crate::maps::config;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
pub const VXLAN_HLEN: usize = 8;
/// Largest offset we ever read at: keeps every offset provably bounded for
/// the verifier (2 VLAN tags + IPv4 with options + UDP + VXLAN + inner Ethernet).
const MAX_OFFSET: usize = 256;

/// Reads a `T` at `off` bytes into the packet.
#[inline(always)]
pub fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    if off > MAX_OFFSET {
        return None;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).ok()
    }
}

/// What the outer headers of a UDP packet said.
pub struct Outer {
    pub src: PeerKey,
    pub dst: PeerKey,
    /// Outer IP packet length (header included), from the IP header.
    pub ip_len: u32,
    /// Offset of the UDP payload (the VXLAN header when this is VXLAN).
    pub payload_off: usize,
    /// The first fragment of a fragmented IPv4 packet.
    pub first_fragment: bool,
}

/// Parses Ethernet / IP / UDP to a VXLAN port. `None` for anything else,
/// and for non-first fragments, which carry no UDP header.
///
/// Most packets on an underlay NIC are not VXLAN, so the order is cheapest
/// rejection first: the IP protocol byte, then the UDP port, and only then
/// the rest of the headers.
#[inline(always)]
pub fn parse_outer(ctx: &TcContext) -> Option<Outer> {
    let mut off = ETH_HLEN;
    let mut proto = u16::from_be(read::<u16>(ctx, 12)?);
    // Up to two VLAN tags (802.1Q, QinQ) on the underlay.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = u16::from_be(read::<u16>(ctx, off + 2)?);
        off += 4;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            proto = u16::from_be(read::<u16>(ctx, off + 2)?);
            off += 4;
        }
    }
    if proto == ETH_P_IP {
        if read::<u8>(ctx, off + 9)? != IPPROTO_UDP {
            return None;
        }
        let ver_ihl = read::<u8>(ctx, off)?;
        let ihl = ((ver_ihl & 0x0f) as usize) * 4;
        if ver_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        let dst_port = u16::from_be(read::<u16>(ctx, off + ihl + 2)?);
        if !is_vxlan_port(dst_port) {
            return None;
        }
        let hdr: [u8; 20] = read(ctx, off)?;
        let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
        // Fragment offset non-zero: no UDP header in this one (what was
        // read as a port is payload).
        if frag & 0x1fff != 0 {
            return None;
        }
        let more_fragments = frag & 0x2000 != 0;
        Some(Outer {
            src: PeerKey::from_v4([hdr[12], hdr[13], hdr[14], hdr[15]]),
            dst: PeerKey::from_v4([hdr[16], hdr[17], hdr[18], hdr[19]]),
            ip_len: u16::from_be_bytes([hdr[2], hdr[3]]) as u32,
            payload_off: off + ihl + UDP_HLEN,
            first_fragment: more_fragments,
        })
    } else if proto == ETH_P_IPV6 {
        // VXLAN over IPv6 carries no extension headers in practice; a packet
        // that has them is not counted rather than mis-parsed.
        if read::<u8>(ctx, off + 6)? != IPPROTO_UDP {
            return None;
        }
        let dst_port = u16::from_be(read::<u16>(ctx, off + 40 + 2)?);
        if !is_vxlan_port(dst_port) {
            return None;
        }
        let hdr: [u8; 40] = read(ctx, off)?;
        if hdr[0] >> 4 != 6 {
            return None;
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&hdr[8..24]);
        dst.copy_from_slice(&hdr[24..40]);
        Some(Outer {
            src: PeerKey::from_v6(src),
            dst: PeerKey::from_v6(dst),
            ip_len: u16::from_be_bytes([hdr[4], hdr[5]]) as u32 + 40,
            payload_off: off + 40 + UDP_HLEN,
            first_fragment: false,
        })
    } else {
        None
    }
}

/// Is `port` one of the configured VXLAN ports?
#[inline(always)]
pub fn is_vxlan_port(port: u16) -> bool {
    let cfg = config();
    for i in 0..MAX_PORTS {
        // SAFETY: CONFIG is a static; volatile so the loader's values are read.
        let p = unsafe { core::ptr::read_volatile(&raw const (*cfg).ports[i]) };
        if p == 0 {
            return false;
        }
        if p == port {
            return true;
        }
    }
    false
}

#[inline(always)]
pub fn same_addr(a: &PeerKey, b: &PeerKey) -> bool {
    // Two u64 compares: a byte-array `==` could become a memcmp call.
    let a: [u64; 2] = unsafe { core::mem::transmute(a.addr) };
    let b: [u64; 2] = unsafe { core::mem::transmute(b.addr) };
    a[0] == b[0] && a[1] == b[1]
}

#[inline(always)]
pub fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    // As a u32 and a u16: a byte-array `==` could become a memcmp call.
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) == u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        && u16::from_ne_bytes([a[4], a[5]]) == u16::from_ne_bytes([b[4], b[5]])
}

/// Is `addr` a local VTEP address (or are no local addresses configured)?
#[inline(always)]
pub fn is_local_vtep(addr: &PeerKey) -> bool {
    let cfg = config();
    let count = unsafe { core::ptr::read_volatile(&raw const (*cfg).local_addr_count) } as usize;
    if count == 0 {
        return true;
    }
    for i in 0..MAX_LOCAL_ADDRS {
        if i >= count {
            break;
        }
        let local = unsafe { core::ptr::read_volatile(&raw const (*cfg).local_addrs[i]) };
        if same_addr(&local, addr) {
            return true;
        }
    }
    false
}

/// The VXLAN header and what follows it.
pub enum Vxlan {
    Valid { vni: u32, inner_src: [u8; 6] },
    Malformed,
}

/// Checks the VXLAN header at `off` the way the kernel's `vxlan_rcv` does:
/// the I flag set, no flag bits the device does not use, the reserved byte
/// after the VNI clear, and a whole inner Ethernet header after it.
#[inline(always)]
pub fn parse_vxlan(ctx: &TcContext, off: usize) -> Vxlan {
    let need = off + VXLAN_HLEN + ETH_HLEN;
    if (ctx.len() as usize) < need {
        return Vxlan::Malformed;
    }
    let Some(hdr) = read::<[u32; 2]>(ctx, off) else {
        return Vxlan::Malformed;
    };
    let flags = u32::from_be(hdr[0]);
    let vni_word = u32::from_be(hdr[1]);
    let allowed = unsafe { core::ptr::read_volatile(&raw const (*config()).allowed_flags) };
    if flags & VXLAN_FLAG_I == 0 || flags & !allowed != 0 || vni_word & 0xff != 0 {
        return Vxlan::Malformed;
    }
    // Inner Ethernet source MAC: bytes 6..12 of the inner frame.
    let Some(inner_src) = read::<[u8; 6]>(ctx, off + VXLAN_HLEN + 6) else {
        return Vxlan::Malformed;
    };
    Vxlan::Valid {
        vni: vni_word >> 8,
        inner_src,
    }
}

/// Number of wire packets this skb stands for (GSO/GRO aggregates count as
/// their segments).
#[inline(always)]
pub fn segments(ctx: &TcContext) -> u32 {
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs > 1 { segs } else { 1 }
}

/// The inner IPv4/IPv6 source address; `type_off` is the offset of the
/// inner Ethernet type field.
#[inline(always)]
pub fn inner_src_addr(ctx: &TcContext, type_off: usize) -> Option<PeerKey> {
    let proto = u16::from_be(read::<u16>(ctx, type_off)?);
    let ip = type_off + 2;
    if proto == ETH_P_IP {
        let a: [u8; 4] = read(ctx, ip + 12)?;
        Some(PeerKey::from_v4(a))
    } else if proto == ETH_P_IPV6 {
        let a: [u8; 16] = read(ctx, ip + 8)?;
        Some(PeerKey::from_v6(a))
    } else {
        None
    }
}
