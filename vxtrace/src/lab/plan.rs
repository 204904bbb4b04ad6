//! The address plan: which namespaces, addresses, MACs, subnets and
//! device names node N of a lab gets, all functions of [`Lab`]'s fields.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::LabOpts;

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
    pub(super) fn underlay_prefix(&self) -> u8 {
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
    pub(super) fn vxlan_mtu(ipv6: bool) -> u32 {
        if ipv6 { 1430 } else { 1450 }
    }
    /// The pods' MTU: that of the device(s) they are routed through.
    pub(super) fn pod_mtu(&self) -> String {
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
}
