//! Kernel drop-reason names vxtrace reasons about, and which drops lose
//! traffic. Names, never numbers: the numbers differ between kernels and
//! are read from the running one (`kernel::DropReasons`).
//!
//! Not every drop is lost traffic. A busy node turns packets away all day
//! where nothing is wrong: a ping socket's filter declines the replies
//! meant for another ping, a closed port answers with a reset. Those are
//! [`DropClass::NotLoss`], shown apart and never a finding. Every reason
//! not listed as such is loss. The README's table lists the not-loss ones
//! with the reasoning.

use std::collections::BTreeMap;

/// netfilter (iptables / nftables) dropped the packet.
pub const NETFILTER_DROP: &str = "NETFILTER_DROP";
/// The frame was addressed to another host's MAC.
pub const OTHERHOST: &str = "OTHERHOST";
/// No socket listens on the destination port.
pub const NO_SOCKET: &str = "NO_SOCKET";
/// A UDP checksum was wrong.
pub const UDP_CSUM: &str = "UDP_CSUM";
/// Too big for the next hop, and not to be fragmented.
pub const PKT_TOO_BIG: &str = "PKT_TOO_BIG";
/// The VXLAN driver found no remote for the frame.
pub const NO_TX_TARGET: &str = "NO_TX_TARGET";
/// `NO_TX_TARGET`'s older name.
pub const VXLAN_NO_REMOTE: &str = "VXLAN_NO_REMOTE";
/// A metadata device got a frame without tunnel information.
pub const TUNNEL_TXINFO: &str = "TUNNEL_TXINFO";
/// Drops in the VXLAN driver's receive and transmit paths on kernels that
/// name none of them (before Linux 6.13): vxtrace names them by where they
/// happen.
pub const VXLAN_RX_DROP: &str = "VXLAN_RX_DROP";
pub const VXLAN_TX_DROP: &str = "VXLAN_TX_DROP";

/// A PAWS reject of an established connection's segment.
pub const PAWS_ESTABLISHED: &str = "TCP_RFC7323_PAWS";
/// A PAWS reject of a segment for a connection in TIME_WAIT.
pub const PAWS_TIME_WAIT: &str = "TCP_RFC7323_TW_PAWS";
/// TCP timestamp checks (RFC 7323 PAWS).
pub const PAWS: [&str; 4] = [
    PAWS_ESTABLISHED,
    "TCP_RFC7323_PAWS_ACK",
    PAWS_TIME_WAIT,
    "TCP_RFC7323_TSECR",
];

/// Reasons of the VXLAN / tunnel family for frames that die as they are
/// sent (no remote, no tunnel information, the transmit path), not as
/// they arrive: their loss is on the sending node.
pub const DIES_WHEN_SENT: [&str; 4] = [NO_TX_TARGET, VXLAN_NO_REMOTE, TUNNEL_TXINFO, VXLAN_TX_DROP];

/// Names vxtrace's findings rely on; a kernel without one of them gets a
/// note at start.
pub const RELIED_ON: [&str; 3] = [NETFILTER_DROP, OTHERHOST, NO_SOCKET];

/// Whether a drop loses traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropClass {
    Loss,
    /// Normal on a busy node: the packet reached where it was going, or
    /// was not traffic anyone lost.
    NotLoss,
}

/// Reasons that are not lost traffic, with why.
pub const NOT_LOSS: &[(&str, &str)] = &[
    (
        "NOT_SPECIFIED",
        "freed without a reason: on kernels that name their drops, real drops name one; these are multicast and control packets nobody asked for",
    ),
    (
        "NO_SOCKET",
        "nothing listens on the pod's port: the host answered (reset, port unreachable), the network delivered it (to a VXLAN port, it is loss: a port mismatch)",
    ),
    (
        "SOCKET_CLOSE",
        "the receiving socket was closed with data queued",
    ),
    (
        "SOCKET_FILTER",
        "a socket's filter declined its copy: ping and packet sockets see every packet and keep their own",
    ),
    ("UNIX_DISCONNECT", "local Unix-socket traffic"),
    ("UNIX_SKIP_OOB", "local Unix-socket traffic"),
    (
        "UNICAST_IN_L2_MULTICAST",
        "a unicast packet in a multicast frame: not for this host",
    ),
    (
        "IP_NOPROTO",
        "no handler for the IP protocol: the host answered (protocol unreachable)",
    ),
    ("TCP_OLD_DATA", "a retransmission of data already received"),
    (
        "TCP_OLD_SEQUENCE",
        "a segment before the window, already received",
    ),
    (
        "TCP_OLD_ACK",
        "an acknowledgement of data already acknowledged",
    ),
    (
        "TCP_TOO_OLD_ACK",
        "an acknowledgement of data acknowledged long ago",
    ),
    ("TCP_CLOSE", "a segment for a connection already closed"),
    ("TCP_RESET", "a segment for a connection reset"),
    (
        "TCP_ABORT_ON_DATA",
        "data for a connection the application aborted",
    ),
    (
        "TCP_FLAGS",
        "a segment with flags that fit no state: junk, not lost traffic",
    ),
    ("TCP_INVALID_SYN", "a SYN on an established connection"),
    (
        "TCP_ACK_UNSENT_DATA",
        "an acknowledgement of data never sent",
    ),
    ("DUP_FRAG", "a fragment received twice"),
    (
        "IPV6_NDISC_FRAG",
        "a neighbour-discovery message the host ignores",
    ),
    (
        "IPV6_NDISC_HOP_LIMIT",
        "a neighbour-discovery message the host ignores",
    ),
    (
        "IPV6_NDISC_BAD_CODE",
        "a neighbour-discovery message the host ignores",
    ),
    (
        "IPV6_NDISC_BAD_OPTIONS",
        "a neighbour-discovery message the host ignores",
    ),
    (
        "IPV6_NDISC_NS_OTHERHOST",
        "a neighbour solicitation for another host",
    ),
    (
        "PACKET_SOCK_ERROR",
        "a packet socket (a capture) could not take its copy",
    ),
];

/// The class of a drop of `reason`; `outer`: the dropped packet was an
/// outer VXLAN packet (a closed VXLAN port loses the tunnel's traffic).
pub fn class(reason: &str, outer: bool) -> DropClass {
    if outer && reason == NO_SOCKET {
        return DropClass::Loss;
    }
    if NOT_LOSS.iter().any(|(r, _)| *r == reason) {
        DropClass::NotLoss
    } else {
        DropClass::Loss
    }
}

/// The VXLAN driver's own drop reasons (and those of the tunnel code it
/// uses): what each means and what to change. Kernels may add more to the
/// family ([`is_tunnel_reason`]); those get the family's words.
pub const VXLAN_REASONS: &[(&str, &str, &str)] = &[
    (
        "VXLAN_INVALID_HDR",
        "the VXLAN header is invalid (I flag clear or reserved bits set): the sender uses another VXLAN variant (GBP, GPE) or is not VXLAN",
        "give both nodes' VXLAN devices the same options (gbp, gpe) or find the sender",
    ),
    (
        "VXLAN_VNI_NOT_FOUND",
        "no VXLAN device here has the packet's VNI",
        "give every node's VXLAN device the same VNI",
    ),
    (
        "MAC_INVALID_SOURCE",
        "a learning VXLAN device got a frame whose inner source MAC is not a valid unicast address (multicast or zero)",
        "find the sender of such frames (a bridge or VM behind the peer's VXLAN device) and look for a loop",
    ),
    (
        "LOCAL_MAC",
        "a frame whose inner source MAC is this VXLAN device's own: the peer's VXLAN device has the same MAC (a cloned VM, a copied MAC setting), or a loop",
        "give each node's VXLAN device its own MAC (delete the device and let the overlay agent create it again); `vxtrace doctor` on the peers lists duplicates",
    ),
    (
        "VXLAN_ENTRY_EXISTS",
        "a learning VXLAN device would not learn a MAC that a static FDB entry points elsewhere",
        "remove the stale static FDB entry for that MAC (`bridge fdb del`) or fix the peer's MAC",
    ),
    (
        NO_TX_TARGET,
        "no FDB entry (no remote) for the frame's destination MAC: it cannot be sent",
        "the overlay agent has not programmed the peer: add the FDB entry (`bridge fdb append MAC dev DEV dst PEER`) or restart the agent",
    ),
    (
        VXLAN_NO_REMOTE,
        "no FDB entry (no remote) for the frame's destination MAC: it cannot be sent",
        "the overlay agent has not programmed the peer: add the FDB entry (`bridge fdb append MAC dev DEV dst PEER`) or restart the agent",
    ),
    (
        "IP_TUNNEL_ECN",
        "the outer header says congestion (ECN CE) on a packet whose inner header is not ECN-capable",
        "find the device on the path that marks CE on traffic that is not ECN-capable, or make the pods' traffic ECN-capable",
    ),
    (
        VXLAN_RX_DROP,
        "the VXLAN driver refused a packet it received; this kernel does not say why (it names these drops from Linux 6.13): usually a VNI no device here has, a header variant the device does not accept (GBP, GPE), or the peer's VXLAN device having this device's MAC",
        "compare both nodes' VXLAN devices (`ip -d link show type vxlan`: VNI, port, gbp, MAC)",
    ),
    (
        VXLAN_TX_DROP,
        "the VXLAN driver could not send a frame; this kernel does not say why: usually no FDB entry (no remote) for its destination MAC, or no route to the remote",
        "`bridge fdb show dev <device>` and `ip route get <peer>`; `vxtrace doctor` checks both",
    ),
    (
        TUNNEL_TXINFO,
        "a metadata (external) VXLAN device got a packet without tunnel information: no route gave it a remote",
        "the routes to the peer's pods must carry `encap ... dst PEER` (or the agent must set tunnel keys)",
    ),
];

/// A reason of the VXLAN / tunnel family.
pub fn is_tunnel_reason(reason: &str) -> bool {
    VXLAN_REASONS.iter().any(|(r, ..)| *r == reason)
        || reason.starts_with("VXLAN_")
        || reason.contains("TUNNEL")
}

/// The words for a VXLAN / tunnel reason: (meaning, fix).
pub fn tunnel_reason_words(reason: &str) -> (&'static str, &'static str) {
    VXLAN_REASONS
        .iter()
        .find(|(r, ..)| *r == reason)
        .map(|(_, m, f)| (*m, *f))
        .unwrap_or((
            "the VXLAN driver refused the packet",
            "compare both nodes' VXLAN device settings (`ip -d link show type vxlan`)",
        ))
}

/// Drops of `reason` in a by-reason table.
pub fn count(drops: &BTreeMap<String, u64>, reason: &str) -> u64 {
    drops.get(reason).copied().unwrap_or(0)
}

/// PAWS rejects in a by-reason table.
pub fn paws_rejects(drops: &BTreeMap<String, u64>) -> u64 {
    PAWS.iter().map(|r| count(drops, r)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class("NETFILTER_DROP", false), DropClass::Loss);
        assert_eq!(class("SOCKET_FILTER", false), DropClass::NotLoss);
        assert_eq!(class("NO_SOCKET", false), DropClass::NotLoss);
        assert_eq!(
            class("NO_SOCKET", true),
            DropClass::Loss,
            "a closed VXLAN port"
        );
        assert_eq!(class("SOME_FUTURE_REASON", false), DropClass::Loss);
        assert!(is_tunnel_reason("VXLAN_SOMETHING_NEW"));
        assert!(is_tunnel_reason("NO_TX_TARGET"));
        assert!(is_tunnel_reason("LOCAL_MAC"));
        assert_eq!(class("LOCAL_MAC", true), DropClass::Loss);
        assert!(is_tunnel_reason(VXLAN_RX_DROP));
        assert!(is_tunnel_reason(VXLAN_TX_DROP));
        assert!(!is_tunnel_reason("NETFILTER_DROP"));
    }

    /// The README's table lists every not-loss reason.
    #[test]
    fn the_readme_lists_the_not_loss_reasons() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for (r, _) in NOT_LOSS {
            assert!(readme.contains(&format!("`{r}`")), "README lacks {r}");
        }
    }
}
