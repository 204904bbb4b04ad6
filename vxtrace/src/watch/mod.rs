//! `vxtrace watch`, in stages:
//!
//! 1. **plan**: what the kernel offers, what netlink shows, which devices
//!    and ports to watch, the doctor's static checks;
//! 2. **load**: the kernel programs with their load-time configuration;
//! 3. **seed**: the watched devices and what is known of the peers (FDB,
//!    neighbours, routes) into the maps, so the first packet is already
//!    attributed;
//! 4. **attach**: TC programs on the VXLAN and underlay devices, the drop
//!    program, the PAWS kprobes where needed;
//! 5. **loop** (`session`): sample → fold into the tables → detect events →
//!    emit to the sinks, every interval;
//! 6. **summary**, to every sink, after detaching.

use std::{
    collections::BTreeSet,
    io::IsTerminal as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use vxtrace_common::DEFAULT_MAX_MACS;

use crate::{
    discovery::{self, Snapshot},
    doctor,
    drops::DropTable,
    kernel,
    outages::OutageTracker,
    peers::PeerTable,
    preflight,
    probes::{LoaderBtf, PawsKprobes, Tracer, TracerConfig},
    schema::{Attached, DoctorFinding, Header, Line, NetnsScope, Node, Probes, unix_now},
    sinks::{
        Sinks,
        agent::Agent,
        metrics::{Metrics, MetricsConfig},
        ndjson::Ndjson,
        plain::Plain,
        recorder::Recorder,
        screen::Screen,
    },
};

pub mod args;
mod churn;
pub mod kernel_info;
pub mod plan;
mod session;
mod summary;
pub mod tables;
mod visibility;

pub use args::WatchArgs;
use kernel_info::{DEFAULT_BTF, KernelInfo, kernel_info, resolve_netns};
pub use plan::{Plan, plan};
use session::{Session, SessionStart, hand_filters_to_watchdog};
use tables::Tables;

/// Where `--agent` serves metrics unless `--metrics` says otherwise.
pub const DEFAULT_AGENT_METRICS: &str = "0.0.0.0:9478";

pub fn run(args: WatchArgs) -> Result<()> {
    preflight::check_capabilities()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

/// What the plan stage decided.
struct Planned {
    node: Node,
    kinfo: KernelInfo,
    netns: NetnsScope,
    snap: Snapshot,
    plan: Plan,
    doctor: Vec<DoctorFinding>,
    btf: LoaderBtf,
}

async fn run_async(args: WatchArgs) -> Result<()> {
    // /proc/kallsyms is read in the background (only needed to name drop
    // locations; joined once counting has started).
    let syms_loader = std::thread::spawn(kernel::Kallsyms::load);
    let mut planned = plan_stage(&args).await?;
    let btf = std::mem::replace(&mut planned.btf, LoaderBtf::None);
    let mut tracer = load_stage(&args, &planned, btf)?;
    seed_stage(&mut tracer, &planned)?;
    let probes = attach_stage(&mut tracer, &args, &mut planned)?;
    let mut reaper = None;
    hand_filters_to_watchdog(&mut reaper, &tracer)?;
    let mut sinks = open_sinks(&args, &mut planned, &tracer)?;
    announce(&planned, &tracer, &probes);
    // The kernel's device counters now, with our programs in place: what
    // they count from here on, vxtrace should see too.
    let after_attach = match discovery::snapshot().await {
        Ok(s) => s,
        Err(e) => {
            log::warn!("reading netlink after attaching failed: {e:#}");
            discovery::Snapshot::default()
        }
    };
    let visibility = visibility::Visibility::start(&mut tracer, &planned.plan, &after_attach);
    let netstat = crate::netstat::Baseline::take(
        &args.netns,
        &planned
            .plan
            .vxlan
            .iter()
            .map(|d| d.name.clone())
            .collect::<Vec<_>>(),
    );
    sinks.attached(&Line::Attached(Box::new(Attached {
        node: Some(planned.node.clone()),
        devices: planned.plan.vxlan.clone(),
        underlays: planned.plan.underlays.clone(),
        ports: planned.plan.ports.clone(),
        mismatch_ports: recognised_mismatch_ports(&planned.plan),
        attached: tracer.attachments.clone(),
        probes: probes.clone(),
        netns: planned.netns.clone(),
        doctor: planned.doctor.clone(),
        notes: planned.plan.notes.clone(),
        blind_spots: visibility.said.clone(),
    })))?;
    let syms = match syms_loader.join() {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            eprintln!("vxtrace: note: {e:#}");
            None
        }
        Err(_) => None,
    };
    let mut tables = new_tables(&args, &planned, &probes, syms);
    tables.visibility = visibility;
    let mut session = Session::new(SessionStart {
        tracer,
        tables,
        plan: planned.plan,
        snap: planned.snap,
        reaper,
        probes,
        doctor: planned.doctor,
        node: planned.node,
        interval: args.interval,
        syn_timeout: args.syn_timeout,
        netstat,
    });
    session.run(&mut sinks, args.duration).await?;
    session.finish(&mut sinks).await
}

/// Stage 1: what the kernel offers, what netlink shows, what to watch.
/// How often an agent looks for the VXLAN device it waits for.
const OVERLAY_POLL: Duration = Duration::from_secs(2);

/// An agent may start before the overlay (a DaemonSet scheduled before
/// flannel or FRR created the VXLAN device): it waits for one, saying so
/// in the log, on /metrics and in /ready (503), instead of exiting and
/// crash-looping. Returns the first snapshot with something to watch.
async fn wait_for_overlay(args: &WatchArgs) -> Result<Snapshot> {
    let has_something = |s: &Snapshot| {
        !args.ifaces.is_empty()
            || if args.vxlan_devs.is_empty() {
                !s.vxlan_devices().is_empty()
            } else {
                args.vxlan_devs
                    .iter()
                    .all(|n| s.vxlan_devices().iter().any(|d| &d.name == n))
            }
    };
    let snap = discovery::snapshot().await?;
    if has_something(&snap) {
        return Ok(snap);
    }
    let addr = args.metrics.as_deref().unwrap_or(DEFAULT_AGENT_METRICS);
    let waiting = crate::sinks::metrics::WaitingServer::serve(addr)?;
    let wanted = if args.vxlan_devs.is_empty() {
        "a VXLAN device".to_string()
    } else {
        args.vxlan_devs.join(", ")
    };
    eprintln!(
        "vxtrace: waiting for {wanted} to appear in this network namespace (the overlay agent has not created it yet); not ready until then (metrics on {addr})"
    );
    let started = std::time::Instant::now();
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(OVERLAY_POLL) => {}
            _ = sigint.recv() => bail!("stopped while waiting for {wanted}; nothing was attached"),
            _ = sigterm.recv() => bail!("stopped while waiting for {wanted}; nothing was attached"),
        }
        let snap = discovery::snapshot().await?;
        if has_something(&snap) {
            drop(waiting);
            eprintln!(
                "vxtrace: {} appeared after {:.0} s of waiting; attaching",
                snap.vxlan_devices()
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                started.elapsed().as_secs_f64()
            );
            return Ok(snap);
        }
    }
}

async fn plan_stage(args: &WatchArgs) -> Result<Planned> {
    let kinfo = kernel_info(args.btf.as_deref())?;
    // The running kernel's BTF is parsed by the loader itself; only a
    // BTF file given with --btf needs a parse of its own, in the
    // background while netlink answers.
    let btf_file = match args.btf.as_deref() {
        Some(p) if p.as_os_str() != "none" && p != Path::new(DEFAULT_BTF) => Some(p.to_path_buf()),
        _ => None,
    };
    let aya_btf = std::thread::spawn(move || {
        btf_file.map(|p: PathBuf| {
            aya::Btf::parse_file(&p, aya::Endianness::default())
                .with_context(|| format!("reading kernel BTF from {}", p.display()))
        })
    });
    let mut netns = resolve_netns(&args.netns)?;
    let snap = if args.agent {
        wait_for_overlay(args).await?
    } else {
        discovery::snapshot().await?
    };
    let mut plan = plan(args, &snap)?;
    plan.notes.extend(kinfo.notes.iter().cloned());
    if netns.inodes().is_some() && kinfo.offsets.valid == 0 {
        // The namespace of a dropped skb is read through BTF offsets.
        plan.notes.push(
            "--netns needs the kernel's BTF to tell namespaces apart: counting drops of all namespaces".into(),
        );
        netns = NetnsScope::all();
    }
    let btf = match aya_btf.join() {
        Ok(Some(b)) if kinfo.btf_path.is_some() => LoaderBtf::File(b?),
        Ok(_) if kinfo.btf_path.is_some() => LoaderBtf::Running,
        Ok(_) => LoaderBtf::None,
        Err(_) => bail!("parsing the kernel BTF panicked"),
    };
    // The static checks of `vxtrace doctor`, once at start.
    let doctor = if plan.vxlan.is_empty() {
        Vec::new()
    } else {
        doctor::check_snapshot(&snap, &plan.vxlan).0
    };
    for f in &doctor {
        eprintln!(
            "vxtrace: warning: [{}] {} ({}): {}",
            f.severity, f.check, f.device, f.message
        );
    }
    let node = Node {
        name: args
            .node_name
            .clone()
            .unwrap_or_else(|| proc_sys("hostname")),
        vteps: plan.vteps(&snap),
    };
    Ok(Planned {
        node,
        kinfo,
        netns,
        snap,
        plan,
        doctor,
        btf,
    })
}

/// Stage 2: the kernel programs, configured, not yet attached.
fn load_stage(args: &WatchArgs, p: &Planned, btf: LoaderBtf) -> Result<Tracer> {
    let cfg = TracerConfig {
        ports: p.plan.ports.clone(),
        foreign_ports: p.plan.foreign_ports.clone(),
        reason_too_big: p.kinfo.reasons.id(crate::reasons::PKT_TOO_BIG),
        local_addrs: p.plan.local_addrs.clone(),
        gbp: p.plan.gbp,
        filter_vni: p.plan.filter_vni,
        max_peers: args.max_peers,
        max_macs: DEFAULT_MAX_MACS.max(args.max_peers * 4),
        offsets: p.kinfo.offsets,
        netns_scope_all: p.netns.inodes().is_none(),
        raw_tp_has_reason: p.kinfo.raw_tp_has_reason,
        raw_tp_has_rx_sk: p.kinfo.raw_tp_has_rx_sk,
    };
    let mut tracer = Tracer::load(&cfg, &btf, args.attach)?;
    // The parsed BTF is tens of MiB and only needed to load.
    drop(btf);
    release_free_memory();
    if let Some(inums) = p.netns.inodes() {
        tracer.set_netns_scope(inums)?;
    }
    Ok(tracer)
}

/// Stage 3: the watched devices and what is known of the peers, into the
/// maps before any program is attached.
fn seed_stage(tracer: &mut Tracer, p: &Planned) -> Result<()> {
    for dev in &p.plan.vxlan {
        tracer
            .register_vxlan(dev, &p.plan.vxlan)
            .with_context(|| format!("registering VXLAN device {}", dev.name))?;
    }
    let (seeded, _) = tracer.seed_from(&p.snap, &p.plan.vxlan)?;
    log::info!(
        "seeded {seeded} MAC-to-peer entries from the FDB ({} FDB entries seen)",
        p.snap.fdb.len()
    );
    Ok(())
}

/// Stage 4: every program onto its hook; what could not attach is noted.
fn attach_stage(tracer: &mut Tracer, args: &WatchArgs, p: &mut Planned) -> Result<Probes> {
    for dev in &p.plan.vxlan {
        tracer
            .attach_vxlan(dev, &p.plan.vxlan)
            .with_context(|| format!("attaching to VXLAN device {}", dev.name))?;
    }
    for iface in &p.plan.underlays {
        tracer
            .attach_underlay(iface)
            .with_context(|| format!("attaching to underlay device {iface}"))?;
    }
    let drops = tracer.attach_drops(args.drop_hook);
    let reasons = &p.kinfo.reasons;
    let paws = tracer.attach_paws_kprobes(args.paws_kprobes, |r| reasons.has(r));
    for k in &paws {
        if !k.status.is_attached() && args.paws_kprobes == PawsKprobes::Always {
            p.plan
                .notes
                .push(format!("{} on {}: {}", k.program, k.target, k.status));
        }
    }
    if drops.attached == crate::schema::DropHook::None {
        p.plan.notes.push(format!(
            "kernel drops are not counted: {}",
            drops.skipped.join("; ")
        ));
    }
    Ok(Probes {
        drops,
        paws_kprobes: paws,
        reason_names: Some(p.kinfo.reasons.source),
    })
}

/// The sinks the flags ask for: one for stdout, a recording, metrics.
fn open_sinks(args: &WatchArgs, p: &mut Planned, tracer: &Tracer) -> Result<Sinks> {
    let mut sinks = Sinks::default();
    let devices = p.plan.describe();
    let modes: BTreeSet<&str> = tracer.attachments.iter().map(|a| a.mode.as_str()).collect();
    let attach_summary = format!(
        "{} programs ({})",
        tracer.attachments.len(),
        modes.into_iter().collect::<Vec<_>>().join(", ")
    );
    if args.json {
        sinks.add(Ndjson::new());
    } else if args.agent {
        sinks.add(Agent::default());
    } else if std::io::stdout().is_terminal() {
        sinks.add(Screen::new(devices, attach_summary));
    } else {
        sinks.add(Plain::new(devices, attach_summary));
    }
    if let Some(path) = &args.record {
        sinks.add(Recorder::open(
            path,
            args.record_max_size,
            args.record_keep,
            record_header(&p.node, &p.plan, &p.doctor),
        )?);
    }
    // An agent always serves metrics: that is where its numbers go.
    let metrics_addr = args
        .metrics
        .clone()
        .or_else(|| args.agent.then(|| DEFAULT_AGENT_METRICS.to_string()));
    if let Some(addr) = metrics_addr {
        let (m, bound) = Metrics::serve(&MetricsConfig {
            addr,
            node: p.node.clone(),
            busiest: args.metrics_peers,
            links: args.metrics_links,
            selected: args.peers.clone(),
        })?;
        // Said with the other notes when the programs are attached.
        p.plan
            .notes
            .push(format!("Prometheus metrics on http://{bound}/metrics"));
        sinks.add(m);
    }
    Ok(sinks)
}

/// What was attached and what was left out, on stderr.
fn announce(p: &Planned, tracer: &Tracer, probes: &Probes) {
    for note in &p.plan.notes {
        eprintln!("vxtrace: note: {note}");
    }
    for a in &tracer.attachments {
        eprintln!("vxtrace: attached {a}");
    }
    eprintln!(
        "vxtrace: drops: {} skb:kfree_skb (reason names: {})",
        probes.drops.attached.as_str(),
        p.kinfo.reasons.source.as_str()
    );
    for s in &probes.drops.skipped {
        eprintln!("vxtrace: drops: {s}");
    }
    for k in &probes.paws_kprobes {
        eprintln!(
            "vxtrace: PAWS kprobe {} on {}: {}",
            k.program, k.target, k.status
        );
    }
}

/// The run's tables, empty.
fn new_tables(
    args: &WatchArgs,
    p: &Planned,
    probes: &Probes,
    syms: Option<kernel::Kallsyms>,
) -> Tables {
    let mut peers = PeerTable::new((args.max_peers as usize) * 2);
    peers.select(args.peers.iter().map(discovery::peer_key));
    let mut drops = DropTable::new(65_536);
    drops.infer_reasons_from_locations(p.kinfo.reasons.id("NOT_SPECIFIED"));
    // A PAWS kprobe attached where the kernel also names the reason
    // (`--paws-kprobes always`) counts the same segments: keep one.
    for k in probes
        .paws_kprobes
        .iter()
        .filter(|k| k.status.is_attached())
    {
        if let Some(id) = crate::probes::PAWS_KPROBES
            .iter()
            .find(|known| known.program == k.program)
            .and_then(|known| p.kinfo.reasons.id(known.reason))
        {
            drops.supersede(id);
        }
    }
    Tables {
        peers,
        drops,
        outages: OutageTracker::new(
            args.outage_threshold.as_secs_f64(),
            args.one_way_window.as_secs_f64(),
            unix_now(),
            (args.max_peers as usize) * 2,
        ),
        global: Default::default(),
        selected: args.peers.clone(),
        reasons: p.kinfo.reasons.clone(),
        syms,
        port_mismatch: Default::default(),
        too_big: Default::default(),
        local_ports: p.plan.vxlan.iter().map(|d| d.port).collect(),
        visibility: Default::default(),
        unresolved: p.snap.unresolved_subnets(),
    }
}

/// The mismatch ports the kernel programs recognise: those that fit in the
/// port slots the watched ports leave.
fn recognised_mismatch_ports(plan: &Plan) -> Vec<u16> {
    plan.foreign_ports
        .iter()
        .copied()
        .take(vxtrace_common::MAX_PORTS.saturating_sub(plan.ports.len()))
        .collect()
}

/// The first line of every recording file: what produced it, where.
fn record_header(node: &Node, plan: &Plan, doctor: &[DoctorFinding]) -> Line {
    Line::Header(Box::new(Header {
        node: Some(node.clone()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        command_line: std::env::args().collect(),
        kernel: proc_sys("osrelease"),
        host: proc_sys("hostname"),
        started: unix_now(),
        devices: plan.vxlan.clone(),
        underlays: plan.underlays.clone(),
        ports: plan.ports.clone(),
        doctor: doctor.to_vec(),
    }))
}

/// A kernel fact from /proc/sys/kernel (osrelease, hostname).
fn proc_sys(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Gives the memory freed after start-up (BTF parsed while loading) back to
/// the system, so a long run's resident size is what it uses.
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free heap pages; always safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
