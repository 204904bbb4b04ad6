//! `cargo xtask kernels`: a chosen set of vxtrace's integration tests, run
//! on other kernels than the one this machine runs.
//!
//! vxtrace's programs meet another verifier, other BTF and other kernel
//! functions on every kernel release, so passing on the build machine's
//! kernel proves little about the kernels users run. This task fetches
//! Debian's cloud kernels, boots each under qemu (TCG, so no KVM is needed)
//! with an initramfs that holds everything the tests use (vxtrace, the test
//! binaries, iproute2, nftables, conntrack, kmod, the kernel's network
//! modules), runs the tests one after the other inside, and reads their
//! results from the serial console. The guest has no network device: the
//! tests' traffic stays in its own network namespaces.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc::{RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages this task needs on the host, besides `setup`'s.
const KERNEL_APT_PACKAGES: &[&str] = &[
    // The emulator: these kernels are booted under TCG.
    "qemu-system-x86",
    // The guest's shell and small tools: one static binary.
    "busybox-static",
    // modprobe in the guest, and depmod for the fetched kernels' modules.
    "kmod",
];

/// What is checked on every kernel: one integration test per feature.
struct Feature {
    label: &'static str,
    /// The integration test target (tests/tests/<target>.rs).
    target: &'static str,
    /// The test's exact name in that target.
    name: &'static str,
}

const FEATURES: &[Feature] = &[
    Feature {
        label: "encap/decap exact counts",
        target: "overlay",
        name: "ipv4_underlay_flannel_port",
    },
    Feature {
        label: "IPv6 underlay",
        target: "overlay",
        name: "ipv6_underlay",
    },
    Feature {
        label: "drops by reason (host firewall)",
        target: "drops",
        name: "host_firewall_on_the_vxlan_port",
    },
    Feature {
        label: "drops: forward drop of pod traffic (attributed)",
        target: "drops",
        name: "forward_drop_of_inner_pod_traffic",
    },
    Feature {
        label: "drops: stale neighbour MAC on the peer",
        target: "drops",
        name: "stale_neighbour_mac_on_the_peer",
    },
    Feature {
        label: "drops: masquerade on the peer",
        target: "drops",
        name: "masquerade_of_pod_traffic_on_the_peer",
    },
    Feature {
        label: "PAWS established",
        target: "tcp",
        name: "paws_rejects_on_an_established_connection",
    },
    Feature {
        label: "PAWS TIME_WAIT behind NAT",
        target: "tcp",
        name: "nat_and_time_wait_reuse_reject_syns",
    },
    Feature {
        label: "PAWS kprobes",
        target: "tcp",
        name: "paws_kprobes_report_what_the_kernel_offers",
    },
    Feature {
        label: "clsact: two runs keep their own filters",
        target: "lifecycle",
        name: "two_clsact_runs_keep_their_own_filters",
    },
    Feature {
        label: "clsact: nothing left after SIGKILL",
        target: "lifecycle",
        name: "sigkill_clsact_leaves_nothing_attached",
    },
];

impl Feature {
    fn id(&self) -> String {
        format!("{}::{}", self.target, self.name)
    }
}

/// Kernel series tested by default, each where the package registry
/// serves it.
const DEFAULT_SERIES: &[&str] = &["6.1", "6.12", "5.10"];

/// Series that this machine's Debian release does not carry, and the older
/// release whose suites do (read through a private apt configuration).
const OLDER_SUITES: &[(&str, &str)] = &[("5.10", "bullseye"), ("4.19", "buster")];

/// The parts of a kernel's modules tree that go into the guest. The tests
/// exercise the network stack only (vxlan, veth, bridge, qdiscs and
/// classifiers, netfilter, conntrack, NAT) and the library and crypto code
/// those modules use; storage, filesystems, graphics and sound cannot be
/// reached by them. Leaving those out makes the image much smaller, which
/// matters because the emulated kernel unpacks it at every boot. Every
/// dependency of a kept module is kept too, wherever it lives.
const MODULE_DIRS: &[&str] = &[
    "kernel/net/",
    "kernel/drivers/net/",
    "kernel/lib/",
    "kernel/crypto/",
    "kernel/arch/",
];

/// Busybox applets the guest gets. Not all of them: busybox also has `ip`,
/// `tc`, `modprobe` and others, which must not stand in for the real tools.
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "[", "test", "true", "false", "mount", "umount", "mkdir", "rm", "ln", "cat", "echo",
    "printf", "poweroff", "reboot", "sync", "sleep", "timeout", "zcat", "grep", "sed", "awk",
    "head", "tail", "cut", "tr", "wc", "sort", "ls", "stat", "readlink", "dmesg", "uname", "ps",
    "kill", "env", "tee", "id", "date", "hostname", "cp", "mv", "touch", "chmod", "find", "xargs",
];

/// Real tools the tests and vxtrace run: (name, required).
const HOST_TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("tc", true),
    ("bridge", true),
    ("nft", true),
    ("conntrack", true),
    // The lifecycle tests list loaded programs with it.
    ("bpftool", true),
];

/// kmod's names: the kernel runs /sbin/modprobe to load a module on demand
/// (a qdisc, a classifier, a netfilter expression), as on a real node.
const KMOD_LINKS: &[&str] = &["modprobe", "insmod", "rmmod", "lsmod", "depmod", "modinfo"];

/// The guest's kernel command line. Under emulation the kernel distrusts
/// the TSC and falls back to the HPET, every read of which is emulated
/// (vxtrace and the tests read the clock a lot); the emulated TSC is steady.
const APPEND: &str = "console=ttyS0 panic=-1 quiet clocksource=tsc tsc=reliable";

/// Time the guest may take to boot and reach the first test.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// Lines of a failed test's output shown in the summary.
const TAIL_LINES: usize = 40;

#[derive(clap::Args)]
pub struct Options {
    /// Kernel series to test: 6.1, 6.12, 5.10, ... (repeat, or separate
    /// with commas). Default: 6.1, 6.12 and 5.10. A series the package
    /// registry does not serve is skipped, not failed.
    #[arg(long = "kernel", value_delimiter = ',')]
    kernels: Vec<String>,
    /// Run every test on every kernel even after one failed (default: stop
    /// at the first failure).
    #[arg(long)]
    keep_going: bool,
    /// Only the features whose label or test name contains this (repeat for
    /// more).
    #[arg(long = "test")]
    tests: Vec<String>,
    /// Seconds one test may run in the guest before it is killed.
    #[arg(long, default_value_t = 300)]
    test_timeout: u64,
    /// Where downloaded kernel packages are kept between runs.
    #[arg(long, default_value = "/var/cache/vxtrace/kernels")]
    cache_dir: PathBuf,
}

impl Options {
    /// What `cargo xtask test` runs: every default kernel and feature, all
    /// reported even after a failure.
    pub fn whole_matrix() -> Self {
        Self {
            kernels: Vec::new(),
            keep_going: true,
            tests: Vec::new(),
            test_timeout: 300,
            cache_dir: PathBuf::from("/var/cache/vxtrace/kernels"),
        }
    }
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    crate::apt_install(KERNEL_APT_PACKAGES)?;
    let features: Vec<&Feature> = FEATURES
        .iter()
        .filter(|f| {
            opts.tests.is_empty()
                || opts
                    .tests
                    .iter()
                    .any(|t| f.label.contains(t.as_str()) || f.id().contains(t.as_str()))
        })
        .collect();
    if features.is_empty() {
        bail!(
            "no feature matches --test {}: the features are {}",
            opts.tests.join(" --test "),
            FEATURES
                .iter()
                .map(|f| format!("\"{}\" ({})", f.label, f.id()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let out_dir = root.join("target/kernels");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    std::fs::create_dir_all(&opts.cache_dir).with_context(|| {
        format!(
            "creating the kernel cache {} (run as root, or pass --cache-dir)",
            opts.cache_dir.display()
        )
    })?;

    let started = Instant::now();
    let payload = build_payload(root, &features)?;
    let base = base_image(&payload, &features, opts)?;
    eprintln!(
        "xtask: payload built in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let series: Vec<&str> = if opts.kernels.is_empty() {
        DEFAULT_SERIES.to_vec()
    } else {
        opts.kernels.iter().map(String::as_str).collect()
    };

    let mut reports = Vec::new();
    let mut stopped = false;
    for s in series {
        let report = if stopped {
            KernelReport::new(s)
                .not_run(&features, "an earlier kernel failed (--keep-going runs on)")
        } else {
            let older = OLDER_SUITES
                .iter()
                .find(|(o, _)| *o == s)
                .map(|(_, suite)| *suite);
            test_kernel(s, older, &features, &base, &out_dir, opts)
        };
        if report.failed() && !opts.keep_going {
            stopped = true;
        }
        reports.push(report);
    }

    println!();
    let width = features.iter().map(|f| f.label.len()).max().unwrap_or(0);
    for r in &reports {
        r.print(width);
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| r.failed())
        .map(|r| r.name.as_str())
        .collect();
    let tested = reports.iter().filter(|r| r.skipped.is_none()).count();
    if !failed.is_empty() {
        bail!(
            "failures on {} (serial logs in {})",
            failed.join(", "),
            out_dir.display()
        );
    }
    if tested == 0 {
        bail!("no kernel could be tested: every series was skipped (see above)");
    }
    eprintln!(
        "xtask: kernels done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Results.

enum Outcome {
    Ok(f64),
    Failed {
        secs: Option<f64>,
        why: String,
        tail: Vec<String>,
        log: Option<PathBuf>,
    },
    NotRun(String),
}

#[derive(Default)]
struct Timings {
    download: Option<(f64, bool)>,
    image: Option<(f64, u64)>,
    boot: Option<f64>,
    tests: f64,
    total: f64,
}

struct KernelReport {
    /// The kernel release when known, else the series asked for.
    name: String,
    skipped: Option<String>,
    /// What went wrong before or around the tests (fetch, boot, hang).
    error: Option<String>,
    /// What the guest reported about itself (BTF, kprobes, ...).
    info: Option<String>,
    results: Vec<(&'static str, Outcome)>,
    timings: Timings,
}

impl KernelReport {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            skipped: None,
            error: None,
            info: None,
            results: Vec::new(),
            timings: Timings::default(),
        }
    }

    fn not_run(mut self, features: &[&Feature], why: &str) -> Self {
        self.results = features
            .iter()
            .map(|f| (f.label, Outcome::NotRun(why.to_string())))
            .collect();
        self
    }

    fn failed(&self) -> bool {
        self.error.is_some()
            || self
                .results
                .iter()
                .any(|(_, o)| matches!(o, Outcome::Failed { .. }))
    }

    fn print(&self, width: usize) {
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
        let t = &self.timings;
        let mut parts = Vec::new();
        if let Some((s, cached)) = t.download {
            parts.push(format!(
                "download {s:.1} s{}",
                if cached { " (cached)" } else { "" }
            ));
        }
        if let Some((s, bytes)) = t.image {
            parts.push(format!(
                "image {s:.1} s ({:.1} MiB)",
                bytes as f64 / (1024.0 * 1024.0)
            ));
        }
        if let Some(s) = t.boot {
            parts.push(format!("boot {s:.1} s"));
        }
        if t.tests > 0.0 {
            parts.push(format!("tests {:.1} s", t.tests));
        }
        if !parts.is_empty() {
            println!(
                "kernel {}  timings: {}, total {:.1} s",
                self.name,
                parts.join(", "),
                t.total
            );
        }
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

// ---------------------------------------------------------------------------
// One kernel: fetch, image, boot, results.

fn test_kernel(
    series: &str,
    older: Option<&str>,
    features: &[&Feature],
    base: &Image,
    out_dir: &Path,
    opts: &Options,
) -> KernelReport {
    let started = Instant::now();
    let mut report = KernelReport::new(series);
    eprintln!("xtask: kernel {series}: fetching");
    let t = Instant::now();
    let kernel = match fetch_kernel(series, older, &opts.cache_dir) {
        Ok(Ok(k)) => k,
        Ok(Err(why)) => {
            report.skipped = Some(why);
            return report;
        }
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report.not_run(features, "no kernel");
        }
    };
    report.name = kernel.release.clone();
    report.timings.download = Some((t.elapsed().as_secs_f64(), kernel.cached));

    let t = Instant::now();
    let work = out_dir.join(&kernel.release);
    let initrd = out_dir.join(format!("{}.cpio", kernel.release));
    let built = (|| -> Result<u64> {
        let mut image = base.clone();
        let n = add_modules(&mut image, &kernel, &work.join("modules"))?;
        let size = image.write_newc(&initrd)?;
        eprintln!(
            "xtask: kernel {}: image {} ({n} modules, {:.1} MiB)",
            kernel.release,
            initrd.display(),
            size as f64 / (1024.0 * 1024.0)
        );
        Ok(size)
    })();
    match built {
        Ok(size) => report.timings.image = Some((t.elapsed().as_secs_f64(), size)),
        Err(e) => {
            report.error = Some(format!("building the initramfs: {e:#}"));
            return report.not_run(features, "no initramfs");
        }
    }

    let log = out_dir.join(format!("{}.log", kernel.release));
    let deadline = BOOT_ALLOWANCE
        + features.len() as u32
            * (Duration::from_secs(opts.test_timeout) + Duration::from_secs(30));
    let mut guest = match boot(&kernel, &initrd, &log, deadline) {
        Ok(b) => b,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report.not_run(features, "qemu did not run");
        }
    };
    let mut retried = None;
    if guest.booted.is_none() {
        // An emulated boot can die of the emulator's own faults; a second
        // failure is the kernel's (or the image's).
        let first = out_dir.join(format!("{}.first-boot.log", kernel.release));
        let _ = std::fs::rename(&log, &first);
        eprintln!(
            "xtask: kernel {}: the guest did not come up ({}); booting again (first log: {})",
            kernel.release,
            guest.end,
            first.display()
        );
        match boot(&kernel, &initrd, &log, deadline) {
            Ok(b) => guest = b,
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                return report.not_run(features, "qemu did not run");
            }
        }
        retried = Some(first);
    }
    report.timings.boot = guest.booted;
    collect_results(&mut report, &guest, features, &work, opts);
    if let (Some(first), Some(info)) = (retried, report.info.as_mut()) {
        info.push_str(&format!(
            " (second boot; the first died: {})",
            first.display()
        ));
    }
    report.timings.total = started.elapsed().as_secs_f64();
    report
}

fn collect_results(
    report: &mut KernelReport,
    boot: &BootLog,
    features: &[&Feature],
    work: &Path,
    opts: &Options,
) {
    let log = boot.log.display().to_string();
    let mut info = None;
    let mut done = false;
    let mut begun: HashMap<String, usize> = HashMap::new();
    let mut ended: HashMap<String, (usize, i32, f64)> = HashMap::new();
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    for (i, line) in boot.lines.iter().enumerate() {
        let Some(m) = marker(line) else { continue };
        let mut words = m.split_whitespace();
        match words.next() {
            Some("@@VXTRACE-KERNEL") => info = Some(words.collect::<Vec<_>>().join(" ")),
            Some("@@VXTRACE-TEST-BEGIN") => {
                if let Some(id) = words.next() {
                    begun.insert(id.to_string(), i);
                }
            }
            Some("@@VXTRACE-TEST-END") => {
                let id = words.next().unwrap_or_default().to_string();
                let mut rc = -1;
                let mut secs = 0.0;
                for w in words {
                    if let Some(v) = w.strip_prefix("rc=") {
                        rc = v.parse().unwrap_or(-1);
                    } else if let Some(v) = w.strip_prefix("secs=") {
                        secs = v.parse().unwrap_or(0.0);
                    }
                }
                ended.insert(id, (i, rc, secs));
            }
            Some("@@VXTRACE-TEST-SKIP") => {
                if let Some(id) = words.next() {
                    skipped.insert(id.to_string());
                }
            }
            Some("@@VXTRACE-DONE") => done = true,
            _ => {}
        }
    }
    report.info = info.map(|i| match boot.booted {
        Some(s) => format!("booted in {s:.1} s: {i}"),
        None => i,
    });
    if report.info.is_none() {
        report.error = Some(format!(
            "the guest did not come up ({}); serial log: {log}",
            boot.end
        ));
    } else if !done {
        report.error = Some(format!(
            "the guest stopped before its last test ({}); serial log: {log}",
            boot.end
        ));
    }

    for f in features {
        let id = f.id();
        let outcome = match (begun.get(&id), ended.get(&id)) {
            (Some(&b), Some(&(e, rc, secs))) => {
                report.timings.tests += secs;
                let output = &boot.lines[b + 1..e];
                let passed = output
                    .iter()
                    .any(|l| l.contains("test result: ok. 1 passed"));
                if rc == 0 && passed {
                    Outcome::Ok(secs)
                } else {
                    let why = if rc == 137 {
                        format!("killed after {} s (--test-timeout)", opts.test_timeout)
                    } else if rc == 0 {
                        format!(
                            "no test named {} in target {}: update FEATURES in xtask/src/kernels.rs",
                            f.name, f.target
                        )
                    } else {
                        failure_reason(output).unwrap_or_else(|| format!("exit code {rc}"))
                    };
                    failed(f, Some(secs), why, output, work)
                }
            }
            (Some(&b), None) => {
                let output = &boot.lines[b + 1..];
                let why = format!("the guest stopped during this test ({})", boot.end);
                failed(f, None, why, output, work)
            }
            (None, _) if skipped.contains(&id) => {
                Outcome::NotRun("an earlier test failed (--keep-going runs on)".into())
            }
            (None, _) => Outcome::NotRun("the guest never started it".into()),
        };
        report.results.push((f.label, outcome));
    }
}

fn failed(f: &Feature, secs: Option<f64>, why: String, output: &[String], work: &Path) -> Outcome {
    // The whole output, for verifier logs and long JSON summaries.
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

/// The marker in a console line, if any; kernel messages can share the line.
fn marker(line: &str) -> Option<&str> {
    line.find("@@VXTRACE-").map(|i| &line[i..])
}

// ---------------------------------------------------------------------------
// The payload: vxtrace and the test binaries.

struct Payload {
    vxtrace: PathBuf,
    /// Test target name -> its executable.
    tests: BTreeMap<String, PathBuf>,
}

fn build_payload(root: &Path, features: &[&Feature]) -> Result<Payload> {
    crate::run(Command::new("cargo").args(["build", "--release", "-p", "vxtrace"]))
        .context("building vxtrace (cargo build --release -p vxtrace)")?;
    let vxtrace = root.join("target/release/vxtrace");

    let wanted: BTreeSet<&str> = features.iter().map(|f| f.target).collect();
    eprintln!("xtask: cargo test --release -p vxtrace-tests --no-run --message-format=json");
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "vxtrace-tests",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !out.status.success() {
        // In JSON mode the compiler's errors come on stdout, as messages.
        for m in &messages {
            if m["reason"] == "compiler-message" && m["message"]["level"] == "error" {
                eprint!("{}", m["message"]["rendered"].as_str().unwrap_or_default());
            }
        }
        bail!(
            "building the integration tests failed (cargo test --release -p vxtrace-tests --no-run): fix the build errors above"
        );
    }
    let mut tests = BTreeMap::new();
    for msg in &messages {
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let target = &msg["target"];
        let is_test = target["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let name = target["name"].as_str().unwrap_or_default();
        if let (true, Some(exe)) = (is_test && wanted.contains(name), msg["executable"].as_str()) {
            tests.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    for t in &wanted {
        if !tests.contains_key(*t) {
            bail!(
                "cargo built no test executable for target `{t}`: is tests/tests/{t}.rs still there? (else update FEATURES in xtask/src/kernels.rs)"
            );
        }
    }
    // The names, checked here rather than after a boot.
    for f in features {
        let exe = &tests[f.target];
        let out = Command::new(exe)
            .args(["--list", "--format", "terse"])
            .output()
            .with_context(|| format!("listing the tests of {}", exe.display()))?;
        let listed = String::from_utf8_lossy(&out.stdout);
        let want = format!("{}: test", f.name);
        if !listed.lines().any(|l| l == want) {
            bail!(
                "test target `{}` has no test `{}` (feature \"{}\"): update FEATURES in xtask/src/kernels.rs",
                f.target,
                f.name,
                f.label
            );
        }
    }
    Ok(Payload { vxtrace, tests })
}

// ---------------------------------------------------------------------------
// Kernel packages.

struct Kernel {
    /// The kernel release (`uname -r`), e.g. 6.1.0-56-cloud-amd64.
    release: String,
    /// The unpacked package, with modules.dep.
    tree: PathBuf,
    vmlinuz: PathBuf,
    /// Whether the package was already in the cache.
    cached: bool,
}

/// apt, either as configured on this machine or pointed at an older
/// release's suites through private lists (the machine's are not touched).
struct Apt {
    opts: Vec<String>,
}

impl Apt {
    fn system() -> Self {
        Self { opts: Vec::new() }
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.opts);
        cmd
    }

    /// apt reading `suite` and `suite`-security from the servers that this
    /// machine's own release comes from. `Ok(Err(why))` when they do not
    /// serve it.
    fn older_release(cache: &Path, suite: &str) -> Result<std::result::Result<Self, String>> {
        let sources = match older_sources(suite)? {
            Ok(sources) => sources,
            Err(why) => return Ok(Err(why)),
        };
        let dir = cache.join(format!("apt-{suite}"));
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        std::fs::write(dir.join("sources.list"), sources)?;
        // The machine's apt.conf.d stays in force (proxies, validity
        // checks); its hooks after `update` act on the machine's own
        // caches, and the app metadata is not needed here.
        std::fs::write(
            dir.join("apt.conf"),
            "#clear APT::Update::Post-Invoke;\n\
             #clear APT::Update::Post-Invoke-Success;\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n",
        )?;
        let d = dir.display();
        let apt = Self {
            opts: vec![
                "-c".into(),
                format!("{d}/apt.conf"),
                "-o".into(),
                format!("Dir::Etc::SourceList={d}/sources.list"),
                "-o".into(),
                "Dir::Etc::SourceParts=/dev/null".into(),
                "-o".into(),
                format!("Dir::State::Lists={d}/lists"),
                "-o".into(),
                format!("Dir::Cache={d}/cache"),
            ],
        };
        let out = apt
            .command("apt-get")
            .args(["update", "-qq"])
            .output()
            .context("running apt-get update for the older release")?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let have_lists = std::fs::read_dir(dir.join("lists"))
                .map(|rd| {
                    rd.flatten()
                        .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
                })
                .unwrap_or(false);
            if !have_lists {
                return Ok(Err(format!(
                    "the package registry does not serve Debian {suite} ({})",
                    last.trim()
                )));
            }
            eprintln!(
                "xtask: apt-get update for {suite} failed ({last}); using its lists from an earlier run"
            );
        }
        Ok(Ok(apt))
    }
}

/// The machine's release codename (bookworm, ...).
fn codename() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: not a Debian release?")
}

/// One `deb` source of this machine's apt configuration.
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
    signed_by: Option<String>,
}

/// The `deb` sources in /etc/apt (one-line and deb822 formats).
fn system_sources() -> Vec<Source> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        if name.ends_with(".sources") {
            for para in text.split("\n\n") {
                let mut fields: HashMap<String, String> = HashMap::new();
                for line in para.lines() {
                    if line.starts_with('#') || line.starts_with(' ') || line.starts_with('\t') {
                        continue;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let types = fields.get("types").cloned().unwrap_or_default();
                let enabled = fields.get("enabled").is_none_or(|v| v != "no");
                if !enabled || !types.split_whitespace().any(|t| t == "deb") {
                    continue;
                }
                let words = |k: &str| -> Vec<String> {
                    fields
                        .get(k)
                        .map(|v| v.split_whitespace().map(str::to_string).collect())
                        .unwrap_or_default()
                };
                sources.push(Source {
                    uris: words("uris"),
                    suites: words("suites"),
                    signed_by: fields
                        .get("signed-by")
                        .filter(|v| v.starts_with('/'))
                        .cloned(),
                });
            }
        } else if name.ends_with(".list") {
            for line in text.lines() {
                let line = line.trim();
                let Some(rest) = line.strip_prefix("deb ") else {
                    continue;
                };
                let mut rest = rest.trim();
                let mut signed_by = None;
                if let Some(r) = rest.strip_prefix('[') {
                    let Some((options, after)) = r.split_once(']') else {
                        continue;
                    };
                    signed_by = options
                        .split_whitespace()
                        .find_map(|o| o.strip_prefix("signed-by="))
                        .map(str::to_string);
                    rest = after.trim();
                }
                let mut words = rest.split_whitespace();
                if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                    sources.push(Source {
                        uris: vec![uri.to_string()],
                        suites: vec![suite.to_string()],
                        signed_by,
                    });
                }
            }
        }
    }
    sources
}

/// A sources.list for `suite` and `suite`-security on the servers this
/// machine's release comes from, or why there is none.
fn older_sources(suite: &str) -> Result<std::result::Result<String, String>> {
    let own = codename()?;
    let sources = system_sources();
    let mut out = String::new();
    for (own_suite, target) in [
        (own.clone(), suite.to_string()),
        (format!("{own}-security"), format!("{suite}-security")),
    ] {
        for s in sources.iter().filter(|s| s.suites.contains(&own_suite)) {
            for uri in &s.uris {
                let opts = s
                    .signed_by
                    .as_ref()
                    .map(|k| format!("[signed-by={k}] "))
                    .unwrap_or_default();
                out.push_str(&format!("deb {opts}{uri} {target} main\n"));
            }
        }
    }
    if out.is_empty() {
        return Ok(Err(format!(
            "no apt source in /etc/apt serves {own}, so where {suite} lives is unknown"
        )));
    }
    Ok(Ok(out))
}

/// Whether package or cache entry `name` belongs to kernel series `series`
/// (linux-image-6.1.0-56-cloud-amd64 to 6.1, not to 6.12).
fn in_series(name: &str, series: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("linux-image-")
        .and_then(|r| r.strip_prefix(series))
    else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some('.' | '-')) && chars.next().is_some_and(|c| c.is_ascii_digit())
}

/// The newest signed cloud image package of `series`: (name, version).
fn newest_package(apt: &Apt, series: &str) -> Result<Option<(String, String)>> {
    let pattern = format!(
        "^linux-image-{}[.-][0-9].*-cloud-amd64$",
        series.replace('.', "\\.")
    );
    let out = apt
        .command("apt-cache")
        .args(["search", "--names-only", &pattern])
        .output()
        .context("running apt-cache search")?;
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        // Not the -dbg or -unsigned ones.
        .filter(|n| n.ends_with("-cloud-amd64") && in_series(n, series))
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Ok(None);
    }
    let out = apt
        .command("apt-cache")
        .arg("policy")
        .args(&names)
        .output()
        .context("running apt-cache policy")?;
    let mut candidates = Vec::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_string());
        } else if let (Some(v), Some(name)) = (
            line.trim().strip_prefix("Candidate:").map(str::trim),
            &current,
        ) && v != "(none)"
        {
            candidates.push((name.clone(), v.to_string()));
        }
    }
    let mut best: Option<(String, String)> = None;
    for c in candidates {
        let newer = match &best {
            None => true,
            Some((_, v)) => {
                crate::succeeds(Command::new("dpkg").args(["--compare-versions", &c.1, "gt", v]))
            }
        };
        if newer {
            best = Some(c);
        }
    }
    Ok(best)
}

/// The newest kernel of `series`, downloaded (once) and unpacked.
/// `Ok(Err(why))` when the package registry does not serve it.
fn fetch_kernel(
    series: &str,
    older: Option<&str>,
    cache: &Path,
) -> Result<std::result::Result<Kernel, String>> {
    let system = Apt::system();
    let (apt, found) = match newest_package(&system, series)? {
        Some(found) => (system, found),
        None => {
            let Some(suite) = older else {
                return Ok(Err(format!(
                    "no linux-image-{series}*-cloud-amd64 package in this machine's apt sources"
                )));
            };
            let apt = match Apt::older_release(cache, suite)? {
                Ok(apt) => apt,
                Err(why) => return Ok(Err(why)),
            };
            match newest_package(&apt, series)? {
                Some(found) => (apt, found),
                None => {
                    return Ok(Err(format!(
                        "Debian {suite} has no linux-image-{series}*-cloud-amd64 package"
                    )));
                }
            }
        }
    };
    let (mut package, mut version) = found;
    let mut deb = cache.join(format!(
        "{package}_{}_amd64.deb",
        version.replace(':', "%3a")
    ));
    let cached = deb.is_file();
    if !cached && let Err(first) = download(&apt, &package, &version, cache, &deb) {
        if !apt.opts.is_empty() {
            return Err(first);
        }
        // This machine's lists may be older than what the registry
        // serves now.
        eprintln!("xtask: {first:#}; refreshing apt's lists and trying again");
        crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
        (package, version) = newest_package(&apt, series)?
            .with_context(|| format!("no linux-image-{series} package after apt-get update"))?;
        deb = cache.join(format!(
            "{package}_{}_amd64.deb",
            version.replace(':', "%3a")
        ));
        if !deb.is_file() {
            download(&apt, &package, &version, cache, &deb)?;
        }
    }
    let release = package.trim_start_matches("linux-image-").to_string();
    let tree = cache.join(format!("{package}_{}", version.replace(':', "%3a")));
    let ready = tree.join(".vxtrace-ready");
    if !ready.exists() {
        if tree.exists() {
            std::fs::remove_dir_all(&tree)
                .with_context(|| format!("removing the partial {}", tree.display()))?;
        }
        crate::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))
            .with_context(|| format!("unpacking {}", deb.display()))?;
        if !tree.join("lib/modules").join(&release).is_dir() {
            bail!(
                "{} has no lib/modules/{release}: not the kernel package expected",
                deb.display()
            );
        }
        crate::run(Command::new("depmod").arg("-b").arg(&tree).arg(&release))
            .with_context(|| format!("running depmod for {release}"))?;
        std::fs::write(&ready, "")?;
    }
    // Older packages of the series are not needed any more.
    if let Ok(rd) = std::fs::read_dir(cache) {
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p != deb && p != tree && in_series(&name, series) {
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} is missing from the package", vmlinuz.display());
    }
    eprintln!(
        "xtask: kernel {series}: {package} {version}{}",
        if cached { " (cached)" } else { "" }
    );
    Ok(Ok(Kernel {
        release,
        tree,
        vmlinuz,
        cached,
    }))
}

fn download(apt: &Apt, package: &str, version: &str, cache: &Path, deb: &Path) -> Result<()> {
    // Into a directory of its own, then into place: an interrupted download
    // never looks like a cached package.
    let tmp = cache.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    crate::run(
        apt.command("apt-get")
            .current_dir(&tmp)
            // Root downloads into root's cache directory.
            .args(["-o", "APT::Sandbox::User=root", "download", "-qq"])
            .arg(format!("{package}={version}")),
    )
    .with_context(|| format!("downloading {package} {version} with apt-get"))?;
    let got = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", tmp.display()))?;
    std::fs::rename(&got, deb).with_context(|| format!("moving {} into place", got.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// Adds the kernel's network modules (and all they depend on), with their
/// own modules.dep, under /lib/modules/<release>.
fn add_modules(image: &mut Image, kernel: &Kernel, staging: &Path) -> Result<usize> {
    let moddir = kernel.tree.join("lib/modules").join(&kernel.release);
    let dep_text = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", moddir.display()))?;
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for line in dep_text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(path, rest.split_whitespace().collect());
        by_name.insert(module_name(path), path);
    }
    // Soft dependencies (loaded with a module, without a symbol link).
    let mut soft: HashMap<String, Vec<String>> = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(moddir.join("modules.softdep")) {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(m) = w.next() else { continue };
            soft.entry(m.replace('-', "_"))
                .or_default()
                .extend(w.filter(|x| !x.ends_with(':')).map(|x| x.replace('-', "_")));
        }
    }
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = deps
        .keys()
        .copied()
        .filter(|p| MODULE_DIRS.iter().any(|d| p.starts_with(d)))
        .collect();
    while let Some(p) = todo.pop() {
        if !keep.insert(p) {
            continue;
        }
        todo.extend(deps.get(p).into_iter().flatten().copied());
        for s in soft.get(&module_name(p)).into_iter().flatten() {
            if let Some(q) = by_name.get(s) {
                todo.push(q);
            }
        }
    }

    // Staged on disk for depmod, which writes indexes for just these.
    if staging.exists() {
        std::fs::remove_dir_all(staging)
            .with_context(|| format!("removing {}", staging.display()))?;
    }
    let stage_mods = staging.join("lib/modules").join(&kernel.release);
    for p in &keep {
        let to = stage_mods.join(p);
        std::fs::create_dir_all(to.parent().expect("module paths have a directory"))?;
        std::fs::copy(moddir.join(p), &to).with_context(|| format!("copying module {p}"))?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        if moddir.join(f).exists() {
            std::fs::copy(moddir.join(f), stage_mods.join(f))
                .with_context(|| format!("copying {f}"))?;
        }
    }
    crate::run(
        Command::new("depmod")
            .arg("-b")
            .arg(staging)
            .arg(&kernel.release),
    )
    .context("running depmod on the image's modules")?;
    image.add_tree(&stage_mods, &format!("usr/lib/modules/{}", kernel.release))?;
    Ok(keep.len())
}

/// A module's name as modprobe knows it: kernel/net/ipv4/ip_gre.ko.xz -> ip_gre.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

// ---------------------------------------------------------------------------
// The initramfs.

/// A file tree written as a newc cpio archive (what the kernel unpacks as
/// its initramfs). Paths are relative, without a leading slash.
#[derive(Clone, Default)]
struct Image {
    nodes: BTreeMap<String, Node>,
}

#[derive(Clone)]
enum Node {
    Dir,
    File { src: FileSource, mode: u32 },
    Symlink(String),
    CharDev(u32, u32),
}

#[derive(Clone)]
enum FileSource {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// Where a host path goes in the image: its /bin, /sbin, /lib and /lib64 are
/// links into /usr, as on this machine.
fn image_path(host: &str) -> String {
    let p = host.trim_start_matches('/');
    for top in ["bin/", "sbin/", "lib/", "lib64/"] {
        if p.starts_with(top) {
            return format!("usr/{p}");
        }
    }
    p.to_string()
}

impl Image {
    fn add_dirs_for(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            self.nodes.entry(dir.to_string()).or_insert(Node::Dir);
            at += i + 1;
        }
    }

    fn dir(&mut self, path: &str) {
        self.add_dirs_for(path);
        self.nodes.entry(path.to_string()).or_insert(Node::Dir);
    }

    fn file(&mut self, path: &str, src: FileSource, mode: u32) {
        self.add_dirs_for(path);
        self.nodes
            .insert(path.to_string(), Node::File { src, mode });
    }

    fn host_file(&mut self, path: &str, host: &Path) -> Result<()> {
        let real =
            std::fs::canonicalize(host).with_context(|| format!("resolving {}", host.display()))?;
        let mode = std::fs::metadata(&real)
            .with_context(|| format!("reading {}", real.display()))?
            .permissions()
            .mode()
            & 0o7777;
        self.file(path, FileSource::Host(real), mode);
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.add_dirs_for(path);
        self.nodes
            .insert(path.to_string(), Node::Symlink(target.to_string()));
    }

    /// Copies directory `src` (files and directories) to `dest`.
    fn add_tree(&mut self, src: &Path, dest: &str) -> Result<()> {
        self.dir(dest);
        let rd = std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))?;
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let to = format!("{dest}/{name}");
            if e.file_type()?.is_dir() {
                self.add_tree(&e.path(), &to)?;
            } else {
                self.host_file(&to, &e.path())?;
            }
        }
        Ok(())
    }

    /// Writes the archive (uncompressed: the emulated kernel unpacks it
    /// faster than it would decompress it); returns its size.
    fn write_newc(&self, out: &Path) -> Result<u64> {
        let tmp = out.with_extension("cpio.tmp");
        let mut w = Newc {
            w: BufWriter::new(
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
            ),
            written: 0,
            ino: 0,
        };
        for (path, node) in &self.nodes {
            match node {
                Node::Dir => w.entry(path, 0o040755, (0, 0), &[])?,
                Node::Symlink(target) => w.entry(path, 0o120777, (0, 0), target.as_bytes())?,
                Node::CharDev(major, minor) => w.entry(path, 0o020600, (*major, *minor), &[])?,
                Node::File { src, mode } => {
                    let data = match src {
                        FileSource::Bytes(b) => b.clone(),
                        FileSource::Host(p) => {
                            std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
                        }
                    };
                    w.entry(path, 0o100000 | mode, (0, 0), &data)?
                }
            }
        }
        w.entry("TRAILER!!!", 0, (0, 0), &[])?;
        w.w.flush()?;
        drop(w.w);
        std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
        Ok(std::fs::metadata(out)?.len())
    }
}

struct Newc {
    w: BufWriter<File>,
    written: u64,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            if name == "TRAILER!!!" { 0 } else { self.ino },
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len(),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // checksum (none in newc)
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0u8; 3][..n as usize])
    }
}

/// Where `name` is found on this machine's PATH (the sbin directories
/// first, as root's PATH has them).
fn find_tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The shared libraries `binary` loads, with the dynamic loader; none for a
/// static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((_, rest)) = line.split_once("=> ") {
            if rest.starts_with("not found") {
                bail!(
                    "{} needs {line}: install the package that has it",
                    binary.display()
                );
            }
            if let Some(p) = rest.split(" (").next().filter(|p| p.starts_with('/')) {
                libs.push(p.to_string());
            }
        } else if line.starts_with('/')
            && let Some(p) = line.split(" (").next()
        {
            libs.push(p.to_string());
        }
    }
    Ok(libs)
}

/// Everything but the kernel's modules: tools, libraries, vxtrace, tests,
/// and /init.
fn base_image(payload: &Payload, features: &[&Feature], opts: &Options) -> Result<Image> {
    let mut img = Image::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "root",
        "etc",
        "mnt",
        "usr/bin",
        "usr/sbin",
        "usr/lib",
        "usr/lib64",
        "tests",
    ] {
        img.dir(d);
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("var/run", "../run"),
    ] {
        img.symlink(link, target);
    }
    // The kernel opens /dev/console for /init before anything is mounted.
    img.nodes.insert("dev/console".into(), Node::CharDev(5, 1));
    img.nodes.insert("dev/null".into(), Node::CharDev(1, 3));
    img.file(
        "etc/passwd",
        FileSource::Bytes(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()),
        0o644,
    );
    img.file(
        "etc/group",
        FileSource::Bytes(b"root:x:0:\n".to_vec()),
        0o644,
    );

    let mut dynamic: Vec<PathBuf> = Vec::new();
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is not installed: apt-get install busybox-static")?;
    img.host_file("usr/bin/busybox", &busybox)?;
    dynamic.push(busybox);
    for applet in BUSYBOX_APPLETS {
        img.symlink(&format!("usr/bin/{applet}"), "busybox");
    }
    for (tool, required) in HOST_TOOLS {
        match find_tool(tool) {
            Some(p) => {
                img.host_file(&image_path(&p.to_string_lossy()), &p)?;
                dynamic.push(p);
            }
            None if *required => {
                bail!("`{tool}` is not installed on this machine: run `cargo xtask setup`")
            }
            None => {}
        }
    }
    let kmod = find_tool("kmod").context("kmod is not installed: apt-get install kmod")?;
    img.host_file("usr/bin/kmod", &kmod)?;
    dynamic.push(kmod);
    for l in KMOD_LINKS {
        img.symlink(&format!("usr/sbin/{l}"), "../bin/kmod");
    }
    img.host_file("usr/bin/vxtrace", &payload.vxtrace)?;
    dynamic.push(payload.vxtrace.clone());
    for (target, exe) in &payload.tests {
        img.host_file(&format!("tests/{target}"), exe)?;
        dynamic.push(exe.clone());
    }
    let mut libs = BTreeSet::new();
    for b in &dynamic {
        libs.extend(shared_libraries(b)?);
    }
    for lib in libs {
        img.host_file(&image_path(&lib), Path::new(&lib))?;
    }
    img.file(
        "init",
        FileSource::Bytes(init_script(features, opts).into_bytes()),
        0o755,
    );
    Ok(img)
}

/// The guest's /init: mounts what a node has, reports the kernel's
/// features, runs each test with markers around its output, powers off.
fn init_script(features: &[&Feature], opts: &Options) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
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
echo "@@VXTRACE-KERNEL release=$(uname -r) btf=$(yn /sys/kernel/btf/vmlinux) kprobes=$(yn /sys/bus/event_source/devices/kprobe) memlock_kib=$(ulimit -l) clocksource=$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"

failed=0
run_test() {
    if [ "$failed" = 1 ] && [ "$KEEP_GOING" != 1 ]; then
        echo "@@VXTRACE-TEST-SKIP $1"
        return
    fi
    echo "@@VXTRACE-TEST-BEGIN $1"
    t0=$(now)
    VXTRACE_BIN=/usr/bin/vxtrace timeout -s KILL "$TIMEOUT" "/tests/$2" --exact "$3" --test-threads=1 --nocapture 2>&1
    rc=$?
    d=$(( $(now) - t0 ))
    echo "@@VXTRACE-TEST-END $1 rc=$rc secs=$((d / 100)).$(printf %02d $((d % 100)))"
    [ "$rc" = 0 ] || failed=1
    # A test killed on its time limit leaves its vxtrace children and its
    # lab behind; the next test starts from a clean kernel.
    kill -9 -1 2>/dev/null
    for ns in /run/netns/*; do
        [ -e "$ns" ] && /usr/sbin/ip netns delete "${ns##*/}"
    done
}

"#,
    );
    s.push_str(&format!(
        "KEEP_GOING={}\nTIMEOUT={}\n",
        u8::from(opts.keep_going),
        opts.test_timeout
    ));
    for f in features {
        s.push_str(&format!("run_test {} {} {}\n", f.id(), f.target, f.name));
    }
    s.push_str(
        r#"
echo "@@VXTRACE-DONE"
sync
poweroff -f
# Without ACPI power-off, a reboot also ends qemu (-no-reboot).
reboot -f
"#,
    );
    s
}

// ---------------------------------------------------------------------------
// Booting.

struct BootLog {
    lines: Vec<String>,
    log: PathBuf,
    /// Seconds from starting qemu to the guest's first report.
    booted: Option<f64>,
    /// How the guest ended (powered off, killed after the time limit, ...).
    end: String,
}

fn boot(kernel: &Kernel, initrd: &Path, log: &Path, limit: Duration) -> Result<BootLog> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        // One emulator thread for both vCPUs: the kernel patches its own
        // code at run time (static keys, through int3), and with a thread
        // per vCPU another vCPU can run a stale copy of it ("Oops: int3",
        // seen booting 6.12). One thread costs about 5% here.
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2048",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-nic",
        "none",
        "-kernel",
    ])
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", APPEND])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;

    let (tx, rx) = channel::<(bool, String)>();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    for (is_err, stream) in [
        (false, Box::new(stdout) as Box<dyn std::io::Read + Send>),
        (true, Box::new(stderr)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if tx.send((is_err, line)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);

    let mut deadline = started + limit;
    let mut lines = Vec::new();
    let mut booted = None;
    let mut end = String::new();
    let release = &kernel.release;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((is_err, line)) => {
                let _ = writeln!(file, "{}{line}", if is_err { "qemu: " } else { "" });
                if is_err {
                    continue;
                }
                if let Some(m) = marker(&line) {
                    let words: Vec<&str> = m.split_whitespace().collect();
                    match words.first().copied() {
                        Some("@@VXTRACE-KERNEL") => {
                            let s = started.elapsed().as_secs_f64();
                            booted = Some(s);
                            eprintln!(
                                "xtask: kernel {release}: up after {s:.1} s: {}",
                                words[1..].join(" ")
                            );
                        }
                        Some("@@VXTRACE-TEST-BEGIN") => {
                            eprintln!(
                                "xtask: kernel {release}: {} ...",
                                words.get(1).unwrap_or(&"")
                            )
                        }
                        Some("@@VXTRACE-TEST-END") => {
                            eprintln!("xtask: kernel {release}: {}", words[1..].join(" "))
                        }
                        Some("@@VXTRACE-DONE") => {
                            // Powering off should take a moment; do not wait
                            // long for a kernel that does not.
                            deadline = deadline.min(Instant::now() + Duration::from_secs(30));
                        }
                        _ => {}
                    }
                }
                lines.push(line);
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                end = format!(
                    "killed after {:.0} s without finishing",
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    if end.is_empty() {
        end = if status.success() {
            "qemu exited".to_string()
        } else {
            format!("qemu exited with {status}")
        };
    }
    let _ = writeln!(file, "xtask: {end}");
    // The guest's own report of a panic, if any, is more telling.
    if let Some(p) = lines.iter().find(|l| l.contains("Kernel panic")) {
        end = format!("{end}; {}", p.trim());
    }
    Ok(BootLog {
        lines,
        log: log.to_path_buf(),
        booted,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn series_membership() {
        assert!(in_series("linux-image-6.1.0-56-cloud-amd64", "6.1"));
        assert!(!in_series("linux-image-6.12.117+deb12-cloud-amd64", "6.1"));
        assert!(in_series("linux-image-6.12.117+deb12-cloud-amd64", "6.12"));
        assert!(!in_series("linux-image-6.12-cloud-amd64", "6.12"));
        assert!(in_series(
            "linux-image-5.10.0-46-cloud-amd64_5.10.262-1",
            "5.10"
        ));
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("kernel/net/ipv4/ip_gre.ko"), "ip_gre");
        assert_eq!(module_name("kernel/drivers/net/vxlan/vxlan.ko.xz"), "vxlan");
        assert_eq!(module_name("kernel/net/sched/sch-x.ko.zst"), "sch_x");
    }

    #[test]
    fn image_paths_follow_usr_merge() {
        assert_eq!(
            image_path("/lib/x86_64-linux-gnu/libc.so.6"),
            "usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert_eq!(
            image_path("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(image_path("/usr/sbin/ip"), "usr/sbin/ip");
    }

    #[test]
    fn newc_entries_are_aligned() {
        let mut img = Image::default();
        img.file("a/b", FileSource::Bytes(b"hello".to_vec()), 0o644);
        img.symlink("c", "a/b");
        let dir = std::env::temp_dir().join(format!("xtask-newc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("t.cpio");
        let size = img.write_newc(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(size as usize, data.len());
        assert_eq!(data.len() % 4, 0);
        assert!(data.starts_with(b"070701"));
        // Directory "a" comes before the file in it.
        let text = String::from_utf8_lossy(&data);
        assert!(text.find("a\0").unwrap() < text.find("a/b\0").unwrap());
        assert!(text.contains("TRAILER!!!"));
    }
}
