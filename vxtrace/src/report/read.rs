//! Reading recordings: every file of a recording (rotated ones first),
//! line by line into the typed schema. A line cut short by SIGKILL or
//! power loss is skipped and counted; a line of a kind this release does
//! not know (written by a newer one) is skipped too.

use std::{collections::BTreeMap, io::BufRead as _, net::IpAddr, path::PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{
    schema::{Header, Interval, Line, Outage, OutageGroup, OutageRecord, PeerSummary, Summary},
    sinks::recorder::files_of,
};

/// One interval of one peer, for the timeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub ts: f64,
    pub tx_pps: f64,
    pub rx_pps: f64,
    pub drops: u64,
}

/// Everything read from one recording.
#[derive(Default)]
pub struct Recording {
    pub headers: Vec<Header>,
    /// The last summary, if the recorder lived to write one.
    pub summary: Option<Summary>,
    /// Per-peer totals summed from the interval lines (what a recording
    /// without a summary still tells).
    pub interval_totals: BTreeMap<IpAddr, PeerSummary>,
    pub outage_ends: Vec<Outage>,
    pub outage_starts: Vec<Outage>,
    pub outage_groups: Vec<OutageGroup>,
    pub intervals: u64,
    /// End time of every interval, in order (silence draws as zero).
    pub interval_times: Vec<f64>,
    /// Lines that are not JSON.
    pub bad_lines: u64,
    /// JSON lines of a kind this release does not know.
    pub unknown_lines: u64,
    pub series: BTreeMap<IpAddr, Vec<Point>>,
}

impl Recording {
    fn add(&mut self, line: Line) {
        match line {
            Line::Header(h) => self.headers.push(*h),
            Line::Summary(s) => self.summary = Some(*s),
            Line::Interval(i) => self.add_interval(&i),
            Line::OutageEnd(o) => self.outage_ends.push(o),
            Line::OutageStart(o) => self.outage_starts.push(o),
            Line::OutageGroup(g) => self.outage_groups.push(g),
            Line::Attached(_)
            | Line::OneWay(_)
            | Line::DeviceGone(_)
            | Line::DeviceReattached(_)
            | Line::DeviceError(_) => {}
        }
    }

    fn add_interval(&mut self, i: &Interval) {
        self.intervals += 1;
        self.interval_times.push(i.ts);
        for (addr, d) in &i.peers {
            self.series.entry(*addr).or_default().push(Point {
                ts: i.ts,
                tx_pps: d.pps.tx_encap,
                rx_pps: d.pps.rx_nic,
                drops: d.drops.values().sum(),
            });
            let total = self.interval_totals.entry(*addr).or_default();
            total.counters.add(&d.counters);
            for (reason, n) in &d.drops {
                *total.drops.entry(reason.clone()).or_default() += n;
            }
        }
    }

    /// The peers and their whole-run view: the summary's, else rebuilt
    /// from the interval lines and the outage events.
    pub fn peers(&self) -> BTreeMap<IpAddr, PeerSummary> {
        if let Some(s) = &self.summary {
            return s.peers.clone();
        }
        let mut peers = self.interval_totals.clone();
        for (addr, p) in peers.iter_mut() {
            let ended = self.outage_ends.iter().filter(|o| o.peer == *addr);
            // An outage that started and never ended was still on when
            // the recorder died.
            let open = self
                .outage_starts
                .iter()
                .filter(|s| s.peer == *addr)
                .filter(|s| {
                    !self
                        .outage_ends
                        .iter()
                        .any(|e| e.peer == s.peer && e.start == s.start)
                });
            p.silences.outages = ended.chain(open).map(OutageRecord::from).collect();
            p.silences.outages_total = p.silences.outages.len() as u64;
        }
        peers
    }
}

/// Reads the recordings at `paths` (each with its rotated files).
pub fn read(paths: &[PathBuf]) -> Result<Recording> {
    let mut rec = Recording::default();
    for p in paths {
        let files = files_of(p);
        if files.is_empty() {
            bail!(
                "recording {} not found; give the file `vxtrace watch --record` wrote",
                p.display()
            );
        }
        for f in files {
            let file =
                std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?;
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else {
                    rec.bad_lines += 1;
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                match Line::parse(&line) {
                    Ok(l) => rec.add(l),
                    Err(_) if serde_json::from_str::<serde_json::Value>(&line).is_ok() => {
                        rec.unknown_lines += 1
                    }
                    Err(_) => rec.bad_lines += 1,
                }
            }
        }
    }
    if paths.is_empty() {
        bail!("no recording to read");
    }
    Ok(rec)
}
