//! `vxtrace watch`'s command line: flags, their defaults, and the parsers
//! that turn a bad value into a message saying what to give instead.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use vxtrace_common::DEFAULT_MAX_PEERS;

use crate::probes::{AttachPolicy, DropHookPolicy, PawsKprobes};

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
    #[arg(long, conflicts_with = "agent")]
    pub json: bool,

    /// Headless, for a node agent (a DaemonSet pod): metrics served
    /// (--metrics, default 0.0.0.0:9478), one log line per event and per
    /// finding that appears or clears, no screen, no interval lines.
    #[arg(long)]
    pub agent: bool,

    /// This node's name in every output (the NDJSON lines, the
    /// `vxtrace_node_info` metric); default: $NODE_NAME (the Kubernetes
    /// downward API sets it), else the host name.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

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

    /// The hook of the drop program on skb:kfree_skb: `auto` takes the
    /// BTF-typed tracepoint, else the raw one, else the classic one.
    #[arg(long, value_enum, default_value = "auto")]
    pub drop_hook: DropHookPolicy,

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

    /// Peers that get series of their own on /metrics besides the --peer
    /// ones and those with a finding: the busiest this many (once chosen,
    /// kept); every other peer is summed into peer="other_peers", so the
    /// series per node stay bounded however large the cluster.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub metrics_peers: usize,

    /// Directed links the whole cluster exports as link series on
    /// /metrics (per peer: packets sent to it and packets from it at the
    /// underlay device, what the cluster rules join into links; and, where
    /// some are lost on this host, those not delivered), whatever their
    /// traffic. The default covers every link of a mesh of 1,024 nodes;
    /// beyond, each node exports a share of its peers
    /// chosen alike on both ends of each link (a hash of the two
    /// addresses), so every node of one cluster needs the same value.
    #[arg(long, value_name = "LINKS", default_value_t = crate::sinks::metrics::DEFAULT_LINK_BUDGET)]
    pub metrics_links: usize,

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

    /// Capacity of the kernel's per-peer map, in peers seen on every
    /// online CPU (an entry per peer and CPU; LRU beyond it, evictions are
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
