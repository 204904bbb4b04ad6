//! `vxtrace_empty`: a classifier that does nothing, the floor the
//! benchmark measures the other programs against.

use aya_ebpf::{macros::classifier, programs::TcContext};

use super::TC_NEXT;

/// Does nothing. Name: `names::programs::EMPTY`.
#[classifier]
pub fn vxtrace_empty(_ctx: TcContext) -> i32 {
    TC_NEXT
}
