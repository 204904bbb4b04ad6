//! vxtrace's kernel programs: TC classifiers on the underlay device and on
//! the VXLAN device. They only count, in per-CPU maps; nothing per packet
//! goes to userspace. Every program returns TC_ACT_UNSPEC ("next"), so it
//! never changes what happens to a packet.
#![no_std]
#![no_main]

mod drops;
mod maps;
mod packet;
mod paws;
mod underlay;
mod vxlan_dev;

use aya_ebpf::{
    macros::{classifier, kprobe, raw_tracepoint, tracepoint},
    programs::{ProbeContext, RawTracePointContext, TcContext, TracePointContext},
};
use vxtrace_common::{NO_FIELD, REASON_UNKNOWN};

/// TC_ACT_UNSPEC / TCX_NEXT: continue with the next program, then the stack.
const TC_NEXT: i32 = -1;

#[classifier]
pub fn vxtrace_nic_ingress(ctx: TcContext) -> i32 {
    underlay::handle(&ctx, underlay::Direction::Ingress);
    TC_NEXT
}

#[classifier]
pub fn vxtrace_nic_egress(ctx: TcContext) -> i32 {
    underlay::handle(&ctx, underlay::Direction::Egress);
    TC_NEXT
}

#[classifier]
pub fn vxtrace_vxlan_ingress(ctx: TcContext) -> i32 {
    vxlan_dev::handle(&ctx, vxlan_dev::Direction::Decap);
    TC_NEXT
}

#[classifier]
pub fn vxtrace_vxlan_egress(ctx: TcContext) -> i32 {
    vxlan_dev::handle(&ctx, vxlan_dev::Direction::Encap);
    TC_NEXT
}

/// `skb:kfree_skb` as a raw tracepoint: arguments (skb, location, reason).
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn vxtrace_kfree_skb_raw(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    let has_reason =
        unsafe { core::ptr::read_volatile(&raw const (*maps::config()).raw_tp_has_reason) };
    let reason = if has_reason != 0 {
        ctx.arg::<u64>(2) as u32
    } else {
        REASON_UNKNOWN
    };
    let has_rx_sk =
        unsafe { core::ptr::read_volatile(&raw const (*maps::config()).raw_tp_has_rx_sk) };
    let rx_sk: u64 = if has_rx_sk != 0 { ctx.arg(3) } else { 0 };
    drops::handle(skb, location, reason, rx_sk);
    0
}

/// `skb:kfree_skb` as a classic tracepoint, for kernels where the raw one
/// cannot attach; field offsets come from its tracefs format file.
#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn vxtrace_kfree_skb_tp(ctx: TracePointContext) -> u32 {
    let o = unsafe { core::ptr::read_volatile(&raw const (*maps::config()).offsets) };
    if o.tp_skbaddr == NO_FIELD {
        return 0;
    }
    let skb: u64 = unsafe { ctx.read_at(o.tp_skbaddr as usize) }.unwrap_or(0);
    let location: u64 = if o.tp_location == NO_FIELD {
        0
    } else {
        unsafe { ctx.read_at(o.tp_location as usize) }.unwrap_or(0)
    };
    let reason: u32 = if o.tp_reason == NO_FIELD {
        REASON_UNKNOWN
    } else {
        unsafe { ctx.read_at(o.tp_reason as usize) }.unwrap_or(REASON_UNKNOWN)
    };
    let rx_sk: u64 = if o.tp_rx_sk == NO_FIELD {
        0
    } else {
        unsafe { ctx.read_at(o.tp_rx_sk as usize) }.unwrap_or(0)
    };
    drops::handle(skb, location, reason, rx_sk);
    0
}

/// PAWS check of established connections, for kernels without the
/// RFC 7323 drop reasons.
#[kprobe]
pub fn vxtrace_paws_established(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(skb), Some(th)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    paws::established(sk, skb, th);
    0
}

/// PAWS check of TIME_WAIT sockets, same fallback.
#[kprobe]
pub fn vxtrace_paws_time_wait(ctx: ProbeContext) -> u32 {
    let (Some(tw), Some(skb), Some(th)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    paws::time_wait(tw, skb, th);
    0
}

/// Does nothing: the floor the benchmark measures the others against.
#[classifier]
pub fn vxtrace_empty(_ctx: TcContext) -> i32 {
    TC_NEXT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
