//! A cluster report in words: the link matrix (rows from, columns to),
//! then each link that loses traffic, or that cannot be judged, in
//! sentences with its cause, evidence and fix.

use std::fmt::Write as _;

use crate::schema::{ClusterReport, Link, LinkStatus, Segment};

/// The matrix's rows and columns: the recorded nodes, then the peers no
/// recording is from. The heat map draws them in this order too.
pub fn node_order(r: &ClusterReport) -> Vec<&str> {
    r.nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(r.unrecorded.iter().map(|n| n.name.as_str()))
        .collect()
}

pub fn text(r: &ClusterReport) -> String {
    let mut s = String::new();
    let names = node_order(r);
    let rows: Vec<Vec<String>> = names
        .iter()
        .map(|from| {
            names
                .iter()
                .map(|to| {
                    if from == to {
                        "-".to_string()
                    } else {
                        Cell::of(r, from, to).label()
                    }
                })
                .collect()
        })
        .collect();
    let width = names
        .iter()
        .map(|n| n.len())
        .chain(rows.iter().flatten().map(|c| c.len()))
        .max()
        .unwrap_or(4)
        .max(20);
    let _ = writeln!(s, "links (rows: from, columns: to; loss %, where lost)\n");
    let _ = write!(s, "{:width$}", "");
    for n in &names {
        let _ = write!(s, "  {n:width$}");
    }
    let _ = writeln!(s);
    for (from, row) in names.iter().zip(&rows) {
        let _ = write!(s, "{from:width$}");
        for c in row {
            let _ = write!(s, "  {c:width$}");
        }
        let _ = writeln!(s);
    }
    for u in &r.unrecorded {
        let _ = writeln!(
            s,
            "\nno recording of {} (a peer of {}): its links are not judged (far end not recorded)",
            u.name,
            u.seen_by.join(", ")
        );
    }
    for l in &r.links {
        if l.status != LinkStatus::Judged {
            let receiver_unrecorded = r.unrecorded.iter().any(|u| u.name == l.to_node);
            not_judged(&mut s, l, receiver_unrecorded);
        } else if l.loss_segment != Segment::None {
            let _ = writeln!(
                s,
                "\n{} -> {}: tx_dev {} · tx_encap {} · rx_nic {} · rx_decap {}; lost {} ({}%) on the {}",
                end(&l.from_node, &l.from),
                end(&l.to_node, &l.to),
                l.tx_dev,
                l.tx_encap,
                l.rx_nic,
                l.rx_decap,
                l.lost,
                l.loss_pct,
                l.loss_segment.as_str().replace('_', " ")
            );
            findings(&mut s, l);
        }
    }
    for h in &r.blackholes {
        let _ = writeln!(s, "\nblackhole of {}: {}", h.node, h.evidence);
    }
    s
}

/// A link that cannot be judged: why, what each recorded end counted
/// (over its own recording, not compared), its own findings.
fn not_judged(s: &mut String, l: &Link, receiver_unrecorded: bool) {
    let _ = writeln!(
        s,
        "\n{} -> {}: not judged: {}",
        end(&l.from_node, &l.from),
        end(&l.to_node, &l.to),
        l.not_judged.as_deref().unwrap_or("")
    );
    let sent = format!("tx_dev {} · tx_encap {}", l.tx_dev, l.tx_encap);
    let got = format!("rx_nic {} · rx_decap {}", l.rx_nic, l.rx_decap);
    let _ = match l.status {
        LinkStatus::FarEndNotRecorded if receiver_unrecorded => {
            writeln!(s, "  {} counted: {sent}", l.from_node)
        }
        LinkStatus::FarEndNotRecorded => writeln!(s, "  {} counted: {got}", l.to_node),
        _ => writeln!(
            s,
            "  {} counted: {sent}; {}: {got} (not compared)",
            l.from_node, l.to_node
        ),
    };
    findings(s, l);
}

fn findings(s: &mut String, l: &Link) {
    for f in &l.findings {
        let _ = writeln!(
            s,
            "  likely cause: {}\n    {}\n    evidence: {}\n    fix: {}",
            f.headline, f.cause, f.evidence, f.fix
        );
    }
}

/// "node1 (192.0.2.11)"; a node without a recording is its address.
fn end(name: &str, addr: &std::net::IpAddr) -> String {
    if name == addr.to_string() {
        name.to_string()
    } else {
        format!("{name} ({addr})")
    }
}

/// What a cell of the matrix shows for the links from one node to another.
pub enum Cell<'a> {
    /// The worst of the judged links.
    Judged(&'a Link),
    /// None judged: why (the first link's status).
    NotJudged(LinkStatus),
    NoTraffic,
}

impl<'a> Cell<'a> {
    pub fn of(r: &'a ClusterReport, from: &str, to: &str) -> Self {
        let links = || {
            r.links
                .iter()
                .filter(move |l| l.from_node == from && l.to_node == to)
        };
        if let Some(l) = links()
            .filter(|l| l.status == LinkStatus::Judged)
            .max_by(|a, b| a.loss_pct.total_cmp(&b.loss_pct))
        {
            return Cell::Judged(l);
        }
        match links().next() {
            Some(l) => Cell::NotJudged(l.status),
            None => Cell::NoTraffic,
        }
    }

    /// "0% none", "100% path", "far end not recorded", "no shared span".
    pub fn label(&self) -> String {
        match self {
            Cell::Judged(l) => format!("{:.0}% {}", l.loss_pct, l.loss_segment.as_str()),
            Cell::NotJudged(LinkStatus::FarEndNotRecorded) => "far end not recorded".into(),
            Cell::NotJudged(LinkStatus::NoSharedSpan) => "no shared span".into(),
            Cell::NotJudged(LinkStatus::Judged) | Cell::NoTraffic => "no traffic".into(),
        }
    }
}
