//! Rendering: the live terminal screen, plain per-interval lines when stdout
//! is not a terminal, and NDJSON (`--json`). Also the hints that turn
//! counters into words.

use std::{fmt::Write as _, net::IpAddr};

use serde_json::{Value, json};
use vxtrace_common::{Counter, GlobalStats, PeerStats, SIZE_BUCKET_BOUNDS, SIZE_BUCKETS};

use crate::{
    drops::PeerDrops,
    peers::{Peer, PeerTable},
};

pub fn counter_json(c: &Counter) -> Value {
    json!({"packets": c.packets, "bytes": c.bytes})
}

/// The per-peer counters, as the summary and interval lines show them.
pub fn stats_json(s: &PeerStats) -> Value {
    json!({
        "tx_encap": counter_json(&s.tx_encap),
        "rx_nic": counter_json(&s.rx_nic),
        "rx_decap": counter_json(&s.rx_decap),
        "tx_dev": counter_json(&s.tx_dev),
        "malformed": s.malformed_rx + s.malformed_tx,
        "malformed_rx": s.malformed_rx,
        "malformed_tx": s.malformed_tx,
        "unknown_vni": s.unknown_vni,
        "outer_size": {
            "tx_over_1450": s.tx_over_1450,
            "tx_over_1500": s.tx_over_1500,
            "rx_over_1450": s.rx_over_1450,
            "rx_over_1500": s.rx_over_1500,
            "tx": size_json(&s.tx_size),
            "rx": size_json(&s.rx_size),
        },
        "fragmented": {"tx": s.tx_fragmented, "rx": s.rx_fragmented},
        "inner_dst_mac_mismatch": s.inner_dst_mac_mismatch,
        "inner_src_vtep": s.inner_src_vtep,
        "tcp": {
            "syn_sent": s.syn_sent,
            "syn_received": s.syn_received,
            "synack_sent": s.synack_sent,
            "synack_received": s.synack_received,
            "rst": s.rst_sent + s.rst_received,
            "rst_sent": s.rst_sent,
            "rst_received": s.rst_received,
            "syn_retrans": s.syn_retrans,
        },
    })
}

/// An outer-size distribution: counts per bucket ("<=1450", ">9000"), and
/// the bucket bounds that hold the median and the 99th percentile.
fn size_json(b: &[u64; SIZE_BUCKETS]) -> Value {
    let label = |i: usize| {
        if i < SIZE_BUCKETS - 1 {
            format!("<={}", SIZE_BUCKET_BOUNDS[i])
        } else {
            format!(">{}", SIZE_BUCKET_BOUNDS[SIZE_BUCKETS - 2])
        }
    };
    let total: u64 = b.iter().sum();
    let quantile = |q: f64| -> Value {
        if total == 0 {
            return Value::Null;
        }
        let target = (q * total as f64).ceil() as u64;
        let mut acc = 0;
        for (i, n) in b.iter().enumerate() {
            acc += n;
            if acc >= target.max(1) {
                return json!(label(i));
            }
        }
        Value::Null
    };
    let buckets: serde_json::Map<String, Value> = b
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (label(i), json!(n)))
        .collect();
    json!({"packets": total, "buckets": buckets, "p50": quantile(0.5), "p99": quantile(0.99)})
}

/// Adds what only the whole run knows to a peer's `tcp` object.
fn tcp_summary(v: &mut Value, peer: Option<&Peer>, drops: &PeerDrops) {
    let tcp = &mut v["tcp"];
    tcp["unanswered_syn"] = json!(peer.map(|p| p.unanswered_syn()).unwrap_or(0));
    tcp["unanswered_syn_out"] = json!(peer.map(|p| p.unanswered_syn_out).unwrap_or(0));
    tcp["unanswered_syn_in"] = json!(peer.map(|p| p.unanswered_syn_in).unwrap_or(0));
    tcp["synack_dropped"] = json!(drops.synack_dropped());
    tcp["synack_dropped_reasons"] = json!(drops.synack_by_reason);
    tcp["paws_rejects"] = json!(drops.paws_rejects());
    let h = peer.and_then(|p| p.handshake_us.as_ref());
    tcp["handshake_us"] = match h {
        Some(h) => json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "max": h.max(),
        }),
        None => json!({"count": 0, "p50": 0, "p99": 0, "max": 0}),
    };
}

/// A peer with no counters of its own yet (selected, or known from drops).
pub fn empty_peer_summary_json(drops: &PeerDrops) -> Value {
    let zero = PeerStats::default();
    let mut v = stats_json(&zero);
    v["drops"] = drops.json();
    v["drop_locations"] = drops.locations_json();
    tcp_summary(&mut v, None, drops);
    v["hints"] = json!(hints(&zero, drops, 0));
    v
}

fn percentiles(h: &hdrhistogram::Histogram<u32>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.5),
        "p99": h.value_at_quantile(0.99),
        "max": h.max(),
    })
}

/// A peer's totals, rate percentiles and hints (summary form).
pub fn peer_summary_json(peer: &Peer, drops: &PeerDrops) -> Value {
    let total = peer.total();
    let mut v = stats_json(&total);
    v["drops"] = drops.json();
    v["drop_locations"] = drops.locations_json();
    if let Some(r) = &peer.rates {
        v["rates_pps"] = json!({
            "tx_encap": percentiles(&r.tx_encap),
            "rx_nic": percentiles(&r.rx_nic),
            "rx_decap": percentiles(&r.rx_decap),
        });
    }
    tcp_summary(&mut v, Some(peer), drops);
    v["hints"] = json!(hints(&total, drops, peer.unanswered_syn()));
    v
}

pub fn global_json(g: &GlobalStats) -> Value {
    json!({
        "rx_decap": counter_json(&g.rx_decap_unattributed),
        "tx_dev": counter_json(&g.tx_dev_unattributed),
    })
}

/// What the counters of one peer suggest, in words. Thresholds keep a
/// packet in flight at the moment of reading from raising a hint.
pub fn hints(s: &PeerStats, drops: &PeerDrops, unanswered_syn: u64) -> Vec<String> {
    let mut out = Vec::new();
    let paws = drops.paws_rejects();
    if paws > 0 {
        out.push(format!(
            "TCP timestamps: {paws} segments of this peer's connections were dropped by the PAWS check (old timestamp): clients behind one NAT address with unrelated timestamps (tcp_tw_recycle, TIME_WAIT reuse); stop SNAT between nodes/pods or disable tcp_tw_recycle"
        ));
    }
    if unanswered_syn > 0 {
        out.push(format!(
            "{unanswered_syn} SYNs got no SYN-ACK in time ({} retransmitted SYNs): the handshake dies on the server side; look there for SYN-ACK drops or PAWS rejects",
            s.syn_retrans
        ));
    }
    let synack = drops.synack_dropped();
    if synack > 0 {
        let why = drops
            .synack_by_reason
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push(format!(
            "{synack} SYN-ACKs of handshakes with this peer were dropped on this host ({why}): those connections cannot complete"
        ));
    }
    let nf = drops.get("NETFILTER_DROP");
    if nf > 0 {
        if s.rx_nic.packets > s.rx_decap.packets {
            out.push(format!(
                "host firewall: packets from this peer reached the underlay device ({}) but only {} were decapsulated, and netfilter dropped {nf} (NETFILTER_DROP): check iptables/nftables input rules for the VXLAN UDP port",
                s.rx_nic.packets, s.rx_decap.packets
            ));
        } else {
            out.push(format!(
                "netfilter dropped {nf} packets of this peer's traffic (NETFILTER_DROP): check forward/input rules for pod traffic"
            ));
        }
    }
    let otherhost = drops.get("OTHERHOST");
    if s.inner_dst_mac_mismatch > 0 || otherhost > 0 {
        out.push(format!(
            "stale neighbour entry on the peer: {} frames from it were addressed to a MAC that is not this VTEP's, {otherhost} dropped as OTHERHOST; the peer still has this node's old VTEP MAC (e.g. after flannel was recreated): flush that neighbour entry on the peer",
            s.inner_dst_mac_mismatch
        ));
    }
    if s.inner_src_vtep > 0 {
        out.push(format!(
            "masquerade: {} packets from this peer carry the peer's own VTEP address as inner source instead of a pod address; the peer SNATs pod traffic (check its MASQUERADE / --ip-masq rules)",
            s.inner_src_vtep
        ));
    }
    let tx = s.tx_encap.packets;
    let rx = s.rx_nic.packets;
    if tx >= 5 && rx == 0 {
        out.push(format!(
            "one-way: sent {tx}, received 0; nothing from this peer reached the underlay device, \
             so the loss is outside this host (path, security group, NAT) or on the peer"
        ));
    }
    let decap = s.rx_decap.packets;
    if rx >= 5 && decap * 10 < rx * 9 && nf == 0 {
        out.push(format!(
            "arrived at the underlay device {rx}, decapsulated {decap}: lost on this host between \
             the NIC and the VXLAN device (firewall on the VXLAN port, no socket, wrong VNI)"
        ));
    }
    let dev = s.tx_dev.packets;
    if dev >= 5 && s.tx_encap.packets * 10 < dev * 9 {
        out.push(format!(
            "handed to the VXLAN device {dev}, left the underlay device {}: lost on this host \
             while encapsulating (route to the peer, MTU, qdisc)",
            s.tx_encap.packets
        ));
    }
    let malformed = s.malformed_rx + s.malformed_tx;
    if malformed > 0 {
        out.push(format!(
            "{malformed} packets to the VXLAN port were not valid VXLAN (truncated, I flag clear \
             or reserved bits set): a misconfigured sender, another protocol on the port, or a scan"
        ));
    }
    if s.unknown_vni > 0 {
        out.push(format!(
            "{} VXLAN packets carried a VNI no watched device uses: VNI mismatch between nodes",
            s.unknown_vni
        ));
    }
    if s.tx_over_1500 > 0 && s.rx_nic.packets == 0 {
        out.push(format!(
            "{} outer packets above 1500 bytes sent and nothing received: check the path MTU \
             (VXLAN adds 50 bytes on IPv4, 70 on IPv6)",
            s.tx_over_1500
        ));
    }
    out
}

/// "12.3k" style numbers for the screen.
pub fn human(n: f64) -> String {
    let (v, unit) = if n >= 1e9 {
        (n / 1e9, "G")
    } else if n >= 1e6 {
        (n / 1e6, "M")
    } else if n >= 1e3 {
        (n / 1e3, "k")
    } else {
        return format!("{n:.0}");
    };
    format!("{v:.1}{unit}")
}

pub struct ScreenHeader<'a> {
    pub elapsed_s: f64,
    pub interval_s: f64,
    pub devices: &'a str,
    pub attach_summary: &'a str,
}

/// Which peers to show: the `--peer` selection (even with nothing counted
/// yet: "nothing from this peer" is an answer), or everyone.
pub fn shown<'a>(table: &'a PeerTable, selected: &[IpAddr]) -> Vec<(IpAddr, Option<&'a Peer>)> {
    if selected.is_empty() {
        table
            .sorted()
            .into_iter()
            .map(|p| (p.addr, Some(p)))
            .collect()
    } else {
        selected.iter().map(|a| (*a, table.get(a))).collect()
    }
}

/// One screenful for a terminal.
pub fn render_screen(
    header: &ScreenHeader<'_>,
    table: &PeerTable,
    selected: &[IpAddr],
    global: &GlobalStats,
    drops: &std::collections::HashMap<vxtrace_common::PeerKey, PeerDrops>,
) -> String {
    let mut s = String::new();
    let mut shown = shown(table, selected);
    for addr in crate::drops::drop_peers(drops) {
        if (selected.is_empty() || selected.contains(&addr))
            && !shown.iter().any(|(a, _)| *a == addr)
        {
            shown.push((addr, None));
        }
    }
    let empty = PeerDrops::default();
    let _ = writeln!(
        s,
        "vxtrace watch · elapsed {:.0}s · interval {:.1}s · {} peers known{}",
        header.elapsed_s,
        header.interval_s,
        table.peers.len(),
        if selected.is_empty() {
            String::new()
        } else {
            format!(" · showing {}", shown.len())
        }
    );
    let _ = writeln!(s, "devices: {}", header.devices);
    let _ = writeln!(s, "attached: {}", header.attach_summary);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<40} {:<9} {:>9} {:>10} {:>12} {:>12}  {:>20}",
        "PEER", "DIR", "PKT/S", "BIT/S", "PACKETS", "BYTES", "PKT/S p50/p99/max"
    );
    for (addr, peer) in shown {
        let (total, delta) = match peer {
            Some(p) => (p.total(), p.last_delta()),
            None => (PeerStats::default(), PeerStats::default()),
        };
        let rows = [
            (
                "tx_encap",
                total.tx_encap,
                delta.tx_encap,
                peer.and_then(|p| p.rates.as_ref()).map(|r| &r.tx_encap),
            ),
            (
                "rx_nic",
                total.rx_nic,
                delta.rx_nic,
                peer.and_then(|p| p.rates.as_ref()).map(|r| &r.rx_nic),
            ),
            (
                "rx_decap",
                total.rx_decap,
                delta.rx_decap,
                peer.and_then(|p| p.rates.as_ref()).map(|r| &r.rx_decap),
            ),
        ];
        for (i, (name, tot, d, hist)) in rows.iter().enumerate() {
            let pps = d.packets as f64 / header.interval_s;
            let bps = d.bytes as f64 * 8.0 / header.interval_s;
            let pct = hist
                .map(|h| {
                    format!(
                        "{}/{}/{}",
                        human(h.value_at_quantile(0.5) as f64),
                        human(h.value_at_quantile(0.99) as f64),
                        human(h.max() as f64)
                    )
                })
                .unwrap_or_else(|| "-".into());
            let label = if i == 0 {
                addr.to_string()
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "{:<40} {:<9} {:>9} {:>10} {:>12} {:>12}  {:>20}",
                label,
                name,
                human(pps),
                human(bps),
                tot.packets,
                tot.bytes,
                pct
            );
        }
        let malformed = total.malformed_rx + total.malformed_tx;
        if malformed + total.unknown_vni + total.tx_over_1450 + total.rx_over_1450 > 0 {
            let _ = writeln!(
                s,
                "{:<40} malformed {} · unknown VNI {} · outer >1450B tx {} rx {} · >1500B tx {} rx {}",
                "",
                malformed,
                total.unknown_vni,
                total.tx_over_1450,
                total.rx_over_1450,
                total.tx_over_1500,
                total.rx_over_1500
            );
        }
        if let Some(p) = peer
            && p.rx_silent_s >= crate::peers::SILENCE_WORTH_SHOWING_S
        {
            let _ = writeln!(
                s,
                "{:<40} ! NOW: nothing received for {:.0}s while sending ({} packets sent into the silence)",
                "", p.rx_silent_s, p.sent_into_silence
            );
        }
        let d = drops
            .get(&crate::discovery::peer_key(&addr))
            .unwrap_or(&empty);
        if d.total() > 0 {
            let top = d
                .locations
                .first()
                .map(|(_, _, l)| format!(" (top location {l})"))
                .unwrap_or_default();
            let _ = writeln!(s, "{:<40} drops: {}{top}", "", d.top_reasons(4));
        }
        if total.inner_dst_mac_mismatch + total.inner_src_vtep > 0 {
            let _ = writeln!(
                s,
                "{:<40} inner dst MAC not ours {} · inner src is peer VTEP {}",
                "", total.inner_dst_mac_mismatch, total.inner_src_vtep
            );
        }
        let unanswered = peer.map(|p| p.unanswered_syn()).unwrap_or(0);
        let tcp_any = total.syn_sent + total.syn_received + total.rst_sent + total.rst_received;
        if tcp_any + unanswered + d.paws_rejects() + d.synack_dropped() > 0 {
            let hs = peer
                .and_then(|p| p.handshake_us.as_ref())
                .map(|h| {
                    format!(
                        " · handshake p50/p99/max {}/{}/{} us",
                        h.value_at_quantile(0.5),
                        h.value_at_quantile(0.99),
                        h.max()
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                s,
                "{:<40} tcp: SYN out {} / SYN-ACK in {} · SYN in {} / SYN-ACK out {} · retrans {} · unanswered {} · RST {}/{} · SYN-ACK dropped {} · PAWS {}{hs}",
                "",
                total.syn_sent,
                total.synack_received,
                total.syn_received,
                total.synack_sent,
                total.syn_retrans,
                unanswered,
                total.rst_sent,
                total.rst_received,
                d.synack_dropped(),
                d.paws_rejects()
            );
        }
        for h in hints(&total, d, unanswered) {
            let _ = writeln!(s, "{:<40} ! {h}", "");
        }
    }
    if let Some(other) = drops.get(&vxtrace_common::PeerKey::default())
        && other.total() > 0
    {
        let _ = writeln!(s, "\ndrops of no peer: {}", other.top_reasons(6));
    }
    if global.rx_decap_unattributed.packets + global.tx_dev_unattributed.packets > 0 {
        let _ = writeln!(
            s,
            "\nnot attributable to a peer: decapsulated {} · sent to a group/unknown MAC {}",
            global.rx_decap_unattributed.packets, global.tx_dev_unattributed.packets
        );
    }
    s
}

/// One plain line per shown peer (stdout not a terminal, no --json).
pub fn plain_lines(
    elapsed_s: f64,
    interval_s: f64,
    table: &PeerTable,
    selected: &[IpAddr],
) -> String {
    let mut s = String::new();
    for (addr, peer) in shown(table, selected) {
        let (total, delta) = match peer {
            Some(p) => (p.total(), p.last_delta()),
            None => (PeerStats::default(), PeerStats::default()),
        };
        let _ = writeln!(
            s,
            "t={elapsed_s:.1}s peer={addr} tx_encap={}pkt/s({}) rx_nic={}pkt/s({}) rx_decap={}pkt/s({}) malformed={}",
            human(delta.tx_encap.packets as f64 / interval_s),
            total.tx_encap.packets,
            human(delta.rx_nic.packets as f64 / interval_s),
            total.rx_nic.packets,
            human(delta.rx_decap.packets as f64 / interval_s),
            total.rx_decap.packets,
            total.malformed_rx + total.malformed_tx,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_way_hint() {
        let mut s = PeerStats::default();
        s.tx_encap.add(200, 20_000);
        let none = PeerDrops::default();
        let h = hints(&s, &none, 0);
        assert_eq!(h.len(), 1);
        assert!(h[0].starts_with("one-way: sent 200, received 0"));
        s.rx_nic.add(200, 20_000);
        s.rx_decap.add(200, 20_000);
        assert!(hints(&s, &none, 0).is_empty());
        assert!(hints(&s, &none, 2)[0].starts_with("2 SYNs got no SYN-ACK"));
    }

    #[test]
    fn host_loss_hint() {
        let mut s = PeerStats::default();
        s.tx_encap.add(10, 1000);
        s.rx_nic.add(10, 1000);
        let h = hints(&s, &PeerDrops::default(), 0);
        assert_eq!(h.len(), 1);
        assert!(h[0].contains("decapsulated 0"));
        let mut d = PeerDrops::default();
        d.by_reason.insert("NETFILTER_DROP".into(), 10);
        let h = hints(&s, &d, 0);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].starts_with("host firewall"));
    }

    #[test]
    fn human_numbers() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1500.0), "1.5k");
        assert_eq!(human(2_500_000.0), "2.5M");
    }
}
