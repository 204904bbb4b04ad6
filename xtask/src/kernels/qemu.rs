//! Booting one kernel and its initramfs under qemu (TCG) and recording the
//! guest's serial console, with progress shown as the guest's markers come.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{marker::Marker, packages::Kernel};

/// The guest's kernel command line. Under emulation the kernel distrusts
/// the TSC and falls back to the HPET, every read of which is emulated
/// (vxtrace and the tests read the clock a lot); the emulated TSC is steady.
const APPEND: &str = "console=ttyS0 panic=-1 quiet clocksource=tsc tsc=reliable";

/// Time the guest may take to boot and reach the first test.
pub const BOOT_ALLOWANCE: Duration = Duration::from_secs(180);

/// How long a guest that reported it is done may take to power off.
const POWER_OFF_ALLOWANCE: Duration = Duration::from_secs(30);

/// The machine the guest runs on.
#[derive(Clone, Copy)]
pub struct Machine {
    /// CPUs online at boot (qemu's `-smp`).
    pub cpus: u32,
    /// CPUs the kernel may ever bring up (`maxcpus`): what
    /// /sys/devices/system/cpu/possible says, and the number of copies of
    /// every per-CPU map value. Above `cpus`, the rest are hot-pluggable
    /// and never plugged.
    pub possible_cpus: u32,
    pub memory_mib: u32,
}

impl Machine {
    /// What the integration tests run on.
    pub const TESTS: Machine = Machine {
        cpus: 2,
        possible_cpus: 2,
        memory_mib: 2048,
    };
}

/// What one boot left: the console's lines and how it ended.
pub struct BootLog {
    /// The guest's serial console, line by line (qemu's own messages are
    /// only in the log file).
    pub lines: Vec<String>,
    /// The log file: the console and qemu's messages.
    pub log: PathBuf,
    /// Seconds from starting qemu to the guest's first report.
    pub booted: Option<f64>,
    /// How the guest ended (powered off, killed after the time limit, ...).
    pub end: String,
}

/// Which of qemu's outputs a line came from.
#[derive(Clone, Copy, PartialEq)]
enum Stream {
    /// stdout: the guest's serial console.
    Console,
    /// stderr: qemu's own messages.
    Qemu,
}

/// Boots `kernel` with `initrd`, records everything in `log`, and kills the
/// guest if it has not finished within `limit`.
pub fn boot(
    kernel: &Kernel,
    initrd: &Path,
    machine: Machine,
    log: &Path,
    limit: Duration,
) -> Result<BootLog> {
    let mut cmd = qemu_command(kernel, initrd, machine);
    eprintln!("xtask: {cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let lines_in = read_lines(&mut child);
    let mut console = Console {
        release: &kernel.release,
        started,
        deadline: started + limit,
        lines: Vec::new(),
        booted: None,
    };
    let killed = console.follow(&lines_in, &mut file, &mut child);
    let status = child.wait().context("waiting for qemu")?;
    let mut end = killed.unwrap_or_else(|| {
        if status.success() {
            "qemu exited".to_string()
        } else {
            format!("qemu exited with {status}")
        }
    });
    let _ = writeln!(file, "xtask: {end}");
    // The guest's own report of a panic, if any, is more telling.
    if let Some(p) = console.lines.iter().find(|l| l.contains("Kernel panic")) {
        end = format!("{end}; {}", p.trim());
    }
    Ok(BootLog {
        lines: console.lines,
        log: log.to_path_buf(),
        booted: console.booted,
        end,
    })
}

fn qemu_command(kernel: &Kernel, initrd: &Path, machine: Machine) -> Command {
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
    .arg("-smp")
    .arg(format!(
        "{},maxcpus={}",
        machine.cpus, machine.possible_cpus
    ))
    .arg("-m")
    .arg(machine.memory_mib.to_string())
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", APPEND])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// qemu's stdout and stderr, line by line, through one channel (a thread
/// per stream); the channel closes when both streams have.
fn read_lines(child: &mut Child) -> Receiver<(Stream, String)> {
    let (tx, rx) = channel();
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    for (stream, pipe) in [
        (
            Stream::Console,
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
        ),
        (Stream::Qemu, Box::new(stderr)),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_string();
                        if tx.send((stream, line)).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    rx
}

/// The guest's console as it is read.
struct Console<'a> {
    release: &'a str,
    started: Instant,
    deadline: Instant,
    lines: Vec<String>,
    booted: Option<f64>,
}

impl Console<'_> {
    /// Reads lines until qemu closes its outputs or the deadline passes
    /// (then kills qemu and says so).
    fn follow(
        &mut self,
        lines_in: &Receiver<(Stream, String)>,
        file: &mut File,
        child: &mut Child,
    ) -> Option<String> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            match lines_in.recv_timeout(left) {
                Ok((stream, line)) => {
                    let from_qemu = stream == Stream::Qemu;
                    let _ = writeln!(file, "{}{line}", if from_qemu { "qemu: " } else { "" });
                    if !from_qemu {
                        self.console_line(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    return Some(format!(
                        "killed after {:.0} s without finishing",
                        self.started.elapsed().as_secs_f64()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Keeps a console line, and acts on the marker in it, if any.
    fn console_line(&mut self, line: String) {
        let release = self.release;
        match Marker::find(&line) {
            Some(m @ Marker::Kernel { .. }) => {
                let s = self.started.elapsed().as_secs_f64();
                self.booted = Some(s);
                eprintln!("xtask: kernel {release}: up after {s:.1} s: {}", m.fields());
            }
            Some(Marker::TestBegun { test }) => eprintln!("xtask: kernel {release}: {test} ..."),
            Some(m @ Marker::TestEnded { .. }) => {
                eprintln!("xtask: kernel {release}: {}", m.fields())
            }
            Some(Marker::Done) => {
                // Powering off should take a moment; do not wait long for a
                // kernel that does not.
                self.deadline = self.deadline.min(Instant::now() + POWER_OFF_ALLOWANCE);
            }
            Some(Marker::TestSkipped { .. }) | None => {}
        }
        self.lines.push(line);
    }
}
