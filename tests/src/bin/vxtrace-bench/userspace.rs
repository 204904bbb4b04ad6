//! vxtrace's own cost in userspace with many live peers, and the series a
//! node serves on /metrics.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use vxtrace::schema::Line;
use vxtrace_tests::{LabGuard, bin};

use crate::{Report, kernel_cost::frame, median, num, stop, watcher};

/// How the sender of [`spray`] sends its rounds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// As fast as the socket takes them.
    Flood,
    /// One round a second, each from the next online CPU in turn: the
    /// packets are counted on the CPU that sent them (a veth delivers on
    /// the sender's CPU), so every peer gets an entry on every online CPU,
    /// as a busy node's peers do when the NIC spreads their flows over
    /// its queues. Left to the scheduler, the entries were anywhere
    /// between one and two a peer from run to run, and so were the memory
    /// and the read time measured.
    EveryCpu,
    /// One round a second, all from the first online CPU: an entry a
    /// peer, as on a node whose peers each send one flow.
    OneCpu,
}

impl Pacing {
    /// What the figure's table says of the entries.
    fn spread(self) -> &'static str {
        match self {
            Pacing::OneCpu => "the sender stays on one CPU: an entry a peer",
            _ => "the sender moves to the next online CPU every second",
        }
    }
}

/// Sends VXLAN packets from `n` source addresses in turn to node 1's
/// underlay address, from node 2's namespace, for `secs`, paced as `pacing`
/// says.
pub fn spray(lab: &LabGuard, n: u32, secs: u64, pacing: Pacing) -> std::thread::JoinHandle<()> {
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
            let online = aya::util::online_cpus().unwrap_or_default();
            let end = Instant::now() + Duration::from_secs(secs);
            let mut round = 0;
            while Instant::now() < end {
                let second = Instant::now();
                match pacing {
                    Pacing::EveryCpu if !online.is_empty() => {
                        vxtrace_tests::pin_to_cpu(online[round % online.len()] as usize)
                    }
                    Pacing::OneCpu if round == 0 && !online.is_empty() => {
                        vxtrace_tests::pin_to_cpu(online[0] as usize)
                    }
                    _ => {}
                }
                round += 1;
                for i in 0..n {
                    let mut p = base[14..].to_vec();
                    // 198.18.0.0/15: room for 131,072 peers.
                    p[12..16].copy_from_slice(&[
                        198,
                        18 + (i >> 16) as u8,
                        (i >> 8) as u8,
                        i as u8,
                    ]);
                    // Each peer its own inner source MAC, as each node's
                    // VTEP has: decapsulated frames are then attributed
                    // to their peer (healthy peers, no findings).
                    p[42..48].copy_from_slice(&[
                        0x0e,
                        0x77,
                        0,
                        (i >> 16) as u8,
                        (i >> 8) as u8,
                        i as u8,
                    ]);
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
                if let Some(left) = Duration::from_secs(1).checked_sub(second.elapsed())
                    && pacing != Pacing::Flood
                {
                    std::thread::sleep(left);
                }
            }
            unsafe { libc::close(fd) };
            Ok(())
        });
    })
}

pub fn userspace(r: &mut Report, lab: &LabGuard, secs: u64, peers: u32, pacing: Pacing) {
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
            "--max-peers",
            &(peers + peers / 4).max(16384).to_string(),
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
        let mut entries = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match Line::parse(&line) {
                Ok(Line::Interval(i)) => {
                    read_ms.push(i.cost.read_ms);
                    known = i.cost.peers_known;
                }
                Ok(Line::Summary(s)) => entries = s.peer_map.entries,
                _ => {}
            }
        }
        (read_ms, known, entries)
    });
    std::thread::sleep(Duration::from_secs(2));
    let sender = spray(lab, peers, secs + 5, pacing);
    std::thread::sleep(Duration::from_secs(5)); // every peer seen, histograms allocated
    let (cpu0, _) = crate::proc_stat(pid);
    let t0 = Instant::now();
    // Resident size while running with every peer live (sampled), beside
    // the whole life's peak (VmHWM: start-up included).
    let mut rss_kib = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        rss_kib = rss_kib.max(crate::status_kib(pid, "VmRSS:"));
    }
    let (cpu1, hwm_kib) = crate::proc_stat(pid);
    let wall = t0.elapsed().as_secs_f64();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = sender.join();
    let (mut read_ms, known, entries) = reader.join().unwrap();
    let steady: Vec<f64> = read_ms.iter().copied().skip(7).collect();
    let read_med = if steady.is_empty() {
        median(&mut read_ms)
    } else {
        median(&mut steady.clone())
    };
    let cpu_pct = (cpu1 - cpu0) / wall * 100.0;
    let possible = possible_cpus();
    let _ = writeln!(
        r.md,
        "\n### {peers} live peers ({secs} s, interval 1 s, `watch --json --peer B`: every peer counted, one shown)\n\n| figure | value |\n|---|---|\n| peers known to vxtrace | {known} |\n| (peer, CPU) entries in the per-peer map at exit ({}) | {entries} |\n| possible CPUs (one copy of each per-CPU value; the per-peer map has entries only for the CPUs that counted) | {} |\n| CPU seconds per wall second | {:.4} ({cpu_pct:.2} % of one core) |\n| peak RSS while running (VmRSS sampled every 250 ms) | {:.1} MiB |\n| peak RSS of the whole life, start-up included (VmHWM) | {:.1} MiB |\n| time to read all maps once (median) | {read_med:.1} ms |",
        pacing.spread(),
        possible,
        cpu_pct / 100.0,
        rss_kib as f64 / 1024.0,
        hwm_kib as f64 / 1024.0
    );
    r.figure(json!({"figure": "userspace", "peers": peers, "peers_known": known, "peer_map_entries": entries, "one_cpu": pacing == Pacing::OneCpu, "possible_cpus": possible, "cpu_core_fraction": cpu_pct / 100.0, "running_rss_kib": rss_kib, "peak_rss_kib": hwm_kib, "map_read_ms": read_med}));
}

/// The CPUs the kernel may ever bring up (`/sys/devices/system/cpu/possible`,
/// "0-63"): each per-CPU map value has one copy per possible CPU.
fn possible_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .unwrap_or_default()
        .trim()
        .split(',')
        .filter_map(|range| {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            Some(hi.parse::<usize>().ok()? - lo.parse::<usize>().ok()? + 1)
        })
        .sum()
}

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
pub fn metrics_series(r: &mut Report, lab: &LabGuard) {
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
            let sender = spray(lab, peers, 6, Pacing::EveryCpu);
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

/// The userspace part as `cargo xtask bench` ran it on qemu guests with 2
/// and with many possible CPUs (`VXTRACE_BENCH_GUESTS`: their figures, one
/// JSON line each). Every per-CPU value has a copy per possible CPU, so
/// this is how vxtrace's cost grows on a node with more CPUs. Emulation
/// inflates every CPU figure, so the guests are compared with each other:
/// the time to read the maps is what grows with possible CPUs, and its
/// ratio between the guests is what carries over to this machine
/// ([`guest_estimate`]). Resident sizes are not inflated.
pub fn guests(r: &mut Report) {
    let Ok(path) = std::env::var("VXTRACE_BENCH_GUESTS") else {
        return;
    };
    let figures: Vec<serde_json::Value> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let _ = writeln!(
        r.md,
        "\n### On qemu guests with more possible CPUs\n\nThe same measurement (10,000 live peers) in a guest booted with `-smp 2,maxcpus=N`: 2 CPUs run, N are possible: every per-CPU map value (the global counters) has N copies, while the slots have a row per online CPU and the per-peer map entries only for the CPUs that ran (every peer on both, as above). The guests run under emulation (TCG), which makes each CPU figure several times larger than on hardware: compare the guests with each other, not with the table above. A read that takes longer than the 1-second interval stretches the intervals, so the CPU figure then stops growing (one core at most); the read time does not.\n"
    );
    if let Some(e) = figures.iter().find(|f| f["figure"] == "guest_error") {
        let _ = writeln!(r.md, "Not measured: {}", e["error"].as_str().unwrap_or("?"));
        r.figure(json!({"figure": "userspace_guest_error", "error": e["error"]}));
        return;
    }
    let guests: Vec<&serde_json::Value> = figures
        .iter()
        .filter(|f| f["figure"] == "userspace")
        .collect();
    let Some(fewest) = guests
        .iter()
        .min_by_key(|f| f["possible_cpus"].as_u64().unwrap_or(u64::MAX))
    else {
        let _ = writeln!(r.md, "Not measured: {path} holds no userspace figure.");
        return;
    };
    let _ = writeln!(
        r.md,
        "| possible CPUs | kernel | (peer, CPU) entries | CPU (emulated, % of one core) | map read, median | × the fewest | RSS running | peak RSS |\n|---|---|---|---|---|---|---|---|"
    );
    for g in &guests {
        let read_ratio = num(g, "map_read_ms") / num(fewest, "map_read_ms");
        let _ = writeln!(
            r.md,
            "| {} | {} | {} | {:.1} | {:.0} ms | {read_ratio:.1} | {:.1} MiB | {:.1} MiB |",
            g["possible_cpus"],
            g["guest_kernel"].as_str().unwrap_or("?"),
            g["peer_map_entries"],
            num(g, "cpu_core_fraction") * 100.0,
            num(g, "map_read_ms"),
            num(g, "running_rss_kib") / 1024.0,
            num(g, "peak_rss_kib") / 1024.0,
        );
        let mut v = (*g).clone();
        v["figure"] = "userspace_guest".into();
        v["map_read_vs_fewest_possible"] = read_ratio.into();
        v["fewest_possible_cpus"] = fewest["possible_cpus"].clone();
        r.figure(v);
    }
}

/// This machine's CPU figure (a fraction of one core, at 1-second
/// intervals) were its per-CPU values copied `read_ratio` times as long:
/// the rest of the work does not depend on possible CPUs.
pub fn guest_estimate(cpu_core_fraction: f64, map_read_ms: f64, read_ratio: f64) -> f64 {
    cpu_core_fraction + map_read_ms / 1000.0 * (read_ratio - 1.0)
}
