//! TCP handshakes and PAWS rejects per peer (incident 6).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use vxtrace::schema::{ProbeState, Probes, Summary};
use vxtrace_tests::{
    LabGuard, RawTcp, TCP_PSH_ACK, TCP_SYN, Watcher, connect_from, json, kernel_has_reason,
    listen_in, scenarios::nft, sh, tcp_timestamp, unix_now, wait_until,
};

/// `ss -Htan FILTER` inside network namespace `ns`. Not through `sh -c`:
/// a busybox shell (the kernel matrix's guests) runs its own `ip` applet.
fn ss(ns: &str, filter: &str) -> String {
    let (code, out, err) = vxtrace_tests::run(
        std::process::Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-Htan"])
            .args(filter.split_whitespace()),
    );
    assert_eq!(code, 0, "ss: {err}");
    out
}

/// Whether this kernel can attach kprobes at all.
fn kernel_has_kprobes() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
}

/// Whether `function` is a symbol kprobes can find (not inlined away).
fn kernel_has_function(function: &str) -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|s| {
            s.lines()
                .any(|l| l.split_whitespace().nth(2) == Some(function))
        })
        .unwrap_or(false)
}

/// The status vxtrace gave one PAWS kprobe program.
fn probe_status(probes: &Probes, program: &str) -> ProbeState {
    probes
        .paws_kprobes
        .iter()
        .find(|p| p.program == program)
        .map(|p| p.status.clone())
        .unwrap_or_else(|| panic!("no status for {program}: {}", json(probes)))
}

/// The probes a summary lists.
fn summary_probes(s: &Summary) -> &Probes {
    s.probes
        .as_ref()
        .unwrap_or_else(|| panic!("no probes in the summary: {}", json(s)))
}

/// The server's SYN-ACKs are dropped by a rule on its node: the client's
/// node sees unanswered SYNs, the server's node sees the SYN-ACK drops.
#[test]
fn dropped_synacks_leave_syns_unanswered() {
    let lab = LabGuard::new("vt-syn", 3, false, 8472);
    let (a, b, c) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    nft(
        &lab.node_ns(2),
        "add table inet vt; add chain inet vt fw { type filter hook forward priority 0 ; }; add rule inet vt fw tcp sport 7777 tcp flags & (syn|ack) == syn|ack drop",
    );
    // Connection tracking on A's node (a ct rule is enough to enable it).
    nft(
        &lab.node_ns(1),
        "add table inet vtct; add chain inet vtct fw { type filter hook forward priority 0 ; }; add rule inet vtct fw ct state new accept",
    );
    let _blocked = listen_in(&lab.pod_ns(2), 7777);
    let _open = listen_in(&lab.pod_ns(2), 7778);
    let mut on_a = Watcher::start(&lab.node_ns(1), &["--syn-timeout", "1s"]);
    let on_b = Watcher::start(&lab.node_ns(2), &["--syn-timeout", "1s"]);

    let server = lab.pod_ip(2);
    let first_syn = unix_now();
    let failed = connect_from(
        &lab.pod_ns(1),
        (server, 7777).into(),
        Duration::from_millis(2500),
    );
    assert!(failed.is_err(), "the SYN-ACK should have been dropped");
    let ok = connect_from(
        &lab.pod_ns(1),
        (server, 7778).into(),
        Duration::from_secs(2),
    );
    assert!(ok.is_ok(), "{ok:?}");
    // The open handshake of the failed attempt expired (1 s) and seen: a
    // read of A's maps past its SYN timeout (with a margin for the SYN's
    // way to the hook and the line's stamp).
    on_a.wait_for_read_after(first_syn + 1.1, Duration::from_secs(10));
    let [sa, sb] = <[_; 2]>::try_from(Watcher::stop_all(vec![on_a, on_b])).unwrap();

    let (a_b, a_c) = (sa.peer(&b), sa.peer(&c));
    let (tcp, outcome) = (&a_b.counters.tcp, a_b.tcp_outcome());
    assert_eq!(outcome.unanswered_syn_out, 1, "{}", json(&sa));
    assert_eq!(outcome.unanswered_syn, 1);
    assert!(tcp.syn_retrans >= 1, "{}", json(&sa));
    assert_eq!(tcp.syn_sent, 2 + tcp.syn_retrans, "{}", json(&sa));
    assert_eq!(tcp.synack_received, 1, "{}", json(&sa));
    assert_eq!(outcome.handshake_us.count, Some(1), "{}", json(&sa));
    assert!(outcome.handshake_us.max > 0);
    assert!(a_b.hints.join("\n").contains("SYNs got no SYN-ACK"));
    assert_eq!(a_c.counters.tcp.syn_sent, 0);
    assert!(sa.conntrack.available, "{}", json(&sa.conntrack));
    assert_eq!(
        outcome.conntrack_syn_sent,
        1,
        "conntrack still holds the half-open flow: {}",
        json(&sa)
    );
    assert_eq!(a_c.tcp_outcome().conntrack_syn_sent, 0);

    let b_a = sb.peer(&a);
    let outcome = b_a.tcp_outcome();
    let dropped = outcome.synack_dropped;
    assert!(dropped >= 1, "{}", json(&sb));
    assert_eq!(
        outcome
            .synack_dropped_reasons
            .get("NETFILTER_DROP")
            .copied(),
        Some(dropped),
        "{}",
        json(&sb)
    );
    assert_eq!(
        b_a.counters.tcp.synack_sent,
        1,
        "only the open port's SYN-ACK leaves: {}",
        json(&sb)
    );
    assert_eq!(outcome.unanswered_syn_in, 1, "{}", json(&sb));
    assert!(b_a.hints.join("\n").contains("SYN-ACKs of handshakes"));
}

/// An old TCP timestamp injected into a live connection: the server's PAWS
/// check drops it, counted on the right peer, and in the kernel's TcpExt.
#[test]
fn paws_rejects_on_an_established_connection() {
    let lab = LabGuard::new("vt-paws", 3, false, 8472);
    let (a, c) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let listener = listen_in(&lab.pod_ns(2), 7779);
    let server_ns = lab.pod_ns(2);
    let scope = format!("self,{server_ns}");
    // Where the kernel has kprobes, the kprobe counts (and the kernel's
    // own reason, if any, is not counted a second time).
    let on_b = Watcher::start(
        &lab.node_ns(2),
        &["--netns", &scope, "--paws-kprobes", "always"],
    );
    let status = probe_status(&on_b.attached.probes, "vxtrace_paws_established");
    if kernel_has_kprobes() && kernel_has_function("tcp_validate_incoming") {
        assert_eq!(
            status,
            ProbeState::Attached,
            "{}",
            json(&on_b.attached.probes)
        );
    } else {
        assert!(matches!(status, ProbeState::NotAvailable(_)), "{status}");
    }

    let mut client = connect_from(
        &lab.pod_ns(1),
        (lab.pod_ip(2), 7779).into(),
        Duration::from_secs(2),
    )
    .unwrap();
    let (mut served, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    served.write_all(b"hi").unwrap();
    // Both arrived: each side's latest timestamp is the one just sent.
    let mut buf = [0u8; 5];
    served.read_exact(&mut buf).unwrap();
    client.read_exact(&mut buf[..2]).unwrap();
    // The client's timestamp now, and a segment whose clock is far behind.
    let old = tcp_timestamp(&client).wrapping_sub(1_000_000);
    RawTcp {
        src: lab.pod_ip(1),
        dst: lab.pod_ip(2),
        sport: client.local_addr().unwrap().port(),
        dport: 7779,
        flags: TCP_PSH_ACK,
        seq: 12345,
        ack: 1,
        mss: None,
        tsval: old,
        payload: b"x".to_vec(),
    }
    .send_from(&lab.pod_ns(1), 5);
    // stop() waits until B's counts settle (the rejects land).
    let sb = on_b.stop();

    assert_eq!(sb.peer(&a).tcp_outcome().paws_rejects, 5, "{}", json(&sb));
    assert_eq!(sb.peer(&c).tcp_outcome().paws_rejects, 0);
    let estab = sb
        .netstat_paws
        .namespaces
        .get(&server_ns)
        .and_then(|n| n.get("PAWSEstab"))
        .copied()
        .unwrap_or(0);
    assert!(estab >= 5, "{}", json(&sb.netstat_paws));
    assert!(
        sb.peer(&a).hints.join("\n").contains("PAWS"),
        "{}",
        json(&sb)
    );
    drop(client);
}

/// A TCP connection from `ns` bound to source port `sport` (two clients
/// behind one NAT address reusing a port).
fn connect_from_port(ns: &str, sport: u16, to: SocketAddr) -> TcpStream {
    vxtrace::netns::run_in(ns, || {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const _,
                4,
            );
            let mut local: libc::sockaddr_in = std::mem::zeroed();
            local.sin_family = libc::AF_INET as u16;
            local.sin_port = sport.to_be();
            assert_eq!(
                libc::bind(
                    fd,
                    &local as *const _ as *const _,
                    std::mem::size_of::<libc::sockaddr_in>() as u32
                ),
                0
            );
            let SocketAddr::V4(v4) = to else {
                panic!("IPv4 only")
            };
            let mut remote: libc::sockaddr_in = std::mem::zeroed();
            remote.sin_family = libc::AF_INET as u16;
            remote.sin_port = v4.port().to_be();
            remote.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            let rc = libc::connect(
                fd,
                &remote as *const _ as *const _,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
            Ok(TcpStream::from_raw_fd(fd))
        }
    })
    .unwrap()
}

/// Incident 6 with modern kernels: two clients behind one SNAT address use
/// the same source port against a server that closed first. The second
/// client's clock is behind the first's, so the server's TIME_WAIT socket
/// rejects its SYN (PAWS): counted on the server's node, and the client's
/// node sees a SYN that got no SYN-ACK.
#[allow(
    clippy::too_many_lines,
    reason = "tests are exempt: a test's steps and its table of cases read in order"
)]
#[test]
fn nat_and_time_wait_reuse_reject_syns() {
    let lab = LabGuard::new("vt-tw", 2, false, 8472);
    let (a, b) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(2).to_string(),
    );
    let node_a = lab.node_ns(1);
    // A second client namespace on node A (cleaned up with the lab).
    let client2 = format!("{}-p9", lab.name);
    sh(&["ip", "netns", "add", &client2]);
    sh(&[
        "ip", "-n", &node_a, "link", "add", "veth9", "mtu", "1450", "type", "veth", "peer", "name",
        "eth0", "netns", &client2,
    ]);
    sh(&[
        "ip", "-n", &node_a, "link", "set", "veth9", "master", "cni0", "up",
    ]);
    sh(&["ip", "-n", &client2, "link", "set", "lo", "up"]);
    sh(&[
        "ip", "-n", &client2, "link", "set", "eth0", "mtu", "1450", "up",
    ]);
    sh(&[
        "ip",
        "-n",
        &client2,
        "addr",
        "add",
        "10.244.0.3/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &client2,
        "route",
        "add",
        "default",
        "via",
        "10.244.0.1",
    ]);
    // Node A hides its pods behind its VTEP address.
    nft(
        &node_a,
        "add table ip vtnat; add chain ip vtnat post { type nat hook postrouting priority 100 ; }; add rule ip vtnat post ip saddr 10.244.0.0/24 ip daddr 10.244.1.0/24 snat to 10.244.0.0",
    );
    let listener = listen_in(&lab.pod_ns(2), 8080);
    let server_ns = lab.pod_ns(2);
    let mut on_a = Watcher::start(&node_a, &["--syn-timeout", "500ms", "--interval", "200ms"]);
    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", &format!("self,{server_ns}")]);

    // Client 1: a whole connection; the server closes first (TIME_WAIT).
    let server = SocketAddr::from((lab.pod_ip(2), 8080));
    let mut c1 = connect_from_port(&lab.pod_ns(1), 40000, server);
    let (mut s1, _) = listener.accept().unwrap();
    // Read what was sent: closing with unread data would send a RST
    // instead of a FIN, and leave no TIME_WAIT behind.
    let mut buf = [0u8; 16];
    c1.write_all(b"request").unwrap();
    s1.read_exact(&mut buf[..7]).unwrap();
    s1.write_all(b"response").unwrap();
    c1.read_exact(&mut buf[..8]).unwrap();
    let tsval = tcp_timestamp(&c1);
    drop(s1); // server: active close
    // The server's FIN reached the client (it reads the end of the
    // stream): the client closes second.
    c1.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c1.read(&mut buf).unwrap(), 0, "the server's FIN");
    drop(c1);
    // The close is over: the server's socket in TIME_WAIT, the client's
    // gone (its last ACK came back through the NAT before it forgets).
    wait_until(
        "the server's socket in TIME_WAIT and the client's closed",
        Duration::from_secs(5),
        || {
            ss(&server_ns, "state time-wait sport = :8080").contains(":8080")
                && !ss(&lab.pod_ns(1), "sport = :40000").contains(":40000")
        },
    );
    // The NAT forgets the mapping, so client 2 gets the same port.
    sh(&["ip", "netns", "exec", &node_a, "conntrack", "-F"]);

    // Client 2: same port after SNAT, its clock far behind client 1's.
    let syn_at = unix_now();
    RawTcp {
        src: "10.244.0.3".parse().unwrap(),
        dst: lab.pod_ip(2),
        sport: 40000,
        dport: 8080,
        flags: TCP_SYN,
        seq: 777,
        ack: 0,
        mss: Some(1400),
        tsval: tsval.wrapping_sub(5_000_000),
        payload: Vec::new(),
    }
    .send_from(&client2, 1);
    // Client 2's SYN left unanswered past A's SYN timeout (500 ms), and A
    // read its maps since (a margin for the stamp); B's reject counted as
    // its counts settle.
    on_a.wait_for_read_after(syn_at + 0.6, Duration::from_secs(10));
    let [sa, sb] = <[_; 2]>::try_from(Watcher::stop_all(vec![on_a, on_b])).unwrap();

    // Kernels without the TIME_WAIT reason count it with the kprobe.
    let status = probe_status(summary_probes(&sb), "vxtrace_paws_time_wait");
    if kernel_has_reason("TCP_RFC7323_TW_PAWS") {
        assert!(matches!(status, ProbeState::Skipped(_)), "{status}");
    } else {
        assert!(
            kernel_has_kprobes(),
            "this kernel cannot see TIME_WAIT PAWS rejects"
        );
        assert_eq!(
            status,
            ProbeState::Attached,
            "{}",
            json(summary_probes(&sb))
        );
    }
    let b_a = sb.peer(&a);
    assert_eq!(
        b_a.drops.get("TCP_RFC7323_TW_PAWS"),
        Some(&1),
        "{}",
        json(&sb)
    );
    assert_eq!(b_a.tcp_outcome().paws_rejects, 1, "{}", json(&sb));
    // The kernel's own counter: PAWSTimewait where it exists (6.15+);
    // older kernels count TIME_WAIT rejects as PAWSEstab.
    let server_counters = sb
        .netstat_paws
        .namespaces
        .get(&server_ns)
        .cloned()
        .unwrap_or_default();
    if let Some(timewait) = server_counters.get("PAWSTimewait") {
        assert_eq!(*timewait, 1, "{}", json(&sb.netstat_paws));
    } else {
        let estab = server_counters.get("PAWSEstab").copied().unwrap_or(0);
        assert!(estab >= 1, "{}", json(&sb.netstat_paws));
    }
    // The SNAT shows on B as A's VTEP address for an inner source.
    assert!(b_a.counters.tcp.syn_received >= 2);
    assert!(b_a.counters.inner_src_vtep > 0);
    let a_b = sa.peer(&b);
    assert_eq!(a_b.tcp_outcome().unanswered_syn_out, 1, "{}", json(&sa));
    assert_eq!(
        a_b.counters.tcp.synack_received,
        1,
        "only client 1 was answered: {}",
        json(&sa)
    );
}

/// `--paws-kprobes always`: attached where the kernel has kprobes and the
/// function, else reported as not available; the run goes on either way.
/// By default a probe is used only where the kernel lacks its drop reason.
#[test]
fn paws_kprobes_report_what_the_kernel_offers() {
    let lab = LabGuard::new("vt-kp", 2, false, 8472);
    /// What a probe's status should be, in words, and the test of it.
    type Expected = (&'static str, fn(&ProbeState) -> bool);
    let expected = |mode: &str, target: &str, reason: &str| -> Expected {
        if mode == "auto" && kernel_has_reason(reason) {
            ("skipped", |s| matches!(s, ProbeState::Skipped(_)))
        } else if kernel_has_kprobes() && kernel_has_function(target) {
            ("attached", |s| *s == ProbeState::Attached)
        } else {
            ("not available on this kernel", |s| {
                matches!(s, ProbeState::NotAvailable(_))
            })
        }
    };
    for mode in ["always", "auto"] {
        let w = Watcher::start(&lab.node_ns(1), &["--paws-kprobes", mode]);
        let probes = &w.attached.probes.paws_kprobes;
        assert_eq!(probes.len(), 2, "{probes:?}");
        for k in vxtrace::probes::PAWS_KPROBES {
            let status = probe_status(&w.attached.probes, k.program);
            let (want, holds) = expected(mode, k.target, k.reason);
            assert!(
                holds(&status),
                "--paws-kprobes {mode}: {} on {}: {status}, expected {want}",
                k.program,
                k.target
            );
        }
        assert_eq!(lab.ping(1, 2, 3, Duration::ZERO).unwrap(), 3);
        let s = w.stop();
        assert_eq!(summary_probes(&s).paws_kprobes.len(), 2);
    }
}
