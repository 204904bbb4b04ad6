//! What vxtrace attached where, and what the kernel did not offer, as the
//! `attached` line, the summary and recordings carry it.

use std::fmt;

use serde::{Deserialize, Serialize};

string_ids! {
    /// The TC hook a program is on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum Hook {
        Ingress = "ingress",
        Egress = "egress",
    }
}

string_ids! {
    /// How a TC program got onto a device.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum AttachMode {
        /// A tcx link (kernel >= 6.6); detached by the kernel when we exit.
        Tcx = "tcx",
        /// A filter on the clsact qdisc, through netlink.
        Clsact = "clsact",
    }
}

/// One TC program on one device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub program: String,
    pub device: String,
    pub hook: Hook,
    pub mode: AttachMode,
    /// A clsact filter's (priority, handle): what tells it apart from the
    /// filters of another vxtrace on the same device.
    #[serde(skip)]
    pub filter: Option<(u16, u32)>,
}

impl fmt::Display for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} on {} {} ({})",
            self.program,
            self.device,
            self.hook.as_str(),
            self.mode.as_str()
        )
    }
}

/// What vxtrace may not see, and changes to it: programs ahead of it on a
/// hook, XDP programs, devices where the kernel counted more packets than
/// vxtrace did. An empty table must never pass for "no traffic".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlindSpot {
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<Hook>,
    pub kind: BlindSpotKind,
    /// Packets the kernel counted on the device that vxtrace did not see,
    /// so far (`unseen_packets`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// The cause, the evidence and what to do, in words.
    pub message: String,
}

impl BlindSpot {
    pub fn new(device: &str, hook: Option<Hook>, kind: BlindSpotKind, message: String) -> Self {
        Self {
            device: device.to_string(),
            hook,
            kind,
            packets: None,
            message,
        }
    }

    /// Whether this says vxtrace misses packets (rather than that it sees
    /// them again).
    pub fn is_blind(&self) -> bool {
        matches!(
            self.kind,
            BlindSpotKind::ProgramAhead | BlindSpotKind::Xdp | BlindSpotKind::UnseenPackets
        )
    }
}

string_ids! {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum BlindSpotKind {
        /// Another program runs before vxtrace on a hook, and vxtrace cannot
        /// get ahead of it.
        ProgramAhead = "program_ahead",
        /// Another program was attached ahead of vxtrace; vxtrace moved back
        /// to the head of the chain.
        MovedBack = "moved_back",
        /// vxtrace runs first again on a hook where it was behind.
        First = "first",
        /// An XDP program on a watched device sees packets before TC and may
        /// drop, transmit or redirect them.
        Xdp = "xdp",
        /// The kernel counted clearly more packets on a device than vxtrace.
        UnseenPackets = "unseen_packets",
        /// The kernel's count and vxtrace's agree again.
        SeenAgain = "seen_again",
    }
}

string_ids! {
    /// Which `skb:kfree_skb` hook the drop program is on.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum DropHook {
        /// The BTF-typed tracepoint (`tp_btf`), on kernels with BTF.
        BtfTracepoint = "btf_tracepoint",
        RawTracepoint = "raw_tracepoint",
        Tracepoint = "tracepoint",
        /// Kernel drops are not counted.
        #[default]
        None = "none",
    }
}

/// How the drop program got attached, or why it did not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropProbe {
    pub attached: DropHook,
    /// What was tried and failed, in order.
    pub skipped: Vec<String>,
}

string_ids! {
    /// Where the drop-reason names came from.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum ReasonSource {
        /// `enum skb_drop_reason` in the kernel's BTF.
        Btf = "BTF",
        /// The tracepoint's format file.
        Tracefs = "tracefs",
        /// Neither: reasons are shown by number.
        #[default]
        None = "none",
    }
}

/// What became of an optional probe. Written as one string (`"attached"`,
/// `"skipped: why"`, `"not available on this kernel: why"`, `"not loaded:
/// why"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeState {
    Attached,
    /// Not wanted (flag, or the kernel reports the same by itself).
    Skipped(String),
    /// Wanted, but the kernel cannot attach it.
    NotAvailable(String),
    /// The verifier or loader refused it.
    NotLoaded(String),
}

impl ProbeState {
    const SKIPPED: &'static str = "skipped: ";
    const NOT_AVAILABLE: &'static str = "not available on this kernel: ";
    const NOT_LOADED: &'static str = "not loaded: ";

    pub fn is_attached(&self) -> bool {
        matches!(self, ProbeState::Attached)
    }
}

impl fmt::Display for ProbeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeState::Attached => f.write_str("attached"),
            ProbeState::Skipped(why) => write!(f, "{}{why}", Self::SKIPPED),
            ProbeState::NotAvailable(why) => write!(f, "{}{why}", Self::NOT_AVAILABLE),
            ProbeState::NotLoaded(why) => write!(f, "{}{why}", Self::NOT_LOADED),
        }
    }
}

impl From<ProbeState> for String {
    fn from(s: ProbeState) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for ProbeState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s == "attached" {
            return Ok(ProbeState::Attached);
        }
        type Make = fn(String) -> ProbeState;
        let table: [(&str, Make); 3] = [
            (Self::SKIPPED, ProbeState::Skipped),
            (Self::NOT_AVAILABLE, ProbeState::NotAvailable),
            (Self::NOT_LOADED, ProbeState::NotLoaded),
        ];
        table
            .iter()
            .find_map(|(prefix, make)| s.strip_prefix(prefix).map(|why| make(why.to_string())))
            .ok_or_else(|| format!("unknown probe status {s:?}"))
    }
}

impl Serialize for ProbeState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProbeState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProbeState::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// One PAWS kprobe: its program, the kernel function, what became of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KprobeStatus {
    pub program: String,
    pub target: String,
    pub status: ProbeState,
}

/// The optional probes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probes {
    pub drops: DropProbe,
    #[serde(default)]
    pub paws_kprobes: Vec<KprobeStatus>,
    /// In the `attached` line only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_names: Option<ReasonSource>,
}

/// Whose kernel drops count: every network namespace, or these (inode
/// numbers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NetnsScope {
    All(AllNamespaces),
    Only(Vec<u32>),
}

/// The word `"all"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllNamespaces {
    All,
}

impl Default for NetnsScope {
    fn default() -> Self {
        NetnsScope::all()
    }
}

impl NetnsScope {
    pub fn all() -> Self {
        NetnsScope::All(AllNamespaces::All)
    }

    pub fn inodes(&self) -> Option<&[u32]> {
        match self {
            NetnsScope::All(_) => None,
            NetnsScope::Only(v) => Some(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_states_read_back() {
        for s in [
            ProbeState::Attached,
            ProbeState::Skipped("--paws-kprobes never".into()),
            ProbeState::NotAvailable("no kprobes".into()),
            ProbeState::NotLoaded("verifier: x".into()),
        ] {
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<ProbeState>(&text).unwrap(), s);
        }
        assert_eq!(
            ProbeState::Skipped("a".into()).to_string(),
            "skipped: a",
            "the form earlier releases wrote"
        );
    }

    #[test]
    fn netns_scope_is_all_or_inodes() {
        assert_eq!(
            serde_json::to_string(&NetnsScope::all()).unwrap(),
            "\"all\""
        );
        let only: NetnsScope = serde_json::from_str("[4026532246]").unwrap();
        assert_eq!(only.inodes(), Some(&[4026532246][..]));
    }
}
