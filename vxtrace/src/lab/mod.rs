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
//!
//! The code: `plan` is the address plan (every namespace, address, MAC
//! and device name of a node), `build` creates and removes the lab,
//! `traffic` sends pings and UDP between pods, and `demo` runs the
//! built-in demo; this file is the `vxtrace lab` command line.

mod build;
mod demo;
mod plan;
mod traffic;

use std::time::Duration;

use anyhow::{Result, bail};

pub use build::down;
pub use plan::{Lab, Layout};
pub use traffic::{ping_from, ping6_from};

use demo::demo;
use traffic::{pod_addrs, udp_between};

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
