//! Programs that do nothing, the floor the benchmark measures the others
//! against: `vxtrace_empty` at the TC hooks, `vxtrace_empty_drops` on the
//! drop tracepoint.

use aya_ebpf::{
    macros::{classifier, raw_tracepoint},
    programs::{RawTracePointContext, TcContext},
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
