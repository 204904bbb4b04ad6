//! Events in words, for the screen, plain lines and the agent's log.

use std::net::IpAddr;

use crate::schema::Line;

fn addrs(v: &[IpAddr]) -> String {
    v.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Unix time as `HH:MM:SS` UTC (events are read next to other logs).
pub fn clock(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// An event in one sentence; `None` for lines that are not events.
pub fn describe(line: &Line) -> Option<String> {
    Some(match line {
        Line::OutageStart(o) => format!(
            "{} UTC: {} went silent while we kept sending ({} packets sent into the silence, {:.1} pkt/s before){}",
            clock(o.start),
            o.peer,
            o.sent_into_silence,
            o.tx_pps_before,
            if o.silent_together.is_empty() {
                String::new()
            } else {
                format!(", together with {}", addrs(&o.silent_together))
            }
        ),
        Line::OutageEnd(o) => format!(
            "{} UTC: {} answers again after {:.1} s of silence ({} packets sent into it)",
            clock(o.end.unwrap_or(o.start)),
            o.peer,
            o.duration_s.unwrap_or(0.0),
            o.sent_into_silence
        ),
        Line::OutageGroup(g) => format!(
            "{} UTC: {} peers went silent at the same moment ({}): a device on the path may be blackholing this node",
            clock(g.start),
            g.peers.len(),
            addrs(&g.peers)
        ),
        Line::OneWay(w) => format!(
            "{} is one-way: sent {}, received {} over {:.0} s",
            w.peer, w.sent, w.received, w.window_s
        ),
        Line::DeviceGone(d)
        | Line::DeviceReattached(d)
        | Line::DeviceError(d)
        | Line::DeviceAdded(d) => d.message.clone(),
        Line::BlindSpot(b) => b.message.clone(),
        Line::MacMoved(m) => format!(
            "{} on {} (VNI {}) moved from VTEP {} to {}: counted on {} from now on",
            m.mac
                .as_ref()
                .map(crate::mac::format_mac)
                .unwrap_or_default(),
            m.device,
            m.vni,
            m.from,
            m.to,
            m.to
        ),
        Line::Header(_) | Line::Attached(_) | Line::Interval(_) | Line::Summary(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{OneWay, Outage};

    #[test]
    fn events_read_as_sentences() {
        let o = Outage {
            peer: "192.0.2.13".parse().unwrap(),
            start: 3723.0,
            end: Some(3726.5),
            duration_s: Some(3.5),
            sent_into_silence: 60,
            tx_pps_before: 20.0,
            silent_together: vec!["192.0.2.12".parse().unwrap()],
        };
        assert_eq!(
            describe(&Line::OutageStart(o.clone())).unwrap(),
            "01:02:03 UTC: 192.0.2.13 went silent while we kept sending (60 packets sent into the silence, 20.0 pkt/s before), together with 192.0.2.12"
        );
        assert_eq!(
            describe(&Line::OutageEnd(o)).unwrap(),
            "01:02:06 UTC: 192.0.2.13 answers again after 3.5 s of silence (60 packets sent into it)"
        );
        let w = OneWay {
            peer: "192.0.2.13".parse().unwrap(),
            sent: 5,
            received: 0,
            window_s: 10.0,
        };
        assert_eq!(
            describe(&Line::OneWay(w)).unwrap(),
            "192.0.2.13 is one-way: sent 5, received 0 over 10 s"
        );
    }
}
