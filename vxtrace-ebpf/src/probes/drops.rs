//! `vxtrace_kfree_skb_btf` / `vxtrace_kfree_skb_raw` /
//! `vxtrace_kfree_skb_tp`: kernel drops (`skb:kfree_skb`) by reason,
//! location and underlay peer. The BTF-typed tracepoint is the one normally
//! attached; the raw one is for kernels without BTF, the classic one for
//! kernels where neither attaches. The PAWS kprobes count through
//! [`count`] too.
//!
//! The dropped skb and the structs it points to are read at offsets the
//! loader resolved from the running kernel's BTF (no struct layout is
//! compiled in): on the BTF-typed tracepoint with plain loads, which the
//! verifier checks against the kernel's types (the offsets are constants
//! of the read-only configuration, so it knows them); elsewhere with
//! bpf_probe_read_kernel ([`KernelStructs`]).
//! Its network header decides the peer: an outer VXLAN packet belongs to the
//! outer address that is not ours; an inner packet to the peer that owns its
//! source (or else destination) address, from the inner-address map and the
//! pod-subnet trie. Anything else is "other" (the zero peer), by reason.

use core::mem::MaybeUninit;

use aya_ebpf::{
    macros::{btf_tracepoint, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruPerCpuHashMap, lpm_trie::Key},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use vxtrace_common::{
    DROP_KIND_GROUP, DROP_KIND_OUTER, DROP_KIND_PACKET, DROP_KIND_SYNACK, DROP_MEMO_EMPTY,
    DROP_MEMO_NO_PEER, DROP_MEMO_PEER, DROP_SLOT_BITS, DROP_SLOTS as DROP_SLOTS_PER_CPU, DropKey,
    DropMemo, DropSlot, MEMO_RECHECK, NO_FIELD, PeerCpuKey, PeerKey, REASON_UNKNOWN, TooBig,
    slot_index,
};

use crate::{
    config::config,
    kernel_mem::{kread, kread_into},
    maps::{GLOBAL, INNER_ADDRS, PEERS, POD_SUBNETS, this_cpu},
    packet::{
        ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, is_local_vtep, is_vxlan_port, same_addr,
    },
};

/// Drops by (peer, reason, location). Name: `names::maps::DROPS`.
#[map]
pub static DROPS: LruPerCpuHashMap<DropKey, u64> = LruPerCpuHashMap::with_max_entries(16_384, 0);

/// The drops of the first keys to reach each slot, a row of slots per CPU
/// (see [`DropSlot`] and [`slot_index`]; memory-mappable for the same
/// reason as `PEER_SLOTS`); the rest go to `DROPS`.
/// Name: `names::maps::DROP_SLOTS`.
#[map]
pub static DROP_SLOTS: Array<DropSlot> =
    Array::with_max_entries(DROP_SLOTS_PER_CPU, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Drops of packets too big for their path (PKT_TOO_BIG), per peer, with
/// the largest size. Name: `names::maps::TOO_BIG`.
#[map]
pub static TOO_BIG: LruPerCpuHashMap<PeerKey, TooBig> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// Network namespaces (inode numbers) whose drops count, unless
/// `Config::netns_scope_all` is set. Name: `names::maps::NETNS_SCOPE`.
#[map]
pub static NETNS_SCOPE: HashMap<u32, u32> = HashMap::with_max_entries(256, 0);

/// How the drop program reads the dropped skb and the kernel structs it
/// points to.
pub trait KernelStructs {
    /// The `T` at `off` bytes into the kernel struct at `base`; None for a
    /// null `base`, a field the running kernel lacks (`NO_FIELD`), or a
    /// failed read.
    fn load<T: Copy>(base: u64, off: u32) -> Option<T>;
}

/// `bpf_probe_read_kernel`: any address, one helper call per read (raw and
/// classic tracepoints, kprobes).
pub struct ProbeRead;

impl KernelStructs for ProbeRead {
    #[inline(always)]
    fn load<T: Copy>(base: u64, off: u32) -> Option<T> {
        if off == NO_FIELD {
            return None;
        }
        kread(base + off as u64)
    }
}

/// Plain loads from pointers the verifier knows the type of (the BTF-typed
/// tracepoint's skb, and the pointers read from it). `off` must come
/// straight from the configuration ([`config!`]), so that the verifier
/// knows its value and can check the load against the kernel's BTF; it
/// turns each load into one that returns zero rather than fault.
struct Typed;

impl KernelStructs for Typed {
    #[inline(always)]
    fn load<T: Copy>(base: u64, off: u32) -> Option<T> {
        if base == 0 || off == NO_FIELD {
            return None;
        }
        // SAFETY: the verifier accepts this load only at a field of the
        // struct `base` points to (per the kernel's BTF) of T's size, and
        // makes it return zero if the memory is gone; T is an integer.
        Some(unsafe { core::ptr::read_volatile((base + off as u64) as *const T) })
    }
}

/// `skb:kfree_skb` as a BTF-typed tracepoint (`tp_btf`): arguments as
/// for the raw one, with their kernel types. Name:
/// `names::programs::DROPS_BTF`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn vxtrace_kfree_skb_btf(ctx: BtfTracePointContext) -> i32 {
    let (skb, location, reason, rx_sk) = kfree_skb_args(|n| ctx.arg(n));
    count::<Typed>(skb, location, reason, rx_sk);
    0
}

/// The arguments of `kfree_skb` (the raw and the BTF-typed tracepoints
/// pass the same ones, `arg(n)` being the n-th): the skb, the location,
/// the reason (kernels >= 5.17) and the receiving socket (>= 6.10).
#[inline(always)]
fn kfree_skb_args(arg: impl Fn(usize) -> u64) -> (u64, u64, u32, u64) {
    // The configuration is read-only, so the verifier knows these flags
    // and never looks at an argument the kernel's tracepoint lacks.
    let reason = if config!(raw_tp_has_reason) != 0 {
        arg(2) as u32
    } else {
        REASON_UNKNOWN
    };
    let rx_sk = if config!(raw_tp_has_rx_sk) != 0 {
        arg(3)
    } else {
        0
    };
    (arg(0), arg(1), reason, rx_sk)
}

/// `skb:kfree_skb` as a raw tracepoint: arguments (skb, location, reason,
/// and on kernels >= 6.10 rx_sk). Name: `names::programs::DROPS_RAW`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn vxtrace_kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    let (skb, location, reason, rx_sk) = kfree_skb_args(|n| ctx.arg(n));
    count::<ProbeRead>(skb, location, reason, rx_sk);
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
    count::<ProbeRead>(skb, location, reason, rx_sk);
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

/// Whether a drop of the skb counts: its device's namespace (else its
/// socket's) is in scope. A device's answer is memoized: drops come in
/// runs through one device.
#[inline(always)]
fn in_scope<R: KernelStructs>(skb: u64, rx_sk: u64, memo: &mut DropMemo) -> bool {
    let dev: u64 = R::load(skb, config!(offsets.skb_dev)).unwrap_or(0);
    if dev != 0 {
        memo.dev_uses = memo.dev_uses.wrapping_add(1);
        if memo.dev == dev && memo.dev_uses & (MEMO_RECHECK - 1) != 0 {
            return memo.dev_in_scope != 0;
        }
        let net: u64 = R::load(dev, config!(offsets.dev_nd_net)).unwrap_or(0);
        let scope = scope_has::<R>(net);
        memo.dev = dev;
        memo.dev_in_scope = scope as u32;
        return scope;
    }
    // TCP clears skb->dev on receive; the socket tells the namespace.
    let mut sk: u64 = R::load(skb, config!(offsets.skb_sk)).unwrap_or(0);
    if sk == 0 {
        sk = rx_sk;
    }
    let net: u64 = R::load(sk, config!(offsets.sk_net)).unwrap_or(0);
    scope_has::<R>(net)
}

/// Whether the namespace at `net` (a `struct net`) is one whose drops count.
#[inline(always)]
fn scope_has<R: KernelStructs>(net: u64) -> bool {
    let inum: u32 = R::load(net, config!(offsets.net_ns_inum)).unwrap_or(0);
    NETNS_SCOPE.get_ptr(inum).is_some()
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

/// The peer behind an inner packet's source (else destination), through
/// the memo when the addresses repeat.
#[inline(always)]
fn owner_of_packet(src: &PeerKey, dst: &PeerKey, memo: &mut DropMemo) -> Option<PeerKey> {
    memo.attr_uses = memo.attr_uses.wrapping_add(1);
    if memo.attr_state != DROP_MEMO_EMPTY
        && memo.attr_uses & (MEMO_RECHECK - 1) != 0
        && same_addr(&memo.src, src)
        && same_addr(&memo.dst, dst)
    {
        return (memo.attr_state == DROP_MEMO_PEER).then_some(memo.peer);
    }
    let owner = owner_of_inner(src).or_else(|| owner_of_inner(dst));
    memo.src = *src;
    memo.dst = *dst;
    match owner {
        Some(p) => {
            memo.peer = p;
            memo.attr_state = DROP_MEMO_PEER;
        }
        None => memo.attr_state = DROP_MEMO_NO_PEER,
    }
    owner
}

/// The skb's protocol, network header and MAC header offsets (0xffff:
/// unset or unknown), each read on its own.
#[inline(always)]
fn header_offsets<R: KernelStructs>(skb: u64) -> Option<(u16, u16, u16)> {
    let proto: u16 = R::load(skb, config!(offsets.skb_protocol))?;
    let network: u16 = R::load(skb, config!(offsets.skb_network_header))?;
    let mac: u16 = R::load(skb, config!(offsets.skb_mac_header)).unwrap_or(NO_HEADER);
    Some((u16::from_be(proto), network, mac))
}

/// An unset header offset in an skb.
const NO_HEADER: u16 = 0xffff;

/// Whether an inner packet went to a group: a broadcast or multicast IP
/// destination, or (a subnet broadcast) a group Ethernet destination.
/// `mac_first` is the destination MAC's first byte when the header read
/// brought it along; else it is read from the MAC header, if there is one.
#[inline(always)]
fn sent_to_a_group(dst: &PeerKey, v4: bool, mac_first: Option<u8>, head: u64, mh: u16) -> bool {
    let a = &dst.addr;
    let ip_group = if v4 {
        a[12] >= 224 // multicast, and 255.255.255.255
    } else {
        a[0] == 0xff
    };
    if ip_group {
        return true;
    }
    let mac_first = match mac_first {
        Some(b) => Some(b),
        None if mh != NO_HEADER => kread::<u8>(head + mh as u64),
        None => None,
    };
    mac_first.is_some_and(|b| b & 1 != 0)
}

/// Bytes read in front of the network header: the Ethernet header (14)
/// and two more, so the IP header's words stay 4-byte aligned in the buffer.
const BEFORE_IP: u16 = 16;

/// A dropped packet's first bytes, as words (the program runs little
/// endian: byte i of a word is bits 8i..8i+8).
#[repr(C, align(8))]
struct PacketStart {
    /// The [`BEFORE_IP`] bytes in front of the network header.
    before_ip: [u32; 4],
    /// The IP header and the 20 bytes after an IPv4 one (the ports and
    /// TCP flags), or the IPv6 header and the 16 after it.
    ip: [u32; 14],
}

/// The packet's first bytes in one probe read into `buf` (the packet's
/// bytes are memory the verifier knows no type for, whatever the program),
/// and whether the Ethernet header in front came with them.
#[inline(always)]
fn read_packet_start(
    buf: &mut MaybeUninit<PacketStart>,
    head: u64,
    nh: u16,
    mh: u16,
) -> Option<(&PacketStart, bool)> {
    let ip = head + nh as u64;
    if nh < BEFORE_IP {
        // No room in front (rare): the IP header alone.
        let start = buf.write(PacketStart {
            before_ip: [0; 4],
            ip: [0; 14],
        });
        return kread_into(&mut start.ip, ip).then_some((&*start, false));
    }
    if !kread_into(buf, ip - BEFORE_IP as u64) {
        return None;
    }
    // SAFETY: the helper filled all of it, and any bytes are valid words.
    let start = unsafe { buf.assume_init_ref() };
    Some((start, mh != NO_HEADER && mh + 14 == nh))
}

/// The peer a dropped packet belongs to, if any, and what kind of packet
/// it was.
#[inline(always)]
fn attribute<R: KernelStructs>(skb: u64, memo: &mut DropMemo) -> Option<(PeerKey, u32)> {
    if config!(offsets.valid) == 0 {
        return None;
    }
    let (proto, nh, mh) = header_offsets::<R>(skb)?;
    if nh == NO_HEADER || (proto != ETH_P_IP && proto != ETH_P_IPV6) {
        return None;
    }
    let head: u64 = R::load(skb, config!(offsets.skb_head))?;
    let ip = head + nh as u64;
    let mut buf = MaybeUninit::uninit();
    let (start, with_ethernet) = read_packet_start(&mut buf, head, nh, mh)?;
    // Ports and TCP flags are read from fixed places (for IPv4, when the
    // header has no options).
    let byte = |w: u32, i: u32| (w >> (8 * i)) as u8;
    // The destination MAC's first byte is byte 2 of the buffer.
    let mac_first = with_ethernet.then(|| byte(start.before_ip[0], 2));
    let w = &start.ip;
    let (src, dst, l4_proto, dport, tcp_flags) = if proto == ETH_P_IP {
        let ver_ihl = byte(w[0], 0);
        if ver_ihl >> 4 != 4 {
            return None;
        }
        // Fragment offset (bytes 6-7, network order, 13 bits).
        let frag = u16::from_be((w[1] >> 16) as u16);
        let l4_proto = if frag & 0x1fff == 0 { byte(w[2], 1) } else { 0 };
        let ihl = ((ver_ihl & 0x0f) as u64) * 4;
        let (dport, flags) = if ihl == 20 {
            (u16::from_be((w[5] >> 16) as u16), byte(w[8], 1))
        } else if l4_proto == IPPROTO_UDP || l4_proto == IPPROTO_TCP {
            let l4: [u32; 4] = kread(ip + ihl)?;
            (u16::from_be((l4[0] >> 16) as u16), byte(l4[3], 1))
        } else {
            (0, 0)
        };
        (
            PeerKey::from_v4_word(w[3]),
            PeerKey::from_v4_word(w[4]),
            l4_proto,
            dport,
            flags,
        )
    } else {
        (
            PeerKey::from_v6_words([w[2], w[3], w[4], w[5]]),
            PeerKey::from_v6_words([w[6], w[7], w[8], w[9]]),
            byte(w[1], 2),
            u16::from_be((w[10] >> 16) as u16),
            byte(w[13], 1),
        )
    };
    if l4_proto == IPPROTO_UDP && is_vxlan_port(dport) {
        // Outer VXLAN: the peer is the address that is not ours.
        let outer = if config!(local_addr_count) > 0 {
            if is_local_vtep(&src) {
                Some(dst)
            } else if is_local_vtep(&dst) {
                Some(src)
            } else {
                None
            }
        } else if PEERS.get_ptr(&PeerCpuKey::new(src, this_cpu())).is_some() {
            // A peer this CPU has counted: a packet is dropped on the CPU
            // that handled it, which is the one its programs counted on.
            Some(src)
        } else if PEERS.get_ptr(&PeerCpuKey::new(dst, this_cpu())).is_some() {
            Some(dst)
        } else {
            None
        };
        return outer.map(|p| (p, DROP_KIND_OUTER));
    }
    let owner = owner_of_packet(&src, &dst, memo)?;
    let kind = if l4_proto == IPPROTO_TCP && tcp_flags & 0x16 == 0x12 {
        DROP_KIND_SYNACK
    } else if sent_to_a_group(&dst, proto == ETH_P_IP, mac_first, head, mh) {
        DROP_KIND_GROUP
    } else {
        DROP_KIND_PACKET
    };
    Some((owner, kind))
}

/// Records the size of a packet dropped as too big (rare: only these drops
/// pay for the read).
#[inline(always)]
fn count_too_big<R: KernelStructs>(skb: u64, peer: &PeerKey) {
    let len: u64 = R::load::<u32>(skb, config!(offsets.skb_len))
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
pub fn count<R: KernelStructs>(skb: u64, location: u64, reason: u32, rx_sk: u64) {
    let Some(global) = GLOBAL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's element of a per-CPU array: aligned and never
    // freed, plain integers; the references below end before this program
    // does. A drop traced while this run is interrupted (the kernel skips
    // nested runs of a program on most kernels) could leave a memo mixing
    // two runs' answers: at worst the next drops of those addresses go to
    // the wrong peer until the memo's recheck, at most MEMO_RECHECK - 1 of
    // them; a counter added to by both could lose a count.
    let global = unsafe { &mut *global };
    if config!(netns_scope_all) == 0 && !in_scope::<R>(skb, rx_sk, &mut global.drop_memo) {
        global.drops_out_of_scope += 1;
        return;
    }
    let (peer, kind) = attribute::<R>(skb, &mut global.drop_memo).unwrap_or_default();
    if reason == config!(reason_too_big) {
        count_too_big::<R>(skb, &peer);
    }
    let key = DropKey {
        peer,
        reason,
        kind,
        location,
    };
    global.drops_seen += 1;
    if count_in_slot(&key) {
        return;
    }
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
        global.drop_keys_inserted += 1;
    } else if let Some(n) = DROPS.get_ptr_mut(&key) {
        // Another CPU created it first.
        // SAFETY: as for the lookup above.
        unsafe { *n += 1 };
    }
}

/// Counts a drop in this CPU's slot for its key when the slot is the key's
/// or free (then the key takes it); false when another key holds it. An
/// array slot found by an inlined hash costs far less than the drop map's
/// lookup, which hashes the 32-byte key and walks a bucket.
#[inline(always)]
fn count_in_slot(key: &DropKey) -> bool {
    let index = slot_index(this_cpu(), key.slot(), DROP_SLOT_BITS);
    let Some(slot) = DROP_SLOTS.get_ptr_mut(index) else {
        return false;
    };
    // SAFETY: a DROP_SLOTS element in this CPU's row: aligned, never
    // freed, plain integers. The drop program does not run nested on a
    // CPU; a PAWS kprobe interrupting it to claim the same free slot could
    // at worst leave one mixed key.
    let slot = unsafe { &mut *slot };
    if slot.count == 0 {
        // The key before the count, as volatile stores the compiler keeps
        // in order (the JIT and x86 keep stores in order too): userspace
        // reads the count first, so a count it sees comes with its key.
        // SAFETY: plain stores to the slot above.
        unsafe {
            core::ptr::write_volatile(&mut slot.key, *key);
            core::ptr::write_volatile(&mut slot.count, 1);
        }
        return true;
    }
    if slot.key != *key {
        return false;
    }
    slot.count += 1;
    true
}
