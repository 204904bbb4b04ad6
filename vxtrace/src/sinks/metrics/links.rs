//! Which peers get link series: the two counters the cluster rules join
//! into directed links (`tx_encap` and `rx_nic` packets), for
//! every peer while the cluster's links fit the budget
//! (`--metrics-links`, directed links for the whole cluster), so that a
//! partial loss on any link is visible in Prometheus whatever the link's
//! traffic rank.
//!
//! A node with P peers takes its cluster for a mesh of P + 1 nodes, with
//! P (P + 1) directed links. Beyond the budget (by default a mesh of more
//! than 1,024 nodes) not every link can have series, and a link is only
//! useful when *both* ends export it: A's `tx_encap{peer=B}` is set
//! against B's `rx_nic{peer=A}`. So the choice is made from the pair
//! itself, the same way on both nodes: a hash of the two underlay
//! addresses, kept when it falls below a share that is a power of two (1,
//! 1/2, 1/4, ...), the largest that keeps the mesh within the budget. Two
//! nodes whose peer counts give the same share choose the same links; a
//! node with a smaller share chooses a subset of what the other chooses,
//! so a link is never counted at one end with different traffic than at
//! the other. The cluster's series stay near the budget however many
//! nodes, and so do each node's (about budget / P link peers).

use std::net::IpAddr;

use rustc_hash::FxHashSet;
use vxtrace_common::PeerKey;

use crate::discovery::peer_addr;

/// The metrics every peer with link series has (the rules' inputs).
pub const LINK_METRICS: [&str; 2] = ["vxtrace_tx_encap_packets", "vxtrace_rx_nic_packets"];

/// Directed links with series, for the whole cluster, by default: every
/// link of a full mesh of up to 1,024 nodes, 1/32 of them at 5,000.
/// Each link costs Prometheus the two series its ends export (loss is
/// recorded only where there is some): measured in the README, "Across
/// the cluster". Lower it where Prometheus has less memory.
pub const DEFAULT_LINK_BUDGET: usize = 1 << 20;

/// The links this node exports.
pub struct LinkChoice {
    /// Directed links the cluster exports at most (`--metrics-links`).
    budget: usize,
    /// This node's VTEP addresses.
    vteps: Vec<IpAddr>,
    /// Share of pairs kept: 2^-shift.
    shift: u32,
}

impl LinkChoice {
    pub fn new(budget: usize, vteps: Vec<IpAddr>) -> Self {
        Self {
            budget,
            vteps,
            shift: 0,
        }
    }

    /// The share of pairs kept at the last `choose` (1.0: every peer).
    pub fn share(&self) -> f64 {
        1.0 / f64::from(1u32 << self.shift.min(31))
    }

    /// The peers (of `peers`, every peer this node counts) that get link
    /// series.
    pub fn choose<'a>(&mut self, peers: impl Iterator<Item = &'a PeerKey>) -> FxHashSet<PeerKey> {
        let peers: Vec<&PeerKey> = peers.collect();
        self.shift = share_shift(peers.len(), self.budget);
        peers
            .into_iter()
            .filter(|k| self.keeps(&peer_addr(k)))
            .copied()
            .collect()
    }

    /// Whether the pair (this node, `peer`) is kept at the current share.
    /// A node with several VTEPs of the peer's family keeps the peer only
    /// when every one of its pairs with it is kept: whichever of them the
    /// traffic uses, the peer (which sees that one) keeps it too.
    fn keeps(&self, peer: &IpAddr) -> bool {
        if self.shift == 0 {
            return true;
        }
        if self.budget == 0 {
            return false;
        }
        self.vteps
            .iter()
            .filter(|v| v.is_ipv4() == peer.is_ipv4())
            .all(|v| pair_kept(v, peer, self.shift))
    }
}

/// The smallest k with P (P + 1) / 2^k <= budget: the power-of-two share
/// of a mesh of P + 1 nodes' links that fits the budget.
fn share_shift(peers: usize, budget: usize) -> u32 {
    let links = (peers as u128) * (peers as u128 + 1);
    if links <= budget as u128 {
        return 0;
    }
    if budget == 0 {
        return 64;
    }
    let mut k = 0;
    while (links >> k) > budget as u128 && k < 63 {
        k += 1;
    }
    k
}

/// Whether the unordered pair {a, b} falls in the kept 2^-shift of pairs.
pub fn pair_kept(a: &IpAddr, b: &IpAddr, shift: u32) -> bool {
    if shift == 0 {
        return true;
    }
    if shift >= 64 {
        return false;
    }
    pair_hash(a, b) >> (64 - shift) == 0
}

/// A hash of the unordered address pair that every vxtrace computes the
/// same: FNV-1a over both addresses (IPv4 as IPv4-mapped IPv6, the lower
/// first), mixed so that its top bits are uniform.
pub fn pair_hash(a: &IpAddr, b: &IpAddr) -> u64 {
    let (a, b) = (mapped(a), mapped(b));
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in lo.iter().chain(hi.iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The finaliser of splitmix64: FNV's high bits alone are not uniform.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn mapped(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::discovery::peer_key;

    fn node(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    /// Every node of a mesh, its peers the others: the links it keeps.
    fn mesh_choices(nodes: u32, budget: usize) -> Vec<FxHashSet<PeerKey>> {
        (0..nodes)
            .map(|i| {
                let peers: Vec<PeerKey> = (0..nodes)
                    .filter(|j| *j != i)
                    .map(|j| peer_key(&node(j)))
                    .collect();
                LinkChoice::new(budget, vec![node(i)]).choose(peers.iter())
            })
            .collect()
    }

    #[test]
    fn within_the_budget_every_peer_has_link_series() {
        let chosen = mesh_choices(40, 40 * 39);
        assert!(chosen.iter().all(|c| c.len() == 39));
    }

    /// Beyond the budget both ends of a link make the same choice, the
    /// share is what the budget allows, and the mesh stays near it.
    #[test]
    fn beyond_the_budget_both_ends_choose_the_same_links() {
        let (nodes, budget) = (600u32, 50_000usize);
        let chosen = mesh_choices(nodes, budget);
        let mut kept = 0;
        for i in 0..nodes {
            for j in 0..nodes {
                if i == j {
                    continue;
                }
                let a_keeps = chosen[i as usize].contains(&peer_key(&node(j)));
                let b_keeps = chosen[j as usize].contains(&peer_key(&node(i)));
                assert_eq!(a_keeps, b_keeps, "{i} <-> {j}");
                kept += usize::from(a_keeps);
            }
        }
        // 600 x 599 = 359,400 links: a share of 1/8 (44,925 <= 50,000).
        let share = kept as f64 / f64::from(nodes * (nodes - 1));
        assert!((share - 0.125).abs() < 0.02, "share {share}");
        assert!(kept < 2 * budget, "{kept}");
    }

    /// Two nodes in different bands: the one with more peers keeps a
    /// subset of what the other keeps, so a link is kept by both or
    /// counted at one end only (and then never set against the other).
    #[test]
    fn a_node_in_a_higher_band_keeps_a_subset() {
        let a = node(1);
        for j in 2..5000 {
            let b = node(j);
            if pair_kept(&a, &b, 3) {
                assert!(pair_kept(&a, &b, 2) && pair_kept(&a, &b, 1));
            }
        }
    }

    /// A node with two VTEPs of one family keeps a peer only when both
    /// pairs are kept: the peer keeps it whichever address it sees.
    #[test]
    fn several_vteps_keep_only_pairs_kept_with_each() {
        let (v1, v2) = (node(1), node(2));
        let mut choice = LinkChoice::new(200 * 201 / 2, vec![v1, v2]);
        let peers: Vec<PeerKey> = (100..300).map(|j| peer_key(&node(j))).collect();
        let chosen = choice.choose(peers.iter());
        assert!(!chosen.is_empty());
        for k in &chosen {
            let p = peer_addr(k);
            let shift = share_shift(200, 200 * 201 / 2);
            assert!(pair_kept(&v1, &p, shift) && pair_kept(&v2, &p, shift));
        }
    }

    #[test]
    fn the_pair_hash_is_symmetric_and_fixed() {
        let (a, b) = (node(5), node(9));
        assert_eq!(pair_hash(&a, &b), pair_hash(&b, &a));
        // Fixed across versions and machines: every node must compute it
        // the same. The values are from an independent implementation
        // (Python: FNV-1a 64 over the two IPv4-mapped addresses, the lower
        // first, then splitmix64's finaliser).
        assert_eq!(pair_hash(&a, &b), 0x47fc_b014_9d29_0edc);
        let (c, d): (IpAddr, IpAddr) =
            ("192.0.2.12".parse().unwrap(), "192.0.2.11".parse().unwrap());
        assert_eq!(pair_hash(&c, &d), 0xa279_8e34_c59d_7d2c);
    }

    #[test]
    fn a_budget_of_zero_exports_no_links() {
        let peers = [peer_key(&node(7))];
        let mut choice = LinkChoice::new(0, vec![node(1)]);
        assert!(choice.choose(peers.iter()).is_empty());
        assert_eq!(share_shift(0, 0), 0);
    }
}
