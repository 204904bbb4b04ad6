//! Rebuild the kernel programs when the bpf-linker binary changes: the link
//! step depends on it, but cargo cannot see that dependency.
//!
//! Also tells bpf-linker that the programs may load words from unaligned
//! addresses: header fields sit at any offset of a packet, and without
//! this every multi-byte read compiles to one load per byte plus shifts.
//! The kernel accepts such loads from packets and map values on the
//! architectures that have efficient unaligned access (x86-64, arm64);
//! stack accesses stay aligned, as LLVM places its stack slots.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!("cargo:warning=bpf-linker not on PATH: run `cargo xtask setup` to install it")
        }
    }
    println!("cargo:rustc-link-arg-bins=--cpu-features=+allows-misaligned-mem-access");
}
