//! `cargo xtask lint`: formatting and clippy, with warnings as errors, on
//! every crate of the workspace, the eBPF crate included (for its own
//! target, with the toolchain that builds it).
//!
//! The steps run one after the other and the first that fails ends the
//! run, naming the step and the command that reproduces it.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The target the kernel programs are built for.
const BPF_TARGET: &str = "bpfel-unknown-none";

/// Set to a toolchain name, makes vxtrace/build.rs build the kernel
/// programs with it (see there); lint checks them with the same one.
const EBPF_TOOLCHAIN_VAR: &str = "VXTRACE_EBPF_TOOLCHAIN";

/// The toolchain that builds (and so lints) the eBPF crate: the choice
/// vxtrace/build.rs makes, because `-Z build-std` needs a nightly cargo.
pub enum BpfToolchain {
    /// Asked for through [`EBPF_TOOLCHAIN_VAR`].
    Named(String),
    Nightly,
    /// Stable, let to take nightly flags by RUSTC_BOOTSTRAP=1.
    StableBootstrapped,
}

impl BpfToolchain {
    /// As vxtrace/build.rs chooses: the one asked for, else nightly when
    /// rustup has it, else stable.
    pub fn choose() -> Self {
        if let Ok(name) = std::env::var(EBPF_TOOLCHAIN_VAR) {
            Self::Named(name)
        } else if crate::succeeds(Command::new("rustup").args([
            "run",
            "nightly",
            "rustc",
            "--version",
        ])) {
            Self::Nightly
        } else {
            Self::StableBootstrapped
        }
    }

    /// The rustup toolchain name.
    pub fn name(&self) -> &str {
        match self {
            Self::Named(name) => name,
            Self::Nightly => "nightly",
            Self::StableBootstrapped => "stable",
        }
    }

    /// Environment the toolchain needs for nightly flags.
    fn env(&self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::StableBootstrapped => vec![("RUSTC_BOOTSTRAP", "1")],
            Self::Named(_) | Self::Nightly => Vec::new(),
        }
    }
}

/// One lint command.
struct Step {
    /// What the step checks, for the messages.
    what: &'static str,
    env: Vec<(&'static str, &'static str)>,
    /// `cargo`'s arguments.
    args: Vec<String>,
}

impl Step {
    fn new(what: &'static str, args: &[&str]) -> Self {
        Self {
            what,
            env: Vec::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The command as one would type it in a shell at the workspace root.
    fn shell_line(&self) -> String {
        let env = self.env.iter().map(|(k, v)| format!("{k}={v}"));
        let cmd = std::iter::once("cargo".to_string()).chain(self.args.iter().cloned());
        env.chain(cmd).collect::<Vec<_>>().join(" ")
    }

    fn run(&self, number: usize, of: usize) -> Result<()> {
        let line = self.shell_line();
        eprintln!("xtask: lint {number}/{of}: {}: {line}", self.what);
        let status = Command::new("cargo")
            .envs(self.env.iter().copied())
            .args(&self.args)
            .status()
            .with_context(|| format!("running {line}"))?;
        if !status.success() {
            bail!(
                "lint step {number}/{of} ({}) failed ({status}); reproduce with:\n    {line}",
                self.what
            );
        }
        Ok(())
    }
}

/// The steps, cheapest first.
fn steps(bpf: &BpfToolchain) -> Vec<Step> {
    let toolchain = format!("+{}", bpf.name());
    let mut ebpf = Step::new(
        "clippy on the eBPF crate",
        &[
            &toolchain,
            "clippy",
            "-p",
            "vxtrace-ebpf",
            "--target",
            BPF_TARGET,
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
    );
    ebpf.env = bpf.env();
    vec![
        Step::new("formatting", &["fmt", "--all", "--", "--check"]),
        // --workspace: the default members leave out the integration tests.
        // vxtrace's build script builds the eBPF object, so this needs
        // bpf-linker (setup installs it).
        Step::new(
            "clippy on the workspace",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--exclude",
                "vxtrace-ebpf",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ebpf,
    ]
}

/// Runs every step, stopping at the first that fails.
pub fn run() -> Result<()> {
    let steps = steps(&BpfToolchain::choose());
    for (i, step) in steps.iter().enumerate() {
        step.run(i + 1, steps.len())?;
    }
    eprintln!("xtask: lint clean");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ebpf_step_on_stable_is_bootstrapped() {
        let steps = steps(&BpfToolchain::StableBootstrapped);
        assert_eq!(
            steps.last().unwrap().shell_line(),
            "RUSTC_BOOTSTRAP=1 cargo +stable clippy -p vxtrace-ebpf --target bpfel-unknown-none \
             -Z build-std=core -- -D warnings"
        );
    }

    #[test]
    fn ebpf_step_on_nightly() {
        let steps = steps(&BpfToolchain::Nightly);
        assert_eq!(
            steps.last().unwrap().shell_line(),
            "cargo +nightly clippy -p vxtrace-ebpf --target bpfel-unknown-none \
             -Z build-std=core -- -D warnings"
        );
    }
}
