//! `vxtrace doctor` on lab nodes: clean means exit 0; each injected
//! misconfiguration is found, with its evidence, and exit 1.

use std::process::Command;

use vxtrace::schema::{Check, DoctorFinding, DoctorReport};
use vxtrace_tests::{LabGuard, Watcher, bin, json, run, sh};

fn doctor(ns: &str) -> (i32, DoctorReport) {
    let (code, out, err) = run(Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin())
        .args(["doctor", "--json"]));
    assert!(!err.contains("panicked"), "{err}");
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("not a doctor report ({e}): {out}; stderr: {err}"));
    (code, v)
}

fn findings(v: &DoctorReport, check: Check) -> Vec<&DoctorFinding> {
    v.findings.iter().filter(|f| f.check == check).collect()
}

#[test]
fn clean_lab_node_has_no_findings() {
    let lab = LabGuard::new("vt-doc", 3, false, 8472);
    let (code, v) = doctor(&lab.node_ns(1));
    assert!(v.findings.is_empty(), "{}", json(&v));
    assert_eq!(code, 0);
}

#[test]
fn each_misconfiguration_is_found() {
    let lab = LabGuard::new("vt-doc2", 3, false, 8472);
    let a = lab.node_ns(1);
    let cases: Vec<(&str, Vec<Vec<String>>, Check, &str)> = vec![
        (
            "two FDB entries, one underlay address",
            vec![vec!["bridge".into(), "-n".into(), a.clone(), "fdb".into(), "append".into(), "0e:76:78:00:00:99".into(), "dev".into(), "flannel.1".into(), "dst".into(), lab.underlay_ip(2).to_string()]],
            Check::FdbDuplicateUnderlay,
            "0e:76:78:00:00:99",
        ),
        (
            "FDB entry to an own address",
            vec![vec!["bridge".into(), "-n".into(), a.clone(), "fdb".into(), "append".into(), "0e:76:78:00:00:98".into(), "dev".into(), "flannel.1".into(), "dst".into(), lab.underlay_ip(1).to_string()]],
            Check::FdbDstIsLocal,
            "192.0.2.11",
        ),
        (
            "neighbour MAC without FDB entry",
            vec![vec!["ip".into(), "-n".into(), a.clone(), "neigh".into(), "replace".into(), "10.244.1.0".into(), "lladdr".into(), "0e:76:78:00:00:97".into(), "dev".into(), "flannel.1".into(), "nud".into(), "permanent".into()]],
            Check::NeighbourWithoutFdb,
            "0e:76:78:00:00:97",
        ),
        (
            "VXLAN MTU 1500 on a 1500-byte underlay",
            vec![
                vec!["ip".into(), "-n".into(), a.clone(), "link".into(), "add".into(), "vx9".into(), "type".into(), "vxlan".into(), "id".into(), "9".into(), "local".into(), lab.underlay_ip(1).to_string(), "dstport".into(), "4789".into()],
                vec!["ip".into(), "-n".into(), a.clone(), "link".into(), "set".into(), "vx9".into(), "mtu".into(), "1500".into()],
            ],
            Check::MtuTooLarge,
            "\"vxlan_mtu\":1500",
        ),
        (
            "nft input rule dropping the VXLAN port",
            vec![vec!["ip".into(), "netns".into(), "exec".into(), a.clone(), "nft".into(), "add table inet vt; add chain inet vt in { type filter hook input priority 0 ; }; add rule inet vt in udp dport 8472 drop".into()]],
            Check::FirewallDropsVxlan,
            "udp dport 8472 drop",
        ),
        (
            "MASQUERADE of pod traffic to the overlay",
            vec![vec!["ip".into(), "netns".into(), "exec".into(), a.clone(), "nft".into(), "add table ip vtnat; add chain ip vtnat post { type nat hook postrouting priority 100 ; }; add rule ip vtnat post ip saddr 10.244.0.0/24 oifname \"flannel.1\" masquerade".into()]],
            Check::MasqueradePodTraffic,
            "masquerade",
        ),
        (
            "rp_filter=1 on the underlay",
            vec![vec!["ip".into(), "netns".into(), "exec".into(), a.clone(), "sh".into(), "-c".into(), "echo 1 > /proc/sys/net/ipv4/conf/eth0/rp_filter".into()]],
            Check::RpFilterStrict,
            "\"device\":\"eth0\"",
        ),
        (
            "forwarding off on a node that routes pod subnets through the overlay",
            vec![vec!["ip".into(), "netns".into(), "exec".into(), a.clone(), "sh".into(), "-c".into(), "echo 0 > /proc/sys/net/ipv4/ip_forward".into()]],
            Check::IpForwardOff,
            "\"ip_forward\":0",
        ),
    ];
    for (what, cmds, check, evidence) in cases {
        for c in &cmds {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            sh(&args);
        }
        let (code, v) = doctor(&a);
        assert_eq!(code, 1, "{what}: {}", json(&v));
        let f = findings(&v, check);
        assert!(!f.is_empty(), "{what}: no {check} in {}", json(&v));
        assert!(
            f.iter().any(|f| json(f).contains(evidence)),
            "{what}: {evidence} not in {f:?}"
        );
        assert!(f.iter().all(|f| !f.fix.is_empty()));
    }
    // `watch` runs the same checks at start and reports them.
    let w = Watcher::start(&a, &["--vxlan-dev", "flannel.1"]);
    let at_start = json(&w.attached.doctor);
    assert!(at_start.contains("firewall_drops_vxlan"), "{at_start}");
    let s = w.stop();
    assert!(json(&s.doctor).contains("masquerade_pod_traffic"));
}

#[test]
fn doctor_without_vxlan_cannot_run() {
    let ns = "vt-doc-empty";
    let _ = run(Command::new("ip").args(["netns", "delete", ns]));
    sh(&["ip", "netns", "add", ns]);
    let (code, _, err) = run(Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin())
        .arg("doctor"));
    let _ = run(Command::new("ip").args(["netns", "delete", ns]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no VXLAN device to check"), "{err}");
}

/// A VXLAN device used as one layer-2 segment between two hosts (learning
/// on, a default remote): the MACs it learned behind the peer need no
/// neighbour entry here and may be several behind one address. Nothing to
/// report; the programmed entries of flannel's device are still checked.
#[test]
fn layer2_learning_device_is_clean() {
    let lab = LabGuard::new("vt-doc3", 2, false, 8472);
    let (a, b) = (lab.node_ns(1), lab.node_ns(2));
    for (ns, me, other, addr) in [(&a, 1, 2, "192.168.42.1/24"), (&b, 2, 1, "192.168.42.2/24")] {
        let (local, remote) = (
            lab.underlay_ip(me).to_string(),
            lab.underlay_ip(other).to_string(),
        );
        sh(&[
            "ip", "-n", ns, "link", "add", "vx42", "type", "vxlan", "id", "42", "dstport", "4790",
            "local", &local, "remote", &remote, "dev", "eth0",
        ]);
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", "vx42"]);
        sh(&["ip", "-n", ns, "link", "set", "vx42", "up"]);
    }
    let to_a: std::net::Ipv4Addr = "192.168.42.1".parse().unwrap();
    assert_eq!(
        vxtrace::lab::ping_from(&b, to_a, 2, std::time::Duration::ZERO).unwrap(),
        2
    );
    // A second MAC behind B's address (as a bridged host would add).
    sh(&[
        "ip",
        "-n",
        &b,
        "link",
        "set",
        "vx42",
        "address",
        "02:42:00:00:00:02",
    ]);
    let _ = vxtrace::lab::ping_from(&b, to_a, 1, std::time::Duration::ZERO);
    let (_, fdb, _) = run(Command::new("bridge").args(["-n", &a, "fdb", "show", "dev", "vx42"]));
    let learned: Vec<&str> = fdb
        .lines()
        .filter(|l| !l.starts_with("00:00:00:00:00:00") && !l.contains("permanent"))
        .collect();
    assert!(learned.len() >= 2, "two learned MACs behind B: {fdb}");
    let (code, v) = doctor(&a);
    assert!(v.findings.is_empty(), "{}", json(&v));
    assert_eq!(code, 0);
}
