//! Loads vxtrace's kernel programs, configures them, attaches them to the
//! underlay and VXLAN devices, and reads their maps.
//!
//! Attachment prefers tcx links (kernel >= 6.6): they belong to this
//! process's file descriptors, so the kernel detaches them when the process
//! dies, SIGKILL included. Where tcx is missing the programs go on a clsact
//! qdisc through netlink, and a small watchdog process (see `reaper`)
//! removes those filters when this process dies.

use std::{fmt, net::IpAddr};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
    programs::{
        KProbe, LinkOrder, RawTracePoint, SchedClassifier, TcAttachType, TracePoint,
        tc::{
            NlOptions, SchedClassifierLink, TcAttachOptions, qdisc_add_clsact, qdisc_detach_program,
        },
    },
};
use serde::Serialize;
use vxtrace_common::{
    Config, DropKey, GlobalStats, INNER_VTEP, InnerAddr, KernelOffsets, MAC_SOURCE_FDB,
    MAX_LOCAL_ADDRS, MAX_PORTS, MacKey, MacPeer, PeerKey, PeerStats, VXLAN_FLAG_I, VniInfo,
};

use crate::discovery::{VxlanDevice, peer_key};

/// The kernel programs, built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vxtrace"));

pub const PROG_NIC_INGRESS: &str = "vxtrace_nic_ingress";
pub const PROG_NIC_EGRESS: &str = "vxtrace_nic_egress";
pub const PROG_VXLAN_INGRESS: &str = "vxtrace_vxlan_ingress";
pub const PROG_VXLAN_EGRESS: &str = "vxtrace_vxlan_egress";
pub const PROG_EMPTY: &str = "vxtrace_empty";
pub const PROG_DROPS_RAW: &str = "vxtrace_kfree_skb_raw";
pub const PROG_DROPS_TP: &str = "vxtrace_kfree_skb_tp";
pub const PROG_PAWS_ESTABLISHED: &str = "vxtrace_paws_established";
pub const PROG_PAWS_TIME_WAIT: &str = "vxtrace_paws_time_wait";

/// The PAWS kprobes, the kernel functions they go on, and the drop reason
/// that makes each unnecessary: kernels gained `TCP_RFC7323_PAWS` (5.18)
/// long before `TCP_RFC7323_TW_PAWS`, so on most nodes only the TIME_WAIT
/// probe is needed.
pub const PAWS_KPROBES: [(&str, &str, &str); 2] = [
    (
        PROG_PAWS_ESTABLISHED,
        "tcp_validate_incoming",
        "TCP_RFC7323_PAWS",
    ),
    (
        PROG_PAWS_TIME_WAIT,
        "tcp_timewait_state_process",
        "TCP_RFC7323_TW_PAWS",
    ),
];

/// When to use the PAWS kprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PawsKprobes {
    /// Only where the kernel's drops carry no PAWS reasons.
    Auto,
    /// Always try (they fail where the kernel has no kprobes).
    Always,
    Never,
}

/// What became of one optional probe.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    pub program: &'static str,
    pub target: &'static str,
    /// "attached", "skipped: …" or "not available on this kernel: …".
    pub status: String,
}
/// The TC programs (loaded up front; the drop programs load when attached).
pub const ALL_PROGRAMS: [&str; 5] = [
    PROG_NIC_INGRESS,
    PROG_NIC_EGRESS,
    PROG_VXLAN_INGRESS,
    PROG_VXLAN_EGRESS,
    PROG_EMPTY,
];

/// bpf_map_update_elem flag: create only.
const BPF_NOEXIST: u64 = 1;

/// GBP extension bits of the VXLAN header (the kernel's VXLAN_GBP_USED_BITS).
const VXLAN_GBP_USED_BITS: u32 = (1 << 31) | (1 << 22) | (1 << 19) | 0xffff;

/// What the kernel programs are told at load time.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    pub ports: Vec<u16>,
    pub local_addrs: Vec<IpAddr>,
    pub gbp: bool,
    /// Count only VNIs of watched devices (false when a metadata device is
    /// watched or no VXLAN device is).
    pub filter_vni: bool,
    pub max_peers: u32,
    pub max_macs: u32,
    /// Kernel offsets for the drop program (invalid without BTF).
    pub offsets: KernelOffsets,
    /// Count drops of every namespace (else only those given to
    /// `Tracer::set_netns_scope`).
    pub netns_scope_all: bool,
    /// The raw tracepoint's third argument is the drop reason (>= 5.17).
    pub raw_tp_has_reason: bool,
    /// Its fourth is the receiving socket (>= 6.10).
    pub raw_tp_has_rx_sk: bool,
}

impl TracerConfig {
    fn to_kernel(&self) -> Result<Config> {
        let mut cfg = Config::empty();
        if self.ports.is_empty() {
            bail!("no VXLAN port to watch");
        }
        if self.ports.len() > MAX_PORTS {
            bail!(
                "{} VXLAN ports requested; at most {MAX_PORTS} can be watched at once",
                self.ports.len()
            );
        }
        for (slot, port) in cfg.ports.iter_mut().zip(&self.ports) {
            *slot = *port;
        }
        // More local addresses than slots: watch any address rather than
        // silently missing some.
        if self.local_addrs.len() <= MAX_LOCAL_ADDRS {
            for (slot, addr) in cfg.local_addrs.iter_mut().zip(&self.local_addrs) {
                *slot = peer_key(addr);
            }
            cfg.local_addr_count = self.local_addrs.len() as u32;
        }
        cfg.allowed_flags = VXLAN_FLAG_I | if self.gbp { VXLAN_GBP_USED_BITS } else { 0 };
        cfg.filter_vni = u32::from(self.filter_vni);
        cfg.offsets = self.offsets;
        cfg.netns_scope_all = u32::from(self.netns_scope_all);
        cfg.raw_tp_has_reason = u32::from(self.raw_tp_has_reason);
        cfg.raw_tp_has_rx_sk = u32::from(self.raw_tp_has_rx_sk);
        Ok(cfg)
    }
}

/// How a program got onto a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// A tcx link (kernel >= 6.6); detached by the kernel when we exit.
    Tcx,
    /// A filter on the clsact qdisc, through netlink.
    Clsact,
}

/// Which attach mechanism the user allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachPolicy {
    /// tcx where the kernel has it, clsact otherwise.
    Auto,
    Tcx,
    Clsact,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attachment {
    pub program: &'static str,
    pub device: String,
    pub hook: &'static str,
    pub mode: AttachMode,
    /// A clsact filter's (priority, handle): what tells it apart from the
    /// filters of another vxtrace on the same device.
    #[serde(skip)]
    pub filter: Option<(u16, u32)>,
}

/// One clsact filter this tracer attached: what the watchdog needs to
/// remove exactly that filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClsactFilter {
    pub device: String,
    pub hook: &'static str,
    pub priority: u16,
    pub handle: u32,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} {} ({})",
            self.program,
            self.device,
            self.hook,
            match self.mode {
                AttachMode::Tcx => "tcx",
                AttachMode::Clsact => "clsact",
            }
        )
    }
}

/// One read of the kernel maps.
#[derive(Debug, Default)]
pub struct Readout {
    /// Every peer in the kernel map, summed over the CPUs (each key once).
    pub peers: Vec<(PeerKey, PeerStats)>,
    pub global: GlobalStats,
    pub drops: rustc_hash::FxHashMap<DropKey, u64>,
}

impl Readout {
    /// One peer's counters, if the map holds it.
    pub fn peer(&self, key: &PeerKey) -> Option<PeerStats> {
        self.peers.iter().find(|(k, _)| k == key).map(|(_, s)| *s)
    }
}

/// How the drop program got attached, or why it did not.
#[derive(Clone, Debug, Serialize)]
pub struct DropProbe {
    /// "raw_tracepoint", "tracepoint", or "none".
    pub attached: &'static str,
    /// What was tried and failed, in order.
    pub skipped: Vec<String>,
}

pub struct Tracer {
    ebpf: Ebpf,
    /// The kernel refused batched map reads once: do not ask again.
    no_batch: std::cell::Cell<bool>,
    handshake_events: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub attachments: Vec<Attachment>,
    /// clsact filters, owned here so that each is removed by its own
    /// priority and handle (dropping a link detaches it).
    clsact_links: Vec<SchedClassifierLink>,
    policy: AttachPolicy,
    pub max_peers: u32,
}

/// The kernel BTF the loader relocates against.
pub enum LoaderBtf {
    /// The running kernel's (/sys/kernel/btf/vmlinux), parsed by the loader.
    Running,
    /// A BTF file given by the user.
    File(Btf),
    /// None: the programs need no relocations; their BTF is not loaded.
    None,
}

impl Tracer {
    /// Loads the programs (not yet attached) with `cfg` written in.
    pub fn load(cfg: &TracerConfig, btf: &LoaderBtf, policy: AttachPolicy) -> Result<Self> {
        let kernel_cfg = cfg.to_kernel()?;
        let mut loader = EbpfLoader::new();
        match btf {
            LoaderBtf::Running => {}
            LoaderBtf::File(b) => {
                loader.btf(Some(b));
            }
            LoaderBtf::None => {
                loader.btf(None);
            }
        }
        loader
            .override_global("CONFIG", &kernel_cfg, true)
            .map_max_entries("PEERS", cfg.max_peers)
            .map_max_entries("MAC_PEERS", cfg.max_macs);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| explain_bpf_error(anyhow!(e)))
            .context("loading vxtrace's BPF object")?;
        for name in ALL_PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| explain_bpf_error(anyhow!(e)))
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        // Kernel-side log lines (rare: map insert failures) go to the log
        // crate. Read from the loop in `drain_logs`.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let handshake_events = ebpf
            .take_map("HANDSHAKE_EVENTS")
            .and_then(|m| RingBuf::try_from(m).ok());
        Ok(Self {
            ebpf,
            no_batch: std::cell::Cell::new(false),
            handshake_events,
            logger,
            attachments: Vec::new(),
            clsact_links: Vec::new(),
            policy,
            max_peers: cfg.max_peers,
        })
    }

    pub fn program(&self, name: &str) -> Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    /// Attaches the underlay programs to `iface`, both directions.
    pub fn attach_underlay(&mut self, iface: &str) -> Result<()> {
        self.attach(PROG_NIC_INGRESS, iface, TcAttachType::Ingress)?;
        self.attach(PROG_NIC_EGRESS, iface, TcAttachType::Egress)
    }

    /// Registers `dev` with the kernel programs and attaches to it.
    pub fn attach_vxlan(&mut self, dev: &VxlanDevice) -> Result<()> {
        let check_mac = if dev.bridged { None } else { dev.mac };
        self.register_device(dev.ifindex, dev.vni, check_mac)?;
        self.attach(PROG_VXLAN_INGRESS, &dev.name, TcAttachType::Ingress)?;
        self.attach(PROG_VXLAN_EGRESS, &dev.name, TcAttachType::Egress)
    }

    /// Tells the kernel programs that `ifindex` is a VXLAN device with `vni`
    /// (`None`: a metadata device, registered under VNI 0; its FDB entries
    /// carry their own VNIs).
    /// `own_mac`: the device's MAC, when decapsulated frames must be
    /// addressed to it (routed devices; not bridged ones).
    pub fn register_device(
        &mut self,
        ifindex: u32,
        vni: Option<u32>,
        own_mac: Option<[u8; 6]>,
    ) -> Result<()> {
        let mut devices: HashMap<_, u32, vxtrace_common::VxlanDevice> =
            HashMap::try_from(self.map_mut("VXLAN_DEVICES")?)?;
        devices
            .insert(
                ifindex,
                vxtrace_common::VxlanDevice {
                    vni: vni.unwrap_or(0),
                    _pad: 0,
                },
                0,
            )
            .context("registering the VXLAN device")?;
        if let Some(vni) = vni {
            let mut by_vni: HashMap<_, u32, VniInfo> =
                HashMap::try_from(self.map_mut("VXLAN_DEVICES_BY_VNI")?)?;
            let info = VniInfo {
                ifindex,
                check_dst_mac: u32::from(own_mac.is_some()),
                mac: own_mac.unwrap_or_default(),
                _pad: [0; 2],
            };
            by_vni.insert(vni, info, 0).context("registering the VNI")?;
        }
        Ok(())
    }

    /// Tells the kernel programs that `mac` on `vni` lives behind `peer`
    /// (from the VXLAN device's FDB). Learned entries are not overwritten:
    /// what the traffic says wins over configuration.
    pub fn seed_mac(&mut self, vni: u32, mac: [u8; 6], peer: &IpAddr) -> Result<()> {
        let mut macs: HashMap<_, MacKey, MacPeer> = HashMap::try_from(self.map_mut("MAC_PEERS")?)?;
        let key = MacKey::new(vni, mac);
        if macs.get(&key, 0).is_ok() {
            return Ok(());
        }
        let value = MacPeer {
            peer: peer_key(peer),
            source: MAC_SOURCE_FDB,
            _pad: 0,
        };
        // BPF_NOEXIST: a learned entry that raced in first stays.
        match macs.insert(key, value, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("seeding the MAC-to-peer map"),
        }
    }

    /// `addr` is the VTEP (overlay) address of `peer` (from a neighbour entry).
    pub fn seed_vtep_addr(&mut self, addr: &IpAddr, peer: &IpAddr) -> Result<()> {
        let mut m: HashMap<_, PeerKey, InnerAddr> =
            HashMap::try_from(self.map_mut("INNER_ADDRS")?)?;
        let v = InnerAddr {
            peer: peer_key(peer),
            kind: INNER_VTEP,
            _pad: 0,
        };
        m.insert(peer_key(addr), v, 0)
            .context("seeding the inner-address map")
    }

    /// Pod subnet `net/prefix_len` lives behind `peer` (from the routes).
    pub fn seed_pod_subnet(&mut self, net: &IpAddr, prefix_len: u8, peer: &IpAddr) -> Result<()> {
        let mut m: LpmTrie<_, [u8; 16], PeerKey> = LpmTrie::try_from(self.map_mut("POD_SUBNETS")?)?;
        // IPv4 lives in the mapped range, so its prefix is 96 bits longer.
        let bits = match net {
            IpAddr::V4(_) => 96 + prefix_len as u32,
            IpAddr::V6(_) => prefix_len as u32,
        };
        m.insert(&LpmKey::new(bits, peer_key(net).addr), peer_key(peer), 0)
            .context("seeding the pod-subnet map")
    }

    /// Count drops only from these network namespaces (inode numbers).
    pub fn set_netns_scope(&mut self, inums: &[u32]) -> Result<()> {
        let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut("NETNS_SCOPE")?)?;
        for i in inums {
            m.insert(*i, 1, 0).context("setting the namespace scope")?;
        }
        Ok(())
    }

    /// Attaches the drop program: the raw tracepoint first (no tracefs
    /// needed), the classic tracepoint where that fails.
    pub fn attach_drops(&mut self) -> DropProbe {
        // tp_btf would see the same arguments at the same cost (the skb's
        // fields are read with probe reads either way) and needs another
        // parse of the kernel's BTF: the raw tracepoint comes first.
        let mut skipped = vec![
            "tp_btf skb:kfree_skb: not tried: the raw tracepoint passes the same arguments at the same cost".to_string(),
        ];
        match self.attach_raw_drops() {
            Ok(()) => {
                return DropProbe {
                    attached: "raw_tracepoint",
                    skipped,
                };
            }
            Err(e) => skipped.push(format!("raw_tracepoint skb:kfree_skb: {e:#}")),
        }
        match self.attach_tp_drops() {
            Ok(()) => DropProbe {
                attached: "tracepoint",
                skipped,
            },
            Err(e) => {
                skipped.push(format!("tracepoint skb:kfree_skb: {e:#}"));
                DropProbe {
                    attached: "none",
                    skipped,
                }
            }
        }
    }

    /// Loads one PAWS kprobe (the verifier checks it here whatever the
    /// kernel) without attaching.
    pub fn load_paws_kprobe(&mut self, prog: &str) -> Result<()> {
        let p: &mut KProbe = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("no program {prog}"))?
            .try_into()?;
        p.load()
            .map_err(|e| explain_bpf_error(anyhow!(e)))
            .with_context(|| format!("loading {prog}"))
    }

    /// Loads and, where wanted and possible, attaches the PAWS kprobes;
    /// `has_reason` says whether the kernel names a drop reason.
    pub fn attach_paws_kprobes(
        &mut self,
        mode: PawsKprobes,
        has_reason: impl Fn(&str) -> bool,
    ) -> Vec<ProbeStatus> {
        PAWS_KPROBES
            .iter()
            .map(|&(prog, target, reason)| {
                let status = match mode {
                    PawsKprobes::Never => "skipped: --paws-kprobes never".to_string(),
                    PawsKprobes::Auto if has_reason(reason) => {
                        format!(
                            "skipped: this kernel reports these rejects as drop reason {reason}"
                        )
                    }
                    // Verifying takes most of a second (the option walk):
                    // only done for a probe that will be attached.
                    _ => match self.load_paws_kprobe(prog) {
                        Err(e) => format!("not loaded: {e:#}"),
                        Ok(()) => match self.attach_kprobe(prog, target) {
                            Ok(()) => "attached".to_string(),
                            Err(e) => format!("not available on this kernel: {e:#}"),
                        },
                    },
                };
                ProbeStatus {
                    program: prog,
                    target,
                    status,
                }
            })
            .collect()
    }

    fn attach_kprobe(&mut self, prog: &str, target: &str) -> Result<()> {
        let p: &mut KProbe = self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("no program {prog}"))?
            .try_into()?;
        p.attach(target, 0)?;
        Ok(())
    }

    fn attach_raw_drops(&mut self) -> Result<()> {
        let prog: &mut RawTracePoint = self
            .ebpf
            .program_mut(PROG_DROPS_RAW)
            .ok_or_else(|| anyhow!("no program {PROG_DROPS_RAW}"))?
            .try_into()?;
        prog.load().context("loading")?;
        prog.attach("kfree_skb").context("attaching")?;
        Ok(())
    }

    fn attach_tp_drops(&mut self) -> Result<()> {
        if crate::kernel::tracefs().is_none() {
            bail!("tracefs is not mounted and could not be mounted");
        }
        let prog: &mut TracePoint = self
            .ebpf
            .program_mut(PROG_DROPS_TP)
            .ok_or_else(|| anyhow!("no program {PROG_DROPS_TP}"))?
            .try_into()?;
        prog.load().context("loading")?;
        prog.attach("skb", "kfree_skb").context("attaching")?;
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
    }

    fn attach(&mut self, program: &'static str, iface: &str, hook: TcAttachType) -> Result<()> {
        let policy = self.policy;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("no program {program}"))?
            .try_into()?;
        let hook_name = match hook {
            TcAttachType::Ingress => "ingress",
            TcAttachType::Egress => "egress",
            TcAttachType::Custom(_) => "custom",
        };
        let mut tcx_error = None;
        if policy != AttachPolicy::Clsact {
            match prog.attach_with_options(
                iface,
                hook,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ) {
                Ok(_) => {
                    self.attachments.push(Attachment {
                        program,
                        device: iface.to_string(),
                        hook: hook_name,
                        mode: AttachMode::Tcx,
                        filter: None,
                    });
                    return Ok(());
                }
                Err(e) if policy == AttachPolicy::Tcx => {
                    return Err(anyhow!(e)).with_context(|| {
                        format!("attaching {program} to {iface} {hook_name} with tcx (needs kernel >= 6.6; try --attach auto)")
                    });
                }
                Err(e) => tcx_error = Some(e),
            }
        }
        if let Some(e) = &tcx_error {
            log::info!("tcx attach of {program} on {iface} failed ({e}); using clsact");
        }
        match qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(aya::programs::tc::TcError::NetlinkError(e))
                if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("adding the clsact qdisc to {iface}"));
            }
        }
        // Filters left by an earlier vxtrace that could not clean up (it
        // and its watchdog were killed together); only when no other
        // vxtrace runs here, since those filters could be its.
        if !crate::reaper::other_vxtrace_in_this_netns() {
            let _ = qdisc_detach_program(iface, hook, program);
        }
        let id = prog
            .attach_with_options(iface, hook, TcAttachOptions::Netlink(NlOptions::default()))
            .with_context(|| format!("attaching {program} to {iface} {hook_name} (clsact)"))?;
        // The kernel chose the filter's priority and handle; keep them, so
        // that exactly this filter is removed at exit.
        let filter = prog.take_link(id).ok().and_then(|link| {
            let f = (link.priority().ok()?, u32::from(link.handle().ok()?));
            self.clsact_links.push(link);
            Some(f)
        });
        self.attachments.push(Attachment {
            program,
            device: iface.to_string(),
            hook: hook_name,
            mode: AttachMode::Clsact,
            filter,
        });
        Ok(())
    }

    /// Completed handshakes reported since the last call.
    pub fn drain_handshakes(&mut self) -> Vec<vxtrace_common::HandshakeEvent> {
        let mut out = Vec::new();
        if let Some(ring) = self.handshake_events.as_mut() {
            while let Some(item) = ring.next() {
                if item.len() >= std::mem::size_of::<vxtrace_common::HandshakeEvent>() {
                    // SAFETY: the kernel wrote a HandshakeEvent (repr(C), Pod).
                    let ev = unsafe {
                        std::ptr::read_unaligned(
                            item.as_ptr() as *const vxtrace_common::HandshakeEvent
                        )
                    };
                    out.push(ev);
                }
            }
        }
        out
    }

    /// Removes handshakes whose SYN is older than `timeout` and returns
    /// them: SYNs that never got a SYN-ACK.
    pub fn expire_handshakes(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<vxtrace_common::Handshake>> {
        let now = monotonic_ns();
        let limit = timeout.as_nanos() as u64;
        let mut map: HashMap<_, vxtrace_common::FlowKey, vxtrace_common::Handshake> =
            HashMap::try_from(self.map_mut("HANDSHAKES")?)?;
        let mut expired = Vec::new();
        let mut stale = Vec::new();
        for item in map.iter() {
            let Ok((k, v)) = item else { continue };
            let age = now.saturating_sub(v.first_syn_ns);
            if v.reported == 0 && age > limit {
                expired.push((k, v));
            } else if v.reported != 0 && age > limit.saturating_mul(10) {
                stale.push(k);
            }
        }
        let mut out = Vec::new();
        for (k, mut v) in expired {
            // Keep the entry, marked: retransmitted SYNs of this attempt then
            // count as retransmissions, not as new unanswered handshakes.
            // If a SYN-ACK removed it meanwhile, it was answered after all.
            if map.get(&k, 0).is_ok() {
                v.reported = 1;
                let _ = map.insert(k, v, 2 /* BPF_EXIST */);
                out.push(v);
            }
        }
        for k in stale {
            let _ = map.remove(&k);
        }
        Ok(out)
    }

    /// Forwards what the kernel programs logged since the last call.
    pub fn drain_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Reads and sums (over CPUs) every counter map.
    pub fn read(&self) -> Result<Readout> {
        let mut out = Readout::default();
        if let Some(batched) = self.read_peers_batched() {
            out.peers = batched;
            return self.read_rest(out);
        }
        let peers: PerCpuHashMap<&MapData, PeerKey, PeerStats> =
            PerCpuHashMap::try_from(self.map("PEERS")?)?;
        for item in peers.iter() {
            // A key evicted between "next key" and "lookup" is skipped; its
            // counts are already in the loader's totals.
            let Ok((key, per_cpu)) = item else { continue };
            out.peers.push((key, sum_cpus(per_cpu.iter())));
        }
        self.read_rest(out)
    }

    /// The peer map in batches, when the kernel supports it.
    fn read_peers_batched(&self) -> Option<Vec<(PeerKey, PeerStats)>> {
        self.read_batched("PEERS", PeerStats::merge)
    }

    /// The drop map in batches, when the kernel supports it.
    fn read_drops_batched(&self) -> Option<Vec<(DropKey, u64)>> {
        self.read_batched("DROPS", |sum: &mut u64, v: &u64| {
            *sum = sum.wrapping_add(*v)
        })
    }

    /// A per-CPU LRU map in batches, values summed over the CPUs by `sum`;
    /// `None` where the kernel refuses (then never asked again).
    fn read_batched<K: Copy + Default, V: Copy + Default>(
        &self,
        map: &str,
        sum: impl FnMut(&mut V, &V),
    ) -> Option<Vec<(K, V)>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        if self.no_batch.get() {
            return None;
        }
        let aya::maps::Map::PerCpuLruHashMap(data) = self.ebpf.map(map)? else {
            return None;
        };
        let cpus = aya::util::nr_cpus().ok()?;
        match crate::batch::lookup_percpu_summed::<K, V>(data.fd().as_fd().as_raw_fd(), cpus, sum) {
            Ok(v) => Some(v),
            Err(e) => {
                log::info!("{e}; reading {map} key by key");
                self.no_batch.set(true);
                None
            }
        }
    }

    fn read_rest(&self, mut out: Readout) -> Result<Readout> {
        let global: PerCpuArray<&MapData, GlobalStats> =
            PerCpuArray::try_from(self.map("GLOBAL")?)?;
        for v in global
            .get(&0, 0)
            .context("reading the global counters")?
            .iter()
        {
            out.global.merge(v);
        }
        if let Some(batched) = self.read_drops_batched() {
            out.drops.extend(batched);
            return Ok(out);
        }
        let drops: PerCpuHashMap<&MapData, DropKey, u64> =
            PerCpuHashMap::try_from(self.map("DROPS")?)?;
        for item in drops.iter() {
            match item {
                Ok((key, per_cpu)) => {
                    out.drops.insert(key, per_cpu.iter().sum());
                }
                Err(e) => log::debug!("reading the drop map: {e}"),
            }
        }
        Ok(out)
    }

    /// The clsact filters this tracer owns.
    pub fn clsact_filters(&self) -> Vec<ClsactFilter> {
        self.attachments
            .iter()
            .filter(|a| a.mode == AttachMode::Clsact)
            .filter_map(|a| {
                let (priority, handle) = a.filter?;
                Some(ClsactFilter {
                    device: a.device.clone(),
                    hook: a.hook,
                    priority,
                    handle,
                })
            })
            .collect()
    }
}

/// Adds what to do to the errors users hit when loading BPF programs.
fn explain_bpf_error(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        e.context("the kernel refused to load BPF programs: run vxtrace as root (it needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN)")
    } else {
        e
    }
}

/// One peer's counters summed over the CPUs.
fn sum_cpus<'a>(per_cpu: impl Iterator<Item = &'a PeerStats>) -> PeerStats {
    let mut sum = PeerStats::default();
    for v in per_cpu {
        sum.merge(v);
    }
    sum
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes one clsact filter (used by the watchdog).
pub fn detach_clsact(iface: &str, hook: &str, priority: u16, handle: u32) {
    use aya::programs::links::Link as _;
    let hook = match hook {
        "ingress" => TcAttachType::Ingress,
        _ => TcAttachType::Egress,
    };
    if let Ok(link) = SchedClassifierLink::attached(iface, hook, priority, handle.into(), None) {
        let _ = link.detach();
    }
}
