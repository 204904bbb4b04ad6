//! The cluster view, offline: every lab node records, `vxtrace report`
//! joins the recordings by VTEP address and names, for every directed
//! link, where its traffic is lost and why.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use vxtrace::schema::{Cause, ClusterReport, Line, Link, LinkStatus, Report, Segment};
use vxtrace_tests::{
    LabGuard, Watcher, bin, run,
    scenarios::{cut_path, drop_vxlan_at_input, nft},
};

/// A directory for one test's recordings, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // VXTRACE_KEEP_RECORDINGS=1 keeps them, to look at a failure.
        if std::env::var_os("VXTRACE_KEEP_RECORDINGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A recording watcher on every node, named node1..nodeN.
fn record_all(lab: &LabGuard, dir: &Path) -> Vec<Watcher> {
    record(lab, dir, &(1..=lab.nodes).collect::<Vec<_>>())
}

/// A recording watcher on each of `nodes`, recording into
/// `dir/nodeN.ndjson`.
fn record(lab: &LabGuard, dir: &Path, nodes: &[u8]) -> Vec<Watcher> {
    nodes
        .iter()
        .map(|&n| {
            let file = dir.join(format!("node{n}.ndjson"));
            Watcher::start(
                &lab.node_ns(n),
                &[
                    "--record",
                    file.to_str().unwrap(),
                    "--interval",
                    "500ms",
                    "--node-name",
                    &format!("node{n}"),
                ],
            )
        })
        .collect()
}

fn cluster_report(dir: &Path) -> ClusterReport {
    report_of(&[dir], &[])
}

/// `vxtrace report --json` of these recordings, with these options.
fn report_of(recordings: &[&Path], options: &[&str]) -> ClusterReport {
    let (code, out, err) = run(Command::new(bin())
        .args(["report", "--json"])
        .args(options)
        .args(recordings));
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not a cluster report ({e}): {out}"))
}

/// `vxtrace report` of these recordings, in words.
fn report_text(recordings: &[&Path], options: &[&str]) -> String {
    let (code, out, err) = run(Command::new(bin())
        .arg("report")
        .args(options)
        .args(recordings));
    assert_eq!(code, 0, "{err}");
    out
}

fn link<'a>(r: &'a ClusterReport, from: &str, to: &str) -> &'a Link {
    r.links
        .iter()
        .find(|l| l.from_node == from && l.to_node == to)
        .unwrap_or_else(|| panic!("no link {from} -> {to}: {:#?}", r.links))
}

/// One direction cut on the path: that link is lost on the path, with
/// exact counts from both ends; every other link loses nothing.
#[test]
fn a_path_cut_is_named_on_its_link_only() {
    let lab = LabGuard::new("vt-clp", 3, false, 8472);
    let dir = Dir::new("vt-clp");
    let watchers = record_all(&lab, &dir.0);
    cut_path(&lab, 2, 1);
    // 20 echoes 1 -> 2: the requests arrive, the 20 replies 2 -> 1 die.
    assert_eq!(lab.ping(1, 2, 20, Duration::ZERO).unwrap(), 0);
    assert_eq!(lab.ping(1, 3, 10, Duration::ZERO).unwrap(), 10);
    assert_eq!(lab.ping(2, 3, 10, Duration::ZERO).unwrap(), 10);
    Watcher::stop_all(watchers);
    let r = cluster_report(&dir.0);
    assert_eq!(r.nodes.len(), 3, "{:#?}", r.nodes);
    let lost = link(&r, "node2", "node1");
    assert_eq!(lost.from, lab.underlay_ip(2));
    assert_eq!(lost.to, lab.underlay_ip(1));
    assert_eq!(
        (lost.tx_dev, lost.tx_encap, lost.rx_nic, lost.rx_decap),
        (20, 20, 0, 0),
        "{lost:#?}"
    );
    assert_eq!(lost.loss_segment, Segment::Path, "{lost:#?}");
    assert_eq!(lost.lost, 20);
    assert_eq!(lost.cause, Some(Cause::PathLoss), "{lost:#?}");
    assert!(
        lost.evidence
            .contains("tx_encap 20 at node2, rx_nic 0 at node1"),
        "{}",
        lost.evidence
    );
    let fine = link(&r, "node1", "node2");
    assert_eq!(
        (fine.tx_encap, fine.rx_nic, fine.rx_decap),
        (20, 20, 20),
        "{fine:#?}"
    );
    for (from, to, n) in [
        ("node1", "node3", 10),
        ("node3", "node1", 10),
        ("node2", "node3", 10),
        ("node3", "node2", 10),
    ] {
        let l = link(&r, from, to);
        assert_eq!((l.tx_encap, l.rx_nic, l.rx_decap), (n, n, n), "{l:#?}");
    }
    for l in r
        .links
        .iter()
        .filter(|l| !(l.from_node == "node2" && l.to_node == "node1"))
    {
        assert_eq!(l.loss_segment, Segment::None, "{l:#?}");
        assert_eq!(l.cause, None, "{l:#?}");
    }
    assert!(r.blackholes.is_empty(), "{:#?}", r.blackholes);
    // The text says it as a matrix and in words.
    let (code, text, err) = run(Command::new(bin()).arg("report").arg(&dir.0));
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("100% path"), "{text}");
    assert!(
        text.contains("node2 (192.0.2.12) -> node1 (192.0.2.11)"),
        "{text}"
    );
}

/// Every node records while node 1's pod sends `count` echoes to node 2's
/// pod, none answered; then the cluster report of the recordings.
fn unanswered_echoes_recorded(lab: &LabGuard, dir: &Path, count: u32) -> ClusterReport {
    let watchers = record_all(lab, dir);
    assert_eq!(lab.ping(1, 2, count, Duration::ZERO).unwrap(), 0);
    Watcher::stop_all(watchers);
    cluster_report(dir)
}

/// The receiver's host firewall drops VXLAN: the link A -> B is lost on
/// the receiving host, with the drop reason.
#[test]
fn a_host_firewall_is_named_on_the_receiver() {
    let lab = LabGuard::new("vt-clf", 2, false, 8472);
    let dir = Dir::new("vt-clf");
    drop_vxlan_at_input(&lab, 2);
    let r = unanswered_echoes_recorded(&lab, &dir.0, 6);
    let l = link(&r, "node1", "node2");
    assert_eq!((l.tx_encap, l.rx_nic, l.rx_decap), (6, 6, 0), "{l:#?}");
    assert_eq!(l.loss_segment, Segment::ReceiverHost, "{l:#?}");
    assert_eq!(l.cause, Some(Cause::HostFirewall), "{l:#?}");
    assert_eq!(l.drops.get("NETFILTER_DROP"), Some(&6), "{l:#?}");
    assert!(l.evidence.contains("NETFILTER_DROP 6"), "{}", l.evidence);
}

/// A firewall on B's output dropping the VXLAN packets B sends to A: B
/// receives A's echoes and answers, and drops its own answers after
/// encapsulating them. B counts those drops for A; they are B→A's loss on
/// B (the sending host), not A→B's on B.
#[test]
fn an_output_firewall_is_named_on_the_sender() {
    let lab = LabGuard::new("vt-clo", 2, false, 8472);
    let dir = Dir::new("vt-clo");
    nft(
        &lab.node_ns(2),
        &format!(
            "add table inet vt; add chain inet vt out {{ type filter hook output priority 0 ; }}; add rule inet vt out ip daddr {} udp dport 8472 drop",
            lab.underlay_ip(1)
        ),
    );
    let r = unanswered_echoes_recorded(&lab, &dir.0, 6);
    let there = link(&r, "node1", "node2");
    assert_eq!(
        (there.tx_dev, there.tx_encap, there.rx_nic, there.rx_decap),
        (6, 6, 6, 6),
        "{there:#?}"
    );
    assert_eq!(there.loss_segment, Segment::None, "{there:#?}");
    assert_eq!(there.cause, None, "{there:#?}");
    let back = link(&r, "node2", "node1");
    assert_eq!(
        (back.tx_dev, back.tx_encap, back.rx_nic, back.rx_decap),
        (6, 0, 0, 0),
        "{back:#?}"
    );
    assert_eq!(back.loss_segment, Segment::SenderHost, "{back:#?}");
    assert_eq!(back.cause, Some(Cause::LostWhileEncapsulating), "{back:#?}");
    assert!(
        back.evidence.contains("NETFILTER_DROP 6"),
        "{}",
        back.evidence
    );
}

/// One node's traffic to both others cut for a few seconds while they
/// still reach each other: one blackhole event naming both peers.
#[test]
fn a_blackholed_node_is_one_event() {
    let lab = LabGuard::new("vt-clb", 3, false, 8472);
    let dir = Dir::new("vt-clb");
    let mut watchers = record_all(&lab, &dir.0);
    let end = Instant::now() + Duration::from_secs(9);
    let senders: Vec<_> = [(1, 2), (1, 3), (2, 3), (3, 2)]
        .into_iter()
        .map(|(from, to)| {
            let lab = lab.lab.clone();
            std::thread::spawn(move || {
                while Instant::now() < end {
                    let _ = lab.ping(from, to, 5, Duration::from_millis(20));
                }
            })
        })
        .collect();
    // Steady traffic as every node sees it (3 s at 500 ms): node 1 hears
    // from both others, each of them from node 1 and from the third.
    for (n, w) in (1..).zip(&mut watchers) {
        let others: Vec<_> = (1..=3)
            .filter(|&o| o != n)
            .map(|o| lab.underlay_ip(o))
            .collect();
        w.hearing_from(&others, 6, Duration::from_secs(20));
    }
    // Everything node 1 sends into the underlay, gone for 3 s (the length
    // of the blackhole is the input: a plain sleep).
    nft(
        &lab.bridge_ns(),
        "add table bridge vtbh; add chain bridge vtbh fw { type filter hook forward priority 0 ; }; add rule bridge vtbh fw iifname \"veth1\" drop",
    );
    std::thread::sleep(Duration::from_secs(3));
    nft(&lab.bridge_ns(), "delete table bridge vtbh");
    for s in senders {
        s.join().unwrap();
    }
    Watcher::stop_all(watchers);
    let r = cluster_report(&dir.0);
    assert_eq!(r.blackholes.len(), 1, "{:#?}", r.blackholes);
    let h = &r.blackholes[0];
    assert_eq!(h.node, "node1");
    assert_eq!(h.peers, vec![lab.underlay_ip(2), lab.underlay_ip(3)]);
    assert!((2.0..=4.5).contains(&(h.end - h.start)), "{h:#?}");
    assert!(
        h.evidence.contains("while other nodes reached"),
        "{}",
        h.evidence
    );
    for to in ["node2", "node3"] {
        let l = link(&r, "node1", to);
        assert_eq!(l.loss_segment, Segment::Path, "{l:#?}");
        assert_eq!(l.cause, Some(Cause::SubnetBlackhole), "{l:#?}");
    }
    assert_eq!(link(&r, "node2", "node3").loss_segment, Segment::None);
}

/// Three nodes, node 3's recording left out of the report, the path from
/// node 1 to node 3 cut: node 3 is still in the report, its links marked
/// "far end not recorded" and not judged, node 1's one-way finding about
/// it as node 1's own report names it; node 1 <-> node 2 judged as
/// before.
#[test]
fn a_node_without_a_recording_keeps_its_links_and_findings() {
    let lab = LabGuard::new("vt-clu", 3, false, 8472);
    let dir = Dir::new("vt-clu");
    let watchers = record_all(&lab, &dir.0);
    cut_path(&lab, 1, 3);
    assert_eq!(lab.ping(1, 2, 20, Duration::ZERO).unwrap(), 20);
    assert_eq!(lab.ping(1, 3, 10, Duration::ZERO).unwrap(), 0);
    assert_eq!(lab.ping(2, 3, 10, Duration::ZERO).unwrap(), 10);
    Watcher::stop_all(watchers);
    let (node1, node2) = (dir.0.join("node1.ndjson"), dir.0.join("node2.ndjson"));
    let r = report_of(&[&node1, &node2], &[]);
    let c = lab.underlay_ip(3);
    assert_eq!(r.nodes.len(), 2, "{:#?}", r.nodes);
    assert_eq!(r.unrecorded.len(), 1, "{:#?}", r.unrecorded);
    let u = &r.unrecorded[0];
    assert_eq!(
        (u.name.as_str(), u.vteps.as_slice()),
        ("192.0.2.13", &[c][..])
    );
    assert_eq!(u.seen_by, vec!["node1", "node2"]);

    // node1 -> node3: node1's counts and its one-way finding.
    let cut = link(&r, "node1", "192.0.2.13");
    assert_eq!(cut.from, lab.underlay_ip(1));
    assert_eq!(cut.status, LinkStatus::FarEndNotRecorded, "{cut:#?}");
    assert_eq!(cut.loss_segment, Segment::NotJudged, "{cut:#?}");
    assert_eq!(
        (cut.tx_dev, cut.tx_encap, cut.rx_nic, cut.rx_decap),
        (10, 10, 0, 0),
        "{cut:#?}"
    );
    assert_eq!(cut.cause, Some(Cause::OneWay), "{cut:#?}");
    assert_eq!(cut.findings[0].headline, "one-way: sent 10, received 0");
    assert_eq!(cut.evidence, "tx_encap 10, rx_nic 0");
    // Exactly as node 1's own report names them.
    let (code, out, err) = run(Command::new(bin()).args(["report", "--json"]).arg(&node1));
    assert_eq!(code, 0, "{err}");
    let alone: Report = serde_json::from_str(&out).unwrap();
    assert_eq!(cut.findings, alone.peers[&c].causes);
    let back = link(&r, "192.0.2.13", "node1");
    assert_eq!(back.status, LinkStatus::FarEndNotRecorded, "{back:#?}");
    assert_eq!((back.tx_encap, back.rx_nic, back.rx_decap), (0, 0, 0));

    // node2 <-> node3: node2's counts, nothing found.
    let out2 = link(&r, "node2", "192.0.2.13");
    assert_eq!(out2.status, LinkStatus::FarEndNotRecorded);
    assert_eq!((out2.tx_dev, out2.tx_encap), (10, 10), "{out2:#?}");
    assert!(out2.findings.is_empty(), "{out2:#?}");
    let in2 = link(&r, "192.0.2.13", "node2");
    assert_eq!((in2.rx_nic, in2.rx_decap), (10, 10), "{in2:#?}");

    // node1 <-> node2: judged, nothing lost.
    for (from, to) in [("node1", "node2"), ("node2", "node1")] {
        let l = link(&r, from, to);
        assert_eq!(l.status, LinkStatus::Judged, "{l:#?}");
        assert_eq!(
            (l.tx_dev, l.tx_encap, l.rx_nic, l.rx_decap),
            (20, 20, 20, 20),
            "{l:#?}"
        );
        assert_eq!(l.loss_segment, Segment::None, "{l:#?}");
    }
    assert_eq!(r.links.len(), 6, "{:#?}", r.links);

    let text = report_text(&[&node1, &node2], &[]);
    assert!(text.contains("far end not recorded"), "{text}");
    assert!(
        text.contains(
            "node1 (192.0.2.11) -> 192.0.2.13: not judged: no recording of the far end (192.0.2.13)"
        ),
        "{text}"
    );
    assert!(
        text.contains("node1 counted: tx_dev 10 · tx_encap 10"),
        "{text}"
    );
    assert!(
        text.contains("likely cause: one-way: sent 10, received 0"),
        "{text}"
    );
    assert!(text.contains(&cut.findings[0].fix), "{text}");
}

/// `file` with every timestamp moved by `by` seconds, through the typed
/// lines: what a node whose clock is that far off writes.
fn shifted(file: &Path, to: &Path, by: f64) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = String::new();
    for raw in text.lines() {
        let mut line = Line::parse(raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
        match &mut line {
            Line::Header(h) => h.started += by,
            Line::Interval(i) => i.ts += by,
            Line::OutageStart(o) | Line::OutageEnd(o) => {
                o.start += by;
                o.end = o.end.map(|e| e + by);
            }
            Line::OutageGroup(g) => g.start += by,
            _ => {}
        }
        out.push_str(&line.to_json());
        out.push('\n');
    }
    std::fs::write(to, out).unwrap();
}

/// node2's clock an hour ahead, the path node2 -> node1 cut: the two
/// recordings share no time, so no link between them is judged (never
/// "0% none" over a backwards window), and the words name the offset the
/// traffic shows; re-run with the --clock-skew they name, the 100% loss
/// is judged with exact counts.
#[test]
fn recordings_of_a_skewed_clock_are_not_judged_until_lined_up() {
    let lab = LabGuard::new("vt-cls", 2, false, 8472);
    let dir = Dir::new("vt-cls");
    let watchers = record_all(&lab, &dir.0);
    cut_path(&lab, 2, 1);
    assert_eq!(lab.ping(1, 2, 20, Duration::ZERO).unwrap(), 0);
    Watcher::stop_all(watchers);
    let node1 = dir.0.join("node1.ndjson");
    let node2 = dir.0.join("node2-an-hour-ahead.ndjson");
    shifted(&dir.0.join("node2.ndjson"), &node2, 3600.0);
    let r = report_of(&[&node1, &node2], &[]);
    for l in &r.links {
        assert!(l.window.0 <= l.window.1, "{l:#?}");
        assert_eq!(l.status, LinkStatus::NoSharedSpan, "{l:#?}");
        assert_eq!(l.loss_segment, Segment::NotJudged, "{l:#?}");
        let words = l.not_judged.as_deref().unwrap_or_default();
        assert!(words.starts_with("the recordings share no time"), "{words}");
    }
    let there = link(&r, "node1", "node2");
    // Known to within an interval (500 ms) either way: where in its
    // intervals each node counted the packets is not known.
    let ahead = there
        .suggested_clock_offset_s
        .expect("an offset from the traffic");
    assert!((ahead - 3600.0).abs() < 1.0, "{there:#?}");
    // Each end's own counts, not compared.
    let back = link(&r, "node2", "node1");
    assert_eq!((back.tx_encap, back.rx_nic), (20, 0), "{back:#?}");
    let text = report_text(&[&node1, &node2], &[]);
    assert!(text.contains("no shared span"), "{text}");
    assert!(!text.contains("% none"), "{text}");
    let skew = text
        .split("re-run with --clock-skew ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no --clock-skew to re-run with: {text}"));
    let seconds: f64 = skew.parse().unwrap();
    assert!((3600.0..=3602.0).contains(&seconds), "{skew}");

    let r = report_of(&[&node1, &node2], &["--clock-skew", skew]);
    let lost = link(&r, "node2", "node1");
    assert_eq!(lost.status, LinkStatus::Judged, "{lost:#?}");
    assert_eq!(
        (lost.tx_dev, lost.tx_encap, lost.rx_nic, lost.rx_decap),
        (20, 20, 0, 0),
        "{lost:#?}"
    );
    assert_eq!(
        (lost.loss_segment, lost.lost),
        (Segment::Path, 20),
        "{lost:#?}"
    );
    assert_eq!(lost.cause, Some(Cause::PathLoss), "{lost:#?}");
    assert!(
        (lost.clock_offset_s.unwrap() + 3600.0).abs() < 1.0,
        "{lost:#?}"
    );
    let fine = link(&r, "node1", "node2");
    assert_eq!(
        (fine.tx_encap, fine.rx_nic, fine.rx_decap),
        (20, 20, 20),
        "{fine:#?}"
    );
    assert_eq!(fine.loss_segment, Segment::None, "{fine:#?}");
}

/// node1 recorded, then node2, one after the other, the path node2 ->
/// node1 cut: the recordings share no time and their traffic lines up
/// nowhere; both links not judged, the words say to record both at once.
#[test]
fn recordings_of_different_times_are_not_judged() {
    let lab = LabGuard::new("vt-clt", 2, false, 8472);
    let dir = Dir::new("vt-clt");
    cut_path(&lab, 2, 1);
    let first = record(&lab, &dir.0, &[1]);
    assert_eq!(lab.ping(1, 2, 20, Duration::ZERO).unwrap(), 0);
    Watcher::stop_all(first);
    let second = record(&lab, &dir.0, &[2]);
    assert_eq!(lab.ping(2, 1, 10, Duration::ZERO).unwrap(), 0);
    Watcher::stop_all(second);
    let r = cluster_report(&dir.0);
    assert_eq!(r.links.len(), 2, "{:#?}", r.links);
    for l in &r.links {
        assert_eq!(l.status, LinkStatus::NoSharedSpan, "{l:#?}");
        assert_eq!(l.loss_segment, Segment::NotJudged, "{l:#?}");
        assert!(l.window.0 <= l.window.1, "{l:#?}");
        assert_eq!(l.suggested_clock_offset_s, None, "{l:#?}");
        let words = l.not_judged.as_deref().unwrap_or_default();
        assert!(
            words.ends_with("record on both nodes at the same time"),
            "{words}"
        );
    }
    let there = link(&r, "node1", "node2");
    assert_eq!((there.tx_encap, there.rx_nic), (20, 0), "{there:#?}");
    let back = link(&r, "node2", "node1");
    assert_eq!((back.tx_encap, back.rx_nic), (10, 0), "{back:#?}");
    let text = report_text(&[&dir.0], &[]);
    assert!(!text.contains("% none"), "{text}");
    assert!(text.contains("no shared span"), "{text}");
}
