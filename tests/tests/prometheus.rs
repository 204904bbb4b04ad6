//! The cluster view, live: Debian's Prometheus, started here in a
//! namespace on the lab's underlay bridge, scrapes the vxtrace of every
//! lab node and evaluates deploy/prometheus/vxtrace-rules.yaml; the tests
//! ask its HTTP API what the rules say. Also: the exposition passes
//! `promtool check metrics`, and the series per node stay bounded while a
//! broken link is still named.

use std::{
    io::{Read as _, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use vxtrace_tests::{
    LabGuard, Watcher, run,
    scenarios::{cut_path, drop_vxlan_at_input},
    sh,
};

const METRICS_PORT: u16 = 9478;
const PROMETHEUS_ADDR: &str = "192.0.2.200/24";
const PROMETHEUS_PORT: u16 = 9090;

/// The rules as shipped, with every `for:` shortened to 5 s, every
/// group's evaluation `interval:` to 1 s and every `[5m]` rate window to
/// `[1m]`: this Prometheus scrapes every second and
/// the tests run for seconds, where a 5-minute window would hold a few
/// seconds of traffic against its 300 s and keep the links under the
/// alerts' traffic guard (the shipped windows, for 15 s to 1 m scrape
/// intervals, are what promtool's unit tests check). The expressions are
/// otherwise the ones users load.
fn rules_for_a_test(dir: &Path) -> PathBuf {
    let shipped =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/vxtrace-rules.yaml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let short: String = text
        .lines()
        .map(|l| {
            let indent = &l[..l.len() - l.trim_start().len()];
            if l.trim_start().starts_with("for:") {
                format!("{indent}for: 5s")
            } else if l.trim_start().starts_with("interval:") {
                format!("{indent}interval: 1s")
            } else {
                l.replace("[5m]", "[1m]").replace("offset 5m", "offset 1m")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(short.contains("for: 5s") && short.contains("[1m]") && short.contains("interval: 1s"));
    assert!(!short.contains("[5m]") && !short.contains("offset 5m"));
    let path = dir.join("vxtrace-rules.yaml");
    std::fs::write(&path, short).unwrap();
    path
}

/// Prometheus in its own namespace, on the lab's bridge, scraping every
/// node every second; stopped and removed on drop.
struct Prometheus {
    ns: String,
    child: Child,
    dir: PathBuf,
}

impl Prometheus {
    fn start(lab: &LabGuard) -> Self {
        let ns = format!("{}-prom", lab.name);
        let dir = std::env::temp_dir().join(format!("{ns}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let _ = Command::new("ip")
            .args(["netns", "delete", &ns])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &ns]);
        sh(&[
            "ip", "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "vtprom",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "link",
            "set",
            "vtprom",
            "netns",
            &lab.bridge_ns(),
        ]);
        sh(&[
            "ip",
            "-n",
            &lab.bridge_ns(),
            "link",
            "set",
            "vtprom",
            "master",
            "br0",
            "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            PROMETHEUS_ADDR,
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let rules = rules_for_a_test(&dir);
        let targets: Vec<String> = (1..=lab.nodes)
            .map(|n| format!("\"{}:{METRICS_PORT}\"", lab.underlay_ip(n)))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: vxtrace\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let (code, out, err) = run(Command::new("promtool")
            .arg("check")
            .arg("config")
            .arg(&config_path));
        assert_eq!(code, 0, "promtool check config: {out}{err}");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "prometheus"])
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("starting prometheus (Debian's prometheus package)");
        let p = Self { ns, child, dir };
        p.wait_until("every target is up", Duration::from_secs(30), |p| {
            p.values("up == 1").len() == lab.nodes as usize
        });
        p
    }

    /// GET `path` of the HTTP API, as JSON.
    fn get(&self, path: &str) -> Value {
        let body = vxtrace::netns::run_in(&self.ns, || {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", PROMETHEUS_PORT))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap_or_default();
        let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(json).unwrap_or(Value::Null)
    }

    /// The result vector of an instant query: (labels, value).
    fn values(&self, query: &str) -> Vec<(Value, f64)> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = self.get(&format!("/api/v1/query?query={q}"));
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that must give one series (None: none yet).
    fn value(&self, query: &str) -> Option<f64> {
        let v = self.values(query);
        assert!(v.len() <= 1, "{query}: {v:?}");
        v.first().map(|(_, x)| *x)
    }

    fn wait_until(&self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            assert!(
                start.elapsed() < limit,
                "waited {limit:?} for {what}; prometheus log:\n{}",
                std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A vxtrace serving metrics on every node, named node1..nodeN.
fn agents(lab: &LabGuard, extra: &[&str]) -> Vec<Watcher> {
    (1..=lab.nodes)
        .map(|n| {
            let name = format!("node{n}");
            let mut args = vec![
                "--metrics",
                "0.0.0.0:9478",
                "--node-name",
                name.as_str(),
                "--interval",
                "500ms",
            ];
            args.extend_from_slice(extra);
            Watcher::start(&lab.node_ns(n), &args)
        })
        .collect()
}

/// Steady pings between pods until `until` (replies may never come).
fn traffic(lab: &LabGuard, pairs: &[(u8, u8)], until: Instant) -> Vec<std::thread::JoinHandle<()>> {
    pairs
        .iter()
        .map(|&(from, to)| {
            let lab = lab.lab.clone();
            std::thread::spawn(move || {
                while Instant::now() < until {
                    let _ = lab.ping(from, to, 5, Duration::from_millis(50));
                }
            })
        })
        .collect()
}

/// Bursts of UDP datagrams from pod `from` to pod `to` until `until`:
/// tens of packets a second whether or not anything arrives.
fn udp_traffic(lab: &LabGuard, from: u8, to: u8, until: Instant) -> std::thread::JoinHandle<()> {
    let lab = lab.lab.clone();
    std::thread::spawn(move || {
        while Instant::now() < until {
            let _ = lab.udp(from, to, 20, 100);
        }
    })
}

fn link(series: &str, from: &str, to: &str) -> String {
    format!("{series}{{from_node=\"{from}\",to_node=\"{to}\"}}")
}

/// What node `from` encapsulated to node `to` per second, from the two
/// nodes' own series (the rules record no per-link rate).
fn sent_rate(from: &str, to: &str) -> String {
    format!(
        r#"sum(
          rate(vxtrace_tx_encap_packets_total[1m])
          * on (instance) group_left () max by (instance) (vxtrace_node_info{{node="{from}"}})
          * on (peer) group_left ()
            label_replace(max by (vtep) (vxtrace_node_info{{node="{to}"}}), "peer", "$1", "vtep", "(.*)")
        )"#
    )
}

/// A healthy link carries traffic, and its path loss is under 0.1 (a
/// loss under 1 % is not recorded at all).
fn healthy_link(p: &Prometheus, from: &str, to: &str) -> Result<(), String> {
    let rate = p.value(&sent_rate(from, to));
    let loss = p.value(&link("vxtrace:link_path_loss:ratio_rate5m", from, to));
    match (rate, loss) {
        (Some(r), None) if r > 0.0 => Ok(()),
        (Some(r), Some(l)) if r > 0.0 && l < 0.1 => Ok(()),
        _ => Err(format!("{from} -> {to}: rate {rate:?}, path loss {loss:?}")),
    }
}

/// B -> A cut on the path (a security group dropping the VXLAN port one
/// way): the path-loss series of B -> A climbs to 1, A -> B stays near 0,
/// and the alert fires naming B -> A.
#[test]
fn path_loss_of_one_direction_fires_its_alert() {
    let lab = LabGuard::new("vt-pp", 3, false, 8472);
    let _agents = agents(&lab, &[]);
    let prom = Prometheus::start(&lab);
    cut_path(&lab, 2, 1);
    // A link is judged once both ends' series are a rate window old (1
    // minute in these rules).
    let until = Instant::now() + Duration::from_secs(90);
    let senders = traffic(&lab, &[(1, 2), (2, 1), (1, 3), (3, 1)], until);
    let b_to_a = link("vxtrace:link_path_loss:ratio_rate5m", "node2", "node1");
    let a_to_b = link("vxtrace:link_path_loss:ratio_rate5m", "node1", "node2");
    prom.wait_until("B -> A path loss >= 0.9 and its alert", Duration::from_secs(90), |p| {
        p.value(&b_to_a).is_some_and(|v| v >= 0.9)
            && !p
                .values("ALERTS{alertname=\"VxtraceLinkPathLoss\",alertstate=\"firing\",from_node=\"node2\",to_node=\"node1\"}")
                .is_empty()
    });
    // A -> B loses nothing: it carries traffic and its loss falls
    // below 1 %, where it is no longer recorded. (Right after start the
    // two ends' rates can cover windows a scrape apart, so a value above
    // that for a few seconds is no loss.)
    let a_to_b_rate = sent_rate("node1", "node2");
    prom.wait_until("A -> B path loss < 0.05", Duration::from_secs(10), |p| {
        p.value(&a_to_b_rate).is_some_and(|v| v > 0.0) && p.value(&a_to_b).is_none_or(|v| v < 0.05)
    });
    // The alert names B -> A only, its address family and the scrape job.
    let firing = prom.values("ALERTS{alertname=\"VxtraceLinkPathLoss\",alertstate=\"firing\"}");
    assert_eq!(firing.len(), 1, "{firing:?}");
    let labels = &firing[0].0;
    assert_eq!(labels["from_node"], "node2");
    assert_eq!(labels["to_node"], "node1");
    assert_eq!(labels["family"], "ipv4");
    assert_eq!(labels["job"], "vxtrace");
    // Nothing is lost on a receiving host.
    for (l, v) in prom.values("vxtrace:link_receiver_loss:ratio_rate5m") {
        assert!(v < 0.05, "{l} {v}");
    }
    // The counters are typed as counters: the exposition declares them
    // (OpenMetrics names the family without `_total`).
    let meta = prom.get("/api/v1/metadata");
    let all = prom.get("/api/v1/targets/metadata");
    assert_eq!(
        meta["data"]["vxtrace_tx_encap_packets"][0]["type"], "counter",
        "{meta} {all}"
    );
    for s in senders {
        s.join().unwrap();
    }
}

/// B's host firewall drops VXLAN: the receiver-loss series of A -> B, not
/// the path series, and its alert.
#[test]
fn a_host_firewall_is_receiver_loss_not_path_loss() {
    let lab = LabGuard::new("vt-pf", 2, false, 8472);
    drop_vxlan_at_input(&lab, 2);
    let _agents = agents(&lab, &[]);
    let prom = Prometheus::start(&lab);
    let until = Instant::now() + Duration::from_secs(20);
    let sender = udp_traffic(&lab, 1, 2, until);
    let receiver = link("vxtrace:link_receiver_loss:ratio_rate5m", "node1", "node2");
    let path = link("vxtrace:link_path_loss:ratio_rate5m", "node1", "node2");
    prom.wait_until("A -> B receiver loss >= 0.9 and its alert", Duration::from_secs(40), |p| {
        p.value(&receiver).is_some_and(|v| v >= 0.9)
            && !p
                .values("ALERTS{alertname=\"VxtraceLinkReceiverHostLoss\",alertstate=\"firing\",from_node=\"node1\",to_node=\"node2\"}")
                .is_empty()
    });
    // A -> B loses nothing on the path: its ratio settles below 1 %,
    // where it is no longer recorded. (The series of a peer appear with
    // its first packets, on the two nodes a scrape apart: right after
    // start the two rates can cover different stretches and read as a few
    // percent of loss for some seconds.)
    let rate = sent_rate("node1", "node2");
    prom.wait_until("A -> B path loss < 0.05", Duration::from_secs(10), |p| {
        p.value(&rate).is_some_and(|v| v > 0.0) && p.value(&path).is_none_or(|v| v < 0.05)
    });
    // The rates of two nodes' series sampled a moment apart can look like
    // loss for a few seconds (the shipped rules wait minutes); none fires.
    let alerts = prom.values("ALERTS{alertname=\"VxtraceLinkPathLoss\",alertstate=\"firing\"}");
    assert!(
        alerts.is_empty(),
        "no path-loss alert for a host firewall: {alerts:?}"
    );
    sender.join().unwrap();
}

/// Scrapes a node's /metrics from inside its namespace (no Accept header:
/// the classic text format).
fn scrape(ns: &str, addr: Ipv4Addr) -> String {
    vxtrace::netns::run_in(ns, || {
        let mut s = std::net::TcpStream::connect((addr, METRICS_PORT))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body)
    })
    .unwrap()
}

fn v4(ip: std::net::IpAddr) -> Ipv4Addr {
    match ip {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => panic!("an IPv4 lab"),
    }
}

/// Peers with every counter as series of their own: the busiest up to
/// `--metrics-peers`, and any with a finding; every peer has its link
/// series; the rest is summed. With the cap at 0, a healthy busy peer has
/// only its link series, and a broken one every counter, with its finding
/// named; and the exposition passes `promtool check metrics`.
#[test]
fn series_stay_bounded_and_a_broken_link_is_still_named() {
    let lab = LabGuard::new("vt-pc", 3, false, 8472);
    let mut agents = agents(&lab, &["--metrics-peers", "0", "--one-way-window", "2s"]);
    // Node 3 answers nobody: node 1's link to it is broken; node 2 is fine.
    sh(&[
        "ip",
        "-n",
        &lab.node_ns(3),
        "route",
        "add",
        "blackhole",
        &format!("{}/32", lab.underlay_ip(1)),
    ]);
    let until = Instant::now() + Duration::from_secs(8);
    let senders = traffic(&lab, &[(1, 2), (1, 3)], until);
    for s in senders {
        s.join().unwrap();
    }
    // Node 1 counted all of it: an interval after the traffic counted
    // nothing, so the metrics of the ticks before hold every count.
    agents[0].settle();
    let text = scrape(&lab.node_ns(1), v4(lab.underlay_ip(1)));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let (b, c) = (
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    assert!(
        body.contains(&format!(
            "vxtrace_peer_finding{{peer=\"{c}\",cause=\"one_way\",segment=\"path\"}} 1"
        )),
        "{body}"
    );
    assert!(
        body.contains(&format!("vxtrace_tx_encap_packets_total{{peer=\"{c}\"}}")),
        "{body}"
    );
    // A healthy peer beyond the busiest cap keeps its link series (what
    // the cluster rules join), and nothing else of its own.
    let own: Vec<&str> = body
        .lines()
        .filter(|l| l.contains(&format!("peer=\"{b}\"")))
        .map(|l| l.split('{').next().unwrap())
        .collect();
    assert_eq!(
        own,
        [
            "vxtrace_tx_encap_packets_total",
            "vxtrace_rx_nic_packets_total"
        ],
        "{body}"
    );
    assert!(body.contains("\nvxtrace_link_share 1.0\n"), "{body}");
    assert!(body.contains("\nvxtrace_link_peers 2\n"), "{body}");
    assert!(
        body.contains("vxtrace_tx_encap_packets_total{peer=\"other_peers\"}"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "vxtrace_node_info{{node=\"node1\",vtep=\"{}\"}} 1",
            lab.underlay_ip(1)
        )),
        "{body}"
    );
    // The classic exposition is valid for Prometheus' own checker.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shipped rules load, and their unit tests pass (synthetic series at
/// 1 m and 15 s scrape intervals: dual-stack nodes, nodes with two VTEPs
/// of one family, two clusters sharing node names and addresses, a link
/// under the traffic guard, outbound and inbound blackholes, findings,
/// targets down, nodes without vxtrace).
#[test]
fn the_rules_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    let (code, out, err) = run(Command::new("promtool")
        .args(["check", "rules", "vxtrace-rules.yaml"])
        .current_dir(&dir));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let (code, out, err) = run(Command::new("promtool")
        .args(["test", "rules", "vxtrace-rules.test.yaml"])
        .current_dir(&dir));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Five nodes, each held to its smallest per-peer export
/// (`--metrics-peers 0`: no peer gets every counter for its traffic), a
/// 40 % random loss on the path of one link that is nobody's busiest, and
/// a node with a second VTEP of the same family (a second overlay): the
/// lossy link's path-loss recording reads 0.2 to 0.6, the healthy links'
/// under 0.1, and every rule evaluates (no many-to-many match).
#[allow(
    clippy::too_many_lines,
    reason = "tests are exempt: a test's steps and its table of cases read in order"
)]
#[test]
fn a_partial_loss_on_a_quiet_link_is_recorded_in_a_five_node_cluster() {
    let lab = LabGuard::new("vt-p5", 5, false, 8472);
    // Node 5's second overlay: its own VXLAN device on a second underlay
    // address of the same family.
    let n5 = lab.node_ns(5);
    sh(&[
        "ip",
        "-n",
        &n5,
        "addr",
        "add",
        "192.0.2.115/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &n5,
        "link",
        "add",
        "vxlan7",
        "type",
        "vxlan",
        "id",
        "7",
        "local",
        "192.0.2.115",
        "dev",
        "eth0",
        "dstport",
        "4789",
        "nolearning",
    ]);
    sh(&["ip", "-n", &n5, "link", "set", "vxlan7", "up"]);
    // 40 % of node 2's VXLAN packets to node 4 are lost between them.
    vxtrace_tests::scenarios::nft(
        &lab.bridge_ns(),
        &format!(
            "add table bridge vtloss; add chain bridge vtloss fw {{ type filter hook forward priority 0 ; }}; add rule bridge vtloss fw iifname \"veth2\" oifname \"veth4\" udp dport {} numgen random mod 100 < 40 drop",
            lab.port
        ),
    );
    let _agents = agents(&lab, &["--metrics-peers", "0"]);
    let prom = Prometheus::start(&lab);
    let info = prom.values("vxtrace_node_info{node=\"node5\"}");
    assert_eq!(info.len(), 2, "node 5 has two VTEPs: {info:?}");
    // Node 2's and node 4's busiest links are others (2 <-> 1, 4 <-> 3,
    // three senders each); 2 -> 4 carries one.
    let until = Instant::now() + Duration::from_secs(100);
    let senders = traffic(
        &lab,
        &[
            (2, 1),
            (2, 1),
            (2, 1),
            (4, 3),
            (4, 3),
            (4, 3),
            (2, 4),
            (5, 1),
            (1, 5),
            (3, 5),
        ],
        until,
    );
    let lossy = link("vxtrace:link_path_loss:ratio_rate5m", "node2", "node4");
    let healthy = [
        ("node2", "node1"),
        ("node4", "node3"),
        ("node5", "node1"),
        ("node1", "node5"),
        ("node3", "node5"),
    ];
    prom.wait_until(
        "node2 -> node4 path loss in 0.2..0.6 and the healthy links under 0.1",
        Duration::from_secs(95),
        |p| {
            p.value(&lossy).is_some_and(|v| (0.2..=0.6).contains(&v))
                && healthy.iter().all(|(f, t)| healthy_link(p, f, t).is_ok())
        },
    );
    // The ratio holds over more traffic (5 s of it is the test: the rules
    // evaluated on samples at least 5 s newer), and so do the healthy
    // links.
    let held_from = vxtrace_tests::unix_now();
    prom.wait_until(
        "the rules evaluated 5 s of traffic later",
        Duration::from_secs(30),
        |p| {
            p.value(&format!("timestamp({lossy})"))
                .is_some_and(|t| t >= held_from + 5.0)
        },
    );
    let loss = prom.value(&lossy).unwrap();
    assert!((0.2..=0.6).contains(&loss), "node2 -> node4: {loss}");
    for (f, t) in healthy {
        healthy_link(&prom, f, t).unwrap();
    }
    // Every rule evaluated without error (a node with two VTEPs of one
    // family once broke every join: "many-to-many matching not allowed").
    let rules = prom.get("/api/v1/rules");
    let groups = rules["data"]["groups"].as_array().expect("rule groups");
    for g in groups {
        for r in g["rules"].as_array().unwrap() {
            assert_eq!(r["health"], "ok", "{r}");
        }
    }
    // Node 2 exported the quiet link as link series only.
    let n4 = lab.underlay_ip(4).to_string();
    assert!(
        prom.values(&format!(
            "vxtrace_tx_dev_packets_total{{instance=\"{}:{METRICS_PORT}\",peer=\"{n4}\"}}",
            lab.underlay_ip(2)
        ))
        .is_empty()
    );
    assert_eq!(
        prom.values(&format!(
            "vxtrace_tx_encap_packets_total{{instance=\"{}:{METRICS_PORT}\",peer=\"{n4}\"}}",
            lab.underlay_ip(2)
        ))
        .len(),
        1
    );
    for s in senders {
        s.join().unwrap();
    }
}
