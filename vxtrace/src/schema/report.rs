//! `vxtrace report --json`: what the recordings say, per peer.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Finding, Outage, OutageGroup, TcpCounters, Traffic, UnresolvedVtep};

/// The report of one or more recordings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The recordings ended with a summary (the recorder was not killed).
    pub complete: bool,
    pub intervals: u64,
    /// Lines that were not JSON (cut short by a crash), skipped.
    pub truncated_lines: u64,
    /// Runs read: each run's header counted once, however many files it
    /// rotated into.
    pub runs: u64,
    /// Files read (each once, however they were named).
    #[serde(default)]
    pub files: u64,
    pub peers: BTreeMap<IpAddr, ReportPeer>,
    pub outage_groups: Vec<OutageGroup>,
    /// VTEPs pod subnets were routed to that could not be reached (from
    /// the summary).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<UnresolvedVtep>,
}

/// One peer of a report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportPeer {
    pub tx_encap: Traffic,
    pub rx_nic: Traffic,
    pub rx_decap: Traffic,
    #[serde(default)]
    pub tx_dev: Traffic,
    pub drops: BTreeMap<String, u64>,
    /// Of those, the drops that lose no traffic.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub drops_not_loss: BTreeMap<String, u64>,
    pub tcp: TcpCounters,
    pub outages: Vec<Outage>,
    /// The likely causes, most telling first.
    pub causes: Vec<Finding>,
}

/// `vxtrace report` over recordings of several nodes: every directed link
/// between them, where its traffic is lost and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    pub nodes: Vec<NodeReport>,
    /// Clock difference between nodes tolerated, seconds.
    pub clock_skew_s: f64,
    pub links: Vec<Link>,
    /// One node's traffic to several peers lost in the same seconds.
    pub blackholes: Vec<Blackhole>,
    /// Peers of the recorded nodes that no recording given is from: they
    /// are in the matrix and the links, their links not judged.
    #[serde(default)]
    pub unrecorded: Vec<UnrecordedNode>,
}

/// A peer no recording given is from (a node not recorded, or its
/// recording left out).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnrecordedNode {
    /// Its address: nothing else names it.
    pub name: String,
    /// Its addresses (those a recorded node's kernel state shows are one
    /// node, e.g. a dual-stack node's IPv4 and IPv6 VTEP).
    pub vteps: Vec<IpAddr>,
    /// The recorded nodes that count it as a peer.
    pub seen_by: Vec<String>,
}

/// Whether a link's two ends could be compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkStatus {
    /// Both ends' counts over the span their recordings share.
    #[default]
    Judged,
    /// One end has no recording: only the recorded end's counts and its
    /// own findings (`loss_segment` `not_judged`).
    FarEndNotRecorded,
    /// The recordings share no time, even with the clocks lined up within
    /// `--clock-skew` (`loss_segment` `not_judged`).
    NoSharedSpan,
}

/// One node of a cluster report: who it is, what it recorded, and its own
/// per-peer report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub name: String,
    pub vteps: Vec<IpAddr>,
    /// Unix time of its first and last interval.
    pub start: f64,
    pub end: f64,
    pub report: Report,
}

/// One directed link A→B, over the span both recordings share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// A's VTEP address.
    pub from: IpAddr,
    /// B's VTEP address.
    pub to: IpAddr,
    pub from_node: String,
    pub to_node: String,
    /// Frames A handed to its VXLAN device for B.
    pub tx_dev: u64,
    /// Packets A encapsulated to B (left A's underlay device).
    pub tx_encap: u64,
    /// Packets from A at B's underlay device.
    pub rx_nic: u64,
    /// Frames from A that B's VXLAN device delivered.
    pub rx_decap: u64,
    /// B's drops of A's traffic, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Where the traffic is lost: `sender_host`, `path`, `receiver_host`,
    /// `none`; `not_judged` when one end's counts are missing (`status`).
    pub loss_segment: super::Segment,
    /// Packets lost on that segment, and their share of what entered it
    /// (0 when not judged).
    pub lost: u64,
    pub loss_pct: f64,
    /// The likely cause (`none` when nothing is lost).
    pub cause: Option<super::Cause>,
    pub evidence: String,
    /// Every finding about the link, most telling first. Not judged: the
    /// recorded ends' own findings about each other, as their single-node
    /// reports name them.
    pub findings: Vec<Finding>,
    /// Unix times of the span compared, by the sender's clock; for a far
    /// end not recorded, the recorded end's span; (0, 0) when the
    /// recordings share no time.
    pub window: (f64, f64),
    #[serde(default)]
    pub status: LinkStatus,
    /// Why the link is not judged, and what to do, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_judged: Option<String>,
    /// How far the receiver's clock is ahead of the sender's, seconds, as
    /// the traffic lined them up (within `--clock-skew`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_s: Option<f64>,
    /// Recordings that share no time: the offset (receiver's clock ahead
    /// of the sender's, seconds) under which their traffic lines up, if it
    /// does anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggested_clock_offset_s: Option<f64>,
}

/// A node's traffic to several peers lost in the same seconds, while others
/// still reach them: a device on the path blackholes that node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Blackhole {
    pub node: String,
    pub vteps: Vec<IpAddr>,
    pub start: f64,
    pub end: f64,
    /// The peers it could not reach.
    pub peers: Vec<IpAddr>,
    pub evidence: String,
}
