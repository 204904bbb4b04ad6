//! What the running kernel says about itself: struct offsets and drop-reason
//! names from its BTF, the `skb:kfree_skb` record layout and reason table
//! from tracefs, and symbols from /proc/kallsyms. Nothing here is compiled
//! in from one kernel's headers.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use vxtrace_common::{KernelOffsets, NO_FIELD, REASON_UNKNOWN};

use crate::{reasons, schema::ReasonSource};

/// Strips typedefs, const and volatile.
fn resolve_underlying(btf: &Btf, mut t: Type) -> Result<Type> {
    loop {
        match &t {
            Type::Typedef(_)
            | Type::Const(_)
            | Type::Volatile(_)
            | Type::Restrict(_)
            | Type::TypeTag(_) => {
                let bt = t
                    .as_btf_type()
                    .ok_or_else(|| anyhow!("type without BTF info"))?;
                t = btf.resolve_chained_type(bt)?;
            }
            _ => return Ok(t),
        }
    }
}

/// Finds `name` among the members of `st`, descending into anonymous
/// structs and unions; returns its bit offset and type.
fn find_member(btf: &Btf, st: &btf_rs::Struct, name: &str) -> Result<Option<(u32, Type)>> {
    for m in &st.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            let t = btf.resolve_chained_type(m)?;
            return Ok(Some((m.bit_offset(), t)));
        }
        if mname.is_empty() {
            let inner = resolve_underlying(btf, btf.resolve_chained_type(m)?)?;
            if let Type::Struct(s) | Type::Union(s) = &inner
                && let Some((off, t)) = find_member(btf, s, name)?
            {
                return Ok(Some((m.bit_offset() + off, t)));
            }
        }
    }
    Ok(None)
}

fn struct_by_name(btf: &Btf, name: &str) -> Result<btf_rs::Struct> {
    for t in btf.resolve_types_by_name(name).unwrap_or_default() {
        if let Type::Struct(s) = t
            && !s.members.is_empty()
        {
            return Ok(s);
        }
    }
    bail!("struct {name} not in the kernel's BTF")
}

/// Byte offset of `path` (e.g. ["nd_net", "net"]) inside struct `root`.
pub fn offset_of(btf: &Btf, root: &str, path: &[&str]) -> Result<u32> {
    let mut st = struct_by_name(btf, root)?;
    let mut bits = 0u32;
    for (i, field) in path.iter().enumerate() {
        let (off, t) = find_member(btf, &st, field)?
            .ok_or_else(|| anyhow!("{root}.{} has no member {field}", path[..i].join(".")))?;
        bits += off;
        if i + 1 < path.len() {
            match resolve_underlying(btf, t)? {
                Type::Struct(s) | Type::Union(s) => st = s,
                other => bail!("{root}.{field} is a {}, not a struct", other.name()),
            }
        }
    }
    if !bits.is_multiple_of(8) {
        bail!("{root}.{} is a bitfield", path.join("."));
    }
    Ok(bits / 8)
}

/// The skb, device, netns and socket offsets the drop program reads.
pub fn skb_offsets(btf: &Btf) -> Result<KernelOffsets> {
    let mut o = KernelOffsets::none();
    o.skb_head = offset_of(btf, "sk_buff", &["head"])?;
    o.skb_network_header = offset_of(btf, "sk_buff", &["network_header"])?;
    // Only tells broadcast and multicast drops apart; without it they are
    // counted like any other.
    o.skb_mac_header = offset_of(btf, "sk_buff", &["mac_header"]).unwrap_or(NO_FIELD);
    o.skb_protocol = offset_of(btf, "sk_buff", &["protocol"])?;
    o.skb_dev = offset_of(btf, "sk_buff", &["dev"])?;
    o.skb_sk = offset_of(btf, "sk_buff", &["sk"])?;
    o.skb_len = offset_of(btf, "sk_buff", &["len"])?;
    // Kernels without network namespaces have no `net` pointer to follow;
    // the namespace is then unknown (0) and only "all" scope works.
    o.dev_nd_net = offset_of(btf, "net_device", &["nd_net", "net"]).unwrap_or(NO_FIELD);
    o.net_ns_inum = offset_of(btf, "net", &["ns", "inum"]).unwrap_or(NO_FIELD);
    o.sk_net = offset_of(btf, "sock", &["__sk_common", "skc_net", "net"]).unwrap_or(NO_FIELD);
    // Only the PAWS kprobes read these; a kernel without them just cannot
    // use that fallback.
    o.tcp_ts_recent = offset_of(btf, "tcp_sock", &["rx_opt", "ts_recent"]).unwrap_or(NO_FIELD);
    o.tcp_ts_recent_stamp =
        offset_of(btf, "tcp_sock", &["rx_opt", "ts_recent_stamp"]).unwrap_or(NO_FIELD);
    o.tw_ts_recent = offset_of(btf, "tcp_timewait_sock", &["tw_ts_recent"]).unwrap_or(NO_FIELD);
    o.tw_ts_recent_stamp =
        offset_of(btf, "tcp_timewait_sock", &["tw_ts_recent_stamp"]).unwrap_or(NO_FIELD);
    o.valid = 1;
    Ok(o)
}

/// Whether the `kfree_skb` raw tracepoint passes a reason (its prototype
/// `btf_trace_kfree_skb` has the hidden context, skb, location, reason...).
pub fn raw_tp_has_reason(btf: &Btf) -> Option<bool> {
    raw_tp_params(btf).map(|n| n >= 4)
}

/// Whether it also passes the receiving socket (`rx_sk`, >= 6.10).
pub fn raw_tp_has_rx_sk(btf: &Btf) -> Option<bool> {
    raw_tp_params(btf).map(|n| n >= 5)
}

fn raw_tp_params(btf: &Btf) -> Option<usize> {
    let t = btf
        .resolve_types_by_name("btf_trace_kfree_skb")
        .ok()?
        .into_iter()
        .next()?;
    let ptr = resolve_underlying(btf, t).ok()?;
    let proto = btf.resolve_chained_type(ptr.as_btf_type()?).ok()?;
    match proto {
        Type::FuncProto(p) => Some(p.parameters.len()),
        _ => None,
    }
}

/// A drop without a reason (kernels before 5.17) at `nf_hook_slow`: a
/// netfilter verdict, named as newer kernels name it.
pub const REASON_INFERRED_NETFILTER: u32 = 0xfffe_0100;
/// A drop in the VXLAN driver's receive path on a kernel whose driver does
/// not name its drops (before 6.13).
pub const REASON_INFERRED_VXLAN_RX: u32 = 0xfffe_0101;
/// A drop in the VXLAN driver's transmit path, likewise.
pub const REASON_INFERRED_VXLAN_TX: u32 = 0xfffe_0102;

/// A function whose drops are named by where they happen.
struct DropSite {
    prefix: &'static str,
    reason: u32,
    /// Also rename drops the kernel calls NOT_SPECIFIED: code that frees
    /// without a reason on kernels that name other drops.
    when_not_specified: bool,
}

const DROP_SITES: [DropSite; 6] = [
    DropSite {
        prefix: "nf_hook_slow+",
        reason: REASON_INFERRED_NETFILTER,
        when_not_specified: false,
    },
    DropSite {
        prefix: "nf_hook_slow_list+",
        reason: REASON_INFERRED_NETFILTER,
        when_not_specified: false,
    },
    DropSite {
        prefix: "vxlan_rcv+",
        reason: REASON_INFERRED_VXLAN_RX,
        when_not_specified: true,
    },
    DropSite {
        prefix: "vxlan_xmit+",
        reason: REASON_INFERRED_VXLAN_TX,
        when_not_specified: true,
    },
    DropSite {
        prefix: "vxlan_xmit_one+",
        reason: REASON_INFERRED_VXLAN_TX,
        when_not_specified: true,
    },
    DropSite {
        prefix: "vxlan_xmit_nh+",
        reason: REASON_INFERRED_VXLAN_TX,
        when_not_specified: true,
    },
];

/// The reason a drop location stands for, if it is one of the known ones;
/// `not_specified`: the kernel called the drop NOT_SPECIFIED (rather than
/// giving no reason at all).
pub fn reason_by_location(symbolized: &str, not_specified: bool) -> Option<u32> {
    DROP_SITES
        .iter()
        .filter(|s| !not_specified || s.when_not_specified)
        .find(|s| symbolized.starts_with(s.prefix))
        .map(|s| s.reason)
}

/// Drop-reason numbers to names, as this kernel defines them.
#[derive(Clone, Debug, Default)]
pub struct DropReasons {
    pub names: BTreeMap<u32, String>,
    /// Subsystem ids (high 16 bits of newer kernels' reasons) to names.
    pub subsystems: BTreeMap<u32, String>,
    /// Where the names came from.
    pub source: ReasonSource,
}

const SUBSYS_SHIFT: u32 = 16;

impl DropReasons {
    /// Reads `enum skb_drop_reason` (and the subsystem enum) from BTF.
    pub fn from_btf(btf: &Btf) -> Result<Self> {
        let names = enum_values(btf, "skb_drop_reason", "SKB_DROP_REASON_")?;
        let subsystems = enum_values(btf, "skb_drop_reason_subsys", "SKB_DROP_REASON_SUBSYS_")
            .unwrap_or_default();
        Ok(Self {
            names,
            subsystems,
            source: ReasonSource::Btf,
        })
    }

    /// Reads the reason table from the tracepoint's format file (its
    /// `__print_symbolic` list).
    pub fn from_format(format: &str) -> Result<Self> {
        let start = format
            .find("__print_symbolic(REC->reason,")
            .ok_or_else(|| anyhow!("no reason table in the kfree_skb format file"))?;
        let mut names = BTreeMap::new();
        let mut rest = &format[start..];
        while let Some(open) = rest.find("{ ") {
            rest = &rest[open + 2..];
            let Some(close) = rest.find('}') else { break };
            let entry = &rest[..close];
            if let Some((num, name)) = entry.split_once(',')
                && let Ok(n) = num.trim().parse::<u32>()
            {
                names.insert(n, name.trim().trim_matches('"').to_string());
            }
            rest = &rest[close..];
        }
        if names.is_empty() {
            bail!("empty reason table in the kfree_skb format file");
        }
        Ok(Self {
            names,
            subsystems: BTreeMap::new(),
            source: ReasonSource::Tracefs,
        })
    }

    pub fn name(&self, reason: u32) -> String {
        match reason {
            REASON_UNKNOWN => return "UNKNOWN".into(),
            REASON_INFERRED_NETFILTER => return reasons::NETFILTER_DROP.into(),
            REASON_INFERRED_VXLAN_RX => return reasons::VXLAN_RX_DROP.into(),
            REASON_INFERRED_VXLAN_TX => return reasons::VXLAN_TX_DROP.into(),
            vxtrace_common::REASON_KPROBE_PAWS => return reasons::PAWS_ESTABLISHED.into(),
            vxtrace_common::REASON_KPROBE_TW_PAWS => return reasons::PAWS_TIME_WAIT.into(),
            _ => {}
        }
        if let Some(n) = self.names.get(&reason) {
            return n.clone();
        }
        let subsys = reason >> SUBSYS_SHIFT;
        if subsys != 0 {
            let code = reason & ((1 << SUBSYS_SHIFT) - 1);
            let s = self
                .subsystems
                .get(&subsys)
                .cloned()
                .unwrap_or_else(|| format!("SUBSYS_{subsys}"));
            return format!("{s}/{code}");
        }
        format!("REASON_{reason}")
    }

    pub fn has(&self, name: &str) -> bool {
        self.id(name).is_some()
    }

    /// The kernel's number for a reason name.
    pub fn id(&self, name: &str) -> Option<u32> {
        self.names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| *id)
    }

    /// Reasons vxtrace's hints rely on that this kernel does not define.
    pub fn missing(&self, expected: &[&str]) -> Vec<String> {
        expected
            .iter()
            .filter(|n| !self.has(n))
            .map(|n| n.to_string())
            .collect()
    }
}

fn enum_values(btf: &Btf, name: &str, prefix: &str) -> Result<BTreeMap<u32, String>> {
    let mut out = BTreeMap::new();
    for t in btf.resolve_types_by_name(name).unwrap_or_default() {
        match t {
            Type::Enum(e) => {
                for m in &e.members {
                    let n = btf.resolve_name(m)?;
                    out.insert(m.val(), n.trim_start_matches(prefix).to_string());
                }
            }
            Type::Enum64(e) => {
                for m in &e.members {
                    let n = btf.resolve_name(m)?;
                    out.insert(m.val() as u32, n.trim_start_matches(prefix).to_string());
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        bail!("enum {name} not in the kernel's BTF");
    }
    Ok(out)
}

/// The classic tracepoint's record layout, from its format file.
pub fn tracepoint_fields(format: &str) -> (u32, u32, u32, u32) {
    let mut skb = NO_FIELD;
    let mut loc = NO_FIELD;
    let mut reason = NO_FIELD;
    let mut rx_sk = NO_FIELD;
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let Some((decl, tail)) = rest.split_once(';') else {
            continue;
        };
        let name = decl.split_whitespace().last().unwrap_or("");
        let off = tail
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(NO_FIELD);
        match name {
            "skbaddr" => skb = off,
            "location" => loc = off,
            "reason" => reason = off,
            "rx_sk" => rx_sk = off,
            _ => {}
        }
    }
    (skb, loc, reason, rx_sk)
}

/// Where tracefs is, mounting it if needed (in this process's mount
/// namespace: `ip netns exec` gives each command a private one).
pub fn tracefs() -> Option<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Some(PathBuf::from(p));
        }
    }
    let target = std::ffi::CString::new("/sys/kernel/tracing").ok()?;
    let fstype = std::ffi::CString::new("tracefs").ok()?;
    // SAFETY: valid C strings; mounting tracefs has no effect beyond
    // making the tracing files visible.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    (rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir())
        .then(|| PathBuf::from("/sys/kernel/tracing"))
}

pub fn kfree_skb_format() -> Option<String> {
    let dir = tracefs()?;
    std::fs::read_to_string(dir.join("events/skb/kfree_skb/format")).ok()
}

/// Names kernel addresses (drop locations) from /proc/kallsyms.
///
/// The table is not kept in memory (it is ~150,000 symbols): addresses are
/// resolved on demand, a batch per pass over the file, and cached. Drop
/// locations are few, so this costs a pass now and then and almost no memory.
pub struct Kallsyms {
    cache: std::cell::RefCell<std::collections::HashMap<u64, Option<String>>>,
}

impl Kallsyms {
    pub fn load() -> Result<Self> {
        // Whether addresses are shown is visible in the first lines; the
        // whole file (several MiB) is only read when naming locations.
        use std::io::BufRead as _;
        let file = std::fs::File::open("/proc/kallsyms").context("reading /proc/kallsyms")?;
        let visible = std::io::BufReader::new(file)
            .lines()
            .map_while(|l| l.ok())
            .take(1000)
            .any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|a| !a.trim_start_matches('0').is_empty())
            });
        if !visible {
            bail!("/proc/kallsyms shows no addresses (kptr_restrict); drop locations stay numeric");
        }
        Ok(Self {
            cache: Default::default(),
        })
    }

    /// Resolves every address not yet cached, in one pass over the file.
    pub fn prepare(&self, addrs: impl IntoIterator<Item = u64>) {
        let mut want: Vec<u64> = {
            let cache = self.cache.borrow();
            addrs
                .into_iter()
                .filter(|a| *a != 0 && !cache.contains_key(a))
                .collect()
        };
        want.sort_unstable();
        want.dedup();
        if want.is_empty() {
            return;
        }
        // For each wanted address: the closest text symbol at or below it.
        let mut best: Vec<Option<(u64, String)>> = vec![None; want.len()];
        if let Ok(text) = std::fs::read_to_string("/proc/kallsyms") {
            for line in text.lines() {
                let mut it = line.split_whitespace();
                let (Some(a), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                if !matches!(kind, "t" | "T") {
                    continue;
                }
                let Ok(addr) = u64::from_str_radix(a, 16) else {
                    continue;
                };
                if addr == 0 {
                    continue;
                }
                // Wanted addresses >= addr: those this symbol may own.
                let from = want.partition_point(|w| *w < addr);
                for (k, w) in want.iter().enumerate().skip(from) {
                    // A symbol further than 1 MiB below is not the owner.
                    if *w - addr > (1 << 20) {
                        break;
                    }
                    if best[k].as_ref().is_none_or(|(b, _)| addr > *b) {
                        best[k] = Some((addr, name.to_string()));
                    }
                }
            }
        }
        let mut cache = self.cache.borrow_mut();
        for (w, b) in want.into_iter().zip(best) {
            cache.insert(w, b.map(|(base, name)| format!("{name}+0x{:x}", w - base)));
        }
    }

    /// `function+0xoff` for an address (after `prepare`, or resolving it now).
    pub fn symbolize(&self, addr: u64) -> Option<String> {
        if !self.cache.borrow().contains_key(&addr) {
            self.prepare([addr]);
        }
        self.cache.borrow().get(&addr).cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = r#"name: kfree_skb
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:enum skb_drop_reason reason;	offset:36;	size:4;	signed:0;

print fmt: "skbaddr=%p reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 12, "NETFILTER_DROP" }, { 13, "OTHERHOST" })
"#;

    #[test]
    fn format_file_layout_and_reasons() {
        assert_eq!(tracepoint_fields(FORMAT), (8, 16, 36, NO_FIELD));
        let r = DropReasons::from_format(FORMAT).unwrap();
        assert_eq!(r.name(12), "NETFILTER_DROP");
        assert_eq!(r.name(13), "OTHERHOST");
        assert_eq!(r.name(99), "REASON_99");
        assert_eq!(r.name(REASON_UNKNOWN), "UNKNOWN");
        assert_eq!(r.name(REASON_INFERRED_NETFILTER), "NETFILTER_DROP");
        assert_eq!(
            reason_by_location("nf_hook_slow+0x93", false),
            Some(REASON_INFERRED_NETFILTER)
        );
        // A kernel that names drops names netfilter's itself.
        assert_eq!(reason_by_location("nf_hook_slow+0x93", true), None);
        assert_eq!(
            reason_by_location("vxlan_rcv+0x2f1", true),
            Some(REASON_INFERRED_VXLAN_RX)
        );
        assert_eq!(
            reason_by_location("vxlan_xmit+0x1a", false),
            Some(REASON_INFERRED_VXLAN_TX)
        );
        assert_eq!(r.name(REASON_INFERRED_VXLAN_TX), "VXLAN_TX_DROP");
        assert_eq!(reason_by_location("nf_hook_slowly+0x1", false), None);
        assert_eq!(reason_by_location("ip6_mc_input+0x230", false), None);
        assert_eq!(
            r.missing(&["OTHERHOST", "TCP_RFC7323_PAWS"]),
            vec!["TCP_RFC7323_PAWS"]
        );
    }

    #[test]
    fn old_kernel_format_without_reason() {
        let old = "field:void * skbaddr;\toffset:8;\tsize:8;\n\tfield:void * location;\toffset:16;\tsize:8;\n\tfield:unsigned short protocol;\toffset:24;\tsize:2;\n";
        assert_eq!(tracepoint_fields(old), (8, 16, NO_FIELD, NO_FIELD));
    }

    #[test]
    fn subsystem_encoded_reasons() {
        let mut r = DropReasons::default();
        r.subsystems.insert(3, "OPENVSWITCH".into());
        assert_eq!(r.name((3 << 16) | 5), "OPENVSWITCH/5");
        assert_eq!(r.name((9 << 16) | 1), "SUBSYS_9/1");
    }

    /// Against the running kernel's BTF, when there is one.
    #[test]
    fn running_kernel_btf() {
        let path = "/sys/kernel/btf/vmlinux";
        if !Path::new(path).exists() {
            eprintln!("skipped: no {path}");
            return;
        }
        let btf = Btf::from_file(path).unwrap();
        let o = skb_offsets(&btf).unwrap();
        assert!(o.skb_head > 0 && o.skb_head < 256);
        assert_ne!(o.net_ns_inum, NO_FIELD);
        assert_ne!(o.tcp_ts_recent, NO_FIELD);
        assert_ne!(o.tw_ts_recent_stamp, NO_FIELD);
        assert_eq!(raw_tp_has_reason(&btf), Some(true));
        let r = DropReasons::from_btf(&btf).unwrap();
        assert!(r.has("NETFILTER_DROP"));
        assert!(r.has("NOT_SPECIFIED"));
    }
}
