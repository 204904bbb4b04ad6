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

mod clock;
pub mod cluster;
mod far_end;
#[cfg(test)]
mod lines;
pub mod matrix;
mod plot;
pub mod read;

pub use read::{Point, Recording, read, read_each};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Recording(s) written by `watch --record`, or directories of them
    /// (FILE.1, FILE.2 ... are read too; a file named more than once, as
    /// a glob does, is read once).
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
    /// How far apart the nodes' clocks may be, in seconds: the clock
    /// difference that lines the nodes' traffic up is searched within it
    /// (any size; a report whose recordings share no time names the one to
    /// re-run with).
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
        files: rec.files.len() as u64,
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

/// The recordings at `paths`, grouped by the node that wrote them.
pub fn read_nodes(paths: &[PathBuf]) -> Result<Vec<cluster::ClusterNode>> {
    Ok(cluster::nodes(read_each(paths)?))
}

pub fn run(args: ReportArgs) -> Result<()> {
    let nodes = read_nodes(&args.files)?;
    if nodes.len() > 1 {
        let r = cluster::cluster_report(&nodes, args.clock_skew);
        if let Some(svg) = &args.svg {
            plot::cluster(svg, &nodes, &r).with_context(|| format!("drawing {}", svg.display()))?;
        }
        if args.json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print!("{}", matrix::text(&r));
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
        "recording: {} in {}, {} intervals{}{}{}",
        counted(r.runs, "run"),
        counted(r.files, "file"),
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
        let listed =
            |drops: &mut dyn Iterator<Item = (&String, &u64)>| crate::schema::evidence_text(drops);
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

/// "1 run", "3 files".
fn counted(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
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
    use std::path::Path;

    use super::*;
    use crate::{schema::Cause, sinks::recorder::files_of};

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

    /// A directory of its own for one test, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir().join(format!("vxtrace-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Intervals one run writes in `rotated_run`, and the outages among
    /// them (one in every 20 intervals).
    const INTERVALS: u64 = 80;
    const OUTAGES: u64 = 4;
    const PEER: &str = "192.0.2.12";

    /// One run of node1 through the recorder, rotated by size into several
    /// files (a killed recorder: no summary, totals from the intervals):
    /// 10 packets each way with the peer per interval, an outage every
    /// 20 intervals. Returns the files, oldest first.
    fn rotated_run(path: &Path, started: f64, intervals: u64) -> Vec<PathBuf> {
        use crate::sinks::recorder::Recorder;
        // 20 files kept: the rotation drops none of what is written.
        let mut r = Recorder::open(
            path,
            20_000,
            20,
            lines::header("node1", "192.0.2.11", started),
        )
        .unwrap();
        for i in 1..=intervals {
            let ts = started + i as f64;
            r.write(&lines::interval(
                ts,
                1.0,
                &[(PEER, lines::Counts::both_ways(10, 10))],
            ))
            .unwrap();
            if i % 20 == 10 {
                r.write(&lines::outage_end(PEER, ts - 2.0, ts)).unwrap();
            }
            r.flush().unwrap();
        }
        files_of(path)
    }

    fn report_of(paths: &[PathBuf]) -> (Report, String) {
        let nodes = read_nodes(paths).unwrap();
        assert_eq!(nodes.len(), 1, "one node's recording");
        let r = report(&nodes[0].rec);
        let words = text(&r, &nodes[0].rec);
        (r, words)
    }

    /// However a rotated recording's files are named, each is read once:
    /// the same report, one run in as many files as are on the disk.
    #[test]
    fn a_rotated_recording_reads_once_however_its_files_are_named() {
        let dir = TempDir::new("rotated");
        let base = dir.0.join("r.ndjson");
        let files = rotated_run(&base, 1_700_000_000.0, INTERVALS);
        assert!(
            files.len() >= 3,
            "the run rotated into 3 files or more: {files:?}"
        );
        let on_disk = files.len() as u64;
        let rotated_1 = files[files.len() - 2].clone();
        let mut glob = files.clone();
        glob.sort();
        let link = dir.0.join("link.ndjson");
        std::os::unix::fs::symlink(&base, &link).unwrap();
        let (one_file, words) = report_of(std::slice::from_ref(&base));
        let ways: Vec<(&str, Vec<PathBuf>)> = vec![
            ("oldest first", files.clone()),
            ("a shell glob", glob),
            ("the directory", vec![dir.0.clone()]),
            ("the file twice", vec![base.clone(), base.clone()]),
            (
                "a mix",
                vec![
                    dir.0.join("..").join(dir.0.file_name().unwrap()),
                    rotated_1,
                    base.clone(),
                ],
            ),
        ];
        assert_eq!(one_file.intervals, INTERVALS);
        assert_eq!(one_file.runs, 1);
        assert_eq!(one_file.files, on_disk);
        let peer = &one_file.peers[&lines::ip(PEER)];
        assert_eq!(peer.outages.len() as u64, OUTAGES);
        assert_eq!(peer.tx_encap.packets, INTERVALS * 10);
        assert_eq!(peer.rx_nic.packets, INTERVALS * 10);
        assert!(
            words.starts_with(&format!(
                "recording: 1 run in {on_disk} files, {INTERVALS} intervals"
            )),
            "{words}"
        );
        assert_eq!(
            words.matches("  outage: ").count() as u64,
            OUTAGES,
            "{words}"
        );
        for (way, paths) in ways {
            let (r, w) = report_of(&paths);
            let outages = r.peers[&lines::ip(PEER)].outages.len() as u64;
            assert_eq!(
                (r.intervals, outages, r.runs, r.files),
                (INTERVALS, OUTAGES, 1, on_disk),
                "named as {way}: {paths:?}"
            );
            assert_eq!(r, one_file, "named as {way}: {paths:?}");
            assert_eq!(w, words, "named as {way}: {paths:?}");
        }
        // The symlink is the base file under another name (its rotated
        // files are the base's, which it does not bring along).
        let (r, _) = report_of(&[link, base.clone()]);
        assert_eq!(r, one_file);
    }

    /// Two runs appended to one recording: two runs, their intervals
    /// added up; each run's repeated header in its rotated files is no run.
    #[test]
    fn runs_are_counted_by_header_not_by_file() {
        let dir = TempDir::new("runs");
        let base = dir.0.join("r.ndjson");
        rotated_run(&base, 1_700_000_000.0, 60);
        let files = rotated_run(&base, 1_700_001_000.0, 60);
        let (r, words) = report_of(std::slice::from_ref(&base));
        assert_eq!(r.runs, 2);
        assert_eq!(r.intervals, 120);
        assert_eq!(r.files, files.len() as u64);
        assert!(
            words.starts_with(&format!(
                "recording: 2 runs in {} files, 120 intervals",
                files.len()
            )),
            "{words}"
        );
    }
}
