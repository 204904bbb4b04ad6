//! The kernel's own PAWS counters (`TcpExt` in /proc/net/netstat), per
//! network namespace, as deltas since start: a cross-check for the PAWS
//! drops vxtrace attributes to peers.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::schema::NetstatPaws;

/// The TcpExt counters that count timestamp (PAWS) rejects.
pub const PAWS_COUNTERS: [&str; 6] = [
    "PAWSActive",
    "PAWSPassive",
    "PAWSEstab",
    "PAWSOldAck",
    "PAWSTimewait",
    "TWRecycled",
];

/// Parses the `TcpExt:` header/value line pair of /proc/net/netstat.
pub fn parse(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (names, values) = (pair[0], pair[1]);
        if !names.starts_with("TcpExt:") || !values.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if PAWS_COUNTERS.contains(&n)
                && let Ok(v) = v.parse()
            {
                out.insert(n.to_string(), v);
            }
        }
    }
    out
}

/// The counters of the namespace `ns` (None: this process's own), read on
/// a thread inside it.
pub fn read(ns: Option<&str>) -> Result<BTreeMap<String, u64>> {
    let read_here = || -> Result<BTreeMap<String, u64>> {
        Ok(parse(&std::fs::read_to_string(
            "/proc/thread-self/net/netstat",
        )?))
    };
    match ns {
        None => read_here(),
        Some(name) => crate::netns::run_in_path(name, read_here),
    }
}

/// `now - start`, counter by counter.
pub fn delta(start: &BTreeMap<String, u64>, now: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(start.get(k).copied().unwrap_or(0)),
            )
        })
        .collect()
}

/// The kernel's UDP checksum-error counters of this namespace:
/// `UdpInCsumErrors` (/proc/net/snmp, `Udp:` lines) and
/// `Udp6InCsumErrors` (/proc/net/snmp6).
pub fn udp_csum_errors() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/snmp") {
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
        if let [names, values] = lines[..] {
            for (n, v) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                if n == "InCsumErrors"
                    && let Ok(v) = v.parse()
                {
                    out.insert("UdpInCsumErrors".to_string(), v);
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/snmp6") {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some("Udp6InCsumErrors"), Some(v)) = (it.next(), it.next())
                && let Ok(v) = v.parse()
            {
                out.insert("Udp6InCsumErrors".to_string(), v);
            }
        }
    }
    out
}

/// Error counters of network devices (/sys/class/net/DEV/statistics).
pub fn device_errors(devices: &[String]) -> BTreeMap<String, BTreeMap<String, u64>> {
    const COUNTERS: [&str; 4] = ["tx_dropped", "tx_carrier_errors", "rx_dropped", "tx_errors"];
    devices
        .iter()
        .map(|d| {
            let counters = COUNTERS
                .iter()
                .filter_map(|c| {
                    let v = std::fs::read_to_string(format!("/sys/class/net/{d}/statistics/{c}"))
                        .ok()?
                        .trim()
                        .parse()
                        .ok()?;
                    Some((c.to_string(), v))
                })
                .collect();
            (d.clone(), counters)
        })
        .collect()
}

/// The PAWS counters at start, of this namespace and those named with
/// `--netns`, to report deltas over the run.
pub struct Baseline {
    /// `None`: this process's own namespace.
    scope: Vec<Option<String>>,
    start: BTreeMap<String, BTreeMap<String, u64>>,
    udp_start: BTreeMap<String, u64>,
    devices: Vec<String>,
    devices_start: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Baseline {
    pub fn take(netns_specs: &[String], devices: &[String]) -> Self {
        let mut scope = vec![None];
        scope.extend(
            netns_specs
                .iter()
                .filter(|s| *s != "self" && *s != "all")
                .map(|s| Some(s.clone())),
        );
        let start = read_all(&scope);
        Self {
            scope,
            start,
            udp_start: udp_csum_errors(),
            devices: devices.to_vec(),
            devices_start: device_errors(devices),
        }
    }

    /// UDP checksum errors since start, in this namespace.
    pub fn udp_deltas(&self) -> BTreeMap<String, u64> {
        delta(&self.udp_start, &udp_csum_errors())
    }

    /// The watched devices' error counters since start (only those that
    /// moved; a device that went away is left out).
    pub fn device_deltas(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let empty = BTreeMap::new();
        device_errors(&self.devices)
            .into_iter()
            .filter_map(|(d, now)| {
                let d_delta: BTreeMap<String, u64> =
                    delta(self.devices_start.get(&d).unwrap_or(&empty), &now)
                        .into_iter()
                        .filter(|(_, v)| *v > 0)
                        .collect();
                (!d_delta.is_empty()).then_some((d, d_delta))
            })
            .collect()
    }

    /// Deltas since start: summed, and per namespace ("self" for ours).
    pub fn deltas(&self) -> NetstatPaws {
        let mut out = NetstatPaws::default();
        for (ns, counters) in read_all(&self.scope) {
            let d = delta(self.start.get(&ns).unwrap_or(&BTreeMap::new()), &counters);
            for (k, v) in &d {
                *out.total.entry(k.clone()).or_default() += v;
            }
            out.namespaces.insert(ns, d);
        }
        out
    }
}

fn read_all(scope: &[Option<String>]) -> BTreeMap<String, BTreeMap<String, u64>> {
    scope
        .iter()
        .filter_map(|ns| {
            let label = ns.clone().unwrap_or_else(|| "self".into());
            read(ns.as_deref()).ok().map(|m| (label, m))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpext() {
        let text = "TcpExt: SyncookiesSent PAWSActive PAWSEstab PAWSTimewait\nTcpExt: 0 1 7 2\nIpExt: InNoRoutes\nIpExt: 5\n";
        let m = parse(text);
        assert_eq!(m["PAWSEstab"], 7);
        assert_eq!(m["PAWSActive"], 1);
        assert_eq!(m["PAWSTimewait"], 2);
        assert!(!m.contains_key("SyncookiesSent"));
        assert!(!m.contains_key("PAWSPassive"), "absent on this kernel");
    }
}
