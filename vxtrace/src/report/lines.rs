//! Recordings built from typed lines, for the report's unit tests: what a
//! node's recorder writes, with counts the test chooses.

use std::{collections::BTreeMap, net::IpAddr};

use crate::schema::{Header, Interval, Line, Node, Outage, PeerCounters, PeerInterval, Traffic};

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// The header of a run of `node` (VTEP `vtep`) started at `started`.
pub fn header(node: &str, vtep: &str, started: f64) -> Line {
    Line::Header(Box::new(Header {
        node: Some(Node {
            name: node.into(),
            vteps: vec![ip(vtep)],
        }),
        version: "test".into(),
        command_line: vec!["vxtrace".into(), "watch".into()],
        kernel: "6.18".into(),
        host: node.into(),
        started,
        devices: Vec::new(),
        underlays: Vec::new(),
        ports: vec![8472],
        doctor: Vec::new(),
    }))
}

/// What one node counted for one peer in one interval.
#[derive(Clone, Copy, Default)]
pub struct Counts {
    pub tx_dev: u64,
    pub tx_encap: u64,
    pub rx_nic: u64,
    pub rx_decap: u64,
}

impl Counts {
    /// Sent and received alike: `tx` frames each way, nothing lost.
    pub fn both_ways(tx: u64, rx: u64) -> Self {
        Self {
            tx_dev: tx,
            tx_encap: tx,
            rx_nic: rx,
            rx_decap: rx,
        }
    }
}

fn packets(n: u64) -> Traffic {
    Traffic {
        packets: n,
        bytes: n * 148,
    }
}

/// An interval of `len` seconds ending at `ts`, with these peers.
pub fn interval(ts: f64, len: f64, peers: &[(&str, Counts)]) -> Line {
    let peers: BTreeMap<IpAddr, PeerInterval> = peers
        .iter()
        .map(|(addr, c)| {
            (
                ip(addr),
                PeerInterval {
                    counters: PeerCounters {
                        tx_dev: packets(c.tx_dev),
                        tx_encap: packets(c.tx_encap),
                        rx_nic: packets(c.rx_nic),
                        rx_decap: packets(c.rx_decap),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
        })
        .collect();
    Line::Interval(Box::new(Interval {
        ts,
        elapsed_s: len,
        interval_s: len,
        peers,
        ..Default::default()
    }))
}

/// An outage of `peer` from `start` to `end`.
pub fn outage_end(peer: &str, start: f64, end: f64) -> Line {
    Line::OutageEnd(Outage {
        peer: ip(peer),
        start,
        end: Some(end),
        duration_s: Some(end - start),
        sent_into_silence: 10,
        tx_pps_before: 10.0,
        silent_together: Vec::new(),
    })
}
