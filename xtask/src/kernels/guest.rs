//! The guest's /init: the shell script that sets the guest up like a node,
//! reports the kernel's facts, runs each test between markers, and powers
//! off.

use super::{
    Feature, Options,
    marker::{Marker, ShellWords},
};

/// Mounts what a node has and brings up loopback.
const SETUP: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/netns
# This busybox runs its own applets ahead of PATH (it has an `ip`): the
# real tools are called by path here.
/usr/sbin/ip link set lo up

yn() { if [ -e "$1" ]; then echo yes; else echo no; fi; }
# Hundredths of a second since boot.
now() {
    read up rest < /proc/uptime
    s=${up%.*}; c=${up#*.}; c=${c#0}
    echo $((s * 100 + c))
}
"#;

/// What the guest reports about its kernel, as shell words that print
/// `key=value`.
const KERNEL_FACTS: &str = "release=$(uname -r) \
    btf=$(yn /sys/kernel/btf/vmlinux) \
    kprobes=$(yn /sys/bus/event_source/devices/kprobe) \
    memlock_kib=$(ulimit -l) \
    possible_cpus=$(cat /sys/devices/system/cpu/possible) \
    clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)";

/// The shell function that runs one test: `run_test <id> <target> <name>`.
/// Pieces of it are the markers around the test's output.
fn run_test_function() -> String {
    let skipped = Marker::<ShellWords>::TestSkipped { test: "$1" };
    let begun = Marker::<ShellWords>::TestBegun { test: "$1" };
    let ended = Marker::<ShellWords>::TestEnded {
        test: "$1",
        exit_code: "$rc",
        secs: "$((d / 100)).$(printf %02d $((d % 100)))",
    };
    format!(
        r#"failed=0
run_test() {{
    if [ "$failed" = 1 ] && [ "$KEEP_GOING" != 1 ]; then
        echo "{skipped}"
        return
    fi
    echo "{begun}"
    t0=$(now)
    VXTRACE_BIN=/usr/bin/vxtrace timeout -s KILL "$TIMEOUT" "/tests/$2" --exact "$3" --test-threads=1 --nocapture 2>&1
    rc=$?
    d=$(( $(now) - t0 ))
    echo "{ended}"
    [ "$rc" = 0 ] || failed=1
    # A test killed on its time limit leaves its vxtrace children and its
    # lab behind; the next test starts from a clean kernel.
    kill -9 -1 2>/dev/null
    for ns in /run/netns/*; do
        [ -e "$ns" ] && /usr/sbin/ip netns delete "${{ns##*/}}"
    done
}}
"#
    )
}

/// The guest's /init: mounts what a node has, reports the kernel's
/// features, runs each test with markers around its output, powers off.
pub fn init_script(features: &[&Feature], opts: &Options) -> String {
    let mut body = format!(
        "{}\nKEEP_GOING={}\nTIMEOUT={}\n",
        run_test_function(),
        u8::from(opts.keep_going),
        opts.test_timeout
    );
    for f in features {
        body.push_str(&format!("run_test {} {} {}\n", f.id(), f.target, f.name));
    }
    node_init(&body)
}

/// The guest's /init for the benchmark's userspace part: the figures are
/// the JSON lines the benchmark prints on the console.
pub fn bench_init_script(peers: u32, secs: u64) -> String {
    node_init(&format!(
        "VXTRACE_BIN=/usr/bin/vxtrace VXTRACE_BENCH_ONLY=userspace VXTRACE_BENCH_PEERS={peers} \
VXTRACE_BENCH_SECS={secs} /tests/vxtrace-bench 2>&1\n"
    ))
}

/// Set up like a node, report the kernel, run `body`, say so, power off.
fn node_init(body: &str) -> String {
    let kernel = Marker::<ShellWords>::Kernel {
        facts: KERNEL_FACTS,
    };
    format!(
        r#"{SETUP}echo "{kernel}"

{body}
echo "{}"
sync
poweroff -f
# Without ACPI power-off, a reboot also ends qemu (-no-reboot).
reboot -f
"#,
        Marker::<ShellWords>::Done
    )
}
