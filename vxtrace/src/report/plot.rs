//! The timeline: one panel per peer, tx and rx packet rates over
//! wall-clock time (intervals in which a peer was silent draw as zero),
//! outages shaded, intervals with drops marked.

use std::{net::IpAddr, path::Path};

use anyhow::{Result, anyhow, bail};
use plotters::prelude::*;

use super::read::{Point, Recording};

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
