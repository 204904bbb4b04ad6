//! A BGP EVPN fabric in network namespaces, with FRR as its control plane:
//! bridged VXLAN devices whose FDB nobody programs by hand.
//!
//! ```text
//!                          spine                route reflector, lo 198.18.0.254
//!               198.18.N.0/31 |  (one /31 per leaf)
//!            +----------------+----------------+
//!     uplink 198.18.1.1   198.18.2.1       198.18.3.1
//!          leaf1            leaf2            leaf3       VTEP 198.18.0.N/32 on lo
//!     br100 + vxlan100  br100 + vxlan100  br100 + vxlan100
//!            |            |       |          |
//!           h11          h21     h22        h31          192.0.2.LK/24
//! ```
//!
//! Namespaces: `<name>-spine`, `<name>-leaf1` … `<name>-leaf3`, and one
//! per host, `<name>-h11`, `<name>-h21`, `<name>-h22`, `<name>-h31` (host
//! `hLK` starts as leaf L's K-th host and keeps its name when it moves).
//! Give each lab a name of its own starting with `evpn`.
//!
//! Address plan (documentation and benchmarking ranges only, inside the
//! lab's namespaces):
//!
//! | what | address |
//! |---|---|
//! | spine–leaf N link | 198.18.N.0/31 (spine, `leafN`) – 198.18.N.1/31 (leaf, `uplink`) |
//! | leaf N's VTEP | 198.18.0.N/32 on `lo`; the spine's router ID 198.18.0.254/32 on `lo` |
//! | underlay routes | static /32s: on each leaf one per other VTEP via the spine, on the spine one per VTEP |
//! | leaf N's gateway | 192.0.2.N/24 on `br100`, MAC `0e:65:76:00:00:0N` |
//! | host hLK | 192.0.2.LK/24 on `eth0`, MAC `0e:65:76:01:0L:0K`; PERMANENT neighbour entries for every other host, so no ARP crosses the fabric |
//!
//! Overlay: on each leaf `vxlan100` (VNI 100, dstport 4789, `local` the
//! VTEP, `nolearning`, MTU 1450) is a port of `br100` with learning off
//! (FRR programs it); each host's veth (MTU 1450) is a port named after
//! the host. IPv6 is off in every namespace: its neighbour discovery and
//! MLD would be flooded to every VTEP and blur exact counts.
//!
//! Control plane: iBGP, AS 65000, each leaf with the spine on the link
//! addresses, `address-family l2vpn evpn` only; the spine reflects its
//! clients' routes. Leaves `advertise-all-vni` (zebra installs remote MACs
//! as `extern_learn` and the flood list as `00:00:00:00:00:00 dst VTEP`) and
//! `advertise-default-gw` (the gateways' MACs arrive as `sticky static`).
//!
//! FRR: zebra then bgpd in each router's namespace,
//! `ip netns exec NS /usr/lib/frr/zebra -d -f DIR/zebra.conf -i DIR/zebra.pid
//! --vty_socket DIR -z DIR/zserv.api --log file:DIR/zebra.log` (bgpd alike,
//! on the same zserv socket), DIR being `/run/vxtrace-<name>/<router>`,
//! owned by the `frr` user the daemons run as. These paths stand in for
//! `-N NAME`'s `/etc/frr/NAME` and `/var/run/frr/NAME`, so each lab's files
//! are in one directory. `vtysh --vty_socket DIR` talks to them. Each daemon
//! is stopped by SIGTERM to the pid of its pid file (once /proc shows that
//! pid runs with this lab's directory), SIGKILL after 5 s; then the
//! namespaces and the directory go. [`EvpnLab::up`] first removes whatever
//! an earlier run of the same name left.

use std::{
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{parse_mac, run, sh};

/// The overlay's VNI.
pub const VNI: u32 = 100;
/// The VXLAN UDP port.
pub const PORT: u16 = 4789;
/// Each leaf's VXLAN device.
pub const VXLAN_DEV: &str = "vxlan100";
/// Each leaf's bridge (the hosts' segment).
pub const BRIDGE: &str = "br100";
/// Each leaf's link to the spine.
pub const UPLINK: &str = "uplink";
pub const LEAVES: u8 = 3;
/// MTU of the VXLAN devices and the hosts' links (1500 - 50).
pub const MTU: u32 = 1450;
/// The fabric's AS (iBGP).
pub const ASN: u32 = 65000;
/// A unicast MAC no host owns: frames to it are flooded as unknown unicast.
pub const UNKNOWN_MAC: &str = "0e:65:76:ee:ee:ee";
pub const BROADCAST_MAC: &str = "ff:ff:ff:ff:ff:ff";
/// EtherType of the frames the lab sends by hand (IEEE 802 local
/// experimental): no host answers them.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
/// Length of those frames: the Ethernet minimum (without FCS).
pub const TEST_FRAME_LEN: u64 = 60;

/// Hosts at the start: name, leaf, index on the leaf.
const HOSTS: [(&str, u8, u8); 4] = [("h11", 1, 1), ("h21", 2, 1), ("h22", 2, 2), ("h31", 3, 1)];

/// How long FRR may take to program what it should.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Leaf N's VTEP address (on its `lo`).
pub fn vtep(leaf: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, leaf)
}

/// The spine's router ID (on its `lo`).
pub fn spine_id() -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 254)
}

/// Leaf N's gateway address on `br100`.
pub fn gateway_ip(leaf: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, leaf)
}

/// Leaf N's `br100` MAC, which `advertise-default-gw` announces.
pub fn gateway_mac(leaf: u8) -> String {
    format!("0e:65:76:00:00:{leaf:02x}")
}

/// The spine's and leaf N's addresses on their link (the spine's is leaf N's next hop).
pub fn uplink_addrs(leaf: u8) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(198, 18, leaf, 0),
        Ipv4Addr::new(198, 18, leaf, 1),
    )
}

/// A host: its own namespace, one veth into a leaf's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// `h11`, `h21`, `h22`, `h31`.
    pub name: String,
    pub ns: String,
    /// The leaf whose bridge it is plugged into now.
    pub leaf: u8,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// The veth end in the leaf's bridge (named after the host).
    pub port: String,
}

/// One row of `bridge -j fdb show dev vxlan100`: the VXLAN device's own
/// entries carry `dst`; the bridge's entries for that port carry `master`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct FdbRow {
    pub mac: String,
    #[serde(default)]
    pub dst: Option<IpAddr>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub master: Option<String>,
}

impl FdbRow {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
    /// An entry of the VXLAN device itself (it names a remote).
    pub fn is_vxlan_entry(&self) -> bool {
        self.dst.is_some()
    }
    /// A flood-list entry (`00:00:00:00:00:00 dst VTEP`).
    pub fn is_flood(&self) -> bool {
        self.mac == "00:00:00:00:00:00"
    }
    /// Whether this VXLAN entry sends `mac` to `vtep`.
    pub fn sends(&self, mac: &str, vtep: Ipv4Addr) -> bool {
        self.mac == mac && self.dst == Some(IpAddr::V4(vtep))
    }
}

/// The lab; everything it made goes when it is dropped, pass or fail.
pub struct EvpnLab {
    pub name: String,
    /// `/run/vxtrace-<name>`: FRR's files, captures.
    dir: PathBuf,
    hosts: Vec<Host>,
}

impl EvpnLab {
    /// Builds the fabric, starts FRR, and waits (bounded) until every leaf's
    /// VXLAN device has every remote host's MAC, the other leaves'
    /// gateway MACs and its flood list. Panics (after tearing down) when
    /// it cannot.
    pub fn up(name: &str) -> Self {
        assert!(
            Path::new("/usr/lib/frr/zebra").exists() && Path::new("/usr/lib/frr/bgpd").exists(),
            "FRR is not installed (Debian's frr): run `cargo xtask setup`"
        );
        let lab = Self {
            name: name.to_string(),
            dir: PathBuf::from(format!("/run/vxtrace-{name}")),
            hosts: HOSTS
                .iter()
                .map(|&(h, leaf, k)| Host {
                    name: h.to_string(),
                    ns: format!("{name}-{h}"),
                    leaf,
                    ip: Ipv4Addr::new(192, 0, 2, 10 * leaf + k),
                    mac: format!("0e:65:76:01:{leaf:02x}:{k:02x}"),
                    port: h.to_string(),
                })
                .collect(),
        };
        lab.teardown();
        lab.build_underlay();
        for leaf in 1..=LEAVES {
            lab.build_leaf_overlay(leaf);
        }
        for h in &lab.hosts {
            lab.build_host(h);
        }
        lab.start_frr();
        for h in &lab.hosts {
            lab.announce(h);
        }
        lab.wait_converged();
        lab
    }

    pub fn spine_ns(&self) -> String {
        format!("{}-spine", self.name)
    }

    pub fn leaf_ns(&self, leaf: u8) -> String {
        format!("{}-leaf{leaf}", self.name)
    }

    /// The hosts, where they are now.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// A host by name (`h11`, `h21`, `h22`, `h31`).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the EVPN lab"))
    }

    /// ICMP echoes from host `from` to host `to`, one at a time (each waits
    /// up to 1 s for its reply); returns the replies. 84-byte IP packets.
    pub fn ping(&self, from: &str, to: &str, count: u32) -> u32 {
        let (from, to) = (self.host(from), self.host(to));
        vxtrace::lab::ping_from(&from.ns, to.ip, count, Duration::ZERO)
            .unwrap_or_else(|e| panic!("ping {} -> {}: {e:#}", from.name, to.name))
    }

    /// `count` frames of [`TEST_FRAME_LEN`] bytes from host `from` to
    /// `dst_mac` (EtherType [`TEST_ETHERTYPE`]), through a packet socket.
    pub fn send_frames(&self, from: &str, dst_mac: &str, count: u32) {
        let h = self.host(from);
        send_frames(&h.ns, parse_mac(&h.mac), parse_mac(dst_mac), count);
    }

    /// `count` frames to [`UNKNOWN_MAC`]: the bridge floods them as unknown
    /// unicast, the VXLAN device to every VTEP of its flood list.
    pub fn send_unknown_unicast(&self, from: &str, count: u32) {
        self.send_frames(from, UNKNOWN_MAC, count);
    }

    /// `count` broadcast frames (flooded like unknown unicast).
    pub fn send_broadcast(&self, from: &str, count: u32) {
        self.send_frames(from, BROADCAST_MAC, count);
    }

    /// Moves host `name` to leaf `to`: its port leaves its leaf's bridge
    /// (the bridge forgets its MAC and FRR withdraws it), moves to leaf
    /// `to`'s namespace and bridge, and the host sends until that bridge
    /// has learned its MAC (bounded), so FRR announces it from there with
    /// MAC mobility's sequence number (`MM:1` in `show bgp l2vpn evpn
    /// route`). Wait for the other leaves with [`Self::wait_remote_mac`].
    /// The new leaf's `vxlan100` may keep FRR's entry to the old leaf: its
    /// bridge, which sends the host's frames to the port, decides. FRR
    /// freezes a MAC that moves 5 times within 180 s (duplicate detection).
    pub fn move_host(&mut self, name: &str, to: u8) {
        let h = self.host(name).clone();
        assert_ne!(h.leaf, to, "{name} is on leaf{to} already");
        let (old, new) = (self.leaf_ns(h.leaf), self.leaf_ns(to));
        ip(&old, &format!("link set {} nomaster", h.port));
        ip(&old, &format!("link set {} netns {new}", h.port));
        ip(
            &new,
            &format!("link set {} master {BRIDGE} mtu {MTU} up", h.port),
        );
        let moved = self
            .hosts
            .iter_mut()
            .find(|x| x.name == name)
            .expect("the host exists");
        moved.leaf = to;
        let h = self.host(name).clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.announce(&h);
            let (_, out, _) =
                run(Command::new("bridge").args(["-n", &new, "fdb", "show", "dev", &h.port]));
            if out.lines().any(|l| l.starts_with(&h.mac)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "leaf{to}'s bridge did not learn {} ({}): {out}",
                h.name,
                h.mac
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Makes host `name`'s MAC static and sticky on its leaf's bridge (an
    /// EVPN static MAC): FRR announces it so, and the other leaves install
    /// it as `sticky static` instead of `extern_learn`.
    pub fn pin_host_mac(&self, name: &str) {
        let h = self.host(name);
        sh(&[
            "bridge",
            "-n",
            &self.leaf_ns(h.leaf),
            "fdb",
            "replace",
            &h.mac,
            "dev",
            &h.port,
            "master",
            "static",
            "sticky",
        ]);
    }

    /// Leaf `leaf`'s `bridge -j fdb show dev vxlan100`.
    pub fn fdb(&self, leaf: u8) -> Vec<FdbRow> {
        let ns = self.leaf_ns(leaf);
        let (code, out, err) =
            run(Command::new("bridge").args(["-n", &ns, "-j", "fdb", "show", "dev", VXLAN_DEV]));
        assert_eq!(code, 0, "bridge fdb show in {ns}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("bridge -j fdb ({e}): {out}"))
    }

    /// Polls leaf `leaf`'s FDB until `done` holds (bounded); returns it.
    pub fn wait_fdb(&self, leaf: u8, what: &str, done: impl Fn(&[FdbRow]) -> bool) -> Vec<FdbRow> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let rows = self.fdb(leaf);
            if done(&rows) {
                return rows;
            }
            if Instant::now() >= deadline {
                panic!(
                    "leaf{leaf}: no {what} within {CONVERGE_TIMEOUT:?}; FDB: {rows:#?}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (bounded) until leaf `on_leaf`'s VXLAN device sends `mac` to
    /// `vtep` and to no other VTEP; returns that entry.
    pub fn wait_remote_mac(&self, on_leaf: u8, mac: &str, vtep: Ipv4Addr) -> FdbRow {
        let what = format!("{mac} dst {vtep} only");
        let rows = self.wait_fdb(on_leaf, &what, |rows| {
            let entries: Vec<&FdbRow> = rows
                .iter()
                .filter(|r| r.is_vxlan_entry() && r.mac == mac)
                .collect();
            entries.len() == 1 && entries[0].sends(mac, vtep)
        });
        rows.into_iter()
            .find(|r| r.sends(mac, vtep))
            .expect("waited for it")
    }

    /// `vtysh -c CMD` on a router (`spine`, `leaf1`, …).
    pub fn vtysh(&self, router: &str, cmd: &str) -> String {
        let dir = self.dir.join(router);
        let (_, out, err) = run(Command::new("vtysh")
            .arg("--vty_socket")
            .arg(&dir)
            .args(["-c", cmd]));
        format!("{out}{err}")
    }

    /// Starts tcpdump on leaf `leaf`'s uplink for VXLAN packets (UDP port
    /// 4789) and returns once it listens.
    pub fn capture(&self, leaf: u8) -> Capture {
        let file = self.dir.join(format!("leaf{leaf}-uplink.pcap"));
        let _ = std::fs::remove_file(&file);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.leaf_ns(leaf)])
            // Immediate mode: packets reach the file as they come, not in
            // blocks a SIGTERM would leave unread.
            .args(["tcpdump", "-i", UPLINK, "-nn", "--immediate-mode", "-U"])
            // Headers only, in a 4 MiB ring: the default snapshot length
            // makes each slot of the ring 256 KiB, a few packets fill it,
            // and the kernel drops what tcpdump has not read yet.
            .args(["-s", "128", "-B", "4096"])
            .args(["-Z", "root", "-w"])
            .arg(&file)
            .args(["udp", "port", &PORT.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting tcpdump (cargo xtask setup installs it)");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut capture = Capture {
            child: Some(child),
            file,
            lines,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match capture.lines.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return capture,
                Ok(_) => {}
                Err(_) => {
                    capture.kill();
                    panic!("tcpdump did not start listening on leaf{leaf}'s {UPLINK}");
                }
            }
        }
    }

    /// FRR's view, for failure messages.
    fn diagnostics(&self) -> String {
        let mut text = self.vtysh("spine", "show bgp l2vpn evpn summary");
        for leaf in 1..=LEAVES {
            text.push_str(&self.vtysh(&format!("leaf{leaf}"), "show evpn mac vni all"));
        }
        text
    }

    /// Namespaces, links, addresses and routes of the IP underlay.
    fn build_underlay(&self) {
        let spine = self.spine_ns();
        new_netns(&spine);
        ip(&spine, &format!("addr add {}/32 dev lo", spine_id()));
        write_sysctl(&spine, "net/ipv4/ip_forward", "1");
        for leaf in 1..=LEAVES {
            let ns = self.leaf_ns(leaf);
            new_netns(&ns);
            let (spine_side, leaf_side) = uplink_addrs(leaf);
            let port = format!("leaf{leaf}");
            sh(&[
                "ip", "-n", &spine, "link", "add", &port, "type", "veth", "peer", "name", UPLINK,
                "netns", &ns,
            ]);
            ip(&spine, &format!("addr add {spine_side}/31 dev {port}"));
            ip(&spine, &format!("link set {port} up"));
            ip(&ns, &format!("addr add {leaf_side}/31 dev {UPLINK}"));
            ip(&ns, &format!("link set {UPLINK} up"));
            ip(&ns, &format!("addr add {}/32 dev lo", vtep(leaf)));
            ip(
                &spine,
                &format!("route add {}/32 via {leaf_side}", vtep(leaf)),
            );
            for other in (1..=LEAVES).filter(|o| *o != leaf) {
                ip(
                    &ns,
                    &format!("route add {}/32 via {spine_side}", vtep(other)),
                );
            }
        }
    }

    /// Leaf N's bridge and VXLAN device.
    fn build_leaf_overlay(&self, leaf: u8) {
        let ns = self.leaf_ns(leaf);
        // Long ageing: a quiet host's MAC stays learned (and announced)
        // for the whole test (centiseconds: an hour).
        ip(
            &ns,
            &format!("link add {BRIDGE} type bridge ageing_time 360000"),
        );
        ip(
            &ns,
            &format!("link set {BRIDGE} address {}", gateway_mac(leaf)),
        );
        ip(
            &ns,
            &format!("addr add {}/24 dev {BRIDGE}", gateway_ip(leaf)),
        );
        ip(
            &ns,
            &format!(
                "link add {VXLAN_DEV} type vxlan id {VNI} dstport {PORT} local {} nolearning",
                vtep(leaf)
            ),
        );
        ip(
            &ns,
            &format!("link set {VXLAN_DEV} mtu {MTU} master {BRIDGE}"),
        );
        sh(&[
            "bridge", "-n", &ns, "link", "set", "dev", VXLAN_DEV, "learning", "off",
        ]);
        ip(&ns, &format!("link set {BRIDGE} up"));
        ip(&ns, &format!("link set {VXLAN_DEV} up"));
    }

    /// A host's namespace, its veth into its leaf's bridge, and PERMANENT
    /// neighbour entries for every other host.
    fn build_host(&self, h: &Host) {
        let leaf = self.leaf_ns(h.leaf);
        new_netns(&h.ns);
        sh(&[
            "ip",
            "-n",
            &leaf,
            "link",
            "add",
            &h.port,
            "mtu",
            &MTU.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &h.ns,
        ]);
        ip(&leaf, &format!("link set {} master {BRIDGE} up", h.port));
        ip(
            &h.ns,
            &format!("link set eth0 address {} mtu {MTU} up", h.mac),
        );
        ip(&h.ns, &format!("addr add {}/24 dev eth0", h.ip));
        for other in self.hosts.iter().filter(|o| o.name != h.name) {
            ip(
                &h.ns,
                &format!(
                    "neigh replace {} lladdr {} dev eth0 nud permanent",
                    other.ip, other.mac
                ),
            );
        }
    }

    /// One frame from the host to its own leaf's gateway MAC: the bridge
    /// learns the host's MAC and delivers the frame to itself (nothing
    /// crosses the fabric).
    fn announce(&self, h: &Host) {
        self.send_frames(&h.name, &gateway_mac(h.leaf), 1);
    }

    fn start_frr(&self) {
        std::fs::create_dir_all(&self.dir).expect("creating the lab's directory");
        let mut neighbours = String::new();
        for leaf in 1..=LEAVES {
            let (_, leaf_side) = uplink_addrs(leaf);
            neighbours.push_str(&format!(" neighbor {leaf_side} peer-group leaves\n"));
        }
        let spine = format!(
            "router bgp {ASN}\n bgp router-id {}\n no bgp default ipv4-unicast\n \
             neighbor leaves peer-group\n neighbor leaves remote-as {ASN}\n \
             neighbor leaves timers connect 1\n{neighbours} address-family l2vpn evpn\n  \
             neighbor leaves activate\n  neighbor leaves route-reflector-client\n \
             exit-address-family\n",
            spine_id()
        );
        self.start_router("spine", &self.spine_ns(), &spine);
        for leaf in 1..=LEAVES {
            let (spine_side, _) = uplink_addrs(leaf);
            let bgpd = format!(
                "router bgp {ASN}\n bgp router-id {}\n no bgp default ipv4-unicast\n \
                 neighbor {spine_side} remote-as {ASN}\n neighbor {spine_side} timers connect 1\n \
                 address-family l2vpn evpn\n  neighbor {spine_side} activate\n  \
                 advertise-all-vni\n  advertise-default-gw\n exit-address-family\n",
                vtep(leaf)
            );
            self.start_router(&format!("leaf{leaf}"), &self.leaf_ns(leaf), &bgpd);
        }
    }

    /// zebra, then bgpd once zebra's socket is there, in namespace `ns`.
    fn start_router(&self, router: &str, ns: &str, bgpd_conf: &str) {
        let dir = self.dir.join(router);
        std::fs::create_dir_all(&dir).expect("creating FRR's directory");
        std::fs::write(dir.join("zebra.conf"), format!("hostname {router}\n"))
            .expect("writing zebra.conf");
        std::fs::write(
            dir.join("bgpd.conf"),
            format!("hostname {router}\n{bgpd_conf}"),
        )
        .expect("writing bgpd.conf");
        // The daemons drop to the frr user, which writes pid files and
        // sockets here.
        sh(&["chown", "-R", "frr:frr", &dir.to_string_lossy()]);
        for daemon in ["zebra", "bgpd"] {
            let d = dir.to_string_lossy();
            let (code, out, err) = run(Command::new("ip").args([
                "netns",
                "exec",
                ns,
                &format!("/usr/lib/frr/{daemon}"),
                "-d",
                "-f",
                &format!("{d}/{daemon}.conf"),
                "-i",
                &format!("{d}/{daemon}.pid"),
                "--vty_socket",
                &d,
                "-z",
                &format!("{d}/zserv.api"),
                "--log",
                &format!("file:{d}/{daemon}.log"),
            ]));
            assert_eq!(code, 0, "starting {daemon} in {ns}: {out}{err}");
            let ready = dir.join(if daemon == "zebra" {
                "zserv.api"
            } else {
                "bgpd.vty"
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ready.exists() {
                assert!(
                    Instant::now() < deadline,
                    "{daemon} in {ns} did not create {}",
                    ready.display()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Every leaf: each remote host's MAC `extern_learn` behind its leaf's
    /// VTEP, each other leaf's gateway MAC `sticky`, a flood entry per
    /// other VTEP. Hosts announce themselves again every 5 s meanwhile.
    fn wait_converged(&self) {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        let mut announced = Instant::now();
        for leaf in 1..=LEAVES {
            loop {
                let rows = self.fdb(leaf);
                let Some(missing) = self.missing_on(leaf, &rows) else {
                    break;
                };
                if Instant::now() >= deadline {
                    panic!(
                        "FRR did not program leaf{leaf} within {CONVERGE_TIMEOUT:?}: no {missing}; FDB: {rows:#?}\n{}",
                        self.diagnostics()
                    );
                }
                if announced.elapsed() > Duration::from_secs(5) {
                    for h in &self.hosts {
                        self.announce(h);
                    }
                    announced = Instant::now();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The first expected entry leaf `leaf`'s VXLAN device lacks.
    fn missing_on(&self, leaf: u8, rows: &[FdbRow]) -> Option<String> {
        let has = |mac: &str, vtep: Ipv4Addr, flag: &str| {
            rows.iter().any(|r| r.sends(mac, vtep) && r.has_flag(flag))
        };
        for h in self.hosts.iter().filter(|h| h.leaf != leaf) {
            if !has(&h.mac, vtep(h.leaf), "extern_learn") {
                return Some(format!(
                    "{} ({}) extern_learn dst {}",
                    h.name,
                    h.mac,
                    vtep(h.leaf)
                ));
            }
        }
        for other in (1..=LEAVES).filter(|o| *o != leaf) {
            if !has(&gateway_mac(other), vtep(other), "sticky") {
                return Some(format!("leaf{other}'s gateway MAC sticky"));
            }
            if !rows
                .iter()
                .any(|r| r.is_flood() && r.dst == Some(IpAddr::V4(vtep(other))))
            {
                return Some(format!("flood entry dst {}", vtep(other)));
            }
        }
        None
    }

    /// Stops FRR, deletes the namespaces, removes the directory: what this
    /// lab (or an earlier run of the same name) made.
    fn teardown(&self) {
        if let Ok(routers) = std::fs::read_dir(&self.dir) {
            for router in routers.flatten() {
                // bgpd first: zebra outliving it withdraws nothing twice.
                for daemon in ["bgpd", "zebra"] {
                    stop_daemon(&router.path().join(format!("{daemon}.pid")), &self.dir);
                }
            }
        }
        let mut namespaces = vec![self.spine_ns()];
        namespaces.extend((1..=LEAVES).map(|l| self.leaf_ns(l)));
        namespaces.extend(HOSTS.iter().map(|(h, _, _)| format!("{}-{h}", self.name)));
        for ns in namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EvpnLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Whether process `pid` runs with `dir` in its command line (one of this
/// lab's daemons, not a process that took over a stale pid).
fn runs_in(pid: i32, dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

/// SIGTERM to the daemon of `pid_file`, SIGKILL if it is still there
/// after 5 s.
fn stop_daemon(pid_file: &Path, dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        return;
    };
    for (signal, wait) in [
        (libc::SIGTERM, Duration::from_secs(5)),
        (libc::SIGKILL, Duration::from_secs(2)),
    ] {
        if !runs_in(pid, dir) {
            return;
        }
        // SAFETY: a signal to one process, ours by its command line.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + wait;
        while runs_in(pid, dir) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// tcpdump on a leaf's uplink, writing a pcap file (see
/// [`EvpnLab::capture`]); killed if the test ends without
/// [`Capture::stop`].
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    /// tcpdump's stderr, line by line.
    lines: std::sync::mpsc::Receiver<String>,
}

/// One VXLAN packet on the wire: outer addresses and frame length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub len: u64,
}

impl Capture {
    /// Stops tcpdump (after a moment for the last packets) and returns
    /// the IPv4 VXLAN packets it wrote.
    pub fn stop(mut self) -> Vec<Packet> {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(child) = &self.child {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Its closing counts: "N packets captured", "… dropped by kernel".
        let report: Vec<String> = self.lines.iter().collect();
        let data = std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.file.display()));
        let packets = parse_pcap(&data);
        let dropped = report
            .iter()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        assert_eq!(
            dropped,
            Some(0),
            "tcpdump missed packets, it is no oracle: {report:?}"
        );
        packets
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many of `packets` went from `src` to `dst`.
pub fn count(packets: &[Packet], src: Ipv4Addr, dst: Ipv4Addr) -> u64 {
    packets
        .iter()
        .filter(|p| p.src == IpAddr::V4(src) && p.dst == IpAddr::V4(dst))
        .count() as u64
}

/// The IPv4 UDP packets of a pcap file of Ethernet frames (tcpdump -w).
fn parse_pcap(data: &[u8]) -> Vec<Packet> {
    assert!(data.len() >= 24, "not a pcap file ({} bytes)", data.len());
    let magic = u32::from_le_bytes(data[0..4].try_into().unwrap());
    let little = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        other => panic!("not a pcap file (magic {other:#x})"),
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = data[off..off + 4].try_into().unwrap();
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    assert_eq!(u32_at(20), 1, "pcap of Ethernet frames");
    let mut packets = Vec::new();
    let mut off = 24;
    while off + 16 <= data.len() {
        let caplen = u32_at(off + 8) as usize;
        let len = u32_at(off + 12) as u64;
        let frame = &data[off + 16..(off + 16 + caplen).min(data.len())];
        off += 16 + caplen;
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
            continue;
        }
        let addr = |at: usize| {
            IpAddr::V4(Ipv4Addr::new(
                frame[at],
                frame[at + 1],
                frame[at + 2],
                frame[at + 3],
            ))
        };
        packets.push(Packet {
            src: addr(26),
            dst: addr(30),
            len,
        });
    }
    packets
}

/// Sends `count` frames (`dst`, `src`, [`TEST_ETHERTYPE`], zeros up to
/// [`TEST_FRAME_LEN`]) on `eth0` of namespace `ns`, 1 ms apart.
pub fn send_frames(ns: &str, src: [u8; 6], dst: [u8; 6], count: u32) {
    let mut frame = Vec::with_capacity(TEST_FRAME_LEN as usize);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.resize(TEST_FRAME_LEN as usize, 0);
    vxtrace::netns::run_in(ns, || {
        // SAFETY: plain socket calls on a descriptor we own and close; the
        // address and the frame outlive them.
        unsafe {
            let ifindex = libc::if_nametoindex(c"eth0".as_ptr());
            assert!(ifindex != 0, "no eth0 in {ns}");
            // Protocol 0: this socket sends and receives nothing.
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&dst);
            for _ in 0..count {
                let n = libc::sendto(
                    fd,
                    frame.as_ptr() as *const _,
                    frame.len(),
                    0,
                    &to as *const _ as *const _,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    n as usize,
                    frame.len(),
                    "sendto in {ns}: {}",
                    std::io::Error::last_os_error()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            libc::close(fd);
        }
        Ok(())
    })
    .unwrap();
}

/// A fresh namespace with loopback up and IPv6 off.
fn new_netns(ns: &str) {
    sh(&["ip", "netns", "add", ns]);
    for conf in ["all", "default"] {
        write_sysctl(ns, &format!("net/ipv6/conf/{conf}/disable_ipv6"), "1");
    }
    ip(ns, "link set lo up");
}

fn write_sysctl(ns: &str, path: &str, value: &str) {
    vxtrace::netns::run_in(ns, || {
        Ok(std::fs::write(format!("/proc/sys/{path}"), value)?)
    })
    .unwrap_or_else(|e| panic!("{path}={value} in {ns}: {e:#}"));
}

/// `ip -n NS ARGS…` (ARGS split at spaces), which must succeed.
fn ip(ns: &str, args: &str) {
    let mut all = vec!["ip", "-n", ns];
    all.extend(args.split_whitespace());
    sh(&all);
}
