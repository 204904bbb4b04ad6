//! Checks made before touching the kernel, so that the common mistakes get
//! a one-line answer instead of a syscall error.

use std::path::Path;

use anyhow::{Result, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Fails unless this process may load BPF programs and attach them to devices.
pub fn check_capabilities() -> Result<()> {
    let Some(caps) = effective_caps() else {
        // Cannot tell (no /proc): let the kernel decide.
        return Ok(());
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !missing.is_empty() {
        bail!(
            "missing capabilities {}: run vxtrace as root (sudo vxtrace ...) or grant them (setcap cap_bpf,cap_perfmon,cap_net_admin+ep)",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Fails unless the kernel's BTF is readable at `path`.
pub fn check_btf(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "no kernel BTF at {}: vxtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y; \
             if the BTF lives elsewhere pass --btf FILE",
            path.display()
        );
    }
    Ok(())
}
