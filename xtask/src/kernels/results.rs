//! What came of each kernel: the outcome of every feature's test, read from
//! the guest's serial log, and the report printed for it.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use super::{Feature, Options, marker::Marker, qemu::BootLog};

/// Lines of a failed test's output shown in the summary.
const TAIL_LINES: usize = 40;

/// What libtest prints when the one test asked for passed.
const ONE_TEST_PASSED: &str = "test result: ok. 1 passed";

/// The exit code of a test that `timeout -s KILL` killed.
const KILLED: i32 = 137;

pub enum Outcome {
    Ok(f64),
    Failed {
        secs: Option<f64>,
        why: String,
        tail: Vec<String>,
        log: Option<PathBuf>,
    },
    NotRun(String),
}

/// How long each stage of one kernel took.
#[derive(Default)]
pub struct Timings {
    /// Seconds, and whether the package was already in the cache.
    pub download: Option<(f64, bool)>,
    /// Seconds, and the initramfs's size in bytes.
    pub image: Option<(f64, u64)>,
    pub boot: Option<f64>,
    pub tests: f64,
    pub total: f64,
}

pub struct KernelReport {
    /// The kernel release when known, else the series asked for.
    pub name: String,
    pub skipped: Option<String>,
    /// What went wrong before or around the tests (fetch, boot, hang).
    pub error: Option<String>,
    /// What the guest reported about itself (BTF, kprobes, ...).
    pub info: Option<String>,
    pub results: Vec<(&'static str, Outcome)>,
    pub timings: Timings,
}

impl KernelReport {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            skipped: None,
            error: None,
            info: None,
            results: Vec::new(),
            timings: Timings::default(),
        }
    }

    pub fn not_run(mut self, features: &[&Feature], why: &str) -> Self {
        self.results = features
            .iter()
            .map(|f| (f.label, Outcome::NotRun(why.to_string())))
            .collect();
        self
    }

    pub fn failed(&self) -> bool {
        self.error.is_some()
            || self
                .results
                .iter()
                .any(|(_, o)| matches!(o, Outcome::Failed { .. }))
    }

    /// Prints the report: one line per feature (labels padded to `width`),
    /// the timings, and the tail of each failed test's output.
    pub fn print(&self, width: usize) {
        if let Some(why) = &self.skipped {
            println!("kernel {}  skipped: {why}", self.name);
            return;
        }
        if let Some(info) = &self.info {
            println!("kernel {}  {info}", self.name);
        }
        if let Some(e) = &self.error {
            println!("kernel {}  FAILED: {e}", self.name);
        }
        self.print_results(width);
        if let Some(timings) = self.timings.summary() {
            println!("kernel {}  timings: {timings}", self.name);
        }
        self.print_failure_tails();
    }

    fn print_results(&self, width: usize) {
        for (label, outcome) in &self.results {
            match outcome {
                Outcome::Ok(secs) => {
                    println!("kernel {}  {label:<width$}  ok  ({secs:.1} s)", self.name)
                }
                Outcome::Failed { secs, why, .. } => {
                    let secs = secs.map(|s| format!("  ({s:.1} s)")).unwrap_or_default();
                    println!("kernel {}  {label:<width$}  FAILED{secs}: {why}", self.name)
                }
                Outcome::NotRun(why) => {
                    println!("kernel {}  {label:<width$}  not run: {why}", self.name)
                }
            }
        }
    }

    fn print_failure_tails(&self) {
        for (label, outcome) in &self.results {
            if let Outcome::Failed { tail, log, .. } = outcome
                && !tail.is_empty()
            {
                println!(
                    "---- {} / {label}: last lines of its output ----",
                    self.name
                );
                for l in tail {
                    println!("    {l}");
                }
                if let Some(log) = log {
                    println!("---- full output: {} ----", log.display());
                }
            }
        }
    }
}

impl Timings {
    /// The stages that ran, and the total; `None` when none did.
    fn summary(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some((s, cached)) = self.download {
            parts.push(format!(
                "download {s:.1} s{}",
                if cached { " (cached)" } else { "" }
            ));
        }
        if let Some((s, bytes)) = self.image {
            parts.push(format!(
                "image {s:.1} s ({:.1} MiB)",
                bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        if let Some(s) = self.boot {
            parts.push(format!("boot {s:.1} s"));
        }
        if self.tests > 0.0 {
            parts.push(format!("tests {:.1} s", self.tests));
        }
        (!parts.is_empty()).then(|| format!("{}, total {:.1} s", parts.join(", "), self.total))
    }
}

/// Where a test's end marker is in the log, and what it says.
struct TestEnd {
    line: usize,
    exit_code: i32,
    secs: f64,
}

/// What the guest's markers say, by test id.
#[derive(Default)]
struct Transcript {
    /// The last kernel report's facts.
    info: Option<String>,
    done: bool,
    /// The line of each test's begin marker.
    begun: HashMap<String, usize>,
    ended: HashMap<String, TestEnd>,
    skipped: BTreeSet<String>,
}

impl Transcript {
    fn read(lines: &[String]) -> Self {
        let mut t = Self::default();
        for (i, line) in lines.iter().enumerate() {
            match Marker::find(line) {
                Some(Marker::Kernel { facts }) => t.info = Some(facts),
                Some(Marker::TestBegun { test }) => {
                    t.begun.insert(test, i);
                }
                Some(Marker::TestEnded {
                    test,
                    exit_code,
                    secs,
                }) => {
                    let end = TestEnd {
                        line: i,
                        exit_code,
                        secs: secs.0,
                    };
                    t.ended.insert(test, end);
                }
                Some(Marker::TestSkipped { test }) => {
                    t.skipped.insert(test);
                }
                Some(Marker::Done) => t.done = true,
                None => {}
            }
        }
        t
    }
}

/// Fills `report` from the guest's serial log: its facts, whether it got
/// through, and each feature's outcome. Failed tests' whole output is saved
/// under `work`.
pub fn collect_results(
    report: &mut KernelReport,
    boot: &BootLog,
    features: &[&Feature],
    work: &Path,
    opts: &Options,
) {
    let log = boot.log.display().to_string();
    let transcript = Transcript::read(&boot.lines);
    report.info = transcript.info.clone().map(|i| match boot.booted {
        Some(s) => format!("booted in {s:.1} s: {i}"),
        None => i,
    });
    if report.info.is_none() {
        report.error = Some(format!(
            "the guest did not come up ({}); serial log: {log}",
            boot.end
        ));
    } else if !transcript.done {
        report.error = Some(format!(
            "the guest stopped before its last test ({}); serial log: {log}",
            boot.end
        ));
    }
    for f in features {
        let outcome = feature_outcome(f, &transcript, boot, work, opts);
        if let Outcome::Ok(secs)
        | Outcome::Failed {
            secs: Some(secs), ..
        } = outcome
        {
            report.timings.tests += secs;
        }
        report.results.push((f.label, outcome));
    }
}

fn feature_outcome(
    f: &Feature,
    transcript: &Transcript,
    boot: &BootLog,
    work: &Path,
    opts: &Options,
) -> Outcome {
    let id = f.id();
    match (transcript.begun.get(&id), transcript.ended.get(&id)) {
        (Some(&begun), Some(end)) => {
            let output = &boot.lines[begun + 1..end.line];
            let passed = output.iter().any(|l| l.contains(ONE_TEST_PASSED));
            if end.exit_code == 0 && passed {
                return Outcome::Ok(end.secs);
            }
            let why = match end.exit_code {
                KILLED => format!("killed after {} s (--test-timeout)", opts.test_timeout),
                0 => format!(
                    "no test named {} in target {}: update FEATURES in xtask/src/kernels/mod.rs",
                    f.name, f.target
                ),
                rc => failure_reason(output).unwrap_or_else(|| format!("exit code {rc}")),
            };
            failed(f, Some(end.secs), why, output, work)
        }
        (Some(&begun), None) => {
            let output = &boot.lines[begun + 1..];
            let why = format!("the guest stopped during this test ({})", boot.end);
            failed(f, None, why, output, work)
        }
        (None, _) if transcript.skipped.contains(&id) => {
            Outcome::NotRun("an earlier test failed (--keep-going runs on)".into())
        }
        (None, _) => Outcome::NotRun("the guest never started it".into()),
    }
}

/// A failed outcome; the test's whole output is saved under `work` (for
/// verifier logs and long JSON summaries) and its tail kept for the report.
fn failed(f: &Feature, secs: Option<f64>, why: String, output: &[String], work: &Path) -> Outcome {
    let path = work.join(format!("{}.{}.log", f.target, f.name));
    let saved = std::fs::create_dir_all(work)
        .and_then(|_| std::fs::write(&path, output.join("\n") + "\n"))
        .is_ok();
    let verifier = output
        .iter()
        .any(|l| l.contains("Verifier output") || l.contains("BPF_PROG_LOAD"));
    let why = if verifier {
        format!(
            "{why} [verifier rejected a program: see {}]",
            path.display()
        )
    } else {
        why
    };
    let tail = output[output.len().saturating_sub(TAIL_LINES)..]
        .iter()
        .map(|l| truncate(l, 400))
        .collect();
    Outcome::Failed {
        secs,
        why,
        tail,
        log: saved.then_some(path),
    }
}

/// Where and why a test panicked, on one line: the place, the message
/// (shortened: it often carries a whole JSON summary) and an assertion's
/// two sides.
fn failure_reason(output: &[String]) -> Option<String> {
    let at = output.iter().position(|l| l.contains("panicked at"))?;
    let place = output[at]
        .split("panicked at ")
        .nth(1)
        .unwrap_or_default()
        .trim_end_matches(':')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let rest = &output[at + 1..];
    let end = rest
        .iter()
        .position(|l| l.starts_with("note:") || l.trim().is_empty())
        .unwrap_or(rest.len());
    let mut message = Vec::new();
    let mut sides = Vec::new();
    for l in &rest[..end] {
        let t = l.trim();
        if t.starts_with("left:") || t.starts_with("right:") {
            sides.push(truncate(t, 80));
        } else {
            message.push(t);
        }
    }
    let mut why = format!("{place}: {}", truncate(&message.join(" "), 160));
    if !sides.is_empty() {
        why = format!("{why} ({})", sides.join(", "));
    }
    Some(why)
}

/// `s` cut to at most `max` bytes (on a character boundary), marked when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{
        FEATURES,
        marker::{Seconds, Values},
    };

    /// A serial log in which the first feature's test passes, the second's
    /// fails and the third's is skipped.
    fn console(features: &[&Feature]) -> Vec<String> {
        let [passing, failing, skipped] = features else {
            panic!("three features expected");
        };
        let facts = "release=6.1.0-56-cloud-amd64 btf=yes".to_string();
        let markers: [Marker; 6] = [
            Marker::Kernel { facts },
            Marker::TestBegun { test: passing.id() },
            Marker::TestEnded {
                test: passing.id(),
                exit_code: 0,
                secs: Seconds(1.5),
            },
            Marker::TestBegun { test: failing.id() },
            Marker::TestEnded {
                test: failing.id(),
                exit_code: 101,
                secs: Seconds(2.25),
            },
            Marker::TestSkipped { test: skipped.id() },
        ];
        let [kernel, begun1, ended1, begun2, ended2, skip3] = markers.map(|m| m.to_string());
        vec![
            kernel,
            begun1,
            format!("{ONE_TEST_PASSED}; 0 failed"),
            ended1,
            begun2,
            "thread 'x' panicked at tests/tests/tcp.rs:7:9:".to_string(),
            "no PAWS reject".to_string(),
            ended2,
            skip3,
            Marker::<Values>::Done.to_string(),
        ]
    }

    #[test]
    fn outcomes_from_the_markers() {
        let features: Vec<&Feature> = FEATURES.iter().take(3).collect();
        let work = std::env::temp_dir().join(format!("xtask-results-{}", std::process::id()));
        let boot = BootLog {
            lines: console(&features),
            log: work.join("serial.log"),
            booted: Some(12.0),
            end: "qemu exited".to_string(),
        };
        let mut report = KernelReport::new("6.1");
        collect_results(
            &mut report,
            &boot,
            &features,
            &work,
            &Options::whole_matrix(),
        );
        let _ = std::fs::remove_dir_all(&work);
        assert_eq!(report.error, None);
        assert_eq!(
            report.info.as_deref(),
            Some("booted in 12.0 s: release=6.1.0-56-cloud-amd64 btf=yes")
        );
        assert!(matches!(report.results[0].1, Outcome::Ok(1.5)));
        let Outcome::Failed { secs, why, .. } = &report.results[1].1 else {
            panic!("the second test did not fail");
        };
        assert_eq!(
            (*secs, why.as_str()),
            (Some(2.25), "tcp.rs:7:9: no PAWS reject")
        );
        assert!(matches!(report.results[2].1, Outcome::NotRun(_)));
        assert_eq!(report.timings.tests, 3.75);
    }

    #[test]
    fn failure_reasons_name_place_and_sides() {
        let out: Vec<String> = [
            "running 1 test",
            "thread 'x' (12) panicked at tests/tests/drops.rs:45:5:",
            "assertion `left == right` failed: {\"a\":1}",
            "  left: 0",
            " right: 5",
            "note: run with `RUST_BACKTRACE=1`",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            failure_reason(&out).unwrap(),
            "drops.rs:45:5: assertion `left == right` failed: {\"a\":1} (left: 0, right: 5)"
        );
    }
}
