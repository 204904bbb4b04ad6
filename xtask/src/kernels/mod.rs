//! `cargo xtask kernels`: a chosen set of vxtrace's integration tests, run
//! on other kernels than the one this machine runs.
//!
//! vxtrace's programs meet another verifier, other BTF and other kernel
//! functions on every kernel release, so passing on the build machine's
//! kernel proves little about the kernels users run. This task fetches
//! Debian's cloud kernels, boots each under qemu (TCG, so no KVM is needed)
//! with an initramfs that holds everything the tests use (vxtrace, the test
//! binaries, iproute2, nftables, conntrack, kmod, the kernel's network
//! modules), runs the tests one after the other inside, and reads their
//! results from the serial console. The guest has no network device: the
//! tests' traffic stays in its own network namespaces.
//!
//! Here: the options, the features tested and the run over the kernels.
//! The steps live in the submodules: `packages` fetches a kernel,
//! `payload` builds what the guest runs, `userland`, `modules` and
//! `initramfs` make its image, `guest` writes its /init, `qemu` boots it,
//! `results` reads the outcome; `marker` is the one definition of the lines
//! the guest prints for the host.

pub mod bench;
mod guest;
mod initramfs;
mod marker;
mod modules;
mod packages;
mod payload;
mod qemu;
mod results;
mod userland;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    initramfs::Image,
    packages::{Kernel, fetch_kernel},
    qemu::{BOOT_ALLOWANCE, BootLog, Machine, boot},
    results::{KernelReport, collect_results},
};

/// Debian packages this task needs on the host, besides `setup`'s.
const KERNEL_APT_PACKAGES: &[&str] = &[
    // The emulator: these kernels are booted under TCG.
    "qemu-system-x86",
    // The guest's shell and small tools: one static binary.
    "busybox-static",
    // modprobe in the guest, and depmod for the fetched kernels' modules.
    "kmod",
];

/// What is checked on every kernel: one integration test per feature.
struct Feature {
    label: &'static str,
    /// The integration test target (tests/tests/<target>.rs).
    target: &'static str,
    /// The test's exact name in that target.
    name: &'static str,
}

const FEATURES: &[Feature] = &[
    Feature {
        label: "first on clsact, ahead of a datapath's filter",
        target: "datapaths",
        name: "clsact_filter_at_the_first_priority",
    },
    Feature {
        label: "encap/decap exact counts",
        target: "overlay",
        name: "ipv4_underlay_flannel_port",
    },
    Feature {
        label: "IPv6 underlay",
        target: "overlay",
        name: "ipv6_underlay",
    },
    Feature {
        label: "drops by reason (host firewall)",
        target: "drops",
        name: "host_firewall_on_the_vxlan_port",
    },
    Feature {
        label: "drops: forward drop of pod traffic (attributed)",
        target: "drops",
        name: "forward_drop_of_inner_pod_traffic",
    },
    Feature {
        label: "drops: stale neighbour MAC on the peer",
        target: "drops",
        name: "stale_neighbour_mac_on_the_peer",
    },
    Feature {
        label: "drops: masquerade on the peer",
        target: "drops",
        name: "masquerade_of_pod_traffic_on_the_peer",
    },
    Feature {
        label: "bad outer UDP checksums",
        target: "failure_modes",
        name: "bad_outer_udp_checksums",
    },
    Feature {
        label: "port mismatch between nodes",
        target: "failure_modes",
        name: "port_mismatch_between_nodes",
    },
    Feature {
        label: "missing FDB entry for a peer",
        target: "failure_modes",
        name: "missing_fdb_entry_for_a_peer",
    },
    Feature {
        label: "VXLAN driver drop reasons",
        target: "failure_modes",
        name: "vxlan_driver_drop_reasons",
    },
    Feature {
        label: "pod MTU above the VXLAN device",
        target: "failure_modes",
        name: "pod_mtu_above_the_vxlan_device",
    },
    Feature {
        label: "PAWS established",
        target: "tcp",
        name: "paws_rejects_on_an_established_connection",
    },
    Feature {
        label: "PAWS TIME_WAIT behind NAT",
        target: "tcp",
        name: "nat_and_time_wait_reuse_reject_syns",
    },
    Feature {
        label: "PAWS kprobes",
        target: "tcp",
        name: "paws_kprobes_report_what_the_kernel_offers",
    },
    Feature {
        label: "clsact: two runs keep their own filters",
        target: "lifecycle",
        name: "two_clsact_runs_keep_their_own_filters",
    },
    Feature {
        label: "clsact: nothing left after SIGKILL",
        target: "lifecycle",
        name: "sigkill_clsact_leaves_nothing_attached",
    },
];

impl Feature {
    /// How the guest's markers name the feature's test: `target::name`.
    fn id(&self) -> String {
        format!("{}::{}", self.target, self.name)
    }
}

/// Kernel series tested by default, each where the package registry
/// serves it.
const DEFAULT_SERIES: &[&str] = &["6.1", "6.12", "5.10"];

/// Series that this machine's Debian release does not carry, and the older
/// release whose suites do (read through a private apt configuration).
const OLDER_SUITES: &[(&str, &str)] = &[("5.10", "bullseye"), ("4.19", "buster")];

/// Where downloaded kernel packages are kept between runs, by default.
pub const CACHE_DIR: &str = "/var/cache/vxtrace/kernels";

#[derive(clap::Args)]
pub struct Options {
    /// Kernel series to test: 6.1, 6.12, 5.10, ... (repeat, or separate
    /// with commas). Default: 6.1, 6.12 and 5.10. A series the package
    /// registry does not serve is skipped, not failed.
    #[arg(long = "kernel", value_delimiter = ',')]
    kernels: Vec<String>,
    /// Run every test on every kernel even after one failed (default: stop
    /// at the first failure).
    #[arg(long)]
    keep_going: bool,
    /// Only the features whose label or test name contains this (repeat for
    /// more).
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Seconds one test may run in the guest before it is killed.
    #[arg(long, default_value_t = 300)]
    test_timeout: u64,
    /// Where downloaded kernel packages are kept between runs.
    #[arg(long, default_value = CACHE_DIR)]
    cache_dir: PathBuf,
}

impl Options {
    /// What `cargo xtask test` runs: every default kernel and feature, all
    /// reported even after a failure.
    pub fn whole_matrix() -> Self {
        Self {
            kernels: Vec::new(),
            keep_going: true,
            tests: Vec::new(),
            test_timeout: 300,
            cache_dir: PathBuf::from(CACHE_DIR),
        }
    }
}

/// Tests the chosen features on each chosen kernel, prints a report per
/// kernel, and fails if any kernel failed.
pub fn run(root: &Path, opts: &Options) -> Result<()> {
    crate::apt_install(KERNEL_APT_PACKAGES)?;
    let features = select_features(&opts.tests)?;
    let out_dir = root.join("target/kernels");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::fs::create_dir_all(&opts.cache_dir).with_context(|| {
        format!(
            "creating the kernel cache {} (run as root, or pass --cache-dir)",
            opts.cache_dir.display()
        )
    })?;

    let started = Instant::now();
    let payload = payload::build_payload(root, &features)?;
    let base = userland::base_image(&payload, guest::init_script(&features, opts))?;
    eprintln!(
        "xtask: payload built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let series: Vec<&str> = if opts.kernels.is_empty() {
        DEFAULT_SERIES.to_vec()
    } else {
        opts.kernels.iter().map(String::as_str).collect()
    };
    let mut reports = Vec::new();
    let mut stopped = false;
    for s in series {
        let report = if stopped {
            KernelReport::new(s)
                .not_run(&features, "an earlier kernel failed (--keep-going runs on)")
        } else {
            let older = OLDER_SUITES
                .iter()
                .find(|(o, _)| *o == s)
                .map(|(_, suite)| *suite);
            test_kernel(s, older, &features, &base, &out_dir, opts)
        };
        if report.failed() && !opts.keep_going {
            stopped = true;
        }
        reports.push(report);
    }
    summarize(&reports, &features, &out_dir)?;
    eprintln!(
        "xtask: kernels done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The features whose label or id contains one of `tests` (all when none
/// is given).
fn select_features(tests: &[String]) -> Result<Vec<&'static Feature>> {
    let features: Vec<&Feature> = FEATURES
        .iter()
        .filter(|f| {
            tests.is_empty()
                || tests
                    .iter()
                    .any(|t| f.label.contains(t.as_str()) || f.id().contains(t.as_str()))
        })
        .collect();
    if features.is_empty() {
        bail!(
            "no feature matches --test {}: the features are {}",
            tests.join(" --test "),
            FEATURES
                .iter()
                .map(|f| format!("\"{}\" ({})", f.label, f.id()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(features)
}

/// Prints every kernel's report; fails if any kernel failed or none could
/// be tested.
fn summarize(reports: &[KernelReport], features: &[&Feature], out_dir: &Path) -> Result<()> {
    println!();
    let width = features.iter().map(|f| f.label.len()).max().unwrap_or(0);
    for r in reports {
        r.print(width);
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.name.as_str())
        .collect();
    let tested = reports.iter().filter(|r| r.skipped.is_none()).count();
    if !failed.is_empty() {
        bail!(
            "failures on {} (serial logs in {})",
            failed.join(", "),
            out_dir.display()
        );
    }
    if tested == 0 {
        bail!("no kernel could be tested: every series was skipped (see above)");
    }
    Ok(())
}

/// One kernel: fetch, image, boot, results.
fn test_kernel(
    series: &str,
    older: Option<&str>,
    features: &[&Feature],
    base: &Image,
    out_dir: &Path,
    opts: &Options,
) -> KernelReport {
    let started = Instant::now();
    let mut report = KernelReport::new(series);
    eprintln!("xtask: kernel {series}: fetching");
    let t = Instant::now();
    let kernel = match fetch_kernel(series, older, &opts.cache_dir) {
        Ok(Ok(k)) => k,
        Ok(Err(why)) => {
            report.skipped = Some(why);
            return report;
        }
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report.not_run(features, "no kernel");
        }
    };
    report.name = kernel.release.clone();
    report.timings.download = Some((t.elapsed().as_secs_f64(), kernel.cached));

    let t = Instant::now();
    let work = out_dir.join(&kernel.release);
    let initrd = out_dir.join(format!("{}.cpio", kernel.release));
    match build_initramfs(base, &kernel, &work, &initrd) {
        Ok(size) => report.timings.image = Some((t.elapsed().as_secs_f64(), size)),
        Err(e) => {
            report.error = Some(format!("building the initramfs: {e:#}"));
            return report.not_run(features, "no initramfs");
        }
    }

    let deadline = BOOT_ALLOWANCE
        + features.len() as u32
            * (Duration::from_secs(opts.test_timeout) + Duration::from_secs(30));
    let (guest, retried) = match boot_twice_if_needed(&kernel, &initrd, out_dir, deadline) {
        Ok(booted) => booted,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report.not_run(features, "qemu did not run");
        }
    };
    report.timings.boot = guest.booted;
    collect_results(&mut report, &guest, features, &work, opts);
    if let (Some(first), Some(info)) = (retried, report.info.as_mut()) {
        info.push_str(&format!(
            " (second boot; the first died: {})",
            first.display()
        ));
    }
    report.timings.total = started.elapsed().as_secs_f64();
    report
}

/// Writes `initrd`: the base image and the kernel's modules (staged under
/// `work`). Returns its size.
fn build_initramfs(base: &Image, kernel: &Kernel, work: &Path, initrd: &Path) -> Result<u64> {
    let mut image = base.clone();
    let n = modules::add_modules(&mut image, kernel, &work.join("modules"))?;
    let size = image.write_newc(initrd)?;
    eprintln!(
        "xtask: kernel {}: image {} ({n} modules, {:.1} MiB)",
        kernel.release,
        initrd.display(),
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(size)
}

/// Boots the kernel, and once more if the guest did not come up: an
/// emulated boot can die of the emulator's own faults, and a second failure
/// is the kernel's (or the image's). Returns the boot that counts, and the
/// first boot's log when there were two.
fn boot_twice_if_needed(
    kernel: &Kernel,
    initrd: &Path,
    out_dir: &Path,
    deadline: Duration,
) -> Result<(BootLog, Option<PathBuf>)> {
    let log = out_dir.join(format!("{}.log", kernel.release));
    let guest = boot(kernel, initrd, Machine::TESTS, &log, deadline)?;
    if guest.booted.is_some() {
        return Ok((guest, None));
    }
    let first = out_dir.join(format!("{}.first-boot.log", kernel.release));
    let _ = std::fs::rename(&log, &first);
    eprintln!(
        "xtask: kernel {}: the guest did not come up ({}); booting again (first log: {})",
        kernel.release,
        guest.end,
        first.display()
    );
    let guest = boot(kernel, initrd, Machine::TESTS, &log, deadline)?;
    Ok((guest, Some(first)))
}
