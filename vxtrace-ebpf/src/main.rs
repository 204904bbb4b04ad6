//! vxtrace's kernel programs: TC classifiers on the underlay device and on
//! the VXLAN device. They only count, in per-CPU maps; nothing per packet
//! goes to userspace. Every program returns TC_ACT_UNSPEC ("next"), so it
//! never changes what happens to a packet.
#![no_std]
#![no_main]

mod maps;
mod packet;
mod underlay;
mod vxlan_dev;

use aya_ebpf::{macros::classifier, programs::TcContext};

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
