//! Helpers for the privileged integration tests: labs that always clean up
//! (flannel's and Calico's layouts, and a BGP EVPN fabric run by FRR:
//! [`evpn`]), and a `vxtrace watch --json` child that is read line by line.
//!
//! Tests panic rather than return errors, and run one at a time
//! (`--test-threads=1`): they share the kernel.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub use vxtrace::lab::{Lab, Layout};

pub mod datapath;
pub mod evpn;
pub mod scenarios;
use vxtrace::schema::{Attached, Interval, Line, Summary};

/// The vxtrace binary under test (`cargo xtask test` sets VXTRACE_BIN).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VXTRACE_BIN") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("vxtrace");
        if p.exists() {
            return p;
        }
    }
    panic!("vxtrace binary not found: run `cargo xtask test` (or set VXTRACE_BIN)");
}

/// A lab that is torn down when the test ends, pass or fail.
pub struct LabGuard {
    pub lab: Lab,
}

impl LabGuard {
    /// A lab in flannel's layout.
    pub fn new(name: &str, nodes: u8, ipv6: bool, port: u16) -> Self {
        Self::build(Lab {
            ipv6,
            port,
            ..Lab::new(name, nodes, Layout::Flannel)
        })
    }

    /// Builds `lab` (any layout).
    pub fn build(lab: Lab) -> Self {
        lab.up().expect("building the lab");
        Self { lab }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = vxtrace::lab::down(&self.lab.name);
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

/// How long a watcher may take to attach, or to write its summary.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the counts may keep moving after a test's traffic ended
/// (background packets of a lab, a slow tick on a busy machine).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`wait_until`] and [`wait_for`] look again.
const POLL: Duration = Duration::from_millis(20);

/// Keeps the calling thread on `cpu`: BPF_PROG_TEST_RUN runs a program
/// on the caller's CPU, and a packet sent from a namespace is counted on
/// the sender's CPU (a veth delivers there).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it; the
    // size passed is its size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(
        rc,
        0,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Polls `cond` every 20 ms until it holds; fails, saying it timed out
/// waiting for `what`, if it does not hold within `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()))
}

/// Polls `probe` every 20 ms until it gives a value; fails, saying it
/// timed out waiting for `what`, if none comes within `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Whether an interval counted nothing for any peer: no packet of any
/// kind, no drop. (Drops of no peer are left out: a lab's own background
/// traffic, not what a test counts.)
pub fn counted_nothing(i: &Interval) -> bool {
    fn all_zero(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => n.as_f64() == Some(0.0),
            serde_json::Value::Array(a) => a.iter().all(all_zero),
            serde_json::Value::Object(o) => o.values().all(all_zero),
            _ => true,
        }
    }
    i.peers.values().all(|p| {
        p.drops.values().all(|&n| n == 0)
            && all_zero(&serde_json::to_value(&p.counters).expect("counters serialise"))
    })
}

/// Now, as Unix time in seconds (how vxtrace stamps its lines).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// `vxtrace watch --json` running in a network namespace, its lines read
/// as the typed schema (a line that is not one fails the test).
pub struct Watcher {
    child: Child,
    lines: Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
    pub attached: Attached,
}

impl Watcher {
    /// Starts the watcher in `ns` and waits until its programs are attached.
    ///
    /// Lab nodes share one kernel, so unless a test says otherwise each
    /// node counts only the drops of its own namespace (`--netns self`).
    pub fn start(ns: &str, extra: &[&str]) -> Self {
        let scope: &[&str] = if extra.iter().any(|a| a.starts_with("--netns")) {
            &[]
        } else {
            &["--netns", "self"]
        };
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin())
            .args(["watch", "--json"])
            .args(scope)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vxtrace watch");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut w = Self {
            child,
            lines: rx,
            stderr,
            attached: Attached::default(),
        };
        // Generous: loading and verifying the programs takes many seconds on
        // an emulated kernel of a busy machine (the kernel matrix); only a
        // failure waits this long.
        match w.next_matching(|l| matches!(l, Line::Attached(_)), ATTACH_TIMEOUT) {
            Some(Line::Attached(attached)) => {
                w.attached = *attached;
                w
            }
            _ => {
                let _ = w.child.kill();
                let _ = w.child.wait();
                panic!("vxtrace did not attach; stderr: {}", w.stderr_text())
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line for which `wanted` holds, skipping others.
    pub fn next_matching(
        &mut self,
        wanted: impl Fn(&Line) -> bool,
        timeout: Duration,
    ) -> Option<Line> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.next_line(left)?;
            if wanted(&line) {
                return Some(line);
            }
        }
    }

    /// Every line up to and with the first for which `done` holds (the
    /// lines a test would otherwise skip, for those that count them);
    /// fails, saying it timed out waiting for `what`, if none comes
    /// within `timeout` or vxtrace exits first.
    pub fn lines_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Line) -> bool,
    ) -> Vec<Line> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            let line = deadline
                .checked_duration_since(Instant::now())
                .and_then(|left| self.next_line(left));
            let Some(line) = line else {
                panic!(
                    "no line within {timeout:?} (or vxtrace exited) for {what}; {} lines read meanwhile, the last: {}",
                    lines.len(),
                    lines.last().map(json).unwrap_or_default()
                )
            };
            let stop = done(&line);
            lines.push(line);
            if stop {
                return lines;
            }
        }
    }

    /// Waits until vxtrace has counted everything the test sent before the
    /// call: an interval that began after the call and counted nothing
    /// for any peer (see [`counted_nothing`]). Packets still on their way
    /// when the call was made (a softirq queue of the receiving namespace)
    /// land before that interval or would show in it. Every line read
    /// meanwhile.
    pub fn settle(&mut self) -> Vec<Line> {
        self.settle_since(unix_now())
    }

    /// [`Watcher::settle`] for traffic that ended at Unix time `since`.
    fn settle_since(&mut self, since: f64) -> Vec<Line> {
        self.lines_until(
            "the counts to settle (an interval begun after the traffic, counting nothing for any peer)",
            SETTLE_TIMEOUT,
            |l| matches!(l, Line::Interval(i) if i.ts - i.interval_s >= since && counted_nothing(i)),
        )
    }

    /// Waits for an interval line closed at or after Unix time `at`: the
    /// maps were read, and handshakes older than `--syn-timeout` judged
    /// unanswered, by then. Every line read meanwhile.
    pub fn wait_for_read_after(&mut self, at: f64, timeout: Duration) -> Vec<Line> {
        self.lines_until(
            &format!("a read of the maps after Unix time {at:.3}"),
            timeout,
            |l| matches!(l, Line::Interval(i) if i.ts >= at),
        )
    }

    /// Waits for `in_a_row` interval lines in a row in which every one of
    /// `peers` was heard from (VXLAN packets arrived from it): steady
    /// traffic as vxtrace sees it. Every line read meanwhile.
    pub fn hearing_from(
        &mut self,
        peers: &[std::net::IpAddr],
        in_a_row: usize,
        timeout: Duration,
    ) -> Vec<Line> {
        let mut run = 0;
        self.lines_until(
            &format!("{in_a_row} interval lines in a row with packets from each of {peers:?}"),
            timeout,
            |l| {
                if let Line::Interval(i) = l {
                    let heard = peers.iter().all(|p| {
                        i.peers
                            .get(p)
                            .is_some_and(|c| c.counters.rx_nic.packets > 0)
                    });
                    run = if heard { run + 1 } else { 0 };
                }
                run >= in_a_row
            },
        )
    }

    /// The next line of any kind.
    pub fn next_line(&mut self, timeout: Duration) -> Option<Line> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Some(
                Line::parse(&line).unwrap_or_else(|e| panic!("not a vxtrace line ({e}): {line}")),
            ),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    fn stderr_text(self) -> String {
        self.stderr.join().unwrap_or_default()
    }

    /// Once the last packets' counts are in the maps ([`Watcher::settle`]),
    /// SIGTERM, then the summary line; asserts a clean exit.
    pub fn stop(mut self) -> Summary {
        self.settle();
        self.terminate();
        self.finish()
    }

    /// Stops several watchers of one test (the nodes of a lab) once each
    /// has counted what the traffic before the call left: their summaries,
    /// in order.
    pub fn stop_all(mut watchers: Vec<Watcher>) -> Vec<Summary> {
        let since = unix_now();
        for w in &mut watchers {
            w.settle_since(since);
        }
        for w in &watchers {
            w.terminate();
        }
        watchers.into_iter().map(Watcher::finish).collect()
    }

    /// SIGTERM, without waiting for anything.
    pub fn terminate(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
    }

    /// Once the counts settled, SIGTERM, then every line written since the
    /// last one read, up to and with the summary (what a recording of the run holds after its
    /// header and `attached` line); asserts a clean exit.
    pub fn stop_with_lines(mut self) -> (Summary, Vec<Line>) {
        let mut lines = self.settle();
        self.terminate();
        let mut summary = None;
        while let Some(line) = self.next_line(ATTACH_TIMEOUT) {
            if let Line::Summary(s) = &line {
                summary = Some((**s).clone());
            }
            lines.push(line);
            if summary.is_some() {
                break;
            }
        }
        let stderr = self.exit_cleanly();
        let summary = summary.unwrap_or_else(|| panic!("no summary line; stderr: {stderr}"));
        (summary, lines)
    }

    /// Waits for exit (e.g. after --duration) and returns the summary.
    pub fn finish(mut self) -> Summary {
        let summary = self
            .next_matching(|l| matches!(l, Line::Summary(_)), ATTACH_TIMEOUT)
            .map(|l| match l {
                Line::Summary(s) => *s,
                _ => unreachable!("matched a summary"),
            });
        let stderr = self.exit_cleanly();
        summary.unwrap_or_else(|| panic!("no summary line; stderr: {stderr}"))
    }

    /// Waits for exit, asserts it was clean; its stderr.
    fn exit_cleanly(mut self) -> String {
        let status = self.child.wait().expect("waiting for vxtrace");
        let stderr = self.stderr_text();
        assert!(
            status.success(),
            "vxtrace exited with {status}; stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(mut self) {
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Any of vxtrace's typed values as compact JSON, as it writes them: for
/// assertion messages.
pub fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("vxtrace's types serialise")
}

/// The addresses of the peers a summary lists.
pub fn peer_names(summary: &Summary) -> Vec<String> {
    summary.peers.keys().map(|a| a.to_string()).collect()
}

/// A TCP listener on `port` inside network namespace `ns`.
pub fn listen_in(ns: &str, port: u16) -> std::net::TcpListener {
    vxtrace::netns::run_in(ns, || Ok(std::net::TcpListener::bind(("0.0.0.0", port))?)).unwrap()
}

/// A TCP connection from inside `ns` (the connect result as it came).
pub fn connect_from(
    ns: &str,
    to: std::net::SocketAddr,
    timeout: Duration,
) -> std::io::Result<std::net::TcpStream> {
    vxtrace::netns::run_in(ns, || {
        Ok(std::net::TcpStream::connect_timeout(&to, timeout))
    })
    .unwrap()
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("running command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs an iproute2-style command and panics on failure.
pub fn sh(args: &[&str]) {
    let (code, _, err) = run(Command::new(args[0]).args(&args[1..]));
    assert_eq!(code, 0, "{args:?} failed: {err}");
}

/// Outer L2 frame size of an inner IPv4 packet of `inner_ip_len` bytes:
/// inner Ethernet 14 + VXLAN 8 + UDP 8 + outer IP (20 or 40) + Ethernet 14.
pub fn outer_frame_len(inner_ip_len: u64, ipv6_underlay: bool) -> u64 {
    inner_ip_len + 14 + 8 + 8 + if ipv6_underlay { 40 } else { 20 } + 14
}

/// Size of one ICMP echo the lab sends, as an inner IP packet (20 + 8 + 56).
pub const ICMP_IP_LEN: u64 = 84;
/// Size of one ICMPv6 echo the lab sends, as an inner IPv6 packet (40 + 8 + 56).
pub const ICMP6_IP_LEN: u64 = 104;

/// A TCP segment built by hand, for what a socket never sends: an old
/// timestamp on a live connection, or a SYN from a client whose clock is
/// behind.
pub struct RawTcp {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// TCP flag bits (0x02 SYN, 0x10 ACK, 0x08 PSH, ...).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// An MSS option, as SYNs carry.
    pub mss: Option<u16>,
    /// The timestamp option's TSval (TSecr is 0).
    pub tsval: u32,
    pub payload: Vec<u8>,
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_PSH_ACK: u8 = 0x18;

fn fold_checksum(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum_words(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

impl RawTcp {
    /// The whole IPv4 packet, checksums included.
    pub fn packet(&self) -> Vec<u8> {
        let mut opts = Vec::new();
        if let Some(mss) = self.mss {
            opts.extend_from_slice(&[2, 4]);
            opts.extend_from_slice(&mss.to_be_bytes());
        }
        opts.extend_from_slice(&[1, 1, 8, 10]);
        opts.extend_from_slice(&self.tsval.to_be_bytes());
        opts.extend_from_slice(&0u32.to_be_bytes());
        let tcp_len = 20 + opts.len() + self.payload.len();
        let mut tcp = Vec::with_capacity(tcp_len);
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((((20 + opts.len()) / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&8192u16.to_be_bytes()); // window
        tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        tcp.extend_from_slice(&opts);
        tcp.extend_from_slice(&self.payload);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        let csum = fold_checksum(sum_words(&pseudo) + sum_words(&tcp));
        tcp[16..18].copy_from_slice(&csum.to_be_bytes());

        [ipv4_header(self.src, self.dst, 0, 6, tcp_len), tcp].concat()
    }

    /// Sends the segment `count` times from inside `ns` (a raw socket).
    pub fn send_from(&self, ns: &str, count: u32) {
        send_raw_ipv4(ns, self.dst, &self.packet(), count);
    }
}

/// Sends a whole IPv4 packet (header included) `count` times from inside
/// `ns`, through a raw socket: what no ordinary socket sends (a wrong UDP
/// checksum, an ECN mark).
pub fn send_raw_ipv4(ns: &str, dst: std::net::Ipv4Addr, packet: &[u8], count: u32) {
    vxtrace::netns::run_in(ns, || {
        // SAFETY: plain socket calls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_in = std::mem::zeroed();
            to.sin_family = libc::AF_INET as u16;
            to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    packet.as_ptr() as *const _,
                    packet.len(),
                    0,
                    &to as *const _ as *const _,
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                );
                assert_eq!(
                    n as usize,
                    packet.len(),
                    "sendto: {}",
                    std::io::Error::last_os_error()
                );
                // Paced, so no queue on the way overflows.
                std::thread::sleep(Duration::from_millis(2));
            }
            libc::close(fd);
        }
        Ok(())
    })
    .unwrap();
}

/// An IPv4 header for `payload_len` bytes of protocol `proto`, checksummed.
fn ipv4_header(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    tos: u8,
    proto: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut ip = vec![0x45, tos];
    ip.extend_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = fold_checksum(sum_words(&ip));
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip
}

/// An ICMP echo request as a whole IPv4 packet (84 bytes, like the lab's
/// pings); `tos` carries the ECN bits.
pub fn icmp_echo(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, tos: u8, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(&[0x5a; 56]);
    let csum = fold_checksum(sum_words(&icmp));
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());
    [ipv4_header(src, dst, tos, 1, icmp.len()), icmp].concat()
}

/// A VXLAN packet's UDP payload: the 8-byte header (`flags`: its first
/// byte, 0x08 = I flag), then an Ethernet frame carrying `inner_ip`.
pub fn vxlan_payload(
    flags: u8,
    vni: u32,
    inner_dst_mac: [u8; 6],
    inner_src_mac: [u8; 6],
    inner_ip: &[u8],
) -> Vec<u8> {
    let mut v = vec![flags, 0, 0, 0];
    v.extend_from_slice(&(vni << 8).to_be_bytes());
    v.extend_from_slice(&inner_dst_mac);
    v.extend_from_slice(&inner_src_mac);
    v.extend_from_slice(&[0x08, 0x00]);
    v.extend_from_slice(inner_ip);
    v
}

/// A MAC address as the lab writes it (`0e:76:78:00:00:01`).
pub fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(text.split(':')) {
        *m = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    mac
}

/// A UDP datagram in an IPv4 packet, built by hand.
pub struct RawUdp {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// The IP header's TOS byte (its low two bits are ECN: 3 = CE).
    pub tos: u8,
    /// Write a checksum that is off by one instead of the right one.
    pub wrong_checksum: bool,
    pub payload: Vec<u8>,
}

impl RawUdp {
    /// The whole IPv4 packet.
    pub fn packet(&self) -> Vec<u8> {
        let len = 8 + self.payload.len();
        let mut udp = Vec::with_capacity(len);
        udp.extend_from_slice(&self.sport.to_be_bytes());
        udp.extend_from_slice(&self.dport.to_be_bytes());
        udp.extend_from_slice(&(len as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&self.src.octets());
        pseudo.extend_from_slice(&self.dst.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
        let mut csum = fold_checksum(sum_words(&pseudo) + sum_words(&udp));
        if csum == 0 {
            csum = 0xffff;
        }
        if self.wrong_checksum {
            // Never 0 (no checksum at all) nor the right value.
            csum = if csum == 1 { 2 } else { csum - 1 };
        }
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        [ipv4_header(self.src, self.dst, self.tos, 17, len), udp].concat()
    }

    /// Sends the datagram `count` times from inside `ns`.
    pub fn send_from(&self, ns: &str, count: u32) {
        send_raw_ipv4(ns, self.dst, &self.packet(), count);
    }
}

/// The TSval a connected socket sends now (TCP_TIMESTAMP).
pub fn tcp_timestamp(s: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut tsval: u32 = 0;
    let mut len = 4u32;
    // SAFETY: getsockopt writes at most `len` bytes into `tsval`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_TIMESTAMP,
            &mut tsval as *mut u32 as *mut _,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_TIMESTAMP: {}", std::io::Error::last_os_error());
    tsval
}

/// Whether the kernel's drops carry this reason (its kfree_skb format).
/// Where tracefs is not mounted, it is read from a mount of its own in a
/// private mount namespace, as vxtrace mounts it under `ip netns exec`:
/// the host is left as it was.
pub fn kernel_has_reason(reason: &str) -> bool {
    let format = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|t| std::fs::read_to_string(format!("{t}/events/skb/kfree_skb/format")).ok())
        .unwrap_or_else(|| {
            let (code, out, err) = run(Command::new("unshare").args([
                "--mount",
                "sh",
                "-c",
                "mount -t tracefs nodev /sys/kernel/tracing && \
                 cat /sys/kernel/tracing/events/skb/kfree_skb/format",
            ]));
            assert_eq!(code, 0, "reading kfree_skb's format: {err}");
            out
        });
    format.contains(&format!("\"{reason}\""))
}
