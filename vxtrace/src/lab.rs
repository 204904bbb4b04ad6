//! `vxtrace lab`: a VXLAN overlay built from network namespaces on this
//! machine, in one of three layouts, with a traffic generator.
//!
//! Per node N (1-based): a node namespace `<name>-nN` with an underlay veth
//! `eth0` into a shared bridge namespace `<name>-br`, a VXLAN device with
//! routes and PERMANENT neighbour entries for every other node, and a pod
//! namespace `<name>-pN`. Underlay addresses come from the documentation
//! ranges (192.0.2.0/24, 2001:db8:1::/64) and exist only inside the lab's
//! namespaces. The layouts ([`Layout`]):
//!
//! - **flannel**: `flannel.1` (VNI 1, port 8472, nolearning) with
//!   `10.244.M.0/24 via 10.244.M.0 dev flannel.1 onlink` routes and
//!   `bridge fdb append` entries, the pod behind a `cni0` bridge. With
//!   `dual_stack`, also `flannel-v6.1` (IPv6 underlay, same VNI and port)
//!   with `fd00:10:244:M::/64 via fd00:10:244:M:: dev flannel-v6.1 onlink`,
//!   and every pod has an IPv4 and an IPv6 address.
//! - **calico**: `vxlan.calico` (VNI 4096, port 4789), a /26 block per
//!   node whose first address is the tunnel address, `10.244.M.64/26 via
//!   10.244.M.64 dev vxlan.calico onlink`, FDB entries as Calico programs
//!   them, and the pod on a `cali` veth with a /32 address and the
//!   169.254.1.1 gateway.
//! - **metadata**: an `external` (collect_metadata) device, as Cilium and
//!   OVS use, with no FDB: each route carries the remote and the VNI
//!   (`10.244.M.0/24 encap ip id VNI dst REMOTE via 10.244.M.0 dev vxm
//!   onlink`); the pod behind `cni0`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::netns;

/// How the lab's overlay is built (see the module documentation).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// flannel's VXLAN backend: `flannel.1`, VNI 1, port 8472, a /24 per node.
    #[default]
    Flannel,
    /// Calico's VXLAN: `vxlan.calico`, VNI 4096, port 4789, /26 blocks.
    Calico,
    /// A metadata (`external`) device with lightweight-tunnel routes.
    Metadata,
}

impl Layout {
    pub fn default_port(self) -> u16 {
        match self {
            Layout::Calico => 4789,
            Layout::Flannel | Layout::Metadata => 8472,
        }
    }
    pub fn default_vni(self) -> u32 {
        match self {
            Layout::Calico => 4096,
            Layout::Flannel | Layout::Metadata => 1,
        }
    }
    pub fn default_dev(self) -> &'static str {
        match self {
            Layout::Flannel => "flannel.1",
            Layout::Calico => "vxlan.calico",
            Layout::Metadata => "vxm",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Flannel => "flannel",
            Layout::Calico => "calico",
            Layout::Metadata => "metadata",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct LabOpts {
    /// Prefix of the lab's namespaces.
    #[arg(long, default_value = "vxlab")]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=50))]
    pub nodes: u8,
    /// The overlay's layout.
    #[arg(long, value_enum, default_value_t = Layout::Flannel)]
    pub layout: Layout,
    /// Short for `--layout calico`.
    #[arg(long, conflicts_with_all = ["layout", "metadata"])]
    pub calico: bool,
    /// Short for `--layout metadata`.
    #[arg(long, conflicts_with = "layout")]
    pub metadata: bool,
    /// IPv6 underlay instead of IPv4.
    #[arg(long)]
    pub ipv6_underlay: bool,
    /// flannel's dual-stack: `flannel.1` over IPv4 and `flannel-v6.1` over
    /// IPv6 side by side, pods with an IPv4 and an IPv6 address.
    #[arg(long, conflicts_with_all = ["ipv6_underlay", "calico", "metadata"])]
    pub dual_stack: bool,
    /// VXLAN UDP port [default: the layout's: 8472, Calico 4789].
    #[arg(long)]
    pub port: Option<u16>,
    /// VNI [default: the layout's: 1, Calico 4096].
    #[arg(long)]
    pub vni: Option<u32>,
    /// Name of the VXLAN device in each node [default: flannel.1,
    /// vxlan.calico, vxm].
    #[arg(long)]
    pub dev: Option<String>,
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
    /// ICMPv6 echo requests to send, to the pod's IPv6 address (dual-stack).
    #[arg(long, default_value_t = 0)]
    pub icmp6: u32,
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
            let mut pods: Vec<String> = Vec::new();
            for i in 1..=lab.nodes {
                let mut p = format!("{}={}", lab.pod_ns(i), lab.pod_ip(i));
                if lab.dual_stack {
                    p.push_str(&format!(",{}", lab.pod_ip6(i)));
                }
                pods.push(p);
            }
            println!(
                "lab {} up: {} nodes, {} layout, {} underlay, device {}{}, port {}, VNI {}; pods {}",
                lab.name,
                lab.nodes,
                lab.layout.as_str(),
                if lab.dual_stack {
                    "IPv4 + IPv6"
                } else if lab.ipv6 {
                    "IPv6"
                } else {
                    "IPv4"
                },
                lab.dev,
                if lab.dual_stack {
                    format!(" + {}", lab.dev6())
                } else {
                    String::new()
                },
                lab.port,
                lab.vni,
                pods.join(" ")
            );
            Ok(())
        }
        LabCommand::Down { name } => down(&name),
        LabCommand::Traffic(t) => {
            let lab = Lab::named(&t.name);
            let (v4, v6) = pod_addrs(&lab.pod_ns(t.to))?;
            if t.icmp > 0 {
                let Some(dst) = v4 else {
                    bail!("pod {} has no IPv4 address", lab.pod_ns(t.to));
                };
                let replies = ping_from(&lab.pod_ns(t.from), dst, t.icmp, Duration::ZERO)?;
                println!("icmp sent={} replies={replies}", t.icmp);
            }
            if t.icmp6 > 0 {
                let Some(dst) = v6 else {
                    bail!(
                        "pod {} has no IPv6 address (build the lab with --dual-stack)",
                        lab.pod_ns(t.to)
                    );
                };
                let replies = ping6_from(&lab.pod_ns(t.from), dst, t.icmp6, Duration::ZERO)?;
                println!("icmp6 sent={} replies={replies}", t.icmp6);
            }
            if t.udp > 0 {
                let Some(dst) = v4 else {
                    bail!("pod {} has no IPv4 address", lab.pod_ns(t.to));
                };
                let got = udp_between(&lab.pod_ns(t.from), &lab.pod_ns(t.to), dst, t.udp, t.size)?;
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
    /// IPv6 underlay (the one device's; with `dual_stack`, false: the IPv6
    /// device comes on top).
    pub ipv6: bool,
    pub port: u16,
    pub vni: u32,
    pub dev: String,
    pub layout: Layout,
    /// flannel's dual-stack: a second device, `flannel-v6.<vni>`.
    pub dual_stack: bool,
}

impl From<&LabOpts> for Lab {
    fn from(o: &LabOpts) -> Self {
        let layout = if o.calico {
            Layout::Calico
        } else if o.metadata {
            Layout::Metadata
        } else {
            o.layout
        };
        Self {
            name: o.name.clone(),
            nodes: o.nodes,
            ipv6: o.ipv6_underlay,
            port: o.port.unwrap_or(layout.default_port()),
            vni: o.vni.unwrap_or(layout.default_vni()),
            dev: o
                .dev
                .clone()
                .unwrap_or_else(|| layout.default_dev().to_string()),
            layout,
            dual_stack: o.dual_stack && layout == Layout::Flannel,
        }
    }
}

impl Lab {
    /// A lab of `layout` with its defaults (IPv4 underlay, single stack).
    pub fn new(name: &str, nodes: u8, layout: Layout) -> Self {
        Self {
            name: name.to_string(),
            nodes,
            ipv6: false,
            port: layout.default_port(),
            vni: layout.default_vni(),
            dev: layout.default_dev().to_string(),
            layout,
            dual_stack: false,
        }
    }

    /// A lab handle for commands that only need names.
    pub fn named(name: &str) -> Self {
        Self::new(name, 0, Layout::Flannel)
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
    /// Node i's underlay address (of the one VXLAN device; with
    /// `dual_stack`, the IPv4 one).
    pub fn underlay_ip(&self, i: u8) -> IpAddr {
        if self.ipv6 {
            IpAddr::V6(self.underlay_v6(i))
        } else {
            IpAddr::V4(self.underlay_v4(i))
        }
    }
    pub fn underlay_v4(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 10 + i)
    }
    pub fn underlay_v6(&self, i: u8) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10 + i as u16)
    }
    fn underlay_prefix(&self) -> u8 {
        if self.ipv6 { 64 } else { 24 }
    }
    pub fn vtep_mac(&self, i: u8) -> String {
        match self.layout {
            Layout::Flannel => format!("0e:76:78:00:00:{i:02x}"),
            Layout::Calico => format!("66:63:61:00:00:{i:02x}"),
            Layout::Metadata => format!("0e:6d:64:00:00:{i:02x}"),
        }
    }
    /// MAC of node i's `flannel-v6.1` (dual-stack).
    pub fn vtep_mac6(&self, i: u8) -> String {
        format!("0e:76:36:00:00:{i:02x}")
    }
    /// Node i's VXLAN device address: flannel's x.x.x.0, or Calico's tunnel
    /// address, the first of the node's block.
    pub fn vtep_ip(&self, i: u8) -> Ipv4Addr {
        let (net, _) = self.pod_subnet(i);
        net
    }
    /// Node i's pod network: flannel's /24, or Calico's /26 block.
    pub fn pod_subnet(&self, i: u8) -> (Ipv4Addr, u8) {
        match self.layout {
            Layout::Calico => (Ipv4Addr::new(10, 244, i - 1, 64), 26),
            Layout::Flannel | Layout::Metadata => (Ipv4Addr::new(10, 244, i - 1, 0), 24),
        }
    }
    /// Node i's pod network as text (`10.244.0.0/24`).
    pub fn pod_cidr(&self, i: u8) -> String {
        let (net, len) = self.pod_subnet(i);
        format!("{net}/{len}")
    }
    /// Node i's pod: the first address after the VTEP's (`.2` behind
    /// flannel's `cni0` at `.1`; Calico's first pod address after the
    /// tunnel address).
    pub fn pod_ip(&self, i: u8) -> Ipv4Addr {
        let (net, _) = self.pod_subnet(i);
        let [a, b, c, d] = net.octets();
        match self.layout {
            Layout::Calico => Ipv4Addr::new(a, b, c, d + 1),
            Layout::Flannel | Layout::Metadata => Ipv4Addr::new(a, b, c, d + 2),
        }
    }
    /// Node i's IPv6 pod network (dual-stack): `fd00:10:244:N::/64`.
    pub fn pod_subnet6(&self, i: u8) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x244, (i - 1) as u16, 0, 0, 0, 0)
    }
    /// Node i's `flannel-v6.1` address (the subnet's first, as flannel assigns).
    pub fn vtep_ip6(&self, i: u8) -> Ipv6Addr {
        self.pod_subnet6(i)
    }
    /// Node i's pod's IPv6 address (dual-stack).
    pub fn pod_ip6(&self, i: u8) -> Ipv6Addr {
        let s = self.pod_subnet6(i).segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 2)
    }
    /// The IPv6 VXLAN device of a dual-stack node, as flannel names it.
    pub fn dev6(&self) -> String {
        format!("flannel-v6.{}", self.vni)
    }
    /// MTU of a VXLAN device over an IPv4 (50 bytes of headers) or IPv6
    /// (70) underlay of MTU 1500.
    fn vxlan_mtu(ipv6: bool) -> u32 {
        if ipv6 { 1430 } else { 1450 }
    }
    /// The pods' MTU: that of the device(s) they are routed through.
    fn pod_mtu(&self) -> String {
        Self::vxlan_mtu(self.ipv6 || self.dual_stack).to_string()
    }

    /// The MAC of node i's underlay device (`eth0`).
    pub fn underlay_mac(&self, i: u8) -> Result<String> {
        let out = Command::new("ip")
            .args(["-n", &self.node_ns(i), "-o", "link", "show", "eth0"])
            .output()
            .context("running ip link")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .map(str::to_string)
            .with_context(|| format!("no MAC in `ip link show eth0` of {}", self.node_ns(i)))
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
        if self.dual_stack && (self.layout != Layout::Flannel || self.ipv6) {
            bail!("dual-stack is flannel's layout over an IPv4 and an IPv6 underlay");
        }
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
                    if self.dual_stack {
                        self.connect6(i, j)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn build_node(&self, i: u8) -> Result<()> {
        let (br, node, pod) = (self.bridge_ns(), self.node_ns(i), self.pod_ns(i));
        ip(&["netns", "add", &node])?;
        ip(&["netns", "add", &pod])?;
        if self.dual_stack {
            // Nothing else in a lab's namespace could hold its addresses:
            // skip duplicate address detection, which keeps a new link-local
            // address tentative for a second, and with it the neighbour
            // solicitations (and the first IPv6 packets) of the node.
            for ns in [&node, &pod] {
                netns::run_in(ns, || {
                    for conf in ["all", "default"] {
                        std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/accept_dad"), "0")
                            .context("turning off IPv6 duplicate address detection")?;
                    }
                    Ok(())
                })?;
            }
        }
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
        if self.ipv6 {
            let ul = format!("{}/{}", self.underlay_ip(i), self.underlay_prefix());
            ipn(&node, &["addr", "add", &ul, "dev", "eth0", "nodad"])?;
        } else {
            let ul = format!("{}/{}", self.underlay_ip(i), self.underlay_prefix());
            ipn(&node, &["addr", "add", &ul, "dev", "eth0"])?;
        }
        if self.dual_stack {
            let ul6 = format!("{}/64", self.underlay_v6(i));
            ipn(&node, &["addr", "add", &ul6, "dev", "eth0", "nodad"])?;
        }
        self.add_vxlan(i)?;
        if self.dual_stack {
            self.add_vxlan6(i)?;
        }
        match self.layout {
            Layout::Calico => self.add_calico_pod(i)?,
            Layout::Flannel | Layout::Metadata => self.add_bridged_pod(i)?,
        }
        let v6 = self.dual_stack;
        netns::run_in(&node, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling ip_forward")?;
            if v6 {
                std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
                    .context("enabling IPv6 forwarding")?;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The pod behind `cni0`, as flannel's bridge CNI plugs it.
    fn add_bridged_pod(&self, i: u8) -> Result<()> {
        let (node, pod) = (self.node_ns(i), self.pod_ns(i));
        let mtu = self.pod_mtu();
        let (net, len) = self.pod_subnet(i);
        let [a, b, c, d] = net.octets();
        let gw = Ipv4Addr::new(a, b, c, d + 1);
        ipn(&node, &["link", "add", "cni0", "type", "bridge"])?;
        ipn(
            &node,
            &["addr", "add", &format!("{gw}/{len}"), "dev", "cni0"],
        )?;
        ipn(&node, &["link", "set", "cni0", "mtu", &mtu, "up"])?;
        ipn(
            &node,
            &[
                "link", "add", "veth0", "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
                "netns", &pod,
            ],
        )?;
        ipn(&node, &["link", "set", "veth0", "master", "cni0", "up"])?;
        ipn(&pod, &["link", "set", "lo", "up"])?;
        ipn(&pod, &["link", "set", "eth0", "mtu", &mtu, "up"])?;
        let addr = format!("{}/{len}", self.pod_ip(i));
        ipn(&pod, &["addr", "add", &addr, "dev", "eth0"])?;
        ipn(&pod, &["route", "add", "default", "via", &gw.to_string()])?;
        if self.dual_stack {
            let s = self.pod_subnet6(i).segments();
            let gw6 = Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1);
            let gw6_cidr = format!("{gw6}/64");
            ipn(&node, &["addr", "add", &gw6_cidr, "dev", "cni0", "nodad"])?;
            let pod6 = format!("{}/64", self.pod_ip6(i));
            ipn(&pod, &["addr", "add", &pod6, "dev", "eth0", "nodad"])?;
            ipn(
                &pod,
                &["-6", "route", "add", "default", "via", &gw6.to_string()],
            )?;
        }
        Ok(())
    }

    /// The pod as Calico's CNI plugs it: a /32 address, a default route
    /// via 169.254.1.1, and on the node a `cali` veth with the MAC
    /// ee:ee:ee:ee:ee:ee, proxy ARP, and a /32 route to the pod. Calico's
    /// nodes answer the pod's ARP for 169.254.1.1 by proxy ARP, which needs
    /// a route to that address on the node (its default route); the lab's
    /// nodes have none, so the pod gets the answer as a permanent entry.
    fn add_calico_pod(&self, i: u8) -> Result<()> {
        let (node, pod) = (self.node_ns(i), self.pod_ns(i));
        let mtu = self.pod_mtu();
        let host_veth = "cali0";
        let host_mac = "ee:ee:ee:ee:ee:ee";
        ipn(
            &node,
            &[
                "link", "add", host_veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0",
                "netns", &pod,
            ],
        )?;
        ipn(
            &node,
            &["link", "set", host_veth, "address", host_mac, "up"],
        )?;
        netns::run_in(&node, || {
            std::fs::write(
                format!("/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp"),
                "1",
            )
            .context("enabling proxy ARP")?;
            std::fs::write(
                format!("/proc/sys/net/ipv4/neigh/{host_veth}/proxy_delay"),
                "0",
            )
            .context("setting the proxy ARP delay")
        })?;
        let pod_ip = self.pod_ip(i).to_string();
        ipn(
            &node,
            &[
                "route",
                "add",
                &format!("{pod_ip}/32"),
                "dev",
                host_veth,
                "scope",
                "link",
            ],
        )?;
        // Calico's route for the node's own block: what is not a pod here
        // goes nowhere.
        ipn(&node, &["route", "add", "blackhole", &self.pod_cidr(i)])?;
        ipn(&pod, &["link", "set", "lo", "up"])?;
        ipn(&pod, &["link", "set", "eth0", "mtu", &mtu, "up"])?;
        ipn(
            &pod,
            &["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"],
        )?;
        let gw = "169.254.1.1";
        ipn(&pod, &["route", "add", gw, "dev", "eth0", "scope", "link"])?;
        ipn(&pod, &["route", "add", "default", "via", gw, "dev", "eth0"])?;
        ipn(
            &pod,
            &[
                "neigh",
                "add",
                gw,
                "lladdr",
                host_mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ],
        )
    }

    /// Node i's VXLAN device, as the layout's agent creates it (address,
    /// MAC, MTU).
    fn add_vxlan(&self, i: u8) -> Result<()> {
        let node = self.node_ns(i);
        let local = self.underlay_ip(i).to_string();
        let vni = self.vni.to_string();
        let port_s = self.port.to_string();
        match self.layout {
            Layout::Flannel | Layout::Calico => ipn(
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
            )?,
            // No VNI, no local address, no underlay device: each route
            // says where and with which VNI (Cilium creates its
            // `cilium_vxlan` like this).
            Layout::Metadata => ipn(
                &node,
                &[
                    "link", "add", &self.dev, "type", "vxlan", "dstport", &port_s, "external",
                ],
            )?,
        }
        let mtu = Self::vxlan_mtu(self.ipv6).to_string();
        ipn(
            &node,
            &[
                "link",
                "set",
                &self.dev,
                "address",
                &self.vtep_mac(i),
                "mtu",
                &mtu,
            ],
        )?;
        let addr = format!("{}/32", self.vtep_ip(i));
        ipn(&node, &["addr", "add", &addr, "dev", &self.dev])?;
        ipn(&node, &["link", "set", &self.dev, "up"])
    }

    /// Node i's `flannel-v6.1` (dual-stack): IPv6 underlay, the same VNI
    /// and port as `flannel.1`.
    fn add_vxlan6(&self, i: u8) -> Result<()> {
        let node = self.node_ns(i);
        let dev = self.dev6();
        let local = self.underlay_v6(i).to_string();
        let (vni, port) = (self.vni.to_string(), self.port.to_string());
        ipn(
            &node,
            &[
                "link",
                "add",
                &dev,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dev",
                "eth0",
                "dstport",
                &port,
                "nolearning",
            ],
        )?;
        let mtu = Self::vxlan_mtu(true).to_string();
        ipn(
            &node,
            &[
                "link",
                "set",
                &dev,
                "address",
                &self.vtep_mac6(i),
                "mtu",
                &mtu,
            ],
        )?;
        let addr = format!("{}/128", self.vtep_ip6(i));
        ipn(&node, &["addr", "add", &addr, "dev", &dev, "nodad"])?;
        ipn(&node, &["link", "set", &dev, "up"])
    }

    /// Deletes node i's VXLAN device and creates it again with its routes,
    /// neighbours and FDB entries: what a flannel DaemonSet restart does.
    pub fn recreate_vxlan(&self, i: u8) -> Result<()> {
        self.remove_vxlan(i)?;
        self.restore_vxlan(i)
    }

    /// Deletes node i's VXLAN device (its routes, neighbours and FDB
    /// entries go with it).
    pub fn remove_vxlan(&self, i: u8) -> Result<()> {
        ipn(&self.node_ns(i), &["link", "del", &self.dev])
    }

    /// Creates node i's VXLAN device with its routes, neighbours and FDB
    /// entries, as the layout's agent does when it starts.
    pub fn restore_vxlan(&self, i: u8) -> Result<()> {
        self.add_vxlan(i)?;
        for j in 1..=self.nodes {
            if j != i {
                self.connect(i, j)?;
            }
        }
        Ok(())
    }

    /// Node i learns how to reach node j, exactly as the layout's agent
    /// programs it.
    fn connect(&self, i: u8, j: u8) -> Result<()> {
        let node = self.node_ns(i);
        let vtep = self.vtep_ip(j).to_string();
        let subnet = self.pod_cidr(j);
        let remote = self.underlay_ip(j).to_string();
        match self.layout {
            Layout::Flannel | Layout::Calico => ipn(
                &node,
                &[
                    "route", "add", &subnet, "via", &vtep, "dev", &self.dev, "onlink",
                ],
            )?,
            Layout::Metadata => {
                let vni = self.vni.to_string();
                let mut args = vec!["route", "add", &subnet, "encap"];
                if self.ipv6 {
                    // With a checksum: receivers refuse zero UDP checksums
                    // over IPv6 (the device's default noudp6zerocsumrx).
                    args.extend(["ip6", "id", &vni, "dst", &remote, "csum"]);
                } else {
                    args.extend(["ip", "id", &vni, "dst", &remote]);
                }
                args.extend(["via", &vtep, "dev", &self.dev, "onlink"]);
                ipn(&node, &args)?
            }
        }
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
        let mac = self.vtep_mac(j);
        match self.layout {
            Layout::Flannel => run_cmd(
                "bridge",
                &[
                    "-n", &node, "fdb", "append", &mac, "dev", &self.dev, "dst", &remote,
                ],
            ),
            // Calico sets its entries (replacing what was there) as permanent.
            Layout::Calico => run_cmd(
                "bridge",
                &[
                    "-n",
                    &node,
                    "fdb",
                    "replace",
                    &mac,
                    "dev",
                    &self.dev,
                    "dst",
                    &remote,
                    "self",
                    "permanent",
                ],
            ),
            Layout::Metadata => Ok(()),
        }
    }

    /// Node i's IPv6 route, neighbour and FDB entry for node j on
    /// `flannel-v6.1` (dual-stack).
    fn connect6(&self, i: u8, j: u8) -> Result<()> {
        let node = self.node_ns(i);
        let dev = self.dev6();
        let vtep = self.vtep_ip6(j).to_string();
        let subnet = format!("{}/64", self.pod_subnet6(j));
        ipn(
            &node,
            &[
                "-6", "route", "add", &subnet, "via", &vtep, "dev", &dev, "onlink",
            ],
        )?;
        ipn(
            &node,
            &[
                "-6",
                "neigh",
                "add",
                &vtep,
                "lladdr",
                &self.vtep_mac6(j),
                "dev",
                &dev,
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
                &self.vtep_mac6(j),
                "dev",
                &dev,
                "dst",
                &self.underlay_v6(j).to_string(),
            ],
        )
    }

    /// ICMP echoes from pod `from` to pod `to`, one at a time; returns the
    /// number of replies.
    pub fn ping(&self, from: u8, to: u8, count: u32, gap: Duration) -> Result<u32> {
        ping_from(&self.pod_ns(from), self.pod_ip(to), count, gap)
    }

    /// ICMPv6 echoes from pod `from` to pod `to`'s IPv6 address
    /// (dual-stack), one at a time; returns the number of replies.
    pub fn ping6(&self, from: u8, to: u8, count: u32, gap: Duration) -> Result<u32> {
        ping6_from(&self.pod_ns(from), self.pod_ip6(to), count, gap)
    }

    /// UDP datagrams from pod `from` to a receiver in pod `to`; returns how
    /// many arrived. The receiver exists so no ICMP errors come back.
    pub fn udp(&self, from: u8, to: u8, count: u32, size: usize) -> Result<u32> {
        udp_between(
            &self.pod_ns(from),
            &self.pod_ns(to),
            self.pod_ip(to),
            count,
            size,
        )
    }
}

/// The global IPv4 and IPv6 address of a pod's `eth0`.
fn pod_addrs(ns: &str) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let out = Command::new("ip")
        .args([
            "-n", ns, "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ])
        .output()
        .context("running ip addr")?;
    if !out.status.success() {
        bail!(
            "no pod namespace {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (mut v4, mut v6) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                let addr = words.next().and_then(|a| a.split('/').next());
                match addr.and_then(|a| a.parse::<IpAddr>().ok()) {
                    Some(IpAddr::V4(a)) => v4 = v4.or(Some(a)),
                    Some(IpAddr::V6(a)) => v6 = v6.or(Some(a)),
                    None => {}
                }
            }
        }
    }
    Ok((v4, v6))
}

/// UDP datagrams from namespace `from_ns` to a receiver on `dst` in
/// `to_ns`; returns how many arrived.
fn udp_between(from_ns: &str, to_ns: &str, dst: Ipv4Addr, count: u32, size: usize) -> Result<u32> {
    let dst = SocketAddr::new(IpAddr::V4(dst), 5555);
    let receiver = netns::run_in(to_ns, || {
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
    netns::run_in(from_ns, || {
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

/// ICMP echoes to `dst` from network namespace `ns`, one at a time;
/// returns the number of replies.
pub fn ping_from(ns: &str, dst: Ipv4Addr, count: u32, gap: Duration) -> Result<u32> {
    netns::run_in(ns, || ping(IpAddr::V4(dst), count, gap))
}

/// ICMPv6 echoes to `dst` from network namespace `ns`, one at a time;
/// returns the number of replies.
pub fn ping6_from(ns: &str, dst: Ipv6Addr, count: u32, gap: Duration) -> Result<u32> {
    netns::run_in(ns, || ping(IpAddr::V6(dst), count, gap))
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

/// What an echo exchange of one address family uses: the raw socket's
/// family and protocol, the request and reply types, and a tag that keeps
/// IPv4 and IPv6 runs of one process apart.
struct Echo {
    domain: libc::c_int,
    protocol: libc::c_int,
    what: &'static str,
    request: u8,
    reply: u8,
    tag: u16,
}

impl Echo {
    fn of(dst: IpAddr) -> Self {
        match dst {
            IpAddr::V4(_) => Self {
                domain: libc::AF_INET,
                protocol: libc::IPPROTO_ICMP,
                what: "ICMP",
                request: 8,
                reply: 0,
                tag: 0x5678,
            },
            IpAddr::V6(_) => Self {
                domain: libc::AF_INET6,
                protocol: libc::IPPROTO_ICMPV6,
                what: "ICMPv6",
                request: 128,
                reply: 129,
                tag: 0x6789,
            },
        }
    }

    /// Echo request `seq` with 56 bytes of data; IPv4 needs our checksum
    /// (ICMPv6's the kernel fills in).
    fn request(&self, dst: IpAddr, ident: u16, seq: u16) -> [u8; 64] {
        let mut pkt = [0u8; 64];
        pkt[0] = self.request;
        pkt[4..6].copy_from_slice(&ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        for (k, b) in pkt[8..].iter_mut().enumerate() {
            *b = k as u8;
        }
        if dst.is_ipv4() {
            let ck = icmp_checksum(&pkt);
            pkt[2..4].copy_from_slice(&ck.to_be_bytes());
        }
        pkt
    }

    /// Waits up to 1 s for the reply to `seq` on `fd`. IPv4 raw sockets
    /// hand back the IP header; ICMPv6 ones do not.
    fn await_reply(&self, fd: libc::c_int, dst: IpAddr, ident: u16, seq: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            let header = if dst.is_ipv4() {
                ((buf[0] & 0x0f) as usize) * 4
            } else {
                0
            };
            if n < header + 8 {
                continue;
            }
            let icmp = &buf[header..n];
            if icmp[0] == self.reply
                && u16::from_be_bytes([icmp[4], icmp[5]]) == ident
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
            {
                return true;
            }
        }
        false
    }
}

/// `dst` as a socket address, and its length.
fn socket_addr(dst: IpAddr) -> (libc::sockaddr_storage, usize) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage, large enough for
    // either family's address, which is written through its own type.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger and more aligned than
            // sockaddr_in; nothing else borrows `addr` meanwhile.
            let sin = unsafe { &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (addr, len)
}

/// Sends `count` echo requests (56 bytes of data, like `ping`) to `dst`
/// from the current namespace on a raw ICMP or ICMPv6 socket, each waiting
/// up to 1 s for its reply. Returns the replies received.
fn ping(dst: IpAddr, count: u32, gap: Duration) -> Result<u32> {
    let echo = Echo::of(dst);
    // SAFETY: plain socket syscalls on a descriptor we own.
    let fd = unsafe { libc::socket(echo.domain, libc::SOCK_RAW, echo.protocol) };
    if fd < 0 {
        bail!(
            "opening a raw {} socket: {}",
            echo.what,
            std::io::Error::last_os_error()
        );
    }
    let ident = (std::process::id() as u16) ^ echo.tag;
    let (addr, addr_len) = socket_addr(dst);
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a valid descriptor and a timeval of the size given.
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
        let pkt = echo.request(dst, ident, seq);
        // SAFETY: the buffer and address outlive the call; sizes match.
        let sent = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                addr_len as u32,
            )
        };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: our descriptor, closed once.
            unsafe { libc::close(fd) };
            bail!("sending {} echo to {dst}: {e}", echo.what);
        }
        if echo.await_reply(fd, dst, ident, seq) {
            replies += 1;
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    // SAFETY: our descriptor, closed once.
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
