//! Helpers for the privileged integration tests: labs that always clean up,
//! and a `vxtrace watch --json` child that is read line by line.
//!
//! Tests panic rather than return errors, and run one at a time
//! (`--test-threads=1`): they share the kernel.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use serde_json::Value;
pub use vxtrace::lab::Lab;

/// The vxtrace binary under test (`cargo xtask test` sets VXTRACE_BIN).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VXTRACE_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("vxtrace");
        if p.exists() {
            return p;
        }
    }
    panic!("vxtrace binary not found: run `cargo xtask test` (or set VXTRACE_BIN)");
}

/// A lab that is torn down when the test ends, pass or fail.
pub struct LabGuard {
    pub lab: Lab,
}

impl LabGuard {
    pub fn new(name: &str, nodes: u8, ipv6: bool, port: u16) -> Self {
        let lab = Lab {
            name: name.to_string(),
            nodes,
            ipv6,
            port,
            vni: 1,
            dev: "flannel.1".into(),
        };
        lab.up().expect("building the lab");
        Self { lab }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = vxtrace::lab::down(&self.lab.name);
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

/// `vxtrace watch --json` running in a network namespace.
pub struct Watcher {
    child: Child,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    pub attached: Value,
}

impl Watcher {
    /// Starts the watcher in `ns` and waits until its programs are attached.
    ///
    /// Lab nodes share one kernel, so unless a test says otherwise each
    /// node counts only the drops of its own namespace (`--netns self`).
    pub fn start(ns: &str, extra: &[&str]) -> Self {
        let scope: &[&str] = if extra.iter().any(|a| a.starts_with("--netns")) {
            &[]
        } else {
            &["--netns", "self"]
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin())
            .args(["watch", "--json"])
            .args(scope)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vxtrace watch");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut w = Self {
            child,
            lines: rx,
            stderr,
            attached: Value::Null,
        };
        match w.next_of_type("attached", Duration::from_secs(30)) {
            Some(attached) => {
                w.attached = attached;
                w
            }
            None => {
                let _ = w.child.kill();
                let _ = w.child.wait();
                panic!("vxtrace did not attach; stderr: {}", w.stderr_text())
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next JSON line of the given type, skipping others.
    pub fn next_of_type(&mut self, ty: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    if v["type"] == ty {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// The next JSON line of any type.
    pub fn next_of_any(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    }

    fn stderr_text(self) -> String {
        self.stderr.join().unwrap_or_default()
    }

    /// SIGTERM, then the summary line; asserts a clean exit.
    pub fn stop(self) -> Value {
        // Let the last packets' counts land in the maps.
        std::thread::sleep(Duration::from_millis(200));
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        self.finish()
    }

    /// Waits for exit (e.g. after --duration) and returns the summary.
    pub fn finish(mut self) -> Value {
        let summary = self.next_of_type("summary", Duration::from_secs(30));
        let status = self.child.wait().expect("waiting for vxtrace");
        let stderr = self.stderr_text();
        assert!(
            status.success(),
            "vxtrace exited with {status}; stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        summary.unwrap_or_else(|| panic!("no summary line; stderr: {stderr}"))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Packets of `counter` (tx_encap, rx_nic, ...) for `peer` in a summary;
/// 0 when the peer is absent.
pub fn packets(summary: &Value, peer: &str, counter: &str) -> u64 {
    summary["peers"][peer][counter]["packets"]
        .as_u64()
        .unwrap_or(0)
}

pub fn bytes(summary: &Value, peer: &str, counter: &str) -> u64 {
    summary["peers"][peer][counter]["bytes"]
        .as_u64()
        .unwrap_or(0)
}

/// A plain counter (malformed, unknown_vni, ...) for `peer`.
pub fn count(summary: &Value, peer: &str, field: &str) -> u64 {
    summary["peers"][peer][field].as_u64().unwrap_or(0)
}

/// The addresses of the peers a summary lists.
pub fn peer_names(summary: &Value) -> Vec<String> {
    summary["peers"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// A TCP listener on `port` inside network namespace `ns`.
pub fn listen_in(ns: &str, port: u16) -> std::net::TcpListener {
    vxtrace::netns::run_in(ns, || Ok(std::net::TcpListener::bind(("0.0.0.0", port))?)).unwrap()
}

/// A TCP connection from inside `ns` (the connect result as it came).
pub fn connect_from(
    ns: &str,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    vxtrace::netns::run_in(ns, || {
        Ok(std::net::TcpStream::connect_timeout(&to, timeout))
    })
    .unwrap()
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("running command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs an iproute2-style command and panics on failure.
pub fn sh(args: &[&str]) {
    let (code, _, err) = run(Command::new(args[0]).args(&args[1..]));
    assert_eq!(code, 0, "{args:?} failed: {err}");
}

/// Outer L2 frame size of an inner IPv4 packet of `inner_ip_len` bytes:
/// inner Ethernet 14 + VXLAN 8 + UDP 8 + outer IP (20 or 40) + Ethernet 14.
pub fn outer_frame_len(inner_ip_len: u64, ipv6_underlay: bool) -> u64 {
    inner_ip_len + 14 + 8 + 8 + if ipv6_underlay { 40 } else { 20 } + 14
}

/// Size of one ICMP echo the lab sends, as an inner IP packet (20 + 8 + 56).
pub const ICMP_IP_LEN: u64 = 84;
