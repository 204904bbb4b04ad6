//! What the running kernel offers the drop program: BTF offsets, the
//! drop-reason names, the raw tracepoint's arguments; and which network
//! namespaces `--netns` names.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use vxtrace_common::{KernelOffsets, NO_FIELD};

use crate::{
    kernel::{self, DropReasons},
    preflight, reasons,
    schema::{NetnsScope, ReasonSource},
};

/// What the running kernel offers the drop program.
pub struct KernelInfo {
    pub btf_path: Option<PathBuf>,
    pub offsets: KernelOffsets,
    pub reasons: DropReasons,
    pub raw_tp_has_reason: bool,
    pub raw_tp_has_rx_sk: bool,
    pub notes: Vec<String>,
}

pub const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What BTF says, where there is BTF.
#[derive(Default)]
struct FromBtf {
    offsets: Option<KernelOffsets>,
    reasons: Option<DropReasons>,
    raw_tp_has_reason: Option<bool>,
    raw_tp_has_rx_sk: Option<bool>,
}

pub fn kernel_info(btf_arg: Option<&Path>) -> Result<KernelInfo> {
    let mut notes = Vec::new();
    let btf_path = btf_path(btf_arg, &mut notes)?;
    let from_btf = match &btf_path {
        Some(path) => read_btf(path, &mut notes)?,
        None => FromBtf::default(),
    };
    let mut offsets = from_btf.offsets.unwrap_or_else(KernelOffsets::none);
    let mut reasons = from_btf.reasons;
    let mut raw_tp_has_reason = from_btf.raw_tp_has_reason;
    let mut raw_tp_has_rx_sk = from_btf.raw_tp_has_rx_sk;
    // The classic tracepoint's format file: its field offsets, and what
    // BTF could not tell.
    if let Some(f) = kernel::kfree_skb_format() {
        let (skb, loc, reason, rx_sk) = kernel::tracepoint_fields(&f);
        offsets.tp_skbaddr = skb;
        offsets.tp_location = loc;
        offsets.tp_reason = reason;
        offsets.tp_rx_sk = rx_sk;
        raw_tp_has_rx_sk.get_or_insert(rx_sk != NO_FIELD);
        raw_tp_has_reason.get_or_insert(reason != NO_FIELD);
        if reasons.is_none() {
            reasons = DropReasons::from_format(&f).ok();
        }
    }
    let reasons = reasons.unwrap_or_else(|| {
        notes.push(
            "drop-reason names unavailable (no skb_drop_reason in BTF, no tracefs): reasons are shown by number".into(),
        );
        DropReasons::default()
    });
    if reasons.source != ReasonSource::None {
        let missing = reasons.missing(&reasons::RELIED_ON);
        if !missing.is_empty() {
            notes.push(format!(
                "this kernel defines no drop reason {}: findings that rely on it are unavailable; drops are still counted by reason number",
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

/// The BTF file to read: --btf, else the running kernel's, else none.
fn btf_path(btf_arg: Option<&Path>, notes: &mut Vec<String>) -> Result<Option<PathBuf>> {
    Ok(match btf_arg {
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
    })
}

fn read_btf(path: &Path, notes: &mut Vec<String>) -> Result<FromBtf> {
    // Parse from memory: the file backend reads in many small pieces.
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading kernel BTF from {}", path.display()))?;
    let btf = btf_rs::Btf::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("parsing kernel BTF from {}", path.display()))?;
    let offsets = kernel::skb_offsets(&btf)
        .map_err(|e| {
            notes.push(format!(
                "cannot resolve sk_buff offsets from BTF ({e:#}): drops are not attributed to peers"
            ))
        })
        .ok();
    let reasons = DropReasons::from_btf(&btf)
        .map_err(|e| notes.push(format!("{e:#}; trying tracefs for reason names")))
        .ok();
    Ok(FromBtf {
        offsets,
        reasons,
        raw_tp_has_reason: kernel::raw_tp_has_reason(&btf),
        raw_tp_has_rx_sk: kernel::raw_tp_has_rx_sk(&btf),
    })
}

/// The namespaces named by --netns.
pub fn resolve_netns(specs: &[String]) -> Result<NetnsScope> {
    if specs.is_empty() || specs.iter().any(|s| s == "all") {
        return Ok(NetnsScope::all());
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
    Ok(NetnsScope::Only(out))
}
