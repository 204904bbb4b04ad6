//! The per-peer counters as vxtrace writes them (interval lines, the
//! summary, recordings) and reads them back (`report`, the tests), and the
//! one declaration of every counter (`peer_counters!`, a row each): its
//! name in the JSON, how it is counted from the kernel's value, its
//! Prometheus family and its help text. The declaration gives
//! [`PEER_COUNTERS`], which consumers iterate, and the conversion from
//! [`PeerStats`] and [`PeerCounters::add`]. Unit tests hold the
//! declaration to the serde shape and to the kernel's layout, so a
//! counter cannot be added to one and not the others.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vxtrace_common::{Counter, PeerStats, SIZE_BUCKET_BOUNDS, SIZE_BUCKETS, packets_over};

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
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
    /// The size distributions are copied here; every other counter is set
    /// from its row in `peer_counters!`. `tcp.outcome` stays `None`: only
    /// a whole run knows it.
    fn from(s: &PeerStats) -> Self {
        let mut c = PeerCounters {
            outer_size: OuterSizes {
                tx: SizeDistribution { counts: s.tx_size },
                rx: SizeDistribution { counts: s.rx_size },
                ..OuterSizes::default()
            },
            ..PeerCounters::default()
        };
        c.set_kernel_counters(s);
        c
    }
}

impl PeerCounters {
    /// Adds `o`'s counters (interval lines summed into totals): the size
    /// distributions bucket by bucket, every other counter through its row
    /// in `peer_counters!`. What only a whole run knows (`tcp.outcome`) is
    /// left as it is.
    pub fn add(&mut self, o: &PeerCounters) {
        self.add_kernel_counters(o);
        self.outer_size.tx.add(&o.outer_size.tx);
        self.outer_size.rx.add(&o.outer_size.rx);
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

/// Declares the per-peer counters, one row each, so that a counter is
/// named in one place besides its field in [`PeerStats`] (the kernel's
/// layout) and in [`PeerCounters`] (the JSON's shape). From the rows it
/// generates [`PEER_COUNTERS`] and the two helpers behind
/// `From<&PeerStats>` and [`PeerCounters::add`].
///
/// A `kernel |s|` row is a number the JSON holds in a `u64` field:
/// `path: value, metric, help;`, where `path` is the field's path in
/// [`PeerCounters`] and, dotted, its name in the JSON, and `value` is its
/// count computed from the kernel's summed value `s`. Converting sets the
/// field to `value`; adding adds the field.
///
/// A `derived |c|` row is a number the JSON holds but no `u64` field does
/// (a size distribution's `packets`): `value` reads it off the counters
/// `c`. Converting and adding leave it to the code that handles what it
/// is derived from.
macro_rules! peer_counters {
    (
        kernel |$s:ident| {
            $($head:ident $(.$rest:ident)*: $value:expr, $metric:expr, $help:expr;)*
        }
        derived |$c:ident| {
            $($dhead:ident $(.$drest:ident)*: $dvalue:expr, $dmetric:expr, $dhelp:expr;)*
        }
    ) => {
        /// Every per-peer counter. The metrics iterate this;
        /// `counters_match_the_json` below keeps it whole.
        pub const PEER_COUNTERS: &[CounterDef] = &[
            $(CounterDef {
                json: concat!(stringify!($head) $(, ".", stringify!($rest))*),
                metric: $metric,
                help: $help,
                read: |c| c.$head $(.$rest)*,
            },)*
            $(CounterDef {
                json: concat!(stringify!($dhead) $(, ".", stringify!($drest))*),
                metric: $dmetric,
                help: $dhelp,
                read: |$c| $dvalue,
            },)*
        ];

        impl PeerCounters {
            /// Sets every counter of a `kernel` row from the kernel's value.
            fn set_kernel_counters(&mut self, $s: &PeerStats) {
                $(self.$head $(.$rest)* = $value;)*
            }

            /// Adds `o`'s counter of every `kernel` row.
            fn add_kernel_counters(&mut self, o: &PeerCounters) {
                $(self.$head $(.$rest)* += o.$head $(.$rest)*;)*
            }
        }
    };
}

peer_counters! {
    kernel |s| {
        tx_encap.packets: s.tx_encap.packets,
            Some("vxtrace_tx_encap_packets"),
            "VXLAN packets sent to the peer (underlay egress)";
        tx_encap.bytes: s.tx_encap.bytes,
            Some("vxtrace_tx_encap_bytes"),
            "VXLAN bytes sent to the peer";
        rx_nic.packets: s.rx_nic.packets,
            Some("vxtrace_rx_nic_packets"),
            "VXLAN packets from the peer at the underlay device";
        rx_nic.bytes: s.rx_nic.bytes,
            Some("vxtrace_rx_nic_bytes"),
            "VXLAN bytes from the peer at the underlay device";
        rx_decap.packets: s.rx_decap.packets,
            Some("vxtrace_rx_decap_packets"),
            "Frames from the peer delivered by the VXLAN device";
        rx_decap.bytes: s.rx_decap.bytes,
            Some("vxtrace_rx_decap_bytes"),
            "Bytes of frames from the peer delivered by the VXLAN device";
        tx_dev.packets: s.tx_dev.packets,
            Some("vxtrace_tx_dev_packets"),
            "Frames handed to the VXLAN device for the peer";
        tx_dev.bytes: s.tx_dev.bytes,
            None,
            "Bytes of frames handed to the VXLAN device for the peer";
        tx_flood.packets: s.tx_flood.packets,
            Some("vxtrace_tx_flood_packets"),
            "Flooded copies sent to the peer (broadcast, multicast, unknown unicast of a layer-2 device); not in tx_encap";
        tx_flood.bytes: s.tx_flood.bytes,
            None,
            "Bytes of flooded copies sent to the peer";
        malformed: s.malformed_rx + s.malformed_tx,
            Some("vxtrace_malformed_packets"),
            "Packets to the VXLAN port that are not valid VXLAN";
        malformed_rx: s.malformed_rx,
            None,
            "Packets from the peer to the VXLAN port that are not valid VXLAN";
        malformed_tx: s.malformed_tx,
            None,
            "Packets to the peer's VXLAN port that are not valid VXLAN";
        unknown_vni: s.unknown_vni,
            Some("vxtrace_unknown_vni_packets"),
            "VXLAN packets with a VNI no watched device uses";
        outer_size.tx_over_1450: packets_over(&s.tx_size, 1450),
            None,
            "Outer packets above 1450 bytes sent to the peer";
        outer_size.tx_over_1500: packets_over(&s.tx_size, 1500),
            None,
            "Outer packets above 1500 bytes sent to the peer";
        outer_size.rx_over_1450: packets_over(&s.rx_size, 1450),
            None,
            "Outer packets above 1450 bytes from the peer";
        outer_size.rx_over_1500: packets_over(&s.rx_size, 1500),
            None,
            "Outer packets above 1500 bytes from the peer";
        fragmented.tx: s.tx_fragmented,
            None,
            "First fragments of fragmented outer packets sent to the peer";
        fragmented.rx: s.rx_fragmented,
            None,
            "First fragments of fragmented outer packets from the peer";
        inner_dst_mac_mismatch: s.inner_dst_mac_mismatch,
            Some("vxtrace_inner_dst_mac_mismatch"),
            "Frames from the peer not addressed to this VTEP's MAC";
        inner_src_vtep: s.inner_src_vtep,
            Some("vxtrace_inner_src_vtep"),
            "Frames from the peer whose inner source is the peer's VTEP";
        tcp.syn_sent: s.syn_sent,
            Some("vxtrace_tcp_syn_sent"),
            "TCP SYNs sent to the peer's pods";
        tcp.syn_received: s.syn_received,
            Some("vxtrace_tcp_syn_received"),
            "TCP SYNs received from the peer's pods";
        tcp.synack_sent: s.synack_sent,
            Some("vxtrace_tcp_synack_sent"),
            "TCP SYN-ACKs sent to the peer's pods";
        tcp.synack_received: s.synack_received,
            Some("vxtrace_tcp_synack_received"),
            "TCP SYN-ACKs received from the peer's pods";
        tcp.rst: s.rst_sent + s.rst_received,
            Some("vxtrace_tcp_rst"),
            "TCP RSTs sent to and received from the peer's pods";
        tcp.rst_sent: s.rst_sent,
            None,
            "TCP RSTs sent to the peer's pods";
        tcp.rst_received: s.rst_received,
            None,
            "TCP RSTs received from the peer's pods";
        tcp.syn_retrans: s.syn_retrans,
            Some("vxtrace_tcp_syn_retrans"),
            "Retransmitted TCP SYNs";
    }
    derived |c| {
        outer_size.tx.packets: c.outer_size.tx.total(),
            None,
            "Outer packets sent to the peer, in the size distribution";
        outer_size.rx.packets: c.outer_size.rx.total(),
            None,
            "Outer packets from the peer, in the size distribution";
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use serde_json::Value;
    use vxtrace_common::PEER_COUNTER_WORDS;

    /// A kernel value in which every counter word (the size buckets
    /// included) has its own value.
    fn distinct_stats() -> PeerStats {
        let mut s = PeerStats::default();
        for (i, w) in s.counter_words_mut().iter_mut().enumerate() {
            *w = 1000 + i as u64 * 7;
        }
        s
    }

    /// A counter set in which every counter has its own value.
    fn distinct() -> PeerCounters {
        PeerCounters::from(&distinct_stats())
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

    /// Every number in the JSON is declared once, and every declaration
    /// reads the number the JSON holds at its path; no metric family is
    /// declared twice.
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
        assert_eq!(
            declared.len(),
            PEER_COUNTERS.len(),
            "a counter declared twice"
        );
        let mut metrics = BTreeSet::new();
        for name in PEER_COUNTERS.iter().filter_map(|d| d.metric) {
            assert!(metrics.insert(name), "metric family {name} declared twice");
        }
    }

    /// Adding a counter set to itself doubles every declared counter, and
    /// adding converted values is converting the kernel values summed.
    #[test]
    fn add_covers_every_counter() {
        let c = distinct();
        let mut twice = c.clone();
        twice.add(&c);
        for d in PEER_COUNTERS {
            assert_eq!((d.read)(&twice), 2 * (d.read)(&c), "{}", d.json);
        }
        let mut s = distinct_stats();
        s.merge(&distinct_stats());
        assert_eq!(twice, PeerCounters::from(&s));
    }

    /// Ties the kernel's layout to the declaration: every counter word of
    /// [`PeerStats`] shows in some declared counter, and every declared
    /// counter shows some word. A kernel counter no row reads, or a row
    /// that reads no kernel counter, fails here.
    #[test]
    fn every_kernel_counter_is_declared() {
        let mut reached = vec![false; PEER_COUNTERS.len()];
        for i in 0..PEER_COUNTER_WORDS {
            let mut s = PeerStats::default();
            s.counter_words_mut()[i] = 1;
            let c = PeerCounters::from(&s);
            let mut shown = false;
            for (d, r) in PEER_COUNTERS.iter().zip(&mut reached) {
                if (d.read)(&c) != 0 {
                    *r = true;
                    shown = true;
                }
            }
            assert!(
                shown,
                "PeerStats counter word {i} is in no declared counter"
            );
        }
        for (d, r) in PEER_COUNTERS.iter().zip(reached) {
            assert!(r, "{} reads no PeerStats counter", d.json);
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
