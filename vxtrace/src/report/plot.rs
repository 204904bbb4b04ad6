//! The timeline: one panel per peer, tx and rx packet rates over
//! wall-clock time (intervals in which a peer was silent draw as zero),
//! outages shaded, intervals with drops marked.

use std::{net::IpAddr, path::Path};

use anyhow::{Result, anyhow, bail};
use plotters::prelude::*;

use super::{
    cluster::ClusterNode,
    matrix::Cell,
    read::{Point, Recording, Sample},
};
use crate::schema::{ClusterReport, Link, LinkStatus, Segment};

/// A peer's points at every interval of the recording: an interval that
/// does not list the peer had nothing of it.
pub fn filled(series: &[Point], times: &[f64]) -> Vec<Point> {
    let mut out = Vec::with_capacity(times.len());
    let mut next = series.iter().peekable();
    for &ts in times {
        match next.peek() {
            Some(p) if p.ts == ts => out.push(*next.next().expect("peeked")),
            _ => out.push(Point {
                ts,
                tx_pps: 0.0,
                rx_pps: 0.0,
                drops: 0,
            }),
        }
    }
    out
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

pub fn timeline(path: &Path, rec: &Recording) -> Result<()> {
    let peers: Vec<(&IpAddr, Vec<Point>)> = rec
        .series
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(a, s)| (a, filled(s, &rec.interval_times)))
        .collect();
    if peers.is_empty() {
        bail!("the recording has no interval lines to plot");
    }
    let t0 = rec.interval_times.iter().copied().fold(f64::MAX, f64::min);
    let t1 = rec
        .interval_times
        .iter()
        .copied()
        .fold(f64::MIN, f64::max)
        .max(t0 + 1.0);
    let height = 220 * peers.len() as u32 + 40;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panels = root.split_evenly((peers.len(), 1));
    for ((addr, series), area) in peers.iter().zip(panels.iter()) {
        panel(area, addr, series, rec, t0, t1)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    addr: &IpAddr,
    series: &[Point],
    rec: &Recording,
    t0: f64,
    t1: f64,
) -> Result<()> {
    let ymax = series
        .iter()
        .map(|p| p.tx_pps.max(p.rx_pps))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("peer {addr}"), ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..(t1 - t0), 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "seconds since {} UTC",
            crate::sinks::events::clock(t0)
        ))
        .y_desc("packets/s")
        .draw()
        .map_err(err)?;
    // Outages of this peer, shaded.
    for o in rec.outage_ends.iter().filter(|o| o.peer == *addr) {
        let end = o.end.unwrap_or(t1);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(o.start - t0, 0.0), (end - t0, ymax)],
                RED.mix(0.15).filled(),
            )))
            .map_err(err)?;
    }
    let lines = [
        (
            "tx_encap",
            BLUE,
            series
                .iter()
                .map(|p| (p.ts - t0, p.tx_pps))
                .collect::<Vec<_>>(),
        ),
        (
            "rx_nic",
            GREEN,
            series.iter().map(|p| (p.ts - t0, p.rx_pps)).collect(),
        ),
    ];
    for (label, color, points) in lines {
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart
        .draw_series(
            series
                .iter()
                .filter(|p| p.drops > 0)
                .map(|p| Cross::new((p.ts - t0, ymax * 0.95), 5, RED.stroke_width(2))),
        )
        .map_err(err)?
        .label("drops")
        .legend(|(x, y)| Cross::new((x + 8, y), 4, RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Height of the heat map, and of one link's timeline.
const MATRIX_HEIGHT: u32 = 420;
const LINK_HEIGHT: u32 = 200;

/// Across nodes: the link matrix as a heat map (loss %, the segment
/// written in each cell), then one timeline per judged link with traffic:
/// what the sender encapsulated and what reached the receiver, per second.
pub fn cluster(path: &Path, nodes: &[ClusterNode], r: &ClusterReport) -> Result<()> {
    let links: Vec<&Link> = r
        .links
        .iter()
        .filter(|l| l.status == LinkStatus::Judged && l.tx_encap + l.rx_nic > 0)
        .collect();
    let height = MATRIX_HEIGHT + LINK_HEIGHT * links.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, rest) = root.split_vertically(MATRIX_HEIGHT);
    heat_map(&top, r)?;
    let panels = rest.split_evenly((links.len().max(1), 1));
    for (l, area) in links.iter().zip(panels.iter()) {
        link_panel(area, nodes, l)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

fn heat_map(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    r: &ClusterReport,
) -> Result<()> {
    let names: Vec<&str> = r
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .chain(r.unrecorded.iter().map(|n| n.name.as_str()))
        .collect();
    let n = names.len().max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(
            "loss per link (rows: from, columns: to)",
            ("sans-serif", 16),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(140)
        .build_cartesian_2d(0..n, 0..n)
        .map_err(err)?;
    let label = |i: &usize| names.get(*i).map(|s| s.to_string()).unwrap_or_default();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(n)
        .y_labels(n)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .draw()
        .map_err(err)?;
    for (i, from) in names.iter().enumerate() {
        for (j, to) in names.iter().enumerate() {
            let cell = Cell::of(r, from, to);
            let (color, text) = match &cell {
                _ if i == j => (RGBColor(230, 230, 230), String::new()),
                Cell::Judged(l) => {
                    let red = (l.loss_pct.clamp(0.0, 100.0) * 2.55) as u8;
                    (RGBColor(red.max(60), 255 - red, 80), cell.label())
                }
                Cell::NotJudged(_) => (RGBColor(215, 215, 215), cell.label()),
                Cell::NoTraffic => (RGBColor(245, 245, 245), cell.label()),
            };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(j, i), (j + 1, i + 1)],
                    color.filled(),
                )))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(text, (j, i), ("sans-serif", 14))))
                .map_err(err)?;
        }
    }
    Ok(())
}

/// Packets per second of a node's samples for one peer, by wall clock.
fn rates(samples: Option<&Vec<Sample>>, value: fn(&Sample) -> u64) -> Vec<(f64, f64)> {
    samples
        .into_iter()
        .flatten()
        .map(|s| (s.ts, value(s) as f64 / s.len.max(0.001)))
        .collect()
}

fn link_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    nodes: &[ClusterNode],
    l: &Link,
) -> Result<()> {
    let node = |name: &str| nodes.iter().find(|n| n.node.name == name);
    let (Some(a), Some(b)) = (node(&l.from_node), node(&l.to_node)) else {
        return Ok(());
    };
    let sent = rates(a.rec.samples.get(&l.to), |s| s.tx_encap);
    let got = rates(b.rec.samples.get(&l.from), |s| s.rx_nic);
    let (t0, t1) = (l.window.0, l.window.1.max(l.window.0 + 1.0));
    let ymax = sent.iter().chain(&got).map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let lost = if l.loss_segment == Segment::None {
        String::new()
    } else {
        format!(
            " · lost {:.0}% on the {}",
            l.loss_pct,
            l.loss_segment.as_str()
        )
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{} → {}{lost}", l.from_node, l.to_node),
            ("sans-serif", 15),
        )
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..(t1 - t0), 0.0..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!(
            "seconds since {} UTC",
            crate::sinks::events::clock(t0)
        ))
        .y_desc("packets/s")
        .draw()
        .map_err(err)?;
    let series = [
        (format!("tx_encap at {}", l.from_node), BLUE, sent),
        (format!("rx_nic at {}", l.to_node), GREEN, got),
    ];
    for (label, color, points) in series {
        let points: Vec<(f64, f64)> = points
            .into_iter()
            .filter(|(t, _)| *t >= t0 && *t <= t1)
            .map(|(t, v)| (t - t0, v))
            .collect();
        chart
            .draw_series(LineSeries::new(points, color))
            .map_err(err)?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(ts: f64, tx: f64) -> Point {
        Point {
            ts,
            tx_pps: tx,
            rx_pps: tx,
            drops: 0,
        }
    }

    /// A peer active 3 s of a 10 s recording spans the 10 s, silent as zero.
    #[test]
    fn silence_is_zero_on_the_clock() {
        let times: Vec<f64> = (0..10).map(|i| 100.0 + i as f64).collect();
        let series = [point(103.0, 5.0), point(104.0, 6.0), point(105.0, 7.0)];
        let f = filled(&series, &times);
        assert_eq!(f.len(), 10);
        assert_eq!(f[0], point(100.0, 0.0));
        assert_eq!(f[3], point(103.0, 5.0));
        assert_eq!(f[9], point(109.0, 0.0));
    }
}
