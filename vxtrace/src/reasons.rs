//! Kernel drop-reason names vxtrace reasons about. Names, never numbers:
//! the numbers differ between kernels and are read from the running one
//! (`kernel::DropReasons`).

use std::collections::BTreeMap;

/// netfilter (iptables / nftables) dropped the packet.
pub const NETFILTER_DROP: &str = "NETFILTER_DROP";
/// The frame was addressed to another host's MAC.
pub const OTHERHOST: &str = "OTHERHOST";
/// No socket listens on the destination port.
pub const NO_SOCKET: &str = "NO_SOCKET";

/// TCP timestamp checks (RFC 7323 PAWS).
pub const PAWS: [&str; 4] = [
    "TCP_RFC7323_PAWS",
    "TCP_RFC7323_PAWS_ACK",
    "TCP_RFC7323_TW_PAWS",
    "TCP_RFC7323_TSECR",
];

/// Drops that lose the peer's traffic on its way (not a socket turning a
/// packet away, which busy nodes do all day).
pub const LOSS: [&str; 6] = [
    NETFILTER_DROP,
    OTHERHOST,
    "TCP_RFC7323_PAWS",
    "TCP_RFC7323_PAWS_ACK",
    "TCP_RFC7323_TW_PAWS",
    "TCP_RFC7323_TSECR",
];

/// Names vxtrace's findings rely on; a kernel without one of them gets a
/// note at start.
pub const RELIED_ON: [&str; 3] = [NETFILTER_DROP, OTHERHOST, NO_SOCKET];

/// Drops of `reason` in a by-reason table.
pub fn count(drops: &BTreeMap<String, u64>, reason: &str) -> u64 {
    drops.get(reason).copied().unwrap_or(0)
}

/// PAWS rejects in a by-reason table.
pub fn paws_rejects(drops: &BTreeMap<String, u64>) -> u64 {
    PAWS.iter().map(|r| count(drops, r)).sum()
}
