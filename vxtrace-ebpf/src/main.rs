//! vxtrace's kernel programs: TC classifiers on the underlay device and on
//! the VXLAN device, drop tracepoints and PAWS kprobes. They only count, in
//! per-CPU maps (plus one small record per completed TCP handshake);
//! nothing per packet goes to userspace. Every TC program returns
//! TC_ACT_UNSPEC ("next"), so it never changes what happens to a packet.
//!
//! Where things are:
//! - `probes/`: one module per probe, with its entry points, its logic and
//!   the maps only it uses (`nic`, `vxlan_dev`, `drops`, `paws`, `empty`);
//! - `maps`: the maps several probes share, and the counter helpers;
//! - `config`: the load-time configuration and its accessor, `config!`;
//! - `packet`: header parsing (each header parsed once per packet);
//! - `kernel_mem`: reading kernel memory at BTF offsets (drops, PAWS).
#![no_std]
#![no_main]
// Every `unsafe` block says why it is sound.
#![deny(clippy::undocumented_unsafe_blocks)]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go to aya's `impl Borrow<K>` methods by \
              reference: by value, LLVM keeps a copy on the BPF stack for \
              each call (measured: about 90 more instructions in the drop \
              programs), and PeerStats would not fit on the stack at all"
)]

mod config;
mod kernel_mem;
mod maps;
mod packet;
mod probes;

/// Never reached by a loaded program: the verifier rejects any program
/// with a path into this endless loop, so every possible panic (an index
/// out of bounds, say) has to be compiled out.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel checks GPL-only helpers against.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
