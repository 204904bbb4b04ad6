//! The kernel's run-time statistics of BPF programs
//! (`kernel.bpf_stats_enabled`): snapshots and what ran between two.

use std::collections::BTreeMap;

use vxtrace_common::names::programs;

/// Turns the kernel's per-program run-time statistics on for as long as it
/// lives (they cost a clock read per run, so they are off otherwise).
pub struct StatsEnabled;

impl StatsEnabled {
    pub fn new() -> Self {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1");
        Self
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0");
    }
}

/// One loaded program's counters.
#[derive(Clone, Debug)]
pub struct ProgStats {
    /// The name as the kernel keeps it (at most 15 characters).
    pub name: String,
    pub run_ns: u64,
    pub runs: u64,
    pub insns: Option<u32>,
}

/// Every loaded program's counters, by id.
pub fn snapshot() -> BTreeMap<u32, ProgStats> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| {
            (
                p.id(),
                ProgStats {
                    name: p.name_as_str().unwrap_or("").to_string(),
                    run_ns: p.run_time().as_nanos() as u64,
                    runs: p.run_count(),
                    insns: p.verified_instruction_count(),
                },
            )
        })
        .collect()
}

/// What each program did between two snapshots (programs in both).
pub fn delta(
    before: &BTreeMap<u32, ProgStats>,
    after: &BTreeMap<u32, ProgStats>,
) -> BTreeMap<u32, ProgStats> {
    after
        .iter()
        .filter_map(|(id, a)| {
            let b = before.get(id)?;
            Some((
                *id,
                ProgStats {
                    name: a.name.clone(),
                    run_ns: a.run_ns - b.run_ns,
                    runs: a.runs - b.runs,
                    insns: a.insns,
                },
            ))
        })
        .collect()
}

/// The full name of a vxtrace program the kernel knows by its first 15
/// characters.
pub fn full_name(kernel_name: &str) -> Option<&'static str> {
    if kernel_name.is_empty() {
        return None;
    }
    programs::ALL
        .iter()
        .copied()
        .find(|full| full.starts_with(kernel_name))
}

/// Runs and nanoseconds summed over the programs of one name (one per
/// vxtrace process).
pub fn by_name(d: &BTreeMap<u32, ProgStats>) -> BTreeMap<&'static str, (u64, u64, Option<u32>)> {
    let mut out: BTreeMap<&'static str, (u64, u64, Option<u32>)> = BTreeMap::new();
    for p in d.values() {
        if let Some(name) = full_name(&p.name) {
            let e = out.entry(name).or_default();
            e.0 += p.runs;
            e.1 += p.run_ns;
            e.2 = e.2.or(p.insns);
        }
    }
    out
}

/// Runs and nanoseconds summed over the programs with these ids.
pub fn by_ids(d: &BTreeMap<u32, ProgStats>, ids: &[u32]) -> (u64, u64) {
    ids.iter()
        .filter_map(|id| d.get(id))
        .fold((0, 0), |(r, n), p| (r + p.runs, n + p.run_ns))
}
