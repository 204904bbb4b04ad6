//! Long-running capture: outages, one-way peers, recordings and `report`.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use vxtrace::schema::{Line, Outage, Report, ReportPeer};
use vxtrace_tests::{
    LabGuard, Watcher, bin, connect_from, json, listen_in, run,
    scenarios::{drop_vxlan_at_input, nft},
    sh, wait_until,
};

/// Steady traffic from pod 1 to `to`, until `until`.
fn steady(lab: &LabGuard, to: u8, until: Instant) -> std::thread::JoinHandle<()> {
    let lab = lab.lab.clone();
    std::thread::spawn(move || {
        while Instant::now() < until {
            let _ = lab.ping(1, to, 5, Duration::from_millis(20));
        }
    })
}

/// Drops frames between two bridge ports of the underlay (both ways).
fn block(lab: &LabGuard, ports: &[&str]) {
    let br = lab.bridge_ns();
    nft(
        &br,
        "add table bridge vtblock; add chain bridge vtblock fw { type filter hook forward priority 0 ; }",
    );
    for p in ports {
        nft(
            &br,
            &format!("add rule bridge vtblock fw iifname \"{p}\" drop"),
        );
        nft(
            &br,
            &format!("add rule bridge vtblock fw oifname \"{p}\" drop"),
        );
    }
}

fn unblock(lab: &LabGuard) {
    nft(&lab.bridge_ns(), "delete table bridge vtblock");
}

fn events(w: &mut Watcher, until: Instant) -> Vec<Line> {
    let mut out = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match w.next_line(left) {
            Some(Line::Interval(_)) => {}
            Some(l) => out.push(l),
            None => break,
        }
    }
    out
}

#[test]
fn outages_one_peer_then_two_together() {
    let lab = LabGuard::new("vt-out", 3, false, 8472);
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let mut w = Watcher::start(&lab.node_ns(1), &["--interval", "250ms"]);
    let end = Instant::now() + Duration::from_secs(16);
    let t1 = steady(&lab, 2, end);
    let t2 = steady(&lab, 3, end);
    // Steady traffic from both, as the watcher sees it (2 s at 250 ms):
    // each peer has arrivals before its outage.
    let mut seen: Vec<Line> = w
        .hearing_from(
            &[lab.underlay_ip(2), lab.underlay_ip(3)],
            8,
            Duration::from_secs(20),
        )
        .into_iter()
        .filter(|l| !matches!(l, Line::Interval(_)))
        .collect();
    // B alone, 3 s (node B's bridge port). The length of the outage is
    // what is tested: a plain sleep.
    block(&lab, &["veth2"]);
    std::thread::sleep(Duration::from_secs(3));
    unblock(&lab);
    seen.extend(events(&mut w, Instant::now() + Duration::from_secs(3)));
    // Node A cut off from both (again a length under test).
    block(&lab, &["veth1"]);
    std::thread::sleep(Duration::from_secs(3));
    unblock(&lab);
    seen.extend(events(&mut w, Instant::now() + Duration::from_secs(3)));
    t1.join().unwrap();
    t2.join().unwrap();
    let s = w.stop();

    let ends: Vec<&Outage> = seen
        .iter()
        .filter_map(|e| match e {
            Line::OutageEnd(o) => Some(o),
            _ => None,
        })
        .collect();
    let b_ends: Vec<&&Outage> = ends.iter().filter(|e| e.peer.to_string() == b).collect();
    let c_ends: Vec<&&Outage> = ends.iter().filter(|e| e.peer.to_string() == c).collect();
    assert_eq!(b_ends.len(), 2, "{seen:?}");
    assert_eq!(
        c_ends.len(),
        1,
        "C had one outage (the second block): {seen:?}"
    );
    let first = b_ends[0].duration_s.unwrap();
    assert!((first - 3.0).abs() <= 1.0, "{first}");
    assert!(b_ends[0].silent_together.is_empty());
    let groups: Vec<&Line> = seen
        .iter()
        .filter(|e| matches!(e, Line::OutageGroup(_)))
        .collect();
    assert_eq!(groups.len(), 1, "{seen:?}");
    let Line::OutageGroup(group) = groups[0] else {
        unreachable!("filtered for outage groups")
    };
    let mut members: Vec<String> = group.peers.iter().map(|p| p.to_string()).collect();
    members.sort();
    assert_eq!(members, vec![b.clone(), c.clone()]);
    let (sb, sc) = (s.peer(&b), s.peer(&c));
    assert_eq!(sb.silences.outages.len(), 2, "{}", json(&s));
    assert_eq!(sc.silences.outages.len(), 1);
    assert!(!sb.silences.one_way);
    // Both silences of B are in its gap histogram; the longest is ~3 s.
    assert_eq!(sb.silences.rx_silences_ms.count, Some(2), "{}", json(&s));
    let longest = sb.silences.rx_silences_ms.max;
    assert!((2000..=4200).contains(&longest), "{longest}");
}

fn report(files: &[&std::path::Path]) -> Report {
    let (code, out, err) = run(Command::new(bin()).arg("report").arg("--json").args(files));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a report ({e}): {out}"))
}

/// A peer of the report (which must list it).
fn report_peer<'a>(r: &'a Report, peer: &str) -> &'a ReportPeer {
    let addr: std::net::IpAddr = peer.parse().unwrap();
    r.peers
        .get(&addr)
        .unwrap_or_else(|| panic!("no {peer} in the report: {}", json(r)))
}

/// A peer's likely causes as JSON, for searching.
fn causes(r: &Report, peer: &str) -> String {
    json(&report_peer(r, peer).causes)
}

#[test]
fn report_names_a_one_way_peer_and_survives_sigkill() {
    let lab = LabGuard::new("vt-rep", 3, false, 8472);
    let dir = std::env::temp_dir().join(format!("vt-rep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("a.ndjson");
    let _ = std::fs::remove_file(&file);
    // Node 3's packets to node 1 vanish: one-way from A's side.
    let route = format!("{}/32", lab.underlay_ip(1));
    sh(&[
        "ip",
        "-n",
        &lab.node_ns(3),
        "route",
        "add",
        "blackhole",
        &route,
    ]);
    let mut w = Watcher::start(
        &lab.node_ns(1),
        &["--record", file.to_str().unwrap(), "--interval", "300ms"],
    );
    assert_eq!(lab.ping(1, 2, 20, Duration::ZERO).unwrap(), 20);
    assert_eq!(lab.ping(1, 3, 6, Duration::from_millis(1)).unwrap(), 0);
    // Every count in an interval, and the recording holding each interval
    // printed (stdout is written first); then no chance to clean up.
    let printed = w
        .settle()
        .iter()
        .filter(|l| matches!(l, Line::Interval(_)))
        .count();
    wait_until(
        &format!("{printed} interval lines in {}", file.display()),
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&file).is_ok_and(|t| {
                t.lines()
                    .filter(|l| l.starts_with("{\"type\":\"interval\""))
                    .count()
                    >= printed
            })
        },
    );
    w.kill();
    // A half-written line, as a crash may leave.
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(b"{\"type\":\"interval\",\"pe")
        .unwrap();

    let r = report(&[&file]);
    assert!(!r.complete);
    assert_eq!(r.truncated_lines, 1);
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let (rb, rc) = (report_peer(&r, &b), report_peer(&r, &c));
    assert_eq!(rb.tx_encap.packets, 20, "{}", json(&r));
    assert_eq!(rc.tx_encap.packets, 6, "{}", json(&r));
    assert!(causes(&r, &c).contains("one-way"), "{}", json(&r));
    assert_eq!(rb.causes.len(), 0, "{}", json(&r));
    // The text report says it in words, and draws the timeline.
    let svg = dir.join("timeline.svg");
    let (code, text, err) = run(Command::new(bin())
        .arg("report")
        .arg(&file)
        .arg("--svg")
        .arg(&svg));
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("likely cause: one-way"), "{text}");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).expect("a valid SVG document");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(
        texts.iter().any(|t| t.contains(&c)),
        "peer {c} not labelled"
    );
    assert!(
        doc.descendants()
            .filter(|n| n.tag_name().name() == "polyline")
            .count()
            >= 4
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_names_a_host_firewall() {
    let lab = LabGuard::new("vt-repfw", 2, false, 8472);
    let dir = std::env::temp_dir().join(format!("vt-repfw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("b.ndjson");
    let _ = std::fs::remove_file(&file);
    drop_vxlan_at_input(&lab, 2);
    let w = Watcher::start(&lab.node_ns(2), &["--record", file.to_str().unwrap()]);
    assert_eq!(lab.ping(1, 2, 4, Duration::ZERO).unwrap(), 0);
    let s = w.stop();
    let r = report(&[&file]);
    assert!(r.complete);
    let a = lab.underlay_ip(1).to_string();
    assert!(causes(&r, &a).contains("host firewall"), "{}", json(&r));
    assert!(causes(&r, &a).contains("NETFILTER_DROP 4"), "{}", json(&r));
    assert_eq!(report_peer(&r, &a).rx_nic, s.peer(&a).counters.rx_nic);
    // Every line of the file is a vxtrace line, and the first is the header.
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<Line> = text
        .lines()
        .map(|l| Line::parse(l).unwrap_or_else(|e| panic!("not a vxtrace line ({e}): {l}")))
        .collect();
    let Some(Line::Header(first)) = lines.first() else {
        panic!("the first line is not the header: {:?}", lines.first())
    };
    assert!(first.kernel.len() > 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn report_errors_are_clear() {
    let (code, _, err) = run(Command::new(bin()).args(["report", "/nonexistent/rec.ndjson"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("recording /nonexistent/rec.ndjson not found"),
        "{err}"
    );
    let (code, _, err) = run(Command::new(bin()).args(["report"]));
    assert_eq!(code, 2, "{err}");
}

/// A recording that rotated into several files (`--record-max-size`) is
/// one run, and reads the same however its files are named: the file
/// alone, a shell glob, the rotated files oldest first, the directory, the
/// file twice, a mix. Exact counts from the lines the watcher wrote.
#[test]
fn a_rotated_recording_reads_once_however_named() {
    let lab = LabGuard::new("vt-rot", 2, false, 8472);
    let dir = std::env::temp_dir().join(format!("vt-rot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("r.ndjson");
    let mut w = Watcher::start(
        &lab.node_ns(1),
        &[
            "--record",
            file.to_str().unwrap(),
            "--record-max-size",
            "6K",
            "--record-keep",
            "50",
            "--interval",
            "250ms",
        ],
    );
    let end = Instant::now() + Duration::from_secs(8);
    let traffic = steady(&lab, 2, end);
    // Steady traffic as the watcher sees it (2 s at 250 ms) before the
    // outage.
    let mut lines = w.hearing_from(&[lab.underlay_ip(2)], 8, Duration::from_secs(20));
    // One outage of node 2, 3 s: the length is the input, a plain sleep.
    block(&lab, &["veth2"]);
    std::thread::sleep(Duration::from_secs(3));
    unblock(&lab);
    traffic.join().unwrap();
    let (_, rest) = w.stop_with_lines();
    lines.extend(rest);
    let intervals = lines
        .iter()
        .filter(|l| matches!(l, Line::Interval(_)))
        .count() as u64;
    let outages = lines
        .iter()
        .filter(|l| matches!(l, Line::OutageEnd(_)))
        .count();
    assert_eq!(outages, 1, "{lines:?}");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 3, "rotated into {files:?}");
    let on_disk = files.len() as u64;
    let b = lab.underlay_ip(2).to_string();
    let check = |way: &str, r: &Report| {
        assert_eq!(
            (
                r.intervals,
                report_peer(r, &b).outages.len(),
                r.runs,
                r.files
            ),
            (intervals, outages, 1, on_disk),
            "named as {way}: {}",
            json(r)
        );
    };
    let one = report(&[&file]);
    check("the file", &one);
    let (code, out, err) = run(Command::new("sh").arg("-c").arg(format!(
        "{} report --json {}/r.ndjson*",
        bin().display(),
        dir.display()
    )));
    assert_eq!(code, 0, "{err}");
    let globbed: Report = serde_json::from_str(&out).unwrap();
    check("a shell glob", &globbed);
    assert_eq!(globbed, one);
    let oldest_first: Vec<&std::path::Path> = files.iter().rev().map(|f| f.as_path()).collect();
    let rotated_1 = dir.join("r.ndjson.1");
    let roundabout = dir
        .join("..")
        .join(dir.file_name().unwrap())
        .join("r.ndjson");
    for (way, named) in [
        ("oldest first", oldest_first),
        ("the directory", vec![dir.as_path()]),
        ("the file twice", vec![file.as_path(), file.as_path()]),
        (
            "a mix",
            vec![dir.as_path(), rotated_1.as_path(), roundabout.as_path()],
        ),
    ] {
        let r = report(&named);
        check(way, &r);
        assert_eq!(r, one, "named as {way}");
    }
    let (code, text, err) = run(Command::new(bin()).arg("report").args(&files));
    assert_eq!(code, 0, "{err}");
    assert!(
        text.starts_with(&format!(
            "recording: 1 run in {on_disk} files, {intervals} intervals"
        )),
        "{text}"
    );
    assert_eq!(text.matches("  outage: ").count(), outages, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// flannel's DaemonSet restarts: the VXLAN device is deleted and created
/// again (new ifindex). vxtrace notices, re-attaches, and keeps counting.
#[test]
fn vxlan_device_recreated_during_a_run() {
    let lab = LabGuard::new("vt-churn", 2, false, 8472);
    let b = lab.underlay_ip(2).to_string();
    let mut w = Watcher::start(&lab.node_ns(1), &[]);
    assert_eq!(lab.ping(1, 2, 10, Duration::ZERO).unwrap(), 10);
    lab.recreate_vxlan(1).unwrap();
    let back = Instant::now();
    let mut reattached = None;
    while reattached.is_none() && back.elapsed() < Duration::from_secs(5) {
        if let Some(Line::DeviceReattached(_)) = w.next_line(Duration::from_millis(200)) {
            reattached = Some(back.elapsed());
        }
    }
    let took = reattached.expect("no device_reattached event");
    assert!(
        took <= Duration::from_secs(2) + Duration::from_millis(500),
        "{took:?}"
    );
    assert_eq!(lab.ping(1, 2, 15, Duration::ZERO).unwrap(), 15);
    let s = w.stop();
    let p = s.peer(&b).counters;
    assert_eq!(p.tx_encap.packets, 25, "{}", json(&s));
    assert_eq!(p.rx_decap.packets, 25, "{}", json(&s));
    assert_eq!(p.tx_dev.packets, 25, "{}", json(&s));
}

/// Scrapes `http://127.0.0.1:port/metrics` from inside `ns`.
fn scrape(ns: &str, port: u16) -> String {
    vxtrace::netns::run_in(ns, || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .unwrap()
}

fn metric(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

#[test]
fn metrics_endpoint_matches_the_summary() {
    let lab = LabGuard::new("vt-prom", 3, false, 8472);
    drop_vxlan_at_input(&lab, 3);
    let mut w = Watcher::start(
        &lab.node_ns(1),
        &["--metrics", "127.0.0.1:9478", "--netns", "all"],
    );
    assert!(
        w.attached
            .notes
            .join("\n")
            .contains("http://127.0.0.1:9478/metrics")
    );
    assert_eq!(lab.ping(1, 2, 30, Duration::ZERO).unwrap(), 30);
    // Node C drops them at its input: nothing arrives.
    assert_eq!(lab.udp(1, 3, 12, 200).unwrap(), 0);
    // One TCP handshake with B, for the latency histogram.
    let listener = listen_in(&lab.pod_ns(2), 7000);
    let server = std::net::SocketAddr::from((lab.pod_ip(2), 7000));
    let conn = connect_from(&lab.pod_ns(1), server, Duration::from_secs(2)).unwrap();
    drop((conn, listener));
    // Everything counted before an interval that counted nothing: the
    // metrics of the ticks before it hold every count.
    w.settle();
    let text = scrape(&lab.node_ns(1), 9478);
    let s = w.stop();
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let (sb, sc) = (&s.peers[&lab.underlay_ip(2)], &s.peers[&lab.underlay_ip(3)]);
    for (peer, name, traffic) in [
        (&b, "vxtrace_tx_encap_packets_total", sb.counters.tx_encap),
        (&b, "vxtrace_rx_nic_packets_total", sb.counters.rx_nic),
        (&b, "vxtrace_rx_decap_packets_total", sb.counters.rx_decap),
        (&c, "vxtrace_tx_encap_packets_total", sc.counters.tx_encap),
    ] {
        let m = metric(&text, name, &format!("peer=\"{peer}\""));
        assert_eq!(m, traffic.packets, "{name} {peer}");
    }
    assert_eq!(
        metric(
            &text,
            "vxtrace_tx_encap_bytes_total",
            &format!("peer=\"{b}\"")
        ),
        sb.counters.tx_encap.bytes
    );
    // C's node drops the UDP port: its drops, attributed to C, by reason.
    let drops = metric(
        &text,
        "vxtrace_drops_total",
        &format!("peer=\"{c}\",reason=\"NETFILTER_DROP\""),
    );
    assert_eq!(Some(&drops), sc.drops.get("NETFILTER_DROP"));
    assert!(drops >= 12);
    assert_eq!(
        metric(
            &text,
            "vxtrace_tcp_handshake_seconds_count",
            &format!("peer=\"{b}\"")
        ),
        1
    );
    assert_eq!(sb.tcp_outcome().handshake_us.count, Some(1));
}

/// GET `path` from `127.0.0.1:port` inside `ns`: the status line and body.
fn http_get(ns: &str, port: u16, path: &str) -> String {
    try_http_get(ns, port, path).unwrap()
}

fn try_http_get(ns: &str, port: u16, path: &str) -> anyhow::Result<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    vxtrace::netns::run_in(ns, move || {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(request.as_bytes())?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
}

/// A DaemonSet pod that starts before the overlay: the agent waits for the
/// VXLAN device instead of exiting (no crash loop), says so in its log,
/// on /metrics and as not ready, then attaches when the device appears
/// and counts exactly.
#[test]
fn agent_waits_for_the_overlay() {
    let lab = LabGuard::new("vt-wait", 2, false, 8472);
    lab.remove_vxlan(1).unwrap();
    let port = 19481;
    let ns = lab.node_ns(1);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(bin())
        .args(["watch", "--agent", "--netns", "self", "--metrics"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut log = String::new();
    use std::io::BufRead as _;
    // The waiting line comes first; then the waiting endpoints answer.
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        log.push_str(&line);
        if line.contains("waiting for a VXLAN device") {
            break;
        }
        line.clear();
    }
    assert!(log.contains("waiting for a VXLAN device"), "{log}");
    let ready = http_get(&ns, port, "/ready");
    assert!(
        ready.starts_with("HTTP/1.0 503") || ready.starts_with("HTTP/1.1 503"),
        "{ready}"
    );
    let metrics = http_get(&ns, port, "/metrics");
    assert!(
        metrics.contains("vxtrace_waiting_for_vxlan_device 1"),
        "{metrics}"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited while waiting"
    );
    lab.restore_vxlan(1).unwrap();
    line.clear();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        log.push_str(&line);
        if line.contains("appeared after") {
            break;
        }
        line.clear();
    }
    assert!(log.contains("flannel.1 appeared after"), "{log}");
    // Attached and serving the real metrics once ready.
    // (The port is closed for a moment while the real server takes over.)
    wait_until("/ready to answer 200", Duration::from_secs(20), || {
        try_http_get(&ns, port, "/ready").is_ok_and(|r| r.contains(" 200 "))
    });
    assert_eq!(lab.ping(1, 2, 12, Duration::ZERO).unwrap(), 12);
    let b = lab.underlay_ip(2).to_string();
    let want = format!("vxtrace_tx_encap_packets_total{{peer=\"{b}\"}} 12");
    // The metrics are updated every interval (1 s).
    wait_until(
        &format!("{want} on /metrics"),
        Duration::from_secs(10),
        || http_get(&ns, port, "/metrics").contains(&want),
    );
    let m = http_get(&ns, port, "/metrics");
    assert!(m.contains(&want), "{want} not in {m}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}
