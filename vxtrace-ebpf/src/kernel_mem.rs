//! Reading kernel memory outside the program's context (the dropped skb,
//! a socket, a TCP header) at offsets the loader resolved from the running
//! kernel's BTF, for the drop and PAWS probes.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use vxtrace_common::NO_FIELD;

/// Reads a `T` from kernel memory (None for a null address or a fault).
#[inline(always)]
pub fn kread<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies into a value it owns and checks
    // the source itself: an address that does not map returns an error
    // (None here) rather than faulting. Every caller reads integers or
    // arrays of integers, for which any bytes are a valid value.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// A struct field's offset from `KernelOffsets`, or None when the running
/// kernel lacks the field.
#[inline(always)]
pub fn field(off: u32) -> Option<u64> {
    if off == NO_FIELD {
        None
    } else {
        Some(off as u64)
    }
}
