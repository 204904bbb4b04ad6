//! What vxtrace concludes, as it writes it: the diagnosis engine's
//! findings about a peer (`diagnosis`) and the static checks of `doctor`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

string_ids! {
    /// Why traffic with a peer fails (or looks odd): the diagnosis engine's
    /// vocabulary. Each has a row in the README's table of causes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Cause {
        /// Sent to the peer, nothing back at the underlay device.
        OneWay = "one_way",
        /// Arrived at the underlay device, dropped by netfilter before
        /// decapsulation.
        HostFirewall = "host_firewall",
        /// Netfilter drops the decapsulated (or not yet encapsulated) pod traffic.
        PodTrafficFirewall = "pod_traffic_firewall",
        /// Arrived at the underlay device, not decapsulated, no firewall drop.
        LostBeforeDecap = "lost_before_decap",
        /// Handed to the VXLAN device, never left the underlay device.
        LostWhileEncapsulating = "lost_while_encapsulating",
        /// The peer sends to this node's old VTEP MAC.
        StaleNeighbour = "stale_neighbour",
        /// The peer SNATs pod traffic into the overlay.
        Masquerade = "masquerade",
        /// TCP timestamps rejected by the PAWS check.
        PawsRejects = "paws_rejects",
        /// SYNs that never got a SYN-ACK.
        UnansweredSyn = "unanswered_syn",
        /// SYN-ACKs dropped on this node.
        SynAckDropped = "syn_ack_dropped",
        /// Packets to the VXLAN port that are not VXLAN.
        Malformed = "malformed",
        /// VXLAN with a VNI no device here uses.
        UnknownVni = "unknown_vni",
        /// Large outer packets sent, nothing back.
        PathMtu = "path_mtu",
        /// Several peers silent at the same moment: a policer on the path.
        GroupedOutage = "grouped_outage",
        /// Outages of this peer alone.
        IntermittentOutage = "intermittent_outage",
        /// Outer UDP checksums wrong: the receiver drops them (UDP_CSUM).
        BadChecksum = "bad_checksum",
        /// The peer sends VXLAN to a port no device here listens on.
        PortMismatch = "port_mismatch",
        /// The VXLAN driver's own drop reasons.
        VxlanDriverDrops = "vxlan_driver_drops",
        /// Packets too big for their path (PKT_TOO_BIG).
        PacketTooBig = "packet_too_big",
        /// Other kernel drops that lose the peer's traffic.
        KernelDrops = "kernel_drops",
        /// A pod subnet's route goes via a VTEP with no FDB entry (no underlay
        /// address): frames to it cannot be sent.
        MissingFdbEntry = "missing_fdb_entry",
        /// A pod subnet's route goes via a VTEP address with no neighbour entry.
        MissingNeighbour = "missing_neighbour",
        /// The VXLAN device decapsulated more of the peer's packets than
        /// arrived at every watched underlay device: the peer's traffic
        /// crosses a device vxtrace does not see (not loss).
        UnwatchedUnderlay = "unwatched_underlay",
        /// Seen from both ends: packets leave the sender's underlay device and
        /// never reach the receiver's.
        PathLoss = "path_loss",
        /// Seen from both ends: one node's traffic to several peers lost in
        /// the same seconds.
        SubnetBlackhole = "subnet_blackhole",
    }
}

string_ids! {
    /// Where on the way traffic is lost: the sending node, the underlay path
    /// between the nodes, the receiving node; `none` when nothing is lost
    /// (an anomaly, not a loss).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Segment {
        SenderHost = "sender_host",
        Path = "path",
        ReceiverHost = "receiver_host",
        None = "none",
        /// Only on a cluster report's links: one end's counts are missing (no
        /// recording of that node, or recordings that share no time), so
        /// whether and where traffic is lost cannot be told. Never "none".
        NotJudged = "not_judged",
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

string_ids! {
    /// How bad a `doctor` finding is.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Severity {
        /// Breaks traffic.
        Error = "error",
        /// May break traffic.
        Warning = "warning",
    }
}

string_ids! {
    /// The static checks of `vxtrace doctor`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub enum Check {
        FdbDuplicateUnderlay = "fdb_duplicate_underlay",
        FdbDstIsLocal = "fdb_dst_is_local",
        FdbDstVmNat = "fdb_dst_vm_nat",
        FdbDstUnreachable = "fdb_dst_unreachable",
        FdbDstWrongInterface = "fdb_dst_wrong_interface",
        FdbWithoutNeighbour = "fdb_without_neighbour",
        NeighbourWithoutFdb = "neighbour_without_fdb",
        RouteWithoutNeighbour = "route_without_neighbour",
        DuplicateMac = "duplicate_mac",
        MtuTooLarge = "mtu_too_large",
        PodMtuAboveVxlan = "pod_mtu_above_vxlan",
        FirewallDropsVxlan = "firewall_drops_vxlan",
        FirewallDropsPodTraffic = "firewall_drops_pod_traffic",
        MasqueradePodTraffic = "masquerade_pod_traffic",
        TcpTwRecycleWithNat = "tcp_tw_recycle_with_nat",
        RpFilterStrict = "rp_filter_strict",
        IpForwardOff = "ip_forward_off",
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

/// Named values as every finding's evidence is written, `key value, key
/// value`: a diagnosis finding's counts and a doctor finding's [`Evidence`]
/// alike.
pub fn evidence_text<K: std::fmt::Display, V: std::fmt::Display>(
    items: impl IntoIterator<Item = (K, V)>,
) -> String {
    items
        .into_iter()
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
