//! Another eBPF datapath on the same devices (Cilium, Calico's eBPF mode):
//! its TC programs end the chain for the packets they pass (TC_ACT_OK), so
//! a program behind them sees nothing. vxtrace goes to the head of every
//! chain, stays there, and where it cannot, says what it does not see.
//! The stand-in datapath is a real program that passes every packet and
//! ends the chain (`vxtrace_tests::datapath`).

use std::time::Duration;

use vxtrace::schema::{BlindSpotKind, Line, Summary};
use vxtrace_tests::{
    LabGuard, Watcher,
    datapath::{Hook, StandIn, XdpStandIn},
    json, sh,
};

/// The four hooks vxtrace uses on a flannel node.
const HOOKS: [(&str, Hook); 4] = [
    ("eth0", Hook::Ingress),
    ("eth0", Hook::Egress),
    ("flannel.1", Hook::Ingress),
    ("flannel.1", Hook::Egress),
];

/// Pings node 1's pod -> node 2's pod `n` times and checks that node 1's
/// vxtrace counted every one at every hook, with no finding.
fn assert_exact(lab: &LabGuard, s: &Summary, n: u64) {
    let peer = lab.underlay_ip(2).to_string();
    let p = s.peer(&peer);
    let c = &p.counters;
    assert_eq!(
        (
            c.tx_dev.packets,
            c.tx_encap.packets,
            c.rx_nic.packets,
            c.rx_decap.packets
        ),
        (n, n, n, n),
        "{}",
        json(s)
    );
    assert!(p.findings.is_empty(), "{}", json(s));
    assert!(s.blind_spots.is_empty(), "{}", json(s));
}

/// The stand-in datapath on all four hooks of `ns`, attached by `attach`.
fn on_every_hook(ns: &str, attach: fn(&str, &str, Hook) -> StandIn) -> Vec<StandIn> {
    HOOKS.iter().map(|(d, h)| attach(ns, d, *h)).collect()
}

fn ping(lab: &LabGuard, n: u32) {
    assert_eq!(lab.ping(1, 2, n, Duration::ZERO).unwrap(), n);
}

/// Waits until the watcher says it moved back to the head of `count`
/// chains.
fn wait_moved_back(w: &mut Watcher, count: usize) {
    for i in 0..count {
        let line = w.next_matching(
            |l| matches!(l, Line::BlindSpot(b) if b.kind == BlindSpotKind::MovedBack),
            Duration::from_secs(15),
        );
        assert!(line.is_some(), "only {i} of {count} hooks moved back");
    }
}

/// A pass-everything datapath attached through tcx on all four hooks
/// before vxtrace starts: vxtrace goes ahead of it and counts every packet.
#[test]
fn tcx_datapath_attached_before_vxtrace() {
    let lab = LabGuard::new("dp-tcx1", 2, false, 8472);
    let ns = lab.node_ns(1);
    let _datapath = on_every_hook(&ns, StandIn::tcx_first);
    let w = Watcher::start(&ns, &["--attach", "tcx"]);
    assert!(w.attached.blind_spots.is_empty(), "{}", json(&w.attached));
    ping(&lab, 20);
    assert_exact(&lab, &w.stop(), 20);
}

/// The datapath's agent restarts while vxtrace runs and attaches at the
/// head of every chain: vxtrace notices within an interval, moves back to
/// the head, says so, and counts exactly again.
#[test]
fn tcx_datapath_attached_ahead_while_vxtrace_runs() {
    let lab = LabGuard::new("dp-tcx2", 2, false, 8472);
    let ns = lab.node_ns(1);
    let mut w = Watcher::start(&ns, &["--attach", "tcx"]);
    ping(&lab, 10);
    let _datapath = on_every_hook(&ns, StandIn::tcx_first);
    wait_moved_back(&mut w, HOOKS.len());
    ping(&lab, 20);
    let s = w.stop();
    assert_exact(&lab, &s, 30);
}

/// clsact kernels (before 6.6), or `--attach clsact`: a direct-action
/// cls_bpf filter at priority 1 on every hook, before vxtrace starts and
/// again while it runs (a new filter at a priority goes in front of those
/// there): vxtrace counts every packet either way.
#[test]
fn clsact_filter_at_the_first_priority() {
    let lab = LabGuard::new("dp-cls", 2, false, 8472);
    let ns = lab.node_ns(1);
    let before = on_every_hook(&ns, StandIn::clsact_first);
    let mut w = Watcher::start(&ns, &["--attach", "clsact"]);
    assert!(w.attached.blind_spots.is_empty(), "{}", json(&w.attached));
    ping(&lab, 20);
    // The agent restarts: its filters are replaced at the head.
    drop(before);
    let _after = on_every_hook(&ns, StandIn::clsact_first);
    wait_moved_back(&mut w, HOOKS.len());
    ping(&lab, 15);
    assert_exact(&lab, &w.stop(), 35);
}

/// Never silently blind: a u32 classifier holds the first clsact priority
/// on the underlay's ingress and ends the chain there; vxtrace (clsact)
/// cannot get ahead of it. It says so at start, then finds the packets the
/// kernel decapsulated that it never saw arrive, exactly as many as there
/// were, and concludes no loss from the hole.
#[test]
fn blind_behind_a_classifier_it_cannot_overtake() {
    let lab = LabGuard::new("dp-blind", 2, false, 8472);
    let ns = lab.node_ns(1);
    sh(&[
        "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "clsact",
    ]);
    sh(&[
        "ip", "netns", "exec", &ns, "tc", "filter", "add", "dev", "eth0", "ingress", "prio", "1",
        "protocol", "all", "u32", "match", "u32", "0", "0", "classid", "1:1",
    ]);
    let mut w = Watcher::start(&ns, &["--attach", "clsact"]);
    let ahead = &w.attached.blind_spots;
    assert_eq!(ahead.len(), 1, "{}", json(&w.attached));
    assert_eq!(ahead[0].kind, BlindSpotKind::ProgramAhead);
    assert_eq!(ahead[0].device, "eth0");
    assert!(
        ahead[0].message.contains("u32 filter"),
        "{}",
        ahead[0].message
    );
    ping(&lab, 25);
    let unseen = w
        .next_matching(
            |l| matches!(l, Line::BlindSpot(b) if b.kind == BlindSpotKind::UnseenPackets),
            Duration::from_secs(15),
        )
        .expect("no unseen-packets report");
    let Line::BlindSpot(unseen) = unseen else {
        unreachable!()
    };
    assert_eq!(unseen.device, "eth0");
    assert_eq!(unseen.packets, Some(25), "{}", json(&unseen));
    let s = w.stop();
    let peer = s.peer(&lab.underlay_ip(2).to_string());
    let c = &peer.counters;
    assert_eq!(
        (c.tx_encap.packets, c.rx_nic.packets, c.rx_decap.packets),
        (25, 0, 25),
        "{}",
        json(&s)
    );
    assert!(
        peer.findings
            .iter()
            .all(|f| f.segment == vxtrace::schema::Segment::None),
        "a loss concluded from a blind spot: {}",
        json(&s)
    );
    let kinds: Vec<_> = s.blind_spots.iter().map(|b| b.kind).collect();
    assert!(
        kinds.contains(&BlindSpotKind::ProgramAhead)
            && kinds.contains(&BlindSpotKind::UnseenPackets),
        "{}",
        json(&s)
    );
}

/// XDP programs see arriving packets before any TC program: one on the
/// underlay at start is named in the `attached` line; one attached while
/// vxtrace runs is an event, and its leaving another. This one passes
/// every packet, so the counts stay exact.
#[test]
fn xdp_programs_on_the_underlay_are_named() {
    let lab = LabGuard::new("dp-xdp", 2, false, 8472);
    let ns = lab.node_ns(1);
    let first = XdpStandIn::attach(&ns, "eth0");
    let mut w = Watcher::start(&ns, &[]);
    let xdp: Vec<_> = w
        .attached
        .blind_spots
        .iter()
        .filter(|b| b.kind == BlindSpotKind::Xdp)
        .collect();
    assert_eq!(xdp.len(), 1, "{}", json(&w.attached));
    assert_eq!(xdp[0].device, "eth0");
    assert!(
        xdp[0].message.contains("XDP program id"),
        "{}",
        xdp[0].message
    );
    drop(first);
    let gone = w.next_matching(
        |l| matches!(l, Line::BlindSpot(b) if b.kind == BlindSpotKind::SeenAgain && b.device == "eth0"),
        Duration::from_secs(10),
    );
    assert!(gone.is_some(), "no event when the XDP program left");
    let _second = XdpStandIn::attach(&ns, "eth0");
    let came = w.next_matching(
        |l| matches!(l, Line::BlindSpot(b) if b.kind == BlindSpotKind::Xdp && b.device == "eth0"),
        Duration::from_secs(10),
    );
    assert!(came.is_some(), "no event when an XDP program came");
    ping(&lab, 15);
    let s = w.stop();
    let p = s.peer(&lab.underlay_ip(2).to_string());
    let c = &p.counters;
    assert_eq!(
        (
            c.tx_dev.packets,
            c.tx_encap.packets,
            c.rx_nic.packets,
            c.rx_decap.packets
        ),
        (15, 15, 15, 15),
        "{}",
        json(&s)
    );
    assert!(p.findings.is_empty(), "{}", json(&s));
    // Still there at exit: in the summary.
    assert!(
        s.blind_spots.iter().any(|b| b.kind == BlindSpotKind::Xdp),
        "{}",
        json(&s)
    );
}

/// Two vxtrace runs on one node, such as a DaemonSet's and one an
/// operator starts by hand: each counts every packet and passes it on, so
/// neither needs to be ahead of the other. They must not take turns at
/// the head of the chains: every turn is a detach and an attach, and the
/// packets between the two are missed. Both count every packet, and
/// neither reports a move, through several of their checks of the chains
/// (about one a second).
#[test]
fn two_vxtrace_runs_on_one_node_leave_each_other_be() {
    for (name, attach) in [("dp-two-tcx", "tcx"), ("dp-two-cls", "clsact")] {
        let lab = LabGuard::new(name, 2, false, 8472);
        let ns = lab.node_ns(1);
        let first = Watcher::start(&ns, &["--attach", attach]);
        let second = Watcher::start(&ns, &["--attach", attach]);
        assert!(
            second.attached.blind_spots.is_empty(),
            "{attach}: {}",
            json(&second.attached)
        );
        assert_eq!(
            lab.ping(1, 2, 25, Duration::from_millis(200)).unwrap(),
            25,
            "{attach}"
        );
        let (s1, s2) = (first.stop(), second.stop());
        assert_exact(&lab, &s1, 25);
        assert_exact(&lab, &s2, 25);
    }
}
