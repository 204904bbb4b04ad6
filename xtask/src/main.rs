//! Developer tasks, run as `cargo xtask <task>`:
//!
//! - `setup`: installs what a fresh machine lacks (apt packages, the
//!   toolchain components, bpf-linker) and does nothing for what is already
//!   there, so every other task runs it first.
//! - `build`: the release binary, target/release/vxtrace.
//! - `lint`: rustfmt's check, then clippy with warnings as errors on every
//!   crate, the eBPF crate for its bpf target.
//! - `test`: lint, unit tests, the privileged integration tests on this
//!   kernel, the container image's checks (`image`), then the kernel
//!   matrix (`kernels` on every default kernel).
//! - `bench`: measures what vxtrace costs and writes BENCHMARKS.md.
//! - `mesh`: what the cluster view costs Prometheus: a real Prometheus
//!   scraping vxtrace's own expositions of generated full meshes.
//! - `demo`: runs the built-in lab demo.
//! - `kernels`: integration tests on other kernels (Debian's cloud kernels,
//!   booted under qemu).
//! - `image`: the container image vxtrace:<version> (FROM scratch: the
//!   release binary and the libraries it links), built with buildah and
//!   checked.
//! - `manifests`: the Prometheus Operator's PodMonitor and PrometheusRule
//!   (from deploy/prometheus/vxtrace-rules.yaml), in deploy/kubernetes/.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod image;
mod kernels;
mod lint;
mod manifests;

#[derive(Parser)]
#[command(name = "xtask", about = "vxtrace's build, setup and lab helpers")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install build and test dependencies (idempotent).
    Setup,
    /// Build the release binary (target/release/vxtrace).
    Build,
    /// Set up, then check formatting and run clippy (warnings are errors) on
    /// every crate, the eBPF crate included.
    Lint,
    /// Set up, then run the lint and every test: unit tests, the privileged
    /// lab tests on this kernel, the container image's checks, and the
    /// kernel matrix (other kernels under qemu).
    Test {
        /// Only run integration tests whose name contains this (on this
        /// kernel; the matrix is left out).
        filter: Option<String>,
        /// Leave out the kernel matrix.
        #[arg(long)]
        this_kernel_only: bool,
    },
    /// Set up, build, and measure what vxtrace costs (writes BENCHMARKS.md).
    Bench {
        /// Possible CPUs of the qemu guests that run the userspace part
        /// again (a per-CPU value has a copy per possible CPU). The guests
        /// are left out when VXTRACE_BENCH_ONLY leaves out "userspace".
        #[arg(long, value_delimiter = ',', default_value = "2,64")]
        guest_possible_cpus: Vec<u32>,
    },
    /// Set up, then measure what the cluster view costs Prometheus: series
    /// per node and per cluster for full meshes, and a real Prometheus's
    /// memory scraping them (the numbers of README's "Across the cluster").
    Mesh {
        /// Arguments for the measurement (e.g. --nodes 100,1000
        /// --count-only 5000 --scrape 30s --minutes 5).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the built-in lab demo.
    Demo {
        /// How long `vxtrace watch` runs in the demo.
        #[arg(long, default_value = "20s")]
        duration: String,
    },
    /// Set up, build, and run a set of integration tests on other kernels
    /// (Debian's cloud kernels, booted under qemu).
    Kernels(kernels::Options),
    /// Set up, build the release binary, then the container image
    /// vxtrace:<version> (FROM scratch: the binary and exactly the
    /// libraries it links); check its files and run `/vxtrace --version` in
    /// it.
    Image,
    /// Write the Prometheus Operator's resources to deploy/kubernetes/: a
    /// PodMonitor, and a PrometheusRule generated from
    /// deploy/prometheus/vxtrace-rules.yaml.
    Manifests {
        /// Write nothing; fail if a file differs from what would be
        /// written.
        #[arg(long)]
        check: bool,
    },
}

/// Debian packages the build and the tests need.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22, the LLVM of this rustc.
    "llvm-22-dev",
    "libpolly-22-dev",
    // The lab (ip, bridge, tc), and kernel-side checks in the tests.
    "iproute2",
    "bpftool",
    // setpriv, for the "not root" test.
    "util-linux",
    // Firewall and NAT rules in the drop tests.
    "nftables",
    // Flushing the NAT's connection table in the TIME_WAIT test.
    "conntrack",
    // The benchmark's load and its comparison; tcpdump is also the EVPN
    // tests' oracle on the underlay.
    "iperf3",
    "tcpdump",
    // FRR (zebra, bgpd, vtysh): the BGP EVPN lab tests run it in each
    // router's namespace, and it programs the leaves' VXLAN FDB (remote
    // MACs, flood lists) as on a real fabric.
    "frr",
    // Prometheus and promtool: the cluster tests scrape every lab node and
    // evaluate deploy/prometheus/vxtrace-rules.yaml for real.
    "prometheus",
    // The container image (`cargo xtask image`): buildah builds it, crun
    // runs it for the check (buildah only recommends a runtime).
    "buildah",
    "crun",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Lint => {
            setup()?;
            lint::run()
        }
        Task::Test {
            filter,
            this_kernel_only,
        } => {
            setup()?;
            lint::run()?;
            test(filter.as_deref())?;
            if filter.is_none() {
                // The release binary is built: the image's checks take
                // seconds.
                image::run(&root)?;
            }
            if filter.is_none() && !this_kernel_only {
                kernels::run(&root, &kernels::Options::whole_matrix())?;
            }
            Ok(())
        }
        Task::Bench {
            guest_possible_cpus,
        } => bench(&root, &guest_possible_cpus),
        Task::Mesh { args } => {
            setup()?;
            run(cargo_run_bin("vxtrace-mesh").arg("--").args(args))
        }
        Task::Demo { duration } => {
            setup()?;
            build()?;
            run(Command::new(root.join("target/release/vxtrace")).args([
                "lab",
                "demo",
                "--duration",
                &duration,
            ]))
        }
        Task::Kernels(opts) => {
            setup()?;
            kernels::run(&root, &opts)
        }
        Task::Image => {
            setup()?;
            build()?;
            image::run(&root)
        }
        Task::Manifests { check } => write_manifests(&root, check),
    }
}

/// `cargo run --release` of one of the test crate's binaries.
fn cargo_run_bin(bin: &str) -> Command {
    let mut c = Command::new("cargo");
    c.args(["run", "--release", "-p", "vxtrace-tests", "--bin", bin]);
    c
}

/// `cargo xtask bench`: the guests' userspace figures first (the
/// benchmark on this machine reads them into BENCHMARKS.md; a guest that
/// fails is reported there as not measured, with why), then the benchmark.
fn bench(root: &Path, guest_possible_cpus: &[u32]) -> Result<()> {
    setup()?;
    build()?;
    let guest_figures = root.join("target/bench-guests.ndjson");
    let _ = std::fs::remove_file(&guest_figures);
    // VXTRACE_BENCH_ONLY without "userspace" leaves them out too.
    let userspace_wanted = std::env::var("VXTRACE_BENCH_ONLY").map_or(true, |only| {
        only.split(',').any(|p| p.trim() == "userspace")
    });
    if !guest_possible_cpus.is_empty()
        && userspace_wanted
        && let Err(e) = kernels::bench::userspace_by_possible_cpus(
            root,
            Path::new(kernels::CACHE_DIR),
            guest_possible_cpus,
            &guest_figures,
        )
    {
        eprintln!("xtask: the userspace benchmark on qemu guests failed: {e:#}");
        std::fs::write(
            &guest_figures,
            format!(
                "{{\"figure\":\"guest_error\",\"error\":{}}}\n",
                serde_json::Value::from(format!("{e:#}"))
            ),
        )?;
    }
    run(cargo_run_bin("vxtrace-bench")
        .env("VXTRACE_BIN", root.join("target/release/vxtrace"))
        .env("VXTRACE_BENCH_GUESTS", &guest_figures))
}

/// Writes (or, with `check`, compares) the generated manifests.
fn write_manifests(root: &Path, check: bool) -> Result<()> {
    let mut stale = Vec::new();
    for (rel, text) in manifests::generate(root).context("reading the rules")? {
        let path = root.join(rel);
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now == text {
            eprintln!("xtask: {rel} is up to date");
        } else if check {
            stale.push(rel);
        } else {
            std::fs::write(&path, text).with_context(|| format!("writing {rel}"))?;
            eprintln!("xtask: wrote {rel}");
        }
    }
    if !stale.is_empty() {
        bail!(
            "not what `cargo xtask manifests` generates: {}",
            stale.join(", ")
        );
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{:?} failed with {status}", cmd.get_program());
    }
    Ok(())
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Installs the Debian packages of `packages` that are not installed yet.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing packages {}: run the task as root (`sudo -E cargo xtask ...`) or install them with apt-get",
                missing.join(" ")
            );
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))?;
    }
    Ok(())
}

fn setup() -> Result<()> {
    apt_install(APT_PACKAGES)?;

    // rust-src for the toolchain that builds the kernel programs (the one
    // VXTRACE_EBPF_TOOLCHAIN names, else nightly when present, else stable
    // with RUSTC_BOOTSTRAP; see vxtrace/build.rs), and clippy there and on
    // the default toolchain, rustfmt on the default one: `lint` runs them.
    let bpf = lint::BpfToolchain::choose();
    rustup_components(Some(bpf.name()), &["rust-src", "clippy"])?;
    rustup_components(None, &["clippy", "rustfmt"])?;

    // bpf-linker, built against Debian's LLVM 22.
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new("cargo").env("PATH", path).args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ]))?;
    }
    eprintln!("xtask: setup complete");
    Ok(())
}

/// Adds the rustup `components` that `toolchain` (the default one when
/// `None`) lacks.
fn rustup_components(toolchain: Option<&str>, components: &[&str]) -> Result<()> {
    let toolchain_args = toolchain
        .map(|t| vec!["--toolchain", t])
        .unwrap_or_default();
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .args(&toolchain_args)
        .output()
        .context("running rustup")?;
    // Installed components are listed with their target: clippy-x86_64-...
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| {
            !installed
                .lines()
                .any(|l| l == *c || l.starts_with(&format!("{c}-")))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .args(&toolchain_args))
}

fn build() -> Result<()> {
    run(Command::new("cargo").args(["build", "--release", "-p", "vxtrace"]))
}

fn test(filter: Option<&str>) -> Result<()> {
    if !is_root() {
        bail!("the lab tests need root (network namespaces, BPF): run `sudo -E cargo xtask test`");
    }
    // Unit tests: no privileges, no kernel.
    run(Command::new("cargo").args([
        "test",
        "-p",
        "vxtrace-common",
        "-p",
        "vxtrace",
        "-p",
        "xtask",
    ]))?;
    // The binary the integration tests drive.
    build()?;
    let bin = workspace_root().join("target/release/vxtrace");
    // Privileged tests share kernel state (namespaces, loaded programs):
    // one at a time.
    let mut cmd = Command::new("cargo");
    cmd.env("VXTRACE_BIN", &bin)
        .args(["test", "--release", "-p", "vxtrace-tests", "--"])
        .arg("--test-threads=1");
    if let Some(f) = filter {
        cmd.arg(f);
    }
    run(&mut cmd)
}
