//! `vxtrace watch`: discover, attach, count, show, summarise.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use vxtrace_common::{
    DEFAULT_MAX_MACS, DEFAULT_MAX_PEERS, GlobalStats, KernelOffsets, PeerKey, PeerStats,
};

use crate::{
    conntrack,
    discovery::{self, Snapshot, VxlanDevice, is_group_mac},
    doctor,
    drops::{self, DropTable, PeerDrops},
    kernel::{self, DropReasons},
    metrics::Metrics,
    netstat,
    outages::{self, OutageTracker},
    output,
    peers::PeerTable,
    preflight,
    reaper::Reaper,
    record::Recorder,
    tracer::{
        self, AttachMode, AttachPolicy, DropProbe, LoaderBtf, PawsKprobes, Tracer, TracerConfig,
    },
};

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Show only this underlay peer (repeatable; IPv4 or IPv6). Other peers
    /// are still counted and summed under "other_peers".
    #[arg(long = "peer", value_name = "ADDR", value_parser = parse_peer)]
    pub peers: Vec<IpAddr>,

    /// Time between screen updates / interval lines (e.g. 1s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_interval)]
    pub interval: Duration,

    /// Run this long, print the summary and exit 0 (default: until Ctrl-C
    /// or SIGTERM, which also print the summary).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// NDJSON on stdout: an "attached" line, one "interval" line per
    /// interval and one "summary" line at exit.
    #[arg(long)]
    pub json: bool,

    /// Underlay device to attach to (repeatable). Default: the underlay of
    /// each VXLAN device (its `dev`, or the owner of its local address).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,

    /// VXLAN device to watch (repeatable). Default: every VXLAN device in
    /// this network namespace, found by kind.
    #[arg(long = "vxlan-dev", value_name = "DEV")]
    pub vxlan_devs: Vec<String>,

    /// UDP port carrying VXLAN (repeatable; default: the watched devices'
    /// dstport, e.g. 8472 for flannel, 4789 IANA).
    #[arg(long = "port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// PAWS kprobes (tcp_validate_incoming, tcp_timewait_state_process):
    /// `auto` uses them where the kernel's drops carry no PAWS reasons.
    #[arg(long, value_enum, default_value = "auto")]
    pub paws_kprobes: PawsKprobes,

    /// Silence from a peer (no rx) while sending to it for longer than this
    /// is an outage.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub outage_threshold: Duration,

    /// A peer is one-way when it was sent to and nothing came back for
    /// this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub one_way_window: Duration,

    /// Append the NDJSON lines (header, intervals, events, summary) to
    /// FILE, synced every interval, rotated by size.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// Rotate the recording at this size (e.g. 64M, 1G).
    #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = parse_size)]
    pub record_max_size: u64,

    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9478; a bare port
    /// binds loopback).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Rotated recording files kept (FILE.1 .. FILE.N).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub record_keep: usize,

    /// A SYN without SYN-ACK for this long counts as unanswered.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub syn_timeout: Duration,

    /// Kernel BTF to read struct offsets and drop-reason names from
    /// (default /sys/kernel/btf/vmlinux; `none`: behave as on a kernel
    /// without BTF: drops counted by reason, not attributed to peers).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,

    /// Network namespaces whose kernel drops count: `all` (default; on a
    /// node the pods live in their own), `self` (the one vxtrace runs in),
    /// or names (`ip netns`) / paths, comma-separated or repeated.
    #[arg(long = "netns", value_name = "NS", value_delimiter = ',')]
    pub netns: Vec<String>,

    /// Capacity of the kernel's per-peer map (LRU beyond it; evictions are
    /// reported).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PEERS, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub max_peers: u32,

    /// How to attach the TC programs: tcx links (kernel >= 6.6), the
    /// clsact qdisc, or whichever works.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach: AttachPolicy,
}

fn parse_peer(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| {
        format!("'{s}' is not an IP address; give the peer's underlay address, e.g. 172.16.10.173 or fd00::173")
    })
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let mult = match t[i..].to_ascii_lowercase().as_str() {
                "k" | "kb" | "kib" => 1u64 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                other => return Err(format!("unknown size unit '{other}'; use K, M or G")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size; examples: 64M, 1G"))?;
    let v = n.saturating_mul(mult);
    if v < 4096 {
        return Err("the recording size limit must be at least 4K".into());
    }
    Ok(v)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration ({e}); examples: 30s, 5m, 1h"))?;
    if d.is_zero() {
        return Err("the duration must be above zero".into());
    }
    Ok(d)
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(100) {
        return Err(format!("interval {s} is too short; use 100ms or more"));
    }
    Ok(d)
}

/// What to attach to, decided from the flags and what netlink showed.
#[derive(Debug)]
pub struct Plan {
    pub vxlan: Vec<VxlanDevice>,
    pub underlays: Vec<String>,
    pub ports: Vec<u16>,
    pub local_addrs: Vec<IpAddr>,
    pub gbp: bool,
    pub filter_vni: bool,
    pub notes: Vec<String>,
}

pub fn plan(args: &WatchArgs, snap: &Snapshot) -> Result<Plan> {
    let all = snap.vxlan_devices();
    let mut notes = Vec::new();
    let vxlan: Vec<VxlanDevice> = if args.vxlan_devs.is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for name in &args.vxlan_devs {
            match all.iter().find(|d| &d.name == name) {
                Some(d) => chosen.push(d.clone()),
                None if snap.link_by_name(name).is_some() => bail!(
                    "device {name} is not a VXLAN device; `ip -d link show type vxlan` lists the VXLAN devices here"
                ),
                None => bail!(
                    "device {name} does not exist in this network namespace; `ip -d link show type vxlan` lists the VXLAN devices here (for a node's namespace use `ip netns exec NS vxtrace ...`)"
                ),
            }
        }
        chosen
    };
    if vxlan.is_empty() && args.ifaces.is_empty() {
        bail!(
            "no VXLAN device in this network namespace; run vxtrace where the overlay is (on the node, or `ip netns exec NS vxtrace ...`), name one with --vxlan-dev, or watch an underlay device with --iface and --port"
        );
    }

    let mut underlays: Vec<String> = Vec::new();
    if !args.ifaces.is_empty() {
        for name in &args.ifaces {
            let Some(link) = snap.link_by_name(name) else {
                bail!(
                    "underlay device {name} does not exist in this network namespace; `ip link` lists the devices here"
                );
            };
            if link.kind.as_deref() == Some("vxlan") {
                bail!(
                    "{name} is a VXLAN device; --iface takes the underlay device (use --vxlan-dev for {name})"
                );
            }
            underlays.push(name.clone());
        }
    } else {
        for dev in &vxlan {
            let by_link = dev
                .link_ifindex
                .and_then(|i| snap.links.get(&i))
                .map(|l| l.name.clone());
            let by_local = dev
                .local
                .as_ref()
                .and_then(|a| snap.owner_of(a))
                .map(|l| l.name.clone());
            match by_link.or(by_local) {
                Some(name) => underlays.push(name),
                None => {
                    // No `dev` and no `local`: the kernel routes by
                    // destination, so any device with an address may carry it.
                    let candidates: Vec<String> = snap
                        .links
                        .values()
                        .filter(|l| {
                            l.up && !l.loopback
                                && l.kind.as_deref() != Some("vxlan")
                                && snap.addrs.get(&l.ifindex).is_some_and(|a| !a.is_empty())
                        })
                        .map(|l| l.name.clone())
                        .collect();
                    if candidates.is_empty() {
                        bail!(
                            "cannot tell which device carries {}'s encapsulated traffic (no `dev`, no `local`, no device with an address); pass --iface",
                            dev.name
                        );
                    }
                    notes.push(format!(
                        "{} names no underlay device; watching every device with an address: {}",
                        dev.name,
                        candidates.join(", ")
                    ));
                    underlays.extend(candidates);
                }
            }
        }
    }
    let underlays: Vec<String> = underlays
        .into_iter()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let ports: Vec<u16> = if args.ports.is_empty() {
        let p: BTreeSet<u16> = vxlan.iter().map(|d| d.port).collect();
        if p.is_empty() {
            bail!(
                "no VXLAN device to take the port from; pass --port (8472 for flannel, 4789 IANA)"
            );
        }
        p.into_iter().collect()
    } else {
        args.ports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };

    for d in &vxlan {
        if !ports.contains(&d.port) {
            notes.push(format!(
                "{} uses UDP port {} which is not watched (--port {}): its packets are not counted at the underlay device",
                d.name,
                d.port,
                ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
            ));
        }
    }

    // The local filter only holds when every watched device names its
    // local address; otherwise any address of this host may be the VTEP.
    let local_addrs =
        if !vxlan.is_empty() && args.ifaces.is_empty() && vxlan.iter().all(|d| d.local.is_some()) {
            vxlan
                .iter()
                .filter_map(|d| d.local)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            Vec::new()
        };
    let filter_vni = !vxlan.is_empty() && vxlan.iter().all(|d| d.vni.is_some());
    let gbp = vxlan.iter().any(|d| d.gbp);
    if vxlan.is_empty() {
        notes.push(
            "no VXLAN device watched: rx_decap and tx_dev are not measured, any VNI counts".into(),
        );
    }
    Ok(Plan {
        vxlan,
        underlays,
        ports,
        local_addrs,
        gbp,
        filter_vni,
        notes,
    })
}

fn describe_devices(plan: &Plan) -> String {
    let mut parts: Vec<String> = plan
        .vxlan
        .iter()
        .map(|d| {
            format!(
                "{} (vni {}, udp {}, local {})",
                d.name,
                d.vni.map(|v| v.to_string()).unwrap_or_else(|| "any".into()),
                d.port,
                d.local
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "any".into())
            )
        })
        .collect();
    parts.push(format!("underlay {}", plan.underlays.join(", ")));
    parts.join(" · ")
}

/// Seeds the MAC-to-peer map from the watched devices' FDB entries.
fn seed_fdb(tracer: &mut Tracer, plan: &Plan, snap: &Snapshot) -> Result<usize> {
    let mut n = 0;
    for entry in &snap.fdb {
        let Some(dev) = plan.vxlan.iter().find(|d| d.ifindex == entry.ifindex) else {
            continue;
        };
        if is_group_mac(&entry.mac) {
            continue;
        }
        let vni = entry.vni.or(dev.vni).unwrap_or(0);
        tracer.seed_mac(vni, entry.mac, &entry.dst)?;
        n += 1;
    }
    let watched = |i: u32| plan.vxlan.iter().any(|d| d.ifindex == i);
    for (ifindex, addr, peer) in snap.vtep_addrs() {
        if watched(ifindex) {
            tracer.seed_vtep_addr(&addr, &peer)?;
        }
    }
    for (ifindex, net, len, peer) in snap.pod_subnets() {
        if watched(ifindex) {
            tracer.seed_pod_subnet(&net, len, &peer)?;
        }
    }
    Ok(n)
}

enum Mode {
    Json,
    Screen,
    Plain,
}

/// What the running kernel offers the drop program.
pub struct KernelInfo {
    pub btf_path: Option<PathBuf>,
    pub offsets: KernelOffsets,
    pub reasons: DropReasons,
    pub raw_tp_has_reason: bool,
    pub raw_tp_has_rx_sk: bool,
    pub notes: Vec<String>,
}

const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Reason names the hints rely on.
const EXPECTED_REASONS: [&str; 3] = ["NETFILTER_DROP", "OTHERHOST", "NO_SOCKET"];

pub fn kernel_info(btf_arg: Option<&Path>) -> Result<KernelInfo> {
    let mut notes = Vec::new();
    let btf_path = match btf_arg {
        Some(p) if p.as_os_str() == "none" => {
            notes
                .push("--btf none: drops are counted by reason but not attributed to peers".into());
            None
        }
        Some(p) => {
            preflight::check_btf(p)?;
            Some(p.to_path_buf())
        }
        None if Path::new(DEFAULT_BTF).exists() => Some(PathBuf::from(DEFAULT_BTF)),
        None => {
            notes.push(format!(
                "no kernel BTF at {DEFAULT_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF): drops are counted by reason but not attributed to peers; pass --btf FILE if you have one"
            ));
            None
        }
    };
    let format = kernel::kfree_skb_format();
    let mut offsets = KernelOffsets::none();
    let mut reasons = None;
    let mut raw_tp_has_reason = None;
    let mut raw_tp_has_rx_sk = None;
    if let Some(path) = &btf_path {
        // Parse from memory: the file backend reads in many small pieces.
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading kernel BTF from {}", path.display()))?;
        let btf = btf_rs::Btf::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("parsing kernel BTF from {}", path.display()))?;
        match kernel::skb_offsets(&btf) {
            Ok(o) => offsets = o,
            Err(e) => notes.push(format!(
                "cannot resolve sk_buff offsets from BTF ({e:#}): drops are not attributed to peers"
            )),
        }
        match DropReasons::from_btf(&btf) {
            Ok(r) => reasons = Some(r),
            Err(e) => notes.push(format!("{e:#}; trying tracefs for reason names")),
        }
        raw_tp_has_reason = kernel::raw_tp_has_reason(&btf);
        raw_tp_has_rx_sk = kernel::raw_tp_has_rx_sk(&btf);
    }
    if let Some(f) = &format {
        let (skb, loc, reason, rx_sk) = kernel::tracepoint_fields(f);
        offsets.tp_skbaddr = skb;
        offsets.tp_location = loc;
        offsets.tp_reason = reason;
        offsets.tp_rx_sk = rx_sk;
        if raw_tp_has_rx_sk.is_none() {
            raw_tp_has_rx_sk = Some(rx_sk != vxtrace_common::NO_FIELD);
        }
        if raw_tp_has_reason.is_none() {
            raw_tp_has_reason = Some(reason != vxtrace_common::NO_FIELD);
        }
        if reasons.is_none() {
            reasons = DropReasons::from_format(f).ok();
        }
    }
    let reasons = reasons.unwrap_or_else(|| {
        notes.push(
            "drop-reason names unavailable (no skb_drop_reason in BTF, no tracefs): reasons are shown by number".into(),
        );
        DropReasons {
            source: "none",
            ..Default::default()
        }
    });
    if reasons.source != "none" {
        let missing = reasons.missing(&EXPECTED_REASONS);
        if !missing.is_empty() {
            notes.push(format!(
                "this kernel defines no drop reason {}: hints that rely on it are unavailable; drops are still counted by reason number",
                missing.join(", ")
            ));
        }
    }
    Ok(KernelInfo {
        btf_path,
        offsets,
        reasons,
        raw_tp_has_reason: raw_tp_has_reason.unwrap_or(false),
        raw_tp_has_rx_sk: raw_tp_has_rx_sk.unwrap_or(false),
        notes,
    })
}

/// Inode numbers of the namespaces named by --netns; `None` means all.
pub fn resolve_netns(specs: &[String]) -> Result<Option<Vec<u32>>> {
    if specs.is_empty() || specs.iter().any(|s| s == "all") {
        return Ok(None);
    }
    let mut out = Vec::new();
    for spec in specs {
        let path = if spec == "self" {
            PathBuf::from("/proc/self/ns/net")
        } else if spec.contains('/') {
            PathBuf::from(spec)
        } else {
            Path::new("/run/netns").join(spec)
        };
        let meta = std::fs::metadata(&path).with_context(|| {
            format!(
                "network namespace {spec} not found ({}); `ip netns list` shows the named ones, or give a path such as /proc/PID/ns/net",
                path.display()
            )
        })?;
        out.push(std::os::unix::fs::MetadataExt::ino(&meta) as u32);
    }
    Ok(Some(out))
}

pub fn run(args: WatchArgs) -> Result<()> {
    preflight::check_capabilities()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: WatchArgs) -> Result<()> {
    // /proc/kallsyms is checked in the background (only needed to name drop
    // locations; joined after counting has started). The two parses of the
    // kernel BTF run one after the other: together they would double the
    // peak memory for a few hundred milliseconds saved.
    let syms_loader = std::thread::spawn(kernel::Kallsyms::load);
    let launched = Instant::now();
    let phase = |what: &str| log::debug!("start-up: {what} at {:?}", launched.elapsed());
    let kinfo = kernel_info(args.btf.as_deref())?;
    phase("kernel info (BTF offsets, reason names)");
    // The running kernel's BTF is parsed by the loader itself; only a
    // BTF file given with --btf needs a parse of its own.
    let aya_btf = {
        let path = match args.btf.as_deref() {
            Some(p) if p.as_os_str() != "none" && p != Path::new(DEFAULT_BTF) => {
                Some(p.to_path_buf())
            }
            _ => None,
        };
        std::thread::spawn(move || {
            path.map(|p| {
                aya::Btf::parse_file(&p, aya::Endianness::default())
                    .with_context(|| format!("reading kernel BTF from {}", p.display()))
            })
        })
    };
    let mut netns_scope = resolve_netns(&args.netns)?;
    let mut snap = discovery::snapshot().await?;
    let mut plan = plan(&args, &snap)?;
    phase("netlink discovery");
    plan.notes.extend(kinfo.notes.iter().cloned());
    if netns_scope.is_some() && kinfo.offsets.valid == 0 {
        // The namespace of a dropped skb is read through BTF offsets.
        plan.notes.push(
            "--netns needs the kernel's BTF to tell namespaces apart: counting drops of all namespaces".into(),
        );
        netns_scope = None;
    }
    let btf = match aya_btf.join() {
        Ok(Some(b)) if kinfo.btf_path.is_some() => LoaderBtf::File(b?),
        Ok(_) if kinfo.btf_path.is_some() => LoaderBtf::Running,
        Ok(_) => LoaderBtf::None,
        Err(_) => bail!("parsing the kernel BTF panicked"),
    };
    phase("aya BTF");
    // The static checks of `vxtrace doctor`, once at start.
    let doctor_findings = if plan.vxlan.is_empty() {
        Vec::new()
    } else {
        doctor::check_snapshot(&snap, &plan.vxlan).0
    };
    phase("doctor checks");
    for f in &doctor_findings {
        eprintln!(
            "vxtrace: warning: [{}] {} ({}): {}",
            f.severity, f.check, f.device, f.message
        );
    }
    let cfg = TracerConfig {
        ports: plan.ports.clone(),
        local_addrs: plan.local_addrs.clone(),
        gbp: plan.gbp,
        filter_vni: plan.filter_vni,
        max_peers: args.max_peers,
        max_macs: DEFAULT_MAX_MACS.max(args.max_peers * 4),
        offsets: kinfo.offsets,
        netns_scope_all: netns_scope.is_none(),
        raw_tp_has_reason: kinfo.raw_tp_has_reason,
        raw_tp_has_rx_sk: kinfo.raw_tp_has_rx_sk,
    };
    let mut tracer = Tracer::load(&cfg, &btf, args.attach)?;
    // The parsed BTF is tens of MiB and only needed to load.
    drop(btf);
    release_free_memory();
    phase("programs loaded");
    if let Some(inums) = &netns_scope {
        tracer.set_netns_scope(inums)?;
    }
    // Register devices and MACs before the first packet is counted.
    for dev in &plan.vxlan {
        tracer
            .attach_vxlan(dev)
            .with_context(|| format!("attaching to VXLAN device {}", dev.name))?;
    }
    let seeded = seed_fdb(&mut tracer, &plan, &snap)?;
    log::info!(
        "seeded {seeded} MAC-to-peer entries from the FDB ({} FDB entries seen)",
        snap.fdb.len()
    );
    for iface in &plan.underlays {
        tracer
            .attach_underlay(iface)
            .with_context(|| format!("attaching to underlay device {iface}"))?;
    }
    phase("TC programs attached");
    let drop_probe = tracer.attach_drops();
    phase("drop program attached");
    let paws_probes = tracer.attach_paws_kprobes(args.paws_kprobes, |r| kinfo.reasons.has(r));
    phase("drop and PAWS probes");
    for p in &paws_probes {
        if p.status != "attached" && args.paws_kprobes == PawsKprobes::Always {
            plan.notes
                .push(format!("{} on {}: {}", p.program, p.target, p.status));
        }
    }
    if drop_probe.attached == "none" {
        plan.notes.push(format!(
            "kernel drops are not counted: {}",
            drop_probe.skipped.join("; ")
        ));
    }
    let mut reaper = None;
    watch_clsact_filters(&mut reaper, &tracer)?;

    let mode = if args.json {
        Mode::Json
    } else if std::io::stdout().is_terminal() {
        Mode::Screen
    } else {
        Mode::Plain
    };
    let devices = describe_devices(&plan);
    let modes: BTreeSet<&str> = tracer
        .attachments
        .iter()
        .map(|a| match a.mode {
            AttachMode::Tcx => "tcx",
            AttachMode::Clsact => "clsact",
        })
        .collect();
    let attach_summary = format!(
        "{} programs ({})",
        tracer.attachments.len(),
        modes.into_iter().collect::<Vec<_>>().join(", ")
    );
    for note in &plan.notes {
        eprintln!("vxtrace: note: {note}");
    }
    for a in &tracer.attachments {
        eprintln!("vxtrace: attached {a}");
    }
    // What the kernel offered for drops and PAWS, and what was left out.
    eprintln!(
        "vxtrace: drops: {} skb:kfree_skb (reason names: {})",
        drop_probe.attached, kinfo.reasons.source
    );
    for s in &drop_probe.skipped {
        eprintln!("vxtrace: drops: {s}");
    }
    for p in &paws_probes {
        eprintln!(
            "vxtrace: PAWS kprobe {} on {}: {}",
            p.program, p.target, p.status
        );
    }
    let stdout = std::io::stdout();
    let mut recorder = match &args.record {
        Some(path) => Some(Recorder::open(
            path,
            args.record_max_size,
            args.record_keep,
            record_header(&plan, &doctor_findings),
        )?),
        None => None,
    };
    let mut metrics = match &args.metrics {
        Some(addr) => {
            let (m, bound) = Metrics::serve(addr)?;
            eprintln!("vxtrace: Prometheus metrics on http://{bound}/metrics");
            plan.notes
                .push(format!("Prometheus metrics on http://{bound}/metrics"));
            Some(m)
        }
        None => None,
    };
    let mut tracker = OutageTracker::new(
        args.outage_threshold.as_secs_f64(),
        args.one_way_window.as_secs_f64(),
        unix_now(),
        (args.max_peers as usize) * 2,
    );
    let mut recent_events: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    {
        let line = json!({
            "type": "attached",
            "devices": plan.vxlan,
            "underlays": plan.underlays,
            "ports": plan.ports,
            "attached": tracer.attachments,
            "probes": {"drops": &drop_probe, "paws_kprobes": &paws_probes, "reason_names": kinfo.reasons.source},
            "netns": netns_scope_json(&netns_scope),
            "doctor": &doctor_findings,
            "notes": plan.notes,
        });
        if let Mode::Json = mode {
            emit(&stdout, &line)?;
        }
        if let Some(r) = recorder.as_mut() {
            r.write(&line)?;
            r.flush()?;
        }
    }

    let syms = match syms_loader.join() {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            eprintln!("vxtrace: note: {e:#}");
            None
        }
        Err(_) => None,
    };
    let netstat_ns = netstat_scope(&args.netns);
    let netstat_start = read_netstat(&netstat_ns);
    let start = Instant::now();
    let interval = args.interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut table = PeerTable::new((args.max_peers as usize) * 2);
    table.select(args.peers.iter().map(discovery::peer_key));
    let mut drop_table = DropTable::new(65_536);
    if !kinfo.raw_tp_has_reason {
        drop_table.infer_reasons_from_locations();
    }
    // A PAWS kprobe attached where the kernel also names the reason
    // (`--paws-kprobes always`) counts the same segments: keep one.
    for p in paws_probes.iter().filter(|p| p.status == "attached") {
        if let Some(id) = tracer::PAWS_KPROBES
            .iter()
            .find(|(prog, _, _)| *prog == p.program)
            .and_then(|(_, _, reason)| kinfo.reasons.id(reason))
        {
            drop_table.supersede(id);
        }
    }
    let mut global;
    let mut last_tick = Instant::now();
    let mut last_fdb_refresh = Instant::now();
    let mut known_ifindex: HashMap<String, Option<u32>> = plan
        .vxlan
        .iter()
        .map(|d| (d.name.clone(), Some(d.ifindex)))
        .chain(
            plan.underlays
                .iter()
                .map(|u| (u.clone(), snap.link_by_name(u).map(|l| l.ifindex))),
        )
        .collect();

    loop {
        let sleep_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {
                let now = Instant::now();
                let seconds = now.duration_since(last_tick).as_secs_f64();
                last_tick = now;
                tracer.drain_logs();
                track_handshakes(&mut tracer, &mut table, args.syn_timeout, metrics.as_ref());
                let read_started = Instant::now();
                let readout = tracer.read()?;
                let read_ms = read_started.elapsed().as_secs_f64() * 1000.0;
                global = readout.global;
                table.update(&readout, seconds);
                drop_table.update(&readout.drops, syms.as_ref());
                let drop_deltas = drop_table.interval_deltas(&kinfo.reasons);
                let elapsed = start.elapsed().as_secs_f64();
                let events = tracker.update(
                    elapsed,
                    seconds,
                    table.peers.iter().map(|(k, p)| {
                        let packets = p.last_packets();
                        (*k, p.addr, packets.tx_encap, packets.rx_nic)
                    }),
                );
                let mut interval_line = interval_json(elapsed, seconds, &table, &args.peers, &drop_deltas);
                // vxtrace's own cost: reading every map once.
                interval_line["self"] = json!({"read_ms": round3(read_ms), "peers_known": table.peers.len()});
                if let Some(m) = metrics.as_mut() {
                    for (key, p) in &table.peers {
                        let addr = p.addr.to_string();
                        m.add_peer(&addr, &p.last_delta(), p.unanswered_syn());
                        m.set_one_way(&addr, tracker.one_way_now(key));
                    }
                    for (peer, by_reason) in &drop_deltas {
                        m.add_drops(peer, by_reason);
                    }
                    for e in &events {
                        if let outages::Event::OutageStart(o) = e {
                            m.outage(&o.peer.to_string());
                        }
                    }
                }
                if let Some(r) = recorder.as_mut() {
                    r.write(&interval_line)?;
                    for e in &events {
                        r.write(&e.json())?;
                    }
                    r.flush()?;
                }
                for e in &events {
                    let v = e.json();
                    match mode {
                        Mode::Json => emit(&stdout, &v)?,
                        Mode::Plain => println!("event: {v}"),
                        Mode::Screen => {
                            recent_events.push_back(v.to_string());
                            if recent_events.len() > 5 {
                                recent_events.pop_front();
                            }
                        }
                    }
                }
                match mode {
                    Mode::Json => emit(&stdout, &interval_line)?,
                    Mode::Screen => {
                        let header = output::ScreenHeader {
                            elapsed_s: elapsed,
                            interval_s: seconds,
                            devices: &devices,
                            attach_summary: &attach_summary,
                        };
                        let drops = drop_table.by_peer(&kinfo.reasons, syms.as_ref());
                        let mut screen = output::render_screen(&header, &table, &args.peers, &global, &drops);
                        for key in table.peers.keys() {
                            if let Some(o) = tracker.open(key) {
                                screen.push_str(&format!(
                                    "\nOUTAGE {}: silent since {:.1}s ago, {} packets sent into the silence{}",
                                    o.peer,
                                    unix_now() - o.start,
                                    o.sent_into_silence,
                                    if o.silent_together.is_empty() { String::new() } else {
                                        format!(", together with {}", o.silent_together.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "))
                                    }
                                ));
                            }
                        }
                        if !recent_events.is_empty() {
                            screen.push_str("\n\nrecent events:\n");
                            for e in &recent_events {
                                screen.push_str(e);
                                screen.push('\n');
                            }
                        }
                        let mut out = stdout.lock();
                        let _ = write!(out, "\x1b[H\x1b[2J{screen}");
                        let _ = out.flush();
                    }
                    Mode::Plain => {
                        let mut out = stdout.lock();
                        let _ = write!(out, "{}", output::plain_lines(elapsed, seconds, &table, &args.peers));
                        let _ = out.flush();
                    }
                }
                // New peers join the FDB while we run; keep attribution current.
                // Devices that went away and came back (a flannel restart),
                // and new FDB entries: look at netlink about once a second.
                if last_fdb_refresh.elapsed() >= Duration::from_millis(900) {
                    last_fdb_refresh = Instant::now();
                    match discovery::snapshot().await {
                        Ok(fresh) => {
                            for ev in reattach(&mut tracer, &mut plan, &fresh, &mut known_ifindex) {
                                eprintln!("vxtrace: {}", ev["message"].as_str().unwrap_or(""));
                                if let Mode::Json = mode {
                                    emit(&stdout, &ev)?;
                                }
                                if let Some(r) = recorder.as_mut() {
                                    r.write(&ev)?;
                                    r.flush()?;
                                }
                            }
                            // Filters of re-attached devices must be cleaned
                            // up after a SIGKILL too.
                            watch_clsact_filters(&mut reaper, &tracer)?;
                            let _ = seed_fdb(&mut tracer, &plan, &fresh);
                            snap = fresh;
                        }
                        Err(e) => log::warn!("refreshing the FDB failed: {e:#}"),
                    }
                }
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
            }
            _ = sleep_deadline => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Fold in what was counted since the last tick; a short remainder
    // adds to the totals but not to the rate histograms.
    let seconds = last_tick.elapsed().as_secs_f64();
    track_handshakes(&mut tracer, &mut table, args.syn_timeout, metrics.as_ref());
    let readout = tracer.read()?;
    global = readout.global;
    let record = if seconds >= interval.as_secs_f64() / 2.0 {
        seconds
    } else {
        0.0
    };
    table.update(&readout, record);
    drop_table.update(&readout.drops, syms.as_ref());
    let drops = drop_table.by_peer(&kinfo.reasons, syms.as_ref());
    let duration_s = start.elapsed().as_secs_f64();
    let peer_map = json!({
        "capacity": tracer.max_peers,
        "entries": table.kernel_entries,
        "inserted": global.peers_inserted,
        "evictions": global.peers_inserted.saturating_sub(table.kernel_entries as u64),
        "insert_failed": global.peer_insert_failed,
    });
    let ctx = SummaryContext {
        duration_s,
        interval,
        table: &table,
        selected: &args.peers,
        global: &global,
        peer_map,
        tracer: &tracer,
        plan: &plan,
        drops: &drops,
        drop_probe: &drop_probe,
    };
    let mut summary = summary_json(&ctx);
    summary["doctor"] = json!(doctor_findings);
    if let Some(peers) = summary["peers"].as_object_mut() {
        for (addr, v) in peers.iter_mut() {
            if let Ok(a) = addr.parse::<IpAddr>() {
                let o = tracker.peer_json(&discovery::peer_key(&a));
                for k in [
                    "outages",
                    "outages_total",
                    "one_way",
                    "one_way_now",
                    "longest_silence_s",
                    "rx_silences_ms",
                ] {
                    v[k] = o[k].clone();
                }
            }
        }
    }
    add_conntrack(&mut summary, &snap);
    summary["probes"]["paws_kprobes"] = json!(paws_probes);
    summary["netstat_paws"] = netstat_json(&netstat_start, &read_netstat(&netstat_ns));
    // Detach before printing: nothing of ours stays in the kernel a moment
    // longer than needed.
    drop(tracer);
    if let Some(r) = reaper {
        r.finish();
    }
    if let Some(r) = recorder.as_mut() {
        r.write(&summary)?;
        r.flush()?;
    }
    match mode {
        Mode::Json => emit(&stdout, &summary)?,
        Mode::Screen | Mode::Plain => {
            let header = output::ScreenHeader {
                elapsed_s: duration_s,
                interval_s: interval.as_secs_f64(),
                devices: &devices,
                attach_summary: &attach_summary,
            };
            let mut out = stdout.lock();
            let _ = writeln!(out, "\n=== summary over {duration_s:.1}s ===");
            let _ = write!(
                out,
                "{}",
                output::render_screen(&header, &table, &args.peers, &global, &drops)
            );
            let _ = out.flush();
        }
    }
    Ok(())
}

/// Re-attaches to watched devices that were deleted and created again
/// (new ifindex), and reports devices that disappeared. Returns events.
fn reattach(
    tracer: &mut Tracer,
    plan: &mut Plan,
    snap: &Snapshot,
    known: &mut HashMap<String, Option<u32>>,
) -> Vec<Value> {
    let mut events = Vec::new();
    let current = snap.vxlan_devices();
    for dev in plan.vxlan.iter_mut() {
        let was = known.get(&dev.name).copied().flatten();
        match current.iter().find(|d| d.name == dev.name) {
            Some(d) if Some(d.ifindex) != was => match tracer.attach_vxlan(d) {
                Ok(()) => {
                    events.push(json!({"type": "device_reattached", "device": d.name, "ifindex": d.ifindex,
                        "message": format!("VXLAN device {} is back (ifindex {}): re-attached", d.name, d.ifindex)}));
                    known.insert(dev.name.clone(), Some(d.ifindex));
                    *dev = d.clone();
                }
                Err(e) => events.push(json!({"type": "device_error", "device": d.name,
                    "message": format!("re-attaching to {} failed: {e:#}", d.name)})),
            },
            None if was.is_some() => {
                known.insert(dev.name.clone(), None);
                events.push(json!({"type": "device_gone", "device": dev.name,
                    "message": format!("VXLAN device {} disappeared; waiting for it to come back", dev.name)}));
            }
            _ => {}
        }
    }
    for name in plan.underlays.clone() {
        let was = known.get(&name).copied().flatten();
        match snap.link_by_name(&name) {
            Some(l) if Some(l.ifindex) != was => match tracer.attach_underlay(&name) {
                Ok(()) => {
                    known.insert(name.clone(), Some(l.ifindex));
                    events.push(json!({"type": "device_reattached", "device": name, "ifindex": l.ifindex,
                        "message": format!("underlay device {name} is back (ifindex {}): re-attached", l.ifindex)}));
                }
                Err(e) => events.push(json!({"type": "device_error", "device": name,
                    "message": format!("re-attaching to {name} failed: {e:#}")})),
            },
            None if was.is_some() => {
                known.insert(name.clone(), None);
                events.push(json!({"type": "device_gone", "device": name,
                    "message": format!("underlay device {name} disappeared; waiting for it to come back")}));
            }
            _ => {}
        }
    }
    events
}

/// The first line of every recording file: what produced it, where.
fn record_header(plan: &Plan, doctor: &[doctor::Finding]) -> Value {
    let uname = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "type": "header",
        "version": env!("CARGO_PKG_VERSION"),
        "command_line": std::env::args().collect::<Vec<_>>(),
        "kernel": uname("osrelease"),
        "host": uname("hostname"),
        "started": unix_now(),
        "devices": plan.vxlan,
        "underlays": plan.underlays,
        "ports": plan.ports,
        "doctor": doctor,
    })
}

/// Conntrack's half-open TCP flows, per peer (the peer that owns the
/// remote end: the server of a SYN_SENT flow, the client of a SYN_RECV one).
fn add_conntrack(summary: &mut Value, snap: &Snapshot) {
    let flows = match conntrack::tcp_flows() {
        Ok(f) => f,
        Err(e) => {
            summary["conntrack"] = json!({"available": false, "error": format!("{e:#}")});
            return;
        }
    };
    let owners = snap.inner_owners();
    let mut per_peer: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
    for f in &flows {
        if f.syn_sent()
            && let Some(p) = owners.owner(&f.dst)
        {
            per_peer.entry(p).or_default().0 += 1;
        } else if f.syn_recv()
            && let Some(p) = owners.owner(&f.src)
        {
            per_peer.entry(p).or_default().1 += 1;
        }
    }
    summary["conntrack"] = json!({"available": true, "tcp_flows": flows.len()});
    let Some(peers) = summary["peers"].as_object_mut() else {
        return;
    };
    for (addr, v) in peers.iter_mut() {
        let (sent, recv) = addr
            .parse::<IpAddr>()
            .ok()
            .and_then(|a| per_peer.get(&a).copied())
            .unwrap_or((0, 0));
        v["tcp"]["conntrack_syn_sent"] = json!(sent);
        v["tcp"]["conntrack_syn_recv"] = json!(recv);
    }
}

/// Folds completed and expired handshakes into the peer table.
fn track_handshakes(
    tracer: &mut Tracer,
    table: &mut PeerTable,
    timeout: Duration,
    metrics: Option<&Metrics>,
) {
    for ev in tracer.drain_handshakes() {
        table.record_handshake(&ev.peer, ev.latency_ns);
        if let Some(m) = metrics {
            m.handshake(&discovery::peer_addr(&ev.peer).to_string(), ev.latency_ns);
        }
    }
    match tracer.expire_handshakes(timeout) {
        Ok(expired) => {
            for h in expired {
                table.record_unanswered(&h.peer, h.direction == vxtrace_common::HANDSHAKE_OUT);
            }
        }
        Err(e) => log::warn!("scanning open handshakes failed: {e:#}"),
    }
}

/// PAWS counters of the namespaces in scope (this one, plus named ones).
fn netstat_scope(specs: &[String]) -> Vec<Option<String>> {
    let mut v = vec![None];
    for s in specs {
        if s != "self" && s != "all" {
            v.push(Some(s.clone()));
        }
    }
    v
}

fn read_netstat(scope: &[Option<String>]) -> BTreeMap<String, BTreeMap<String, u64>> {
    scope
        .iter()
        .filter_map(|ns| {
            let label = ns.clone().unwrap_or_else(|| "self".into());
            netstat::read(ns.as_deref()).ok().map(|m| (label, m))
        })
        .collect()
}

fn netstat_json(
    start: &BTreeMap<String, BTreeMap<String, u64>>,
    now: &BTreeMap<String, BTreeMap<String, u64>>,
) -> Value {
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_ns = serde_json::Map::new();
    for (ns, counters) in now {
        let d = netstat::delta(start.get(ns).unwrap_or(&BTreeMap::new()), counters);
        for (k, v) in &d {
            *total.entry(k.clone()).or_default() += v;
        }
        per_ns.insert(ns.clone(), json!(d));
    }
    let mut v = json!(total);
    v["namespaces"] = Value::Object(per_ns);
    v
}

fn emit(stdout: &std::io::Stdout, v: &Value) -> Result<()> {
    let mut out = stdout.lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn interval_json(
    elapsed: f64,
    seconds: f64,
    table: &PeerTable,
    selected: &[IpAddr],
    drop_deltas: &HashMap<PeerKey, BTreeMap<String, u64>>,
) -> Value {
    let mut peers = serde_json::Map::new();
    for (addr, peer) in output::shown(table, selected) {
        let Some(peer) = peer else { continue };
        let drops = drop_deltas.get(&discovery::peer_key(&addr));
        let d = &peer.last_delta();
        if d.is_zero() && selected.is_empty() && drops.is_none() {
            continue;
        }
        let mut v = output::stats_json(d);
        v["pps"] = json!({
            "tx_encap": d.tx_encap.packets as f64 / seconds,
            "rx_nic": d.rx_nic.packets as f64 / seconds,
            "rx_decap": d.rx_decap.packets as f64 / seconds,
        });
        v["bps"] = json!({
            "tx_encap": d.tx_encap.bytes as f64 * 8.0 / seconds,
            "rx_nic": d.rx_nic.bytes as f64 * 8.0 / seconds,
            "rx_decap": d.rx_decap.bytes as f64 * 8.0 / seconds,
        });
        if let Some(d) = drops {
            v["drops"] = json!(d);
        }
        if peer.rx_silent_s > 0.0 {
            v["rx_silent_s"] = json!(round3(peer.rx_silent_s));
            v["sent_into_silence"] = json!(peer.sent_into_silence);
        }
        peers.insert(addr.to_string(), v);
    }
    let other = drop_deltas.get(&PeerKey::default());
    json!({
        "type": "interval",
        "ts": unix_now(),
        "elapsed_s": round3(elapsed),
        "interval_s": round3(seconds),
        "peers": peers,
        "drops_other": other.cloned().unwrap_or_default(),
    })
}

struct SummaryContext<'a> {
    duration_s: f64,
    interval: Duration,
    table: &'a PeerTable,
    selected: &'a [IpAddr],
    global: &'a GlobalStats,
    peer_map: Value,
    tracer: &'a Tracer,
    plan: &'a Plan,
    drops: &'a HashMap<PeerKey, PeerDrops>,
    drop_probe: &'a DropProbe,
}

fn netns_scope_json(scope: &Option<Vec<u32>>) -> Value {
    match scope {
        None => json!("all"),
        Some(v) => json!(v),
    }
}

fn summary_json(c: &SummaryContext<'_>) -> Value {
    let mut shown = output::shown(c.table, c.selected);
    // Peers known only from their drops (no traffic counted) still show.
    for addr in drops::drop_peers(c.drops) {
        let wanted = c.selected.is_empty() || c.selected.contains(&addr);
        if wanted && !shown.iter().any(|(a, _)| *a == addr) {
            shown.push((addr, None));
        }
    }
    let empty = PeerDrops::default();
    let mut peers = serde_json::Map::new();
    for (addr, peer) in shown {
        let d = c.drops.get(&discovery::peer_key(&addr)).unwrap_or(&empty);
        let v = match peer {
            Some(p) => output::peer_summary_json(p, d),
            None => output::empty_peer_summary_json(d),
        };
        peers.insert(addr.to_string(), v);
    }
    let other = c.drops.get(&PeerKey::default()).unwrap_or(&empty);
    let g = c.global;
    let mut out = json!({
        "type": "summary",
        "duration_s": round3(c.duration_s),
        "interval_s": c.interval.as_secs_f64(),
        "intervals": c.table.intervals,
        "peers": peers,
        "drops_other": other.json(),
        "drop_locations_other": other.locations_json(),
        "drop_map": {
            "inserted": g.drop_keys_inserted,
            "seen": g.drops_seen,
            "out_of_scope": g.drops_out_of_scope,
        },
        "unattributed": output::global_json(g),
        "peer_map": c.peer_map,
        "devices": c.plan.vxlan,
        "underlays": c.plan.underlays,
        "ports": c.plan.ports,
        "attached": c.tracer.attachments,
        "probes": {"drops": c.drop_probe},
    });
    if !c.selected.is_empty() {
        let mut others = PeerStats::default();
        let mut count = 0u64;
        for p in c.table.peers.values() {
            if !c.selected.contains(&p.addr) {
                others.merge(&p.total());
                count += 1;
            }
        }
        others.merge(&c.table.retired);
        out["other_peers"] =
            json!({"count": count + c.table.retired_count, "totals": output::stats_json(&others)});
    } else if c.table.retired_count > 0 {
        out["retired_peers"] =
            json!({"count": c.table.retired_count, "totals": output::stats_json(&c.table.retired)});
    }
    out
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| round3(d.as_secs_f64()))
        .unwrap_or(0.0)
}

/// Hands the tracer's clsact filters to the watchdog that removes them
/// after any exit, starting it at the first one.
fn watch_clsact_filters(reaper: &mut Option<Reaper>, tracer: &Tracer) -> Result<()> {
    let filters = tracer.clsact_filters();
    if filters.is_empty() {
        return Ok(());
    }
    match reaper.as_mut() {
        Some(r) => r.tell(&filters),
        None => {
            *reaper = Some(Reaper::start(&filters)?);
            Ok(())
        }
    }
}

/// Gives the memory freed after start-up (BTF parsed while loading) back to
/// the system, so a long run's resident size is what it uses.
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free heap pages; always safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
