//! `vxtrace report FILE...`: reads recordings (rotated files included, a
//! truncated last line tolerated) and names, per peer, the likely cause of
//! what went wrong, with the evidence for it.

use std::{collections::BTreeMap, io::BufRead as _, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::record::files_of;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Recording(s) written by `watch --record` (FILE.1, FILE.2 ... are read too).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also draw a timeline (tx and rx packet rate per peer, outages
    /// shaded, drops marked) into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// One interval of one peer, for the timeline.
#[derive(Clone, Copy, Debug)]
pub struct Point {
    pub ts: f64,
    pub tx_pps: f64,
    pub rx_pps: f64,
    pub drops: u64,
}

/// Everything read from the recording files.
#[derive(Default)]
pub struct Recording {
    pub headers: Vec<Value>,
    pub summary: Option<Value>,
    /// Per-peer totals summed from interval lines (when there is no summary).
    pub interval_totals: BTreeMap<String, Value>,
    pub events: Vec<Value>,
    pub intervals: u64,
    pub bad_lines: u64,
    pub series: BTreeMap<String, Vec<Point>>,
}

/// Adds numbers of `add` into `acc`, recursively (objects by key).
fn accumulate(acc: &mut Value, add: &Value) {
    match (acc, add) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                accumulate(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a @ Value::Null, b) => *a = b.clone(),
        (a, Value::Number(n)) if a.is_number() => {
            if let (Some(x), Some(y)) = (a.as_u64(), n.as_u64()) {
                *a = json!(x + y);
            } else if let (Some(x), Some(y)) = (a.as_f64(), n.as_f64()) {
                *a = json!(x + y);
            }
        }
        _ => {}
    }
}

pub fn read(paths: &[PathBuf]) -> Result<Recording> {
    let mut rec = Recording::default();
    let mut any = false;
    for p in paths {
        let files = files_of(p);
        if files.is_empty() {
            bail!("recording {} not found", p.display());
        }
        for f in files {
            any = true;
            let file =
                std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?;
            for line in std::io::BufReader::new(file).lines() {
                let Ok(line) = line else {
                    rec.bad_lines += 1;
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                // A line cut short by SIGKILL or power loss is skipped.
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    rec.bad_lines += 1;
                    continue;
                };
                match v["type"].as_str() {
                    Some("header") => rec.headers.push(v),
                    Some("summary") => rec.summary = Some(v),
                    Some("interval") => {
                        rec.intervals += 1;
                        let ts = v["ts"].as_f64().unwrap_or(0.0);
                        if let Some(peers) = v["peers"].as_object() {
                            for (addr, d) in peers {
                                let drops = d["drops"]
                                    .as_object()
                                    .map(|m| m.values().filter_map(|x| x.as_u64()).sum())
                                    .unwrap_or(0);
                                rec.series.entry(addr.clone()).or_default().push(Point {
                                    ts,
                                    tx_pps: d["pps"]["tx_encap"].as_f64().unwrap_or(0.0),
                                    rx_pps: d["pps"]["rx_nic"].as_f64().unwrap_or(0.0),
                                    drops,
                                });
                                let mut d = d.clone();
                                if let Some(o) = d.as_object_mut() {
                                    o.remove("pps");
                                    o.remove("bps");
                                    o.remove("rx_silent_s");
                                    o.remove("sent_into_silence");
                                }
                                accumulate(
                                    rec.interval_totals
                                        .entry(addr.clone())
                                        .or_insert(Value::Null),
                                    &d,
                                );
                            }
                        }
                    }
                    Some("outage_start" | "outage_end" | "outage_group" | "one_way") => {
                        rec.events.push(v)
                    }
                    _ => {}
                }
            }
        }
    }
    if !any {
        bail!("no recording to read");
    }
    Ok(rec)
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or(0)
}

/// Likely causes for one peer: (cause, evidence).
pub fn causes(peer: &str, v: &Value, events: &[Value]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let tx = n(v, &["tx_encap", "packets"]);
    let rx = n(v, &["rx_nic", "packets"]);
    let decap = n(v, &["rx_decap", "packets"]);
    let drop = |r: &str| n(v, &["drops", r]);
    let nf = drop("NETFILTER_DROP");
    if nf > 0 && rx > decap {
        out.push((
            "host firewall on this node drops VXLAN from the peer (incident 4)".into(),
            format!("rx_nic {rx}, rx_decap {decap}, NETFILTER_DROP {nf}"),
        ));
    } else if tx > 0 && rx == 0 {
        out.push((
            "one-way: nothing comes back from the peer to the underlay device; the loss is outside this host: the path, a cloud security group, or VM NAT networking (incidents 2, 3)".into(),
            format!("tx_encap {tx}, rx_nic 0"),
        ));
    } else if nf > 0 {
        out.push((
            "netfilter drops this peer's (inner) traffic".into(),
            format!("NETFILTER_DROP {nf}"),
        ));
    }
    let mismatch = n(v, &["inner_dst_mac_mismatch"]);
    let otherhost = drop("OTHERHOST");
    if mismatch + otherhost > 0 {
        out.push((
            "stale neighbour entry on the peer: it sends to this node's old VTEP MAC (incident 5)"
                .into(),
            format!("inner_dst_mac_mismatch {mismatch}, OTHERHOST drops {otherhost}"),
        ));
    }
    let masq = n(v, &["inner_src_vtep"]);
    if masq > 0 {
        out.push((
            "the peer masquerades pod traffic into the overlay (incident 7)".into(),
            format!("inner_src_vtep {masq}"),
        ));
    }
    // The summary has the sum; interval lines only the drops by reason.
    let paws = v["tcp"]["paws_rejects"]
        .as_u64()
        .unwrap_or_else(|| crate::drops::PAWS_REASONS.iter().map(|r| drop(r)).sum());
    let unanswered = n(v, &["tcp", "unanswered_syn"]);
    if paws + unanswered > 0 {
        out.push((
            "NAT and TCP timestamps: SYNs rejected by the server's PAWS check (tcp_tw_recycle / TIME_WAIT reuse behind one address) (incident 6)".into(),
            format!("paws_rejects {paws}, unanswered_syn {unanswered}"),
        ));
    }
    let groups: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "outage_group")
        .filter(|e| {
            e["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == peer))
        })
        .collect();
    let outages: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "outage_end" && e["peer"] == peer)
        .collect();
    if !groups.is_empty() {
        let before: Vec<String> = events
            .iter()
            .filter(|e| e["type"] == "outage_start" && e["peer"] == peer)
            .map(|e| format!("{}", e["tx_pps_before"]))
            .collect();
        out.push((
            "several peers went silent at the same moment: a device on the path (a policer) blackholed them (incident 1)".into(),
            format!(
                "{} grouped outage(s) with {}; tx rate before: {} pkt/s",
                groups.len(),
                groups[0]["peers"],
                before.join(", ")
            ),
        ));
    } else if !outages.is_empty() {
        let longest = outages
            .iter()
            .filter_map(|o| o["duration_s"].as_f64())
            .fold(0.0, f64::max);
        out.push((
            "intermittent outages of this peer alone".into(),
            format!("{} outage(s), longest {longest:.1} s", outages.len()),
        ));
    }
    let big = n(v, &["outer_size", "tx_over_1500"]) + n(v, &["fragmented", "tx"]);
    if big > 0 {
        out.push((
            "outer packets above 1500 bytes (or fragmented) were sent: a path MTU below the VXLAN packet size loses them (incident 1)".into(),
            format!("tx_over_1500 {}, tx fragmented {}", n(v, &["outer_size", "tx_over_1500"]), n(v, &["fragmented", "tx"])),
        ));
    }
    out
}

pub fn run(args: ReportArgs) -> Result<()> {
    let rec = read(&args.files)?;
    let complete = rec.summary.is_some();
    let peers: BTreeMap<String, Value> = match &rec.summary {
        Some(s) => s["peers"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        None => rec.interval_totals.clone(),
    };
    let mut report = serde_json::Map::new();
    for (addr, v) in &peers {
        let c = causes(addr, v, &rec.events);
        let outages: Vec<Value> = rec
            .events
            .iter()
            .filter(|e| e["type"] == "outage_end" && e["peer"] == addr.as_str())
            .cloned()
            .collect();
        report.insert(
            addr.clone(),
            json!({
                "tx_encap": v["tx_encap"],
                "rx_nic": v["rx_nic"],
                "rx_decap": v["rx_decap"],
                "drops": v["drops"],
                "tcp": v["tcp"],
                "outages": outages,
                "causes": c.iter().map(|(cause, ev)| json!({"cause": cause, "evidence": ev})).collect::<Vec<_>>(),
            }),
        );
    }
    let out = json!({
        "complete": complete,
        "intervals": rec.intervals,
        "truncated_lines": rec.bad_lines,
        "runs": rec.headers.len(),
        "peers": report,
        "outage_groups": rec.events.iter().filter(|e| e["type"] == "outage_group").cloned().collect::<Vec<_>>(),
    });
    if let Some(svg) = &args.svg {
        plot(svg, &rec).with_context(|| format!("drawing {}", svg.display()))?;
    }
    if args.json {
        println!("{out}");
        return Ok(());
    }
    println!(
        "recording: {} run(s), {} intervals{}{}",
        rec.headers.len(),
        rec.intervals,
        if complete {
            ""
        } else {
            ", no summary (the recorder was killed): totals from the interval lines"
        },
        if rec.bad_lines > 0 {
            format!(", {} truncated line(s) skipped", rec.bad_lines)
        } else {
            String::new()
        }
    );
    for (addr, p) in report {
        println!(
            "\npeer {addr}: tx_encap {} · rx_nic {} · rx_decap {}",
            p["tx_encap"]["packets"], p["rx_nic"]["packets"], p["rx_decap"]["packets"]
        );
        if let Some(d) = p["drops"].as_object().filter(|d| !d.is_empty()) {
            println!(
                "  drops: {}",
                d.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for o in p["outages"].as_array().into_iter().flatten() {
            println!(
                "  outage: {} s, {} packets sent into the silence",
                o["duration_s"], o["sent_into_silence"]
            );
        }
        let causes = p["causes"].as_array().cloned().unwrap_or_default();
        if causes.is_empty() {
            println!("  no problem found");
        }
        for c in causes {
            println!(
                "  likely cause: {}\n    evidence: {}",
                c["cause"].as_str().unwrap_or(""),
                c["evidence"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// The timeline: one panel per peer, tx and rx rates over time, outages
/// shaded, intervals with drops marked.
pub fn plot(path: &std::path::Path, rec: &Recording) -> Result<()> {
    use plotters::prelude::*;
    let peers: Vec<(&String, &Vec<Point>)> =
        rec.series.iter().filter(|(_, s)| !s.is_empty()).collect();
    if peers.is_empty() {
        bail!("the recording has no interval lines to plot");
    }
    let t0 = peers
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.ts))
        .fold(f64::MAX, f64::min);
    let t1 = peers
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.ts))
        .fold(f64::MIN, f64::max)
        .max(t0 + 1.0);
    let height = 220 * peers.len() as u32 + 40;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let panels = root.split_evenly((peers.len(), 1));
    for ((addr, series), area) in peers.iter().zip(panels.iter()) {
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
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("packets/s")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Outages of this peer, shaded.
        for e in rec
            .events
            .iter()
            .filter(|e| e["type"] == "outage_end" && e["peer"] == addr.as_str())
        {
            if let (Some(s), Some(en)) = (e["start"].as_f64(), e["end"].as_f64()) {
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(s - t0, 0.0), (en - t0, ymax)],
                        RED.mix(0.15).filled(),
                    )))
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|p| (p.ts - t0, p.tx_pps)),
                &BLUE,
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("tx_encap")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                series.iter().map(|p| (p.ts - t0, p.rx_pps)),
                &GREEN,
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("rx_nic")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], GREEN));
        chart
            .draw_series(
                series
                    .iter()
                    .filter(|p| p.drops > 0)
                    .map(|p| Cross::new((p.ts - t0, ymax * 0.95), 5, RED.stroke_width(2))),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("drops")
            .legend(|(x, y)| Cross::new((x + 8, y), 4, RED));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_named_with_evidence() {
        let fw = json!({"tx_encap": {"packets": 5}, "rx_nic": {"packets": 5}, "rx_decap": {"packets": 0}, "drops": {"NETFILTER_DROP": 5}});
        let c = causes("192.0.2.11", &fw, &[]);
        assert_eq!(c.len(), 1);
        assert!(c[0].0.starts_with("host firewall"));
        assert_eq!(c[0].1, "rx_nic 5, rx_decap 0, NETFILTER_DROP 5");
        let oneway = json!({"tx_encap": {"packets": 9}, "rx_nic": {"packets": 0}});
        assert!(causes("x", &oneway, &[])[0].0.starts_with("one-way"));
        let fine = json!({"tx_encap": {"packets": 9}, "rx_nic": {"packets": 9}, "rx_decap": {"packets": 9}});
        assert!(causes("x", &fine, &[]).is_empty());
    }

    #[test]
    fn interval_deltas_add_up() {
        let mut acc = Value::Null;
        accumulate(
            &mut acc,
            &json!({"tx_encap": {"packets": 2}, "drops": {"X": 1}}),
        );
        accumulate(
            &mut acc,
            &json!({"tx_encap": {"packets": 3}, "drops": {"Y": 4}}),
        );
        assert_eq!(acc["tx_encap"]["packets"], 5);
        assert_eq!(acc["drops"]["X"], 1);
        assert_eq!(acc["drops"]["Y"], 4);
    }
}
