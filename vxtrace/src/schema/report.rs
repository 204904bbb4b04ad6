//! `vxtrace report --json`: what the recordings say, per peer.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{Finding, Outage, OutageGroup, TcpCounters, Traffic};

/// The report of one or more recordings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The recordings ended with a summary (the recorder was not killed).
    pub complete: bool,
    pub intervals: u64,
    /// Lines that were not JSON (cut short by a crash), skipped.
    pub truncated_lines: u64,
    /// Runs (headers) read.
    pub runs: u64,
    pub peers: BTreeMap<IpAddr, ReportPeer>,
    pub outage_groups: Vec<OutageGroup>,
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
    pub tcp: TcpCounters,
    pub outages: Vec<Outage>,
    /// The likely causes, most telling first.
    pub causes: Vec<Finding>,
}
