//! Attaching TC programs to a device. tcx links (kernel >= 6.6) are
//! preferred: they belong to this process's file descriptors, so the
//! kernel detaches them when the process dies, SIGKILL included. Where tcx
//! is missing the programs go on a clsact qdisc through netlink, and a
//! small watchdog process (`reaper`) removes exactly those filters (by
//! priority and handle) when this process dies.
//!
//! Either way vxtrace goes to the head of the chain (see `hook_order`):
//! a program of another datapath ahead of it would end the chain for the
//! packets it handles, and vxtrace would count nothing.

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    tc::{
        NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle, qdisc_add_clsact,
        qdisc_detach_program,
    },
};

use super::Tracer;
use crate::schema::{AttachMode, Attachment, Hook};

/// Which attach mechanism the user allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachPolicy {
    /// tcx where the kernel has it, clsact otherwise.
    Auto,
    Tcx,
    Clsact,
}

/// One clsact filter this tracer attached: what the watchdog needs to
/// remove exactly that filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClsactFilter {
    pub device: String,
    pub hook: Hook,
    pub priority: u16,
    pub handle: u32,
}

/// The clsact priority vxtrace's filters take: the first. A new cls_bpf
/// filter at a priority already in use goes in front of the filters there
/// (the kernel adds it at the head of that priority's list).
pub const CLSACT_FIRST_PRIORITY: u16 = 1;

/// The upper half of vxtrace's clsact filter handles ("vx"): far from the
/// handle 1 other agents replace in place, so none replaces ours.
const CLSACT_HANDLE_MAJOR: u16 = 0x7678;

pub(super) fn tc_hook(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    }
}

impl Tracer {
    /// Attaches TC `program` to `iface`'s `hook`: tcx unless the policy
    /// says clsact, clsact where tcx fails (and the policy allows it).
    pub(super) fn attach_tc(
        &mut self,
        program: &'static str,
        iface: &str,
        hook: Hook,
    ) -> Result<()> {
        if self.policy != AttachPolicy::Clsact {
            match self.attach_tcx(program, iface, hook) {
                Ok(()) => return Ok(()),
                Err(e) if self.policy == AttachPolicy::Tcx => {
                    return Err(e).with_context(|| {
                        format!(
                            "attaching {program} to {iface} {} with tcx (needs kernel >= 6.6; try --attach auto)",
                            hook.as_str()
                        )
                    });
                }
                Err(e) => {
                    log::info!("tcx attach of {program} on {iface} failed ({e}); using clsact")
                }
            }
        }
        self.attach_clsact(program, iface, hook)
    }

    fn attach_tcx(&mut self, program: &'static str, iface: &str, hook: Hook) -> Result<()> {
        let prog: &mut SchedClassifier = self.program_mut(program)?;
        let id = prog.attach_with_options(
            iface,
            tc_hook(hook),
            TcAttachOptions::TcxOrder(LinkOrder::first()),
        )?;
        // A device that came back: its old link died with it.
        if let Some(old) = self
            .tcx_links
            .insert((iface.to_string(), hook, program), id)
        {
            let prog: &mut SchedClassifier = self.program_mut(program)?;
            let _ = prog.detach(old);
        }
        self.attachments.push(Attachment {
            program: program.to_string(),
            device: iface.to_string(),
            hook,
            mode: AttachMode::Tcx,
            filter: None,
        });
        Ok(())
    }

    fn attach_clsact(&mut self, program: &'static str, iface: &str, hook: Hook) -> Result<()> {
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
        let others = match self.claim_this_netns() {
            Ok(claim) => claim.shared(),
            Err(e) => {
                // Without a claim another run could be alive unseen:
                // leave every filter be (a killed run's, if any, stay).
                log::info!(
                    "{e:#}; filters a killed vxtrace left on {iface} are not removed (see them with `tc filter show dev {iface} ingress` and `egress`)"
                );
                true
            }
        };
        if !others && !crate::procs::other_vxtrace_in_this_netns() {
            let _ = qdisc_detach_program(iface, tc_hook(hook), program);
        }
        if !self.attach_clsact_first(program, iface, hook)? {
            // The first priority belongs to another kind of filter: attach
            // where the kernel puts us; the order check says what is ahead.
            self.attach_clsact_with(program, iface, hook, NlOptions::default())?;
        }
        Ok(())
    }

    /// This run's claim on the calling thread's network namespace, taken
    /// on its first clsact filter there (see [`crate::procs::NetnsClaim`]).
    fn claim_this_netns(&mut self) -> Result<&crate::procs::NetnsClaim> {
        use crate::procs::NetnsClaim;
        let here = NetnsClaim::current_id().context("reading this thread's network namespace")?;
        let at = match self.netns_claims.iter().position(|c| c.id == here) {
            Some(at) => at,
            None => {
                let claim = NetnsClaim::take()
                    .context("locking the network namespace's file for this run")?;
                self.netns_claims.push(claim);
                self.netns_claims.len() - 1
            }
        };
        Ok(&self.netns_claims[at])
    }

    /// Attaches `program` as a clsact filter at the first priority, with a
    /// handle of vxtrace's own; `false` when the kernel refuses that
    /// priority (a filter of another kind or protocol holds it).
    pub(super) fn attach_clsact_first(
        &mut self,
        program: &'static str,
        iface: &str,
        hook: Hook,
    ) -> Result<bool> {
        // Another vxtrace, or our own filter being replaced, may hold a
        // handle: try the next.
        for _ in 0..16 {
            self.clsact_serial = self.clsact_serial.wrapping_add(1);
            let options = NlOptions {
                priority: CLSACT_FIRST_PRIORITY,
                handle: TcHandle::new(CLSACT_HANDLE_MAJOR, self.clsact_serial),
                ..Default::default()
            };
            match self.attach_clsact_with(program, iface, hook, options) {
                Ok(()) => return Ok(true),
                Err(e) => match errno_of(&e) {
                    Some(libc::EEXIST) => continue,
                    Some(libc::EINVAL) => return Ok(false),
                    _ => return Err(e),
                },
            }
        }
        Ok(false)
    }

    fn attach_clsact_with(
        &mut self,
        program: &'static str,
        iface: &str,
        hook: Hook,
        options: NlOptions,
    ) -> Result<()> {
        let prog: &mut SchedClassifier = self.program_mut(program)?;
        let id = prog
            .attach_with_options(iface, tc_hook(hook), TcAttachOptions::Netlink(options))
            .with_context(|| {
                format!("attaching {program} to {iface} {} (clsact)", hook.as_str())
            })?;
        // The kernel chose the filter's priority and handle (or confirmed
        // ours); keep them, so that exactly this filter is removed at exit.
        let link = prog.take_link(id).ok();
        let filter = link
            .as_ref()
            .and_then(|l| Some((l.priority().ok()?, u32::from(l.handle().ok()?))));
        self.clsact_links.extend(link);
        self.attachments.push(Attachment {
            program: program.to_string(),
            device: iface.to_string(),
            hook,
            mode: AttachMode::Clsact,
            filter,
        });
        Ok(())
    }

    /// Removes one of our clsact filters (replaced by one at the head).
    pub(super) fn detach_clsact_filter(&mut self, iface: &str, hook: Hook, filter: (u16, u32)) {
        use aya::programs::links::Link as _;
        // Handles are unique among this tracer's filters (`clsact_serial`).
        let found = self.clsact_links.iter().position(|l| {
            l.priority().ok() == Some(filter.0) && l.handle().ok().map(u32::from) == Some(filter.1)
        });
        if let Some(i) = found {
            let _ = self.clsact_links.swap_remove(i).detach();
        }
        self.attachments
            .retain(|a| !(a.device == iface && a.hook == hook && a.filter == Some(filter)));
    }

    /// Each hook's latest attachment (a device that came back is attached
    /// again; its old entry stays in `attachments` for the record).
    pub fn current_attachments(&self) -> Vec<&Attachment> {
        let mut out: Vec<&Attachment> = Vec::new();
        for a in self.attachments.iter().rev() {
            if !out
                .iter()
                .any(|b| b.program == a.program && b.device == a.device && b.hook == a.hook)
            {
                out.push(a);
            }
        }
        out.reverse();
        out
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

/// The errno of a netlink attach error, if it carries one.
fn errno_of(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| {
        if let Some(TcError::NetlinkError(n)) = c.downcast_ref::<TcError>() {
            return n.raw_os_error();
        }
        if let Some(aya::programs::ProgramError::TcError(TcError::NetlinkError(n))) =
            c.downcast_ref::<aya::programs::ProgramError>()
        {
            return n.raw_os_error();
        }
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
    })
}

/// Removes one clsact filter (used by the watchdog).
pub fn detach_clsact(filter: &ClsactFilter) {
    use aya::programs::links::Link as _;
    if let Ok(link) = SchedClassifierLink::attached(
        &filter.device,
        tc_hook(filter.hook),
        filter.priority,
        filter.handle.into(),
        None,
    ) {
        let _ = link.detach();
    }
}
