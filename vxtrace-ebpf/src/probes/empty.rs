//! Programs that do nothing, the floor the benchmark measures the others
//! against: `vxtrace_empty` at the TC hooks, `vxtrace_empty_drops` and
//! `vxtrace_empty_drops_btf` on the drop tracepoint (raw and BTF-typed).

use aya_ebpf::{
    macros::{btf_tracepoint, classifier, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TcContext},
};

use super::TC_NEXT;

/// Does nothing. Name: `names::programs::EMPTY`.
#[classifier]
pub fn vxtrace_empty(_ctx: TcContext) -> i32 {
    TC_NEXT
}

/// Does nothing for each drop. Name: `names::programs::EMPTY_DROPS`.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn vxtrace_empty_drops(_ctx: RawTracePointContext) -> i32 {
    0
}

/// Does nothing for each drop, on the BTF-typed tracepoint. Name:
/// `names::programs::EMPTY_DROPS_BTF`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn vxtrace_empty_drops_btf(_ctx: BtfTracePointContext) -> i32 {
    0
}
