//! `--metrics ADDR`: the Prometheus endpoint. Every per-peer counter of
//! the declaration (`schema::PEER_COUNTERS`) with a metric name, drops by
//! reason, outages, one-way peers, the handshake-latency histogram, the
//! diagnosis engine's findings per peer, and `vxtrace_node_info{node,vtep}`
//! (one series per local VTEP address) to join nodes' series.
//!
//! Every per-peer series has a `peer` label (the underlay address), so a
//! cluster's Prometheus can set A's `vxtrace_tx_encap_packets_total{peer="B"}`
//! against B's `vxtrace_rx_nic_packets_total{peer="A"}`. Two tiers keep
//! the series per node bounded while every link stays visible:
//! - link series (the two packet counters the cluster rules join, sent
//!   and arrived) for every peer while the cluster's links fit
//!   `--metrics-links`, and beyond it for a share of the pairs that both
//!   ends choose alike (`links`); with them, for the links that lose on
//!   this host and only those, the packets not delivered
//!   (`undelivered`);
//! - every counter for the peers asked for (`--peer`), those with a
//!   finding (up to 64 of them) and the `--metrics-peers` busiest; such a
//!   peer keeps its series once given them.
//!
//! What has no series of its own is summed into `peer="other_peers"`, so
//! each counter's series add up to the node's total, and
//! `vxtrace_peers_with_finding{cause,segment}` counts the peers with each
//! finding.
//!
//! The exposition follows the scraper's `Accept` header: OpenMetrics for
//! Prometheus (which asks for it), the classic text format otherwise.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use rustc_hash::{FxHashMap, FxHashSet};
use vxtrace_common::PeerKey;

use super::{IntervalView, Sink, SummaryView};
mod links;
mod undelivered;

use links::LinkChoice;
pub use links::{DEFAULT_LINK_BUDGET, LINK_METRICS, pair_hash, pair_kept};
use undelivered::Undelivered;

use crate::{
    discovery::{peer_addr, peer_key},
    schema::{Line, Node, PEER_COUNTERS, PeerCounters},
};

type Labels = Vec<(String, String)>;

/// The `peer` label of peers without series of their own.
pub const OTHER_PEERS: &str = "other_peers";
/// The `peer` label of drops that belong to no peer.
pub const NO_PEER: &str = "other";

fn peer_label(peer: &str) -> Labels {
    vec![("peer".into(), peer.into())]
}

/// Peers given series of their own for having a finding, at most; the
/// others with findings are counted in `vxtrace_peers_with_finding`.
const FINDING_PEERS_MAX: usize = 64;

/// A peer given series for a finding gives them up (its place goes to the
/// next peer with a finding) once it has had none for this long: long
/// enough for its counters to show the recovery in Prometheus.
const FINDING_PEER_HOLD_S: f64 = 15.0 * 60.0;

/// Handshake latency buckets, seconds.
const HANDSHAKE_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0];

/// What `--metrics` serves, and for which peers.
pub struct MetricsConfig {
    /// ADDRESS:PORT, or a port (loopback).
    pub addr: String,
    pub node: Node,
    /// Busiest peers given series of their own (besides `selected` and
    /// those with findings).
    pub busiest: usize,
    /// Directed links the whole cluster exports at most (`--metrics-links`).
    pub links: usize,
    pub selected: Vec<IpAddr>,
}

/// The registered families.
struct Families {
    /// One family per declared counter with a metric name, by that name.
    counters: BTreeMap<&'static str, Family<Labels, Counter>>,
    unanswered_syn: Family<Labels, Counter>,
    drops: Family<Labels, Counter>,
    outages: Family<Labels, Counter>,
    one_way: Family<Labels, Gauge>,
    handshake: Family<Labels, Histogram>,
    findings: Family<Labels, Gauge>,
    /// Per cause and segment, how many peers have the finding.
    peers_with_finding: Family<Labels, Gauge>,
    causes_seen: BTreeMap<(String, String), Gauge>,
    /// Packets the kernel counted on the watched devices that vxtrace did
    /// not see, by device and direction.
    unseen: Family<Labels, Counter>,
    /// The share of peers' pairs given link series (1: every peer).
    link_share: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Peers with link series, and all peers counted.
    link_peers: Gauge,
    peers_counted: Gauge,
    /// Receiver-host loss of the links that have some (`undelivered`).
    undelivered: Family<Labels, Counter>,
}

pub struct Metrics {
    f: Families,
    /// Peers with every counter as series of their own.
    exported: FxHashSet<PeerKey>,
    /// Which peers get link series, and those that have them now.
    link_choice: LinkChoice,
    linked: FxHashSet<PeerKey>,
    /// How many of them were chosen for being busy, and for a finding.
    busiest_chosen: usize,
    /// Peers given every counter for a finding, with when they last had
    /// one (the interval's Unix time).
    for_findings: FxHashMap<PeerKey, f64>,
    /// Drop reasons with series, per peer with series of its own (to
    /// remove them with the peer's other series).
    drop_reasons: FxHashMap<PeerKey, BTreeSet<String>>,
    busiest: usize,
    /// Finding series set at the last refresh (removed when gone).
    findings_set: BTreeSet<Labels>,
    /// Unanswered SYNs per peer at the last interval (kept outside the
    /// kernel's counters).
    unanswered_seen: FxHashMap<PeerKey, u64>,
    /// Receiver-host loss per peer, and the peers exporting it now.
    undelivered: Undelivered,
    undelivered_shown: FxHashSet<PeerKey>,
}

fn register<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

impl Families {
    fn register(r: &mut Registry) -> Self {
        let mut counters = BTreeMap::new();
        for def in PEER_COUNTERS {
            if let Some(name) = def.metric {
                counters.insert(name, register(r, name, def.help, Family::default()));
            }
        }
        Self {
            counters,
            unanswered_syn: register(
                r,
                "vxtrace_tcp_unanswered_syn",
                "TCP SYNs that got no SYN-ACK within the timeout",
                Family::default(),
            ),
            drops: register(
                r,
                "vxtrace_drops",
                "Kernel drops by peer (\"other\": no peer) and reason",
                Family::default(),
            ),
            outages: register(
                r,
                "vxtrace_outages",
                "Outages (peer silent while sent to)",
                Family::default(),
            ),
            one_way: register(
                r,
                "vxtrace_peer_one_way",
                "1 while the peer is one-way",
                Family::default(),
            ),
            handshake: register(
                r,
                "vxtrace_tcp_handshake_seconds",
                "SYN to SYN-ACK time of this node's clients",
                Family::new_with_constructor(|| Histogram::new(HANDSHAKE_BUCKETS)),
            ),
            findings: register(
                r,
                "vxtrace_peer_finding",
                "1 while the run's counters of the peer show the cause (label cause), lost on the segment (label segment)",
                Family::default(),
            ),
            peers_with_finding: register(
                r,
                "vxtrace_peers_with_finding",
                "Peers whose counters show the cause (label cause), lost on the segment (label segment)",
                Family::default(),
            ),
            causes_seen: BTreeMap::new(),
            unseen: register(
                r,
                "vxtrace_unseen_packets",
                "Packets the kernel counted on the watched devices (label device) that vxtrace did not see, by direction: a program ahead of vxtrace, XDP, or a device not watched; while this grows, the per-peer counters are a lower bound",
                Family::default(),
            ),
            link_share: register(
                r,
                "vxtrace_link_share",
                "Share of this node's peer pairs exported as link series (1: every peer; below 1 where the cluster's links exceed --metrics-links, the same pairs on both ends)",
                Gauge::default(),
            ),
            link_peers: register(
                r,
                "vxtrace_link_peers",
                "Peers with link series of their own (vxtrace_{tx_encap,rx_nic}_packets_total)",
                Gauge::default(),
            ),
            peers_counted: register(
                r,
                "vxtrace_peers",
                "Peers this node counts traffic of",
                Gauge::default(),
            ),
            undelivered: register(
                r,
                "vxtrace_rx_undelivered_packets",
                "Packets from the peer that reached the underlay device and were not delivered by the VXLAN device (receiver-host loss); a series only for peers with link series that lost at least 1 % of what arrived (over up to 10 s) in the last 15 minutes",
                Family::default(),
            ),
        }
    }
}

impl Metrics {
    /// Builds the registry and serves it from a background thread;
    /// returns the bound address.
    pub fn serve(cfg: &MetricsConfig) -> Result<(Self, SocketAddr)> {
        let addr = parse_addr(&cfg.addr)?;
        let (metrics, registry) = Self::new(cfg);
        let bound = spawn_server(addr, registry)?;
        Ok((metrics, bound))
    }

    /// The sink and the registry it fills (served by `serve`; rendered
    /// directly by the cluster-scale measurement).
    pub fn new(cfg: &MetricsConfig) -> (Self, Registry) {
        let mut registry = Registry::default();
        let node_info: Family<Labels, Gauge> = register(
            &mut registry,
            "vxtrace_node_info",
            "1 per local VTEP address of this node (label vtep), named by label node",
            Family::default(),
        );
        for vtep in &cfg.node.vteps {
            node_info
                .get_or_create(&vec![
                    ("node".to_string(), cfg.node.name.clone()),
                    ("vtep".to_string(), vtep.to_string()),
                ])
                .set(1);
        }
        let f = Families::register(&mut registry);
        f.link_share.set(1.0);
        (
            Self {
                f,
                exported: cfg.selected.iter().map(peer_key).collect(),
                link_choice: LinkChoice::new(cfg.links, cfg.node.vteps.clone()),
                linked: FxHashSet::default(),
                busiest_chosen: 0,
                for_findings: FxHashMap::default(),
                drop_reasons: FxHashMap::default(),
                busiest: cfg.busiest,
                findings_set: BTreeSet::new(),
                unanswered_seen: Default::default(),
                undelivered: Undelivered::default(),
                undelivered_shown: FxHashSet::default(),
            },
            registry,
        )
    }

    /// The `peer` label a peer's series go under.
    fn label_of(&self, key: &PeerKey) -> String {
        if self.exported.contains(key) {
            peer_addr(key).to_string()
        } else {
            OTHER_PEERS.to_string()
        }
    }

    /// Adds `d` to the series under `labels` of the counters `which`
    /// names (by metric name).
    fn add_counters(&self, labels: &Labels, d: &PeerCounters, which: impl Fn(&str) -> bool) {
        for def in PEER_COUNTERS {
            let Some(family) = def
                .metric
                .filter(|m| which(m))
                .and_then(|m| self.f.counters.get(m))
            else {
                continue;
            };
            let c = family.get_or_create(labels);
            let v = (def.read)(d);
            if v > 0 {
                c.inc_by(v);
            }
        }
    }

    fn add_drops(&mut self, key: &PeerKey, by_reason: &BTreeMap<String, u64>) {
        let peer = if *key == PeerKey::default() {
            NO_PEER.to_string()
        } else {
            self.label_of(key)
        };
        if self.exported.contains(key) {
            self.drop_reasons
                .entry(*key)
                .or_default()
                .extend(by_reason.keys().cloned());
        }
        for (reason, n) in by_reason {
            let labels = vec![
                ("peer".into(), peer.clone()),
                ("reason".into(), reason.clone()),
            ];
            self.f.drops.get_or_create(&labels).inc_by(*n);
        }
    }

    /// Every peer's findings, as gauges (series of findings that no longer
    /// hold are removed); a peer with a finding gets series of its own.
    fn refresh_findings(&mut self, view: &IntervalView<'_>) {
        let t = view.tables;
        let drops = t.drops_by_peer();
        let mut now = BTreeSet::new();
        let mut per_cause: BTreeMap<(&'static str, &'static str), i64> = BTreeMap::new();
        for (key, p) in &t.peers.peers {
            let found = t.findings(p.addr, drops.get(key));
            for f in &found {
                *per_cause
                    .entry((f.kind.as_str(), f.segment.as_str()))
                    .or_default() += 1;
            }
            // A peer with a finding gets series of its own, up to a
            // bound: when the whole network breaks, the node's series
            // must not grow with the cluster.
            let own = self.exported.contains(key)
                || (!found.is_empty() && self.for_findings.len() < FINDING_PEERS_MAX);
            if !found.is_empty() && !self.exported.contains(key) && own {
                self.exported.insert(*key);
                self.for_findings.insert(*key, view.interval().ts);
            }
            if !found.is_empty()
                && let Some(seen) = self.for_findings.get_mut(key)
            {
                *seen = view.interval().ts;
            }
            if !own {
                continue;
            }
            for f in found {
                now.insert(vec![
                    ("peer".to_string(), p.addr.to_string()),
                    ("cause".to_string(), f.kind.as_str().to_string()),
                    ("segment".to_string(), f.segment.as_str().to_string()),
                ]);
            }
        }
        // Unreachable VTEPs are few (one per pod subnet route at most):
        // each gets its finding, labelled with the VTEP address.
        for u in t.unresolved_vteps(&drops) {
            let Some(f) = u.finding else { continue };
            *per_cause
                .entry((f.kind.as_str(), f.segment.as_str()))
                .or_default() += 1;
            now.insert(vec![
                ("peer".to_string(), u.vtep.to_string()),
                ("cause".to_string(), f.kind.as_str().to_string()),
                ("segment".to_string(), f.segment.as_str().to_string()),
            ]);
        }
        for gone in self.findings_set.difference(&now) {
            self.f.findings.remove(gone);
        }
        for labels in &now {
            self.f.findings.get_or_create(labels).set(1);
        }
        self.findings_set = now;
        // Every cause the node has ever counted stays, at 0 once gone.
        for ((cause, segment), g) in &self.f.causes_seen {
            if !per_cause.contains_key(&(cause.as_str(), segment.as_str())) {
                g.set(0);
            }
        }
        for ((cause, segment), n) in per_cause {
            let labels = vec![
                ("cause".to_string(), cause.to_string()),
                ("segment".to_string(), segment.to_string()),
            ];
            let g = self.f.peers_with_finding.get_or_create(&labels);
            g.set(n);
            self.f
                .causes_seen
                .entry((cause.to_string(), segment.to_string()))
                .or_insert_with(|| g.clone());
        }
    }

    /// Gives the busiest peers without series of their own some, while
    /// there are places left.
    fn choose_busiest(&mut self, view: &IntervalView<'_>) {
        let left = self.busiest.saturating_sub(self.busiest_chosen);
        if left == 0 {
            return;
        }
        let mut candidates: Vec<(u64, PeerKey)> = view
            .tables
            .peers
            .peers
            .iter()
            .filter(|(k, _)| !self.exported.contains(*k))
            .map(|(k, p)| {
                let t = p.total();
                (
                    t.tx_encap.packets + t.rx_nic.packets + t.rx_decap.packets,
                    *k,
                )
            })
            .filter(|(n, _)| *n > 0)
            .collect();
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        for (_, key) in candidates.into_iter().take(left) {
            self.exported.insert(key);
            self.busiest_chosen += 1;
        }
    }

    /// Peers given series for a finding that have had none for
    /// `FINDING_PEER_HOLD_S` give them up, all but their link series: the
    /// places are for peers with findings now.
    fn release_finding_peers(&mut self, now: f64) {
        let done: Vec<PeerKey> = self
            .for_findings
            .iter()
            .filter(|(_, seen)| now - **seen > FINDING_PEER_HOLD_S)
            .map(|(k, _)| *k)
            .collect();
        for key in done {
            self.for_findings.remove(&key);
            self.exported.remove(&key);
            let addr = peer_addr(&key).to_string();
            let labels = peer_label(&addr);
            let linked = self.linked.contains(&key);
            for (name, family) in &self.f.counters {
                if !(linked && is_link_metric(name)) {
                    family.remove(&labels);
                }
            }
            self.f.unanswered_syn.remove(&labels);
            self.f.one_way.remove(&labels);
            self.f.outages.remove(&labels);
            self.f.handshake.remove(&labels);
            for reason in self.drop_reasons.remove(&key).unwrap_or_default() {
                self.f.drops.remove(&vec![
                    ("peer".to_string(), addr.clone()),
                    ("reason".to_string(), reason),
                ]);
            }
        }
    }

    /// Chooses the peers with link series for this interval; the series
    /// of peers that lost them (gone from the table, or out of the share)
    /// are removed.
    fn refresh_links(&mut self, view: &IntervalView<'_>) {
        let peers = &view.tables.peers.peers;
        let now = self.link_choice.choose(peers.keys());
        for gone in self.linked.difference(&now) {
            if self.exported.contains(gone) {
                continue;
            }
            let labels = peer_label(&peer_addr(gone).to_string());
            for name in LINK_METRICS {
                if let Some(family) = self.f.counters.get(name) {
                    family.remove(&labels);
                }
            }
        }
        self.linked = now;
        self.f.link_share.set(self.link_choice.share());
        self.f.link_peers.set(self.linked.len() as i64);
        self.f.peers_counted.set(peers.len() as i64);
    }
}

impl Metrics {
    /// The receiver-host loss of the links that have some: a counter per
    /// peer with link series while its loss is significant, removed the
    /// hold time after it stops growing or when the link goes.
    fn refresh_undelivered(&mut self, view: &IntervalView<'_>) {
        let ts = view.interval().ts;
        let peers = &view.tables.peers.peers;
        let mut shown = FxHashSet::default();
        for (key, p) in peers {
            let d = p.last_packets();
            let value = self
                .undelivered
                .add(*key, ts, d.rx_nic, d.rx_decap, FINDING_PEER_HOLD_S);
            let Some(value) = value.filter(|_| self.linked.contains(key)) else {
                continue;
            };
            let labels = peer_label(&p.addr.to_string());
            follow(&self.f.undelivered.get_or_create(&labels), value);
            shown.insert(*key);
        }
        for gone in self.undelivered_shown.difference(&shown) {
            self.f
                .undelivered
                .remove(&peer_label(&peer_addr(gone).to_string()));
        }
        self.undelivered_shown = shown;
        self.undelivered.retain(|k| peers.contains_key(k));
    }
}

/// Sets a counter to `value`, a count kept elsewhere that only grows.
fn follow(counter: &Counter, value: u64) {
    let had = counter.get();
    if value > had {
        counter.inc_by(value - had);
    }
}

fn is_link_metric(name: &str) -> bool {
    LINK_METRICS.contains(&name)
}

impl Sink for Metrics {
    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        self.refresh_findings(view);
        self.release_finding_peers(view.interval().ts);
        self.choose_busiest(view);
        self.refresh_links(view);
        self.refresh_undelivered(view);
        let t = view.tables;
        // What has no series of its own: every counter of the peers
        // without any, the other counters of those with link series only.
        let mut others = PeerCounters::default();
        let mut others_of_linked = PeerCounters::default();
        for (key, p) in &t.peers.peers {
            let delta = PeerCounters::from(&p.last_delta());
            let unanswered = p.unanswered_syn();
            let before = self.unanswered_seen.insert(*key, unanswered).unwrap_or(0);
            let new_unanswered = unanswered.saturating_sub(before);
            if !self.exported.contains(key) {
                if self.linked.contains(key) {
                    self.add_counters(&peer_label(&p.addr.to_string()), &delta, is_link_metric);
                    others_of_linked.add(&delta);
                } else {
                    others.add(&delta);
                }
                if new_unanswered > 0 {
                    self.f
                        .unanswered_syn
                        .get_or_create(&peer_label(OTHER_PEERS))
                        .inc_by(new_unanswered);
                }
                continue;
            }
            let labels = peer_label(&p.addr.to_string());
            self.add_counters(&labels, &delta, |_| true);
            self.f
                .unanswered_syn
                .get_or_create(&labels)
                .inc_by(new_unanswered);
            self.f
                .one_way
                .get_or_create(&labels)
                .set(i64::from(t.outages.one_way_now(key)));
        }
        let rest = peer_label(OTHER_PEERS);
        self.add_counters(&rest, &others, |_| true);
        self.add_counters(&rest, &others_of_linked, |m| !is_link_metric(m));
        for (device, direction, n) in t.visibility.unseen() {
            let labels = vec![
                ("device".to_string(), device),
                ("direction".to_string(), direction.to_string()),
            ];
            follow(&self.f.unseen.get_or_create(&labels), n);
        }
        for (peer, by_reason) in view.drop_deltas {
            self.add_drops(peer, by_reason);
        }
        for e in view.events {
            if let Line::OutageStart(o) = e {
                let label = self.label_of(&peer_key(&o.peer));
                self.f.outages.get_or_create(&peer_label(&label)).inc();
            }
        }
        for h in view.handshakes {
            self.f
                .handshake
                .get_or_create(&peer_label(&self.label_of(&h.peer)))
                .observe(h.latency_ns as f64 / 1e9);
        }
        Ok(())
    }

    fn summary(&mut self, _view: &SummaryView<'_>) -> Result<()> {
        Ok(())
    }
}

fn parse_addr(addr: &str) -> Result<SocketAddr> {
    match addr.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => addr.parse().map_err(|_| {
            anyhow!(
                "--metrics {addr}: give ADDRESS:PORT (e.g. 127.0.0.1:9478, 0.0.0.0:9478) or a port"
            )
        }),
    }
}

/// The exposition formats vxtrace speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`, what Prometheus asks for.
    OpenMetrics,
    /// `text/plain; version=0.0.4`, the classic text format.
    Classic,
}

impl Format {
    /// The format an `Accept` header asks for (OpenMetrics only when named).
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The registry in `format`.
pub fn render(registry: &Registry, format: Format) -> Result<String> {
    let mut body = String::new();
    encode(&mut body, registry).context("encoding the metrics")?;
    Ok(match format {
        Format::OpenMetrics => body,
        Format::Classic => classic(&body),
    })
}

/// OpenMetrics text as the classic format: a counter family's HELP and
/// TYPE name its samples (`_total`), there is no `# EOF` and no `# UNIT`.
fn classic(openmetrics: &str) -> String {
    let mut counters = BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, "counter")) = rest.split_once(' ')
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                out.push_str(&format!("{prefix}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Serves `/metrics` from a background thread.
/// Answers 200 once vxtrace counts, 503 while it waits for the overlay:
/// what a readiness probe asks.
pub const READY_PATH: &str = "/ready";

/// What an agent serves while it waits for a VXLAN device to appear (the
/// overlay agent has not created it yet): `/metrics` says it waits,
/// `/ready` says not ready. Stopped when the device appears, before the
/// real server takes the port.
pub struct WaitingServer {
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WaitingServer {
    pub fn serve(addr: &str) -> Result<Self> {
        let addr = parse_addr(addr)?;
        let server = Arc::new(
            tiny_http::Server::http(addr)
                .map_err(|e| anyhow!("{e}"))
                .with_context(|| format!("serving metrics on {addr} (is the port in use?)"))?,
        );
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("metrics-waiting".into())
            .spawn(move || {
                for req in serving.incoming_requests() {
                    let (status, body) = match req.url() {
                        "/metrics" => (
                            200,
                            "# HELP vxtrace_waiting_for_vxlan_device 1 while vxtrace waits for the overlay to create a VXLAN device\n# TYPE vxtrace_waiting_for_vxlan_device gauge\nvxtrace_waiting_for_vxlan_device 1\n",
                        ),
                        READY_PATH => (503, "waiting for a VXLAN device\n"),
                        _ => (404, "vxtrace: see /metrics\n"),
                    };
                    let _ = req.respond(
                        tiny_http::Response::from_string(body).with_status_code(status),
                    );
                }
            })
            .context("starting the metrics thread")?;
        Ok(Self {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for WaitingServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_server(addr: SocketAddr, registry: Registry) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("serving metrics on {addr} (is the port in use?)"))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for req in server.incoming_requests() {
                let accept = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Accept"))
                    .map(|h| h.value.as_str().to_string());
                let format = Format::from_accept(accept.as_deref());
                let (status, body, ctype) = if req.url() == "/metrics" {
                    match render(&registry, format) {
                        Ok(body) => (200, body, format.content_type()),
                        Err(e) => (500, format!("{e:#}\n"), "text/plain; charset=utf-8"),
                    }
                } else if req.url() == READY_PATH {
                    (200, "ready\n".to_string(), "text/plain; charset=utf-8")
                } else {
                    (
                        404,
                        "vxtrace: see /metrics\n".to_string(),
                        "text/plain; charset=utf-8",
                    )
                };
                let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                    .expect("valid header");
                let _ = req.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        })
        .context("starting the metrics thread")?;
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mut r = Registry::default();
        let c: Family<Labels, Counter> =
            register(&mut r, "vxtrace_tx_encap_packets", "tx", Family::default());
        c.get_or_create(&peer_label("192.0.2.12")).inc_by(3);
        let g: Family<Labels, Gauge> =
            register(&mut r, "vxtrace_peer_one_way", "ow", Family::default());
        g.get_or_create(&peer_label("192.0.2.12")).set(1);
        r
    }

    /// The classic format names counter families by their samples and has
    /// no OpenMetrics end marker.
    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let text = render(&registry(), Format::Classic).unwrap();
        assert!(
            text.contains("# HELP vxtrace_tx_encap_packets_total tx.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vxtrace_tx_encap_packets_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("vxtrace_tx_encap_packets_total{peer=\"192.0.2.12\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE vxtrace_peer_one_way gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let om = render(&registry(), Format::OpenMetrics).unwrap();
        assert!(
            om.contains("# TYPE vxtrace_tx_encap_packets counter\n"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"), "{om}");
    }

    /// The sink of a node with VTEP 10.255.0.1, and its registry.
    fn sink(busiest: usize, links: usize) -> (Metrics, Registry) {
        Metrics::new(&MetricsConfig {
            addr: String::new(),
            node: Node {
                name: "n".into(),
                vteps: vec!["10.255.0.1".parse().unwrap()],
            },
            busiest,
            links,
            selected: Vec::new(),
        })
    }

    /// A node of a mesh, its peers 10.0.0.1..=N: peer i sent i packets
    /// (received and decapsulated as many), once.
    fn node_with_peers(peers: u32, links: usize, busiest: usize) -> String {
        let (mut m, registry) = sink(busiest, links);
        let mut tables = crate::watch::tables::Tables::detached(4 * peers as usize);
        let mut readout = crate::probes::Readout::default();
        for i in 1..=peers {
            let mut s = vxtrace_common::PeerStats::default();
            let n = u64::from(i);
            s.tx_encap.packets = n;
            s.rx_nic.packets = n;
            s.rx_decap.packets = n;
            s.tx_dev.packets = n;
            readout.add_peer(
                peer_key(&IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i))),
                s,
            );
        }
        crate::sinks::feed(&mut m, &mut tables, &readout, 0.0, 1.0).unwrap();
        render(&registry, Format::Classic).unwrap()
    }

    fn sample(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Under the cap every peer has the link counters, the rest of the
    /// counters of all but the busiest are summed, and each counter's
    /// series add up to the node's total.
    #[test]
    fn every_peer_has_link_series_under_the_cap() {
        let text = node_with_peers(50, DEFAULT_LINK_BUDGET, 2);
        let total: u64 = (1..=50).sum();
        for name in LINK_METRICS {
            let own: u64 = (1..=50u32)
                .map(|i| {
                    let addr = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                    sample(&text, &format!("{name}_total{{peer=\"{addr}\"}}"))
                        .unwrap_or_else(|| panic!("{name} of {addr}: {text}"))
                })
                .sum();
            assert_eq!(own, total, "{name}");
            assert_eq!(
                sample(&text, &format!("{name}_total{{peer=\"other_peers\"}}")),
                Some(0),
                "{name}"
            );
        }
        // tx_dev: the two busiest (50 and 49) on their own, the rest summed.
        assert_eq!(
            sample(&text, "vxtrace_tx_dev_packets_total{peer=\"10.0.0.50\"}"),
            Some(50)
        );
        assert_eq!(
            sample(&text, "vxtrace_tx_dev_packets_total{peer=\"10.0.0.1\"}"),
            None
        );
        assert_eq!(
            sample(&text, "vxtrace_tx_dev_packets_total{peer=\"other_peers\"}"),
            Some(total - 50 - 49)
        );
        assert!(text.contains("\nvxtrace_link_share 1.0\n"), "{text}");
        assert_eq!(sample(&text, "vxtrace_link_peers"), Some(50));
        assert_eq!(sample(&text, "vxtrace_peers"), Some(50));
    }

    /// Beyond the budget, a share of the peers keeps link series, the
    /// others are summed, and the sums still add up.
    #[test]
    fn beyond_the_budget_a_share_of_the_pairs_has_link_series() {
        let text = node_with_peers(1000, 100_000, 0);
        let linked = sample(&text, "vxtrace_link_peers").unwrap();
        // 1,000 peers: 1,001,000 links; a share of 1/16 fits 100,000.
        assert!((30..=100).contains(&linked), "{linked}");
        let own = text
            .lines()
            .filter(|l| l.starts_with("vxtrace_tx_encap_packets_total{peer=\"10."))
            .count() as u64;
        assert_eq!(own, linked);
        let sum: u64 = text
            .lines()
            .filter(|l| l.starts_with("vxtrace_tx_encap_packets_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert_eq!(sum, (1..=1000).sum::<u64>());
        assert!(text.contains("vxtrace_link_share 0.0625"), "{text}");
    }

    /// Receiver-host loss is exported for the link that has some, and only
    /// for it: a healthy link and one with a packet in flight at the read
    /// have no undelivered series (nor a decapsulated one: only the two
    /// link counters).
    #[test]
    fn only_a_link_losing_on_this_host_exports_its_undelivered_packets() {
        let (mut m, registry) = sink(0, DEFAULT_LINK_BUDGET);
        let mut tables = crate::watch::tables::Tables::detached(16);
        // Per second: arrived, decapsulated.
        let peers = [
            ("10.0.0.1", 1000, 1000),
            ("10.0.0.2", 1000, 800),
            ("10.0.0.3", 1000, 999),
        ];
        // Eleven reads a second apart.
        for second in 1..=11u64 {
            let mut readout = crate::probes::Readout::default();
            for (addr, arrived, delivered) in peers {
                let mut s = vxtrace_common::PeerStats::default();
                s.rx_nic.packets = arrived * second;
                // The third peer's last packet is still on its way.
                s.rx_decap.packets = if delivered == 999 {
                    arrived * second - 1
                } else {
                    delivered * second
                };
                s.tx_encap.packets = 10 * second;
                readout.add_peer(peer_key(&addr.parse().unwrap()), s);
            }
            crate::sinks::feed(&mut m, &mut tables, &readout, second as f64, 1.0).unwrap();
        }
        let text = render(&registry, Format::Classic).unwrap();
        let undelivered: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vxtrace_rx_undelivered_packets_total{"))
            .collect();
        assert_eq!(
            undelivered,
            ["vxtrace_rx_undelivered_packets_total{peer=\"10.0.0.2\"} 2200"],
            "{text}"
        );
        // The lossy peer has a finding, and with it every counter; the
        // others have only their link series.
        for addr in ["10.0.0.1", "10.0.0.3"] {
            let decap = format!("vxtrace_rx_decap_packets_total{{peer=\"{addr}\"}}");
            assert!(!text.contains(&decap), "{text}");
        }
        for (addr, ..) in peers {
            assert_eq!(
                sample(
                    &text,
                    &format!("vxtrace_rx_nic_packets_total{{peer=\"{addr}\"}}")
                ),
                Some(11_000),
                "{text}"
            );
        }
    }

    /// A peer given every counter for a finding gives them up once the
    /// finding has been gone for the hold time, and keeps its link series.
    #[test]
    fn a_place_for_a_finding_is_given_back() {
        let (mut m, registry) = sink(0, DEFAULT_LINK_BUDGET);
        let mut tables = crate::watch::tables::Tables::detached(16);
        let mut readout = crate::probes::Readout::default();
        let mut s = vxtrace_common::PeerStats::default();
        // Arrived, never decapsulated: lost on this host.
        s.rx_nic.packets = 100;
        s.tx_dev.packets = 7;
        let key = peer_key(&"10.0.0.1".parse().unwrap());
        readout.add_peer(key, s);
        crate::sinks::feed(&mut m, &mut tables, &readout, 0.0, 1.0).unwrap();
        let text = render(&registry, Format::Classic).unwrap();
        assert!(
            text.contains("vxtrace_peer_finding{peer=\"10.0.0.1\""),
            "{text}"
        );
        assert_eq!(
            sample(&text, "vxtrace_tx_dev_packets_total{peer=\"10.0.0.1\"}"),
            Some(7),
            "{text}"
        );
        let seen = m.for_findings[&key];
        m.release_finding_peers(seen + FINDING_PEER_HOLD_S - 1.0);
        assert!(m.exported.contains(&key));
        m.release_finding_peers(seen + FINDING_PEER_HOLD_S + 1.0);
        assert!(!m.exported.contains(&key));
        let text = render(&registry, Format::Classic).unwrap();
        assert_eq!(
            sample(&text, "vxtrace_tx_dev_packets_total{peer=\"10.0.0.1\"}"),
            None,
            "{text}"
        );
        assert_eq!(
            sample(&text, "vxtrace_rx_nic_packets_total{peer=\"10.0.0.1\"}"),
            Some(100),
            "{text}"
        );
    }

    #[test]
    fn the_accept_header_chooses() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Classic);
        assert_eq!(Format::from_accept(None), Format::Classic);
        assert!(
            Format::Classic
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
    }
}
