//! `cargo xtask bench`: what vxtrace costs, measured in one run on this
//! machine, side by side with no tracing and with tcpdump. Writes
//! BENCHMARKS.md and bench.ndjson (one JSON line per figure).
//!
//! Not a test: nothing here asserts a time. It needs root and the lab.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use serde_json::{Value, json};
use vxtrace::{
    probes::{AttachPolicy, Tracer, TracerConfig},
    schema::Line,
};
use vxtrace_common::names::programs;
use vxtrace_tests::{LabGuard, bin, run, sh};

struct Report {
    lines: Vec<Value>,
    md: String,
}

impl Report {
    fn figure(&mut self, v: Value) {
        println!("{v}");
        self.lines.push(v);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> (f64, f64) {
    (
        v.iter().copied().fold(f64::MAX, f64::min),
        v.iter().copied().fold(f64::MIN, f64::max),
    )
}

// ---------- 1. BPF_PROG_TEST_RUN ----------

fn frame(vxlan: bool) -> Vec<u8> {
    let mut inner = vec![
        0x0e, 0x76, 0x78, 0, 0, 1, 0x0e, 0x76, 0x78, 0, 0, 2, 0x08, 0x00,
    ];
    inner.extend_from_slice(&[
        0x45, 0, 0, 84, 0, 1, 0, 0, 64, 1, 0, 0, 10, 244, 1, 2, 10, 244, 0, 2,
    ]);
    inner.resize(98, 0);
    let mut udp_payload = if vxlan {
        vec![0x08, 0, 0, 0, 0, 0, 1, 0]
    } else {
        vec![0u8; 8]
    };
    udp_payload.extend_from_slice(&inner);
    let dport: u16 = if vxlan { 8472 } else { 53 };
    let mut udp = 40000u16.to_be_bytes().to_vec();
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&((8 + udp_payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&udp_payload);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 17, 0, 0, 192, 0, 2, 12, 192, 0, 2, 11]);
    ip.extend_from_slice(&udp);
    let mut f = vec![0x0e, 0, 0, 0, 0, 1, 0x0e, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f
}

fn test_run(r: &mut Report) {
    let ns = "vb-run";
    let _ = Command::new("ip").args(["netns", "delete", ns]).status();
    sh(&["ip", "netns", "add", ns]);
    sh(&[
        "ip", "-n", ns, "link", "add", "vt0", "type", "veth", "peer", "name", "vt1",
    ]);
    let results = vxtrace::netns::run_in(ns, || {
        let cfg = TracerConfig {
            foreign_ports: Vec::new(),
            reason_too_big: None,
            ports: vec![8472],
            local_addrs: vec!["192.0.2.11".parse::<IpAddr>().unwrap()],
            gbp: false,
            filter_vni: true,
            max_peers: 16384,
            max_macs: 65536,
            offsets: vxtrace_common::KernelOffsets::none(),
            netns_scope_all: true,
            raw_tp_has_reason: true,
            raw_tp_has_rx_sk: false,
        };
        let mut t = Tracer::load(&cfg, &vxtrace::probes::LoaderBtf::None, AttachPolicy::Auto)?;
        t.register_device(2, Some(1), Some([0x0e, 0x76, 0x78, 0, 0, 1]))?;
        let mut ctx = vec![0u8; 192];
        ctx[40..44].copy_from_slice(&2u32.to_ne_bytes());
        let mut out = Vec::new();
        for prog in [
            programs::EMPTY,
            programs::NIC_INGRESS,
            programs::NIC_EGRESS,
            programs::VXLAN_INGRESS,
            programs::VXLAN_EGRESS,
        ] {
            for (kind, data) in [("vxlan", frame(true)), ("non_vxlan", frame(false))] {
                // VXLAN device programs see inner frames: give them the inner one.
                let mut data = if prog.contains("vxlan_") {
                    data[14 + 20 + 8 + 8..].to_vec()
                } else {
                    data
                };
                // Leaving the node, a packet goes from the local VTEP to the
                // peer: swap the outer addresses so that egress counts it
                // (rather than measuring the early "not ours" exit).
                if prog == programs::NIC_EGRESS {
                    let (src, dst) = (14 + 12, 14 + 16);
                    for i in 0..4 {
                        data.swap(src + i, dst + i);
                    }
                }
                // Likewise the inner frame handed to the VXLAN device goes to
                // the peer's MAC (learned from the peer's frames above).
                if prog == programs::VXLAN_EGRESS {
                    for i in 0..6 {
                        data.swap(i, 6 + i);
                    }
                }
                let p = t.program(prog)?;
                let mut rounds = Vec::new();
                for _ in 0..5 {
                    let res = p.test_run(TestRunOptions {
                        data_in: Some(&data),
                        ctx_in: Some(&ctx),
                        repeat: 1_000_000,
                        ..Default::default()
                    })?;
                    rounds.push(res.duration.as_nanos() as f64);
                }
                out.push((prog, kind, median(&mut rounds), rounds));
            }
        }
        Ok(out)
    });
    let _ = Command::new("ip").args(["netns", "delete", ns]).status();
    let results = results.expect("test runs");
    let empty = |kind: &str| {
        results
            .iter()
            .find(|(p, k, ..)| *p == programs::EMPTY && *k == kind)
            .unwrap()
            .2
    };
    let _ = writeln!(
        r.md,
        "\n## 1. Kernel cost per packet\n\n### BPF_PROG_TEST_RUN (repeat 1,000,000, 5 rounds, median ns per run)\n\n| program | frame | ns/run | × empty | rounds (ns) |\n|---|---|---|---|---|"
    );
    for (prog, kind, med, rounds) in &results {
        let ratio = med / empty(kind);
        let _ = writeln!(
            r.md,
            "| {prog} | {kind} | {med:.1} | {ratio:.2} | {} |",
            rounds
                .iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        r.figure(json!({"figure": "test_run_ns", "program": prog, "frame": kind, "ns": med, "ratio_to_empty": ratio, "rounds": rounds}));
    }
}

// ---------- lab helpers ----------

fn watcher(ns: &str, extra: &[&str]) -> (Child, Instant, f64) {
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

// ---------- 2. bpf_stats under lab traffic ----------

fn bpf_stats(r: &mut Report, lab: &LabGuard) {
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
    let (w, _, _) = watcher(&lab.node_ns(1), &[]);
    let _ = lab.ping(1, 2, 2000, Duration::ZERO);
    let _ = lab.udp(1, 3, 5000, 1200);
    let (_, out, _) = run(Command::new("bpftool").args(["-j", "prog", "show"]));
    stop(w);
    let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    let progs: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let _ = writeln!(
        r.md,
        "\n### Kernel run-time statistics under lab traffic (kernel.bpf_stats_enabled; 2,000 echoes A→B and 5,000 UDP datagrams A→C)\n\n| program | runs | ns/run |\n|---|---|---|"
    );
    for p in progs.as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("");
        if !name.starts_with("vxtrace_") {
            continue;
        }
        let (ns, cnt) = (
            p["run_time_ns"].as_u64().unwrap_or(0),
            p["run_cnt"].as_u64().unwrap_or(0),
        );
        if cnt == 0 {
            continue;
        }
        let per = ns as f64 / cnt as f64;
        let _ = writeln!(r.md, "| {name} | {cnt} | {per:.1} |");
        r.figure(json!({"figure": "bpf_stats_ns", "program": name, "runs": cnt, "ns": per}));
    }
}

// ---------- 3. throughput ----------

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

fn throughput(r: &mut Report, lab: &LabGuard, rounds: usize) {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &lab.pod_ns(2), "iperf3", "-s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let modes = ["none", "vxtrace", "vxtrace+record+metrics", "tcpdump"];
    let tests: [(&str, Vec<&str>); 3] = [
        ("tcp", vec![]),
        ("udp64", vec!["-u", "-b", "0", "-l", "64"]),
        ("udp1400", vec!["-u", "-b", "0", "-l", "1400"]),
    ];
    let mut results: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); tests.len()]; modes.len()];
    let rec = "/tmp/vxtrace-bench-record.ndjson";
    let pcap = "/tmp/vxtrace-bench.pcap";
    for _round in 0..rounds {
        for (mi, mode) in modes.iter().enumerate() {
            let node = lab.node_ns(1);
            let (handle, is_tcpdump) = match *mode {
                "vxtrace" => (Some(watcher(&node, &[]).0), false),
                "vxtrace+record+metrics" => {
                    let _ = std::fs::remove_file(rec);
                    (
                        Some(watcher(&node, &["--record", rec, "--metrics", "127.0.0.1:9479"]).0),
                        false,
                    )
                }
                "tcpdump" => {
                    let c = Command::new("ip")
                        .args([
                            "netns", "exec", &node, "tcpdump", "-i", "eth0", "-w", pcap, "udp",
                            "port", "8472",
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("tcpdump");
                    std::thread::sleep(Duration::from_millis(700));
                    (Some(c), true)
                }
                _ => (None, false),
            };
            for (ti, (_, args)) in tests.iter().enumerate() {
                results[mi][ti].push(iperf(lab, args));
            }
            if let Some(h) = handle {
                if is_tcpdump {
                    unsafe { libc::kill(h.id() as i32, libc::SIGTERM) };
                    let mut h = h;
                    let _ = h.wait();
                } else {
                    stop(h);
                }
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_file(rec);
    let _ = std::fs::remove_file(pcap);
    let _ = writeln!(
        r.md,
        "\n## 2. Throughput (iperf3 pod A → pod B over the lab overlay, 2 s per run, modes interleaved, {rounds} rounds)\n\n| test | mode | median Mbit/s | min–max | median of paired ratios to none |\n|---|---|---|---|---|"
    );
    for (ti, (tname, _)) in tests.iter().enumerate() {
        for (mi, mode) in modes.iter().enumerate() {
            let mut v = results[mi][ti].clone();
            let (lo, hi) = spread(&v);
            let med = median(&mut v);
            let mut ratios: Vec<f64> = results[mi][ti]
                .iter()
                .zip(&results[0][ti])
                .map(|(x, base)| if *base > 0.0 { x / base } else { 0.0 })
                .collect();
            let ratio = median(&mut ratios);
            let _ = writeln!(
                r.md,
                "| {tname} | {mode} | {:.0} | {:.0}–{:.0} | {ratio:.3} |",
                med / 1e6,
                lo / 1e6,
                hi / 1e6
            );
            r.figure(json!({"figure": "throughput", "test": tname, "mode": mode, "median_bps": med, "min_bps": lo, "max_bps": hi, "paired_ratio": ratio, "runs": results[mi][ti]}));
        }
    }
}

// ---------- 4. userspace with 10,000 peers ----------

/// Sends one VXLAN packet from each of `n` source addresses per second to
/// node 1's underlay address, from node 2's namespace, for `secs`.
fn spray(lab: &LabGuard, n: u32, secs: u64) -> std::thread::JoinHandle<()> {
    let ns = lab.node_ns(2);
    let dst = match lab.underlay_ip(1) {
        IpAddr::V4(v) => v,
        _ => unreachable!(),
    };
    std::thread::spawn(move || {
        let _ = vxtrace::netns::run_in(&ns, || {
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            addr.sin_family = libc::AF_INET as u16;
            addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            let base = frame(true);
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                let second = Instant::now();
                for i in 0..n {
                    let mut p = base[14..].to_vec();
                    p[12..16].copy_from_slice(&[198, 18, (i >> 8) as u8, i as u8]);
                    // Each peer its own inner source MAC, as each node's
                    // VTEP has: decapsulated frames are then attributed
                    // to their peer (healthy peers, no findings).
                    p[42..48].copy_from_slice(&[0x0e, 0x77, 0, 0, (i >> 8) as u8, i as u8]);
                    p[16..20].copy_from_slice(&dst.octets());
                    unsafe {
                        libc::sendto(
                            fd,
                            p.as_ptr() as *const _,
                            p.len(),
                            0,
                            &addr as *const _ as *const _,
                            std::mem::size_of::<libc::sockaddr_in>() as u32,
                        );
                    }
                }
                if let Some(left) = Duration::from_secs(1).checked_sub(second.elapsed()) {
                    std::thread::sleep(left);
                }
            }
            unsafe { libc::close(fd) };
            Ok(())
        });
    })
}

/// A `kB` field of /proc/PID/status (VmHWM, VmRSS).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used so far, and the peak RSS of the whole life (VmHWM).
fn proc_stat(pid: u32) -> (f64, u64) {
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

fn userspace(r: &mut Report, lab: &LabGuard, secs: u64) {
    let peers = 10_000;
    let node = lab.node_ns(1);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node])
        .arg(bin())
        // As an operator runs it: one peer on screen, all of them counted.
        .args([
            "watch",
            "--json",
            "--netns",
            "self",
            "--interval",
            "1s",
            "--peer",
        ])
        .arg(lab.underlay_ip(2).to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vxtrace");
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut read_ms = Vec::new();
        let mut known = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(Line::Interval(i)) = Line::parse(&line) {
                read_ms.push(i.cost.read_ms);
                known = i.cost.peers_known;
            }
        }
        (read_ms, known)
    });
    std::thread::sleep(Duration::from_secs(2));
    let sender = spray(lab, peers, secs + 5);
    std::thread::sleep(Duration::from_secs(5)); // every peer seen, histograms allocated
    let (cpu0, _) = proc_stat(pid);
    let t0 = Instant::now();
    // Resident size while running with every peer live (sampled), beside
    // the whole life's peak (VmHWM: start-up included).
    let mut rss_kib = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        rss_kib = rss_kib.max(status_kib(pid, "VmRSS:"));
    }
    let (cpu1, hwm_kib) = proc_stat(pid);
    let wall = t0.elapsed().as_secs_f64();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = sender.join();
    let (mut read_ms, known) = reader.join().unwrap();
    let steady: Vec<f64> = read_ms.iter().copied().skip(7).collect();
    let read_med = if steady.is_empty() {
        median(&mut read_ms)
    } else {
        median(&mut steady.clone())
    };
    let cpu_pct = (cpu1 - cpu0) / wall * 100.0;
    let _ = writeln!(
        r.md,
        "\n## 3. Userspace with {peers} live peers ({secs} s, interval 1 s, `watch --json --peer B`: every peer counted, one shown)\n\n| figure | value |\n|---|---|\n| peers known to vxtrace | {known} |\n| CPU seconds per wall second | {:.4} ({cpu_pct:.2} % of one core) |\n| peak RSS while running (VmRSS sampled every 250 ms) | {:.1} MiB |\n| peak RSS of the whole life, start-up included (VmHWM) | {:.1} MiB |\n| time to read all maps once (median) | {read_med:.1} ms |",
        cpu_pct / 100.0,
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    r.figure(json!({"figure": "userspace", "peers": peers, "peers_known": known, "cpu_core_fraction": cpu_pct / 100.0, "running_rss_kib": rss_kib, "peak_rss_kib": hwm_kib, "map_read_ms": read_med}));
}

// ---------- 5. series per node on /metrics ----------

/// Sample lines on node 1's /metrics (no Accept header: classic text).
fn scrape_series(lab: &LabGuard, port: u16) -> (usize, usize) {
    let addr = match lab.underlay_ip(1) {
        IpAddr::V4(v) => v,
        _ => unreachable!(),
    };
    let text = vxtrace::netns::run_in(&lab.node_ns(1), || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect((addr, port))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .unwrap_or_default();
    let samples: Vec<&str> = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or("")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let with_peer = samples
        .iter()
        .filter(|l| l.contains("peer=\"198.18."))
        .count();
    (samples.len(), with_peer)
}

/// How many series one node serves with 1, 100 and 10,000 live peers, by
/// default (per-peer series for the 16 busiest, and those with findings)
/// and with every peer given its own (--metrics-peers 100000); and what
/// that makes for clusters of 1,000 and 5,000 nodes.
fn metrics_series(r: &mut Report, lab: &LabGuard) {
    let _ = writeln!(
        r.md,
        "\n## 5. Series per node on /metrics\n\nOne node with N live peers (VXLAN packets from N addresses every second), `watch --metrics`: sample lines served.\n\n| live peers | default (16 busiest + peers with findings) | of which per-peer | every peer its own series | of which per-peer |\n|---|---|---|---|---|"
    );
    let port = 9479;
    let metrics = format!("{}:{port}", lab.underlay_ip(1));
    let mut per_node = Vec::new();
    for peers in [1u32, 100, 10_000] {
        let mut row = Vec::new();
        for cap in ["16", "100000"] {
            let (w, _, _) = watcher(
                &lab.node_ns(1),
                &[
                    "--metrics",
                    &metrics,
                    "--metrics-peers",
                    cap,
                    "--max-peers",
                    "16384",
                ],
            );
            let sender = spray(lab, peers, 6);
            std::thread::sleep(Duration::from_secs(5));
            row.push(scrape_series(lab, port));
            let _ = sender.join();
            stop(w);
        }
        let _ = writeln!(
            r.md,
            "| {peers} | {} | {} | {} | {} |",
            row[0].0, row[0].1, row[1].0, row[1].1
        );
        r.figure(json!({"figure": "metrics_series", "peers": peers, "default": row[0].0, "default_per_peer": row[0].1, "uncapped": row[1].0, "uncapped_per_peer": row[1].1}));
        per_node.push((peers, row));
    }
    // A full mesh of N nodes: every node has N - 1 peers.
    let (_, big) = &per_node[2];
    let (_, small) = &per_node[1];
    let per_peer_uncapped = (big[1].1 - small[1].1) as f64 / (10_000.0 - 100.0);
    let _ = writeln!(
        r.md,
        "\nA full mesh of N nodes (each node N − 1 live peers), series in Prometheus:\n\n| nodes | default | every peer its own series |\n|---|---|---|"
    );
    for nodes in [1_000u64, 5_000] {
        let default = nodes * big[0].0 as u64;
        let uncapped =
            nodes as f64 * (small[1].0 as f64 + per_peer_uncapped * (nodes as f64 - 1.0 - 100.0));
        let _ = writeln!(r.md, "| {nodes} | {default} | {:.0} |", uncapped);
        r.figure(json!({"figure": "cluster_series", "nodes": nodes, "default": default, "uncapped": uncapped.round()}));
    }
}

// ---------- 6. start and stop ----------

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

fn main() {
    let rounds: usize = std::env::var("VXTRACE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
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
        "# vxtrace benchmarks\n\nMeasured by `cargo xtask bench` in one run, {}.\n\n- machine: {ncpu} CPUs, {model}\n- kernel: {}\n- lab: 3 network-namespace nodes, kernel VXLAN (flannel layout, port 8472) over veth and a bridge\n\nReproduce: `sudo -E cargo xtask bench` (rounds: VXTRACE_BENCH_ROUNDS, default 7; userspace seconds: VXTRACE_BENCH_SECS, default 60). Every figure is also a line of `bench.ndjson`.",
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
        test_run(&mut r);
    }
    let lab = LabGuard::new("vb", 3, false, 8472);
    if want("bpf_stats") {
        bpf_stats(&mut r, &lab);
    }
    if want("throughput") {
        throughput(&mut r, &lab, rounds);
    }
    if want("userspace") {
        userspace(&mut r, &lab, secs);
    }
    if want("metrics_series") {
        metrics_series(&mut r, &lab);
    }
    if want("start_stop") {
        start_stop(&mut r, &lab);
    }
    drop(lab);
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
