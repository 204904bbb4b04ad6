//! The diagnosis of one directed link A→B, from both ends: A's counters
//! for B (what it handed to its VXLAN device, what left its underlay
//! device) against B's counters for A (what reached its underlay device,
//! what its VXLAN device delivered), and what each node's own engine found
//! about the other. The first segment where traffic goes missing is where
//! it is lost; the cause comes from the node on that side, or, for the
//! path, from both ends (sizes that never arrive, a node blackholed).

use crate::schema::{Cause, Direction, Finding, Segment, SizeDistribution, round3};
use vxtrace_common::SIZE_BUCKET_BOUNDS;

use super::{
    About, MIN_PACKETS,
    rules::{LOST_BEFORE_DECAP, LOST_WHILE_ENCAPSULATING, PATH_MTU},
};

pub const PATH_LOSS: About = About {
    cause: Cause::PathLoss,
    segment: Segment::Path,
    direction: Direction::ToPeer,
    meaning: "the underlay path between the nodes drops them: a security group or firewall on the way, NAT, or a policer",
    fix: "allow the VXLAN UDP port between the nodes on the path (security groups, cloud or hypervisor firewalls) and check for NAT between them; tcpdump on both underlay devices shows where packets stop",
};

pub const SUBNET_BLACKHOLE: About = About {
    cause: Cause::SubnetBlackhole,
    segment: Segment::Path,
    direction: Direction::ToPeer,
    meaning: "a device on the path (a policer, a rate limiter, a route) blackholed the sending node",
    fix: "find what drops the sending node's packets on the underlay (policer, UDP rate limit, security group); the outage times show when",
};

/// The causes only both ends of a link show; the rest are the node rules'.
pub(super) const CAUSES: &[&About] = &[&PATH_LOSS, &SUBNET_BLACKHOLE];

/// What both ends counted for one link over the span they share.
pub struct LinkObservation<'a> {
    pub from: String,
    pub to: String,
    pub tx_dev: u64,
    pub tx_encap: u64,
    pub rx_nic: u64,
    pub rx_decap: u64,
    /// Packets that may be in flight at the window's edges (and under the
    /// clock skew): a path difference this small is no loss.
    pub in_flight: u64,
    /// Packets A sent in intervals in which B, clocks lined up, heard
    /// nothing from A (away from the window's edges): loss the totals can
    /// hide when it is small.
    pub lost_in_silence: u64,
    /// Loss-class drops B counted of A's traffic.
    pub receiver_drops: u64,
    /// Outer sizes A sent to B, and B received from A.
    pub sent_sizes: &'a SizeDistribution,
    pub arrived_sizes: &'a SizeDistribution,
    /// A's findings about B, and B's about A (each node's own engine).
    pub sender_findings: &'a [Finding],
    pub receiver_findings: &'a [Finding],
    /// A blackhole of A that covers this link, in words.
    pub blackhole: Option<String>,
}

/// Where a link's traffic is lost, how much, and why.
pub struct LinkDiagnosis {
    pub segment: Segment,
    pub lost: u64,
    pub loss_pct: f64,
    pub findings: Vec<Finding>,
}

fn pct(lost: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        round3(lost as f64 * 100.0 / of as f64)
    }
}

/// Findings of a node about the other that belong to `segment` and to
/// this direction of the link.
fn matching(findings: &[Finding], segment: Segment, direction: Direction) -> Vec<Finding> {
    findings
        .iter()
        .filter(|f| {
            f.segment == segment && (f.direction == direction || f.direction == Direction::Both)
        })
        .cloned()
        .collect()
}

pub fn diagnose_link(o: &LinkObservation<'_>) -> LinkDiagnosis {
    let encap_lost = o.tx_dev.saturating_sub(o.tx_encap);
    if o.tx_dev >= MIN_PACKETS && o.tx_encap * 10 < o.tx_dev * 9 {
        let mut found = matching(o.sender_findings, Segment::SenderHost, Direction::ToPeer);
        if found.is_empty() {
            found.push(encapsulation_loss(o));
        }
        return verdict(Segment::SenderHost, encap_lost, o.tx_dev, found);
    }
    let path_lost = o.tx_encap.saturating_sub(o.rx_nic);
    if path_lost > o.in_flight || o.lost_in_silence > 0 {
        let lost = path_lost.max(o.lost_in_silence);
        return verdict(Segment::Path, lost, o.tx_encap, vec![path_finding(o, lost)]);
    }
    let decap_lost = o.rx_nic.saturating_sub(o.rx_decap);
    let receiver = matching(
        o.receiver_findings,
        Segment::ReceiverHost,
        Direction::FromPeer,
    );
    if decap_lost > 0 || (o.receiver_drops > 0 && !receiver.is_empty()) {
        // No more than arrived can be lost here.
        let lost = decap_lost.max(o.receiver_drops).min(o.rx_nic);
        let found = if receiver.is_empty() {
            vec![decap_loss(o, decap_lost)]
        } else {
            receiver
        };
        return verdict(Segment::ReceiverHost, lost, o.rx_nic, found);
    }
    verdict(Segment::None, 0, o.tx_encap, Vec::new())
}

fn verdict(segment: Segment, lost: u64, of: u64, findings: Vec<Finding>) -> LinkDiagnosis {
    LinkDiagnosis {
        segment,
        lost,
        loss_pct: pct(lost, of),
        findings,
    }
}

/// A finding of `about` on the link: its fix said for the node it is
/// about (the sender, the receiver, or the path between them), or `fix`
/// where the counts tell more.
fn link_finding(
    o: &LinkObservation<'_>,
    about: &About,
    headline: String,
    evidence: String,
    fix: Option<String>,
) -> Finding {
    let mut f = about.finding(headline, evidence);
    f.direction = Direction::ToPeer;
    f.fix = fix.unwrap_or_else(|| {
        let place = match about.segment {
            Segment::SenderHost => format!("on {}", o.from),
            Segment::ReceiverHost => format!("on {}", o.to),
            _ => format!("from {} to {}", o.from, o.to),
        };
        format!("{place}: {}", about.fix)
    });
    f
}

fn encapsulation_loss(o: &LinkObservation<'_>) -> Finding {
    link_finding(
        o,
        &LOST_WHILE_ENCAPSULATING.about,
        format!(
            "{} handed {} frames for {} to its VXLAN device, {} left its underlay device",
            o.from, o.tx_dev, o.to, o.tx_encap
        ),
        format!("tx_dev {} at {}, tx_encap {}", o.tx_dev, o.from, o.tx_encap),
        None,
    )
}

fn decap_loss(o: &LinkObservation<'_>, lost: u64) -> Finding {
    link_finding(
        o,
        &LOST_BEFORE_DECAP.about,
        format!(
            "{} packets from {} reached {}'s underlay device, {} were decapsulated",
            o.rx_nic, o.from, o.to, o.rx_decap
        ),
        format!(
            "rx_nic {} at {}, rx_decap {}, lost {lost}",
            o.rx_nic, o.to, o.rx_decap
        ),
        None,
    )
}

/// Loss on the path: a blackhole of the sender, sizes that never arrive,
/// or plain loss.
fn path_finding(o: &LinkObservation<'_>, lost: u64) -> Finding {
    let counted = format!(
        "tx_encap {} at {}, rx_nic {} at {}",
        o.tx_encap, o.from, o.rx_nic, o.to
    );
    if let Some(words) = &o.blackhole {
        return link_finding(
            o,
            &SUBNET_BLACKHOLE,
            format!(
                "{}'s traffic to several peers, {} among them, was lost in the same seconds",
                o.from, o.to
            ),
            format!("{counted}; {words}"),
            None,
        );
    }
    if let Some((bound, big_sent, small_arrived)) = size_cutoff(o.sent_sizes, o.arrived_sizes) {
        // Both ends' sizes give the MTU itself.
        return link_finding(
            o,
            &PATH_MTU.about,
            format!(
                "packets above {bound} bytes from {} never reach {}",
                o.from, o.to
            ),
            format!(
                "{counted}; outer packets above {bound} bytes: {big_sent} sent, 0 arrived; {small_arrived} smaller ones arrived"
            ),
            Some(format!(
                "set the VXLAN device's MTU to at most {} (IPv4 underlay) or {} (IPv6), and the pods' MTU no higher; or raise the path MTU",
                bound.saturating_sub(50),
                bound.saturating_sub(70)
            )),
        );
    }
    link_finding(
        o,
        &PATH_LOSS,
        format!(
            "{} packets from {} to {} left {} and never reached {} ({} of {})",
            lost, o.from, o.to, o.from, o.to, lost, o.tx_encap
        ),
        counted,
        None,
    )
}

/// The size above which nothing arrives while smaller packets do:
/// (the largest bound that arrived, packets sent above it, packets that
/// arrived below it).
fn size_cutoff(sent: &SizeDistribution, arrived: &SizeDistribution) -> Option<(u32, u64, u64)> {
    // The first bucket with packets sent and none arrived, above which
    // nothing arrived either.
    let first_lost = (0..sent.counts.len())
        .find(|&i| sent.counts[i] > 0 && arrived.counts[i..].iter().all(|n| *n == 0))?;
    let small_arrived: u64 = arrived.counts[..first_lost].iter().sum();
    if first_lost == 0 || small_arrived == 0 {
        return None;
    }
    let big_sent: u64 = sent.counts[first_lost..].iter().sum();
    Some((SIZE_BUCKET_BOUNDS[first_lost - 1], big_sent, small_arrived))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(
        sizes: &'a SizeDistribution,
        (tx_dev, tx_encap, rx_nic, rx_decap): (u64, u64, u64, u64),
    ) -> LinkObservation<'a> {
        LinkObservation {
            from: "node1".into(),
            to: "node2".into(),
            tx_dev,
            tx_encap,
            rx_nic,
            rx_decap,
            in_flight: 0,
            lost_in_silence: 0,
            receiver_drops: 0,
            sent_sizes: sizes,
            arrived_sizes: sizes,
            sender_findings: &[],
            receiver_findings: &[],
            blackhole: None,
        }
    }

    /// One row per segment: where the traffic goes missing first.
    #[test]
    fn the_first_segment_that_loses_is_named() {
        let sizes = SizeDistribution::default();
        let rows = [
            ((200, 200, 200, 200), Segment::None, 0, None),
            (
                (200, 100, 100, 100),
                Segment::SenderHost,
                100,
                Some(Cause::LostWhileEncapsulating),
            ),
            ((200, 200, 0, 0), Segment::Path, 200, Some(Cause::PathLoss)),
            (
                (200, 200, 200, 150),
                Segment::ReceiverHost,
                50,
                Some(Cause::LostBeforeDecap),
            ),
        ];
        for (counts, segment, lost, cause) in rows {
            let d = diagnose_link(&obs(&sizes, counts));
            assert_eq!(d.segment, segment, "{counts:?}");
            assert_eq!(d.lost, lost, "{counts:?}");
            assert_eq!(d.findings.first().map(|f| f.kind), cause, "{counts:?}");
        }
    }

    /// Packets in flight at the edges of the window are no loss.
    #[test]
    fn in_flight_is_not_loss() {
        let sizes = SizeDistribution::default();
        let mut o = obs(&sizes, (100, 100, 98, 98));
        o.in_flight = 2;
        assert_eq!(diagnose_link(&o).segment, Segment::None);
        o.in_flight = 1;
        assert_eq!(diagnose_link(&o).segment, Segment::Path);
    }

    /// Big packets sent, only small ones arrived: the path MTU, named with
    /// the size above which nothing arrives.
    #[test]
    fn sizes_that_never_arrive_name_the_mtu() {
        let (mut sent, mut arrived) = (SizeDistribution::default(), SizeDistribution::default());
        sent.counts[1] = 100; // <=256
        sent.counts[7] = 20; // 1451..1500
        arrived.counts[1] = 100;
        let mut o = obs(&sent, (120, 120, 100, 100));
        o.arrived_sizes = &arrived;
        let d = diagnose_link(&o);
        assert_eq!(d.segment, Segment::Path);
        let f = &d.findings[0];
        assert_eq!(f.kind, Cause::PathMtu);
        assert_eq!(
            f.headline,
            "packets above 1450 bytes from node1 never reach node2"
        );
        assert!(
            f.evidence
                .contains("above 1450 bytes: 20 sent, 0 arrived; 100 smaller ones arrived"),
            "{}",
            f.evidence
        );
        assert!(f.fix.contains("at most 1400"), "{}", f.fix);
    }

    /// The receiver's own finding names the cause of a receiver-host loss.
    #[test]
    fn the_receivers_finding_is_the_cause() {
        let sizes = SizeDistribution::default();
        let firewall = Finding {
            kind: Cause::HostFirewall,
            headline: "host firewall".into(),
            cause: "a rule".into(),
            segment: Segment::ReceiverHost,
            direction: Direction::FromPeer,
            evidence: "rx_nic 5, rx_decap 0, NETFILTER_DROP 5".into(),
            fix: "allow".into(),
        };
        let receiver = [firewall];
        let mut o = obs(&sizes, (5, 5, 5, 0));
        o.receiver_findings = &receiver;
        let d = diagnose_link(&o);
        assert_eq!(d.segment, Segment::ReceiverHost);
        assert_eq!(d.lost, 5);
        assert_eq!(d.findings[0].kind, Cause::HostFirewall);
    }
}
