//! `vxtrace report FILE...`: reads recordings (rotated files included, a
//! truncated last line tolerated) and names, per peer, the likely causes
//! with their evidence and fix, through the same diagnosis engine as the
//! live screen.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    diagnosis,
    schema::{PeerSummary, Report, ReportPeer},
};

pub mod cluster;
mod plot;
pub mod read;

pub use read::{Point, Recording, read, read_each};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Recording(s) written by `watch --record` (FILE.1, FILE.2 ... are read too).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also draw into this SVG file: for one node, a timeline (tx and rx
    /// packet rate per peer over wall-clock time, outages shaded, drops
    /// marked); for several, the link matrix as a heat map and a timeline
    /// per link.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// How far apart the nodes' clocks may be, in seconds: packets a clock
    /// difference this large moves across the edge of the compared span
    /// are not counted as loss.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub clock_skew: f64,
}

/// The report of one recording.
pub fn report(rec: &Recording) -> Report {
    let peers: BTreeMap<_, _> = rec
        .peers()
        .into_iter()
        .map(|(addr, p)| {
            let ports = rec.local_ports();
            let outages = rec
                .outage_ends
                .iter()
                .filter(|o| o.peer == addr)
                .cloned()
                .collect();
            (addr, report_peer(&addr, &p, outages, &ports))
        })
        .collect();
    Report {
        complete: rec.summary.is_some(),
        intervals: rec.intervals,
        truncated_lines: rec.bad_lines,
        runs: rec.headers.len() as u64,
        peers,
        outage_groups: rec.outage_groups.clone(),
        unresolved: rec
            .summary
            .as_ref()
            .map(|s| s.unresolved.clone())
            .unwrap_or_default(),
    }
}

fn report_peer(
    addr: &IpAddr,
    p: &PeerSummary,
    outages: Vec<crate::schema::Outage>,
    ports: &[u16],
) -> ReportPeer {
    let c = &p.counters;
    ReportPeer {
        tx_encap: c.tx_encap,
        rx_nic: c.rx_nic,
        rx_decap: c.rx_decap,
        tx_dev: c.tx_dev,
        drops: p.drops.clone(),
        drops_not_loss: p.drops_not_loss.clone(),
        tcp: c.tcp.clone(),
        outages,
        causes: diagnosis::diagnose_peer(addr, p, ports),
    }
}

pub fn run(args: ReportArgs) -> Result<()> {
    let nodes = cluster::nodes(read_each(&args.files)?);
    if nodes.len() > 1 {
        let r = cluster::cluster_report(&nodes, args.clock_skew);
        if let Some(svg) = &args.svg {
            plot::cluster(svg, &nodes, &r).with_context(|| format!("drawing {}", svg.display()))?;
        }
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print!("{}", cluster::text(&r));
        }
        return Ok(());
    }
    let rec = nodes.into_iter().next().map(|n| n.rec).unwrap_or_default();
    let out = report(&rec);
    if let Some(svg) = &args.svg {
        plot::timeline(svg, &rec).with_context(|| format!("drawing {}", svg.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    print!("{}", text(&out, &rec));
    Ok(())
}

/// The report in words.
pub fn text(r: &Report, rec: &Recording) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "recording: {} run(s), {} intervals{}{}{}",
        r.runs,
        r.intervals,
        if r.complete {
            ""
        } else {
            ", no summary (the recorder was killed): totals from the interval lines"
        },
        if r.truncated_lines > 0 {
            format!(", {} truncated line(s) skipped", r.truncated_lines)
        } else {
            String::new()
        },
        if rec.unknown_lines > 0 {
            format!(", {} line(s) of a newer release skipped", rec.unknown_lines)
        } else {
            String::new()
        }
    );
    for (addr, p) in &r.peers {
        let _ = writeln!(
            s,
            "\npeer {addr}: tx_encap {} · rx_nic {} · rx_decap {}",
            p.tx_encap.packets, p.rx_nic.packets, p.rx_decap.packets
        );
        let listed = |drops: &mut dyn Iterator<Item = (&String, &u64)>| {
            drops
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let loss = listed(&mut p.drops.iter().filter(|(r, n)| {
            p.drops_not_loss
                .get(*r)
                .is_none_or(|not_loss| not_loss < *n)
        }));
        if !loss.is_empty() {
            let _ = writeln!(s, "  drops: {loss}");
        }
        if !p.drops_not_loss.is_empty() {
            let _ = writeln!(
                s,
                "  drops that lose no traffic: {}",
                listed(&mut p.drops_not_loss.iter())
            );
        }
        for o in &p.outages {
            let _ = match o.duration_s {
                Some(d) => writeln!(
                    s,
                    "  outage: {d:.1} s, {} packets sent into the silence",
                    o.sent_into_silence
                ),
                None => writeln!(
                    s,
                    "  outage: still going on at the end of the recording, {} packets sent into the silence",
                    o.sent_into_silence
                ),
            };
        }
        if p.causes.is_empty() {
            let _ = writeln!(s, "  no problem found");
        }
        for c in &p.causes {
            write_cause(&mut s, "  ", c);
        }
    }
    for u in &r.unresolved {
        let _ = writeln!(s, "\nVTEP {} on {}: unreachable", u.vtep, u.device);
        if let Some(f) = &u.finding {
            write_cause(&mut s, "  ", f);
        }
    }
    s
}

fn write_cause(s: &mut String, indent: &str, c: &crate::schema::Finding) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "{indent}likely cause: {}\n{indent}  {} (lost: {})\n{indent}  evidence: {}\n{indent}  fix: {}",
        c.headline,
        c.cause,
        c.segment.as_str(),
        c.evidence,
        c.fix
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Cause;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/recordings");

    /// A recording of the first release, with a summary: one healthy
    /// peer, one that never answered.
    #[test]
    fn reads_a_first_release_recording() {
        let rec = read(&[format!("{FIXTURES}/one-way-v0.1.ndjson").into()]).unwrap();
        let r = report(&rec);
        assert!(r.complete);
        assert_eq!(r.runs, 1);
        assert_eq!(r.intervals, 11);
        assert_eq!(r.truncated_lines, 0);
        let healthy = &r.peers[&"192.0.2.12".parse().unwrap()];
        assert_eq!(healthy.tx_encap.packets, 25);
        assert_eq!(healthy.rx_decap.packets, 20);
        assert!(healthy.causes.is_empty(), "{:?}", healthy.causes);
        let silent = &r.peers[&"192.0.2.13".parse().unwrap()];
        assert_eq!(silent.tx_encap.packets, 5);
        assert_eq!(silent.rx_nic.packets, 0);
        assert_eq!(silent.causes.len(), 1);
        assert_eq!(silent.causes[0].kind, Cause::OneWay);
        assert_eq!(silent.causes[0].evidence, "tx_encap 5, rx_nic 0");
    }

    /// A killed recorder's file: no summary, totals from the intervals.
    #[test]
    fn reads_a_killed_first_release_recording() {
        let rec = read(&[format!("{FIXTURES}/host-firewall-killed-v0.1.ndjson").into()]).unwrap();
        let r = report(&rec);
        assert!(!r.complete);
        let a = &r.peers[&"192.0.2.11".parse().unwrap()];
        assert_eq!(a.rx_nic.packets, 6);
        assert_eq!(a.rx_decap.packets, 0);
        assert_eq!(a.drops["NETFILTER_DROP"], 6);
        assert_eq!(a.causes[0].kind, Cause::HostFirewall);
        assert_eq!(
            a.causes[0].evidence,
            "rx_nic 6, rx_decap 0, NETFILTER_DROP 6"
        );
        let words = text(&r, &rec);
        assert!(words.contains("likely cause: host firewall"), "{words}");
        assert!(!words.contains("incident"), "{words}");
    }
}
