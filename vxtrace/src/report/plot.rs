//! The timeline: one panel per peer, tx and rx packet rates over
//! wall-clock time (intervals in which a peer was silent draw as zero),
//! outages shaded, intervals with drops marked.

use std::{net::IpAddr, path::Path};

use anyhow::{Result, anyhow, bail};
use plotters::{
    coord::types::RangedCoordf64,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

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

/// A panel of packet rates over time.
type RatesChart<'a, 'b> =
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One rate drawn on a panel, with its legend entry.
fn rate_line(
    chart: &mut RatesChart<'_, '_>,
    label: impl Into<String>,
    color: RGBColor,
    points: Vec<(f64, f64)>,
) -> Result<()> {
    chart
        .draw_series(LineSeries::new(points, color))
        .map_err(err)?
        .label(label)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
    Ok(())
}

/// A panel's axes: packets per second over the seconds since `t0`, under
/// `caption` (its text and size).
fn rates_chart<'a, 'b>(
    area: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    (caption, size): (String, u32),
    t0: f64,
    t1: f64,
    ymax: f64,
) -> Result<RatesChart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", size))
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
    Ok(chart)
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
    let mut chart = rates_chart(area, (format!("peer {addr}"), 16), t0, t1, ymax)?;
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
        rate_line(&mut chart, label, color, points)?;
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

/// The heat map's colour of a judged cell: green at no loss to red at
/// all lost.
fn loss_color(loss_pct: f64) -> RGBColor {
    let red = (loss_pct.clamp(0.0, 100.0) * 2.55) as u8;
    RGBColor(red.max(60), 255 - red, 80)
}

const SAME_NODE: RGBColor = RGBColor(230, 230, 230);
const NOT_JUDGED: RGBColor = RGBColor(215, 215, 215);
const NO_TRAFFIC: RGBColor = RGBColor(245, 245, 245);

/// Text of `size` pixels anchored at its horizontal `h` and vertical centre.
fn text_at(s: &str, (x, y): (i32, i32), size: u32, h: HPos) -> Text<'static, (i32, i32), String> {
    let style = TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(h, VPos::Center));
    Text::new(s.to_string(), (x, y), style)
}

/// The link matrix drawn cell by cell, in the text matrix's order: rows
/// (from) top-down, columns (to) left to right, each name centred on its
/// row or column, each cell's label centred in it, and a legend of the
/// colours below.
fn heat_map(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    r: &ClusterReport,
) -> Result<()> {
    const CAPTION: i32 = 26;
    const HEADER: i32 = 22;
    const NAMES: i32 = 150;
    const LEGEND: i32 = 34;
    const MARGIN: i32 = 10;
    let names = super::matrix::node_order(r);
    let n = names.len().max(1) as i32;
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let top = CAPTION + HEADER;
    let (cell_w, cell_h) = ((w - NAMES - MARGIN) / n, (h - top - LEGEND) / n);
    let centre = |i: i32, j: i32| {
        (
            NAMES + j * cell_w + cell_w / 2,
            top + i * cell_h + cell_h / 2,
        )
    };
    let caption = "loss per link (rows: from, columns: to)";
    area.draw(&text_at(caption, (w / 2, CAPTION / 2), 16, HPos::Center))
        .map_err(err)?;
    for (k, name) in (0..).zip(&names) {
        let (x, y) = centre(k, k);
        area.draw(&text_at(name, (x, CAPTION + HEADER / 2), 13, HPos::Center))
            .map_err(err)?;
        area.draw(&text_at(name, (NAMES - 8, y), 13, HPos::Right))
            .map_err(err)?;
    }
    for (i, from) in (0..).zip(&names) {
        for (j, to) in (0..).zip(&names) {
            let cell = Cell::of(r, from, to);
            let (color, label) = match &cell {
                _ if i == j => (SAME_NODE, String::new()),
                Cell::Judged(l) => (loss_color(l.loss_pct), cell.label()),
                Cell::NotJudged(_) => (NOT_JUDGED, cell.label()),
                Cell::NoTraffic => (NO_TRAFFIC, cell.label()),
            };
            let (x0, y0) = (NAMES + j * cell_w, top + i * cell_h);
            let corners = [(x0, y0), (x0 + cell_w - 1, y0 + cell_h - 1)];
            area.draw(&Rectangle::new(corners, color.filled()))
                .map_err(err)?;
            if !label.is_empty() {
                area.draw(&text_at(&label, centre(i, j), 13, HPos::Center))
                    .map_err(err)?;
            }
        }
    }
    let legend = [
        (loss_color(0.0), "0 % lost"),
        (loss_color(50.0), "50 %"),
        (loss_color(100.0), "100 %"),
        (NOT_JUDGED, "not judged"),
        (NO_TRAFFIC, "no traffic"),
        (SAME_NODE, "same node"),
    ];
    let y = h - LEGEND / 2;
    for (k, (color, what)) in (0..).zip(legend) {
        let x = NAMES + k * 120;
        area.draw(&Rectangle::new(
            [(x, y - 7), (x + 14, y + 7)],
            color.filled(),
        ))
        .map_err(err)?;
        area.draw(&text_at(what, (x + 20, y), 13, HPos::Left))
            .map_err(err)?;
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
    let title = format!("{} → {}{lost}", l.from_node, l.to_node);
    let mut chart = rates_chart(area, (title, 15), t0, t1, ymax)?;
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
        rate_line(&mut chart, label, color, points)?;
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

    /// A directed link as a cluster report holds it.
    fn link(from: &str, to: &str, status: &str, segment: &str, loss_pct: f64) -> Link {
        serde_json::from_value(serde_json::json!({
            "from": "192.0.2.1", "to": "192.0.2.2", "from_node": from, "to_node": to,
            "tx_dev": 100, "tx_encap": 100, "rx_nic": 60, "rx_decap": 60, "drops": {},
            "loss_segment": segment, "lost": 40, "loss_pct": loss_pct,
            "evidence": "", "findings": [], "window": [0.0, 10.0], "status": status,
        }))
        .unwrap()
    }

    /// The SVG's texts: (x, y, text-anchor, text).
    fn texts(svg: &str) -> Vec<(i32, i32, String, String)> {
        let attr = |tag: &str, name: &str| -> String {
            let start = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            tag[start..].split('"').next().unwrap().to_string()
        };
        svg.split("<text ")
            .skip(1)
            .map(|t| {
                let (tag, rest) = t.split_once('>').unwrap();
                let text = rest.split("</text>").next().unwrap().trim().to_string();
                let xy = |n| attr(tag, n).parse::<f64>().unwrap() as i32;
                (xy("x"), xy("y"), attr(tag, "text-anchor"), text)
            })
            .collect()
    }

    /// Each cell's label sits in the middle of its row and column, rows run
    /// top-down in the text matrix's order, the names are beside the grid
    /// (not on its corners), and the colours have a legend.
    #[test]
    fn heat_map_labels_are_centred_in_their_cells() {
        let names = ["alpha", "beta", "gamma"];
        let r = ClusterReport {
            nodes: names
                .iter()
                .map(|n| crate::schema::NodeReport {
                    name: n.to_string(),
                    ..Default::default()
                })
                .collect(),
            links: vec![
                link("alpha", "beta", "judged", "path", 40.0),
                link("beta", "gamma", "judged", "none", 0.0),
                link("gamma", "alpha", "far_end_not_recorded", "not_judged", 0.0),
            ],
            ..Default::default()
        };
        let path = std::env::temp_dir().join(format!("vxtrace-heat-{}.svg", std::process::id()));
        cluster(&path, &[], &r).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let t = texts(&svg);
        let find = |text: &str| -> Vec<&(i32, i32, String, String)> {
            t.iter().filter(|x| x.3 == text).collect()
        };
        // Each name twice: above its column (centred), left of its row
        // (right-aligned against the grid).
        let named = |name: &str, anchor: &str| {
            *find(name)
                .iter()
                .find(|x| x.2 == anchor)
                .unwrap_or_else(|| panic!("{name} ({anchor}): {t:?}"))
        };
        let column = |name: &str| named(name, "middle");
        let row = |name: &str| named(name, "end");
        for (a, b) in [("alpha", "beta"), ("beta", "gamma")] {
            assert!(row(a).1 < row(b).1, "rows top-down: {t:?}");
            assert!(column(a).0 < column(b).0, "columns left to right: {t:?}");
        }
        for (label, from, to) in [
            ("40% path", "alpha", "beta"),
            ("0% none", "beta", "gamma"),
            ("far end not recorded", "gamma", "alpha"),
            ("no traffic", "alpha", "gamma"),
        ] {
            let cell = find(label);
            let cell = cell
                .iter()
                .find(|c| c.0 == column(to).0)
                .unwrap_or_else(|| panic!("{label}: {t:?}"));
            assert_eq!(cell.1, row(from).1, "{label} on the row of {from}");
            assert_eq!(cell.2, "middle", "{label} centred");
            // Below the column names: inside the grid.
            assert!(cell.1 > column(to).1, "{label}");
        }
        for what in ["0 % lost", "50 %", "100 %", "not judged", "same node"] {
            assert_eq!(find(what).len(), 1, "legend {what}: {t:?}");
        }
        // Three cells without traffic, and the legend's entry.
        assert_eq!(find("no traffic").len(), 4, "{t:?}");
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
