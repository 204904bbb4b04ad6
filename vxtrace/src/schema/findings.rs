//! What vxtrace concludes, as it writes it: the diagnosis engine's
//! findings about a peer (`diagnosis`) and the static checks of `doctor`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why traffic with a peer fails (or looks odd): the diagnosis engine's
/// vocabulary. Each has a row in the README's table of causes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Sent to the peer, nothing back at the underlay device.
    OneWay,
    /// Arrived at the underlay device, dropped by netfilter before
    /// decapsulation.
    HostFirewall,
    /// Netfilter drops the decapsulated (or not yet encapsulated) pod traffic.
    PodTrafficFirewall,
    /// Arrived at the underlay device, not decapsulated, no firewall drop.
    LostBeforeDecap,
    /// Handed to the VXLAN device, never left the underlay device.
    LostWhileEncapsulating,
    /// The peer sends to this node's old VTEP MAC.
    StaleNeighbour,
    /// The peer SNATs pod traffic into the overlay.
    Masquerade,
    /// TCP timestamps rejected by the PAWS check.
    PawsRejects,
    /// SYNs that never got a SYN-ACK.
    UnansweredSyn,
    /// SYN-ACKs dropped on this node.
    SynAckDropped,
    /// Packets to the VXLAN port that are not VXLAN.
    Malformed,
    /// VXLAN with a VNI no device here uses.
    UnknownVni,
    /// Large outer packets sent, nothing back.
    PathMtu,
    /// Several peers silent at the same moment: a policer on the path.
    GroupedOutage,
    /// Outages of this peer alone.
    IntermittentOutage,
    /// Outer UDP checksums wrong: the receiver drops them (UDP_CSUM).
    BadChecksum,
    /// The peer sends VXLAN to a port no device here listens on.
    PortMismatch,
    /// The VXLAN driver's own drop reasons.
    VxlanDriverDrops,
    /// Packets too big for their path (PKT_TOO_BIG).
    PacketTooBig,
    /// Other kernel drops that lose the peer's traffic.
    KernelDrops,
    /// A pod subnet's route goes via a VTEP with no FDB entry (no underlay
    /// address): frames to it cannot be sent.
    MissingFdbEntry,
    /// A pod subnet's route goes via a VTEP address with no neighbour entry.
    MissingNeighbour,
    /// The VXLAN device decapsulated more of the peer's packets than
    /// arrived at every watched underlay device: the peer's traffic
    /// crosses a device vxtrace does not see (not loss).
    UnwatchedUnderlay,
    /// Seen from both ends: packets leave the sender's underlay device and
    /// never reach the receiver's.
    PathLoss,
    /// Seen from both ends: one node's traffic to several peers lost in
    /// the same seconds.
    SubnetBlackhole,
}

impl Cause {
    /// The name it is written under (`one_way`).
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::OneWay => "one_way",
            Cause::HostFirewall => "host_firewall",
            Cause::PodTrafficFirewall => "pod_traffic_firewall",
            Cause::LostBeforeDecap => "lost_before_decap",
            Cause::LostWhileEncapsulating => "lost_while_encapsulating",
            Cause::StaleNeighbour => "stale_neighbour",
            Cause::Masquerade => "masquerade",
            Cause::PawsRejects => "paws_rejects",
            Cause::UnansweredSyn => "unanswered_syn",
            Cause::SynAckDropped => "syn_ack_dropped",
            Cause::Malformed => "malformed",
            Cause::UnknownVni => "unknown_vni",
            Cause::PathMtu => "path_mtu",
            Cause::GroupedOutage => "grouped_outage",
            Cause::IntermittentOutage => "intermittent_outage",
            Cause::BadChecksum => "bad_checksum",
            Cause::PortMismatch => "port_mismatch",
            Cause::VxlanDriverDrops => "vxlan_driver_drops",
            Cause::PacketTooBig => "packet_too_big",
            Cause::KernelDrops => "kernel_drops",
            Cause::MissingFdbEntry => "missing_fdb_entry",
            Cause::MissingNeighbour => "missing_neighbour",
            Cause::UnwatchedUnderlay => "unwatched_underlay",
            Cause::PathLoss => "path_loss",
            Cause::SubnetBlackhole => "subnet_blackhole",
        }
    }
}

/// Where on the way traffic is lost: the sending node, the underlay path
/// between the nodes, the receiving node; `none` when nothing is lost
/// (an anomaly, not a loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    SenderHost,
    Path,
    ReceiverHost,
    None,
    /// Only on a cluster report's links: one end's counts are missing (no
    /// recording of that node, or recordings that share no time), so
    /// whether and where traffic is lost cannot be told. Never "none".
    NotJudged,
}

impl Segment {
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::SenderHost => "sender_host",
            Segment::Path => "path",
            Segment::ReceiverHost => "receiver_host",
            Segment::None => "none",
            Segment::NotJudged => "not_judged",
        }
    }
}

/// Which traffic a finding is about, seen from the node that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// This node to the peer.
    ToPeer,
    /// The peer to this node.
    FromPeer,
    /// Both, or cannot be told apart (a handshake).
    Both,
}

/// One conclusion about a peer: the cause in words, where the traffic is
/// lost, the numbers that show it, and what to change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The cause, as a stable name (`one_way`, `host_firewall`, …).
    pub kind: Cause,
    /// A short statement with the numbers that matter
    /// ("one-way: sent 200, received 0").
    pub headline: String,
    /// What it means, in words.
    pub cause: String,
    pub segment: Segment,
    pub direction: Direction,
    /// The counters behind it ("tx_encap 200, rx_nic 0").
    pub evidence: String,
    /// What to change or check, in the user's terms.
    pub fix: String,
}

impl Finding {
    /// The finding as one line of the live screen and the summary's `hints`.
    pub fn hint(&self) -> String {
        format!("{}; {}; fix: {}", self.headline, self.cause, self.fix)
    }
}

/// How bad a `doctor` finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Breaks traffic.
    Error,
    /// May break traffic.
    Warning,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// The static checks of `vxtrace doctor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    FdbDuplicateUnderlay,
    FdbDstIsLocal,
    FdbDstVmNat,
    FdbDstUnreachable,
    FdbDstWrongInterface,
    FdbWithoutNeighbour,
    NeighbourWithoutFdb,
    RouteWithoutNeighbour,
    DuplicateMac,
    MtuTooLarge,
    PodMtuAboveVxlan,
    FirewallDropsVxlan,
    FirewallDropsPodTraffic,
    MasqueradePodTraffic,
    TcpTwRecycleWithNat,
    RpFilterStrict,
    IpForwardOff,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::FdbDuplicateUnderlay => "fdb_duplicate_underlay",
            Check::FdbDstIsLocal => "fdb_dst_is_local",
            Check::FdbDstVmNat => "fdb_dst_vm_nat",
            Check::FdbDstUnreachable => "fdb_dst_unreachable",
            Check::FdbDstWrongInterface => "fdb_dst_wrong_interface",
            Check::FdbWithoutNeighbour => "fdb_without_neighbour",
            Check::NeighbourWithoutFdb => "neighbour_without_fdb",
            Check::RouteWithoutNeighbour => "route_without_neighbour",
            Check::DuplicateMac => "duplicate_mac",
            Check::MtuTooLarge => "mtu_too_large",
            Check::PodMtuAboveVxlan => "pod_mtu_above_vxlan",
            Check::FirewallDropsVxlan => "firewall_drops_vxlan",
            Check::FirewallDropsPodTraffic => "firewall_drops_pod_traffic",
            Check::MasqueradePodTraffic => "masquerade_pod_traffic",
            Check::TcpTwRecycleWithNat => "tcp_tw_recycle_with_nat",
            Check::RpFilterStrict => "rp_filter_strict",
            Check::IpForwardOff => "ip_forward_off",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One value of a doctor finding's evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EvidenceValue {
    Flag(bool),
    Number(i64),
    Text(String),
    List(Vec<String>),
}

impl From<bool> for EvidenceValue {
    fn from(v: bool) -> Self {
        EvidenceValue::Flag(v)
    }
}

impl From<u32> for EvidenceValue {
    fn from(v: u32) -> Self {
        EvidenceValue::Number(v.into())
    }
}

impl From<i32> for EvidenceValue {
    fn from(v: i32) -> Self {
        EvidenceValue::Number(v.into())
    }
}

impl From<i64> for EvidenceValue {
    fn from(v: i64) -> Self {
        EvidenceValue::Number(v)
    }
}

impl From<String> for EvidenceValue {
    fn from(v: String) -> Self {
        EvidenceValue::Text(v)
    }
}

impl From<&str> for EvidenceValue {
    fn from(v: &str) -> Self {
        EvidenceValue::Text(v.to_string())
    }
}

impl From<std::net::IpAddr> for EvidenceValue {
    fn from(v: std::net::IpAddr) -> Self {
        EvidenceValue::Text(v.to_string())
    }
}

impl From<&std::net::IpAddr> for EvidenceValue {
    fn from(v: &std::net::IpAddr) -> Self {
        EvidenceValue::Text(v.to_string())
    }
}

impl From<&String> for EvidenceValue {
    fn from(v: &String) -> Self {
        EvidenceValue::Text(v.clone())
    }
}

impl<T: ToString> From<Vec<T>> for EvidenceValue {
    fn from(v: Vec<T>) -> Self {
        EvidenceValue::List(v.iter().map(ToString::to_string).collect())
    }
}

impl<T: ToString> From<&Vec<T>> for EvidenceValue {
    fn from(v: &Vec<T>) -> Self {
        EvidenceValue::List(v.iter().map(ToString::to_string).collect())
    }
}

impl std::fmt::Display for EvidenceValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EvidenceValue::Flag(b) => write!(f, "{b}"),
            EvidenceValue::Number(n) => write!(f, "{n}"),
            EvidenceValue::Text(t) => f.write_str(t),
            EvidenceValue::List(l) => f.write_str(&l.join(", ")),
        }
    }
}

/// Evidence as `key value, key value`.
pub fn evidence_text(e: &Evidence) -> String {
    e.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a doctor check saw: named values from the kernel's tables.
pub type Evidence = BTreeMap<String, EvidenceValue>;

/// A finding of `vxtrace doctor` (also run by `watch` at start).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DoctorFinding {
    pub check: Check,
    pub severity: Severity,
    pub device: String,
    pub message: String,
    pub evidence: Evidence,
    pub fix: String,
}

/// `vxtrace doctor --json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub findings: Vec<DoctorFinding>,
    pub notes: Vec<String>,
}
