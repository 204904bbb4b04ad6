//! vxtrace's kernel programs seen from userspace: loading the object with
//! its load-time configuration, and one module per probe with the same
//! name as the kernel side's (`vxtrace-ebpf/src/probes/`), each holding
//! that probe's attach and reader:
//!
//! - [`nic`]: the underlay device's TC programs and the per-peer counters;
//! - [`vxlan_dev`]: the VXLAN device's TC programs, device registration,
//!   and TCP handshakes;
//! - [`drops`]: `skb:kfree_skb` and the drop map;
//! - [`paws`]: the PAWS kprobe fallbacks;
//! - [`overlay_maps`]: what the loader knows of the overlay (FDB,
//!   neighbours, routes) written into the maps the probes attribute with;
//! - [`tc`]: attaching TC programs (tcx, else clsact).

use std::net::IpAddr;

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::SchedClassifier,
};
use vxtrace_common::{
    Config, DropKey, GlobalStats, KernelOffsets, MAX_LOCAL_ADDRS, MAX_PORTS, PeerCpuKey, PeerKey,
    PeerStats, PortKey, TooBig, VXLAN_FLAG_I,
    names::{maps, programs},
};

use crate::{discovery::peer_key, schema::Attachment};

pub mod batch;
pub mod drops;
pub mod hook_order;
pub mod nic;
pub mod overlay_maps;
pub mod paws;
pub mod tc;
pub mod vxlan_dev;

pub use drops::DropHookPolicy;
pub use paws::{PAWS_KPROBES, PawsKprobe, PawsKprobes};
pub use tc::{AttachPolicy, ClsactFilter};
pub use vxlan_dev::shares_vni;

/// The kernel programs, built by build.rs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vxtrace"));

/// The TC programs, loaded up front (the drop and PAWS programs load when
/// attached).
pub const TC_PROGRAMS: [&str; 5] = [
    programs::NIC_INGRESS,
    programs::NIC_EGRESS,
    programs::VXLAN_INGRESS,
    programs::VXLAN_EGRESS,
    programs::EMPTY,
];

/// GBP extension bits of the VXLAN header (the kernel's VXLAN_GBP_USED_BITS).
const VXLAN_GBP_USED_BITS: u32 = (1 << 31) | (1 << 22) | (1 << 19) | 0xffff;

/// What the kernel programs are told at load time.
#[derive(Clone, Debug)]
pub struct TracerConfig {
    pub ports: Vec<u16>,
    /// Well-known VXLAN ports no watched device uses: VXLAN to them is a
    /// port mismatch, counted apart.
    pub foreign_ports: Vec<u16>,
    /// The kernel's number of the PKT_TOO_BIG drop reason, if it has one.
    pub reason_too_big: Option<u32>,
    pub local_addrs: Vec<IpAddr>,
    pub gbp: bool,
    /// Count only VNIs of watched devices (false when a metadata device is
    /// watched or no VXLAN device is).
    pub filter_vni: bool,
    pub max_peers: u32,
    pub max_macs: u32,
    /// Kernel offsets for the drop program (invalid without BTF).
    pub offsets: KernelOffsets,
    /// Count drops of every namespace (else only those given to
    /// `Tracer::set_netns_scope`).
    pub netns_scope_all: bool,
    /// The raw tracepoint's third argument is the drop reason (>= 5.17).
    pub raw_tp_has_reason: bool,
    /// Its fourth is the receiving socket (>= 6.10).
    pub raw_tp_has_rx_sk: bool,
}

impl TracerConfig {
    fn to_kernel(&self) -> Result<Config> {
        let mut cfg = Config::empty();
        if self.ports.is_empty() {
            bail!("no VXLAN port to watch");
        }
        if self.ports.len() > MAX_PORTS {
            bail!(
                "{} VXLAN ports requested; at most {MAX_PORTS} can be watched at once",
                self.ports.len()
            );
        }
        for (slot, port) in cfg.ports.iter_mut().zip(&self.ports) {
            *slot = *port;
        }
        // Foreign ports take the slots left; with none left they are not
        // recognised (a note says so at start).
        let foreign = self
            .foreign_ports
            .iter()
            .filter(|p| !self.ports.contains(p));
        for (i, port) in (self.ports.len()..MAX_PORTS).zip(foreign) {
            cfg.ports[i] = *port;
            cfg.foreign_ports |= 1 << i;
        }
        cfg.reason_too_big = self.reason_too_big.unwrap_or(0);
        // More local addresses than slots: watch any address rather than
        // silently missing some.
        if self.local_addrs.len() <= MAX_LOCAL_ADDRS {
            for (slot, addr) in cfg.local_addrs.iter_mut().zip(&self.local_addrs) {
                *slot = peer_key(addr);
            }
            cfg.local_addr_count = self.local_addrs.len() as u32;
        }
        cfg.allowed_flags = VXLAN_FLAG_I | if self.gbp { VXLAN_GBP_USED_BITS } else { 0 };
        cfg.filter_vni = u32::from(self.filter_vni);
        cfg.offsets = self.offsets;
        cfg.netns_scope_all = u32::from(self.netns_scope_all);
        cfg.raw_tp_has_reason = u32::from(self.raw_tp_has_reason);
        cfg.raw_tp_has_rx_sk = u32::from(self.raw_tp_has_rx_sk);
        Ok(cfg)
    }
}

/// The kernel BTF the loader relocates against.
pub enum LoaderBtf {
    /// The running kernel's (/sys/kernel/btf/vmlinux), parsed by the loader.
    Running,
    /// A BTF file given by the user.
    File(Btf),
    /// None: the programs need no relocations; their BTF is not loaded.
    None,
}

/// One read of the kernel maps.
#[derive(Debug, Default)]
pub struct Readout {
    /// Every entry of the kernel's peer map: a peer's counts on one CPU,
    /// an entry for each CPU that counted it (LRU: an entry can go).
    pub peers: Vec<(PeerCpuKey, PeerStats)>,
    /// The peers in the peer slots (a row per CPU), summed over slots and CPUs
    /// (each key once; never go back). A peer's counts are its map
    /// entries' plus these.
    pub peer_slots: Vec<(PeerKey, PeerStats)>,
    pub global: GlobalStats,
    /// Drops in the drop map, summed over the CPUs (LRU: a key can go).
    pub drops: rustc_hash::FxHashMap<DropKey, u64>,
    /// Drops in the drop program's slots, summed (never go back).
    pub drop_slots: rustc_hash::FxHashMap<DropKey, u64>,
    /// VXLAN on foreign ports, per (peer, port, direction).
    pub port_mismatch: Vec<(PortKey, u64)>,
    /// Too-big drops per peer, summed over CPUs (largest size: the max).
    pub too_big: Vec<(PeerKey, TooBig)>,
}

impl Readout {
    /// Adds a peer as one map entry, counted on CPU 0: for feeding the
    /// tables and sinks without a kernel (tests, the synthetic mesh).
    pub fn add_peer(&mut self, peer: PeerKey, stats: PeerStats) {
        self.peers.push((PeerCpuKey::new(peer, 0), stats));
    }

    /// One peer's counters (its map entries and its slots), if the kernel
    /// holds it.
    pub fn peer(&self, key: &PeerKey) -> Option<PeerStats> {
        let mut parts = self
            .peers
            .iter()
            .filter(|(k, _)| k.peer == *key)
            .map(|(_, s)| s)
            .chain(
                self.peer_slots
                    .iter()
                    .filter(|(k, _)| k == key)
                    .map(|(_, s)| s),
            );
        let mut sum = *parts.next()?;
        for s in parts {
            sum.merge(s);
        }
        Some(sum)
    }
}

/// The loaded object: programs, maps, and what got attached where.
pub struct Tracer {
    ebpf: Ebpf,
    /// The kernel refused batched map reads once: do not ask again.
    no_batch: std::cell::Cell<bool>,
    /// Keys in the peer map at the last read: the next read's vector is
    /// allocated for about as many.
    peers_last_read: std::cell::Cell<usize>,
    handshake_events: Option<RingBuf<MapData>>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub attachments: Vec<Attachment>,
    /// clsact filters, owned here so that each is removed by its own
    /// priority and handle (dropping a link detaches it).
    clsact_links: Vec<aya::programs::tc::SchedClassifierLink>,
    /// The low half of the next clsact filter handle (see `tc`).
    clsact_serial: u16,
    /// This run's claims on the network namespaces where it has clsact
    /// filters, held while it runs: other runs leave those filters be.
    netns_claims: Vec<crate::procs::NetnsClaim>,
    /// tcx links, so that one can be replaced by a link at the head.
    tcx_links: hook_order::TcxLinks,
    /// The FDB destination each MAC was last seeded with: a changed one
    /// is a move.
    fdb_seeded: std::collections::HashMap<vxtrace_common::MacKey, IpAddr>,
    /// Hooks where another program is ahead and stays ahead (said once).
    behind: std::collections::HashSet<(String, crate::schema::Hook)>,
    policy: AttachPolicy,
    /// Entries the per-peer map holds: (peer, CPU) pairs.
    pub peer_map_entries: u32,
    /// The drop program was given the kernel's struct offsets (from BTF).
    offsets_valid: bool,
}

impl Tracer {
    /// Loads the programs (not yet attached) with `cfg` written in.
    pub fn load(cfg: &TracerConfig, btf: &LoaderBtf, policy: AttachPolicy) -> Result<Self> {
        let kernel_cfg = cfg.to_kernel()?;
        let mut loader = EbpfLoader::new();
        match btf {
            LoaderBtf::Running => {}
            LoaderBtf::File(b) => {
                loader.btf(Some(b));
            }
            LoaderBtf::None => {
                loader.btf(None);
            }
        }
        // Read once: both sizes follow the CPUs online now (none read: as
        // if one, CPU 0).
        let online = aya::util::online_cpus().unwrap_or_default();
        let peer_entries = peer_map_entries(cfg.max_peers, &online);
        let rows = slot_rows(&online);
        loader
            .override_global(vxtrace_common::names::globals::CONFIG, &kernel_cfg, true)
            .map_max_entries(maps::PEERS, peer_entries)
            .map_max_entries(maps::PEER_SLOTS, rows * vxtrace_common::PEER_SLOTS)
            .map_max_entries(maps::DROP_SLOTS, rows * vxtrace_common::DROP_SLOTS)
            .map_max_entries(maps::MAC_PEERS, cfg.max_macs);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| explain_bpf_error(anyhow!(e)))
            .context("loading vxtrace's BPF object")?;
        for name in TC_PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| explain_bpf_error(anyhow!(e)))
                .with_context(|| format!("loading program {name} into the kernel"))?;
        }
        // Kernel-side log lines (rare: map insert failures) go to the log
        // crate. Read from the loop in `drain_logs`.
        let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();
        let handshake_events = ebpf
            .take_map(maps::HANDSHAKE_EVENTS)
            .and_then(|m| RingBuf::try_from(m).ok());
        Ok(Self {
            ebpf,
            no_batch: std::cell::Cell::new(false),
            peers_last_read: std::cell::Cell::new(0),
            handshake_events,
            logger,
            attachments: Vec::new(),
            clsact_links: Vec::new(),
            // Per process, so two vxtraces on one device pick apart.
            clsact_serial: (std::process::id() as u16) << 8,
            netns_claims: Vec::new(),
            tcx_links: Default::default(),
            fdb_seeded: Default::default(),
            behind: Default::default(),
            policy,
            peer_map_entries: peer_entries,
            offsets_valid: cfg.offsets.valid != 0,
        })
    }

    /// A loaded TC program (tests run them with BPF_PROG_TEST_RUN).
    pub fn program(&self, name: &str) -> Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(name)
            .ok_or_else(|| anyhow!("no program {name}"))?
            .try_into()?)
    }

    fn program_mut<'a, P>(&'a mut self, name: &str) -> Result<&'a mut P>
    where
        &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?;
        Ok(prog.try_into()?)
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
    }

    /// Forwards what the kernel programs logged since the last call.
    pub fn drain_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Reads and sums (over CPUs) every counter map.
    pub fn read(&self) -> Result<Readout> {
        Ok(Readout {
            peers: self.read_peers()?,
            peer_slots: self.read_peer_slots()?,
            global: self.read_global()?,
            drops: self.read_drops()?,
            drop_slots: self.read_drop_slots()?,
            port_mismatch: self.read_small(maps::PORT_MISMATCH, |a: &mut u64, b: &u64| {
                *a = a.wrapping_add(*b)
            })?,
            too_big: self.read_small(maps::TOO_BIG, |a: &mut TooBig, b: &TooBig| {
                a.count = a.count.wrapping_add(b.count);
                a.max_len = a.max_len.max(b.max_len);
            })?,
        })
    }

    /// A small per-CPU map (rarely more than a few keys), values summed
    /// over the CPUs by `sum`.
    fn read_small<K: aya::Pod + Copy + Default, V: aya::Pod + Copy + Default>(
        &self,
        map: &str,
        mut sum: impl FnMut(&mut V, &V),
    ) -> Result<Vec<(K, V)>> {
        if let Some(batched) = self.read_batched(map, 0, &mut sum) {
            return Ok(batched);
        }
        let m: aya::maps::PerCpuHashMap<&MapData, K, V> =
            aya::maps::PerCpuHashMap::try_from(self.map(map)?)?;
        let mut out = Vec::new();
        for (key, per_cpu) in m.iter().flatten() {
            let mut total = V::default();
            for v in per_cpu.iter() {
                sum(&mut total, v);
            }
            out.push((key, total));
        }
        Ok(out)
    }

    fn read_global(&self) -> Result<GlobalStats> {
        let global: PerCpuArray<&MapData, GlobalStats> =
            PerCpuArray::try_from(self.map(maps::GLOBAL)?)?;
        let mut sum = GlobalStats::default();
        for v in global
            .get(&0, 0)
            .context("reading the global counters")?
            .iter()
        {
            sum.merge(v);
        }
        Ok(sum)
    }

    /// Every slot of a slot map (every CPU's row), handed to `each`: in one
    /// batched read into one buffer where the kernel has it, else element
    /// by element.
    fn read_slots<V: Copy + Default + aya::Pod>(
        &self,
        map: &str,
        mut each: impl FnMut(&V),
    ) -> Result<()> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let data = self.map(map)?;
        if !self.no_batch.get()
            && let aya::maps::Map::Array(array) = data
        {
            let fd = array.fd().as_fd().as_raw_fd();
            let read =
                batch::lookup_each::<u32, V>(fd, 1, |_, slot| slot.iter().for_each(&mut each));
            match read {
                Ok(()) => return Ok(()),
                Err(e) => {
                    log::info!("{e}; reading {map} element by element");
                    self.no_batch.set(true);
                }
            }
        }
        let array: aya::maps::Array<&MapData, V> = aya::maps::Array::try_from(data)?;
        for index in 0..array.len() {
            let slot = array
                .get(&index, 0)
                .with_context(|| format!("reading {map} element {index}"))?;
            each(&slot);
        }
        Ok(())
    }

    /// An LRU map in batches, a per-CPU one's values summed over the CPUs
    /// by `sum` (a plain one's value is `sum` added to the default);
    /// `None` where the kernel refuses (then never asked again).
    fn read_batched<K: Copy + Default, V: Copy + Default>(
        &self,
        map: &str,
        expected: usize,
        sum: impl FnMut(&mut V, &V),
    ) -> Option<Vec<(K, V)>> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        if self.no_batch.get() {
            return None;
        }
        let (data, cpus) = match self.ebpf.map(map)? {
            aya::maps::Map::PerCpuLruHashMap(data) => (data, aya::util::nr_cpus().ok()?),
            aya::maps::Map::LruHashMap(data) => (data, 1),
            _ => return None,
        };
        match batch::lookup_summed::<K, V>(data.fd().as_fd().as_raw_fd(), cpus, expected, sum) {
            Ok(v) => Some(v),
            Err(e) => {
                log::info!("{e}; reading {map} key by key");
                self.no_batch.set(true);
                None
            }
        }
    }
}

/// Entries of the per-peer map: `max_peers` peers on every online CPU
/// (an entry per peer and CPU that counted it). Online, not possible, CPUs:
/// a host may declare 64 possible CPUs and run 2, and memory for CPUs that
/// never run is what this map's layout is there to avoid. A CPU brought up
/// later shares the room (the LRU makes it).
fn peer_map_entries(max_peers: u32, online: &[u32]) -> u32 {
    let cpus = online.len().max(1) as u64;
    // At most 2^24 entries (about 8 GiB of kernel memory): beyond that the
    // kernel's allocation fails anyway, and the LRU holds the busiest.
    (max_peers as u64 * cpus).min(1 << 24) as u32
}

/// Rows of the slot maps (`PEER_SLOTS`, `DROP_SLOTS`): one per CPU number
/// up to the highest online one, as the programs index them by CPU
/// number. A CPU brought up later with a higher number finds no row and
/// counts in the maps behind the slots.
fn slot_rows(online: &[u32]) -> u32 {
    online.iter().max().map_or(1, |highest| highest + 1)
}

/// Adds what to do to the errors users hit when loading BPF programs.
fn explain_bpf_error(e: anyhow::Error) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        e.context("the kernel refused to load BPF programs: run vxtrace as root (it needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, or CAP_SYS_ADMIN)")
    } else {
        e
    }
}

/// CLOCK_MONOTONIC in ns, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every program and map the loader asks for by name is in the built
    /// object (no root needed: the ELF is parsed, not loaded).
    #[test]
    fn every_name_is_in_the_object() {
        let obj = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for name in programs::ALL {
            assert!(obj.programs.contains_key(*name), "program {name} missing");
        }
        for name in maps::ALL {
            assert!(obj.maps.contains_key(*name), "map {name} missing");
        }
        assert_eq!(
            obj.programs.len(),
            programs::ALL.len(),
            "a program without a name constant"
        );
    }
}
