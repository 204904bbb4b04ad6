//! Where `watch`'s output goes. Every output mode is a sink behind one
//! trait: the terminal screen, plain lines on a pipe, NDJSON on stdout, a
//! recording file, and the Prometheus endpoint. The loop hands each sink
//! the `attached` line once, every interval once (its line, its events,
//! and the run's tables for what a sink shows beyond the line), and the
//! summary once.

use anyhow::Result;
use vxtrace_common::HandshakeEvent;

use crate::{
    probes::Readout,
    schema::{Interval, Line, Summary},
    watch::tables::{DropDeltas, Tables},
};

pub mod agent;
pub mod events;
pub mod metrics;
pub mod ndjson;
pub mod plain;
pub mod recorder;
pub mod screen;

/// One interval, as every sink sees it.
pub struct IntervalView<'a> {
    /// The interval line (`Line::Interval`).
    pub line: &'a Line,
    /// Events detected in this interval (outages, one-way peers, devices
    /// that went or came back).
    pub events: &'a [Line],
    /// Everything the run knows so far.
    pub tables: &'a Tables,
    /// Drops in this interval, per peer (every peer, not just the shown).
    pub drop_deltas: &'a DropDeltas,
    /// Handshakes completed in this interval.
    pub handshakes: &'a [HandshakeEvent],
}

impl IntervalView<'_> {
    pub fn interval(&self) -> &Interval {
        match self.line {
            Line::Interval(i) => i,
            _ => unreachable!("an interval view holds an interval line"),
        }
    }
}

/// The end of the run.
pub struct SummaryView<'a> {
    /// The summary line (`Line::Summary`).
    pub line: &'a Line,
    pub tables: &'a Tables,
}

impl SummaryView<'_> {
    pub fn summary(&self) -> &Summary {
        match self.line {
            Line::Summary(s) => s,
            _ => unreachable!("a summary view holds a summary line"),
        }
    }
}

/// An output of `watch`.
pub trait Sink {
    /// Counting has started: the `attached` line.
    fn attached(&mut self, _line: &Line) -> Result<()> {
        Ok(())
    }
    /// One interval.
    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()>;
    /// The run is over: the summary.
    fn summary(&mut self, view: &SummaryView<'_>) -> Result<()>;
}

/// Every sink of a run.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink>>);

impl Sinks {
    pub fn add(&mut self, sink: impl Sink + 'static) {
        self.0.push(Box::new(sink));
    }

    pub fn attached(&mut self, line: &Line) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.attached(line))
    }

    pub fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.interval(view))
    }

    /// Every sink gets the summary, even when one fails (a full disk must
    /// not cost the user the summary on stdout); the first error is
    /// returned.
    pub fn summary(&mut self, view: &SummaryView<'_>) -> Result<()> {
        let mut first = None;
        for s in &mut self.0 {
            if let Err(e) = s.summary(view) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Folds one readout into `tables` and hands the interval to `sink`, as a
/// run does but without a kernel: for sinks fed counters made elsewhere
/// (the cluster-scale measurement, the sinks' own tests). The interval
/// ends at Unix time `ts` and lasts `seconds`; the readout holds the
/// counters since the start, as the kernel's maps do.
pub fn feed(
    sink: &mut dyn Sink,
    tables: &mut Tables,
    readout: &Readout,
    ts: f64,
    seconds: f64,
) -> Result<()> {
    let drop_deltas = tables.fold(readout, seconds);
    let mut interval = tables.interval_line(0.0, seconds, &drop_deltas, 0.0);
    interval.ts = ts;
    let line = Line::Interval(Box::new(interval));
    sink.interval(&IntervalView {
        line: &line,
        events: &[],
        tables,
        drop_deltas: &drop_deltas,
        handshakes: &[],
    })
}
