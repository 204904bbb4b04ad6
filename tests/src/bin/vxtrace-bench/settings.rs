//! The benchmark's settings, read from `VXTRACE_BENCH_*` variables. A
//! value the benchmark cannot use stops it before it builds a lab, with
//! what was wrong and the values it takes: a typo must not quietly run
//! the defaults (or, for `VXTRACE_BENCH_ONLY`, nothing at all) for half an
//! hour.

use std::str::FromStr;

use crate::{kernel_cost::Shape, userspace::Pacing};

/// The benchmark's parts, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    TestRun,
    PerHook,
    DropStorm,
    Throughput,
    Userspace,
    MetricsSeries,
    StartStop,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::TestRun,
        Part::PerHook,
        Part::DropStorm,
        Part::Throughput,
        Part::Userspace,
        Part::MetricsSeries,
        Part::StartStop,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Part::TestRun => "test_run",
            Part::PerHook => "per_hook",
            Part::DropStorm => "drop_storm",
            Part::Throughput => "throughput",
            Part::Userspace => "userspace",
            Part::MetricsSeries => "metrics_series",
            Part::StartStop => "start_stop",
        }
    }

    /// Every part's id, comma-separated (as `VXTRACE_BENCH_ONLY` takes them).
    pub fn ids() -> String {
        ids(&Self::ALL, |p| p.id())
    }
}

/// Comma-separated ids of `items`.
pub fn ids<T: Copy>(items: &[T], id: impl Fn(T) -> &'static str) -> String {
    items.iter().map(|t| id(*t)).collect::<Vec<_>>().join(",")
}

/// Stops the benchmark on a setting it cannot use.
fn refuse(var: &str, why: String) -> ! {
    eprintln!("vxtrace-bench: {var}: {why}");
    std::process::exit(2);
}

/// A number above zero from `var`, or `default` when it is unset.
fn number<T: FromStr + PartialOrd + Default>(var: &str, default: T) -> T {
    match std::env::var(var) {
        Err(_) => default,
        Ok(v) => parse_positive(var, &v),
    }
}

/// `v` as a number above zero (a count of rounds, seconds or peers).
fn parse_positive<T: FromStr + PartialOrd + Default>(var: &str, v: &str) -> T {
    match v.trim().parse::<T>() {
        Ok(n) if n > T::default() => n,
        // NaN is not above zero either.
        Ok(_) => refuse(var, format!("{v:?} is not above zero")),
        Err(_) => refuse(var, format!("{v:?} is not a number")),
    }
}

/// The items `var` lists (comma-separated ids out of `all`), or None when
/// it is unset.
fn list<T: Copy>(var: &str, all: &[T], id: impl Fn(T) -> &'static str) -> Option<Vec<T>> {
    let v = std::env::var(var).ok()?;
    let wanted: Vec<T> = v
        .split(',')
        .map(|want| {
            all.iter()
                .copied()
                .find(|t| id(*t) == want.trim())
                .unwrap_or_else(|| {
                    refuse(var, format!("no {want:?} here; it takes {}", ids(all, &id)))
                })
        })
        .collect();
    Some(wanted)
}

/// Numbers above zero `var` lists (comma-separated), or `default` when
/// it is unset.
fn numbers<T: FromStr + PartialOrd + Default>(var: &str, default: Vec<T>) -> Vec<T> {
    match std::env::var(var) {
        Err(_) => default,
        Ok(v) => v.split(',').map(|n| parse_positive(var, n)).collect(),
    }
}

/// Everything the benchmark reads from its environment, read and checked
/// at start.
pub struct Settings {
    /// Throughput rounds (`VXTRACE_BENCH_ROUNDS`).
    pub rounds: usize,
    /// Seconds of each userspace figure (`VXTRACE_BENCH_SECS`).
    pub secs: u64,
    /// Seconds of each drop-storm round (`VXTRACE_BENCH_STORM_SECS`,
    /// longer for a profiler to look in).
    pub storm_secs: f64,
    /// The parts to run (`VXTRACE_BENCH_ONLY`); all when None, and only
    /// then is BENCHMARKS.md rewritten.
    pub only: Option<Vec<Part>>,
    /// The per-hook traffic shapes (`VXTRACE_BENCH_SHAPES`).
    pub shapes: Vec<Shape>,
    /// Live peers of the userspace figures (`VXTRACE_BENCH_PEERS`).
    pub peers: Vec<u32>,
    /// How the userspace figures' sender spreads the peers over CPUs
    /// (`VXTRACE_BENCH_SPREAD`).
    pub pacing: Pacing,
}

impl Settings {
    pub fn from_env() -> Self {
        Self {
            rounds: number("VXTRACE_BENCH_ROUNDS", 9),
            secs: number("VXTRACE_BENCH_SECS", 60),
            storm_secs: number("VXTRACE_BENCH_STORM_SECS", 3.0),
            only: list("VXTRACE_BENCH_ONLY", &Part::ALL, Part::id),
            shapes: list("VXTRACE_BENCH_SHAPES", &Shape::ALL, Shape::id)
                .unwrap_or_else(|| Shape::ALL.to_vec()),
            // 100,000 peers do not fit the guests' memory at 64 possible
            // CPUs; they run with VXTRACE_BENCH_PEERS=10000.
            peers: numbers("VXTRACE_BENCH_PEERS", vec![10_000, 100_000]),
            pacing: match std::env::var("VXTRACE_BENCH_SPREAD").as_deref() {
                Err(_) | Ok("every") => Pacing::EveryCpu,
                Ok("one") => Pacing::OneCpu,
                Ok(other) => refuse(
                    "VXTRACE_BENCH_SPREAD",
                    format!(
                        "no {other:?} here; it takes one (an entry a peer) or every (every peer on every online CPU, the default)"
                    ),
                ),
            },
        }
    }

    /// Whether `part` runs.
    pub fn runs(&self, part: Part) -> bool {
        self.only.as_ref().is_none_or(|o| o.contains(&part))
    }
}
