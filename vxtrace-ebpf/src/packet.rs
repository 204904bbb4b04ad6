//! Header parsing, done once per packet: on the underlay device, Ethernet
//! (with up to two VLAN tags), IPv4 / IPv6, UDP, the VXLAN header and the
//! inner Ethernet header; on the VXLAN device, the inner IP and TCP headers.
//! Also the configured-port and local-VTEP checks, and the comparisons that
//! keep a byte-array `==` from becoming a memcmp call.
//!
//! Reads use direct packet access when the bytes are in the linear part of
//! the skb (the common case, and the cheap one) and fall back to
//! `bpf_skb_load_bytes` when they are not.

use core::mem::size_of;

use aya_ebpf::programs::TcContext;
use vxtrace_common::{MAX_LOCAL_ADDRS, MAX_PORTS, PeerKey, VXLAN_FLAG_I};

use crate::{
    config::{config, local_addr_words},
    kernel_mem::Aligned,
};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
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
        // SAFETY: the bytes lie between data and data_end (checked just
        // above), the packet's linear part, readable for the whole run;
        // read_unaligned needs no alignment, and callers read integers or
        // arrays of integers, which any bytes make a valid value.
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        load_bytes(ctx, off)
    }
}

/// Copies a `T` out of the packet at `off` with `bpf_skb_load_bytes`, for
/// bytes that are not in the linear part of the skb.
#[inline(always)]
fn load_bytes<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let mut buf = core::mem::MaybeUninit::<Aligned<T>>::uninit();
    // SAFETY: the context pointer of this run, and a buffer of at least
    // size_of::<T>() bytes that the helper fills (or fails, then unused).
    let rc = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            buf.as_mut_ptr().cast(),
            size_of::<T>() as u32,
        )
    };
    // SAFETY: the helper filled the `T` (rc 0); callers read integers or
    // arrays of integers, which any bytes make a valid value.
    (rc == 0).then(|| unsafe { buf.assume_init().0 })
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
    /// The UDP destination port is a well-known VXLAN port no watched
    /// device uses (a port mismatch when the packet is VXLAN), not one of
    /// the watched ones.
    pub foreign: bool,
    /// The UDP destination port.
    pub port: u16,
}

/// Byte `i` of a block of words read from the packet: the programs run
/// little endian, so byte i is bits 8·(i mod 4) up of word i / 4.
#[inline(always)]
fn byte<const N: usize>(w: &[u32; N], i: usize) -> u8 {
    (w[i / 4] >> (8 * (i % 4))) as u8
}

/// The big-endian 16-bit field at byte `i` (even) of a block of words.
#[inline(always)]
fn be16<const N: usize>(w: &[u32; N], i: usize) -> u16 {
    u16::from_be((w[i / 4] >> (8 * (i % 4))) as u16)
}

/// An Ethernet type as it sits in the packet (network order), so the
/// header's field is compared without a byte swap.
const fn wire(ethertype: u16) -> u16 {
    ethertype.to_be()
}

/// Parses Ethernet / IP / UDP to a VXLAN port. `None` for anything else,
/// and for non-first fragments, which carry no UDP header.
///
/// The IP and UDP headers come in one read of whole words (one bounds
/// check, or one copy when they are not in the skb's linear part), and the
/// cheapest rejection comes first: the IP protocol byte, then the UDP
/// port, and only then the rest.
#[inline(always)]
pub fn parse_outer(ctx: &TcContext) -> Option<Outer> {
    let mut off = ETH_HLEN;
    let mut proto = read::<u16>(ctx, 12)?;
    // Up to two VLAN tags (802.1Q, QinQ) on the underlay.
    if proto == wire(ETH_P_8021Q) || proto == wire(ETH_P_8021AD) {
        proto = read::<u16>(ctx, off + 2)?;
        off += 4;
        if proto == wire(ETH_P_8021Q) || proto == wire(ETH_P_8021AD) {
            proto = read::<u16>(ctx, off + 2)?;
            off += 4;
        }
    }
    if proto == wire(ETH_P_IP) {
        // The IPv4 header without options and a UDP header after it. A
        // packet too short for both is no UDP packet.
        let h: [u32; 7] = read(ctx, off)?;
        if byte(&h, 9) != IPPROTO_UDP {
            return None;
        }
        let ver_ihl = byte(&h, 0);
        let ihl = ((ver_ihl & 0x0f) as usize) * 4;
        if ver_ihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        let dst_port = if ihl == 20 {
            be16(&h, 22)
        } else {
            u16::from_be(read::<u16>(ctx, off + ihl + 2)?)
        };
        let foreign = vxlan_port_slot(dst_port)?;
        let frag = be16(&h, 6);
        // Fragment offset non-zero: no UDP header in this one (what was
        // read as a port is payload).
        if frag & 0x1fff != 0 {
            return None;
        }
        Some(Outer {
            src: PeerKey::from_v4_word(h[3]),
            dst: PeerKey::from_v4_word(h[4]),
            ip_len: be16(&h, 2) as u32,
            payload_off: off + ihl + UDP_HLEN,
            first_fragment: frag & 0x2000 != 0,
            foreign,
            port: dst_port,
        })
    } else if proto == wire(ETH_P_IPV6) {
        // The IPv6 header and the UDP header. VXLAN over IPv6 carries no
        // extension headers in practice; a packet that has them is not
        // counted rather than mis-parsed.
        let h: [u32; 12] = read(ctx, off)?;
        if byte(&h, 6) != IPPROTO_UDP || byte(&h, 0) >> 4 != 6 {
            return None;
        }
        let dst_port = be16(&h, 42);
        let foreign = vxlan_port_slot(dst_port)?;
        Some(Outer {
            src: PeerKey::from_v6_words([h[2], h[3], h[4], h[5]]),
            dst: PeerKey::from_v6_words([h[6], h[7], h[8], h[9]]),
            ip_len: be16(&h, 4) as u32 + 40,
            payload_off: off + 40 + UDP_HLEN,
            first_fragment: false,
            foreign,
            port: dst_port,
        })
    } else {
        None
    }
}

/// Is `port` one of the configured VXLAN ports (watched or foreign)?
#[inline(always)]
pub fn is_vxlan_port(port: u16) -> bool {
    vxlan_port_slot(port).is_some()
}

/// Whether `port` is a configured VXLAN port: `Some(false)` for a watched
/// one, `Some(true)` for a foreign one (a well-known VXLAN port no watched
/// device uses), `None` for any other port. One pass over the port table,
/// as cheap as the watched-only check it replaces.
#[inline(always)]
pub fn vxlan_port_slot(port: u16) -> Option<bool> {
    let foreign = config!(foreign_ports);
    for i in 0..MAX_PORTS {
        let p = config!(ports[i]);
        if p == 0 {
            return None;
        }
        if p == port {
            return Some(foreign & (1 << i) != 0);
        }
    }
    None
}

/// Are two addresses equal?
#[inline(always)]
pub fn same_addr(a: &PeerKey, b: &PeerKey) -> bool {
    // Two u64 compares: a byte-array `==` could become a memcmp call.
    let (a, b) = (addr_words(a), addr_words(b));
    a[0] == b[0] && a[1] == b[1]
}

/// An address's 16 bytes as two words (native order).
#[inline(always)]
fn addr_words(key: &PeerKey) -> [u64; 2] {
    // SAFETY: [u8; 16] and [u64; 2] have the same size and any bytes are a
    // valid [u64; 2]; the array is moved by value, so alignment is moot.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(key.addr) }
}

/// Are two MAC addresses equal?
#[inline(always)]
pub fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    // As a u32 and a u16: a byte-array `==` could become a memcmp call.
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) == u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
        && u16::from_ne_bytes([a[4], a[5]]) == u16::from_ne_bytes([b[4], b[5]])
}

/// Is `addr` a local VTEP address (or are no local addresses configured)?
#[inline(always)]
pub fn is_local_vtep(addr: &PeerKey) -> bool {
    let count = config!(local_addr_count) as usize;
    if count == 0 {
        return true;
    }
    for i in 0..MAX_LOCAL_ADDRS {
        if i >= count {
            break;
        }
        let local = local_addr_words(i);
        let addr = addr_words(addr);
        if local[0] == addr[0] && local[1] == addr[1] {
            return true;
        }
    }
    false
}

/// The VXLAN header and what follows it.
pub enum Vxlan {
    Valid {
        vni: u32,
        /// The inner Ethernet destination and source MACs.
        inner_dst: [u8; 6],
        inner_src: [u8; 6],
    },
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
    // The VXLAN header and the inner MAC addresses in one read.
    let Some(h) = read::<[u32; 5]>(ctx, off) else {
        return Vxlan::Malformed;
    };
    let flags = u32::from_be(h[0]);
    let vni_word = u32::from_be(h[1]);
    let allowed = config!(allowed_flags);
    if flags & VXLAN_FLAG_I == 0 || flags & !allowed != 0 || vni_word & 0xff != 0 {
        return Vxlan::Malformed;
    }
    let (d, m, s) = (h[2].to_le_bytes(), h[3].to_le_bytes(), h[4].to_le_bytes());
    Vxlan::Valid {
        vni: vni_word >> 8,
        inner_dst: [d[0], d[1], d[2], d[3], m[0], m[1]],
        inner_src: [m[2], m[3], s[0], s[1], s[2], s[3]],
    }
}

/// Number of wire packets this skb stands for (GSO/GRO aggregates count as
/// their segments).
#[inline(always)]
pub fn segments(ctx: &TcContext) -> u32 {
    // SAFETY: `skb` is the context pointer the kernel passed to this run,
    // valid until the program returns; the verifier checks the field access.
    let segs = unsafe { (*ctx.skb.skb).gso_segs };
    if segs > 1 { segs } else { 1 }
}

/// The inner IPv4/IPv6 source address of a decapsulated frame, and the
/// TTL / hop limit it arrived with.
pub struct InnerSource {
    pub addr: PeerKey,
    pub ttl: u8,
}

impl InnerSource {
    /// Whether the sender's own stack sent the packet: its TTL is one a
    /// host starts with (64 on Linux, 128, 255). A pod's packet is routed
    /// by its node before it is encapsulated, which takes one off.
    #[inline(always)]
    pub fn sent_by_the_host_itself(&self) -> bool {
        matches!(self.ttl, 64 | 128 | 255)
    }
}

/// The inner source of a frame; `type_off` is the offset of the inner
/// Ethernet type field.
#[inline(always)]
pub fn inner_source(ctx: &TcContext, type_off: usize) -> Option<InnerSource> {
    let proto = read::<u16>(ctx, type_off)?;
    let ip = type_off + 2;
    if proto == wire(ETH_P_IP) {
        // TTL, protocol, checksum, source address: one read.
        let h: [u32; 2] = read(ctx, ip + 8)?;
        Some(InnerSource {
            addr: PeerKey::from_v4_word(h[1]),
            ttl: byte(&h, 0),
        })
    } else if proto == wire(ETH_P_IPV6) {
        // Hop limit (byte 7) and source address (8..24): one read.
        let h: [u32; 6] = read(ctx, ip)?;
        Some(InnerSource {
            addr: PeerKey::from_v6_words([h[2], h[3], h[4], h[5]]),
            ttl: byte(&h, 7),
        })
    } else {
        None
    }
}

/// Inner TCP: addresses, ports and flags of a decapsulated / about to be
/// encapsulated frame.
pub struct InnerTcp {
    pub src: PeerKey,
    pub dst: PeerKey,
    pub sport: u16,
    pub dport: u16,
    /// The flags byte (CWR ... FIN).
    pub flags: u8,
}

/// Parses the inner TCP header of a frame on a VXLAN device (the frame
/// starts at its Ethernet header). `None` for anything but TCP, and for
/// non-first IPv4 fragments.
#[inline(always)]
pub fn parse_inner_tcp(ctx: &TcContext) -> Option<InnerTcp> {
    let proto = read::<u16>(ctx, 12)?;
    let (src, dst, l4) = if proto == wire(ETH_P_IP) {
        let h: [u32; 5] = read(ctx, ETH_HLEN)?;
        if byte(&h, 9) != IPPROTO_TCP || be16(&h, 6) & 0x1fff != 0 {
            return None;
        }
        (
            PeerKey::from_v4_word(h[3]),
            PeerKey::from_v4_word(h[4]),
            ETH_HLEN + ((byte(&h, 0) & 0x0f) as usize) * 4,
        )
    } else if proto == wire(ETH_P_IPV6) {
        let h: [u32; 10] = read(ctx, ETH_HLEN)?;
        if byte(&h, 6) != IPPROTO_TCP {
            return None;
        }
        (
            PeerKey::from_v6_words([h[2], h[3], h[4], h[5]]),
            PeerKey::from_v6_words([h[6], h[7], h[8], h[9]]),
            ETH_HLEN + 40,
        )
    } else {
        return None;
    };
    // Ports to flags (bytes 0..14 of the TCP header) in one read.
    let h: [u32; 4] = read(ctx, l4)?;
    Some(InnerTcp {
        src,
        dst,
        sport: be16(&h, 0),
        dport: be16(&h, 2),
        flags: byte(&h, 13),
    })
}
