//! Start, stop and crash: clean exits print the summary; nothing of
//! vxtrace's stays in the kernel after any exit, SIGKILL included.

use std::{
    io::{BufRead as _, BufReader},
    process::Command,
    time::{Duration, Instant},
};

use vxtrace::schema::Line;
use vxtrace_tests::{LabGuard, Watcher, bin, json, run};

/// Names of loaded BPF programs that are vxtrace's (the kernel keeps the
/// first 15 characters of a name).
fn loaded_vxtrace_programs() -> Vec<String> {
    let (code, out, err) = run(Command::new("bpftool").args(["-j", "prog", "show"]));
    assert_eq!(code, 0, "bpftool: {err}");
    let progs: serde_json::Value = serde_json::from_str(&out).unwrap();
    progs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| n.starts_with("vxtrace_"))
        .map(str::to_string)
        .collect()
}

/// How many filters on `dev` (both directions) run `program`.
fn filters_running(ns: &str, dev: &str, program: &str) -> usize {
    tc_filters(ns, dev).matches(program).count()
}

/// TC filters (clsact) on a device of a namespace, both directions.
fn tc_filters(ns: &str, dev: &str) -> String {
    let mut all = String::new();
    for dir in ["ingress", "egress"] {
        let (_, out, _) =
            run(Command::new("tc").args(["-n", ns, "filter", "show", "dev", dev, dir]));
        all.push_str(&out);
    }
    all
}

/// tcx links the kernel reports for a device of a namespace.
fn tcx_programs(ns: &str, dev: &str) -> usize {
    let (_, out, _) = run(Command::new("ip").args([
        "netns", "exec", ns, "bpftool", "-j", "net", "show", "dev", dev,
    ]));
    out.matches("vxtrace_").count()
}

/// What the kernel does at once after vxtrace exits: within 5 s.
fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    vxtrace_tests::wait_until(what, Duration::from_secs(5), cond);
}

fn sigkill_leaves_nothing(attach: &str) {
    let lab = LabGuard::new(&format!("vt-kill-{attach}"), 2, false, 8472);
    let ns = lab.node_ns(1);
    assert!(
        loaded_vxtrace_programs().is_empty(),
        "programs left by an earlier run"
    );
    let w = Watcher::start(&ns, &["--attach", attach]);
    let modes: Vec<&str> = w
        .attached
        .attached
        .iter()
        .map(|a| a.mode.as_str())
        .collect();
    assert_eq!(modes, vec![attach; 4]);
    // While running, the kernel shows the programs.
    assert!(!loaded_vxtrace_programs().is_empty());
    if attach == "clsact" {
        assert!(
            tc_filters(&ns, "eth0").contains("vxtrace_nic"),
            "{}",
            tc_filters(&ns, "eth0")
        );
        assert!(tc_filters(&ns, "flannel.1").contains("vxtrace_vxlan"));
    }
    w.kill();
    wait_until("vxtrace's programs to leave the kernel", || {
        loaded_vxtrace_programs().is_empty()
    });
    for dev in ["eth0", "flannel.1"] {
        let filters = tc_filters(&ns, dev);
        assert!(!filters.contains("vxtrace"), "{dev}: {filters}");
        assert_eq!(tcx_programs(&ns, dev), 0);
    }
    // And the overlay still works.
    assert_eq!(lab.ping(1, 2, 5, Duration::ZERO).unwrap(), 5);
}

#[test]
fn sigkill_tcx_leaves_nothing_attached() {
    sigkill_leaves_nothing("tcx");
}

#[test]
fn sigkill_clsact_leaves_nothing_attached() {
    sigkill_leaves_nothing("clsact");
}

/// Two vxtrace runs on one node with clsact (kernels before 6.6): each
/// counts every packet, and one that is killed takes only its own filters
/// away, not the other's.
#[test]
fn two_clsact_runs_keep_their_own_filters() {
    let lab = LabGuard::new("vt-two", 2, false, 8472);
    let ns = lab.node_ns(1);
    let b = lab.underlay_ip(2).to_string();
    let first = Watcher::start(&ns, &["--attach", "clsact"]);
    let second = Watcher::start(&ns, &["--attach", "clsact"]);
    assert_eq!(
        filters_running(&ns, "eth0", "vxtrace_nic_egress"),
        2,
        "{}",
        tc_filters(&ns, "eth0")
    );
    assert_eq!(lab.ping(1, 2, 5, Duration::ZERO).unwrap(), 5);
    first.kill();
    wait_until("the killed run's filters to go", || {
        filters_running(&ns, "eth0", "vxtrace_nic_egress") == 1
    });
    assert_eq!(filters_running(&ns, "flannel.1", "vxtrace_vxlan_egress"), 1);
    assert_eq!(lab.ping(1, 2, 3, Duration::ZERO).unwrap(), 3);
    let s = second.stop();
    let p = s.peer(&b).counters;
    assert_eq!(p.tx_encap.packets, 8, "{}", json(&s));
    assert_eq!(p.tx_dev.packets, 8, "{}", json(&s));
    assert_eq!(p.rx_nic.packets, 8, "{}", json(&s));
    for dev in ["eth0", "flannel.1"] {
        let filters = tc_filters(&ns, dev);
        assert!(!filters.contains("vxtrace"), "{dev}: {filters}");
    }
}

/// The DaemonSet's run lives in its pod's own PID namespace, where a run
/// started by hand on the node is not in /proc. Starting there (clsact,
/// where filters outlive a killed run and the next run removes them), it
/// must still leave the hand-started run's filters be: that run keeps
/// counting every packet.
#[test]
fn a_run_in_another_pid_namespace_leaves_a_live_runs_filters_be() {
    let lab = LabGuard::new("vt-pidns", 2, false, 8472);
    let ns = lab.node_ns(1);
    let b = lab.underlay_ip(2).to_string();
    let by_hand = Watcher::start(&ns, &["--attach", "clsact"]);
    // The pod's run: a PID namespace and /proc of its own, the node's
    // network namespace. It attaches, runs a second and exits.
    let (code, _, err) = run(Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(["unshare", "--pid", "--fork", "--mount-proc"])
        .arg(bin())
        .args(["watch", "--json", "--netns", "self", "--attach", "clsact"])
        .args(["--duration", "1s"]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        filters_running(&ns, "eth0", "vxtrace_nic_egress"),
        1,
        "{}",
        tc_filters(&ns, "eth0")
    );
    assert_eq!(lab.ping(1, 2, 5, Duration::ZERO).unwrap(), 5);
    let s = by_hand.stop();
    let p = s.peer(&b).counters;
    assert_eq!(
        (
            p.tx_dev.packets,
            p.tx_encap.packets,
            p.rx_nic.packets,
            p.rx_decap.packets
        ),
        (5, 5, 5, 5),
        "{}",
        json(&s)
    );
}

#[test]
fn sigint_and_sigterm_exit_cleanly_with_summary() {
    let lab = LabGuard::new("vt-sig", 2, false, 8472);
    let b = lab.underlay_ip(2).to_string();
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let mut w = Watcher::start(&lab.node_ns(1), &[]);
        assert_eq!(lab.ping(1, 2, 12, Duration::ZERO).unwrap(), 12);
        w.settle();
        unsafe { libc::kill(w.pid(), sig) };
        let s = w.finish();
        assert_eq!(s.peer(&b).counters.tx_encap.packets, 12, "{}", json(&s));
        wait_until("programs gone", || loaded_vxtrace_programs().is_empty());
    }
}

#[test]
fn duration_ends_the_run_with_interval_lines_and_summary() {
    let lab = LabGuard::new("vt-dur", 2, false, 8472);
    let b = lab.underlay_ip(2).to_string();
    let mut w = Watcher::start(
        &lab.node_ns(1),
        &["--duration", "3s", "--interval", "500ms"],
    );
    assert_eq!(lab.ping(1, 2, 40, Duration::from_millis(10)).unwrap(), 40);
    let Some(Line::Interval(first)) =
        w.next_matching(|l| matches!(l, Line::Interval(_)), Duration::from_secs(5))
    else {
        panic!("no interval line")
    };
    assert!(first.interval_s > 0.3, "{first:?}");
    let s = w.finish();
    let d = s.duration_s;
    assert!((2.9..6.0).contains(&d), "duration {d}");
    let p = s.peer(&b);
    assert_eq!(p.counters.tx_encap.packets, 40);
    let rates = p
        .rates_pps
        .unwrap_or_else(|| panic!("no rates: {}", json(&s)))
        .tx_encap;
    assert!(rates.max > 0, "{}", json(&s));
}

/// Without --json and without a terminal: plain lines and a summary table.
#[test]
fn plain_output_when_not_a_terminal() {
    let lab = LabGuard::new("vt-plain", 2, false, 8472);
    let b = lab.underlay_ip(2).to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(1)])
        .arg(bin())
        .args(["watch", "--duration", "2s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Plain output has no "attached" line: stderr names each program
    // attached, then the drop hook, once all are in place.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = String::new();
    while !log.contains("vxtrace: drops: ") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push_str(&format!("{line}\n")),
            Err(_) => panic!("vxtrace did not attach within 120 s; stderr: {log}"),
        }
    }
    assert_eq!(lab.ping(1, 2, 9, Duration::ZERO).unwrap(), 9);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("peer={b}")), "{stdout}");
    assert!(stdout.contains("=== summary"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "escape codes on a pipe");
    reader.join().unwrap();
    log.extend(rx.try_iter().map(|l| format!("{l}\n")));
    let stderr = log;
    assert!(
        stderr.contains("attached vxtrace_nic_ingress on eth0 ingress"),
        "{stderr}"
    );
}
