//! Everything vxtrace writes and reads back, as types: the NDJSON lines of
//! `watch --json` and of recordings (one enum, tagged by `type`), the
//! per-peer counters, the findings, and the JSON of `report` and `doctor`.
//!
//! The writer, the recorder, `report`, the Prometheus exporter and the
//! tests all use these types, so a field is spelt in one place and a
//! misspelt one does not compile. Names of existing fields never change;
//! new fields are added with `#[serde(default)]`, so recordings of earlier
//! releases still read.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

#[macro_use]
mod ids;
mod counters;
mod findings;
mod probes;
mod report;

pub use counters::*;
pub use findings::*;
pub use ids::UnknownId;
pub use probes::*;
pub use report::*;

/// One NDJSON line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The first line of every recording file.
    Header(Box<Header>),
    /// Once, when counting starts.
    Attached(Box<Attached>),
    /// Once per interval: what changed.
    Interval(Box<Interval>),
    OutageStart(Outage),
    OutageEnd(Outage),
    OutageGroup(OutageGroup),
    OneWay(OneWay),
    DeviceGone(DeviceChange),
    DeviceReattached(DeviceChange),
    DeviceError(DeviceChange),
    /// A device that carries the overlay now (a new uplink) and is watched
    /// from now on.
    DeviceAdded(DeviceChange),
    /// vxtrace stopped seeing some packets, or sees them again.
    BlindSpot(BlindSpot),
    /// An FDB entry's VTEP changed: a host moved behind another peer.
    MacMoved(MacMove),
    /// Exactly once, at exit.
    Summary(Box<Summary>),
}

impl Line {
    /// Parses one line of NDJSON.
    pub fn parse(text: &str) -> serde_json::Result<Line> {
        serde_json::from_str(text)
    }

    /// The line as NDJSON (no newline).
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string
        // or an address, and no value is a non-finite float that serde_json
        // rejects (it writes them as null).
        serde_json::to_string(self).expect("vxtrace's lines serialise")
    }

    /// Events are what the screen shows in words and the report reads.
    pub fn is_event(&self) -> bool {
        !matches!(
            self,
            Line::Header(_) | Line::Attached(_) | Line::Interval(_) | Line::Summary(_)
        )
    }
}

/// A VXLAN device and how it is configured (netlink's view, and the
/// devices of every line that lists them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanDevice {
    pub name: String,
    pub ifindex: u32,
    /// `None` for a metadata-based (`external`) device, which carries any VNI.
    pub vni: Option<u32>,
    pub port: u16,
    pub local: Option<IpAddr>,
    /// The underlay device named in the VXLAN config (`dev`), if any.
    pub link_ifindex: Option<u32>,
    /// Written as `0e:76:78:00:00:01`.
    #[serde(with = "mac_text")]
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub gbp: bool,
    pub learning: bool,
    /// `l2miss` / `l3miss`: the overlay agent programs FDB and neighbour
    /// entries when the kernel reports a miss, so a missing entry is normal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fills_on_demand: bool,
    /// Enslaved to a bridge: inner frames are addressed to other hosts'
    /// MACs, not to the device's own.
    pub bridged: bool,
}

#[cfg(test)]
impl VxlanDevice {
    /// A flannel-like device for unit tests (no local address, underlay,
    /// MAC; MTU 1450; no options).
    pub fn for_test(name: &str, ifindex: u32, vni: Option<u32>, port: u16) -> Self {
        Self {
            name: name.into(),
            ifindex,
            vni,
            port,
            local: None,
            link_ifindex: None,
            mac: None,
            mtu: Some(1450),
            gbp: false,
            learning: false,
            fills_on_demand: false,
            bridged: false,
        }
    }
}

/// A MAC address as text.
mod mac_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Option<[u8; 6]>, s: S) -> Result<S::Ok, S::Error> {
        match mac {
            Some(m) => s.serialize_str(&crate::mac::format_mac(m)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let bytes: Vec<u8> = text
            .split(':')
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<_, _>>()
            .map_err(serde::de::Error::custom)?;
        let mac: [u8; 6] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a MAC address")))?;
        Ok(Some(mac))
    }
}

/// The node that wrote a line: its name and its VTEP addresses (each
/// watched VXLAN device's local address). A peer address seen on one node
/// is a VTEP of another: that is how nodes' outputs are joined.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub vteps: Vec<IpAddr>,
}

/// Peer addresses that are one node, as far as this node's own kernel
/// state shows it (a dual-stack node's IPv4 and IPv6 VTEP addresses are
/// two peers): `{"peers":["192.0.2.12","2001:db8:1::12"],"evidence":"same
/// underlay MAC 0e:…"}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerNode {
    pub peers: Vec<IpAddr>,
    pub evidence: String,
}

/// The first line of every recording file: what produced it, where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Absent in recordings of the first release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    pub version: String,
    pub command_line: Vec<String>,
    pub kernel: String,
    pub host: String,
    /// Unix time, seconds.
    pub started: f64,
    pub devices: Vec<VxlanDevice>,
    pub underlays: Vec<String>,
    pub ports: Vec<u16>,
    #[serde(default)]
    pub doctor: Vec<DoctorFinding>,
}

/// What `watch` attached to, once counting starts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attached {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    pub devices: Vec<VxlanDevice>,
    pub underlays: Vec<String>,
    pub ports: Vec<u16>,
    /// Ports where VXLAN from a peer is counted as a port mismatch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatch_ports: Vec<u16>,
    pub attached: Vec<Attachment>,
    pub probes: Probes,
    pub netns: NetnsScope,
    #[serde(default)]
    pub doctor: Vec<DoctorFinding>,
    pub notes: Vec<String>,
    /// What vxtrace cannot see from the start (programs ahead of it that
    /// it cannot overtake, XDP programs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blind_spots: Vec<BlindSpot>,
}

/// Rates of the three directions that matter most, per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub tx_encap: f64,
    pub rx_nic: f64,
    pub rx_decap: f64,
}

/// One peer's counters over one interval.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerInterval {
    #[serde(flatten)]
    pub counters: PeerCounters,
    /// Drops by reason in this interval (absent when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops: BTreeMap<String, u64>,
    /// Packets per second.
    #[serde(default)]
    pub pps: Rates,
    /// Bits per second.
    #[serde(default)]
    pub bps: Rates,
    /// Seconds since something last arrived while we kept sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_silent_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_into_silence: Option<u64>,
}

/// vxtrace's own cost in an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SelfCost {
    /// Time spent reading every map once.
    pub read_ms: f64,
    pub peers_known: u64,
}

/// One interval: the peers that changed (or the `--peer` selection).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Unix time at the end of the interval.
    pub ts: f64,
    pub elapsed_s: f64,
    pub interval_s: f64,
    pub peers: BTreeMap<IpAddr, PeerInterval>,
    /// Drops of no peer in this interval, by reason.
    #[serde(default)]
    pub drops_other: BTreeMap<String, u64>,
    #[serde(rename = "self", default)]
    pub cost: SelfCost,
}

/// A peer silent while we keep sending to it (`outage_start` /
/// `outage_end`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outage {
    pub peer: IpAddr,
    /// Unix time, seconds: the middle of the last interval with rx.
    pub start: f64,
    pub end: Option<f64>,
    pub duration_s: Option<f64>,
    pub sent_into_silence: u64,
    /// tx_encap packet rate over the 10 s before the silence.
    pub tx_pps_before: f64,
    /// Other peers whose outages started within a second of this one.
    pub silent_together: Vec<IpAddr>,
}

/// Peers that went silent within the same second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutageGroup {
    pub start: f64,
    pub peers: Vec<IpAddr>,
}

/// Sent to, nothing back, over a whole window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OneWay {
    pub peer: IpAddr,
    pub sent: u64,
    pub received: u64,
    pub window_s: f64,
}

/// A watched device went away, came back, or could not be re-attached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceChange {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    pub message: String,
}

/// A MAC whose FDB entry now sends it to another VTEP (EVPN MAC mobility,
/// a migrated VM, a pod rescheduled with its MAC): counted on `to` from
/// the next packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacMove {
    pub device: String,
    #[serde(with = "mac_text")]
    pub mac: Option<[u8; 6]>,
    pub vni: u32,
    pub from: IpAddr,
    pub to: IpAddr,
}

/// One outage in a peer's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutageRecord {
    pub start: f64,
    pub end: Option<f64>,
    pub duration_s: Option<f64>,
    pub sent_into_silence: u64,
    pub silent_together: Vec<IpAddr>,
    #[serde(default)]
    pub tx_pps_before: f64,
    /// Still going on at exit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ongoing: bool,
}

impl From<&Outage> for OutageRecord {
    fn from(o: &Outage) -> Self {
        Self {
            start: o.start,
            end: o.end,
            duration_s: o.duration_s,
            sent_into_silence: o.sent_into_silence,
            silent_together: o.silent_together.clone(),
            tx_pps_before: o.tx_pps_before,
            ongoing: o.end.is_none(),
        }
    }
}

/// A peer's silences over the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Silences {
    pub outages: Vec<OutageRecord>,
    pub outages_total: u64,
    /// One-way at any time during the run.
    pub one_way: bool,
    /// One-way at exit.
    pub one_way_now: bool,
    pub longest_silence_s: f64,
    /// Gaps between arrivals longer than an interval, in ms.
    pub rx_silences_ms: Percentiles,
}

impl Default for Silences {
    fn default() -> Self {
        Self {
            outages: Vec::new(),
            outages_total: 0,
            one_way: false,
            one_way_now: false,
            longest_silence_s: 0.0,
            rx_silences_ms: Percentiles::empty(),
        }
    }
}

/// Where in the kernel drops of one reason happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropLocation {
    pub reason: String,
    /// `function+offset`, or an address where /proc/kallsyms is hidden.
    pub location: String,
    pub count: u64,
}

/// Percentiles of the per-interval packet rates (packets/s).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePercentiles {
    pub tx_encap: Percentiles,
    pub rx_nic: Percentiles,
    pub rx_decap: Percentiles,
}

/// One peer over the whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerSummary {
    #[serde(flatten)]
    pub counters: PeerCounters,
    pub drops: BTreeMap<String, u64>,
    #[serde(default)]
    pub drop_locations: Vec<DropLocation>,
    /// Drops of outer VXLAN packets, by reason (also in `drops`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops_outer: BTreeMap<String, u64>,
    /// Drops that lose no traffic, by reason (also in `drops`): normal on a
    /// busy node, never a finding.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops_not_loss: BTreeMap<String, u64>,
    /// VXLAN to or from the peer on a well-known VXLAN port no watched
    /// device uses, by port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mismatch: Vec<PortMismatch>,
    /// Packets of the peer's traffic dropped as too big for their path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_big: Option<TooBigDrops>,
    /// Peers given with `--peer`, and the first 1,024 others with traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates_pps: Option<RatePercentiles>,
    #[serde(flatten)]
    pub silences: Silences,
    /// The findings, one line each.
    #[serde(default)]
    pub hints: Vec<String>,
    #[serde(default)]
    pub findings: Vec<Finding>,
}

impl PeerSummary {
    /// The run's TCP outcome (zeros where the line carries none).
    pub fn tcp_outcome(&self) -> TcpOutcome {
        self.counters.tcp.outcome.clone().unwrap_or_default()
    }
}

/// VXLAN on a port no watched device uses: packets per direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMismatch {
    pub port: u16,
    pub rx: u64,
    pub tx: u64,
}

/// Too-big drops: how many, and the largest packet (bytes as dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TooBigDrops {
    pub packets: u64,
    pub largest_bytes: u64,
}

/// What a pod subnet's route lacks to reach a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingEntry {
    Neighbour,
    FdbEntry,
}

/// A VTEP that pod subnets are routed to and that cannot be reached (no
/// neighbour entry, or no FDB entry: no underlay address), with the drops
/// of frames sent to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnresolvedVtep {
    pub vtep: IpAddr,
    pub device: String,
    pub subnets: Vec<String>,
    pub mac: Option<String>,
    pub missing: MissingEntry,
    pub drops: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<Finding>,
}

/// Peers summed into one (those not asked for with `--peer`, or those
/// retired to bound memory).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerGroup {
    pub count: u64,
    pub totals: PeerCounters,
}

/// The drop program's own accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropMapStats {
    /// Keys created in the drop map.
    pub inserted: u64,
    /// Drops seen in scope.
    pub seen: u64,
    /// Drops of namespaces out of scope (not counted).
    pub out_of_scope: u64,
}

/// The kernel's per-peer map. Its entries are (peer, CPU) pairs: a peer
/// has one for each CPU that counted it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerMapStats {
    /// Entries it holds at most (`--max-peers` on every online CPU).
    pub capacity: u32,
    pub entries: u64,
    pub inserted: u64,
    /// Entries the LRU made room by (their counts are kept).
    pub evictions: u64,
    pub insert_failed: u64,
}

/// Frames that belong to no peer (group or unknown MACs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unattributed {
    pub rx_decap: Traffic,
    pub tx_dev: Traffic,
}

/// Conntrack at exit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The kernel's TcpExt PAWS counters, as deltas over the run: summed over
/// the namespaces in scope, and per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetstatPaws {
    #[serde(flatten)]
    pub total: BTreeMap<String, u64>,
    pub namespaces: BTreeMap<String, BTreeMap<String, u64>>,
}

/// The run, cumulative since start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    pub duration_s: f64,
    pub interval_s: f64,
    pub intervals: u64,
    pub peers: BTreeMap<IpAddr, PeerSummary>,
    /// Peers that are one node (see [`PeerNode`]), from the neighbour
    /// entries of the underlay devices at exit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_nodes: Vec<PeerNode>,
    /// With `--peer`: everyone else, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_peers: Option<PeerGroup>,
    /// Peers forgotten to bound memory, summed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_peers: Option<PeerGroup>,
    pub drops_other: BTreeMap<String, u64>,
    #[serde(default)]
    pub drop_locations_other: Vec<DropLocation>,
    /// VTEPs pod subnets are routed to that cannot be reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<UnresolvedVtep>,
    /// Errors the watched VXLAN devices counted over the run (all kernels
    /// count these; older ones have no drop reasons).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub device_errors: BTreeMap<String, BTreeMap<String, u64>>,
    /// The kernel's UDP checksum error counter (`UdpInCsumErrors`, and
    /// `Udp6InCsumErrors`), as deltas over the run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub netstat_udp: BTreeMap<String, u64>,
    #[serde(default)]
    pub drop_map: DropMapStats,
    #[serde(default)]
    pub unattributed: Unattributed,
    #[serde(default)]
    pub peer_map: PeerMapStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<Probes>,
    #[serde(default)]
    pub netstat_paws: NetstatPaws,
    #[serde(default)]
    pub conntrack: ConntrackStatus,
    #[serde(default)]
    pub doctor: Vec<DoctorFinding>,
    #[serde(default)]
    pub devices: Vec<VxlanDevice>,
    #[serde(default)]
    pub underlays: Vec<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub attached: Vec<Attachment>,
    /// What vxtrace did not see at some point of the run (see `BlindSpot`);
    /// empty when it saw every packet on every watched device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blind_spots: Vec<BlindSpot>,
}

impl Summary {
    /// A peer's summary; an empty one when the run never saw the peer
    /// ("nothing from this peer" is an answer too).
    pub fn peer(&self, addr: &str) -> PeerSummary {
        addr.parse::<IpAddr>()
            .ok()
            .and_then(|a| self.peers.get(&a).cloned())
            .unwrap_or_default()
    }
}

/// Rounds to milliseconds (seconds as written).
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Unix time now, in seconds rounded to milliseconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| round3(d.as_secs_f64()))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/recordings");

    /// Every line a 0.1 release wrote reads as a typed line, and writes
    /// back with the same fields and values.
    #[test]
    fn recordings_of_the_first_release_read_and_round_trip() {
        for name in ["one-way-v0.1.ndjson", "host-firewall-killed-v0.1.ndjson"] {
            let text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
            for (n, raw) in text.lines().enumerate() {
                let line = Line::parse(raw).unwrap_or_else(|e| panic!("{name}:{}: {e}", n + 1));
                let original: serde_json::Value = serde_json::from_str(raw).unwrap();
                let written: serde_json::Value = serde_json::from_str(&line.to_json()).unwrap();
                assert_eq!(
                    without_new_fields(written),
                    original,
                    "{name}:{} does not round-trip",
                    n + 1
                );
            }
        }
    }

    /// Fields this release adds, which the 0.1 lines lack.
    fn without_new_fields(mut v: serde_json::Value) -> serde_json::Value {
        if let Some(peers) = v.get_mut("peers").and_then(|p| p.as_object_mut()) {
            for p in peers.values_mut() {
                if let Some(o) = p.as_object_mut() {
                    o.remove("findings");
                    o.remove("tx_flood");
                    if let Some(outages) = o.get_mut("outages").and_then(|x| x.as_array_mut()) {
                        for out in outages {
                            out.as_object_mut().unwrap().remove("tx_pps_before");
                        }
                    }
                }
            }
        }
        v
    }

    #[test]
    fn a_misspelt_type_is_an_error() {
        assert!(Line::parse(r#"{"type":"intreval","ts":1}"#).is_err());
        assert!(Line::parse(r#"{"type":"one_way","peer":"192.0.2.1"}"#).is_err());
    }
}
