//! `--metrics ADDR`: Prometheus text exposition of the per-peer counters,
//! drops by reason, TCP counters and the handshake-latency histogram.
//!
//! Metric names are stable (documented in the README); every per-peer
//! series has a `peer` label (the underlay address), so a cluster's
//! Prometheus can set A's `vxtrace_tx_encap_packets_total{peer="B"}` against
//! B's `vxtrace_rx_nic_packets_total{peer="A"}`.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use vxtrace_common::{PeerKey, PeerStats};

type Labels = Vec<(String, String)>;

fn peer_label(peer: &str) -> Labels {
    vec![("peer".into(), peer.into())]
}

pub struct Metrics {
    counters: BTreeMap<&'static str, Family<Labels, Counter>>,
    drops: Family<Labels, Counter>,
    outages: Family<Labels, Counter>,
    one_way: Family<Labels, Gauge>,
    handshake: Family<Labels, Histogram>,
    /// Last totals fed per (peer, name) of values kept outside PeerStats.
    seen: HashMap<(String, &'static str), u64>,
}

/// Counter name (without `_total`) -> help, and how to read it from PeerStats.
const PEER_COUNTERS: [(&str, &str); 18] = [
    (
        "vxtrace_tx_encap_packets",
        "VXLAN packets sent to the peer (underlay egress)",
    ),
    ("vxtrace_tx_encap_bytes", "VXLAN bytes sent to the peer"),
    (
        "vxtrace_rx_nic_packets",
        "VXLAN packets from the peer at the underlay device",
    ),
    (
        "vxtrace_rx_nic_bytes",
        "VXLAN bytes from the peer at the underlay device",
    ),
    (
        "vxtrace_rx_decap_packets",
        "Frames from the peer delivered by the VXLAN device",
    ),
    (
        "vxtrace_rx_decap_bytes",
        "Bytes of frames from the peer delivered by the VXLAN device",
    ),
    (
        "vxtrace_tx_dev_packets",
        "Frames handed to the VXLAN device for the peer",
    ),
    (
        "vxtrace_malformed_packets",
        "Packets to the VXLAN port that are not valid VXLAN",
    ),
    (
        "vxtrace_unknown_vni_packets",
        "VXLAN packets with a VNI no watched device uses",
    ),
    (
        "vxtrace_inner_dst_mac_mismatch",
        "Frames from the peer not addressed to this VTEP's MAC",
    ),
    (
        "vxtrace_inner_src_vtep",
        "Frames from the peer whose inner source is the peer's VTEP",
    ),
    ("vxtrace_tcp_syn_sent", "TCP SYNs sent to the peer's pods"),
    (
        "vxtrace_tcp_syn_received",
        "TCP SYNs received from the peer's pods",
    ),
    (
        "vxtrace_tcp_synack_sent",
        "TCP SYN-ACKs sent to the peer's pods",
    ),
    (
        "vxtrace_tcp_synack_received",
        "TCP SYN-ACKs received from the peer's pods",
    ),
    (
        "vxtrace_tcp_rst",
        "TCP RSTs sent to and received from the peer's pods",
    ),
    ("vxtrace_tcp_syn_retrans", "Retransmitted TCP SYNs"),
    (
        "vxtrace_tcp_unanswered_syn",
        "TCP SYNs that got no SYN-ACK within the timeout",
    ),
];

fn value_of(name: &str, d: &PeerStats) -> u64 {
    match name {
        "vxtrace_tx_encap_packets" => d.tx_encap.packets,
        "vxtrace_tx_encap_bytes" => d.tx_encap.bytes,
        "vxtrace_rx_nic_packets" => d.rx_nic.packets,
        "vxtrace_rx_nic_bytes" => d.rx_nic.bytes,
        "vxtrace_rx_decap_packets" => d.rx_decap.packets,
        "vxtrace_rx_decap_bytes" => d.rx_decap.bytes,
        "vxtrace_tx_dev_packets" => d.tx_dev.packets,
        "vxtrace_malformed_packets" => d.malformed_rx + d.malformed_tx,
        "vxtrace_unknown_vni_packets" => d.unknown_vni,
        "vxtrace_inner_dst_mac_mismatch" => d.inner_dst_mac_mismatch,
        "vxtrace_inner_src_vtep" => d.inner_src_vtep,
        "vxtrace_tcp_syn_sent" => d.syn_sent,
        "vxtrace_tcp_syn_received" => d.syn_received,
        "vxtrace_tcp_synack_sent" => d.synack_sent,
        "vxtrace_tcp_synack_received" => d.synack_received,
        "vxtrace_tcp_rst" => d.rst_sent + d.rst_received,
        "vxtrace_tcp_syn_retrans" => d.syn_retrans,
        _ => 0,
    }
}

impl Metrics {
    /// Builds the registry and serves it on `addr` (a bare port binds
    /// loopback) from a background thread.
    pub fn serve(addr: &str) -> Result<(Self, SocketAddr)> {
        let addr: SocketAddr = match addr.parse::<u16>() {
            Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => addr.parse().map_err(|_| {
                anyhow!("--metrics {addr}: give ADDRESS:PORT (e.g. 127.0.0.1:9478) or a port")
            })?,
        };
        let mut registry = Registry::default();
        let mut counters = BTreeMap::new();
        for (name, help) in PEER_COUNTERS {
            let f = Family::<Labels, Counter>::default();
            registry.register(name, help, f.clone());
            counters.insert(name, f);
        }
        let drops = Family::<Labels, Counter>::default();
        registry.register(
            "vxtrace_drops",
            "Kernel drops by peer (\"other\": no peer) and reason",
            drops.clone(),
        );
        let outages = Family::<Labels, Counter>::default();
        registry.register(
            "vxtrace_outages",
            "Outages (peer silent while sent to)",
            outages.clone(),
        );
        let one_way = Family::<Labels, Gauge>::default();
        registry.register(
            "vxtrace_peer_one_way",
            "1 while the peer is one-way",
            one_way.clone(),
        );
        let handshake = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0])
        });
        registry.register(
            "vxtrace_tcp_handshake_seconds",
            "SYN to SYN-ACK time of this node's clients",
            handshake.clone(),
        );
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("serving metrics on {addr}"))?;
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
        Ok((
            Self {
                counters,
                drops,
                outages,
                one_way,
                handshake,
                seen: HashMap::new(),
            },
            bound,
        ))
    }

    /// One interval's deltas of a peer.
    pub fn add_peer(&mut self, peer: &str, d: &PeerStats, unanswered_total: u64) {
        let labels = peer_label(peer);
        for (name, _) in PEER_COUNTERS {
            let v = if name == "vxtrace_tcp_unanswered_syn" {
                let prev = self
                    .seen
                    .insert((peer.to_string(), name), unanswered_total)
                    .unwrap_or(0);
                unanswered_total.saturating_sub(prev)
            } else {
                value_of(name, d)
            };
            let c = self.counters[name].get_or_create(&labels);
            if v > 0 {
                c.inc_by(v);
            }
        }
    }

    pub fn add_drops(&mut self, peer: &PeerKey, by_reason: &BTreeMap<String, u64>) {
        let peer = if *peer == PeerKey::default() {
            "other".to_string()
        } else {
            crate::discovery::peer_addr(peer).to_string()
        };
        for (reason, n) in by_reason {
            let labels = vec![
                ("peer".into(), peer.clone()),
                ("reason".into(), reason.clone()),
            ];
            self.drops.get_or_create(&labels).inc_by(*n);
        }
    }

    pub fn handshake(&self, peer: &str, latency_ns: u64) {
        self.handshake
            .get_or_create(&peer_label(peer))
            .observe(latency_ns as f64 / 1e9);
    }

    pub fn outage(&self, peer: &str) {
        self.outages.get_or_create(&peer_label(peer)).inc();
    }

    pub fn set_one_way(&self, peer: &str, on: bool) {
        self.one_way
            .get_or_create(&peer_label(peer))
            .set(i64::from(on));
    }
}
