//! `cargo xtask bench`: what vxtrace costs, measured in one run on this
//! machine, side by side with no tracing, with empty programs at the same
//! hooks (the floor any tracer there pays) and with tcpdump. Writes
//! BENCHMARKS.md and bench.ndjson (one JSON line per figure).
//!
//! Not a test: nothing here asserts a time. It needs root and the lab.

mod floor;
mod kernel_cost;
mod settings;
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

/// Each target beside what this run measured and, when a baseline run's
/// figures are at hand (`bench.baseline.ndjson`, or the file named by
/// VXTRACE_BENCH_BASELINE), what that run measured.
fn targets(r: &mut Report) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let baseline_path = std::env::var("VXTRACE_BENCH_BASELINE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join("bench.baseline.ndjson"));
    let baseline: Vec<Value> = std::fs::read_to_string(&baseline_path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let before = target_rows(&baseline);
    let now = target_rows(&r.lines);
    let _ = writeln!(
        r.md,
        "\n## Against the targets\n\n\"Before\" is the baseline run in `bench.baseline.ndjson` (its first line says which build), measured the same way. {}\n\n| target | before | measured | held? |\n|---|---|---|---|",
        machines_compared(&baseline, &r.lines)
    );
    for row in now {
        let was = before
            .iter()
            .find(|b| b.target == row.target)
            .map_or("", |b| b.measured.as_str());
        let held = match row.held {
            Some(true) => "held",
            Some(false) => "not held",
            None => "reported",
        };
        let _ = writeln!(
            r.md,
            "| {} | {was} | {} | {held} |",
            row.target, row.measured
        );
    }
}

/// The machine a run's figures were measured on: "2 CPUs, <model>".
fn machine(figures: &[Value]) -> Option<(String, String)> {
    let m = figures.iter().find(|f| f["figure"] == "machine")?;
    Some((
        format!("{} CPUs, {}", m["cpus"], m["model"].as_str().unwrap_or("?")),
        m["kernel"].as_str().unwrap_or("?").to_string(),
    ))
}

/// Whether the two columns come from one kind of machine: the empty
/// program's cost, and so every ratio, moves with the CPU (30-40 ns a run
/// on one 2-CPU machine, 51-66 on another), so a before and after from
/// two machines is no measurement of a change.
fn machines_compared(baseline: &[Value], now: &[Value]) -> String {
    match (machine(baseline), machine(now)) {
        (Some((before, k0)), Some((after, k1))) if before == after => {
            format!("Both on the same kind of machine ({after}; kernels {k0} and {k1}).")
        }
        (Some((before, _)), Some((after, _))) => format!(
            "Not comparable as before and after: the baseline ran on {before}, this run on {after}; the empty program's cost, and with it every ratio, differs between machines."
        ),
        _ => "The baseline does not say which machine it ran on.".to_string(),
    }
}

/// One row of the targets' table: `held` is None for a figure reported
/// without a target.
struct TargetRow {
    target: String,
    measured: String,
    held: Option<bool>,
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}

/// The targets' rows from one run's figures.
fn target_rows(figures: &[Value]) -> Vec<TargetRow> {
    let mut rows = kernel_rows(figures);
    rows.extend(host_rows(figures));
    rows
}

/// Adds a row to `rows`.
fn push(rows: &mut Vec<TargetRow>) -> impl FnMut(String, String, Option<bool>) + '_ {
    |target, measured, held| {
        rows.push(TargetRow {
            target,
            measured,
            held,
        });
    }
}

/// The kernel programs' targets: cost per run, the drop storm.
fn kernel_rows(figures: &[Value]) -> Vec<TargetRow> {
    let of = |kind: &'static str| figures.iter().filter(move |v| v["figure"] == kind);
    let mut rows = Vec::new();
    let mut row = push(&mut rows);
    for f in of("hook_ns") {
        let ratio = num(f, "ratio_to_empty");
        row(
            format!(
                "{} ≤ 2× the empty program paired with it, {}",
                f["program"].as_str().unwrap_or(""),
                f["shape"].as_str().unwrap_or("overlay_udp64")
            ),
            format!(
                "{ratio:.2}× ({:.0} ns against {:.0}; +{:.0} ns)",
                num(f, "ns"),
                num(f, "empty_ns"),
                num(f, "ns") - num(f, "empty_ns")
            ),
            Some(ratio <= 2.0),
        );
    }
    for f in of("drop_storm") {
        let ratio = num(f, "ratio_to_empty");
        row(
            "drop program ≤ 3× the empty program paired with it, drop storm".into(),
            format!(
                "{ratio:.2}× ({:.0} ns against {:.0}; +{:.0} ns)",
                num(f, "ns"),
                num(f, "empty_ns"),
                num(f, "ns") - num(f, "empty_ns")
            ),
            Some(ratio <= 3.0),
        );
        let rate = num(f, "drops_per_s");
        row(
            "drop storm ≥ 500,000 drops/s, every drop counted".into(),
            format!(
                "{rate:.0} drops/s; counted {} of {}",
                f["counted"], f["dropped"]
            ),
            Some(rate >= 500_000.0 && f["exact"] == true),
        );
    }
    drop(row);
    rows
}

/// The targets of the whole host: throughput, userspace, start and stop.
fn host_rows(figures: &[Value]) -> Vec<TargetRow> {
    let of = |kind: &'static str| figures.iter().filter(move |v| v["figure"] == kind);
    let mut rows = Vec::new();
    let mut row = push(&mut rows);
    for f in of("throughput") {
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
            ("paired_ratio_to_floor", 0.98, "of the empty programs")
        };
        let v = num(f, key);
        row(
            format!("{test} throughput, {mode}: ≥ {want} {what}"),
            format!("{v:.3}"),
            Some(v >= want),
        );
    }
    for f in of("userspace") {
        let peers = f["peers"].as_u64().unwrap_or(0);
        let mut cpus = f["possible_cpus"]
            .as_u64()
            .map_or(String::new(), |c| format!(", {c} possible CPUs"));
        if f["one_cpu"] == true {
            cpus.push_str(", an entry a peer");
        }
        let cpu = num(f, "cpu_core_fraction") * 100.0;
        let rss = num(f, "running_rss_kib") / 1024.0;
        if peers == 10_000 {
            row(
                format!("userspace < 1 % of a core with 10,000 live peers{cpus}"),
                format!("{cpu:.2} %"),
                Some(cpu < 1.0),
            );
            row(
                format!("userspace < 64 MiB with 10,000 live peers{cpus}"),
                format!("{rss:.1} MiB"),
                Some(rss < 64.0),
            );
        } else {
            row(
                format!("userspace with {peers} live peers{cpus}"),
                format!("{cpu:.2} % of a core, {rss:.1} MiB"),
                None,
            );
        }
    }
    guest_rows(figures, &mut row);
    for f in of("start_stop") {
        let (a, e) = (num(f, "attach_s"), num(f, "exit_s"));
        row(
            "attach < 1 s, exit < 1 s".into(),
            format!("{a:.3} s, {e:.3} s"),
            Some(a < 1.0 && e < 1.0),
        );
    }
    drop(row);
    rows
}

/// Userspace on many possible CPUs: this machine's figures (10,000 peers)
/// with the map read grown as it grew between the qemu guests, and the
/// guest's own resident size.
fn guest_rows(figures: &[Value], row: &mut impl FnMut(String, String, Option<bool>)) {
    let of = |kind: &'static str| figures.iter().filter(move |v| v["figure"] == kind);
    for e in of("userspace_guest_error") {
        row(
            "userspace with 10,000 live peers on many possible CPUs".into(),
            format!("not measured: {}", e["error"].as_str().unwrap_or("?")),
            None,
        );
    }
    let Some(here) = of("userspace").find(|f| f["peers"] == 10_000) else {
        return;
    };
    for g in of("userspace_guest").filter(|g| g["possible_cpus"] != g["fewest_possible_cpus"]) {
        let n = &g["possible_cpus"];
        let ratio = num(g, "map_read_vs_fewest_possible");
        let estimate = userspace::guest_estimate(
            num(here, "cpu_core_fraction"),
            num(here, "map_read_ms"),
            ratio,
        ) * 100.0;
        let rss = num(g, "running_rss_kib") / 1024.0;
        row(
            format!(
                "userspace < 1 % of a core with 10,000 live peers, {n} possible CPUs (this machine, map read × the guests' ratio)"
            ),
            format!("{estimate:.1} % (map read ×{ratio:.1})"),
            Some(estimate < 1.0),
        );
        row(
            format!("userspace < 64 MiB with 10,000 live peers, {n} possible CPUs (guest)"),
            format!("{rss:.1} MiB"),
            Some(rss < 64.0),
        );
    }
}

fn main() {
    // Read and checked first: a setting the benchmark cannot use stops it
    // before the lab is built.
    let settings = settings::Settings::from_env();
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
        "# vxtrace benchmarks\n\nMeasured by `cargo xtask bench` in one run, {}.\n\n- machine: {ncpu} CPUs, {model}\n- kernel: {}\n- lab: 3 network-namespace nodes, kernel VXLAN (flannel layout, port 8472) over veth and a bridge\n\nReproduce: `sudo -E cargo xtask bench` (throughput rounds: VXTRACE_BENCH_ROUNDS, default 9; userspace seconds: VXTRACE_BENCH_SECS, default 60; userspace with an entry a peer instead of every peer on every online CPU: VXTRACE_BENCH_SPREAD=one; one part only: VXTRACE_BENCH_ONLY={}; some of the per-hook traffic shapes only: VXTRACE_BENCH_SHAPES={}). Every figure is also a line of `bench.ndjson`.",
        std::process::Command::new("date")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default(),
        kernel.trim(),
        settings::Part::ids(),
        settings::ids(&kernel_cost::Shape::ALL, kernel_cost::Shape::id),
    );
    r.figure(json!({"figure": "machine", "cpus": ncpu, "model": model, "kernel": kernel.trim()}));
    use settings::Part;
    if settings.runs(Part::TestRun) {
        kernel_cost::test_run(&mut r);
    }
    let lab = LabGuard::new("vb", 3, false, 8472);
    if settings.runs(Part::PerHook) {
        kernel_cost::per_hook(&mut r, &lab, 7, &settings.shapes);
    }
    if settings.runs(Part::DropStorm) {
        kernel_cost::drop_storm(&mut r, &lab, 5, settings.storm_secs);
    }
    if settings.runs(Part::Throughput) {
        throughput::throughput(&mut r, &lab, settings.rounds);
    }
    if settings.runs(Part::Userspace) {
        let _ = writeln!(
            r.md,
            "\n## 3. Userspace (interval 1 s, `watch --json --peer B`: every peer counted, one shown)"
        );
        for peers in &settings.peers {
            userspace::userspace(&mut r, &lab, settings.secs, *peers, settings.pacing);
        }
        userspace::guests(&mut r);
    }
    if settings.runs(Part::MetricsSeries) {
        userspace::metrics_series(&mut r, &lab);
    }
    if settings.runs(Part::StartStop) {
        start_stop(&mut r, &lab);
    }
    drop(lab);
    targets(&mut r);
    // What the figures mean and what was tried: kept with the code, so a
    // new run keeps it.
    r.md.push_str(include_str!("analysis.md"));
    if settings.only.is_some() {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::machines_compared;

    fn machine(model: &str, kernel: &str) -> Vec<serde_json::Value> {
        vec![
            json!({"figure": "baseline", "build": "commit x"}),
            json!({"figure": "machine", "cpus": 2, "model": model, "kernel": kernel}),
        ]
    }

    #[test]
    fn a_baseline_from_another_machine_is_called_out() {
        let amd = machine("AMD EPYC", "6.18.44-a");
        let intel = machine("Intel(R) Xeon(R) Processor", "6.18.44-b");
        assert_eq!(
            machines_compared(&amd, &machine("AMD EPYC", "6.18.44-b")),
            "Both on the same kind of machine (2 CPUs, AMD EPYC; kernels 6.18.44-a and 6.18.44-b)."
        );
        let differ = machines_compared(&amd, &intel);
        assert!(
            differ.starts_with("Not comparable as before and after: the baseline ran on 2 CPUs, AMD EPYC, this run on 2 CPUs, Intel(R) Xeon(R) Processor;"),
            "{differ}"
        );
        assert_eq!(
            machines_compared(&amd[..1], &intel),
            "The baseline does not say which machine it ran on."
        );
    }
}
