//! Never silently blind: an empty table must not pass for "no traffic".
//!
//! Three things can hide packets from vxtrace's TC programs: another
//! program ahead of them that ends the chain (`probes::hook_order` keeps
//! vxtrace first, and says when it cannot), an XDP program on a watched
//! device, and a device vxtrace does not watch. The last two are found
//! here: XDP programs from netlink, and everything else by comparing, every
//! refresh, what the kernel's own device counters say was decapsulated and
//! encapsulated with what vxtrace counted at the same places. A VXLAN
//! device's rx counter only grows for packets it decapsulated, each of
//! which crossed an underlay device's ingress and then the VXLAN device's
//! own; its tx counter grows once per encapsulated copy, each of which
//! crosses an underlay device's egress. Where the kernel counted clearly
//! more than vxtrace for several refreshes in a row, vxtrace says so, with
//! the likely reasons.
//!
//! The comparison only ever flags the kernel counting more: vxtrace counts
//! GSO aggregates as their segments and frames the driver then drops,
//! which the device counters leave out, so vxtrace may count more.

use std::collections::BTreeMap;

use vxtrace_common::GlobalStats;

use super::plan::Plan;
use crate::{
    discovery::{Snapshot, XdpProgram},
    peers::PeerTable,
    probes::Tracer,
    schema::{BlindSpot, BlindSpotKind, Hook},
};

/// Refreshes in a row the gap must stay above the noise before it is
/// reported.
const PERSISTING_REFRESHES: u32 = 3;
/// Refreshes without growth after which a reported gap is over.
const SETTLED_REFRESHES: u32 = 5;
/// A gap smaller than this many packets, or than this share of what the
/// kernel counted meanwhile, is timing (the two are read apart), not loss
/// of sight.
const MIN_GAP_PACKETS: i64 = 10;
const MIN_GAP_SHARE: f64 = 0.05;

/// One place where the kernel's count and vxtrace's are compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Checkpoint {
    /// Frames the VXLAN devices decapsulated, against what vxtrace saw on
    /// their ingress.
    VxlanIngress,
    /// Copies the VXLAN devices encapsulated, against the frames (and
    /// flooded copies) vxtrace saw on their egress.
    VxlanEgress,
    /// Packets the VXLAN devices decapsulated, against the VXLAN packets
    /// vxtrace saw arrive at the underlay devices.
    UnderlayIngress,
    /// Copies the VXLAN devices encapsulated, against the VXLAN packets
    /// vxtrace saw leave the underlay devices.
    UnderlayEgress,
}

impl Checkpoint {
    const ALL: [Checkpoint; 4] = [
        Checkpoint::VxlanIngress,
        Checkpoint::VxlanEgress,
        Checkpoint::UnderlayIngress,
        Checkpoint::UnderlayEgress,
    ];

    fn hook(self) -> Hook {
        match self {
            Checkpoint::VxlanIngress | Checkpoint::UnderlayIngress => Hook::Ingress,
            Checkpoint::VxlanEgress | Checkpoint::UnderlayEgress => Hook::Egress,
        }
    }

    /// `rx` or `tx`, as the metric's `direction` label says it.
    pub fn direction(self) -> &'static str {
        match self.hook() {
            Hook::Ingress => "rx",
            Hook::Egress => "tx",
        }
    }

    fn underlay(self) -> bool {
        matches!(
            self,
            Checkpoint::UnderlayIngress | Checkpoint::UnderlayEgress
        )
    }
}

/// The kernel's and vxtrace's totals at one refresh.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// The watched VXLAN devices' rx / tx packets (the kernel's counters).
    pub kernel_rx: u64,
    pub kernel_tx: u64,
    /// What vxtrace counted on the VXLAN devices' ingress / egress.
    pub seen_decap: u64,
    pub seen_dev_tx: u64,
    /// What vxtrace counted at the underlay devices, in / out.
    pub seen_nic_rx: u64,
    pub seen_nic_tx: u64,
}

impl Counts {
    /// Reads the kernel's counters of `plan`'s VXLAN devices from `snap`
    /// and vxtrace's totals from `peers` and `global`.
    pub fn take(
        plan: &Plan,
        snap: &Snapshot,
        peers: &PeerTable,
        global: &GlobalStats,
    ) -> Option<Self> {
        let mut c = Counts::kernel_only(plan, snap)?;
        let total = peers.all();
        c.seen_decap = total.rx_decap.packets + global.rx_decap_unattributed.packets;
        c.seen_dev_tx =
            total.tx_dev.packets + global.tx_dev_unattributed.packets + total.tx_flood.packets;
        c.seen_nic_rx = total.rx_nic.packets;
        c.seen_nic_tx = total.tx_encap.packets + total.tx_flood.packets;
        Some(c)
    }

    /// The kernel's counters alone, vxtrace's at zero: the baseline
    /// right after attaching, when vxtrace has counted nothing yet.
    pub fn kernel_only(plan: &Plan, snap: &Snapshot) -> Option<Self> {
        let mut c = Counts::default();
        for dev in &plan.vxlan {
            let stats = snap.link_by_name(&dev.name)?.stats?;
            c.kernel_rx += stats.rx_packets;
            c.kernel_tx += stats.tx_packets;
        }
        Some(c)
    }

    fn kernel(&self, at: Checkpoint) -> u64 {
        match at.hook() {
            Hook::Ingress => self.kernel_rx,
            Hook::Egress => self.kernel_tx,
        }
    }

    fn seen(&self, at: Checkpoint) -> u64 {
        match at {
            Checkpoint::VxlanIngress => self.seen_decap,
            Checkpoint::VxlanEgress => self.seen_dev_tx,
            Checkpoint::UnderlayIngress => self.seen_nic_rx,
            Checkpoint::UnderlayEgress => self.seen_nic_tx,
        }
    }
}

/// The state of one checkpoint's comparison.
#[derive(Clone, Debug, Default)]
struct Gap {
    /// Unseen packets already said and settled: the comparison goes on
    /// from there.
    offset: i64,
    /// Kernel minus vxtrace, since the baseline, less `offset`, at the
    /// last refresh.
    last: i64,
    /// The kernel's count at the last refresh (for the share).
    last_kernel: u64,
    /// Refreshes in a row with the gap above the noise.
    over: u32,
    /// Refreshes in a row, once said, without the gap growing.
    settled: u32,
    reported: bool,
    /// Every packet the kernel counted and vxtrace did not, so far (what
    /// the metric exports: it never goes down).
    unseen: u64,
}

/// What vxtrace may not see, over the run.
#[derive(Debug, Default)]
pub struct Visibility {
    /// Every blind spot said during the run, for the summary.
    pub said: Vec<BlindSpot>,
    baseline: Option<Counts>,
    gaps: BTreeMap<Checkpoint, Gap>,
    /// The XDP program last seen on each watched device.
    xdp: BTreeMap<String, Option<XdpProgram>>,
    /// Each checkpoint's devices, as the last check named them.
    labels: BTreeMap<Checkpoint, String>,
}

impl Visibility {
    /// What vxtrace cannot see from the start: hooks where another program
    /// stays ahead of it, XDP programs on the watched devices. `snap` is
    /// read right after attaching: the kernel's counters then are where
    /// the comparison starts.
    pub fn start(tracer: &mut Tracer, plan: &Plan, snap: &Snapshot) -> Self {
        let mut v = Visibility {
            baseline: Counts::kernel_only(plan, snap),
            ..Default::default()
        };
        let ahead = tracer.keep_first();
        v.record(ahead);
        v.check_xdp(plan, snap);
        v
    }

    /// Packets the kernel counted that vxtrace did not see, so far, per
    /// (device label, direction), for the metrics.
    pub fn unseen(&self) -> Vec<(String, &'static str, u64)> {
        self.labels
            .iter()
            .map(|(at, label)| {
                let n = self.gaps.get(at).map(|g| g.unseen).unwrap_or(0);
                (label.clone(), at.direction(), n)
            })
            .collect()
    }

    /// The blind spots still in force (for the summary): the last word on
    /// each device and hook, when that word is that vxtrace is blind.
    pub fn in_force(&self) -> Vec<BlindSpot> {
        let mut last: BTreeMap<(String, Option<Hook>, bool), &BlindSpot> = BTreeMap::new();
        for s in &self.said {
            let unseen = matches!(
                s.kind,
                BlindSpotKind::UnseenPackets | BlindSpotKind::SeenAgain
            );
            last.insert((s.device.clone(), s.hook, unseen), s);
        }
        last.into_values()
            .filter(|s| s.is_blind())
            .cloned()
            .collect()
    }

    /// Records `spots` (said elsewhere) for the summary, and returns them.
    pub fn record(&mut self, spots: Vec<BlindSpot>) -> Vec<BlindSpot> {
        self.said.extend(spots.iter().cloned());
        spots
    }

    /// XDP programs on the watched devices that appeared or went away.
    pub fn check_xdp(&mut self, plan: &Plan, snap: &Snapshot) -> Vec<BlindSpot> {
        let mut out = Vec::new();
        let watched = plan
            .underlays
            .iter()
            .chain(plan.vxlan.iter().map(|d| &d.name));
        for name in watched {
            let Some(link) = snap.link_by_name(name) else {
                continue;
            };
            let was = self.xdp.insert(name.clone(), link.xdp.clone()).flatten();
            match (&was, &link.xdp) {
                (_, Some(now)) if was.as_ref() != Some(now) => out.push(BlindSpot::new(
                    name,
                    Some(Hook::Ingress),
                    BlindSpotKind::Xdp,
                    format!(
                        "XDP program id {} ({}) is attached to {name}: it sees arriving packets before vxtrace, and those it drops, sends back (XDP_TX) or redirects are never counted. See it with `bpftool net show dev {name}`; counts from {name} are a lower bound while it is there",
                        now.id, now.mode
                    ),
                )),
                (Some(old), None) => out.push(BlindSpot::new(
                    name,
                    Some(Hook::Ingress),
                    BlindSpotKind::SeenAgain,
                    format!(
                        "XDP program id {} left {name}: vxtrace sees every arriving packet there again",
                        old.id
                    ),
                )),
                _ => {}
            }
        }
        self.record(out)
    }

    /// Compares the kernel's counts with vxtrace's (see the module doc).
    pub fn check_counts(&mut self, plan: &Plan, now: Counts) -> Vec<BlindSpot> {
        for at in Checkpoint::ALL {
            self.labels.insert(at, device_label(plan, at));
        }
        let Some(base) = self.baseline else {
            self.baseline = Some(now);
            return Vec::new();
        };
        let mut out = Vec::new();
        for at in Checkpoint::ALL {
            let kernel = now.kernel(at).saturating_sub(base.kernel(at));
            let seen = now.seen(at).saturating_sub(base.seen(at));
            let g = self.gaps.entry(at).or_default();
            let gap = kernel as i64 - seen as i64 - g.offset;
            // The two are read a few milliseconds apart: what the kernel
            // counted meanwhile is not a gap.
            let step = kernel.saturating_sub(g.last_kernel);
            let noise = MIN_GAP_PACKETS.max((step as f64 * MIN_GAP_SHARE) as i64);
            if gap > noise {
                g.over += 1;
            } else {
                g.over = 0;
            }
            if g.reported && gap <= g.last + noise / 2 {
                g.settled += 1;
            } else {
                g.settled = 0;
            }
            g.last = gap;
            g.last_kernel = kernel;
            if g.reported || g.over >= PERSISTING_REFRESHES {
                g.unseen = g.unseen.max((g.offset + gap.max(0)) as u64);
            }
            let label = device_label(plan, at);
            if !g.reported && g.over >= PERSISTING_REFRESHES {
                g.reported = true;
                let mut spot = BlindSpot::new(
                    &label,
                    Some(at.hook()),
                    BlindSpotKind::UnseenPackets,
                    unseen_message(plan, at, kernel, seen),
                );
                spot.packets = Some(g.unseen);
                out.push(spot);
            } else if g.reported && g.settled >= SETTLED_REFRESHES {
                g.reported = false;
                g.settled = 0;
                g.over = 0;
                g.offset += gap;
                g.last = 0;
                out.push(BlindSpot::new(
                    &label,
                    Some(at.hook()),
                    BlindSpotKind::SeenAgain,
                    format!(
                        "{label} {}: vxtrace sees the packets the kernel counts again ({} packets were not seen)",
                        at.hook().as_str(),
                        g.unseen
                    ),
                ));
            }
        }
        self.record(out)
    }
}

/// The devices a checkpoint is about, as one label.
fn device_label(plan: &Plan, at: Checkpoint) -> String {
    let names: Vec<&str> = if at.underlay() {
        plan.underlays.iter().map(String::as_str).collect()
    } else {
        plan.vxlan.iter().map(|d| d.name.as_str()).collect()
    };
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(",")
    }
}

/// The unseen-packets message: the evidence, the likely reasons, what to do.
fn unseen_message(plan: &Plan, at: Checkpoint, kernel: u64, seen: u64) -> String {
    let vxlan = device_label(plan, Checkpoint::VxlanIngress);
    let underlay = device_label(plan, Checkpoint::UnderlayIngress);
    let (what_kernel, where_seen, reasons) = match at {
        Checkpoint::VxlanIngress => (
            format!("{vxlan} decapsulated {kernel} packets"),
            format!("vxtrace saw {seen} on {vxlan} ingress"),
            "a program ahead of vxtrace on that hook ends the chain (another eBPF datapath), or vxtrace's programs were detached",
        ),
        Checkpoint::VxlanEgress => (
            format!("{vxlan} encapsulated {kernel} packets"),
            format!("vxtrace saw {seen} frames (and flooded copies) on {vxlan} egress"),
            "a program ahead of vxtrace on that hook ends the chain (another eBPF datapath), or vxtrace's programs were detached",
        ),
        Checkpoint::UnderlayIngress => (
            format!("{vxlan} decapsulated {kernel} packets"),
            format!("vxtrace saw {seen} VXLAN packets arrive at {underlay}"),
            "they arrive on a device vxtrace does not watch (a new uplink, a changed route), an XDP program or a program ahead of vxtrace on the underlay device handles them first, or the peer uses a port vxtrace does not watch",
        ),
        Checkpoint::UnderlayEgress => (
            format!("{vxlan} encapsulated {kernel} packets"),
            format!("vxtrace saw {seen} VXLAN packets leave {underlay}"),
            "they leave through a device vxtrace does not watch (a new uplink, a changed route), or a program ahead of vxtrace on the underlay device redirects them",
        ),
    };
    format!(
        "vxtrace does not see every packet: since it started, {what_kernel} but {where_seen}. Likely: {reasons}. Per-peer counts for this direction are a lower bound and no loss is concluded from them; check `bpftool net show`, `tc filter show dev DEVICE ingress` and `ip route get PEER`, or name the devices with --iface"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            vxlan: Vec::new(),
            underlays: vec!["eth0".to_string()],
            ports: vec![8472],
            foreign_ports: Vec::new(),
            local_addrs: Vec::new(),
            gbp: false,
            filter_vni: true,
            notes: Vec::new(),
            underlays_named: false,
        }
    }

    fn counts(kernel_rx: u64, seen_nic_rx: u64) -> Counts {
        Counts {
            kernel_rx,
            seen_decap: kernel_rx,
            seen_nic_rx,
            ..Default::default()
        }
    }

    /// A gap that stays is said once, after three refreshes, with its
    /// size; once it stops growing it is over after five more, and the
    /// comparison goes on from there (no second report of the same
    /// packets).
    #[test]
    fn a_lasting_gap_is_said_once_and_ends() {
        let p = plan();
        let mut v = Visibility::default();
        assert!(v.check_counts(&p, counts(100, 100)).is_empty()); // baseline
        let mut said = Vec::new();
        for i in 1..=4u64 {
            said.extend(v.check_counts(&p, counts(100 + 50 * i, 100)));
        }
        assert_eq!(said.len(), 1, "{said:?}");
        assert_eq!(said[0].kind, BlindSpotKind::UnseenPackets);
        assert_eq!(said[0].hook, Some(Hook::Ingress));
        assert_eq!(said[0].device, "eth0");
        assert_eq!(said[0].packets, Some(150));
        assert_eq!(v.unseen()[2], ("eth0".to_string(), "rx", 200));
        let mut later = Vec::new();
        for _ in 0..20 {
            later.extend(v.check_counts(&p, counts(300, 100)));
        }
        assert_eq!(later.len(), 1, "{later:?}");
        assert_eq!(later[0].kind, BlindSpotKind::SeenAgain);
        assert!(v.in_force().is_empty());
        assert_eq!(v.unseen()[2].2, 200);
        // 30 more unseen later: said again, counted on top.
        let mut again = Vec::new();
        for _ in 0..4 {
            again.extend(v.check_counts(&p, counts(330, 100)));
        }
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(v.unseen()[2].2, 230);
    }

    /// A short burst of unseen packets that then stays is real: said.
    #[test]
    fn a_burst_that_stays_is_said() {
        let p = plan();
        let mut v = Visibility::default();
        v.check_counts(&p, counts(0, 0));
        let said: Vec<_> = (0..3)
            .flat_map(|_| v.check_counts(&p, counts(60, 0)))
            .collect();
        assert_eq!(said.len(), 1);
        assert_eq!(said[0].packets, Some(60));
    }

    /// Agreeing counts, vxtrace counting more (segments of GSO packets),
    /// and a gap that stays within timing noise raise nothing.
    #[test]
    fn agreement_and_noise_raise_nothing() {
        let p = plan();
        let mut v = Visibility::default();
        let mut said = Vec::new();
        for i in 0..20u64 {
            said.extend(v.check_counts(&p, counts(1000 * i, 1000 * i)));
            said.extend(v.check_counts(&p, counts(1000 * i + 5, 1000 * i)));
            said.extend(v.check_counts(&p, counts(1000 * i, 1200 * i)));
        }
        assert!(said.is_empty(), "{said:?}");
    }
}
