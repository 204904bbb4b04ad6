//! `vxtrace lab`: a VXLAN overlay in flannel's layout, built from network
//! namespaces on this machine, with a traffic generator.
//!
//! Per node N (1-based): a node namespace `<name>-nN` with an underlay veth
//! `eth0` into a shared bridge namespace `<name>-br`, a VXLAN device
//! (`flannel.1`, VNI 1, port 8472, nolearning) with flannel's routes
//! (`10.244.M.0/24 via 10.244.M.0 dev flannel.1 onlink`), PERMANENT
//! neighbour entries and `bridge fdb append` entries for every other node,
//! and a pod namespace `<name>-pN` behind a `cni0` bridge. Underlay
//! addresses come from the documentation ranges (192.0.2.0/24,
//! 2001:db8:1::/64) and exist only inside the lab's namespaces.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns;

#[derive(clap::Args, Debug, Clone)]
pub struct LabOpts {
    /// Prefix of the lab's namespaces.
    #[arg(long, default_value = "vxlab")]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=50))]
    pub nodes: u8,
    /// IPv6 underlay instead of IPv4.
    #[arg(long)]
    pub ipv6_underlay: bool,
    /// VXLAN UDP port (flannel 8472, IANA 4789).
    #[arg(long, default_value_t = 8472)]
    pub port: u16,
    /// VNI.
    #[arg(long, default_value_t = 1)]
    pub vni: u32,
    /// Name of the VXLAN device in each node.
    #[arg(long, default_value = "flannel.1")]
    pub dev: String,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Build the lab (tearing down an older one of the same name first).
    Up(LabOpts),
    /// Remove every namespace of the lab.
    Down {
        #[arg(long, default_value = "vxlab")]
        name: String,
    },
    /// Send traffic from one node's pod to another's and report what came back.
    Traffic(TrafficArgs),
    /// Build a lab, run `vxtrace watch` in node 1 while traffic flows (and
    /// node 3's replies are blackholed for a while), then remove the lab.
    Demo {
        #[command(flatten)]
        opts: LabOpts,
        /// How long the demo runs.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

#[derive(clap::Args, Debug)]
pub struct TrafficArgs {
    #[arg(long, default_value = "vxlab")]
    pub name: String,
    /// Sending node (1-based).
    #[arg(long)]
    pub from: u8,
    /// Receiving node (1-based).
    #[arg(long)]
    pub to: u8,
    /// ICMP echo requests to send (one at a time, each waiting for its reply).
    #[arg(long, default_value_t = 0)]
    pub icmp: u32,
    /// UDP datagrams to send (to a receiver the lab starts in the target pod).
    #[arg(long, default_value_t = 0)]
    pub udp: u32,
    /// UDP payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up(opts) => {
            let lab = Lab::from(&opts);
            lab.up()?;
            println!(
                "lab {} up: {} nodes, {} underlay, port {}, VNI {}; pods {}",
                lab.name,
                lab.nodes,
                if lab.ipv6 { "IPv6" } else { "IPv4" },
                lab.port,
                lab.vni,
                (1..=lab.nodes)
                    .map(|i| format!("{}={}", lab.pod_ns(i), lab.pod_ip(i)))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(())
        }
        LabCommand::Down { name } => down(&name),
        LabCommand::Traffic(t) => {
            let lab = Lab::named(&t.name);
            if t.icmp > 0 {
                let replies = lab.ping(t.from, t.to, t.icmp, Duration::ZERO)?;
                println!("icmp sent={} replies={replies}", t.icmp);
            }
            if t.udp > 0 {
                let got = lab.udp(t.from, t.to, t.udp, t.size)?;
                println!("udp sent={} received={got}", t.udp);
            }
            Ok(())
        }
        LabCommand::Demo { opts, duration } => demo(&opts, duration),
    }
}

/// A lab's layout: every name and address is a function of these fields.
#[derive(Clone, Debug)]
pub struct Lab {
    pub name: String,
    pub nodes: u8,
    pub ipv6: bool,
    pub port: u16,
    pub vni: u32,
    pub dev: String,
}

impl From<&LabOpts> for Lab {
    fn from(o: &LabOpts) -> Self {
        Self {
            name: o.name.clone(),
            nodes: o.nodes,
            ipv6: o.ipv6_underlay,
            port: o.port,
            vni: o.vni,
            dev: o.dev.clone(),
        }
    }
}

impl Lab {
    /// A lab handle for commands that only need names and pod addresses.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_string(),
            nodes: 0,
            ipv6: false,
            port: 8472,
            vni: 1,
            dev: "flannel.1".into(),
        }
    }

    pub fn bridge_ns(&self) -> String {
        format!("{}-br", self.name)
    }
    pub fn node_ns(&self, i: u8) -> String {
        format!("{}-n{i}", self.name)
    }
    pub fn pod_ns(&self, i: u8) -> String {
        format!("{}-p{i}", self.name)
    }
    pub fn underlay_ip(&self, i: u8) -> IpAddr {
        if self.ipv6 {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 + i))
        }
    }
    fn underlay_prefix(&self) -> u8 {
        if self.ipv6 { 64 } else { 24 }
    }
    pub fn vtep_mac(&self, i: u8) -> String {
        format!("0e:76:78:00:00:{i:02x}")
    }
    /// Node i's flannel.1 address (x.x.x.0, as flannel assigns).
    pub fn vtep_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, i - 1, 0)
    }
    pub fn pod_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, i - 1, 2)
    }

    pub fn up(&self) -> Result<()> {
        down(&self.name)?;
        let result = self.build();
        if result.is_err() {
            let _ = down(&self.name);
        }
        result
    }

    fn build(&self) -> Result<()> {
        let br = self.bridge_ns();
        ip(&["netns", "add", &br])?;
        ipn(&br, &["link", "set", "lo", "up"])?;
        ipn(&br, &["link", "add", "br0", "type", "bridge"])?;
        ipn(&br, &["link", "set", "br0", "up"])?;
        for i in 1..=self.nodes {
            self.build_node(i)?;
        }
        for i in 1..=self.nodes {
            for j in 1..=self.nodes {
                if i != j {
                    self.connect(i, j)?;
                }
            }
        }
        Ok(())
    }

    fn build_node(&self, i: u8) -> Result<()> {
        let (br, node, pod) = (self.bridge_ns(), self.node_ns(i), self.pod_ns(i));
        ip(&["netns", "add", &node])?;
        ip(&["netns", "add", &pod])?;
        let port = format!("veth{i}");
        ipn(
            &br,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &node,
            ],
        )?;
        ipn(&br, &["link", "set", &port, "master", "br0", "up"])?;
        ipn(&node, &["link", "set", "lo", "up"])?;
        ipn(&node, &["link", "set", "eth0", "up"])?;
        let ul = format!("{}/{}", self.underlay_ip(i), self.underlay_prefix());
        if self.ipv6 {
            ipn(&node, &["addr", "add", &ul, "dev", "eth0", "nodad"])?;
        } else {
            ipn(&node, &["addr", "add", &ul, "dev", "eth0"])?;
        }
        self.add_vxlan(i)?;
        let mtu = if self.ipv6 { "1430" } else { "1450" };
        // The pod behind cni0.
        ipn(&node, &["link", "add", "cni0", "type", "bridge"])?;
        let gw = Ipv4Addr::new(10, 244, i - 1, 1);
        ipn(&node, &["addr", "add", &format!("{gw}/24"), "dev", "cni0"])?;
        ipn(&node, &["link", "set", "cni0", "mtu", mtu, "up"])?;
        ipn(
            &node,
            &[
                "link", "add", "veth0", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
                "netns", &pod,
            ],
        )?;
        ipn(&node, &["link", "set", "veth0", "master", "cni0", "up"])?;
        ipn(&pod, &["link", "set", "lo", "up"])?;
        ipn(&pod, &["link", "set", "eth0", "mtu", mtu, "up"])?;
        ipn(
            &pod,
            &[
                "addr",
                "add",
                &format!("{}/24", self.pod_ip(i)),
                "dev",
                "eth0",
            ],
        )?;
        ipn(&pod, &["route", "add", "default", "via", &gw.to_string()])?;
        netns::run_in(&node, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")
        })?;
        Ok(())
    }

    /// Node i's VXLAN device, as flannel creates it (address, MAC, MTU).
    fn add_vxlan(&self, i: u8) -> Result<()> {
        let node = self.node_ns(i);
        let local = self.underlay_ip(i).to_string();
        let vni = self.vni.to_string();
        let port_s = self.port.to_string();
        ipn(
            &node,
            &[
                "link",
                "add",
                &self.dev,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dev",
                "eth0",
                "dstport",
                &port_s,
                "nolearning",
            ],
        )?;
        let mtu = if self.ipv6 { "1430" } else { "1450" };
        ipn(
            &node,
            &[
                "link",
                "set",
                &self.dev,
                "address",
                &self.vtep_mac(i),
                "mtu",
                mtu,
            ],
        )?;
        let addr = format!("{}/32", self.vtep_ip(i));
        ipn(&node, &["addr", "add", &addr, "dev", &self.dev])?;
        ipn(&node, &["link", "set", &self.dev, "up"])
    }

    /// Deletes node i's VXLAN device and creates it again with its routes,
    /// neighbours and FDB entries: what a flannel DaemonSet restart does.
    pub fn recreate_vxlan(&self, i: u8) -> Result<()> {
        ipn(&self.node_ns(i), &["link", "del", &self.dev])?;
        self.add_vxlan(i)?;
        for j in 1..=self.nodes {
            if j != i {
                self.connect(i, j)?;
            }
        }
        Ok(())
    }

    /// Node i learns how to reach node j, exactly as flannel programs it.
    fn connect(&self, i: u8, j: u8) -> Result<()> {
        let node = self.node_ns(i);
        let vtep = self.vtep_ip(j).to_string();
        let subnet = format!("10.244.{}.0/24", j - 1);
        ipn(
            &node,
            &[
                "route", "add", &subnet, "via", &vtep, "dev", &self.dev, "onlink",
            ],
        )?;
        ipn(
            &node,
            &[
                "neigh",
                "add",
                &vtep,
                "lladdr",
                &self.vtep_mac(j),
                "dev",
                &self.dev,
                "nud",
                "permanent",
            ],
        )?;
        run_cmd(
            "bridge",
            &[
                "-n",
                &node,
                "fdb",
                "append",
                &self.vtep_mac(j),
                "dev",
                &self.dev,
                "dst",
                &self.underlay_ip(j).to_string(),
            ],
        )
    }

    /// ICMP echoes from pod `from` to pod `to`, one at a time; returns the
    /// number of replies.
    pub fn ping(&self, from: u8, to: u8, count: u32, gap: Duration) -> Result<u32> {
        ping_from(&self.pod_ns(from), self.pod_ip(to), count, gap)
    }

    /// UDP datagrams from pod `from` to a receiver in pod `to`; returns how
    /// many arrived. The receiver exists so no ICMP errors come back.
    pub fn udp(&self, from: u8, to: u8, count: u32, size: usize) -> Result<u32> {
        let dst = SocketAddr::new(IpAddr::V4(self.pod_ip(to)), 5555);
        let receiver = netns::run_in(&self.pod_ns(to), || {
            let s = UdpSocket::bind("0.0.0.0:5555").context("binding the UDP receiver")?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })?;
        let counter = std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            let mut got = 0u32;
            let mut idle_since = Instant::now();
            while got < count && idle_since.elapsed() < Duration::from_secs(2) {
                if receiver.recv(&mut buf).is_ok() {
                    got += 1;
                    idle_since = Instant::now();
                }
            }
            got
        });
        netns::run_in(&self.pod_ns(from), || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            let payload = vec![0x5a; size];
            for _ in 0..count {
                s.send_to(&payload, dst).context("sending UDP")?;
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok(())
        })?;
        Ok(counter.join().unwrap_or(0))
    }
}

/// ICMP echoes to `dst` from network namespace `ns`, one at a time;
/// returns the number of replies.
pub fn ping_from(ns: &str, dst: Ipv4Addr, count: u32, gap: Duration) -> Result<u32> {
    netns::run_in(ns, || ping(dst, count, gap))
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `count` echo requests to `dst` from the current namespace, each
/// waiting up to 1 s for its reply. Returns the replies received.
fn ping(dst: Ipv4Addr, count: u32, gap: Duration) -> Result<u32> {
    // SAFETY: plain socket syscalls on a descriptor we own.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
    if fd < 0 {
        bail!(
            "opening a raw ICMP socket: {}",
            std::io::Error::last_os_error()
        );
    }
    let ident = (std::process::id() as u16) ^ 0x5678;
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as u16;
    addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let mut replies = 0;
    for seq in 0..count {
        let seq = seq as u16;
        let mut pkt = [0u8; 64];
        pkt[0] = 8; // echo request
        pkt[4..6].copy_from_slice(&ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        for (k, b) in pkt[8..].iter_mut().enumerate() {
            *b = k as u8;
        }
        let ck = icmp_checksum(&pkt);
        pkt[2..4].copy_from_slice(&ck.to_be_bytes());
        let sent = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            unsafe { libc::close(fd) };
            bail!("sending ICMP echo to {dst}: {e}");
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            let ihl = ((buf[0] & 0x0f) as usize) * 4;
            if n < ihl + 8 {
                continue;
            }
            let icmp = &buf[ihl..n];
            let is_reply = icmp[0] == 0
                && u16::from_be_bytes([icmp[4], icmp[5]]) == ident
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq;
            if is_reply {
                replies += 1;
                break;
            }
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    unsafe { libc::close(fd) };
    Ok(replies)
}

/// Removes every namespace of lab `name` (the veths go with them).
pub fn down(name: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("running `ip netns list` (is iproute2 installed?)")?;
    let list = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{name}-");
    for line in list.lines() {
        let ns = line.split_whitespace().next().unwrap_or("");
        let rest = ns.strip_prefix(&prefix).unwrap_or("");
        let ours = rest == "br"
            || (rest.len() > 1
                && (rest.starts_with('n') || rest.starts_with('p'))
                && rest[1..].chars().all(|c| c.is_ascii_digit()));
        if ours {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
    Ok(())
}

fn run_cmd(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd} (is iproute2 installed?)"))?;
    if !out.status.success() {
        bail!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run_cmd("ip", args)
}

fn ipn(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run_cmd("ip", &full)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The embedded default: a lab, traffic, and `vxtrace watch` in node 1.
fn demo(opts: &LabOpts, duration: Duration) -> Result<()> {
    if opts.nodes < 3 {
        bail!("the demo needs at least 3 nodes");
    }
    let lab = Lab::from(opts);
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!(
        "vxtrace demo: building a {}-node VXLAN lab ({})",
        lab.nodes, lab.name
    );
    lab.up()?;
    let result = demo_inner(&lab, duration);
    eprintln!("vxtrace demo: removing the lab");
    down(&lab.name)?;
    result
}

fn demo_inner(lab: &Lab, duration: Duration) -> Result<()> {
    let exe = std::env::current_exe()?;
    let mut watcher = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(1)])
        .arg(&exe)
        // The lab's nodes share one kernel: count node 1's own drops only.
        .args(["watch", "--netns", "self", "--duration"])
        .arg(humantime::format_duration(duration).to_string())
        .spawn()
        .context("starting vxtrace watch in node 1")?;
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    let traffic_until = duration.saturating_sub(Duration::from_secs(2));
    let running = || start.elapsed() < traffic_until && !STOP.load(Ordering::SeqCst);
    let route = format!("{}/{}", lab.underlay_ip(1), if lab.ipv6 { 128 } else { 32 });
    std::thread::scope(|s| {
        // Steady flows, each paced on its own so a timeout stalls no other.
        s.spawn(|| {
            while running() {
                let _ = lab.ping(1, 2, 10, Duration::from_millis(10));
            }
        });
        s.spawn(|| {
            while running() {
                let _ = lab.udp(1, 3, 5, 1200);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        s.spawn(|| {
            while running() {
                let _ = lab.ping(1, 3, 1, Duration::from_millis(100));
            }
        });
        // Incident 2 in miniature: for a while node 3's packets to node 1
        // vanish on the way, so node 1 keeps sending and hears nothing back.
        s.spawn(|| {
            let mut blackholed = false;
            while running() {
                let t = start.elapsed().as_secs_f64() / duration.as_secs_f64();
                let want = (0.35..0.75).contains(&t);
                if want != blackholed {
                    let verb = if want { "add" } else { "del" };
                    let _ = ipn(&lab.node_ns(3), &["route", verb, "blackhole", &route]);
                    blackholed = want;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if blackholed {
                let _ = ipn(&lab.node_ns(3), &["route", "del", "blackhole", &route]);
            }
        });
    });
    if STOP.load(Ordering::SeqCst) {
        unsafe { libc::kill(watcher.id() as i32, libc::SIGTERM) };
    }
    let status = watcher.wait()?;
    if !status.success() {
        bail!("vxtrace watch exited with {status}");
    }
    Ok(())
}
