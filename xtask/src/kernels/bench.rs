//! The benchmark's userspace part on a guest with many possible CPUs.
//!
//! Every per-CPU map value has one copy per *possible* CPU, and vxtrace
//! would read them all every interval, so its cost on a node would depend
//! on how many CPUs the kernel may bring up, not on how many run (the
//! per-peer map has an entry per peer and CPU that counted it for that
//! reason; the small per-CPU maps remain). This machine has 2;
//! nodes have 64 or more. qemu's `-smp 2,maxcpus=N` boots a guest whose
//! kernel has N possible CPUs with 2 running, so the same benchmark can be
//! run at 2 and at N possible CPUs, under the same emulator, and the two
//! compared. Emulation (TCG: this machine has no usable KVM) makes every
//! figure of CPU time several times larger than on real hardware; the ratio
//! between the two guests is what carries over. Resident sizes are not
//! inflated by emulation.

use std::{io::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    BOOT_ALLOWANCE, Machine, boot, build_initramfs, guest::bench_init_script,
    packages::fetch_kernel, payload::Payload, userland,
};

/// The kernel series the guests boot. Its possible CPUs follow qemu's
/// `maxcpus` (the hot-pluggable CPUs in the ACPI tables); 6.12's CPU
/// topology code counts none of them (seen: "Allowing 2 present CPUs plus
/// 0 hotplug CPUs", with or without possible_cpus=).
const SERIES: &str = "6.1";

/// Live peers and seconds measured in each guest.
const PEERS: u32 = 10_000;
const SECS: u64 = 60;

/// Runs the userspace benchmark in one guest per entry of `possible_cpus`
/// and writes its figures (JSON lines, each with `guest_possible_cpus`)
/// to `out`.
pub fn userspace_by_possible_cpus(
    root: &Path,
    cache_dir: &Path,
    possible_cpus: &[u32],
    out: &Path,
) -> Result<()> {
    crate::apt_install(super::KERNEL_APT_PACKAGES)?;
    std::fs::create_dir_all(cache_dir).with_context(|| {
        format!(
            "creating the kernel cache {} (run as root)",
            cache_dir.display()
        )
    })?;
    let kernel = match fetch_kernel(SERIES, None, cache_dir)? {
        Ok(k) => k,
        Err(why) => bail!("no {SERIES} kernel to boot the benchmark's guests: {why}"),
    };
    // vxtrace itself is built by the caller (`cargo xtask bench`).
    crate::run(Command::new("cargo").args([
        "build",
        "--release",
        "-p",
        "vxtrace-tests",
        "--bin",
        "vxtrace-bench",
    ]))
    .context(
        "building the benchmark (cargo build --release -p vxtrace-tests --bin vxtrace-bench)",
    )?;
    let payload = Payload {
        vxtrace: root.join("target/release/vxtrace"),
        tests: [(
            "vxtrace-bench".to_string(),
            root.join("target/release/vxtrace-bench"),
        )]
        .into(),
    };
    let base = userland::base_image(&payload, bench_init_script(PEERS, SECS))?;
    let work_dir = root.join("target/kernels/bench");
    std::fs::create_dir_all(&work_dir)
        .with_context(|| format!("creating {}", work_dir.display()))?;
    let initrd = work_dir.join(format!("{}.cpio", kernel.release));
    build_initramfs(&base, &kernel, &work_dir.join("modules"), &initrd)?;

    let mut file =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for &n in possible_cpus {
        let machine = Machine {
            cpus: 2,
            possible_cpus: n,
            // The kernel preallocates every per-CPU map value for every
            // possible CPU (the per-peer map was 440 B x 64 x 16,384
            // peers, 460 MiB, when it was one).
            memory_mib: 2048 + 32 * n,
        };
        let log = work_dir.join(format!("possible-{n}.log"));
        let guest = boot(
            &kernel,
            &initrd,
            machine,
            &log,
            BOOT_ALLOWANCE + std::time::Duration::from_secs(30 * 60),
        )?;
        let figures: Vec<serde_json::Value> = guest
            .lines
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
            .filter(|v| v.get("figure").is_some())
            .collect();
        let Some(userspace) = figures.iter().find(|v| v["figure"] == "userspace") else {
            bail!(
                "the guest with {n} possible CPUs printed no userspace figure ({}; console in {})",
                guest.end,
                log.display()
            );
        };
        if userspace["possible_cpus"] != n {
            bail!(
                "the guest booted with maxcpus={n} has {} possible CPUs: its kernel does not count qemu's hot-pluggable CPUs (console in {})",
                userspace["possible_cpus"],
                log.display()
            );
        }
        for mut v in figures {
            v["guest_possible_cpus"] = n.into();
            v["guest_kernel"] = kernel.release.clone().into();
            writeln!(file, "{v}").with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}
