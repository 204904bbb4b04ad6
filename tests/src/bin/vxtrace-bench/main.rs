//! `cargo xtask bench`: what vxtrace costs, measured in one run on this
//! machine, side by side with no tracing, with empty programs at the same
//! hooks (the floor any tracer there pays) and with tcpdump. Writes
//! BENCHMARKS.md and bench.ndjson (one JSON line per figure).
//!
//! Not a test: nothing here asserts a time. It needs root and the lab.

mod floor;
mod kernel_cost;
mod stats;
mod throughput;
mod userspace;

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vxtrace::schema::Line;
use vxtrace_tests::{LabGuard, bin};

pub struct Report {
    lines: Vec<Value>,
    md: String,
}

impl Report {
    fn figure(&mut self, v: Value) {
        println!("{v}");
        self.lines.push(v);
    }

    /// The figures of one kind.
    fn figures(&self, kind: &str) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["figure"] == kind).collect()
    }
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::MAX, f64::min),
        v.iter().copied().fold(f64::MIN, f64::max),
    )
}

/// An iperf3 server in pod B, for as long as the child lives.
pub fn iperf_server(lab: &LabGuard) -> Child {
    let c = Command::new("ip")
        .args(["netns", "exec", &lab.pod_ns(2), "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    c
}

pub fn watcher(ns: &str, extra: &[&str]) -> (Child, Instant, f64) {
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin())
        .args(["watch", "--json", "--netns", "self"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vxtrace");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut attach_s = f64::NAN;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if matches!(Line::parse(&line), Ok(Line::Attached(_))) {
            attach_s = t0.elapsed().as_secs_f64();
            break;
        }
    }
    // Keep draining stdout so the watcher never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, t0, attach_s)
}

fn stop(mut child: Child) -> f64 {
    let t = Instant::now();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    t.elapsed().as_secs_f64()
}

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used so far, and the peak RSS of the whole life (VmHWM).
pub fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = fields
        .get(11)
        .and_then(|x| x.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(0.0);
    (ticks / 100.0, status_kib(pid, "VmHWM:"))
}

fn start_stop(r: &mut Report, lab: &LabGuard) {
    let (mut attach, mut exit) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (child, _, a) = watcher(&lab.node_ns(1), &[]);
        std::thread::sleep(Duration::from_millis(300));
        attach.push(a);
        exit.push(stop(child));
    }
    let (a, e) = (median(&mut attach), median(&mut exit));
    let _ = writeln!(
        r.md,
        "\n## 4. Start and stop (5 runs, median)\n\n| figure | seconds |\n|---|---|\n| launch to attached | {a:.3} |\n| SIGTERM to exit | {e:.3} |"
    );
    r.figure(json!({"figure": "start_stop", "attach_s": a, "exit_s": e, "attach_runs": attach, "exit_runs": exit}));
}

/// Each target of the issue beside what was measured.
#[allow(
    clippy::too_many_lines,
    reason = "one row per target of the benchmark, in the order BENCHMARKS.md lists them"
)]
fn targets(r: &mut Report) {
    let mut rows: Vec<(String, String, bool)> = Vec::new();
    for f in r.figures("hook_ns") {
        let ratio = f["ratio_to_empty"].as_f64().unwrap_or(f64::NAN);
        rows.push((
            format!(
                "{} ≤ 2× an empty program at its hook",
                f["program"].as_str().unwrap_or("")
            ),
            format!(
                "{ratio:.2}× ({:.0} ns against {:.0})",
                f["ns"].as_f64().unwrap_or(0.0),
                f["empty_ns"].as_f64().unwrap_or(0.0)
            ),
            ratio <= 2.0,
        ));
    }
    for f in r.figures("drop_storm") {
        let ratio = f["ratio_to_empty"].as_f64().unwrap_or(f64::NAN);
        rows.push((
            "drop program ≤ 3× an empty raw tracepoint during a drop storm".into(),
            format!(
                "{ratio:.2}× ({:.0} ns against {:.0}) at {:.0} drops/s",
                f["ns"].as_f64().unwrap_or(0.0),
                f["empty_ns"].as_f64().unwrap_or(0.0),
                f["drops_per_s"].as_f64().unwrap_or(0.0)
            ),
            ratio <= 3.0,
        ));
        let rate = f["drops_per_s"].as_f64().unwrap_or(0.0);
        rows.push((
            "drop storm ≥ 500,000 drops/s, every drop counted".into(),
            format!(
                "{rate:.0} drops/s; counted {} of {}",
                f["counted"], f["dropped"]
            ),
            rate >= 500_000.0 && f["exact"] == true,
        ));
    }
    for f in r.figures("throughput") {
        let (test, mode) = (
            f["test"].as_str().unwrap_or(""),
            f["mode"].as_str().unwrap_or(""),
        );
        if !mode.starts_with("vxtrace") {
            continue;
        }
        let (key, want, what) = if test == "tcp" {
            ("paired_ratio", 0.98, "of no tracing")
        } else {
            ("paired_ratio_to_floor", 0.97, "of the empty programs")
        };
        let v = f[key].as_f64().unwrap_or(f64::NAN);
        rows.push((
            format!("{test} throughput, {mode}: ≥ {want} {what}"),
            format!("{v:.3}"),
            v >= want,
        ));
    }
    for f in r.figures("userspace") {
        let peers = f["peers"].as_u64().unwrap_or(0);
        let cpu = f["cpu_core_fraction"].as_f64().unwrap_or(f64::NAN) * 100.0;
        let rss = f["running_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0;
        if peers == 10_000 {
            rows.push((
                "userspace < 1 % of a core with 10,000 live peers".into(),
                format!("{cpu:.2} %"),
                cpu < 1.0,
            ));
            rows.push((
                "userspace < 64 MiB with 10,000 live peers".into(),
                format!("{rss:.1} MiB"),
                rss < 64.0,
            ));
        } else {
            rows.push((
                format!("userspace with {peers} live peers (reported)"),
                format!("{cpu:.2} % of a core, {rss:.1} MiB"),
                true,
            ));
        }
    }
    for f in r.figures("start_stop") {
        let (a, e) = (
            f["attach_s"].as_f64().unwrap_or(9.0),
            f["exit_s"].as_f64().unwrap_or(9.0),
        );
        rows.push((
            "attach < 1 s, exit < 1 s".into(),
            format!("{a:.3} s, {e:.3} s"),
            a < 1.0 && e < 1.0,
        ));
    }
    let _ = writeln!(
        r.md,
        "\n## Against the targets\n\n| target | measured | held? |\n|---|---|---|"
    );
    for (t, m, held) in rows {
        let _ = writeln!(
            r.md,
            "| {t} | {m} | {} |",
            if held { "held" } else { "not held" }
        );
    }
}

fn main() {
    let rounds: usize = std::env::var("VXTRACE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9);
    let secs: u64 = std::env::var("VXTRACE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let ncpu = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mut r = Report {
        lines: Vec::new(),
        md: String::new(),
    };
    let _ = writeln!(
        r.md,
        "# vxtrace benchmarks\n\nMeasured by `cargo xtask bench` in one run, {}.\n\n- machine: {ncpu} CPUs, {model}\n- kernel: {}\n- lab: 3 network-namespace nodes, kernel VXLAN (flannel layout, port 8472) over veth and a bridge\n\nReproduce: `sudo -E cargo xtask bench` (throughput rounds: VXTRACE_BENCH_ROUNDS, default 9; userspace seconds: VXTRACE_BENCH_SECS, default 60; one part only: VXTRACE_BENCH_ONLY=test_run,per_hook,drop_storm,throughput,userspace,metrics_series,start_stop). Every figure is also a line of `bench.ndjson`.",
        std::process::Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        kernel.trim()
    );
    r.figure(json!({"figure": "machine", "cpus": ncpu, "model": model, "kernel": kernel.trim()}));
    // VXTRACE_BENCH_ONLY=test_run,userspace,... runs a subset (for work on
    // one figure); BENCHMARKS.md is then not rewritten.
    let only = std::env::var("VXTRACE_BENCH_ONLY").ok();
    let want = |f: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == f));
    if want("test_run") {
        kernel_cost::test_run(&mut r);
    }
    let lab = LabGuard::new("vb", 3, false, 8472);
    if want("per_hook") {
        kernel_cost::per_hook(&mut r, &lab, 3);
    }
    if want("drop_storm") {
        kernel_cost::drop_storm(&mut r, &lab);
    }
    if want("throughput") {
        throughput::throughput(&mut r, &lab, rounds);
    }
    if want("userspace") {
        let _ = writeln!(
            r.md,
            "\n## 3. Userspace (interval 1 s, `watch --json --peer B`: every peer counted, one shown)"
        );
        for peers in [10_000, 100_000] {
            userspace::userspace(&mut r, &lab, secs, peers);
        }
    }
    if want("metrics_series") {
        userspace::metrics_series(&mut r, &lab);
    }
    if want("start_stop") {
        start_stop(&mut r, &lab);
    }
    drop(lab);
    targets(&mut r);
    // What the figures mean and what was tried: kept with the code, so a
    // new run keeps it.
    r.md.push_str(include_str!("analysis.md"));
    if only.is_some() {
        // A subset: shown, BENCHMARKS.md left as it is.
        println!("{}", r.md);
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(root.join("BENCHMARKS.md"), &r.md).unwrap();
    let nd: String = r.lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(root.join("bench.ndjson"), nd).unwrap();
    eprintln!("wrote BENCHMARKS.md and bench.ndjson");
}
