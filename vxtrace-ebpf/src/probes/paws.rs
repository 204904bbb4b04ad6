//! `vxtrace_paws_established` / `vxtrace_paws_time_wait`: PAWS rejects on
//! kernels whose drops carry no RFC 7323 reason. Kprobes at the two
//! timestamp checks redo the kernel's comparison with the socket's
//! `ts_recent` (offsets from BTF) and count a reject as a drop of the
//! segment's peer. Kernels with the drop reasons do not need these; the
//! loader attaches them only where kprobes exist and the reasons do not.

use aya_ebpf::{macros::kprobe, programs::ProbeContext};
use vxtrace_common::{NO_FIELD, REASON_KPROBE_PAWS, REASON_KPROBE_TW_PAWS};

use super::drops;
use crate::{
    config::config,
    kernel_mem::{kread, kread_into},
};

/// At `tcp_validate_incoming(sk, skb, th, syn_inerr)`: the PAWS check of
/// established connections. Name: `names::programs::PAWS_ESTABLISHED`.
#[kprobe]
pub fn vxtrace_paws_established(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(skb), Some(th)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    established(sk, skb, th);
    0
}

/// At `tcp_timewait_state_process(tw, skb, th, ...)`: the PAWS check of
/// TIME_WAIT sockets. Name: `names::programs::PAWS_TIME_WAIT`.
#[kprobe]
pub fn vxtrace_paws_time_wait(ctx: ProbeContext) -> u32 {
    let (Some(tw), Some(skb), Some(th)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u64>(2))
    else {
        return 0;
    };
    time_wait(tw, skb, th);
    0
}

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;

/// The TSval of a TCP header at `th` (kernel memory), and its flags.
#[inline(always)]
fn tsval(th: u64) -> Option<(u32, u8)> {
    // The fixed header as words: bytes 12 and 13 (data offset, flags)
    // are the low half of word 3 (the program runs little endian).
    let fixed: [u32; 5] = kread(th)?;
    let flags = (fixed[3] >> 8) as u8;
    let doff = (((fixed[3] as u8) >> 4) as usize) * 4;
    if doff <= 20 {
        return None;
    }
    // The options, read into words the program owns (zeroed first, so the
    // verifier sees every byte written, and aligned, as it wants stack
    // loads to be); byte k is taken out of its word by a shift.
    let mut opts = [0u64; 5];
    if !kread_into(&mut opts, th + 20) {
        return None;
    }
    let at = |k: usize| (opts[k / 8] >> (8 * (k % 8))) as u8;
    let len = doff - 20;
    let mut i = 0usize;
    // At most 40 option bytes; every step advances at least one byte.
    for _ in 0..40 {
        if i >= len || i >= 40 {
            return None;
        }
        let kind = at(i);
        if kind == TCPOPT_EOL {
            return None;
        }
        if kind == TCPOPT_NOP {
            i += 1;
            continue;
        }
        if i + 1 >= 40 {
            return None;
        }
        let olen = at(i + 1) as usize;
        if kind == TCPOPT_TIMESTAMP && olen == 10 && i + 6 <= 40 {
            let v = u32::from_be_bytes([at(i + 2), at(i + 3), at(i + 4), at(i + 5)]);
            return Some((v, flags));
        }
        if olen < 2 {
            return None;
        }
        i += olen;
    }
    None
}

/// The established check, with the kernel's window of 1
/// (TCP_PAWS_WINDOW). Pure ACKs are left out (the kernel lets reordered
/// ones through).
#[inline(always)]
fn established(sk: u64, skb: u64, th: u64) {
    let o = config!(offsets);
    if o.tcp_ts_recent == NO_FIELD || o.tcp_ts_recent_stamp == NO_FIELD {
        return;
    }
    let Some((val, flags)) = tsval(th) else {
        return;
    };
    if flags & 0x04 != 0 || flags & 0x18 == 0x10 {
        return; // RST, or a pure ACK
    }
    let stamp = sk + o.tcp_ts_recent_stamp as u64;
    if older_than_recent(stamp, sk + o.tcp_ts_recent as u64, val, 1) {
        drops::count::<drops::ProbeRead>(skb, 0, REASON_KPROBE_PAWS, sk);
    }
}

/// The kernel's PAWS comparison: a timestamp was recorded (`stamp`, an
/// i32 in kernel memory, is set) and `val` lies more than `window` behind
/// the `recent` one (a u32 in kernel memory).
#[inline(always)]
fn older_than_recent(stamp: u64, recent: u64, val: u32, window: i32) -> bool {
    let (Some(stamp), Some(recent)) = (kread::<i32>(stamp), kread::<u32>(recent)) else {
        return false;
    };
    stamp != 0 && (recent.wrapping_sub(val) as i32) > window
}

/// The TIME_WAIT check, with the kernel's window of 0.
#[inline(always)]
fn time_wait(tw: u64, skb: u64, th: u64) {
    let o = config!(offsets);
    if o.tw_ts_recent == NO_FIELD || o.tw_ts_recent_stamp == NO_FIELD {
        return;
    }
    let Some((val, flags)) = tsval(th) else {
        return;
    };
    if flags & 0x04 != 0 {
        return;
    }
    let stamp = tw + o.tw_ts_recent_stamp as u64;
    if older_than_recent(stamp, tw + o.tw_ts_recent as u64, val, 0) {
        drops::count::<drops::ProbeRead>(skb, 0, REASON_KPROBE_TW_PAWS, tw);
    }
}
