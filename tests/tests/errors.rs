//! Every mistake a user can make gets one line that says what to do, a
//! non-zero exit, and no panic.

use std::process::Command;

use vxtrace_tests::{LabGuard, bin, run};

fn watch_in(ns: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin());
            c
        }
        None => Command::new(bin()),
    };
    cmd.arg("watch").args(["--duration", "1s"]).args(args);
    run(&mut cmd)
}

fn assert_one_line_error(code: i32, stderr: &str, expect_code: i32, needle: &str) {
    assert_eq!(code, expect_code, "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

fn runtime_error(code: i32, stderr: &str, needle: &str) {
    assert_one_line_error(code, stderr, 1, needle);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("vxtrace: error: "), "{stderr}");
}

#[test]
fn usage_errors_exit_2() {
    let (c, _, e) = watch_in(None, &["--no-such-flag"]);
    assert_one_line_error(c, &e, 2, "unexpected argument '--no-such-flag'");
    let (c, _, e) = watch_in(None, &["--peer", "172.16.10.300"]);
    assert_one_line_error(c, &e, 2, "'172.16.10.300' is not an IP address");
    let (c, _, e) = watch_in(None, &["--peer", "node-b"]);
    assert_one_line_error(c, &e, 2, "is not an IP address");
    let (c, _, e) = watch_in(None, &["--interval", "soon"]);
    assert_one_line_error(c, &e, 2, "is not a duration");
    let (c, _, e) = watch_in(None, &["--interval", "1ms"]);
    assert_one_line_error(c, &e, 2, "too short");
    let (c, _, e) = watch_in(None, &["--port", "0"]);
    assert_one_line_error(c, &e, 2, "--port");
    let (c, _, e) = watch_in(None, &["--port", "70000"]);
    assert_one_line_error(c, &e, 2, "--port");
    let (c, _, e) = watch_in(None, &["--attach", "xdp"]);
    assert_one_line_error(c, &e, 2, "invalid value 'xdp'");
}

#[test]
fn not_root() {
    let (c, _, e) = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(bin())
        .args(["watch", "--duration", "1s"]));
    runtime_error(c, &e, "run vxtrace as root");
}

#[test]
fn no_btf() {
    let (c, _, e) = watch_in(None, &["--btf", "/nonexistent/vmlinux"]);
    runtime_error(c, &e, "no kernel BTF at /nonexistent/vmlinux");
}

#[test]
fn namespace_without_vxlan() {
    let ns = "vt-empty";
    let _ = run(Command::new("ip").args(["netns", "delete", ns]));
    vxtrace_tests::sh(&["ip", "netns", "add", ns]);
    let (c, _, e) = watch_in(Some(ns), &[]);
    let _ = run(Command::new("ip").args(["netns", "delete", ns]));
    runtime_error(c, &e, "no VXLAN device in this network namespace");
}

#[test]
fn missing_or_wrong_devices() {
    let lab = LabGuard::new("vt-err", 2, false, 8472);
    let ns = lab.node_ns(1);
    let (c, _, e) = watch_in(Some(&ns), &["--vxlan-dev", "flannel.9"]);
    runtime_error(
        c,
        &e,
        "device flannel.9 does not exist in this network namespace",
    );
    let (c, _, e) = watch_in(Some(&ns), &["--vxlan-dev", "eth0"]);
    runtime_error(c, &e, "device eth0 is not a VXLAN device");
    let (c, _, e) = watch_in(Some(&ns), &["--iface", "ens9"]);
    runtime_error(c, &e, "underlay device ens9 does not exist");
    let (c, _, e) = watch_in(Some(&ns), &["--iface", "flannel.1"]);
    runtime_error(c, &e, "flannel.1 is a VXLAN device");
    let (c, _, e) = watch_in(Some(&ns), &["--netns", "self,no-such-ns"]);
    runtime_error(c, &e, "network namespace no-such-ns not found");
    // A good run afterwards still works: errors left nothing behind.
    let (c, _, e) = watch_in(Some(&ns), &["--json"]);
    assert_eq!(c, 0, "{e}");
}
