//! Reading recordings: every file of a recording (rotated ones first),
//! line by line into the typed schema. A line cut short by SIGKILL or
//! power loss is skipped and counted; a line of a kind this release does
//! not know (written by a newer one) is skipped too.

use std::{
    collections::BTreeMap,
    io::BufRead as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    schema::{
        Header, Interval, Line, Node, Outage, OutageGroup, OutageRecord, PeerSummary, Summary,
        VxlanDevice,
    },
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

/// One peer's counts in one interval, for comparing nodes over the span
/// they share.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Unix time at the end of the interval, and its length.
    pub ts: f64,
    pub len: f64,
    pub tx_dev: u64,
    pub tx_encap: u64,
    pub rx_nic: u64,
    pub rx_decap: u64,
    pub drops: u64,
}

impl Sample {
    pub fn start(&self) -> f64 {
        self.ts - self.len
    }
}

/// Everything read from one recording.
#[derive(Default)]
pub struct Recording {
    /// The files it was read from.
    pub files: Vec<PathBuf>,
    /// One per run: the header its files start with.
    pub headers: Vec<Header>,
    /// The node that wrote it (from its lines; for recordings of the first
    /// release, the host and the devices' local addresses).
    pub node: Option<Node>,
    /// Per peer, every interval that listed it.
    pub samples: BTreeMap<IpAddr, Vec<Sample>>,
    /// The last summary, if the recorder lived to write one.
    pub summary: Option<Summary>,
    /// Per-peer totals summed from the interval lines (what a recording
    /// without a summary still tells).
    pub interval_totals: BTreeMap<IpAddr, PeerSummary>,
    pub outage_ends: Vec<Outage>,
    pub outage_starts: Vec<Outage>,
    pub outage_groups: Vec<OutageGroup>,
    pub intervals: u64,
    /// Length of the first interval.
    pub first_len: f64,
    /// End time of every interval, in order (silence draws as zero).
    pub interval_times: Vec<f64>,
    /// Lines that are not JSON.
    pub bad_lines: u64,
    /// JSON lines of a kind this release does not know.
    pub unknown_lines: u64,
    pub series: BTreeMap<IpAddr, Vec<Point>>,
}

impl Recording {
    /// A recording of these lines, as if read from a file.
    #[cfg(test)]
    pub fn of_lines(lines: impl IntoIterator<Item = Line>) -> Self {
        let mut rec = Self::default();
        for l in lines {
            rec.add(l);
        }
        rec
    }

    fn add(&mut self, line: Line) {
        match line {
            Line::Header(h) => {
                self.learn_node(h.node.as_ref(), &h.host, &h.devices);
                self.add_header(*h);
            }
            Line::Summary(s) => {
                self.learn_node(s.node.as_ref(), "", &s.devices);
                self.summary = Some(*s);
            }
            Line::Interval(i) => self.add_interval(&i),
            Line::OutageEnd(o) => self.outage_ends.push(o),
            Line::OutageStart(o) => self.outage_starts.push(o),
            Line::OutageGroup(g) => self.outage_groups.push(g),
            Line::Attached(a) => self.learn_node(a.node.as_ref(), "", &a.devices),
            Line::OneWay(_)
            | Line::DeviceGone(_)
            | Line::DeviceReattached(_)
            | Line::DeviceError(_)
            | Line::DeviceAdded(_)
            | Line::BlindSpot(_)
            | Line::MacMoved(_) => {}
        }
    }

    /// Every file of a run starts with the run's header: a header seen
    /// before is the same run going on in a rotated file, not a new run.
    fn add_header(&mut self, h: Header) {
        if !self.headers.contains(&h) {
            self.headers.push(h);
        }
    }

    /// Adds another recording of the same node (another run, or the same
    /// run's files named apart).
    pub fn absorb(&mut self, other: Recording) {
        self.files.extend(other.files);
        for h in other.headers {
            self.add_header(h);
        }
        if other.summary.is_some() {
            self.summary = other.summary;
        }
        for (addr, total) in other.interval_totals {
            let mine = self.interval_totals.entry(addr).or_default();
            mine.counters.add(&total.counters);
            for (r, n) in total.drops {
                *mine.drops.entry(r).or_default() += n;
            }
        }
        for (addr, mut samples) in other.samples {
            let mine = self.samples.entry(addr).or_default();
            mine.append(&mut samples);
            mine.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        }
        for (addr, mut points) in other.series {
            let mine = self.series.entry(addr).or_default();
            mine.append(&mut points);
            mine.sort_by(|a, b| a.ts.total_cmp(&b.ts));
        }
        self.outage_ends.extend(other.outage_ends);
        self.outage_starts.extend(other.outage_starts);
        self.outage_groups.extend(other.outage_groups);
        self.intervals += other.intervals;
        self.interval_times.extend(other.interval_times);
        self.interval_times.sort_by(f64::total_cmp);
        self.bad_lines += other.bad_lines;
        self.unknown_lines += other.unknown_lines;
    }

    /// The VXLAN ports of the node's devices, as its lines list them.
    pub fn local_ports(&self) -> Vec<u16> {
        let devices = self
            .summary
            .as_ref()
            .map(|s| s.devices.clone())
            .or_else(|| self.headers.last().map(|h| h.devices.clone()))
            .unwrap_or_default();
        let mut ports: Vec<u16> = devices.iter().map(|d| d.port).collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// Who wrote the recording: the node its lines name, else (first
    /// release) its host and its devices' local addresses.
    fn learn_node(&mut self, node: Option<&Node>, host: &str, devices: &[VxlanDevice]) {
        if let Some(n) = node {
            self.node = Some(n.clone());
            return;
        }
        if self.node.is_none() && !host.is_empty() {
            let mut vteps: Vec<IpAddr> = devices.iter().filter_map(|d| d.local).collect();
            vteps.sort();
            vteps.dedup();
            self.node = Some(Node {
                name: host.to_string(),
                vteps,
            });
        }
    }

    /// Unix time of the first interval's start and the last one's end.
    pub fn span(&self) -> Option<(f64, f64)> {
        let first = self
            .samples
            .values()
            .filter_map(|s| s.first())
            .map(Sample::start);
        let last = self.samples.values().filter_map(|s| s.last()).map(|s| s.ts);
        let start = self
            .interval_times
            .first()
            .copied()
            .map(|t| t - self.first_len);
        Some((
            start.into_iter().chain(first).fold(f64::MAX, f64::min),
            self.interval_times
                .last()
                .copied()
                .into_iter()
                .chain(last)
                .fold(f64::MIN, f64::max),
        ))
        .filter(|(a, b)| a <= b)
    }

    fn add_interval(&mut self, i: &Interval) {
        if self.intervals == 0 {
            self.first_len = i.interval_s;
        }
        self.intervals += 1;
        self.interval_times.push(i.ts);
        for (addr, d) in &i.peers {
            let c = &d.counters;
            self.samples.entry(*addr).or_default().push(Sample {
                ts: i.ts,
                len: i.interval_s,
                tx_dev: c.tx_dev.packets,
                tx_encap: c.tx_encap.packets,
                rx_nic: c.rx_nic.packets,
                rx_decap: c.rx_decap.packets,
                drops: d.drops.values().sum(),
            });
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

/// Reads the recordings at `paths` (each with its rotated files) as one.
pub fn read(paths: &[PathBuf]) -> Result<Recording> {
    let mut rec = Recording::default();
    for files in recordings(paths)? {
        read_into(&mut rec, &files)?;
    }
    Ok(rec)
}

/// Reads every recording at `paths`, each on its own: a file (with its
/// rotated files), or a directory of them. However the files are named
/// (one file, a shell glob, a directory, a file twice, a mix of these),
/// each is read once.
pub fn read_each(paths: &[PathBuf]) -> Result<Vec<Recording>> {
    recordings(paths)?
        .into_iter()
        .map(|files| {
            let mut rec = Recording::default();
            read_into(&mut rec, &files)?;
            Ok(rec)
        })
        .collect()
}

/// The files `paths` name, each once, grouped into recordings: a file
/// `FILE` and its rotated `FILE.1` ... `FILE.N` are one recording, read
/// oldest first. A file is named by its canonical path, so `r.ndjson`,
/// `./r.ndjson` and a directory holding it are the same file; a glob names
/// the rotated files the base file brings along anyway.
pub fn recordings(paths: &[PathBuf]) -> Result<Vec<Vec<PathBuf>>> {
    if paths.is_empty() {
        bail!("no recording to read");
    }
    let mut named = Vec::new();
    for p in paths {
        if p.is_dir() {
            let found = files_in(p)?;
            if found.is_empty() {
                bail!(
                    "no recording in directory {}; give the files `vxtrace watch --record` wrote",
                    p.display()
                );
            }
            named.extend(found);
        } else {
            let files = files_of(p);
            if files.is_empty() {
                bail!(
                    "recording {} not found; give the file `vxtrace watch --record` wrote",
                    p.display()
                );
            }
            named.extend(files);
        }
    }
    // Grouped in the order they were first named (the nodes of a cluster
    // report are listed in that order).
    let mut groups: Vec<(PathBuf, Vec<(u64, PathBuf)>)> = Vec::new();
    for f in named {
        let f = std::fs::canonicalize(&f).with_context(|| format!("opening {}", f.display()))?;
        let (base, n) = rotation_of(&f);
        match groups.iter_mut().find(|(b, _)| *b == base) {
            Some((_, files)) if files.iter().any(|(_, g)| *g == f) => {}
            Some((_, files)) => files.push((n, f)),
            None => groups.push((base, vec![(n, f)])),
        }
    }
    Ok(groups
        .into_iter()
        .map(|(_, mut files)| {
            // Oldest first: FILE.N ... FILE.1, then FILE.
            files.sort_by_key(|f| std::cmp::Reverse(f.0));
            files.into_iter().map(|(_, f)| f).collect()
        })
        .collect())
}

/// The recording a file belongs to and its place in the rotation:
/// `FILE.3` is (FILE, 3), `FILE` is (FILE, 0).
fn rotation_of(f: &Path) -> (PathBuf, u64) {
    let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    match name.rsplit_once('.') {
        Some((stem, n))
            if !stem.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            match n.parse() {
                Ok(n) => (f.with_file_name(stem), n),
                Err(_) => (f.to_path_buf(), 0),
            }
        }
        _ => (f.to_path_buf(), 0),
    }
}

/// The files of a directory, by name.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading directory {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Reads one recording's files, oldest first.
fn read_into(rec: &mut Recording, files: &[PathBuf]) -> Result<()> {
    for f in files {
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
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
        rec.files.push(f.clone());
    }
    Ok(())
}
