//! One module per probe: each holds its entry points (the `#[classifier]`,
//! `#[raw_tracepoint]`, `#[tracepoint]` or `#[kprobe]` functions), its logic
//! and the maps only it uses.
//!
//! The entry points' function names are the program names the loader looks
//! up; each must equal its constant in `vxtrace_common::names::programs`.
//! The attribute macros make them `#[no_mangle]`, so they are exported from
//! a submodule as from the crate root.

pub mod drops;
pub mod empty;
pub mod nic;
pub mod paws;
pub mod vxlan_dev;

/// TC_ACT_UNSPEC / TCX_NEXT: continue with the next program, then the
/// stack. Every TC program returns it, so none changes a packet's fate.
const TC_NEXT: i32 = -1;
