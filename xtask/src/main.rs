//! Developer tasks: `cargo xtask setup | build | test | bench | demo | kernels`.
//!
//! `setup` installs what a fresh machine lacks (apt packages, the rust-src
//! component, bpf-linker) and does nothing for what is already there, so
//! every other task can run it first.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod kernels;

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
    /// Set up, then run every test: unit tests, the privileged lab tests on
    /// this kernel, and the kernel matrix (other kernels under qemu).
    Test {
        /// Only run integration tests whose name contains this (on this
        /// kernel; the matrix is left out).
        filter: Option<String>,
        /// Leave out the kernel matrix.
        #[arg(long)]
        this_kernel_only: bool,
    },
    /// Set up, build, and measure what vxtrace costs (writes BENCHMARKS.md).
    Bench,
    /// Set up, build, and run the built-in lab demo.
    Demo {
        /// How long `vxtrace watch` runs in the demo.
        #[arg(long, default_value = "20s")]
        duration: String,
    },
    /// Set up, build, and run a set of integration tests on other kernels
    /// (Debian's cloud kernels, booted under qemu).
    Kernels(kernels::Options),
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
    // The benchmark's load and its comparison.
    "iperf3",
    "tcpdump",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Setup => setup(),
        Task::Build => build(),
        Task::Test {
            filter,
            this_kernel_only,
        } => {
            setup()?;
            test(filter.as_deref())?;
            if filter.is_none() && !this_kernel_only {
                kernels::run(&root, &kernels::Options::whole_matrix())?;
            }
            Ok(())
        }
        Task::Bench => {
            setup()?;
            build()?;
            run(Command::new("cargo")
                .env("VXTRACE_BIN", root.join("target/release/vxtrace"))
                .args([
                    "run",
                    "--release",
                    "-p",
                    "vxtrace-tests",
                    "--bin",
                    "vxtrace-bench",
                ]))
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
    }
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

    // rust-src for the toolchain that builds the kernel programs (nightly
    // when present, else stable with RUSTC_BOOTSTRAP; see vxtrace/build.rs).
    let toolchain =
        if succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
            "nightly"
        } else {
            "stable"
        };
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout).contains("rust-src") {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            toolchain,
        ]))?;
    }

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
