//! Throughput over the lab overlay (iperf3 pod A → pod B) with nothing
//! attached, with empty programs at vxtrace's hooks (the floor), with
//! vxtrace, with vxtrace recording and serving metrics, and with tcpdump;
//! modes interleaved round by round so that drift hits them alike.

use std::{
    fmt::Write as _,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use vxtrace_tests::{LabGuard, run};

use crate::{
    Report,
    floor::{Floor, HOOKS},
    median, spread, stop, watcher,
};

/// What runs on node A during a throughput run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    Floor,
    Vxtrace,
    VxtraceRecordMetrics,
    Tcpdump,
}

const MODES: [Mode; 5] = [
    Mode::None,
    Mode::Floor,
    Mode::Vxtrace,
    Mode::VxtraceRecordMetrics,
    Mode::Tcpdump,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Floor => "empty programs",
            Mode::Vxtrace => "vxtrace",
            Mode::VxtraceRecordMetrics => "vxtrace+record+metrics",
            Mode::Tcpdump => "tcpdump",
        }
    }
}

/// What a mode keeps running until [`Running::finish`].
enum Running {
    Nothing,
    Floor(Floor),
    Watcher(Child),
    Tcpdump(Child),
}

impl Running {
    fn finish(self) {
        match self {
            Running::Watcher(c) => {
                stop(c);
            }
            Running::Tcpdump(mut c) => {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let _ = c.wait();
            }
            Running::Floor(f) => drop(f),
            Running::Nothing => {}
        }
    }
}

const RECORDING: &str = "/tmp/vxtrace-bench-record.ndjson";
const PCAP: &str = "/tmp/vxtrace-bench.pcap";

fn start(mode: Mode, lab: &LabGuard) -> Running {
    let node = lab.node_ns(1);
    match mode {
        Mode::None => Running::Nothing,
        Mode::Floor => {
            Running::Floor(Floor::attach(&[node], &HOOKS, true).expect("the empty programs"))
        }
        Mode::Vxtrace => Running::Watcher(watcher(&node, &[]).0),
        Mode::VxtraceRecordMetrics => {
            let _ = std::fs::remove_file(RECORDING);
            Running::Watcher(
                watcher(
                    &node,
                    &["--record", RECORDING, "--metrics", "127.0.0.1:9479"],
                )
                .0,
            )
        }
        Mode::Tcpdump => {
            let c = Command::new("ip")
                .args([
                    "netns", "exec", &node, "tcpdump", "-i", "eth0", "-w", PCAP, "udp", "port",
                    "8472",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tcpdump");
            std::thread::sleep(Duration::from_millis(700));
            Running::Tcpdump(c)
        }
    }
}

fn iperf(lab: &LabGuard, args: &[&str]) -> f64 {
    let (_, out, _) = run(Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod_ns(1),
            "iperf3",
            "-c",
            &lab.pod_ip(2).to_string(),
            "-t",
            "2",
            "-J",
        ])
        .args(args));
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let end = &v["end"];
    end["sum_received"]["bits_per_second"]
        .as_f64()
        .or_else(|| end["sum"]["bits_per_second"].as_f64())
        .unwrap_or(0.0)
}

/// The median of `a[i] / b[i]` over the first `n` rounds.
fn paired(a: &[f64], b: &[f64], n: usize) -> f64 {
    let mut ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .take(n)
        .map(|(x, base)| if *base > 0.0 { x / base } else { 0.0 })
        .collect();
    median(&mut ratios)
}

pub fn throughput(r: &mut Report, lab: &LabGuard, rounds: usize) {
    let mut server = crate::iperf_server(lab);
    let tests: [(&str, Vec<&str>); 3] = [
        ("tcp", vec![]),
        ("udp64", vec!["-u", "-b", "0", "-l", "64"]),
        ("udp1400", vec!["-u", "-b", "0", "-l", "1400"]),
    ];
    // results[mode][test][round]
    let mut results: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); tests.len()]; MODES.len()];
    for _ in 0..rounds {
        for (mi, mode) in MODES.iter().enumerate() {
            let running = start(*mode, lab);
            for (ti, (_, args)) in tests.iter().enumerate() {
                results[mi][ti].push(iperf(lab, args));
            }
            running.finish();
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(RECORDING);
    let _ = std::fs::remove_file(PCAP);
    let floor = MODES.iter().position(|m| *m == Mode::Floor).unwrap_or(0);
    let _ = writeln!(
        r.md,
        "\n## 2. Throughput (iperf3 pod A → pod B over the lab overlay, 2 s per run, modes interleaved, {rounds} rounds)\n\n\"empty programs\": an empty program at each of vxtrace's hooks on node A and on `kfree_skb`, the floor any tracer attached there pays.\n\n| test | mode | median Mbit/s | min–max | median of paired ratios to none | to the empty programs |\n|---|---|---|---|---|---|"
    );
    for (ti, (tname, _)) in tests.iter().enumerate() {
        for (mi, mode) in MODES.iter().enumerate() {
            let runs = &results[mi][ti];
            let (lo, hi) = spread(runs);
            let med = median(&mut runs.clone());
            let to_none = paired(runs, &results[0][ti], rounds);
            let to_floor = paired(runs, &results[floor][ti], rounds);
            let _ = writeln!(
                r.md,
                "| {tname} | {} | {:.0} | {:.0}–{:.0} | {to_none:.3} | {to_floor:.3} |",
                mode.name(),
                med / 1e6,
                lo / 1e6,
                hi / 1e6
            );
            r.figure(json!({"figure": "throughput", "test": tname, "mode": mode.name(), "median_bps": med, "min_bps": lo, "max_bps": hi, "paired_ratio": to_none, "paired_ratio_to_floor": to_floor, "runs": runs}));
        }
    }
    // How the headline ratios settle as rounds are added.
    let _ = writeln!(
        r.md,
        "\nHow the medians of paired ratios settle with the number of rounds (vxtrace against none for TCP, against the empty programs for UDP):\n\n| rounds | tcp | udp64 | udp1400 |\n|---|---|---|---|"
    );
    let vx = MODES.iter().position(|m| *m == Mode::Vxtrace).unwrap_or(0);
    for n in (3..=rounds).step_by(2) {
        let tcp = paired(&results[vx][0], &results[0][0], n);
        let udp64 = paired(&results[vx][1], &results[floor][1], n);
        let udp1400 = paired(&results[vx][2], &results[floor][2], n);
        let _ = writeln!(r.md, "| {n} | {tcp:.3} | {udp64:.3} | {udp1400:.3} |");
        r.figure(json!({"figure": "throughput_settling", "rounds": n, "tcp_to_none": tcp, "udp64_to_floor": udp64, "udp1400_to_floor": udp1400}));
    }
}
