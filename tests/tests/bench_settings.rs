//! The benchmark refuses a setting it cannot use before it builds its lab,
//! naming the variable, the value and what it takes: a typo must not run
//! the defaults, or no part at all, for half an hour.

use std::process::Command;

/// Runs the benchmark with one setting; its exit code and standard error.
fn bench_with(var: &str, value: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vxtrace-bench"))
        .env(var, value)
        .output()
        .expect("the benchmark runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn refused(var: &str, value: &str, needles: &[&str]) {
    let (code, stderr) = bench_with(var, value);
    assert_eq!(code, Some(2), "{var}={value}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{var}={value}: one line, got: {stderr}");
    assert!(
        lines[0].starts_with(&format!("vxtrace-bench: {var}: ")),
        "{stderr}"
    );
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
}

#[test]
fn a_part_that_does_not_exist_is_refused_with_the_parts() {
    refused(
        "VXTRACE_BENCH_ONLY",
        "userspace,throughtput",
        &[
            "\"throughtput\"",
            "test_run,per_hook,drop_storm,throughput,userspace,metrics_series,start_stop",
        ],
    );
}

#[test]
fn a_traffic_shape_that_does_not_exist_is_refused_with_the_shapes() {
    refused(
        "VXTRACE_BENCH_SHAPES",
        "many-peers",
        &[
            "\"many-peers\"",
            "overlay_udp64,overlay_tcp,underlay_udp64,cluster_peers,many_peers",
        ],
    );
}

#[test]
fn numbers_that_are_not_numbers_are_refused() {
    refused(
        "VXTRACE_BENCH_ROUNDS",
        "nine",
        &["\"nine\" is not a number"],
    );
    refused("VXTRACE_BENCH_SECS", "60s", &["\"60s\" is not a number"]);
    refused("VXTRACE_BENCH_STORM_SECS", "", &["\"\" is not a number"]);
    refused(
        "VXTRACE_BENCH_PEERS",
        "10000,10k",
        &["\"10k\" is not a number"],
    );
}

#[test]
fn counts_and_lengths_of_zero_are_refused() {
    refused("VXTRACE_BENCH_ROUNDS", "0", &["\"0\" is not above zero"]);
    refused(
        "VXTRACE_BENCH_STORM_SECS",
        "NaN",
        &["\"NaN\" is not above zero"],
    );
    refused(
        "VXTRACE_BENCH_PEERS",
        "10000,0",
        &["\"0\" is not above zero"],
    );
}

#[test]
fn a_spread_that_does_not_exist_is_refused_with_the_spreads() {
    refused("VXTRACE_BENCH_SPREAD", "all", &["\"all\"", "one", "every"]);
}
