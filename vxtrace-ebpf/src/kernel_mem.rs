//! Reading kernel memory outside the program's context (the dropped skb,
//! a socket, a TCP header) at offsets the loader resolved from the running
//! kernel's BTF, for the drop and PAWS probes; and [`Aligned`], the stack
//! buffer every helper copy (of kernel memory or packet bytes) goes into.

use aya_ebpf::helpers::generated::bpf_probe_read_kernel;

/// A stack buffer on an 8-byte boundary: the programs are built to load
/// words from unaligned addresses (see the crate's build script), which
/// the verifier accepts from packets, map values and kernel memory but not
/// from the stack, so what a helper copies there must start aligned.
#[repr(C, align(8))]
pub struct Aligned<T>(pub T);

/// Reads a `T` from kernel memory (None for a null address or a fault).
#[inline(always)]
pub fn kread<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    let mut buf = core::mem::MaybeUninit::<Aligned<T>>::uninit();
    // SAFETY: bpf_probe_read_kernel writes size_of::<T>() bytes into the
    // buffer and checks the source itself: an address that does not map
    // returns an error (None here) rather than faulting.
    let rc = unsafe {
        bpf_probe_read_kernel(
            buf.as_mut_ptr().cast(),
            size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    // SAFETY: filled on success; every caller reads integers or arrays of
    // integers, for which any bytes are a valid value.
    (rc == 0).then(|| unsafe { buf.assume_init().0 })
}

/// Fills `buf` from kernel memory at `addr`; false for a null address or a
/// fault (then `buf` is as it was, or zeroed by the helper).
#[inline(always)]
pub fn kread_into<T>(buf: &mut T, addr: u64) -> bool {
    if addr == 0 {
        return false;
    }
    // SAFETY: the helper writes size_of::<T>() bytes into `buf`, which is
    // exactly that big and exclusively borrowed; callers pass arrays of
    // integers, for which any bytes are valid. It checks the source itself.
    let rc = unsafe {
        bpf_probe_read_kernel(
            (buf as *mut T).cast(),
            size_of::<T>() as u32,
            addr as *const core::ffi::c_void,
        )
    };
    rc == 0
}
