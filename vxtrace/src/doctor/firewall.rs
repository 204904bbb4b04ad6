//! Firewall and NAT rules that break the overlay, whichever tool wrote
//! them. nftables' ruleset (`nft -j list ruleset`) and legacy iptables'
//! (`iptables-legacy-save`, invisible to nft) are each reduced to
//! [`Rule`]s, and one classifier decides whether a rule drops the VXLAN
//! port, drops forwarded pod traffic or rewrites pod-to-pod addresses, so
//! both tools get the same checks in the same words.

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::Value;

use super::{Finding, finding};
use crate::{
    discovery::{VxlanDevice, prefix_contains},
    schema::{Check, Evidence, EvidenceValue, Severity},
};

/// What a rule does to the packets it matches, as far as these checks go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Drop,
    Reject,
    Masquerade,
    Snat,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Drop => "drop",
            Action::Reject => "reject",
            Action::Masquerade => "masquerade",
            Action::Snat => "snat",
        }
    }

    fn drops(self) -> bool {
        matches!(self, Action::Drop | Action::Reject)
    }
}

/// One rule, reduced to what the checks ask. Only positive matches are
/// kept: a rule that matches "not this port" says nothing about the port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    /// "nftables" or "iptables".
    pub tool: &'static str,
    pub table: String,
    pub chain: String,
    /// The netfilter hook its chain is on (`input`, `forward`, …), empty
    /// for a chain on none.
    pub hook: String,
    pub action: Option<Action>,
    /// Destination ports matched, as inclusive ranges.
    pub dports: Vec<(u64, u64)>,
    /// Devices matched by name (input or output).
    pub devices: Vec<String>,
    /// Source and destination addresses or prefixes matched.
    pub saddrs: Vec<(IpAddr, u8)>,
    pub daddrs: Vec<(IpAddr, u8)>,
    /// The rule as the tool writes it (iptables) or a compact form of its
    /// expressions (nftables).
    pub text: String,
}

impl Rule {
    /// Where the rule is, for a message.
    fn place(&self) -> String {
        if self.hook.is_empty() {
            format!("table {} chain {}", self.table, self.chain)
        } else {
            format!(
                "table {} chain {} ({} hook)",
                self.table, self.chain, self.hook
            )
        }
    }
}

/// Whether any of `addrs` overlaps a pod network.
fn in_pods(addrs: &[(IpAddr, u8)], pod_nets: &[(IpAddr, u8)]) -> bool {
    addrs.iter().any(|(a, len)| {
        pod_nets.iter().any(|(n, l)| {
            prefix_contains(n, (*l).min(*len), a) || prefix_contains(a, (*len).min(*l), n)
        })
    })
}

/// Whether any rule rewrites source addresses (masquerade or SNAT): NAT
/// on the node, which some sysctls do not survive.
pub fn rewrites_addresses(rules: &[Rule]) -> bool {
    rules
        .iter()
        .any(|r| matches!(r.action, Some(Action::Masquerade | Action::Snat)))
}

/// The checks of the rules against the watched devices and the pod
/// networks; each finding is reported against the device the rule is
/// about (the one it names, or whose port it drops).
pub fn check(
    rules: &[Rule],
    devs: &[VxlanDevice],
    pod_nets: &[(IpAddr, u8)],
    out: &mut Vec<Finding>,
) {
    let Some(first) = devs.first() else { return };
    for rule in rules {
        let Some(action) = rule.action else { continue };
        let named = devs.iter().find(|d| rule.devices.contains(&d.name));
        let by_port = devs.iter().find(|d| {
            rule.dports
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&u64::from(d.port)))
        });
        let (tool, place, text) = (rule.tool, rule.place(), &rule.text);
        let found = if action.drops()
            && by_port.is_some()
            && matches!(rule.hook.as_str(), "input" | "prerouting")
        {
            Some((
                Check::FirewallDropsVxlan,
                format!("an {tool} rule drops the VXLAN port on input: {place}: {text}"),
                "allow UDP to the VXLAN port from the other nodes before this rule (flannel: 8472; IANA: 4789)",
                by_port,
            ))
        } else if action.drops()
            && rule.hook == "forward"
            && (named.is_some()
                || in_pods(&rule.saddrs, pod_nets)
                || in_pods(&rule.daddrs, pod_nets))
        {
            Some((
                Check::FirewallDropsPodTraffic,
                format!("an {tool} rule drops forwarded pod traffic: {place}: {text}"),
                "allow forwarding between pod subnets and the VXLAN device (iptables -P FORWARD ACCEPT, or explicit accepts)",
                named,
            ))
        } else if !action.drops()
            && rule.hook == "postrouting"
            && (named.is_some()
                || (in_pods(&rule.saddrs, pod_nets) && in_pods(&rule.daddrs, pod_nets)))
        {
            Some((
                Check::MasqueradePodTraffic,
                format!(
                    "a {} rule rewrites pod-to-pod overlay traffic: {place}: {text}",
                    action.word()
                ),
                "exclude pod destinations from masquerading (flannel: `-d POD_CIDR -j RETURN` before MASQUERADE; docker --ip-masq=false)",
                named,
            ))
        } else {
            None
        };
        if let Some((check, message, fix, dev)) = found {
            out.push(finding(
                check,
                Severity::Error,
                &dev.unwrap_or(first).name,
                message,
                evidence!({"tool": tool, "table": rule.table.as_str(), "chain": rule.chain.as_str(), "hook": rule.hook.as_str(), "rule": text.as_str()}),
                fix.into(),
            ));
        }
    }
}

/// The rules of an nftables ruleset in JSON (`nft -j list ruleset`).
pub fn from_nft(ruleset: &Value) -> Vec<Rule> {
    let items = ruleset["nftables"].as_array().cloned().unwrap_or_default();
    let mut hooks: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for it in &items {
        if let Some(c) = it.get("chain") {
            hooks.insert(
                (s(&c["family"]), s(&c["table"]), s(&c["name"])),
                s(&c["hook"]),
            );
        }
    }
    let mut rules = Vec::new();
    for it in &items {
        let Some(r) = it.get("rule") else { continue };
        let key = (s(&r["family"]), s(&r["table"]), s(&r["chain"]));
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let mut rule = Rule {
            tool: "nftables",
            table: format!("{} {}", key.0, key.1),
            chain: key.2.clone(),
            hook: hooks.get(&key).cloned().unwrap_or_default(),
            action: exprs.iter().find_map(|e| {
                [
                    ("drop", Action::Drop),
                    ("reject", Action::Reject),
                    ("masquerade", Action::Masquerade),
                    ("snat", Action::Snat),
                ]
                .into_iter()
                .find(|(k, _)| e.get(*k).is_some())
                .map(|(_, a)| a)
            }),
            text: rule_text(&exprs),
            ..Rule::default()
        };
        for e in &exprs {
            let m = &e["match"];
            if m.is_null() || m["op"] == "!=" {
                continue;
            }
            let (left, right) = (&m["left"], &m["right"]);
            match (
                left["payload"]["field"].as_str(),
                left["meta"]["key"].as_str(),
            ) {
                (Some("dport"), _) => nft_ports(right, &mut rule.dports),
                (Some("saddr"), _) => rule.saddrs.extend(nft_prefix(right)),
                (Some("daddr"), _) => rule.daddrs.extend(nft_prefix(right)),
                (_, Some("oifname" | "iifname")) => {
                    rule.devices.extend(right.as_str().map(str::to_string))
                }
                _ => {}
            }
        }
        rules.push(rule);
    }
    rules
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// Ports of an nft value: a number, a set of them, or a range.
fn nft_ports(v: &Value, out: &mut Vec<(u64, u64)>) {
    if let Some(p) = v.as_u64() {
        out.push((p, p));
    } else if let Some(set) = v["set"].as_array() {
        for x in set {
            nft_ports(x, out);
        }
    } else if let Some(range) = v["range"].as_array()
        && let (Some(lo), Some(hi)) = (
            range.first().and_then(Value::as_u64),
            range.get(1).and_then(Value::as_u64),
        )
    {
        out.push((lo, hi));
    }
}

/// An nft address value: an address or a prefix.
fn nft_prefix(v: &Value) -> Option<(IpAddr, u8)> {
    if let Some(a) = v.as_str() {
        let addr: IpAddr = a.parse().ok()?;
        return Some((addr, if addr.is_ipv6() { 128 } else { 32 }));
    }
    let p = &v["prefix"];
    Some((s(&p["addr"]).parse().ok()?, p["len"].as_u64()? as u8))
}

/// A compact human form of a rule's expressions.
fn rule_text(exprs: &[Value]) -> String {
    exprs
        .iter()
        .map(|e| {
            if let Some(m) = e.get("match") {
                let left = if let Some(p) = m["left"].get("payload") {
                    format!("{} {}", s(&p["protocol"]), s(&p["field"]))
                } else if let Some(meta) = m["left"].get("meta") {
                    s(&meta["key"])
                } else {
                    m["left"].to_string()
                };
                let right = match &m["right"] {
                    Value::String(x) => x.clone(),
                    other if other["prefix"].is_object() => {
                        format!("{}/{}", s(&other["prefix"]["addr"]), other["prefix"]["len"])
                    }
                    other => other.to_string(),
                };
                let op = s(&m["op"]);
                if op == "==" {
                    format!("{left} {right}")
                } else {
                    format!("{left} {op} {right}")
                }
            } else if let Some(k) = e.as_object().and_then(|o| o.keys().next()) {
                k.clone()
            } else {
                e.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rules of `iptables-save` output. Built-in chains only (`INPUT`,
/// `FORWARD`, `PREROUTING`, `POSTROUTING`): a rule in a chain of the
/// user's own is reached by a jump these checks do not follow.
pub fn from_iptables(text: &str) -> Vec<Rule> {
    let mut table = "";
    let mut rules = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let chain = words.first().copied().unwrap_or("");
        // A flag's value, unless the flag is negated (`! -s X`).
        let arg = |flag: &str| {
            words
                .windows(2)
                .enumerate()
                .find(|(i, w)| w[0] == flag && (*i == 0 || words[i - 1] != "!"))
                .map(|(_, w)| w[1])
        };
        let prefix = |flag: &str| {
            arg(flag).and_then(|a| {
                let (ip, len) = a.split_once('/').unwrap_or((a, ""));
                let ip: IpAddr = ip.parse().ok()?;
                let len = if len.is_empty() {
                    if ip.is_ipv6() { 128 } else { 32 }
                } else {
                    len.parse().ok()?
                };
                Some((ip, len))
            })
        };
        let mut dports = Vec::new();
        for p in arg("--dport")
            .into_iter()
            .chain(arg("--dports").into_iter().flat_map(|l| l.split(',')))
        {
            let (lo, hi) = p.split_once(':').unwrap_or((p, p));
            if let (Ok(lo), Ok(hi)) = (lo.parse(), hi.parse()) {
                dports.push((lo, hi));
            }
        }
        rules.push(Rule {
            tool: "iptables",
            table: table.to_string(),
            chain: chain.to_string(),
            hook: match chain {
                "INPUT" | "FORWARD" | "OUTPUT" | "PREROUTING" | "POSTROUTING" => {
                    chain.to_lowercase()
                }
                _ => String::new(),
            },
            action: match arg("-j") {
                Some("DROP") => Some(Action::Drop),
                Some("REJECT") => Some(Action::Reject),
                Some("MASQUERADE") => Some(Action::Masquerade),
                Some("SNAT") => Some(Action::Snat),
                _ => None,
            },
            dports,
            devices: ["-i", "-o"]
                .into_iter()
                .filter_map(|f| arg(f).map(str::to_string))
                .collect(),
            saddrs: prefix("-s").into_iter().collect(),
            daddrs: prefix("-d").into_iter().collect(),
            text: line.to_string(),
        });
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devs() -> Vec<VxlanDevice> {
        vec![
            VxlanDevice::for_test("flannel.1", 3, Some(1), 8472),
            VxlanDevice::for_test("vxlan.calico", 4, Some(2), 4789),
        ]
    }

    fn pods() -> Vec<(IpAddr, u8)> {
        vec![("10.244.0.0".parse().unwrap(), 16)]
    }

    /// (check, device) of each finding.
    fn found(rules: &[Rule]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        check(rules, &devs(), &pods(), &mut out);
        out.iter()
            .map(|f| (f.check.as_str().to_string(), f.device.clone()))
            .collect()
    }

    fn pair(c: &str, d: &str) -> (String, String) {
        (c.to_string(), d.to_string())
    }

    #[test]
    fn nft_rules_are_recognised() {
        let ruleset = serde_json::json!({"nftables": [
            {"chain": {"family": "inet", "table": "t", "name": "in", "hook": "input"}},
            {"rule": {"family": "inet", "table": "t", "chain": "in", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 4789}},
                {"drop": null}]}},
            {"rule": {"family": "inet", "table": "t", "chain": "in", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
                {"drop": null}]}},
            {"rule": {"family": "inet", "table": "t", "chain": "in", "expr": [
                {"match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 8472}},
                {"drop": null}]}},
            {"chain": {"family": "inet", "table": "t", "name": "fwd", "hook": "forward"}},
            {"rule": {"family": "inet", "table": "t", "chain": "fwd", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.244.3.0", "len": 24}}}},
                {"reject": null}]}},
            {"chain": {"family": "ip", "table": "nat", "name": "post", "hook": "postrouting"}},
            {"rule": {"family": "ip", "table": "nat", "chain": "post", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.1.0", "len": 24}}}},
                {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "vxlan.calico"}},
                {"masquerade": null}]}},
        ]});
        let rules = from_nft(&ruleset);
        assert_eq!(
            found(&rules),
            vec![
                // Reported against the device whose port the rule drops,
                // and the one the rule names.
                pair("firewall_drops_vxlan", "vxlan.calico"),
                pair("firewall_drops_pod_traffic", "flannel.1"),
                pair("masquerade_pod_traffic", "vxlan.calico"),
            ]
        );
        let mut out = Vec::new();
        check(&rules, &devs(), &pods(), &mut out);
        assert_eq!(
            out[0].message,
            "an nftables rule drops the VXLAN port on input: table inet t chain in (input hook): udp dport 4789 drop"
        );
    }

    #[test]
    fn iptables_rules_are_recognised() {
        let save = "\
*filter
:INPUT ACCEPT [0:0]
-A INPUT -p udp -m udp --dport 8472 -j DROP
-A INPUT -p udp -m udp --dport 53 -j DROP
-A INPUT ! -s 10.0.0.0/8 -p udp -m multiport --dports 4789,9000:9100 -j REJECT
-A FORWARD -d 10.244.2.0/24 -j DROP
-A FORWARD ! -s 10.244.0.0/16 -j DROP
-A FORWARD -o eth0 -j DROP
-A KUBE-FIREWALL -p udp --dport 8472 -j DROP
COMMIT
*nat
-A POSTROUTING -s 10.244.1.0/24 -d 10.244.0.0/16 -j MASQUERADE
-A POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE
-A POSTROUTING -o flannel.1 -j SNAT --to-source 10.244.1.0
COMMIT
";
        let rules = from_iptables(save);
        assert_eq!(
            found(&rules),
            vec![
                pair("firewall_drops_vxlan", "flannel.1"),
                pair("firewall_drops_vxlan", "vxlan.calico"),
                pair("firewall_drops_pod_traffic", "flannel.1"),
                pair("masquerade_pod_traffic", "flannel.1"),
                pair("masquerade_pod_traffic", "flannel.1"),
            ]
        );
        let mut out = Vec::new();
        check(&rules, &devs(), &pods(), &mut out);
        assert_eq!(
            out[0].message,
            "an iptables rule drops the VXLAN port on input: table filter chain INPUT (input hook): -A INPUT -p udp -m udp --dport 8472 -j DROP"
        );
        assert_eq!(
            out[4].message.split(':').next(),
            Some("a snat rule rewrites pod-to-pod overlay traffic")
        );
        // Either kind of rewrite, alone, is NAT on the node.
        for target in ["MASQUERADE", "SNAT --to-source 192.0.2.1"] {
            let nat = format!("*nat\n-A POSTROUTING -o eth0 -j {target}\nCOMMIT\n");
            assert!(rewrites_addresses(&from_iptables(&nat)), "{target}");
        }
        assert!(!rewrites_addresses(&from_iptables(
            "*filter\n-A INPUT -p udp --dport 8472 -j DROP\nCOMMIT\n"
        )));
    }

    /// The same rule written by either tool gives the same finding, in
    /// the same words but for the tool's name and the rule's text.
    #[test]
    fn both_tools_say_the_same() {
        let nft = from_nft(&serde_json::json!({"nftables": [
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "flannel.1"}},
                {"drop": null}]}},
        ]}));
        let ipt = from_iptables("*filter\n-A FORWARD -i flannel.1 -j DROP\nCOMMIT\n");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        check(&nft, &devs(), &pods(), &mut a);
        check(&ipt, &devs(), &pods(), &mut b);
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(a[0].check, b[0].check);
        assert_eq!(a[0].fix, b[0].fix);
        assert_eq!(a[0].device, b[0].device);
        let words = |m: &str| {
            m.split(": ")
                .next()
                .unwrap()
                .replace("nftables", "TOOL")
                .replace("iptables", "TOOL")
        };
        assert_eq!(words(&a[0].message), words(&b[0].message));
    }
}
