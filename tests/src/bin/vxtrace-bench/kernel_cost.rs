//! What the kernel programs cost: alone (BPF_PROG_TEST_RUN on a crafted
//! frame), at their hooks under real lab traffic beside an empty program at
//! the same hooks, and the drop program during a drop storm beside an empty
//! raw tracepoint.

use std::{
    fmt::Write as _,
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{TestRun as _, TestRunOptions};
use serde_json::json;
use vxtrace::probes::{AttachPolicy, Tracer, TracerConfig};
use vxtrace_common::names::programs;
use vxtrace_tests::{LabGuard, Watcher, sh};

use crate::{
    Report,
    floor::{Floor, HOOKS},
    median, spread, stats,
};

/// A VXLAN (or plain UDP) frame from peer 192.0.2.12 to 192.0.2.11.
pub fn frame(vxlan: bool) -> Vec<u8> {
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

pub fn test_run(r: &mut Report) {
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
        t.register_device(2, Some(1), Some([0x0e, 0x76, 0x78, 0, 0, 1]), false)?;
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
        "\n## 1. Kernel cost per packet\n\n### In isolation: BPF_PROG_TEST_RUN (repeat 1,000,000, 5 rounds, median ns per run)\n\n| program | frame | ns/run | × empty | rounds (ns) |\n|---|---|---|---|---|"
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

/// One lab run of 64-byte UDP datagrams from pod A to pod B at a fixed
/// rate through iperf3 (its server already running in pod B).
fn udp_load(lab: &LabGuard, secs: u32, rate: &str) {
    let _ = Command::new("ip")
        .args(["netns", "exec", &lab.pod_ns(1), "iperf3", "-c"])
        .arg(lab.pod_ip(2).to_string())
        .args(["-u", "-l", "64", "-b", rate, "-t", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// ns per run of each vxtrace TC program under 64-byte UDP at 40 Mbit/s
/// between two traced nodes, beside the empty program at the same hooks
/// under the same traffic; floor and vxtrace alternate, `rounds` times.
pub fn per_hook(r: &mut Report, lab: &LabGuard, rounds: usize) {
    let _stats = stats::StatsEnabled::new();
    let namespaces = [lab.node_ns(1), lab.node_ns(2)];
    let mut server = crate::iperf_server(lab);
    let (secs, rate) = (5, "40M");
    // Per hook: (floor ns/run, vxtrace ns/run, vxtrace runs) per round.
    let mut floor_ns: Vec<Vec<f64>> = vec![Vec::new(); HOOKS.len()];
    let mut vx_ns: Vec<Vec<f64>> = vec![Vec::new(); HOOKS.len()];
    let mut vx_runs: Vec<Vec<f64>> = vec![Vec::new(); HOOKS.len()];
    let mut insns = vec![None; HOOKS.len()];
    for _ in 0..rounds {
        let floor = Floor::attach(&namespaces, &HOOKS, false).expect("the empty programs");
        let before = stats::snapshot();
        udp_load(lab, secs, rate);
        let d = stats::delta(&before, &stats::snapshot());
        for (i, hook) in HOOKS.iter().enumerate() {
            let (runs, ns) = stats::by_ids(&d, &floor.ids_for(hook.program));
            floor_ns[i].push(ns as f64 / runs.max(1) as f64);
        }
        drop(floor);

        let a = Watcher::start(&namespaces[0], &[]);
        let b = Watcher::start(&namespaces[1], &[]);
        let before = stats::snapshot();
        udp_load(lab, secs, rate);
        let d = stats::by_name(&stats::delta(&before, &stats::snapshot()));
        for (i, hook) in HOOKS.iter().enumerate() {
            let (runs, ns, n) = d.get(hook.program).copied().unwrap_or_default();
            vx_ns[i].push(ns as f64 / runs.max(1) as f64);
            vx_runs[i].push(runs as f64);
            insns[i] = insns[i].or(n);
        }
        a.stop();
        b.stop();
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = writeln!(
        r.md,
        "\n### At the hooks under real traffic, beside an empty program\n\n64-byte UDP datagrams at 40 Mbit/s from pod A to pod B for {secs} s, vxtrace on both nodes; then the same traffic with only an empty program attached at each of vxtrace's hooks on both nodes; alternating, {rounds} rounds, median ns per run from the kernel's run-time statistics (`kernel.bpf_stats_enabled`).\n\n| program | runs per round | empty program at its hook (ns/run) | vxtrace (ns/run) | × empty | instructions verified | ≤ 2× empty? |\n|---|---|---|---|---|---|---|"
    );
    for (i, hook) in HOOKS.iter().enumerate() {
        let f = median(&mut floor_ns[i].clone());
        let v = median(&mut vx_ns[i].clone());
        let runs = median(&mut vx_runs[i].clone());
        let ratio = v / f.max(1.0);
        let (vlo, vhi) = spread(&vx_ns[i]);
        let _ = writeln!(
            r.md,
            "| {} | {runs:.0} | {f:.1} | {v:.1} ({vlo:.0}–{vhi:.0}) | {ratio:.2} | {} | {} |",
            hook.program,
            insns[i]
                .map(|n| n.to_string())
                .unwrap_or_else(|| "?".into()),
            if ratio <= 2.0 { "held" } else { "not held" }
        );
        r.figure(json!({"figure": "hook_ns", "program": hook.program, "runs": runs, "empty_ns": f, "ns": v, "ratio_to_empty": ratio, "insns": insns[i], "rounds_empty": floor_ns[i], "rounds": vx_ns[i]}));
    }
}

/// Datagrams from `ns` to `dst` for `secs`, 64 per system call, from one
/// thread per CPU; how many were sent.
fn flood(ns: &str, dst: std::net::SocketAddrV4, secs: f64) -> u64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    vxtrace::netns::run_in(ns, || {
        // Threads started here inherit the namespace.
        let sent: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| flood_one(dst, secs)))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
        });
        Ok(sent)
    })
    .unwrap_or(0)
}

/// One sender of [`flood`].
fn flood_one(dst: std::net::SocketAddrV4, secs: f64) -> u64 {
    use std::os::fd::AsRawFd as _;
    let Ok(s) = std::net::UdpSocket::bind("0.0.0.0:0") else {
        return 0;
    };
    if s.connect(dst).is_err() {
        return 0;
    }
    let payload = [0x5au8; 18];
    const BATCH: usize = 64;
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: payload.as_ptr() as *mut _,
            iov_len: payload.len(),
        })
        .collect();
    // SAFETY: zeroed mmsghdr are valid (no name, no control data); each
    // points at one iovec of `iov`, which outlives the calls.
    let mut msgs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        // SAFETY: BATCH initialised headers on a socket we own.
        let n = unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    sent
}

/// Packets the storm's drop rule counted so far.
fn nft_dropped(ns: &str) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "-j", "list", "chain", "inet", "storm", "fw",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|x| x["counter"]["packets"].as_u64())
        .sum()
}

/// A drop storm: pod A floods pod B with UDP and a rule on node A drops
/// every datagram as it arrives. The drop program's cost per drop beside an empty
/// raw tracepoint under the same storm, vxtrace's own CPU during it, and
/// whether every drop was counted.
pub fn drop_storm(r: &mut Report, lab: &LabGuard) {
    let _stats = stats::StatsEnabled::new();
    let node = lab.node_ns(1);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "nft",
        &format!(
            "add table inet storm; add chain inet storm fw {{ type filter hook prerouting priority -300 ; }}; add rule inet storm fw ip daddr {} udp dport 9 counter drop",
            lab.pod_ip(2)
        ),
    ]);
    let dst = std::net::SocketAddrV4::new(lab.pod_ip(2), 9);
    // Longer with VXTRACE_BENCH_STORM_SECS (for a profiler to look in).
    let secs: f64 = std::env::var("VXTRACE_BENCH_STORM_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);

    let floor = Floor::attach(&[], &[], true).expect("the empty drop program");
    let (before, dropped0) = (stats::snapshot(), nft_dropped(&node));
    let sent_floor = flood(&lab.pod_ns(1), dst, secs);
    let d = stats::delta(&before, &stats::snapshot());
    let dropped_floor = nft_dropped(&node) - dropped0;
    let (runs_floor, ns_floor) = stats::by_ids(&d, &floor.ids_for(programs::DROPS_RAW));
    drop(floor);

    // As a node runs it by default: drops of every namespace count.
    let w = Watcher::start(&node, &["--netns", "all"]);
    let pid = w.pid() as u32;
    let (cpu0, _) = crate::proc_stat(pid);
    let (before, dropped0) = (stats::snapshot(), nft_dropped(&node));
    let t0 = Instant::now();
    let sent = flood(&lab.pod_ns(1), dst, secs);
    let wall = t0.elapsed().as_secs_f64();
    let d = stats::by_name(&stats::delta(&before, &stats::snapshot()));
    let (cpu1, _) = crate::proc_stat(pid);
    let dropped = nft_dropped(&node) - dropped0;
    let summary = w.stop();
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "nft",
        "delete table inet storm",
    ]);
    let (runs, ns, insns) = d.get(programs::DROPS_RAW).copied().unwrap_or_default();
    let b = lab.underlay_ip(2).to_string();
    let counted = summary
        .peer(&b)
        .drops
        .get("NETFILTER_DROP")
        .copied()
        .unwrap_or(0);
    let per_floor = ns_floor as f64 / runs_floor.max(1) as f64;
    let per = ns as f64 / runs.max(1) as f64;
    let cpu = (cpu1 - cpu0) / wall;
    let _ = writeln!(
        r.md,
        "\n### A drop storm\n\nPod A floods pod B with 18-byte UDP datagrams (64 per `sendmmsg`) for {secs:.0} s; a rule on node A drops each one as it arrives from the pod (prerouting, before any routing; `NETFILTER_DROP`). First with only an empty raw tracepoint on `kfree_skb`, then with vxtrace on node A.\n\n| figure | empty raw tracepoint | vxtrace |\n|---|---|---|\n| datagrams sent | {sent_floor} | {sent} |\n| dropped by the rule (nft counter) | {dropped_floor} | {dropped} |\n| drops per second | {:.0} | {:.0} |\n| drop program runs (all drops of the kernel) | {runs_floor} | {runs} |\n| ns per run | {per_floor:.1} | {per:.1} ({:.2}× the empty one) |\n| instructions verified | | {} |\n| vxtrace's CPU during the storm | | {:.2} % of one core |\n| NETFILTER_DROP counted for pod B's node | | {counted} (the rule: {dropped}; {}) |",
        dropped_floor as f64 / secs,
        dropped as f64 / wall,
        per / per_floor.max(1.0),
        insns.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        cpu * 100.0,
        if counted == dropped {
            "every drop counted"
        } else {
            "NOT EXACT"
        }
    );
    r.figure(json!({"figure": "drop_storm", "secs": secs, "sent": sent, "dropped": dropped, "drops_per_s": dropped as f64 / wall, "ns": per, "empty_ns": per_floor, "ratio_to_empty": per / per_floor.max(1.0), "runs": runs, "empty_runs": runs_floor, "cpu_core_fraction": cpu, "counted": counted, "exact": counted == dropped, "insns": insns}));
}
