//! What the guest runs: vxtrace and the integration-test executables,
//! built on this machine, and checked to hold the tests asked for before
//! any kernel boots.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::Feature;

pub struct Payload {
    pub vxtrace: PathBuf,
    /// Test target name -> its executable.
    pub tests: BTreeMap<String, PathBuf>,
}

/// Builds vxtrace and the test targets the features need.
pub fn build_payload(root: &Path, features: &[&Feature]) -> Result<Payload> {
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "vxtrace"]))
        .context("building vxtrace (cargo build --release -p vxtrace)")?;
    let vxtrace = root.join("target/release/vxtrace");
    let wanted: BTreeSet<&str> = features.iter().map(|f| f.target).collect();
    let messages = build_tests()?;
    let tests = test_executables(&messages, &wanted);
    for t in &wanted {
        if !tests.contains_key(*t) {
            bail!(
                "cargo built no test executable for target `{t}`: is tests/tests/{t}.rs still there? (else update FEATURES in xtask/src/kernels/mod.rs)"
            );
        }
    }
    check_test_names(features, &tests)?;
    Ok(Payload { vxtrace, tests })
}

/// Builds the integration tests; returns cargo's JSON messages.
fn build_tests() -> Result<Vec<serde_json::Value>> {
    eprintln!("xtask: cargo test --release -p vxtrace-tests --no-run --message-format=json");
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "vxtrace-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !out.status.success() {
        // In JSON mode the compiler's errors come on stdout, as messages.
        for m in &messages {
            if m["reason"] == "compiler-message" && m["message"]["level"] == "error" {
                eprint!("{}", m["message"]["rendered"].as_str().unwrap_or_default());
            }
        }
        bail!(
            "building the integration tests failed (cargo test --release -p vxtrace-tests --no-run): fix the build errors above"
        );
    }
    Ok(messages)
}

/// The executables of the `wanted` test targets among cargo's artifacts.
fn test_executables(
    messages: &[serde_json::Value],
    wanted: &BTreeSet<&str>,
) -> BTreeMap<String, PathBuf> {
    let mut tests = BTreeMap::new();
    for msg in messages {
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let target = &msg["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let name = target["name"].as_str().unwrap_or_default();
        if let (true, Some(exe)) = (is_test && wanted.contains(name), msg["executable"].as_str()) {
            tests.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    tests
}

/// Checks that every feature's test exists, here rather than after a boot.
fn check_test_names(features: &[&Feature], tests: &BTreeMap<String, PathBuf>) -> Result<()> {
    for f in features {
        let exe = &tests[f.target];
        let out = Command::new(exe)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("listing the tests of {}", exe.display()))?;
        let listed = String::from_utf8_lossy(&out.stdout);
        let want = format!("{}: test", f.name);
        if !listed.lines().any(|l| l == want) {
            bail!(
                "test target `{}` has no test `{}` (feature \"{}\"): update FEATURES in xtask/src/kernels/mod.rs",
                f.target,
                f.name,
                f.label
            );
        }
    }
    Ok(())
}
