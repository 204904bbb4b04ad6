//! `vxtrace watch`: discover, attach, count, show, summarise.

use std::{
    collections::BTreeSet,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use vxtrace_common::{DEFAULT_MAX_MACS, DEFAULT_MAX_PEERS, GlobalStats, PeerStats};

use crate::{
    discovery::{self, Snapshot, VxlanDevice, is_group_mac},
    output,
    peers::PeerTable,
    preflight,
    reaper::Reaper,
    tracer::{AttachMode, AttachPolicy, Tracer, TracerConfig},
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

    /// Kernel BTF to use.
    #[arg(long, value_name = "FILE", default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,

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
    Ok(n)
}

enum Mode {
    Json,
    Screen,
    Plain,
}

pub fn run(args: WatchArgs) -> Result<()> {
    preflight::check_capabilities()?;
    preflight::check_btf(&args.btf)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: WatchArgs) -> Result<()> {
    let snap = discovery::snapshot().await?;
    let plan = plan(&args, &snap)?;
    let btf = aya::Btf::parse_file(&args.btf, aya::Endianness::default())
        .with_context(|| format!("reading kernel BTF from {}", args.btf.display()))?;
    let cfg = TracerConfig {
        ports: plan.ports.clone(),
        local_addrs: plan.local_addrs.clone(),
        gbp: plan.gbp,
        filter_vni: plan.filter_vni,
        max_peers: args.max_peers,
        max_macs: DEFAULT_MAX_MACS.max(args.max_peers * 4),
    };
    let mut tracer = Tracer::load(&cfg, Some(&btf), args.attach)?;
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
    let reaper = {
        let filters = tracer.clsact_filters();
        if filters.is_empty() {
            None
        } else {
            Some(Reaper::start(&filters)?)
        }
    };

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
    let stdout = std::io::stdout();
    if let Mode::Json = mode {
        let line = json!({
            "type": "attached",
            "devices": plan.vxlan,
            "underlays": plan.underlays,
            "ports": plan.ports,
            "attached": tracer.attachments,
            "notes": plan.notes,
        });
        emit(&stdout, &line)?;
    }

    let start = Instant::now();
    let interval = args.interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut table = PeerTable::new((args.max_peers as usize) * 2);
    let mut global;
    let mut last_tick = Instant::now();
    let mut last_fdb_refresh = Instant::now();

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
                let readout = tracer.read()?;
                global = readout.global;
                table.update(&readout, seconds);
                let elapsed = start.elapsed().as_secs_f64();
                match mode {
                    Mode::Json => emit(&stdout, &interval_json(elapsed, seconds, &table, &args.peers))?,
                    Mode::Screen => {
                        let header = output::ScreenHeader {
                            elapsed_s: elapsed,
                            interval_s: seconds,
                            devices: &devices,
                            attach_summary: &attach_summary,
                        };
                        let screen = output::render_screen(&header, &table, &args.peers, &global);
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
                if last_fdb_refresh.elapsed() >= Duration::from_secs(5) {
                    last_fdb_refresh = Instant::now();
                    match discovery::snapshot().await {
                        Ok(snap) => { let _ = seed_fdb(&mut tracer, &plan, &snap); }
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
    let readout = tracer.read()?;
    global = readout.global;
    let record = if seconds >= interval.as_secs_f64() / 2.0 {
        seconds
    } else {
        0.0
    };
    table.update(&readout, record);
    let duration_s = start.elapsed().as_secs_f64();
    let peer_map = json!({
        "capacity": tracer.max_peers,
        "entries": table.kernel_entries,
        "inserted": global.peers_inserted,
        "evictions": global.peers_inserted.saturating_sub(table.kernel_entries as u64),
        "insert_failed": global.peer_insert_failed,
    });
    let summary = summary_json(
        duration_s,
        interval,
        &table,
        &args.peers,
        &global,
        peer_map,
        &tracer,
        &plan,
    );
    // Detach before printing: nothing of ours stays in the kernel a moment
    // longer than needed.
    drop(tracer);
    if let Some(r) = reaper {
        r.finish();
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
                output::render_screen(&header, &table, &args.peers, &global)
            );
            let _ = out.flush();
        }
    }
    Ok(())
}

fn emit(stdout: &std::io::Stdout, v: &Value) -> Result<()> {
    let mut out = stdout.lock();
    serde_json::to_writer(&mut out, v)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

fn interval_json(elapsed: f64, seconds: f64, table: &PeerTable, selected: &[IpAddr]) -> Value {
    let mut peers = serde_json::Map::new();
    for (addr, peer) in output::shown(table, selected) {
        let Some(peer) = peer else { continue };
        if peer.last_delta.is_zero() && selected.is_empty() {
            continue;
        }
        let d = &peer.last_delta;
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
        if peer.rx_silent_s > 0.0 {
            v["rx_silent_s"] = json!(round3(peer.rx_silent_s));
            v["sent_into_silence"] = json!(peer.sent_into_silence);
        }
        peers.insert(addr.to_string(), v);
    }
    json!({
        "type": "interval",
        "ts": unix_now(),
        "elapsed_s": round3(elapsed),
        "interval_s": round3(seconds),
        "peers": peers,
    })
}

#[allow(clippy::too_many_arguments)]
fn summary_json(
    duration_s: f64,
    interval: Duration,
    table: &PeerTable,
    selected: &[IpAddr],
    global: &GlobalStats,
    peer_map: Value,
    tracer: &Tracer,
    plan: &Plan,
) -> Value {
    let mut peers = serde_json::Map::new();
    for (addr, peer) in output::shown(table, selected) {
        let v = match peer {
            Some(p) => output::peer_summary_json(p),
            None => {
                let mut v = output::stats_json(&PeerStats::default());
                v["hints"] = json!([]);
                v
            }
        };
        peers.insert(addr.to_string(), v);
    }
    let mut out = json!({
        "type": "summary",
        "duration_s": round3(duration_s),
        "interval_s": interval.as_secs_f64(),
        "intervals": table.intervals,
        "peers": peers,
        "unattributed": output::global_json(global),
        "peer_map": peer_map,
        "devices": plan.vxlan,
        "underlays": plan.underlays,
        "ports": plan.ports,
        "attached": tracer.attachments,
    });
    if !selected.is_empty() {
        let mut others = PeerStats::default();
        let mut count = 0u64;
        for p in table.peers.values() {
            if !selected.contains(&p.addr) {
                others.merge(&p.total());
                count += 1;
            }
        }
        others.merge(&table.retired);
        out["other_peers"] =
            json!({"count": count + table.retired_count, "totals": output::stats_json(&others)});
    } else if table.retired_count > 0 {
        out["retired_peers"] =
            json!({"count": table.retired_count, "totals": output::stats_json(&table.retired)});
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
