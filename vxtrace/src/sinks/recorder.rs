//! `--record FILE`: the NDJSON lines of a run (header, intervals, events,
//! summary) appended to a file, flushed and synced every interval, rotated
//! by size (FILE, FILE.1, ... FILE.N) so days of capture neither lose more
//! than one interval to SIGKILL or power loss nor fill the disk.

use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use super::{IntervalView, Sink, SummaryView};
use crate::schema::Line;

pub struct Recorder {
    path: PathBuf,
    max_size: u64,
    keep: usize,
    /// The first line of every file.
    header: Line,
    out: BufWriter<File>,
    size: u64,
}

impl Recorder {
    /// Opens (appending to) `path`; every file starts with `header`.
    pub fn open(path: &Path, max_size: u64, keep: usize, header: Line) -> Result<Self> {
        let (out, size) = open_file(path)?;
        let mut r = Self {
            path: path.to_path_buf(),
            max_size,
            keep,
            header,
            out,
            size,
        };
        let h = r.header.clone();
        r.write(&h)?;
        r.flush()?;
        Ok(r)
    }

    pub fn write(&mut self, v: &Line) -> Result<()> {
        let mut line = v.to_json().into_bytes();
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.out
            .write_all(&line)
            .with_context(|| format!("writing the recording {}", self.path.display()))?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Flushes to the kernel and to the disk (once per interval).
    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("writing the recording {}", self.path.display()))?;
        self.out.get_ref().sync_data().ok();
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        self.flush()?;
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        if self.keep > 0 {
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        } else {
            std::fs::remove_file(&self.path)?;
        }
        // Anything beyond `keep` goes.
        let _ = std::fs::remove_file(rotated(&self.path, self.keep + 1));
        let (out, size) = open_file(&self.path)?;
        self.out = out;
        self.size = size;
        let h = self.header.clone();
        self.write(&h)
    }
}

impl Sink for Recorder {
    fn attached(&mut self, line: &Line) -> Result<()> {
        self.write(line)?;
        self.flush()
    }

    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        self.write(view.line)?;
        for e in view.events {
            self.write(e)?;
        }
        self.flush()
    }

    fn summary(&mut self, view: &SummaryView<'_>) -> Result<()> {
        self.write(view.line)?;
        self.flush()
    }
}

fn open_file(path: &Path) -> Result<(BufWriter<File>, u64)> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "opening the recording {} (is the directory writable?)",
                path.display()
            )
        })?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((BufWriter::new(f), size))
}

/// `FILE.n`.
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// A recording's files, oldest first: FILE.N ... FILE.1, FILE.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        v.push(rotated(path, n));
        n += 1;
    }
    v.reverse();
    if path.exists() {
        v.push(path.to_path_buf());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::OneWay;

    fn filler(i: u64) -> Line {
        Line::OneWay(OneWay {
            peer: "192.0.2.1".parse().unwrap(),
            sent: i,
            received: 0,
            window_s: 10.0,
        })
    }

    #[test]
    fn rotates_by_size_and_keeps_a_bounded_number() {
        let dir = std::env::temp_dir().join(format!("vxtrace-rec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.ndjson");
        let header = Line::Summary(Box::default());
        let first = header.to_json();
        let mut r = Recorder::open(&path, 2000, 2, header).unwrap();
        for i in 0..200 {
            r.write(&filler(i)).unwrap();
        }
        r.flush().unwrap();
        let files = files_of(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(!rotated(&path, 3).exists());
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(text.starts_with(&first), "{f:?}");
            assert!(std::fs::metadata(f).unwrap().len() <= 2000);
            for line in text.lines() {
                Line::parse(line).unwrap();
            }
        }
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.contains("\"sent\":199"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
