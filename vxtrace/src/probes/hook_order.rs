//! Staying first on every TC hook.
//!
//! Another eBPF datapath (Cilium, Calico's eBPF mode) attaches its own TC
//! programs to the underlay device and the VXLAN device, and those end the
//! chain for the packets they handle (TC_ACT_OK, a redirect): a program
//! behind them never sees those packets. So vxtrace attaches at the head
//! of each chain (tcx: before every other link; clsact: priority 1, where a
//! new cls_bpf filter goes in front of those already at that priority),
//! returns "next" so that the datapath behaves exactly as before, and
//! checks every interval that it is still first: an agent that restarts
//! re-attaches at the head too. When that happened vxtrace moves back to
//! the head, or says plainly that it cannot and what it no longer sees.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};
use aya::programs::{
    LinkOrder, SchedClassifier,
    tc::{SchedClassifierLinkId, TcAttachOptions},
};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use super::{Tracer, tc::tc_hook};
use crate::schema::{AttachMode, BlindSpot, BlindSpotKind, Hook};

/// One program or filter on a hook, in the order the kernel runs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEntry {
    /// How a user finds it: a program's name and id, a filter's kind,
    /// priority and handle.
    pub label: String,
    /// A clsact filter's (priority, handle); `None` for a tcx program.
    pub filter: Option<(u16, u32)>,
    /// A tcx program's id.
    pub prog_id: Option<u32>,
    /// The filter's classifier kind (`bpf`, `u32`, ...).
    pub kind: Option<String>,
    /// The BPF program's name: a tcx program's as the kernel keeps it
    /// (cut to 15 bytes), a cls_bpf filter's as its loader named it.
    pub program: Option<String>,
}

impl ChainEntry {
    /// A TC program of vxtrace's: another run's on the same device (a
    /// DaemonSet's and one started by hand, say). It counts every packet
    /// and passes it on, so running behind it misses nothing; moving
    /// ahead of it would only make the two runs take turns at the head,
    /// each move a detach and an attach with the packets between them
    /// missed.
    pub fn is_vxtrace(&self) -> bool {
        let Some(name) = self.program.as_deref() else {
            return false;
        };
        super::TC_PROGRAMS
            .iter()
            .any(|ours| *ours == name || ours.get(..KERNEL_NAME_LEN) == Some(name))
    }
}

/// The longest program name the kernel keeps (`BPF_OBJ_NAME_LEN` less the
/// NUL): longer names come back cut to this.
const KERNEL_NAME_LEN: usize = 15;

/// The tcx programs on `device`'s `hook`, first to last.
pub fn tcx_chain(device: &str, hook: Hook) -> Result<Vec<ChainEntry>> {
    let (_, programs) = SchedClassifier::query_tcx(device, tc_hook(hook))
        .with_context(|| format!("listing the tcx programs on {device} {}", hook.as_str()))?;
    Ok(programs
        .into_iter()
        .map(|p| {
            let name = p.name_as_str().unwrap_or("(no name)").to_string();
            ChainEntry {
                label: format!("tcx program {name} (id {})", p.id()),
                filter: None,
                prog_id: Some(p.id()),
                kind: None,
                program: Some(name),
            }
        })
        .collect())
}

/// The clsact filters on `ifindex`'s `hook`, in the order the kernel runs
/// them (a filter dump lists them by priority, then in list order).
pub fn clsact_chain(ifindex: u32, hook: Hook) -> Result<Vec<ChainEntry>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening an rtnetlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = TcMessage::default();
    msg.header.index = ifindex as i32;
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: match hook {
            Hook::Ingress => TcHandle::MIN_INGRESS,
            Hook::Egress => TcHandle::MIN_EGRESS,
        },
    };
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetTrafficFilter(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.header.length as usize];
    req.serialize(&mut buf);
    socket.send(&buf, 0).context("asking for the TC filters")?;
    let mut chain = Vec::new();
    'dump: loop {
        let (data, _) = socket.recv_from_full().context("reading the TC filters")?;
        let mut off = 0;
        while off < data.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..])
                .context("parsing a TC filter message")?;
            let len = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::Done(_) => break 'dump,
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        // No clsact qdisc: no filters.
                        if -code.get() == libc::EINVAL {
                            break 'dump;
                        }
                        bail!(
                            "listing the TC filters refused: {}",
                            std::io::Error::from_raw_os_error(-code.get())
                        );
                    }
                    break 'dump;
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                    chain.extend(filter_entry(&m));
                }
                _ => {}
            }
            if len == 0 {
                break 'dump;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(chain)
}

/// A filter of a dump (`None` for the per-priority header without a
/// handle, which runs nothing itself).
fn filter_entry(m: &TcMessage) -> Option<ChainEntry> {
    let handle = (u32::from(m.header.handle.major) << 16) | u32::from(m.header.handle.minor);
    if handle == 0 {
        return None;
    }
    let priority = (m.header.info >> 16) as u16;
    let mut kind = None;
    let mut name = None;
    for a in &m.attributes {
        match a {
            TcAttribute::Kind(k) => kind = Some(k.clone()),
            TcAttribute::Options(opts) => {
                for o in opts {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgName(n)) = o {
                        name = Some(n.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let what = match (&kind, &name) {
        (_, Some(n)) => format!("bpf filter {n}"),
        (Some(k), None) => format!("{k} filter"),
        (None, None) => "filter".to_string(),
    };
    Some(ChainEntry {
        label: format!("{what} (priority {priority}, handle {handle:#x})"),
        filter: Some((priority, handle)),
        prog_id: None,
        kind,
        program: name,
    })
}

/// What the check of one hook found.
#[derive(Debug)]
pub enum HookCheck {
    First,
    /// Others were ahead; vxtrace is first again.
    MovedBack {
        ahead: Vec<String>,
    },
    /// Others are ahead and vxtrace could not get in front of them.
    Behind {
        ahead: Vec<String>,
        why: String,
    },
}

/// The tcx links this tracer owns, by (device, hook, program).
pub type TcxLinks = HashMap<(String, Hook, &'static str), SchedClassifierLinkId>;

impl Tracer {
    /// Checks every hook vxtrace is attached to; moves back to the head of
    /// each chain where another program was attached ahead. Returns what
    /// changed, in words (nothing when vxtrace is first everywhere).
    pub fn keep_first(&mut self) -> Vec<BlindSpot> {
        let mut out = Vec::new();
        let hooks: Vec<_> = self
            .current_attachments()
            .into_iter()
            .map(|a| (a.program.clone(), a.device.clone(), a.hook, a.mode))
            .collect();
        for (program, device, hook, mode) in hooks {
            let Some(program) = super::TC_PROGRAMS.iter().find(|p| **p == program) else {
                continue;
            };
            let check = match mode {
                AttachMode::Tcx => self.keep_tcx_first(program, &device, hook),
                AttachMode::Clsact => self.keep_clsact_first(program, &device, hook),
            };
            let check = match check {
                Ok(c) => c,
                Err(e) => {
                    // A device that just went away: churn handles it.
                    log::debug!("checking the order on {device}: {e:#}");
                    continue;
                }
            };
            let spot = match check {
                HookCheck::First => {
                    if self.behind.remove(&(device.clone(), hook)) {
                        out.push(BlindSpot::new(
                            &device,
                            Some(hook),
                            BlindSpotKind::First,
                            format!(
                                "vxtrace runs first on {device} {} again: it sees every packet there",
                                hook.as_str()
                            ),
                        ));
                    }
                    continue;
                }
                HookCheck::MovedBack { ahead } => BlindSpot::new(
                    &device,
                    Some(hook),
                    BlindSpotKind::MovedBack,
                    format!(
                        "{} was attached ahead of vxtrace on {device} {}; vxtrace moved back to the head of the chain (packets in between may be missing)",
                        ahead.join(", "),
                        hook.as_str()
                    ),
                ),
                HookCheck::Behind { ahead, why } => {
                    if !self.behind.insert((device.clone(), hook)) {
                        continue; // said already
                    }
                    BlindSpot::new(
                        &device,
                        Some(hook),
                        BlindSpotKind::ProgramAhead,
                        format!(
                            "{} {} before vxtrace on {device} {} and vxtrace cannot get ahead ({why}): packets passed on, redirected or dropped there are not counted. Detach it, or run vxtrace on a kernel with tcx (6.6 or later)",
                            ahead.join(", "),
                            if ahead.len() > 1 { "run" } else { "runs" },
                            hook.as_str()
                        ),
                    )
                }
            };
            out.push(spot);
        }
        out
    }

    fn keep_tcx_first(
        &mut self,
        program: &'static str,
        device: &str,
        hook: Hook,
    ) -> Result<HookCheck> {
        let ours = self.program(program)?.info()?.id();
        let chain = tcx_chain(device, hook)?;
        let Some(pos) = chain.iter().position(|e| e.prog_id == Some(ours)) else {
            bail!("{program} is not on {device} {}", hook.as_str());
        };
        if chain[..pos].iter().all(ChainEntry::is_vxtrace) {
            return Ok(HookCheck::First);
        }
        let ahead: Vec<String> = chain[..pos].iter().map(|e| e.label.clone()).collect();
        // The kernel refuses a program twice on one hook, so the old link
        // goes first: the packets of the next few microseconds are missed.
        let key = (device.to_string(), hook, program);
        let old = self.tcx_links.remove(&key);
        let prog: &mut SchedClassifier = self.program_mut(program)?;
        if let Some(old) = old {
            prog.detach(old)
                .with_context(|| format!("detaching {program} from {device}"))?;
        }
        match prog.attach_with_options(
            device,
            tc_hook(hook),
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        ) {
            Ok(id) => {
                self.tcx_links.insert(key, id);
                Ok(HookCheck::MovedBack { ahead })
            }
            Err(e) => Ok(HookCheck::Behind {
                ahead,
                why: format!("re-attaching failed: {e}"),
            }),
        }
    }

    fn keep_clsact_first(
        &mut self,
        program: &'static str,
        device: &str,
        hook: Hook,
    ) -> Result<HookCheck> {
        let ifindex = ifindex_of(device)?;
        let ours = self
            .current_attachments()
            .into_iter()
            .find(|a| a.program == program && a.device == device && a.hook == hook)
            .and_then(|a| a.filter);
        let chain = clsact_chain(ifindex, hook)?;
        let Some(pos) = chain
            .iter()
            .position(|e| e.filter.is_some() && e.filter == ours)
        else {
            bail!("{program} is not on {device} {}", hook.as_str());
        };
        if chain[..pos].iter().all(ChainEntry::is_vxtrace) {
            return Ok(HookCheck::First);
        }
        let ahead: Vec<String> = chain[..pos].iter().map(|e| e.label.clone()).collect();
        // Only a cls_bpf filter at priority 1 can be overtaken: a new
        // filter at that priority goes in front of it. Anything at
        // priority 1 of another kind (u32, flower) stays ahead.
        if let Some(first) = chain.first()
            && first
                .filter
                .is_some_and(|(p, _)| p == super::tc::CLSACT_FIRST_PRIORITY)
            && first.kind.as_deref() != Some("bpf")
        {
            return Ok(HookCheck::Behind {
                ahead,
                why: format!(
                    "a {} filter holds the first priority",
                    first.kind.as_deref().unwrap_or("non-BPF")
                ),
            });
        }
        let old = ours.expect("found above");
        match self.attach_clsact_first(program, device, hook) {
            Ok(true) => {
                self.detach_clsact_filter(device, hook, old);
                Ok(HookCheck::MovedBack { ahead })
            }
            Ok(false) => Ok(HookCheck::Behind {
                ahead,
                why: "the first priority is taken".to_string(),
            }),
            Err(e) => Ok(HookCheck::Behind {
                ahead,
                why: format!("re-attaching failed: {e:#}"),
            }),
        }
    }
}

/// The index of the device named `name` in this namespace.
pub fn ifindex_of(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name).context("a device name with a NUL byte")?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!("no device {name}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(name: Option<&str>) -> ChainEntry {
        ChainEntry {
            label: String::new(),
            filter: None,
            prog_id: None,
            kind: None,
            program: name.map(str::to_string),
        }
    }

    /// Another run's programs are known by their full names (cls_bpf
    /// filters) and by the names the kernel cut to 15 bytes (tcx); other
    /// datapaths' programs, and filters that run no program, are not.
    #[test]
    fn another_runs_programs_are_told_from_other_datapaths() {
        for name in [
            "vxtrace_nic_ingress",
            "vxtrace_nic_ing",
            "vxtrace_nic_egr",
            "vxtrace_vxlan_i",
            "vxtrace_vxlan_egress",
            "vxtrace_empty",
        ] {
            assert!(program(Some(name)).is_vxtrace(), "{name}");
        }
        for name in [
            Some("cil_from_netdev"),
            Some("calico_tc_main"),
            Some("vxtrace_nic"),
            Some("vxtrace_nic_ingress_v2"),
            Some("vxtrace_kfree_s"),
            None,
        ] {
            assert!(!program(name).is_vxtrace(), "{name:?}");
        }
    }
}
