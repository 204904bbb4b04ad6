//! The drop program on `skb:kfree_skb` (`vxtrace_kfree_skb_raw`, else
//! `vxtrace_kfree_skb_tp`): every kernel drop by (peer, reason, kernel
//! location) in the drop map (`DROPS`), scoped to the network namespaces
//! in `NETNS_SCOPE`.

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData, PerCpuHashMap};
use aya::programs::{RawTracePoint, TracePoint};
use vxtrace_common::{
    DropKey,
    names::{maps, programs},
};

use super::Tracer;
use crate::schema::{DropHook, DropProbe};

impl Tracer {
    /// Count drops only from these network namespaces (inode numbers).
    pub fn set_netns_scope(&mut self, inums: &[u32]) -> Result<()> {
        let mut m: HashMap<_, u32, u32> = HashMap::try_from(self.map_mut(maps::NETNS_SCOPE)?)?;
        for i in inums {
            m.insert(*i, 1, 0).context("setting the namespace scope")?;
        }
        Ok(())
    }

    /// Attaches the drop program: the raw tracepoint first (no tracefs
    /// needed), the classic tracepoint where that fails.
    pub fn attach_drops(&mut self) -> DropProbe {
        // tp_btf would see the same arguments at the same cost (the skb's
        // fields are read with probe reads either way) and needs another
        // parse of the kernel's BTF: the raw tracepoint comes first.
        let mut skipped = vec![
            "tp_btf skb:kfree_skb: not tried: the raw tracepoint passes the same arguments at the same cost".to_string(),
        ];
        let attached = match self.attach_raw_drops() {
            Ok(()) => DropHook::RawTracepoint,
            Err(e) => {
                skipped.push(format!("raw_tracepoint skb:kfree_skb: {e:#}"));
                match self.attach_tp_drops() {
                    Ok(()) => DropHook::Tracepoint,
                    Err(e) => {
                        skipped.push(format!("tracepoint skb:kfree_skb: {e:#}"));
                        DropHook::None
                    }
                }
            }
        };
        DropProbe { attached, skipped }
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
        if let Some(batched) = self.read_batched(maps::DROPS, |sum: &mut u64, v: &u64| {
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
}
