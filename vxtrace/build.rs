//! Builds the kernel programs (`vxtrace-ebpf`) for the bpf target and puts the
//! object in OUT_DIR, where `src/probes/mod.rs` embeds it (`OBJECT`).
//!
//! Prefers the `nightly` toolchain (needed for `-Z build-std=core`); on a
//! machine with only stable, the same build runs on stable with
//! RUSTC_BOOTSTRAP=1. Either way the toolchain needs the rust-src component
//! and `bpf-linker` must be on PATH: `cargo xtask setup` installs both.
use std::process::Command;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn has_toolchain(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=VXTRACE_EBPF_TOOLCHAIN");
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "vxtrace-ebpf")
        .ok_or_else(|| anyhow!("vxtrace-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?
        .to_string();

    let requested = std::env::var("VXTRACE_EBPF_TOOLCHAIN").ok();
    let toolchain_name = match requested.as_deref() {
        Some(name) => name.to_string(),
        None if has_toolchain("nightly") => "nightly".to_string(),
        None => {
            // SAFETY: the build script is single-threaded; the variable is
            // inherited by the nested cargo that aya-build runs.
            unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
            "stable".to_string()
        }
    };
    let toolchain = if toolchain_name == "nightly" {
        Toolchain::Nightly
    } else {
        Toolchain::Custom(Box::leak(toolchain_name.into_boxed_str()))
    };
    let package = aya_build::Package {
        name: "vxtrace-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], toolchain).context(
        "building the kernel programs failed; `cargo xtask setup` installs bpf-linker and rust-src",
    )
}
