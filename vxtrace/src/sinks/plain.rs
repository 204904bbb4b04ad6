//! Plain lines, when stdout is not a terminal and `--json` was not asked
//! for: one line per shown peer per interval, events in words, and the
//! summary as the screen renders it.

use std::{fmt::Write as _, io::Write as _};

use anyhow::Result;

use super::{IntervalView, Sink, SummaryView, events, screen};

pub struct Plain {
    devices: String,
    attach_summary: String,
}

impl Plain {
    pub fn new(devices: String, attach_summary: String) -> Self {
        Self {
            devices,
            attach_summary,
        }
    }
}

/// One line per shown peer: this interval's rates and the totals.
fn lines(view: &IntervalView<'_>) -> String {
    let t = view.tables;
    let line = view.interval();
    let seconds = line.interval_s.max(0.001);
    let mut shown: Vec<_> = if t.selected.is_empty() {
        t.peers.peers.values().map(|p| p.addr).collect()
    } else {
        t.selected.clone()
    };
    shown.sort();
    let mut s = String::new();
    for addr in shown {
        let total = t.peers.get(&addr).map(|p| *p.total()).unwrap_or_default();
        let delta = t
            .peers
            .get(&addr)
            .map(|p| p.last_delta())
            .unwrap_or_default();
        let rate = |n: u64| screen::human(n as f64 / seconds);
        let _ = writeln!(
            s,
            "t={:.1}s peer={addr} tx_encap={}pkt/s({}) rx_nic={}pkt/s({}) rx_decap={}pkt/s({}) malformed={}",
            line.elapsed_s,
            rate(delta.tx_encap.packets),
            total.tx_encap.packets,
            rate(delta.rx_nic.packets),
            total.rx_nic.packets,
            rate(delta.rx_decap.packets),
            total.rx_decap.packets,
            total.malformed_rx + total.malformed_tx,
        );
    }
    s
}

impl Sink for Plain {
    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        let mut out = std::io::stdout().lock();
        for e in view.events {
            if let Some(words) = events::describe(e) {
                writeln!(out, "event: {words}")?;
            }
        }
        write!(out, "{}", lines(view))?;
        out.flush()?;
        Ok(())
    }

    fn summary(&mut self, view: &SummaryView<'_>) -> Result<()> {
        screen::print_summary(view, &self.devices, &self.attach_summary, 120)
    }
}
