//! The floor: programs that do nothing, attached where vxtrace attaches its
//! own (the underlay device and the VXLAN device, both directions, on each
//! traced node; `kfree_skb`), so that what a hook costs by itself under
//! the same traffic can be set beside what vxtrace's program there costs.

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use vxtrace_common::names::programs;

/// A hook vxtrace attaches a TC program to, and the program it puts there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hook {
    pub device: &'static str,
    pub direction: TcAttachType,
    pub program: &'static str,
}

/// vxtrace's TC hooks on a node of the lab.
pub const HOOKS: [Hook; 4] = [
    Hook {
        device: "eth0",
        direction: TcAttachType::Ingress,
        program: programs::NIC_INGRESS,
    },
    Hook {
        device: "eth0",
        direction: TcAttachType::Egress,
        program: programs::NIC_EGRESS,
    },
    Hook {
        device: "flannel.1",
        direction: TcAttachType::Ingress,
        program: programs::VXLAN_INGRESS,
    },
    Hook {
        device: "flannel.1",
        direction: TcAttachType::Egress,
        program: programs::VXLAN_EGRESS,
    },
];

/// Empty programs attached; detached when dropped.
pub struct Floor {
    /// One object per hook (so each hook's runs are counted apart), and
    /// one for the drop tracepoint.
    _objects: Vec<Ebpf>,
    /// (vxtrace program it stands beside, kernel program id).
    pub ids: Vec<(&'static str, u32)>,
}

impl Floor {
    /// The empty TC program at every hook of `hooks` on each namespace of
    /// `namespaces`, and (with `drops`) the empty BTF-typed tracepoint on
    /// `kfree_skb` (the hook vxtrace's drop program takes on this kernel).
    pub fn attach(namespaces: &[String], hooks: &[Hook], drops: bool) -> Result<Self> {
        let mut objects = Vec::new();
        let mut ids = Vec::new();
        for hook in hooks {
            let mut obj = Ebpf::load(vxtrace::probes::OBJECT).context("loading the object")?;
            let prog: &mut SchedClassifier = obj
                .program_mut(programs::EMPTY)
                .context("no empty program")?
                .try_into()?;
            prog.load()?;
            for ns in namespaces {
                vxtrace::netns::run_in(ns, || {
                    prog.attach_with_options(
                        hook.device,
                        hook.direction,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .with_context(|| format!("attaching the empty program to {}", hook.device))?;
                    Ok(())
                })?;
            }
            ids.push((hook.program, prog.info()?.id()));
            objects.push(obj);
        }
        if drops {
            let mut obj = Ebpf::load(vxtrace::probes::OBJECT).context("loading the object")?;
            let prog: &mut BtfTracePoint = obj
                .program_mut(programs::EMPTY_DROPS_BTF)
                .context("no empty drop program")?
                .try_into()?;
            prog.load("kfree_skb", &Btf::from_sys_fs()?)?;
            prog.attach()?;
            ids.push((programs::DROPS_BTF, prog.info()?.id()));
            objects.push(obj);
        }
        Ok(Self {
            _objects: objects,
            ids,
        })
    }

    /// The ids of the empty programs standing beside `program`.
    pub fn ids_for(&self, program: &str) -> Vec<u32> {
        self.ids
            .iter()
            .filter(|(p, _)| *p == program)
            .map(|(_, id)| *id)
            .collect()
    }
}
