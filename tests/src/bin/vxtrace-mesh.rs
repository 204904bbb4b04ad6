//! `cargo xtask mesh`: what the cluster view costs Prometheus. For a full
//! mesh of N nodes (every node a peer of every other), each node's
//! `/metrics` is made by vxtrace's own metrics sink, fed the counters of
//! N - 1 peers, a known few of whose links lose on the path or on the
//! receiving host; one HTTP server here serves them all
//! (`/metrics?node=I`), and Debian's Prometheus, started on loopback in a
//! temporary directory, scrapes every node and evaluates the shipped
//! rules. Measured: series per node, head series in Prometheus, its
//! resident and heap memory, scrape and rule-evaluation times, and how
//! many of the lossy links the rules record and alert on.
//!
//! Not a test: nothing here asserts. Usage:
//!   vxtrace-mesh [--nodes 100,1000] [--count-only 5000] [--scrape 30s]
//!                [--minutes 5] [--metrics-links N] [--max-resident-gib 18]
//!                [--rules FILE|none]   (default: the shipped rules)
//!
//! Every counter grows with time, by a step of its own, so the samples
//! compress as a live counter's do rather than as constants.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use vxtrace::{
    discovery::peer_key,
    probes::Readout,
    schema::Node,
    sinks::{
        feed,
        metrics::{DEFAULT_LINK_BUDGET, Format, Metrics, MetricsConfig, render},
    },
    watch::tables::Tables,
};
use vxtrace_common::PeerStats;

/// Node i's VTEP address (10.0.0.0/8, i from 1).
fn vtep(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Packets node `from` sends node `to` in the generated interval: some
/// links busier than others, as in a real cluster, and the same number
/// whichever end computes it.
fn traffic(from: u32, to: u32) -> u64 {
    1000 + u64::from((from * 31 + to * 17) % 1000) * 10
}

/// The links that lose, a sparse set known in advance so that what the
/// rules record can be counted against it: 10 % lost on the path, or 20 %
/// lost on the receiving host (about 1 link in 211 each).
fn path_loss(from: u32, to: u32) -> bool {
    (7 * from + 13 * to).is_multiple_of(211)
}
fn receiver_loss(from: u32, to: u32) -> bool {
    !path_loss(from, to) && (13 * from + 7 * to) % 211 == 5
}

/// Lossy links of a mesh of `nodes`: (path, receiver host).
fn lossy_links(nodes: u32) -> (u64, u64) {
    let (mut path, mut receiver) = (0, 0);
    for from in 1..=nodes {
        for to in (1..=nodes).filter(|t| *t != from) {
            path += u64::from(path_loss(from, to));
            receiver += u64::from(receiver_loss(from, to));
        }
    }
    (path, receiver)
}

/// Node `i`'s exposition in a mesh of `nodes`, with the default per-peer
/// settings but `links`: what it sent every peer and received from it,
/// with the losses of `path_loss` and `receiver_loss`.
fn exposition(i: u32, nodes: u32, links: usize) -> String {
    let (mut metrics, registry) = Metrics::new(&MetricsConfig {
        addr: String::new(),
        node: Node {
            name: format!("node-{i:05}"),
            vteps: vec![vtep(i)],
        },
        busiest: 16,
        links,
        selected: Vec::new(),
    });
    let mut tables = Tables::detached(2 * nodes as usize);
    let mut readout = Readout::default();
    for j in (1..=nodes).filter(|j| *j != i) {
        let mut s = PeerStats::default();
        let sent = traffic(i, j);
        s.tx_dev.packets = sent;
        s.tx_encap.packets = sent;
        s.tx_encap.bytes = sent * 800;
        let mut arrived = traffic(j, i);
        if path_loss(j, i) {
            arrived -= arrived / 10;
        }
        let delivered = if receiver_loss(j, i) {
            arrived - arrived / 5
        } else {
            arrived
        };
        s.rx_nic.packets = arrived;
        s.rx_nic.bytes = arrived * 800;
        s.rx_decap.packets = delivered;
        s.rx_decap.bytes = delivered * 750;
        readout.add_peer(peer_key(&vtep(j)), s);
    }
    feed(&mut metrics, &mut tables, &readout, 0.0, 1.0).expect("metrics sink");
    render(&registry, Format::OpenMetrics).expect("rendering")
}

fn sample_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
}

/// An exposition whose counters grow with time, as live counters do:
/// each sample line of a counter (`_total`) grows by an eighth of its
/// first value every 30 seconds, so that rates keep the ratios of the
/// generated counters (a link that lost 10 % goes on losing 10 %) however
/// late a scrape comes.
struct Served {
    lines: Vec<(String, Option<(u64, u64)>)>,
    started: Instant,
}

impl Served {
    fn new(text: &str) -> Self {
        let lines = text
            .lines()
            .map(|l| {
                let counter = (!l.starts_with('#'))
                    .then(|| l.rsplit_once(' '))
                    .flatten()
                    .filter(|(name, _)| name.split('{').next().unwrap_or("").ends_with("_total"))
                    .and_then(|(name, v)| {
                        let v: u64 = v.parse().ok()?;
                        Some((name.to_string(), v))
                    });
                match counter {
                    Some((name, v)) => (name, Some((v, v / 8))),
                    None => (l.to_string(), None),
                }
            })
            .collect();
        Self {
            lines,
            started: Instant::now(),
        }
    }

    fn body(&self) -> String {
        let periods = self.started.elapsed().as_secs_f64() / 30.0;
        let mut out = String::with_capacity(self.lines.len() * 64);
        for (text, counter) in &self.lines {
            out.push_str(text);
            if let Some((v, step)) = counter {
                out.push(' ');
                out.push_str(&(v + (*step as f64 * periods) as u64).to_string());
            }
            out.push('\n');
        }
        out
    }
}

fn serve(listener: TcpListener, nodes: Arc<HashMap<String, Served>>, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let nodes = Arc::clone(&nodes);
        std::thread::spawn(move || answer(conn, &nodes));
    }
}

fn answer(mut conn: TcpStream, nodes: &HashMap<String, Served>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // The rest of the header.
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
        line.clear();
    }
    let node = request
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.split_once("node="))
        .map(|(_, n)| n.split('&').next().unwrap_or(n).to_string())
        .unwrap_or_default();
    let (status, body) = match nodes.get(&node) {
        Some(s) => ("200 OK", s.body()),
        None => ("404 Not Found", format!("no node {node}\n")),
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Prometheus {
    fn start(nodes: u32, metrics_port: u16, scrape: &str, rules: Option<&Path>) -> Self {
        let dir = std::env::temp_dir().join(format!("vxtrace-mesh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port = free_port();
        let rules = rules
            .map(|r| format!("rule_files:\n  - {}\n", r.display()))
            .unwrap_or_default();
        let targets: Vec<String> = (1..=nodes).map(|i| format!("\"{i}\"")).collect();
        let config = format!(
            "global:\n  scrape_interval: {scrape}\n  evaluation_interval: {scrape}\n  scrape_timeout: {scrape}\n{rules}scrape_configs:\n  - job_name: prometheus\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n  - job_name: vxtrace\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n    relabel_configs:\n      - source_labels: [__address__]\n        target_label: __param_node\n      - source_labels: [__address__]\n        target_label: instance\n      - target_label: __address__\n        replacement: 127.0.0.1:{metrics_port}\n",
            targets.join(", ")
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("starting prometheus (Debian's prometheus package)");
        Self { child, dir, port }
    }

    fn query(&self, q: &str) -> Vec<(Value, f64)> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return Vec::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = write!(
            s,
            "GET /api/v1/query?query={enc} HTTP/1.0\r\nHost: p\r\n\r\n"
        );
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        let json = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
        v["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let x = r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), x)
            })
            .collect()
    }

    fn value(&self, q: &str) -> f64 {
        self.query(q).first().map(|(_, v)| *v).unwrap_or(f64::NAN)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A process's resident memory, from /proc (0 when gone).
fn resident_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

struct Options {
    /// The rules Prometheus evaluates (None: none, the series alone).
    rules: Option<PathBuf>,
    max_resident_gib: f64,
    nodes: Vec<u32>,
    count_only: Vec<u32>,
    scrape: String,
    minutes: u64,
    links: usize,
}

fn options() -> Options {
    let mut o = Options {
        rules: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/vxtrace-rules.yaml"),
        ),
        max_resident_gib: 18.0,
        nodes: vec![100, 1000],
        count_only: vec![5000],
        scrape: "30s".into(),
        minutes: 5,
        links: DEFAULT_LINK_BUDGET,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = |s: &str| -> Vec<u32> {
        s.split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().expect("a number of nodes"))
            .collect()
    };
    for pair in args.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or("");
        match pair[0].as_str() {
            "--nodes" => o.nodes = list(value),
            "--count-only" => o.count_only = list(value),
            "--scrape" => o.scrape = value.to_string(),
            "--minutes" => o.minutes = value.parse().expect("--minutes N"),
            "--rules" => o.rules = (value != "none").then(|| PathBuf::from(value)),
            "--max-resident-gib" => {
                o.max_resident_gib = value.parse().expect("--max-resident-gib G")
            }
            "--metrics-links" => o.links = value.parse().expect("--metrics-links N"),
            other => panic!("unknown option {other}; see the module's doc"),
        }
    }
    o
}

/// Series per node (min, max, sum over the mesh), the link share, and the
/// expositions themselves (kept only when `keep`).
fn build(nodes: u32, links: usize, keep: bool) -> (Value, Option<HashMap<String, Served>>) {
    let started = Instant::now();
    let (mut min, mut max, mut sum, mut bytes) = (usize::MAX, 0usize, 0usize, 0usize);
    let mut served = keep.then(HashMap::new);
    let mut share = String::new();
    for i in 1..=nodes {
        let text = exposition(i, nodes, links);
        let n = sample_lines(&text).count();
        (min, max, sum, bytes) = (min.min(n), max.max(n), sum + n, bytes + text.len());
        if i == 1 {
            share = text
                .lines()
                .find_map(|l| l.strip_prefix("vxtrace_link_share "))
                .unwrap_or("?")
                .to_string();
        }
        if let Some(s) = served.as_mut() {
            s.insert(i.to_string(), Served::new(&text));
        }
    }
    let v = json!({"figure": "mesh_series", "nodes": nodes, "metrics_links": links,
        "series_per_node_min": min, "series_per_node_max": max, "series_total": sum,
        "exposition_bytes_per_node": bytes / nodes as usize, "link_share": share,
        "build_s": started.elapsed().as_secs_f64()});
    println!("{v}");
    (v, served)
}

fn measure(nodes: u32, o: &Options) -> Value {
    let (counted, served) = build(nodes, o.links, true);
    let lossy = lossy_links(nodes);
    let served = Arc::new(served.unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding the exposition server");
    let metrics_port = listener.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (served, stop) = (Arc::clone(&served), Arc::clone(&stop));
        std::thread::spawn(move || serve(listener, served, stop))
    };
    let prom = Prometheus::start(nodes, metrics_port, &o.scrape, o.rules.as_deref());
    let deadline = Instant::now() + Duration::from_secs(o.minutes * 60);
    let mut stopped_early = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(15));
        let up = prom.value("sum(up{job=\"vxtrace\"})");
        let head = prom.value("prometheus_tsdb_head_series");
        let resident = resident_bytes(prom.child.id());
        eprintln!(
            "{nodes} nodes: {up} targets up, {head} head series, {:.2} GiB resident",
            resident as f64 / GIB
        );
        // This machine's memory is finite: stop before it runs out, and
        // say so in the figures.
        if resident as f64 > o.max_resident_gib * GIB {
            stopped_early = true;
            break;
        }
    }
    let v = json!({
        "figure": "mesh_prometheus",
        "nodes": nodes,
        "scrape_interval": o.scrape,
        "rules": o.rules.as_ref().map(|r| r.display().to_string()),
        "minutes": o.minutes,
        "series_total": counted["series_total"],
        "targets_up": prom.value("sum(up{job=\"vxtrace\"})"),
        "head_series": prom.value("prometheus_tsdb_head_series"),
        "lossy_links_path": lossy.0,
        "lossy_links_receiver": lossy.1,
        "path_loss_series": prom.value("count(vxtrace:link_path_loss:ratio_rate5m)"),
        "path_loss_over_5pc": prom.value("count(vxtrace:link_path_loss:ratio_rate5m > 0.05)"),
        "receiver_loss_series": prom.value("count(vxtrace:link_receiver_loss:ratio_rate5m)"),
        "receiver_loss_over_5pc": prom.value("count(vxtrace:link_receiver_loss:ratio_rate5m > 0.05)"),
        "undelivered_series": prom.value("count(vxtrace_rx_undelivered_packets_total)"),
        "path_loss_alerts_firing": prom.value("count(ALERTS{alertname=\"VxtraceLinkPathLoss\",alertstate=\"firing\"})"),
        "receiver_loss_alerts_firing": prom.value("count(ALERTS{alertname=\"VxtraceLinkReceiverHostLoss\",alertstate=\"firing\"})"),
        "link_group_eval_s": prom.value("max(prometheus_rule_group_last_duration_seconds{rule_group=~\".*;vxtrace-links\"})"),
        "rule_group_iterations_missed": prom.value("sum(prometheus_rule_group_iterations_missed_total)"),
        "resident_bytes": prom.value("process_resident_memory_bytes{job=\"prometheus\"}"),
        "max_resident_bytes": prom.value("max_over_time(process_resident_memory_bytes{job=\"prometheus\"}[1h])"),
        "heap_inuse_bytes": prom.value("go_memstats_heap_inuse_bytes{job=\"prometheus\"}"),
        "scrape_duration_s_max": prom.value("max(scrape_duration_seconds{job=\"vxtrace\"})"),
        "rule_group_eval_s": prom.value("max(prometheus_rule_group_last_duration_seconds)"),
        "resident_bytes_os": resident_bytes(prom.child.id()),
        "stopped_at_memory_limit": stopped_early,
    });
    println!("{v}");
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(("127.0.0.1", metrics_port));
    let _ = server.join();
    v
}

fn main() {
    let o = options();
    let mut figures = Vec::new();
    for &n in &o.count_only {
        figures.push(build(n, o.links, false).0);
    }
    for &n in &o.nodes {
        figures.push(measure(n, &o));
    }
    println!(
        "\n| nodes | series per node | series, whole mesh | link share | Prometheus head series | resident memory | heap in use |\n|---|---|---|---|---|---|---|"
    );
    for f in &figures {
        if f["figure"] == "mesh_series" && o.nodes.contains(&(f["nodes"].as_u64().unwrap() as u32))
        {
            continue;
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            f["nodes"],
            f.get("series_per_node_max").unwrap_or(&Value::Null),
            f["series_total"],
            f.get("link_share").unwrap_or(&Value::Null),
            f.get("head_series").unwrap_or(&Value::Null),
            f.get("resident_bytes").unwrap_or(&Value::Null),
            f.get("heap_inuse_bytes").unwrap_or(&Value::Null),
        );
    }
}
