//! `--metrics ADDR`: the Prometheus endpoint. Every per-peer counter of
//! the declaration (`schema::PEER_COUNTERS`) with a metric name, drops by
//! reason, outages, one-way peers, the handshake-latency histogram, and the
//! diagnosis engine's findings per peer.
//!
//! Every per-peer series has a `peer` label (the underlay address), so a
//! cluster's Prometheus can set A's `vxtrace_tx_encap_packets_total{peer="B"}`
//! against B's `vxtrace_rx_nic_packets_total{peer="A"}`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use vxtrace_common::PeerKey;

use super::{IntervalView, Sink, SummaryView};
use crate::{
    discovery::{peer_addr, peer_key},
    schema::{Line, PEER_COUNTERS, PeerCounters},
};

type Labels = Vec<(String, String)>;

fn peer_label(peer: &str) -> Labels {
    vec![("peer".into(), peer.into())]
}

/// Handshake latency buckets, seconds.
const HANDSHAKE_BUCKETS: [f64; 10] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0];

pub struct Metrics {
    /// One family per declared counter with a metric name, by that name.
    counters: BTreeMap<&'static str, Family<Labels, Counter>>,
    unanswered_syn: Family<Labels, Counter>,
    drops: Family<Labels, Counter>,
    outages: Family<Labels, Counter>,
    one_way: Family<Labels, Gauge>,
    handshake: Family<Labels, Histogram>,
    findings: Family<Labels, Gauge>,
    /// Finding series set at the last refresh (removed when gone).
    findings_set: BTreeSet<Labels>,
    /// Unanswered SYNs per peer at the last interval (kept outside the
    /// kernel's counters).
    unanswered_seen: rustc_hash::FxHashMap<PeerKey, u64>,
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

impl Metrics {
    /// Builds the registry and serves it on `addr` (a bare port binds
    /// loopback) from a background thread; returns the bound address.
    pub fn serve(addr: &str) -> Result<(Self, SocketAddr)> {
        let addr = parse_addr(addr)?;
        let mut registry = Registry::default();
        let mut counters = BTreeMap::new();
        for def in PEER_COUNTERS {
            if let Some(name) = def.metric {
                counters.insert(
                    name,
                    register(&mut registry, name, def.help, Family::default()),
                );
            }
        }
        let r = &mut registry;
        let metrics = Self {
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
            findings_set: BTreeSet::new(),
            unanswered_seen: Default::default(),
        };
        let bound = spawn_server(addr, registry)?;
        Ok((metrics, bound))
    }

    fn add_counters(&self, peer: &str, d: &PeerCounters) {
        let labels = peer_label(peer);
        for def in PEER_COUNTERS {
            let Some(family) = def.metric.and_then(|m| self.counters.get(m)) else {
                continue;
            };
            let c = family.get_or_create(&labels);
            let v = (def.read)(d);
            if v > 0 {
                c.inc_by(v);
            }
        }
    }

    fn add_drops(&self, peer: &PeerKey, by_reason: &BTreeMap<String, u64>) {
        let peer = if *peer == PeerKey::default() {
            "other".to_string()
        } else {
            peer_addr(peer).to_string()
        };
        for (reason, n) in by_reason {
            let labels = vec![
                ("peer".into(), peer.clone()),
                ("reason".into(), reason.clone()),
            ];
            self.drops.get_or_create(&labels).inc_by(*n);
        }
    }

    /// The findings of every peer, as gauges; series of findings that no
    /// longer hold are removed.
    fn refresh_findings(&mut self, view: &IntervalView<'_>) {
        let t = view.tables;
        let drops = t.drops_by_peer();
        let mut now = BTreeSet::new();
        for p in t.peers.peers.values() {
            let d = drops.get(&peer_key(&p.addr));
            for f in t.findings(p.addr, d) {
                now.insert(vec![
                    ("peer".to_string(), p.addr.to_string()),
                    ("cause".to_string(), serde_plain(&f.kind)),
                    ("segment".to_string(), f.segment.as_str().to_string()),
                ]);
            }
        }
        for gone in self.findings_set.difference(&now) {
            self.findings.remove(gone);
        }
        for labels in &now {
            self.findings.get_or_create(labels).set(1);
        }
        self.findings_set = now;
    }
}

/// An enum's serde name (`one_way`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl Sink for Metrics {
    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        let t = view.tables;
        for (key, p) in &t.peers.peers {
            let addr = p.addr.to_string();
            let delta = p.last_delta();
            self.add_counters(&addr, &PeerCounters::from(&delta));
            let unanswered = p.unanswered_syn();
            let before = self.unanswered_seen.insert(*key, unanswered).unwrap_or(0);
            self.unanswered_syn
                .get_or_create(&peer_label(&addr))
                .inc_by(unanswered.saturating_sub(before));
            self.one_way
                .get_or_create(&peer_label(&addr))
                .set(i64::from(t.outages.one_way_now(key)));
        }
        for (peer, by_reason) in view.drop_deltas {
            self.add_drops(peer, by_reason);
        }
        for e in view.events {
            if let Line::OutageStart(o) = e {
                self.outages
                    .get_or_create(&peer_label(&o.peer.to_string()))
                    .inc();
            }
        }
        for h in view.handshakes {
            self.handshake
                .get_or_create(&peer_label(&peer_addr(&h.peer).to_string()))
                .observe(h.latency_ns as f64 / 1e9);
        }
        self.refresh_findings(view);
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
            anyhow!("--metrics {addr}: give ADDRESS:PORT (e.g. 127.0.0.1:9478) or a port")
        }),
    }
}

/// Serves `/metrics` from a background thread.
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
                let (status, body) = if req.url() == "/metrics" {
                    let mut body = String::new();
                    match encode(&mut body, &registry) {
                        Ok(()) => (200, body),
                        Err(_) => (500, "encoding failed\n".to_string()),
                    }
                } else {
                    (404, "vxtrace: see /metrics\n".to_string())
                };
                let header = tiny_http::Header::from_bytes(
                    &b"Content-Type"[..],
                    &b"text/plain; version=0.0.4; charset=utf-8"[..],
                )
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
