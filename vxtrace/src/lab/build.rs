//! Building and tearing down a lab: namespaces, veths, bridges, the VXLAN
//! devices, and the routes, neighbour and FDB entries each layout's agent
//! programs; and the `ip` / `bridge` commands that do it.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::{Lab, Layout};
use crate::netns;

impl Lab {
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
            Layout::Flannel | Layout::Calico => {
                add_vxlan_link(&node, &self.dev, &vni, &local, &port_s)?
            }
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
        set_mac_mtu(&node, &self.dev, &self.vtep_mac(i), &mtu)?;
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
        add_vxlan_link(&node, &dev, &vni, &local, &port)?;
        let mtu = Self::vxlan_mtu(true).to_string();
        set_mac_mtu(&node, &dev, &self.vtep_mac6(i), &mtu)?;
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
}

/// A VXLAN device `dev` in namespace `node` with its own VNI, local
/// address and underlay device (`eth0`), learning off: as flannel and
/// Calico create theirs.
fn add_vxlan_link(node: &str, dev: &str, vni: &str, local: &str, port: &str) -> Result<()> {
    ipn(
        node,
        &[
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            vni,
            "local",
            local,
            "dev",
            "eth0",
            "dstport",
            port,
            "nolearning",
        ],
    )
}

/// Sets device `dev`'s MAC and MTU in namespace `node`.
fn set_mac_mtu(node: &str, dev: &str, mac: &str, mtu: &str) -> Result<()> {
    ipn(node, &["link", "set", dev, "address", mac, "mtu", mtu])
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

pub(super) fn ipn(ns: &str, args: &[&str]) -> Result<()> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run_cmd("ip", &full)
}
