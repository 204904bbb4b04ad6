//! The per-peer counters as vxtrace writes them (interval lines, the
//! summary, recordings) and reads them back (`report`, the tests), and the
//! one declaration of every counter: its name in the JSON, its Prometheus
//! family, its help text and how to read it. Consumers iterate
//! [`PEER_COUNTERS`]; a unit test holds the declaration and the serde
//! shape to each other, so a counter cannot be added to one and not the
//! other.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vxtrace_common::{Counter, PeerStats, SIZE_BUCKET_BOUNDS, SIZE_BUCKETS, packets_over};

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

impl From<&Counter> for Traffic {
    fn from(c: &Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// Everything counted per underlay peer, over an interval or a whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerCounters {
    /// VXLAN packets sent to the peer, leaving the underlay device.
    pub tx_encap: Traffic,
    /// VXLAN packets from the peer, arriving at the underlay device.
    pub rx_nic: Traffic,
    /// Frames from the peer the VXLAN device delivered (decapsulated).
    pub rx_decap: Traffic,
    /// Frames handed to the VXLAN device for the peer (before encapsulation).
    pub tx_dev: Traffic,
    /// Flooded copies sent to the peer (broadcast, multicast, unknown
    /// unicast on a layer-2 device): not in `tx_encap`, never loss.
    #[serde(default)]
    pub tx_flood: Traffic,
    /// `malformed_rx + malformed_tx`.
    pub malformed: u64,
    pub malformed_rx: u64,
    pub malformed_tx: u64,
    pub unknown_vni: u64,
    pub outer_size: OuterSizes,
    pub fragmented: Fragmented,
    pub inner_dst_mac_mismatch: u64,
    pub inner_src_vtep: u64,
    pub tcp: TcpCounters,
}

/// Outer packet sizes per direction.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OuterSizes {
    pub tx_over_1450: u64,
    pub tx_over_1500: u64,
    pub rx_over_1450: u64,
    pub rx_over_1500: u64,
    #[serde(default)]
    pub tx: SizeDistribution,
    #[serde(default)]
    pub rx: SizeDistribution,
}

/// First fragments of fragmented outer IPv4 packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragmented {
    pub tx: u64,
    pub rx: u64,
}

/// Inner TCP handshake counters, and (summary only) what became of the
/// handshakes over the whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpCounters {
    pub syn_sent: u64,
    pub syn_received: u64,
    pub synack_sent: u64,
    pub synack_received: u64,
    /// `rst_sent + rst_received`.
    pub rst: u64,
    pub rst_sent: u64,
    pub rst_received: u64,
    pub syn_retrans: u64,
    /// Only in the summary: interval lines carry none of it.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<TcpOutcome>,
}

/// What only a whole run knows about a peer's handshakes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TcpOutcome {
    pub unanswered_syn: u64,
    /// Our clients' SYNs to the peer's pods that got no SYN-ACK.
    pub unanswered_syn_out: u64,
    /// The peer's SYNs to our servers that got no SYN-ACK.
    pub unanswered_syn_in: u64,
    pub synack_dropped: u64,
    pub synack_dropped_reasons: BTreeMap<String, u64>,
    pub paws_rejects: u64,
    /// Half-open flows in conntrack at exit (absent when conntrack could
    /// not be read).
    #[serde(default)]
    pub conntrack_syn_sent: u64,
    #[serde(default)]
    pub conntrack_syn_recv: u64,
    pub handshake_us: Percentiles,
}

/// A distribution's percentiles; `count` where the number of samples
/// matters (latencies, silences), absent for rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of_u64(h: &hdrhistogram::Histogram<u64>) -> Self {
        Self {
            count: Some(h.len()),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }

    pub fn of_u32(h: &hdrhistogram::Histogram<u32>, with_count: bool) -> Self {
        Self {
            count: with_count.then(|| h.len()),
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
        }
    }

    /// No samples (with a count of 0).
    pub fn empty() -> Self {
        Self {
            count: Some(0),
            ..Default::default()
        }
    }
}

/// Outer IP packet sizes by bucket ([`SIZE_BUCKET_BOUNDS`]). Written as
/// `{"packets": N, "buckets": {"<=1450": N, …}, "p50": "<=256", "p99": …}`:
/// the buckets with packets, and the buckets holding the median and the
/// 99th percentile (derived, never read back).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeDistribution {
    pub counts: [u64; SIZE_BUCKETS],
}

impl SizeDistribution {
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn add(&mut self, o: &SizeDistribution) {
        for (a, b) in self.counts.iter_mut().zip(o.counts) {
            *a += b;
        }
    }

    /// "<=1450", or ">9000" for the last bucket.
    pub fn label(i: usize) -> String {
        if i < SIZE_BUCKETS - 1 {
            format!("<={}", SIZE_BUCKET_BOUNDS[i])
        } else {
            format!(">{}", SIZE_BUCKET_BOUNDS[SIZE_BUCKETS - 2])
        }
    }

    fn index_of(label: &str) -> Option<usize> {
        (0..SIZE_BUCKETS).find(|i| Self::label(*i) == label)
    }

    /// The bucket that holds quantile `q` of the packets.
    pub fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let target = ((q * total as f64).ceil() as u64).max(1);
        let mut acc = 0;
        self.counts.iter().position(|n| {
            acc += n;
            acc >= target
        })
    }

    /// The upper bound in bytes of the largest bucket with packets
    /// (`u32::MAX` for the last, open one).
    pub fn largest_bound(&self) -> Option<u32> {
        let i = self.counts.iter().rposition(|n| *n > 0)?;
        Some(SIZE_BUCKET_BOUNDS.get(i).copied().unwrap_or(u32::MAX))
    }
}

#[derive(Serialize, Deserialize)]
struct SizeDistributionRepr {
    packets: u64,
    buckets: BTreeMap<String, u64>,
    #[serde(default)]
    p50: Option<String>,
    #[serde(default)]
    p99: Option<String>,
}

impl Serialize for SizeDistribution {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SizeDistributionRepr {
            packets: self.total(),
            buckets: self
                .counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (Self::label(i), *n))
                .collect(),
            p50: self.quantile_bucket(0.5).map(Self::label),
            p99: self.quantile_bucket(0.99).map(Self::label),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for SizeDistribution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = SizeDistributionRepr::deserialize(d)?;
        let mut out = SizeDistribution::default();
        for (label, n) in repr.buckets {
            let i = Self::index_of(&label).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown outer size bucket {label:?}"))
            })?;
            out.counts[i] = n;
        }
        Ok(out)
    }
}

impl From<&PeerStats> for PeerCounters {
    fn from(s: &PeerStats) -> Self {
        Self {
            tx_encap: (&s.tx_encap).into(),
            rx_nic: (&s.rx_nic).into(),
            rx_decap: (&s.rx_decap).into(),
            tx_dev: (&s.tx_dev).into(),
            tx_flood: (&s.tx_flood).into(),
            malformed: s.malformed_rx + s.malformed_tx,
            malformed_rx: s.malformed_rx,
            malformed_tx: s.malformed_tx,
            unknown_vni: s.unknown_vni,
            outer_size: OuterSizes {
                tx_over_1450: packets_over(&s.tx_size, 1450),
                tx_over_1500: packets_over(&s.tx_size, 1500),
                rx_over_1450: packets_over(&s.rx_size, 1450),
                rx_over_1500: packets_over(&s.rx_size, 1500),
                tx: SizeDistribution { counts: s.tx_size },
                rx: SizeDistribution { counts: s.rx_size },
            },
            fragmented: Fragmented {
                tx: s.tx_fragmented,
                rx: s.rx_fragmented,
            },
            inner_dst_mac_mismatch: s.inner_dst_mac_mismatch,
            inner_src_vtep: s.inner_src_vtep,
            tcp: TcpCounters {
                syn_sent: s.syn_sent,
                syn_received: s.syn_received,
                synack_sent: s.synack_sent,
                synack_received: s.synack_received,
                rst: s.rst_sent + s.rst_received,
                rst_sent: s.rst_sent,
                rst_received: s.rst_received,
                syn_retrans: s.syn_retrans,
                outcome: None,
            },
        }
    }
}

impl PeerCounters {
    /// Adds `o`'s counters (interval lines summed into totals). What only
    /// a whole run knows (`tcp.outcome`) is left as it is.
    pub fn add(&mut self, o: &PeerCounters) {
        self.tx_encap.add(&o.tx_encap);
        self.rx_nic.add(&o.rx_nic);
        self.rx_decap.add(&o.rx_decap);
        self.tx_dev.add(&o.tx_dev);
        self.tx_flood.add(&o.tx_flood);
        self.malformed += o.malformed;
        self.malformed_rx += o.malformed_rx;
        self.malformed_tx += o.malformed_tx;
        self.unknown_vni += o.unknown_vni;
        let (s, t) = (&mut self.outer_size, &o.outer_size);
        s.tx_over_1450 += t.tx_over_1450;
        s.tx_over_1500 += t.tx_over_1500;
        s.rx_over_1450 += t.rx_over_1450;
        s.rx_over_1500 += t.rx_over_1500;
        s.tx.add(&t.tx);
        s.rx.add(&t.rx);
        self.fragmented.tx += o.fragmented.tx;
        self.fragmented.rx += o.fragmented.rx;
        self.inner_dst_mac_mismatch += o.inner_dst_mac_mismatch;
        self.inner_src_vtep += o.inner_src_vtep;
        let (a, b) = (&mut self.tcp, &o.tcp);
        a.syn_sent += b.syn_sent;
        a.syn_received += b.syn_received;
        a.synack_sent += b.synack_sent;
        a.synack_received += b.synack_received;
        a.rst += b.rst;
        a.rst_sent += b.rst_sent;
        a.rst_received += b.rst_received;
        a.syn_retrans += b.syn_retrans;
    }
}

/// One per-peer counter, declared once.
pub struct CounterDef {
    /// Where it is in a peer's JSON object, dotted (`tcp.syn_sent`).
    pub json: &'static str,
    /// Its Prometheus counter family (the exposition adds `_total`), when
    /// exported.
    pub metric: Option<&'static str>,
    pub help: &'static str,
    pub read: fn(&PeerCounters) -> u64,
}

/// Every per-peer counter. The screen, the metrics and the report iterate
/// this; `counters_match_the_json` below keeps it whole.
pub const PEER_COUNTERS: &[CounterDef] = &[
    CounterDef {
        json: "tx_encap.packets",
        metric: Some("vxtrace_tx_encap_packets"),
        help: "VXLAN packets sent to the peer (underlay egress)",
        read: |c| c.tx_encap.packets,
    },
    CounterDef {
        json: "tx_encap.bytes",
        metric: Some("vxtrace_tx_encap_bytes"),
        help: "VXLAN bytes sent to the peer",
        read: |c| c.tx_encap.bytes,
    },
    CounterDef {
        json: "rx_nic.packets",
        metric: Some("vxtrace_rx_nic_packets"),
        help: "VXLAN packets from the peer at the underlay device",
        read: |c| c.rx_nic.packets,
    },
    CounterDef {
        json: "rx_nic.bytes",
        metric: Some("vxtrace_rx_nic_bytes"),
        help: "VXLAN bytes from the peer at the underlay device",
        read: |c| c.rx_nic.bytes,
    },
    CounterDef {
        json: "rx_decap.packets",
        metric: Some("vxtrace_rx_decap_packets"),
        help: "Frames from the peer delivered by the VXLAN device",
        read: |c| c.rx_decap.packets,
    },
    CounterDef {
        json: "rx_decap.bytes",
        metric: Some("vxtrace_rx_decap_bytes"),
        help: "Bytes of frames from the peer delivered by the VXLAN device",
        read: |c| c.rx_decap.bytes,
    },
    CounterDef {
        json: "tx_dev.packets",
        metric: Some("vxtrace_tx_dev_packets"),
        help: "Frames handed to the VXLAN device for the peer",
        read: |c| c.tx_dev.packets,
    },
    CounterDef {
        json: "tx_dev.bytes",
        metric: None,
        help: "Bytes of frames handed to the VXLAN device for the peer",
        read: |c| c.tx_dev.bytes,
    },
    CounterDef {
        json: "tx_flood.packets",
        metric: Some("vxtrace_tx_flood_packets"),
        help: "Flooded copies sent to the peer (broadcast, multicast, unknown unicast of a layer-2 device); not in tx_encap",
        read: |c| c.tx_flood.packets,
    },
    CounterDef {
        json: "tx_flood.bytes",
        metric: None,
        help: "Bytes of flooded copies sent to the peer",
        read: |c| c.tx_flood.bytes,
    },
    CounterDef {
        json: "malformed",
        metric: Some("vxtrace_malformed_packets"),
        help: "Packets to the VXLAN port that are not valid VXLAN",
        read: |c| c.malformed,
    },
    CounterDef {
        json: "malformed_rx",
        metric: None,
        help: "Packets from the peer to the VXLAN port that are not valid VXLAN",
        read: |c| c.malformed_rx,
    },
    CounterDef {
        json: "malformed_tx",
        metric: None,
        help: "Packets to the peer's VXLAN port that are not valid VXLAN",
        read: |c| c.malformed_tx,
    },
    CounterDef {
        json: "unknown_vni",
        metric: Some("vxtrace_unknown_vni_packets"),
        help: "VXLAN packets with a VNI no watched device uses",
        read: |c| c.unknown_vni,
    },
    CounterDef {
        json: "outer_size.tx_over_1450",
        metric: None,
        help: "Outer packets above 1450 bytes sent to the peer",
        read: |c| c.outer_size.tx_over_1450,
    },
    CounterDef {
        json: "outer_size.tx_over_1500",
        metric: None,
        help: "Outer packets above 1500 bytes sent to the peer",
        read: |c| c.outer_size.tx_over_1500,
    },
    CounterDef {
        json: "outer_size.rx_over_1450",
        metric: None,
        help: "Outer packets above 1450 bytes from the peer",
        read: |c| c.outer_size.rx_over_1450,
    },
    CounterDef {
        json: "outer_size.rx_over_1500",
        metric: None,
        help: "Outer packets above 1500 bytes from the peer",
        read: |c| c.outer_size.rx_over_1500,
    },
    CounterDef {
        json: "outer_size.tx.packets",
        metric: None,
        help: "Outer packets sent to the peer, in the size distribution",
        read: |c| c.outer_size.tx.total(),
    },
    CounterDef {
        json: "outer_size.rx.packets",
        metric: None,
        help: "Outer packets from the peer, in the size distribution",
        read: |c| c.outer_size.rx.total(),
    },
    CounterDef {
        json: "fragmented.tx",
        metric: None,
        help: "First fragments of fragmented outer packets sent to the peer",
        read: |c| c.fragmented.tx,
    },
    CounterDef {
        json: "fragmented.rx",
        metric: None,
        help: "First fragments of fragmented outer packets from the peer",
        read: |c| c.fragmented.rx,
    },
    CounterDef {
        json: "inner_dst_mac_mismatch",
        metric: Some("vxtrace_inner_dst_mac_mismatch"),
        help: "Frames from the peer not addressed to this VTEP's MAC",
        read: |c| c.inner_dst_mac_mismatch,
    },
    CounterDef {
        json: "inner_src_vtep",
        metric: Some("vxtrace_inner_src_vtep"),
        help: "Frames from the peer whose inner source is the peer's VTEP",
        read: |c| c.inner_src_vtep,
    },
    CounterDef {
        json: "tcp.syn_sent",
        metric: Some("vxtrace_tcp_syn_sent"),
        help: "TCP SYNs sent to the peer's pods",
        read: |c| c.tcp.syn_sent,
    },
    CounterDef {
        json: "tcp.syn_received",
        metric: Some("vxtrace_tcp_syn_received"),
        help: "TCP SYNs received from the peer's pods",
        read: |c| c.tcp.syn_received,
    },
    CounterDef {
        json: "tcp.synack_sent",
        metric: Some("vxtrace_tcp_synack_sent"),
        help: "TCP SYN-ACKs sent to the peer's pods",
        read: |c| c.tcp.synack_sent,
    },
    CounterDef {
        json: "tcp.synack_received",
        metric: Some("vxtrace_tcp_synack_received"),
        help: "TCP SYN-ACKs received from the peer's pods",
        read: |c| c.tcp.synack_received,
    },
    CounterDef {
        json: "tcp.rst",
        metric: Some("vxtrace_tcp_rst"),
        help: "TCP RSTs sent to and received from the peer's pods",
        read: |c| c.tcp.rst,
    },
    CounterDef {
        json: "tcp.rst_sent",
        metric: None,
        help: "TCP RSTs sent to the peer's pods",
        read: |c| c.tcp.rst_sent,
    },
    CounterDef {
        json: "tcp.rst_received",
        metric: None,
        help: "TCP RSTs received from the peer's pods",
        read: |c| c.tcp.rst_received,
    },
    CounterDef {
        json: "tcp.syn_retrans",
        metric: Some("vxtrace_tcp_syn_retrans"),
        help: "Retransmitted TCP SYNs",
        read: |c| c.tcp.syn_retrans,
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A counter set in which every counter has its own value.
    fn distinct() -> PeerCounters {
        let mut s = PeerStats::default();
        let words = [
            &mut s.tx_encap.packets,
            &mut s.tx_encap.bytes,
            &mut s.rx_nic.packets,
            &mut s.rx_nic.bytes,
            &mut s.rx_decap.packets,
            &mut s.rx_decap.bytes,
            &mut s.tx_dev.packets,
            &mut s.tx_dev.bytes,
            &mut s.malformed_rx,
            &mut s.malformed_tx,
            &mut s.unknown_vni,
            &mut s.tx_fragmented,
            &mut s.rx_fragmented,
            &mut s.inner_dst_mac_mismatch,
            &mut s.inner_src_vtep,
            &mut s.syn_sent,
            &mut s.syn_received,
            &mut s.synack_sent,
            &mut s.synack_received,
            &mut s.rst_sent,
            &mut s.rst_received,
            &mut s.syn_retrans,
            &mut s.tx_flood.packets,
            &mut s.tx_flood.bytes,
        ];
        for (i, w) in words.into_iter().enumerate() {
            *w = 1000 + i as u64 * 7;
        }
        s.tx_size[3] = 5;
        s.rx_size[7] = 9;
        PeerCounters::from(&s)
    }

    /// Numeric leaves of a peer's JSON, dotted, leaving out the derived
    /// bucket labels.
    fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, u64>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "buckets" {
                        continue;
                    }
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &p, out);
                }
            }
            Value::Number(n) => {
                out.insert(prefix.to_string(), n.as_u64().unwrap());
            }
            _ => {}
        }
    }

    /// Every number in the JSON is declared, and every declaration reads
    /// the number the JSON holds at its path.
    #[test]
    fn counters_match_the_json() {
        let c = distinct();
        let mut json = BTreeMap::new();
        leaves(&serde_json::to_value(&c).unwrap(), "", &mut json);
        let declared: BTreeMap<String, u64> = PEER_COUNTERS
            .iter()
            .map(|d| (d.json.to_string(), (d.read)(&c)))
            .collect();
        assert_eq!(declared, json);
        let mut names: Vec<&str> = PEER_COUNTERS.iter().filter_map(|d| d.metric).collect();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a metric family declared twice");
    }

    /// Adding a counter set to itself doubles every declared counter.
    #[test]
    fn add_covers_every_counter() {
        let c = distinct();
        let mut twice = c.clone();
        twice.add(&c);
        for d in PEER_COUNTERS {
            assert_eq!((d.read)(&twice), 2 * (d.read)(&c), "{}", d.json);
        }
    }

    #[test]
    fn size_distribution_round_trips() {
        let mut d = SizeDistribution::default();
        d.counts[0] = 3;
        d.counts[SIZE_BUCKETS - 1] = 1;
        let v = serde_json::to_value(d).unwrap();
        assert_eq!(v["packets"], 4);
        assert_eq!(v["buckets"]["<=128"], 3);
        assert_eq!(v["buckets"][">9000"], 1);
        assert_eq!(v["p50"], "<=128");
        assert_eq!(v["p99"], ">9000");
        let back: SizeDistribution = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        assert!(
            serde_json::from_str::<SizeDistribution>(r#"{"packets":1,"buckets":{"<=7":1}}"#)
                .is_err()
        );
    }
}
