//! The drop program on `skb:kfree_skb` (`vxtrace_kfree_skb_btf`, else
//! `vxtrace_kfree_skb_raw`, else `vxtrace_kfree_skb_tp`): every kernel
//! drop by (peer, reason, kernel location) in the drop map (`DROPS`),
//! scoped to the network namespaces in `NETNS_SCOPE`.

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::{BtfTracePoint, RawTracePoint, TracePoint};
use vxtrace_common::{
    DropKey, DropSlot,
    names::{maps, programs},
};

use super::Tracer;
use crate::schema::{DropHook, DropProbe};

/// One way of attaching the drop program.
type AttachDrops = fn(&mut Tracer) -> Result<()>;

/// Which `skb:kfree_skb` hook the drop program may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DropHookPolicy {
    /// The BTF-typed tracepoint, else the raw one, else the classic one.
    #[default]
    Auto,
    /// Only the BTF-typed tracepoint (`tp_btf`).
    BtfTracepoint,
    /// Only the raw tracepoint.
    RawTracepoint,
    /// Only the classic tracepoint (needs tracefs).
    Tracepoint,
}

impl DropHookPolicy {
    fn allows(self, hook: DropHook) -> bool {
        match self {
            DropHookPolicy::Auto => true,
            DropHookPolicy::BtfTracepoint => hook == DropHook::BtfTracepoint,
            DropHookPolicy::RawTracepoint => hook == DropHook::RawTracepoint,
            DropHookPolicy::Tracepoint => hook == DropHook::Tracepoint,
        }
    }
}

impl Tracer {
    /// Count drops only from these network namespaces (inode numbers).
    pub fn set_netns_scope(&mut self, inums: &[u32]) -> Result<()> {
        let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::NETNS_SCOPE)?)?;
        for i in inums {
            m.insert(*i, 1, 0).context("setting the namespace scope")?;
        }
        Ok(())
    }

    /// Attaches the drop program: with `DropHookPolicy::Auto`, the
    /// BTF-typed tracepoint first (the skb's fields are plain loads there,
    /// not helper calls), the raw tracepoint where the kernel has no BTF,
    /// the classic tracepoint where neither attaches; else only the hook
    /// asked for.
    pub fn attach_drops(&mut self, policy: DropHookPolicy) -> DropProbe {
        let mut skipped = Vec::new();
        let attempts: [(DropHook, AttachDrops); 3] = [
            (DropHook::BtfTracepoint, Self::attach_btf_drops),
            (DropHook::RawTracepoint, Self::attach_raw_drops),
            (DropHook::Tracepoint, Self::attach_tp_drops),
        ];
        for (hook, attach) in attempts {
            if !policy.allows(hook) {
                continue;
            }
            match attach(self) {
                Ok(()) => {
                    return DropProbe {
                        attached: hook,
                        skipped,
                    };
                }
                Err(e) => skipped.push(format!("{} skb:kfree_skb: {e:#}", hook.as_str())),
            }
        }
        DropProbe {
            attached: DropHook::None,
            skipped,
        }
    }

    fn attach_btf_drops(&mut self) -> Result<()> {
        if !self.offsets_valid {
            bail!("no kernel offsets (the kernel's BTF could not be read)");
        }
        let btf = aya::Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let prog: &mut BtfTracePoint = self.program_mut(programs::DROPS_BTF)?;
        prog.load("kfree_skb", &btf).context("loading")?;
        prog.attach().context("attaching")?;
        Ok(())
    }

    fn attach_raw_drops(&mut self) -> Result<()> {
        let prog: &mut RawTracePoint = self.program_mut(programs::DROPS_RAW)?;
        prog.load().context("loading")?;
        prog.attach("kfree_skb").context("attaching")?;
        Ok(())
    }

    fn attach_tp_drops(&mut self) -> Result<()> {
        if crate::kernel::tracefs().is_none() {
            bail!("tracefs is not mounted and could not be mounted");
        }
        let prog: &mut TracePoint = self.program_mut(programs::DROPS_TP)?;
        prog.load().context("loading")?;
        prog.attach("skb", "kfree_skb").context("attaching")?;
        Ok(())
    }

    /// Every key of the drop map with its count, summed over the CPUs.
    pub(super) fn read_drops(&self) -> Result<rustc_hash::FxHashMap<DropKey, u64>> {
        if let Some(batched) = self.read_batched(maps::DROPS, 0, |sum: &mut u64, v: &u64| {
            *sum = sum.wrapping_add(*v)
        }) {
            return Ok(batched.into_iter().collect());
        }
        let drops: PerCpuHashMap<&MapData, DropKey, u64> =
            PerCpuHashMap::try_from(self.map(maps::DROPS)?)?;
        let mut out = rustc_hash::FxHashMap::default();
        for item in drops.iter() {
            match item {
                Ok((key, per_cpu)) => {
                    out.insert(key, per_cpu.iter().sum());
                }
                Err(e) => log::debug!("reading the drop map: {e}"),
            }
        }
        Ok(out)
    }

    /// The drops counted in the drop program's slots (a row per CPU), summed per
    /// key over slots and CPUs. A slot keeps its key for the whole run, so
    /// these counts never go back.
    pub(super) fn read_drop_slots(&self) -> Result<rustc_hash::FxHashMap<DropKey, u64>> {
        let mut out = rustc_hash::FxHashMap::default();
        self.read_slots(maps::DROP_SLOTS, |slot: &DropSlot| {
            if slot.count != 0 {
                *out.entry(slot.key).or_default() += slot.count;
            }
        })?;
        Ok(out)
    }
}
