//! What the kernel programs cost: alone (BPF_PROG_TEST_RUN on a crafted
//! frame), at their hooks under real lab traffic beside an empty program at
//! the same hooks, and the drop program during a drop storm beside an empty
//! program on the same tracepoint.

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

/// The traffic a per-hook window carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// 64-byte UDP from pod A to pod B over the overlay at 40 Mbit/s: one
    /// peer, one flow, the smallest packets.
    OverlayUdp64,
    /// TCP from pod A to pod B over the overlay at full speed: GSO/GRO
    /// aggregates, many segments per run.
    OverlayTcp,
    /// 64-byte UDP between the two nodes' own addresses, not over the
    /// overlay: what the underlay programs cost on traffic that is not
    /// VXLAN (the VXLAN devices see none of it).
    UnderlayUdp64,
    /// VXLAN packets from 1,000 peer addresses in turn, as fast as one
    /// raw socket sends: every peer of a node in a 1,000-node cluster
    /// talking at once, each packet a different peer's counters.
    ClusterPeers,
    /// The same from 10,000 peer addresses: more peers than any node of
    /// such a cluster has, their counters far beyond the caches.
    ManyPeers,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::OverlayUdp64,
        Shape::OverlayTcp,
        Shape::UnderlayUdp64,
        Shape::ClusterPeers,
        Shape::ManyPeers,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Shape::OverlayUdp64 => "overlay_udp64",
            Shape::OverlayTcp => "overlay_tcp",
            Shape::UnderlayUdp64 => "underlay_udp64",
            Shape::ClusterPeers => "cluster_peers",
            Shape::ManyPeers => "many_peers",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Shape::OverlayUdp64 => "64-byte UDP, pod A to pod B over the overlay, 40 Mbit/s",
            Shape::OverlayTcp => {
                "TCP, pod A to pod B over the overlay, full speed (GSO aggregates)"
            }
            Shape::UnderlayUdp64 => {
                "64-byte UDP between the nodes' own addresses at 40 Mbit/s (not VXLAN)"
            }
            Shape::ClusterPeers => {
                "VXLAN from 1,000 peer addresses in turn (every peer of a node in a 1,000-node cluster), one raw socket's speed"
            }
            Shape::ManyPeers => "VXLAN from 10,000 peer addresses in turn, one raw socket's speed",
        }
    }

    /// Runs this traffic for `secs`.
    fn run(self, lab: &LabGuard, secs: u32) {
        match self {
            Shape::OverlayUdp64 => iperf(&lab.pod_ns(1), lab.pod_ip(2).into(), 5201, secs, true),
            Shape::OverlayTcp => iperf(&lab.pod_ns(1), lab.pod_ip(2).into(), 5201, secs, false),
            Shape::UnderlayUdp64 => iperf(&lab.node_ns(1), lab.underlay_ip(2), 5202, secs, true),
            Shape::ClusterPeers | Shape::ManyPeers => {
                let peers = if self == Shape::ClusterPeers {
                    1_000
                } else {
                    10_000
                };
                let _ = crate::userspace::spray(
                    lab,
                    peers,
                    secs.into(),
                    crate::userspace::Pacing::Flood,
                )
                .join();
            }
        }
    }
}

/// One iperf3 client run from `ns` to `dst:port` for `secs`: 64-byte UDP
/// at 40 Mbit/s, or TCP at full speed.
fn iperf(ns: &str, dst: IpAddr, port: u16, secs: u32, udp64: bool) {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "iperf3", "-c"])
        .arg(dst.to_string())
        .args(["-p", &port.to_string(), "-t", &secs.to_string()]);
    if udp64 {
        c.args(["-u", "-l", "64", "-b", "40M"]);
    }
    let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// One program's runs and ns per run in each window, and the empty
/// program's beside it in the same windows.
#[derive(Default)]
struct Paired {
    runs: Vec<f64>,
    ns: Vec<f64>,
    empty_ns: Vec<f64>,
}

/// ns per run of each vxtrace TC program beside the empty program in the
/// same chain at the same hook, under each traffic [`Shape`]: vxtrace
/// runs on both nodes, first at each hook, with the empty program
/// attached after it, so both see the same packets in the same window.
pub fn per_hook(r: &mut Report, lab: &LabGuard, rounds: usize, shapes: &[Shape]) {
    let _stats = stats::StatsEnabled::new();
    let namespaces = [lab.node_ns(1), lab.node_ns(2)];
    let mut server = crate::iperf_server(lab);
    let mut underlay_server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.node_ns(2),
            "iperf3",
            "-s",
            "-p",
            "5202",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server on node B");
    let secs = 3;
    let a = Watcher::start(&namespaces[0], &[]);
    let b = Watcher::start(&namespaces[1], &[]);
    let floor = Floor::attach(&namespaces, &HOOKS, false).expect("the empty programs");
    let mut paired: Vec<Vec<Paired>> = Shape::ALL
        .iter()
        .map(|_| HOOKS.iter().map(|_| Paired::default()).collect())
        .collect();
    // Shapes interleaved round by round, so a slow spell of the machine
    // falls on all of them alike.
    for _ in 0..rounds {
        for (s, shape) in Shape::ALL.iter().enumerate() {
            if !shapes.contains(shape) {
                continue;
            }
            let before = stats::snapshot();
            shape.run(lab, secs);
            let d = stats::delta(&before, &stats::snapshot());
            let named = stats::by_name(&d);
            for (h, hook) in HOOKS.iter().enumerate() {
                let (fruns, fns) = stats::by_ids(&d, &floor.ids_for(hook.program));
                let (runs, ns, _) = named.get(hook.program).copied().unwrap_or_default();
                let p = &mut paired[s][h];
                p.runs.push(runs as f64);
                p.ns.push(ns as f64 / runs.max(1) as f64);
                p.empty_ns.push(fns as f64 / fruns.max(1) as f64);
            }
        }
    }
    let sizes = program_sizes();
    drop(floor);
    a.stop();
    b.stop();
    for s in [&mut server, &mut underlay_server] {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = writeln!(
        r.md,
        "\n### At the hooks under real traffic, paired with an empty program\n\nvxtrace on both nodes, first at each of its hooks, and an empty program attached after it in the same chain: both run on the same packets in the same window. {rounds} rounds of {secs} s per traffic shape, shapes interleaved; ns per run from the kernel's run-time statistics (`kernel.bpf_stats_enabled`, which adds its own clock reads to every run, to the empty program and to vxtrace alike); the median of the rounds, their range in brackets, and the median of each round's ratio."
    );
    for (s, shape) in Shape::ALL.iter().enumerate() {
        if shapes.contains(shape) {
            hook_table(r, *shape, &mut paired[s]);
        }
    }
    size_table(r, &sizes);
}

/// One shape's table of [`per_hook`].
fn hook_table(r: &mut Report, shape: Shape, paired: &mut [Paired]) {
    let _ = writeln!(
        r.md,
        "\n{}:\n\n| program | runs per round | empty program (ns/run) | vxtrace (ns/run) | above the empty one (ns) | × empty | ≤ 2× empty? |\n|---|---|---|---|---|---|---|",
        shape.describe()
    );
    for (h, hook) in HOOKS.iter().enumerate() {
        let p = &mut paired[h];
        let runs = median(&mut p.runs.clone());
        if runs < 1000.0 {
            let _ = writeln!(
                r.md,
                "| {} | {runs:.0} | | | | | not run by this traffic |",
                hook.program
            );
            continue;
        }
        let mut ratios: Vec<f64> =
            p.ns.iter()
                .zip(&p.empty_ns)
                .map(|(v, f)| v / f.max(1.0))
                .collect();
        let ratio = median(&mut ratios);
        let (f, v) = (median(&mut p.empty_ns.clone()), median(&mut p.ns.clone()));
        let (vlo, vhi) = spread(&p.ns);
        let _ = writeln!(
            r.md,
            "| {} | {runs:.0} | {f:.1} | {v:.1} ({vlo:.0}–{vhi:.0}) | {:.1} | {ratio:.2} | {} |",
            hook.program,
            v - f,
            if ratio <= 2.0 { "held" } else { "not held" }
        );
        r.figure(json!({"figure": "hook_ns", "shape": shape.id(), "program": hook.program, "runs": runs, "empty_ns": f, "ns": v, "above_empty_ns": v - f, "ratio_to_empty": ratio, "rounds_empty": p.empty_ns, "rounds": p.ns}));
    }
}

/// The size of each loaded vxtrace program: instructions after the
/// verifier's rewrites (what runs, before JIT), instructions the verifier
/// walked, bytes of machine code.
#[derive(Clone, Copy, Default)]
struct ProgramSize {
    xlated: u32,
    verified: u32,
    jited_bytes: u32,
}

fn program_sizes() -> Vec<(&'static str, ProgramSize)> {
    let mut out: Vec<(&'static str, ProgramSize)> = Vec::new();
    for p in aya::programs::loaded_programs().filter_map(Result::ok) {
        let Some(name) = p.name_as_str().and_then(stats::full_name) else {
            continue;
        };
        if out.iter().any(|(n, _)| *n == name) {
            continue;
        }
        out.push((
            name,
            ProgramSize {
                xlated: p.size_translated().unwrap_or(0) / 8,
                verified: p.verified_instruction_count().unwrap_or(0),
                jited_bytes: p.size_jitted(),
            },
        ));
    }
    out.sort_by_key(|(n, _)| *n);
    out
}

fn size_table(r: &mut Report, sizes: &[(&'static str, ProgramSize)]) {
    let _ = writeln!(
        r.md,
        "\nProgram sizes (the kernel's program info):\n\n| program | instructions (after the verifier's rewrites) | instructions verified | machine code (bytes) |\n|---|---|---|---|"
    );
    for (name, s) in sizes {
        let _ = writeln!(
            r.md,
            "| {name} | {} | {} | {} |",
            s.xlated, s.verified, s.jited_bytes
        );
        r.figure(json!({"figure": "program_size", "program": name, "xlated_insns": s.xlated, "verified_insns": s.verified, "jited_bytes": s.jited_bytes}));
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
/// every datagram as it arrives. The drop program's cost per drop beside
/// an empty program on the same tracepoint attached in the same windows (both run on every
/// drop), vxtrace's own CPU during it, and whether every drop was counted.
pub fn drop_storm(r: &mut Report, lab: &LabGuard, rounds: usize, secs: f64) {
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
    // As a node runs it by default: drops of every namespace count.
    let w = Watcher::start(&node, &["--netns", "all"]);
    let floor = Floor::attach(&[], &[], true).expect("the empty drop program");
    let pid = w.pid() as u32;
    let (cpu0, _) = crate::proc_stat(pid);
    let dropped0 = nft_dropped(&node);
    let (mut ns, mut empty_ns, mut ratios, mut rates) = (vec![], vec![], vec![], vec![]);
    let (mut sent, mut wall, mut insns) = (0, 0.0, None);
    for _ in 0..rounds {
        let (before, d0) = (stats::snapshot(), nft_dropped(&node));
        let t0 = Instant::now();
        sent += flood(&lab.pod_ns(1), dst, secs);
        let elapsed = t0.elapsed().as_secs_f64();
        wall += elapsed;
        let d = stats::delta(&before, &stats::snapshot());
        rates.push((nft_dropped(&node) - d0) as f64 / elapsed);
        let (fruns, fns) = stats::by_ids(&d, &floor.ids_for(programs::DROPS_BTF));
        // The kernel keeps 15 characters of a program's name, which the
        // three drop programs share; a vxtrace loads one of them.
        let named = stats::by_name(&d);
        let (runs, vns, n) = named.get(programs::DROPS_BTF).copied().unwrap_or_default();
        insns = insns.or(n);
        let (v, f) = (
            vns as f64 / runs.max(1) as f64,
            fns as f64 / fruns.max(1) as f64,
        );
        ns.push(v);
        empty_ns.push(f);
        ratios.push(v / f.max(1.0));
    }
    let (cpu1, _) = crate::proc_stat(pid);
    let dropped = nft_dropped(&node) - dropped0;
    drop(floor);
    let summary = w.stop();
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "nft",
        "delete table inet storm",
    ]);
    let b = lab.underlay_ip(2).to_string();
    let counted = summary
        .peer(&b)
        .drops
        .get("NETFILTER_DROP")
        .copied()
        .unwrap_or(0);
    let (per, per_floor, ratio) = (
        median(&mut ns.clone()),
        median(&mut empty_ns.clone()),
        median(&mut ratios),
    );
    let rate = median(&mut rates);
    let cpu = (cpu1 - cpu0) / wall;
    let _ = writeln!(
        r.md,
        "\n### A drop storm\n\nPod A floods pod B with 18-byte UDP datagrams (64 per `sendmmsg`, one sender per CPU); a rule on node A drops each one as it arrives from the pod (prerouting, before any routing; `NETFILTER_DROP`). vxtrace runs on node A (its drop program on the BTF-typed tracepoint) and an empty BTF-typed tracepoint program on `kfree_skb` beside it: both run on every drop in the same windows. {rounds} rounds of {secs:.0} s, medians.\n\n| figure | value |\n|---|---|\n| datagrams sent | {sent} |\n| dropped by the rule (nft counter) | {dropped} |\n| drops per second | {rate:.0} |\n| empty program, ns per run | {per_floor:.1} |\n| vxtrace's drop program, ns per run | {per:.1} ({:.0}–{:.0}) |\n| above the empty one | {:.1} ns ({ratio:.2}×) |\n| instructions verified | {} |\n| vxtrace's CPU during the storm | {:.2} % of one core |\n| NETFILTER_DROP counted for pod B's node | {counted} (the rule: {dropped}; {}) |",
        spread(&ns).0,
        spread(&ns).1,
        per - per_floor,
        insns.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        cpu * 100.0,
        if counted == dropped {
            "every drop counted"
        } else {
            "NOT EXACT"
        }
    );
    r.figure(json!({"figure": "drop_storm", "secs": secs, "rounds": rounds, "sent": sent, "dropped": dropped, "drops_per_s": rate, "ns": per, "empty_ns": per_floor, "above_empty_ns": per - per_floor, "ratio_to_empty": ratio, "rounds_ns": ns, "rounds_empty_ns": empty_ns, "cpu_core_fraction": cpu, "counted": counted, "exact": counted == dropped, "insns": insns}));
}
