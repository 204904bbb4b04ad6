//! `--json`: every line on stdout as NDJSON, flushed as it is written.

use std::io::Write as _;

use anyhow::Result;

use super::{IntervalView, Sink, SummaryView};
use crate::schema::Line;

pub struct Ndjson {
    out: std::io::Stdout,
}

impl Ndjson {
    pub fn new() -> Self {
        Self {
            out: std::io::stdout(),
        }
    }

    fn write(&mut self, line: &Line) -> Result<()> {
        let mut out = self.out.lock();
        out.write_all(line.to_json().as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    }
}

impl Default for Ndjson {
    fn default() -> Self {
        Self::new()
    }
}

impl Sink for Ndjson {
    fn attached(&mut self, line: &Line) -> Result<()> {
        self.write(line)
    }

    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        for e in view.events {
            self.write(e)?;
        }
        self.write(view.line)
    }

    fn summary(&mut self, view: &SummaryView<'_>) -> Result<()> {
        self.write(view.line)
    }
}
