//! Attaching TC programs to a device. tcx links (kernel >= 6.6) are
//! preferred: they belong to this process's file descriptors, so the
//! kernel detaches them when the process dies, SIGKILL included. Where tcx
//! is missing the programs go on a clsact qdisc through netlink, and a
//! small watchdog process (`reaper`) removes exactly those filters (by
//! priority and handle) when this process dies.

use anyhow::{Context as _, Result, anyhow};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    tc::{NlOptions, SchedClassifierLink, TcAttachOptions, qdisc_add_clsact, qdisc_detach_program},
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

fn tc_hook(hook: Hook) -> TcAttachType {
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
        prog.attach_with_options(
            iface,
            tc_hook(hook),
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )?;
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
        if !crate::reaper::other_vxtrace_in_this_netns() {
            let _ = qdisc_detach_program(iface, tc_hook(hook), program);
        }
        let prog: &mut SchedClassifier = self.program_mut(program)?;
        let id = prog
            .attach_with_options(
                iface,
                tc_hook(hook),
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .with_context(|| {
                format!("attaching {program} to {iface} {} (clsact)", hook.as_str())
            })?;
        // The kernel chose the filter's priority and handle; keep them, so
        // that exactly this filter is removed at exit.
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
