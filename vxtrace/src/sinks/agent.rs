//! `--agent`: what a node agent (a DaemonSet pod) writes to its log: one
//! line when counting starts, one per event, one per finding that appears
//! or clears, and the summary's findings at exit. No screen, no interval
//! lines: the numbers are on /metrics.

use std::{collections::BTreeSet, io::Write as _};

use anyhow::Result;

use super::{IntervalView, Sink, SummaryView, events};
use crate::{
    discovery::peer_key,
    schema::{Line, unix_now},
};

#[derive(Default)]
pub struct Agent {
    /// (peer, headline kind) of the findings at the last interval.
    findings: BTreeSet<(std::net::IpAddr, &'static str)>,
}

/// `2026-11-30T23:58:11Z`, from unix seconds.
fn timestamp(unix: f64) -> String {
    let secs = unix.max(0.0) as u64;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn log(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} {line}", timestamp(unix_now()))?;
    out.flush()?;
    Ok(())
}

impl Sink for Agent {
    fn attached(&mut self, line: &Line) -> Result<()> {
        if let Line::Attached(a) = line {
            let node = a.node.as_ref().map(|n| n.name.as_str()).unwrap_or("");
            log(&format!(
                "counting on node {node}: {} programs attached, devices {}",
                a.attached.len(),
                a.devices
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))?;
        }
        Ok(())
    }

    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        for e in view.events {
            if let Some(words) = events::describe(e) {
                log(&words)?;
            }
        }
        let t = view.tables;
        let drops = t.drops_by_peer();
        let mut now = BTreeSet::new();
        for p in t.peers.peers.values() {
            for f in t.findings(p.addr, drops.get(&peer_key(&p.addr))) {
                let key = (p.addr, f.kind.as_str());
                if !self.findings.contains(&key) {
                    log(&format!("peer {}: {}; fix: {}", p.addr, f.headline, f.fix))?;
                }
                now.insert(key);
            }
        }
        for (peer, kind) in self.findings.difference(&now) {
            log(&format!("peer {peer}: {kind} no longer holds"))?;
        }
        self.findings = now;
        Ok(())
    }

    fn summary(&mut self, view: &SummaryView<'_>) -> Result<()> {
        let s = view.summary();
        log(&format!(
            "stopped after {:.0} s: {} peers, {} with findings",
            s.duration_s,
            s.peers.len(),
            s.peers.values().filter(|p| !p.findings.is_empty()).count()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_796_082_086.65), "2026-11-30T23:41:26Z");
        assert_eq!(timestamp(951_782_400.0), "2000-02-29T00:00:00Z");
    }
}
