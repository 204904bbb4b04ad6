//! The live terminal screen: one screenful per interval, per peer and
//! direction (packets/s, bits/s, totals, rate percentiles), what else was
//! counted, the findings in words wrapped to the terminal's width, open
//! outages and recent events. The same rendering closes the run with the
//! summary (on a terminal and on a pipe).

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    io::Write as _,
    net::IpAddr,
};

use anyhow::Result;

use super::{IntervalView, Sink, SummaryView, events};
use crate::{
    discovery::peer_key,
    schema::{
        Finding, Interval, PeerSummary, Percentiles, Traffic, Unattributed, UnresolvedVtep,
        unix_now,
    },
};

/// Peers on one screen; the rest are counted in a line.
const SCREEN_PEERS: usize = 24;
/// Peers diagnosed to choose the ones shown (the busiest, when there are
/// more).
const SCREEN_CANDIDATES: usize = 256;
/// Recent events kept on the screen.
const RECENT_EVENTS: usize = 5;
/// Width of the peer column.
const PEER_COL: usize = 40;

/// What one screen shows.
pub struct Frame<'a> {
    pub title: String,
    pub devices: &'a str,
    pub attach_summary: &'a str,
    pub peers: &'a BTreeMap<IpAddr, PeerSummary>,
    /// Peers known but not shown.
    pub hidden: usize,
    /// This interval's deltas; `None` at the end (rates are then averages).
    pub deltas: Option<&'a Interval>,
    /// Seconds the rates are over.
    pub seconds: f64,
    pub drops_other: &'a BTreeMap<String, u64>,
    pub unattributed: Unattributed,
    /// VTEPs pod subnets are routed to that cannot be reached.
    pub unresolved: &'a [UnresolvedVtep],
    /// Lines under the peers (open outages, recent events).
    pub footer: Vec<String>,
    pub width: usize,
}

/// The terminal's width, or 100 columns when it cannot be told.
pub fn terminal_width() -> usize {
    terminal_size::terminal_size()
        .map(|(w, _)| usize::from(w.0))
        .unwrap_or(100)
        .max(60)
}

/// "12.3k" style numbers.
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

/// "NETFILTER_DROP 37, OTHERHOST 5" (largest first).
fn top(counts: &BTreeMap<String, u64>, n: usize) -> String {
    let mut v: Vec<(&String, &u64)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.into_iter()
        .take(n)
        .map(|(r, c)| format!("{r} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `text` wrapped to the frame's width, every line indented to the peer
/// column; the first line starts with `mark`.
fn wrapped(out: &mut String, width: usize, mark: &str, text: &str) {
    let first = format!("{:PEER_COL$} {mark}", "");
    let rest = " ".repeat(first.chars().count());
    let opts = textwrap::Options::new(width)
        .initial_indent(&first)
        .subsequent_indent(&rest);
    for line in textwrap::wrap(text, opts) {
        let _ = writeln!(out, "{line}");
    }
}

pub fn render(f: &Frame<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", f.title);
    let _ = writeln!(s, "devices: {}", f.devices);
    let _ = writeln!(s, "attached: {}", f.attach_summary);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<PEER_COL$} {:<9} {:>9} {:>10} {:>12} {:>12}  {:>20}",
        "PEER", "DIR", "PKT/S", "BIT/S", "PACKETS", "BYTES", "PKT/S p50/p99/max"
    );
    for (addr, peer) in f.peers {
        peer_rows(&mut s, f, addr, peer);
        peer_details(&mut s, f, addr, peer);
        for finding in &peer.findings {
            finding_lines(&mut s, f.width, finding);
        }
    }
    if f.hidden > 0 {
        let _ = writeln!(
            s,
            "\n… and {} more peers (choose with --peer; all are in --json and the summary)",
            f.hidden
        );
    }
    for finding in f.unresolved.iter().filter_map(|u| u.finding.as_ref()) {
        let _ = writeln!(s);
        finding_lines(&mut s, f.width, finding);
    }
    if !f.drops_other.is_empty() {
        let _ = writeln!(s, "\ndrops of no peer: {}", top(f.drops_other, 6));
    }
    let u = &f.unattributed;
    if u.rx_decap.packets + u.tx_dev.packets > 0 {
        let _ = writeln!(
            s,
            "\nnot attributable to a peer: decapsulated {} · sent to a group/unknown MAC {}",
            u.rx_decap.packets, u.tx_dev.packets
        );
    }
    for line in &f.footer {
        let _ = writeln!(s, "{line}");
    }
    s
}

/// A finding: its headline marked, then what it means and the fix.
fn finding_lines(s: &mut String, width: usize, finding: &Finding) {
    wrapped(s, width, "! ", &finding.headline);
    wrapped(
        s,
        width,
        "  ",
        &format!("{}; fix: {}", finding.cause, finding.fix),
    );
}

/// The three direction rows of a peer.
fn peer_rows(s: &mut String, f: &Frame<'_>, addr: &IpAddr, peer: &PeerSummary) {
    let delta = f.deltas.and_then(|d| d.peers.get(addr));
    let c = &peer.counters;
    let rates = peer.rates_pps.as_ref();
    let rows: [(&str, Traffic, Option<Traffic>, Option<&Percentiles>); 3] = [
        (
            "tx_encap",
            c.tx_encap,
            delta.map(|d| d.counters.tx_encap),
            rates.map(|r| &r.tx_encap),
        ),
        (
            "rx_nic",
            c.rx_nic,
            delta.map(|d| d.counters.rx_nic),
            rates.map(|r| &r.rx_nic),
        ),
        (
            "rx_decap",
            c.rx_decap,
            delta.map(|d| d.counters.rx_decap),
            rates.map(|r| &r.rx_decap),
        ),
    ];
    for (i, (name, total, d, pct)) in rows.into_iter().enumerate() {
        // Live: this interval's rate; at the end, the run's average.
        let d = match (f.deltas, d) {
            (Some(_), d) => d.unwrap_or_default(),
            (None, _) => total,
        };
        let pct = pct
            .map(|h| {
                format!(
                    "{}/{}/{}",
                    human(h.p50 as f64),
                    human(h.p99 as f64),
                    human(h.max as f64)
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
            "{:<PEER_COL$} {:<9} {:>9} {:>10} {:>12} {:>12}  {:>20}",
            label,
            name,
            human(d.packets as f64 / f.seconds),
            human(d.bytes as f64 * 8.0 / f.seconds),
            total.packets,
            total.bytes,
            pct
        );
    }
}

/// What else was counted for a peer, one line each, only where non-zero.
fn peer_details(s: &mut String, f: &Frame<'_>, addr: &IpAddr, peer: &PeerSummary) {
    let c = &peer.counters;
    let o = &c.outer_size;
    let mut lines = Vec::new();
    if c.malformed + c.unknown_vni + o.tx_over_1450 + o.rx_over_1450 > 0 {
        lines.push(format!(
            "malformed {} · unknown VNI {} · outer >1450B tx {} rx {} · >1500B tx {} rx {}",
            c.malformed,
            c.unknown_vni,
            o.tx_over_1450,
            o.rx_over_1450,
            o.tx_over_1500,
            o.rx_over_1500
        ));
    }
    if let Some(d) = f.deltas.and_then(|d| d.peers.get(addr))
        && let Some(silent) = d
            .rx_silent_s
            .filter(|s| *s >= crate::peers::SILENCE_WORTH_SHOWING_S)
    {
        lines.push(format!(
            "NOW: nothing received for {silent:.0}s while sending ({} packets sent into the silence)",
            d.sent_into_silence.unwrap_or(0)
        ));
    }
    let lost: BTreeMap<String, u64> = peer
        .drops
        .iter()
        .map(|(r, n)| {
            (
                r.clone(),
                n - peer.drops_not_loss.get(r).copied().unwrap_or(0).min(*n),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect();
    if !lost.is_empty() {
        let at = peer
            .drop_locations
            .first()
            .map(|l| format!(" (top location {})", l.location))
            .unwrap_or_default();
        lines.push(format!("drops: {}{at}", top(&lost, 4)));
    }
    if !peer.drops_not_loss.is_empty() {
        lines.push(format!("not loss: {}", top(&peer.drops_not_loss, 4)));
    }
    for m in &peer.port_mismatch {
        lines.push(format!(
            "VXLAN on UDP port {}, which no device here uses: {} from the peer, {} to it",
            m.port, m.rx, m.tx
        ));
    }
    if let Some(t) = &peer.too_big {
        lines.push(format!(
            "too big: {} packets dropped, the largest {} bytes",
            t.packets, t.largest_bytes
        ));
    }
    if c.inner_dst_mac_mismatch + c.inner_src_vtep > 0 {
        lines.push(format!(
            "inner dst MAC not ours {} · inner src is peer VTEP {}",
            c.inner_dst_mac_mismatch, c.inner_src_vtep
        ));
    }
    lines.extend(tcp_line(peer));
    for line in lines {
        wrapped(s, f.width, "", &line);
    }
}

fn tcp_line(peer: &PeerSummary) -> Option<String> {
    let t = &peer.counters.tcp;
    let o = peer.tcp_outcome();
    let any =
        t.syn_sent + t.syn_received + t.rst + o.unanswered_syn + o.paws_rejects + o.synack_dropped;
    if any == 0 {
        return None;
    }
    let hs = &o.handshake_us;
    let latency = if hs.count.unwrap_or(0) > 0 {
        format!(
            " · handshake p50/p99/max {}/{}/{} us",
            hs.p50, hs.p99, hs.max
        )
    } else {
        String::new()
    };
    Some(format!(
        "tcp: SYN out {} / SYN-ACK in {} · SYN in {} / SYN-ACK out {} · retrans {} · unanswered {} · RST {}/{} · SYN-ACK dropped {} · PAWS {}{latency}",
        t.syn_sent,
        t.synack_received,
        t.syn_received,
        t.synack_sent,
        t.syn_retrans,
        o.unanswered_syn,
        t.rst_sent,
        t.rst_received,
        o.synack_dropped,
        o.paws_rejects
    ))
}

/// The peers worth a place on a live screen: the `--peer` selection, or
/// those with findings first, then the busiest.
pub fn choose_peers(
    mut all: BTreeMap<IpAddr, PeerSummary>,
    selected: bool,
) -> (BTreeMap<IpAddr, PeerSummary>, usize) {
    if selected || all.len() <= SCREEN_PEERS {
        return (all, 0);
    }
    let mut order: Vec<(bool, u64, IpAddr)> = all
        .iter()
        .map(|(a, p)| {
            let c = &p.counters;
            (
                p.findings.is_empty(),
                u64::MAX - (c.tx_encap.packets + c.rx_nic.packets),
                *a,
            )
        })
        .collect();
    order.sort();
    let keep: Vec<IpAddr> = order
        .into_iter()
        .take(SCREEN_PEERS)
        .map(|(.., a)| a)
        .collect();
    let hidden = all.len() - keep.len();
    all.retain(|a, _| keep.contains(a));
    (all, hidden)
}

/// The terminal screen sink.
pub struct Screen {
    devices: String,
    attach_summary: String,
    recent: VecDeque<String>,
}

impl Screen {
    pub fn new(devices: String, attach_summary: String) -> Self {
        Self {
            devices,
            attach_summary,
            recent: VecDeque::new(),
        }
    }

    fn footer(&self, view: &IntervalView<'_>) -> Vec<String> {
        let t = view.tables;
        // What vxtrace cannot see comes first: it qualifies every number
        // above.
        let mut lines: Vec<String> = t
            .visibility
            .in_force()
            .iter()
            .map(|b| format!("NOT SEEN: {}", b.message))
            .collect();
        for p in t.peers.peers.values() {
            if let Some(o) = t.outages.open(&peer_key(&p.addr)) {
                lines.push(format!(
                    "OUTAGE {}: silent since {:.1}s ago, {} packets sent into the silence",
                    o.peer,
                    unix_now() - o.start,
                    o.sent_into_silence
                ));
            }
        }
        if !self.recent.is_empty() {
            lines.push(String::new());
            lines.push("recent events:".into());
            lines.extend(self.recent.iter().cloned());
        }
        lines
    }
}

impl Sink for Screen {
    fn interval(&mut self, view: &IntervalView<'_>) -> Result<()> {
        for e in view.events {
            self.recent.extend(events::describe(e));
        }
        while self.recent.len() > RECENT_EVENTS {
            self.recent.pop_front();
        }
        let t = view.tables;
        let drops = t.drops_by_peer();
        let mut candidates = t.shown(&drops);
        let known = candidates.len();
        if candidates.len() > SCREEN_CANDIDATES {
            candidates.sort_by_key(|a| {
                std::cmp::Reverse(
                    t.peers
                        .get(a)
                        .map(|p| p.total().tx_encap.packets)
                        .unwrap_or(0),
                )
            });
            candidates.truncate(SCREEN_CANDIDATES);
        }
        let none = Default::default();
        let all = candidates
            .into_iter()
            .map(|a| {
                (
                    a,
                    t.peer_summary(a, drops.get(&peer_key(&a)).unwrap_or(&none)),
                )
            })
            .collect();
        let (peers, _) = choose_peers(all, !t.selected.is_empty());
        let line = view.interval();
        let other = drops
            .get(&Default::default())
            .map(|d| d.by_reason.clone())
            .unwrap_or_default();
        let unresolved = t.unresolved_vteps(&drops);
        let frame = Frame {
            title: format!(
                "vxtrace watch · elapsed {:.0}s · interval {:.1}s · {} peers known",
                line.elapsed_s,
                line.interval_s,
                t.peers.peers.len()
            ),
            devices: &self.devices,
            attach_summary: &self.attach_summary,
            peers: &peers,
            hidden: known - peers.len(),
            deltas: Some(line),
            seconds: line.interval_s.max(0.001),
            drops_other: &other,
            unattributed: t.unattributed(),
            unresolved: &unresolved,
            footer: self.footer(view),
            width: terminal_width(),
        };
        let mut out = std::io::stdout().lock();
        write!(out, "\x1b[H\x1b[2J{}", render(&frame))?;
        out.flush()?;
        Ok(())
    }

    fn summary(&mut self, view: &SummaryView<'_>) -> Result<()> {
        print_summary(view, &self.devices, &self.attach_summary, terminal_width())
    }
}

/// The summary as a screen, after the last interval.
pub fn print_summary(
    view: &SummaryView<'_>,
    devices: &str,
    attach_summary: &str,
    width: usize,
) -> Result<()> {
    let s = view.summary();
    let frame = Frame {
        title: format!(
            "=== summary over {:.1}s · {} peers ===",
            s.duration_s,
            s.peers.len()
        ),
        devices,
        attach_summary,
        peers: &s.peers,
        hidden: 0,
        deltas: None,
        seconds: s.duration_s.max(0.001),
        drops_other: &s.drops_other,
        unattributed: s.unattributed,
        unresolved: &s.unresolved,
        footer: s
            .blind_spots
            .iter()
            .map(|b| format!("\nNOT SEEN: {}", b.message))
            .chain(s.peer_nodes.iter().map(|n| {
                let peers: Vec<String> = n.peers.iter().map(|p| p.to_string()).collect();
                format!("\none node: {} ({})", peers.join(" and "), n.evidence)
            }))
            .collect(),
        width,
    };
    let mut out = std::io::stdout().lock();
    write!(out, "\n{}", render(&frame))?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Cause, Direction, Finding, Segment};

    #[test]
    fn human_numbers() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1500.0), "1.5k");
        assert_eq!(human(2_500_000.0), "2.5M");
    }

    /// Findings wrap at word boundaries within the width, indented under
    /// the peer.
    #[test]
    fn findings_wrap_to_the_width() {
        let mut peer = PeerSummary::default();
        peer.counters.tx_encap.packets = 200;
        peer.findings.push(Finding {
            kind: Cause::OneWay,
            headline: "one-way: sent 200, received 0".into(),
            cause: "nothing from this peer reached the underlay device, so the loss is outside this host".into(),
            segment: Segment::Path,
            direction: Direction::Both,
            evidence: "tx_encap 200, rx_nic 0".into(),
            fix: "allow the VXLAN UDP port between the nodes".into(),
        });
        let peers = BTreeMap::from([("192.0.2.12".parse().unwrap(), peer)]);
        let frame = Frame {
            title: "t".into(),
            devices: "d",
            attach_summary: "a",
            peers: &peers,
            hidden: 0,
            deltas: None,
            seconds: 1.0,
            drops_other: &BTreeMap::new(),
            unattributed: Unattributed::default(),
            unresolved: &[],
            footer: Vec::new(),
            width: 80,
        };
        let text = render(&frame);
        let finding: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("! one-way"))
            .collect();
        assert!(finding.len() >= 3, "{text}");
        for line in &finding {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
            assert!(line.starts_with(&" ".repeat(PEER_COL)), "{line:?}");
        }
        // Words are whole: joined back, the text is all there.
        let joined = finding
            .iter()
            .map(|l| l.trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            joined.contains("so the loss is outside this host; fix: allow the VXLAN UDP port"),
            "{joined}"
        );
    }
}
