//! What a run knows so far: per-peer totals, drops, silences, and the
//! host-wide counters; and the one place that turns them into a peer's
//! summary (with its findings), for the live screen and for the summary
//! at exit alike.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use vxtrace_common::{DIR_TX, GlobalStats, PeerKey, PeerStats, PortKey, TooBig};

use crate::{
    diagnosis,
    discovery::peer_key,
    drops::{DropTable, PeerDrops, drop_peers},
    kernel::{DropReasons, Kallsyms},
    outages::OutageTracker,
    peers::{Peer, PeerTable},
    probes::Readout,
    schema::{
        Finding, Interval, PeerCounters, PeerGroup, PeerInterval, PeerSummary, Percentiles,
        PortMismatch, RatePercentiles, Rates, SelfCost, TcpOutcome, TooBigDrops, Traffic,
        Unattributed, UnresolvedVtep, round3, unix_now,
    },
    side_counts::Totals,
};

/// Drops since the previous interval: per peer (the zero key: no peer),
/// by reason name.
pub type DropDeltas = HashMap<PeerKey, BTreeMap<String, u64>>;

pub struct Tables {
    pub peers: PeerTable,
    pub drops: DropTable,
    pub outages: OutageTracker,
    pub global: GlobalStats,
    /// The `--peer` selection (empty: everyone).
    pub selected: Vec<IpAddr>,
    pub reasons: DropReasons,
    pub syms: Option<Kallsyms>,
    /// VXLAN on foreign ports, per (peer, port, direction).
    pub port_mismatch: Totals<PortKey, u64>,
    /// Too-big drops per peer.
    pub too_big: Totals<PeerKey, TooBig>,
    /// The VXLAN ports this node's devices use.
    pub local_ports: Vec<u16>,
    /// Pod subnets routed to VTEPs that cannot be reached: their drops are
    /// counted under the VTEP's address, which is no peer.
    pub unresolved: Vec<crate::discovery::Unresolved>,
    /// What vxtrace may not see (programs ahead, XDP, unseen packets).
    pub visibility: super::visibility::Visibility,
}

impl Tables {
    /// Tables of a run that reads no kernel (no drop-reason names, no
    /// symbols): for feeding counters made elsewhere through the sinks,
    /// as the cluster-scale measurement and the sinks' tests do.
    pub fn detached(peer_limit: usize) -> Self {
        Self {
            peers: PeerTable::new(peer_limit),
            drops: DropTable::new(65_536),
            outages: OutageTracker::new(3.0, 10.0, unix_now(), peer_limit),
            global: GlobalStats::default(),
            selected: Vec::new(),
            reasons: DropReasons::default(),
            syms: None,
            port_mismatch: Default::default(),
            too_big: Default::default(),
            local_ports: Vec::new(),
            unresolved: Vec::new(),
            visibility: Default::default(),
        }
    }

    /// Folds one read of the kernel maps in; `seconds` is the interval's
    /// length (0 for a remainder too short to count as an interval).
    pub fn fold(&mut self, readout: &Readout, seconds: f64) -> DropDeltas {
        self.global = readout.global;
        self.peers.update(readout, seconds);
        self.drops
            .update(&readout.drops, &readout.drop_slots, self.syms.as_ref());
        self.port_mismatch.update(&readout.port_mismatch);
        self.too_big.update(&readout.too_big);
        self.drops.interval_deltas(&self.reasons)
    }

    /// Cumulative drops per peer, reasons named, locations symbolized.
    pub fn drops_by_peer(&self) -> HashMap<PeerKey, PeerDrops> {
        self.drops.by_peer(&self.reasons, self.syms.as_ref())
    }

    /// Which peers to show: the `--peer` selection (even with nothing
    /// counted yet: "nothing from this peer" is an answer), or everyone,
    /// including peers known only from their drops; sorted by address.
    pub fn shown(&self, drops: &HashMap<PeerKey, PeerDrops>) -> Vec<IpAddr> {
        if !self.selected.is_empty() {
            return self.selected.clone();
        }
        let mut v: Vec<IpAddr> = self.peers.peers.values().map(|p| p.addr).collect();
        v.extend(drop_peers(drops));
        v.retain(|a| !self.unresolved.iter().any(|u| u.vtep == *a));
        v.sort();
        v.dedup();
        v
    }

    /// VTEPs pod subnets are routed to that cannot be reached, with the
    /// drops of frames sent to them (counted under the VTEP's address) and
    /// what to do.
    pub fn unresolved_vteps(&self, drops: &HashMap<PeerKey, PeerDrops>) -> Vec<UnresolvedVtep> {
        let mut by_vtep: BTreeMap<IpAddr, UnresolvedVtep> = BTreeMap::new();
        for u in &self.unresolved {
            let entry = by_vtep.entry(u.vtep).or_insert_with(|| UnresolvedVtep {
                vtep: u.vtep,
                device: u.device.clone(),
                subnets: Vec::new(),
                mac: u.mac.as_ref().map(crate::mac::format_mac),
                missing: u.missing,
                drops: drops
                    .get(&peer_key(&u.vtep))
                    .map(|d| d.by_reason.clone())
                    .unwrap_or_default(),
                finding: None,
            });
            entry.subnets.push(format!("{}/{}", u.subnet, u.prefix_len));
        }
        by_vtep
            .into_values()
            .map(|mut v| {
                v.finding = Some(diagnosis::diagnose_unresolved(&v));
                v
            })
            .collect()
    }

    /// A peer's summary over the run so far, findings included.
    pub fn peer_summary(&self, addr: IpAddr, drops: &PeerDrops) -> PeerSummary {
        let mut s = self.peer_view(addr, drops);
        s.findings = diagnosis::diagnose_peer(&addr, &s, &self.local_ports);
        s.hints = s.findings.iter().map(|f| f.hint()).collect();
        s
    }

    /// A peer's findings (the metrics ask for every peer every interval).
    pub fn findings(&self, addr: IpAddr, drops: Option<&PeerDrops>) -> Vec<Finding> {
        let none = PeerDrops::default();
        let s = self.peer_view(addr, drops.unwrap_or(&none));
        diagnosis::diagnose_peer(&addr, &s, &self.local_ports)
    }

    /// What the run knows of a peer, without findings.
    fn peer_view(&self, addr: IpAddr, drops: &PeerDrops) -> PeerSummary {
        let key = peer_key(&addr);
        let peer = self.peers.get(&addr);
        let mut counters = PeerCounters::from(&peer.map(|p| *p.total()).unwrap_or_default());
        counters.tcp.outcome = Some(tcp_outcome(peer, drops));
        let mut by_port: BTreeMap<u16, PortMismatch> = BTreeMap::new();
        for (k, n) in self.port_mismatch.get(|k| k.peer == key) {
            let m = by_port.entry(k.port).or_insert(PortMismatch {
                port: k.port,
                ..Default::default()
            });
            match k.dir {
                DIR_TX => m.tx += n,
                _ => m.rx += n,
            }
        }
        let port_mismatch = by_port.into_values().collect();
        let too_big = self
            .too_big
            .get(|k| *k == key)
            .first()
            .map(|(_, t)| TooBigDrops {
                packets: t.count,
                largest_bytes: t.max_len,
            });
        PeerSummary {
            counters,
            drops: drops.by_reason.clone(),
            drop_locations: drops.top_locations(),
            drops_outer: drops.outer_by_reason.clone(),
            drops_not_loss: drops.not_loss.clone(),
            port_mismatch,
            too_big,
            rates_pps: peer
                .and_then(|p| p.rates.as_ref())
                .map(|r| RatePercentiles {
                    tx_encap: Percentiles::of_u32(&r.tx_encap, false),
                    rx_nic: Percentiles::of_u32(&r.rx_nic, false),
                    rx_decap: Percentiles::of_u32(&r.rx_decap, false),
                }),
            silences: self.outages.silences(&key),
            hints: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// Every shown peer's summary.
    pub fn peer_summaries(
        &self,
        drops: &HashMap<PeerKey, PeerDrops>,
    ) -> BTreeMap<IpAddr, PeerSummary> {
        let none = PeerDrops::default();
        self.shown(drops)
            .into_iter()
            .map(|addr| {
                let d = drops.get(&peer_key(&addr)).unwrap_or(&none);
                (addr, self.peer_summary(addr, d))
            })
            .collect()
    }

    /// The interval line: each shown peer that changed (or was asked
    /// for), with its rates.
    pub fn interval_line(
        &self,
        elapsed: f64,
        seconds: f64,
        drop_deltas: &DropDeltas,
        read_ms: f64,
    ) -> Interval {
        let mut peers = BTreeMap::new();
        let shown: Box<dyn Iterator<Item = &Peer>> = if self.selected.is_empty() {
            Box::new(self.peers.peers.values().map(|p| &**p))
        } else {
            Box::new(self.selected.iter().filter_map(|a| self.peers.get(a)))
        };
        for peer in shown {
            let drops = drop_deltas.get(&peer_key(&peer.addr));
            let d = peer.last_delta();
            if d.is_zero() && self.selected.is_empty() && drops.is_none() {
                continue;
            }
            peers.insert(peer.addr, peer_interval(peer, &d, drops, seconds));
        }
        Interval {
            ts: unix_now(),
            elapsed_s: round3(elapsed),
            interval_s: round3(seconds),
            peers,
            drops_other: drop_deltas
                .get(&PeerKey::default())
                .cloned()
                .unwrap_or_default(),
            cost: SelfCost {
                read_ms: round3(read_ms),
                peers_known: self.peers.peers.len() as u64,
            },
        }
    }

    /// Peers not asked for (with `--peer`), or retired to bound memory,
    /// summed.
    pub fn others(&self) -> (Option<PeerGroup>, Option<PeerGroup>) {
        let t = &self.peers;
        if self.selected.is_empty() {
            let retired = (t.retired_count > 0).then(|| PeerGroup {
                count: t.retired_count,
                totals: PeerCounters::from(&t.retired),
            });
            return (None, retired);
        }
        let mut others = PeerStats::default();
        let mut count = 0u64;
        for p in t
            .peers
            .values()
            .filter(|p| !self.selected.contains(&p.addr))
        {
            others.merge(p.total());
            count += 1;
        }
        others.merge(&t.retired);
        let group = PeerGroup {
            count: count + t.retired_count,
            totals: PeerCounters::from(&others),
        };
        (Some(group), None)
    }

    pub fn unattributed(&self) -> Unattributed {
        Unattributed {
            rx_decap: Traffic::from(&self.global.rx_decap_unattributed),
            tx_dev: Traffic::from(&self.global.tx_dev_unattributed),
        }
    }
}

fn peer_interval(
    peer: &Peer,
    d: &PeerStats,
    drops: Option<&BTreeMap<String, u64>>,
    seconds: f64,
) -> PeerInterval {
    let rate = |n: u64| n as f64 / seconds;
    PeerInterval {
        counters: PeerCounters::from(d),
        drops: drops.cloned().unwrap_or_default(),
        pps: Rates {
            tx_encap: rate(d.tx_encap.packets),
            rx_nic: rate(d.rx_nic.packets),
            rx_decap: rate(d.rx_decap.packets),
        },
        bps: Rates {
            tx_encap: rate(d.tx_encap.bytes * 8),
            rx_nic: rate(d.rx_nic.bytes * 8),
            rx_decap: rate(d.rx_decap.bytes * 8),
        },
        rx_silent_s: (peer.rx_silent_s > 0.0).then(|| round3(peer.rx_silent_s)),
        sent_into_silence: (peer.rx_silent_s > 0.0).then_some(peer.sent_into_silence),
    }
}

/// What became of the peer's handshakes over the run.
fn tcp_outcome(peer: Option<&Peer>, drops: &PeerDrops) -> TcpOutcome {
    TcpOutcome {
        unanswered_syn: peer.map(Peer::unanswered_syn).unwrap_or(0),
        unanswered_syn_out: peer.map(|p| p.unanswered_syn_out).unwrap_or(0),
        unanswered_syn_in: peer.map(|p| p.unanswered_syn_in).unwrap_or(0),
        synack_dropped: drops.synack_dropped(),
        synack_dropped_reasons: drops.synack_by_reason.clone(),
        paws_rejects: drops.paws_rejects(),
        conntrack_syn_sent: 0,
        conntrack_syn_recv: 0,
        handshake_us: peer
            .and_then(|p| p.handshake_us.as_deref())
            .map(Percentiles::of_u64)
            .unwrap_or_else(Percentiles::empty),
    }
}
