//! The names of everything in the kernel object that the loader looks up:
//! programs, maps and the load-time global. The kernel crate cannot take an
//! item's name from a constant (a `fn` or `static` name is an identifier),
//! so each definition there carries a comment pointing here, and a test on
//! the built object checks the two agree.

/// Program names: the symbol of each entry point in `vxtrace-ebpf`.
pub mod programs {
    /// TC classifier on the underlay device, ingress: VXLAN from peers.
    pub const NIC_INGRESS: &str = "vxtrace_nic_ingress";
    /// TC classifier on the underlay device, egress: VXLAN to peers.
    pub const NIC_EGRESS: &str = "vxtrace_nic_egress";
    /// TC classifier on a VXLAN device, ingress: frames after decapsulation.
    pub const VXLAN_INGRESS: &str = "vxtrace_vxlan_ingress";
    /// TC classifier on a VXLAN device, egress: frames before encapsulation.
    pub const VXLAN_EGRESS: &str = "vxtrace_vxlan_egress";
    /// BTF-typed tracepoint (`tp_btf`) `kfree_skb`: kernel drops, on
    /// kernels with BTF.
    pub const DROPS_BTF: &str = "vxtrace_kfree_skb_btf";
    /// Raw tracepoint `kfree_skb`: kernel drops, where the BTF-typed one
    /// cannot load.
    pub const DROPS_RAW: &str = "vxtrace_kfree_skb_raw";
    /// Classic tracepoint `skb:kfree_skb`: kernel drops, where the raw
    /// tracepoint cannot attach.
    pub const DROPS_TP: &str = "vxtrace_kfree_skb_tp";
    /// Kprobe at the PAWS check of established sockets.
    pub const PAWS_ESTABLISHED: &str = "vxtrace_paws_established";
    /// Kprobe at the PAWS check of TIME_WAIT sockets.
    pub const PAWS_TIME_WAIT: &str = "vxtrace_paws_time_wait";
    /// A classifier that does nothing: the benchmark's floor.
    pub const EMPTY: &str = "vxtrace_empty";
    /// A raw tracepoint program on `kfree_skb` that does nothing: the
    /// benchmark's floor for the drop program.
    pub const EMPTY_DROPS: &str = "vxtrace_empty_drops";
    /// A BTF-typed tracepoint program on `kfree_skb` that does nothing:
    /// the benchmark's floor for the BTF-typed drop program.
    pub const EMPTY_DROPS_BTF: &str = "vxtrace_empty_drops_btf";

    /// Every program in the object.
    pub const ALL: &[&str] = &[
        NIC_INGRESS,
        NIC_EGRESS,
        VXLAN_INGRESS,
        VXLAN_EGRESS,
        DROPS_BTF,
        DROPS_RAW,
        DROPS_TP,
        PAWS_ESTABLISHED,
        PAWS_TIME_WAIT,
        EMPTY,
        EMPTY_DROPS,
        EMPTY_DROPS_BTF,
    ];
}

/// Map names: the symbol of each `#[map]` static in `vxtrace-ebpf`.
pub mod maps {
    /// Per-peer counters (`PeerStats`), LRU, per CPU; resized by the loader.
    pub const PEERS: &str = "PEERS";
    /// The peers that came first to each slot, with their counters
    /// (`PeerSlot`), per CPU; read beside `PEERS`.
    pub const PEER_SLOTS: &str = "PEER_SLOTS";
    /// Counters that belong to no peer (`GlobalStats`), per CPU.
    pub const GLOBAL: &str = "GLOBAL";
    /// Inner MAC (per VNI) to the peer that owns it; resized by the loader.
    pub const MAC_PEERS: &str = "MAC_PEERS";
    /// The VXLAN device programs' per-CPU memo of MAC owners.
    pub const MAC_MEMO: &str = "MAC_MEMO";
    /// Watched VXLAN devices by ifindex.
    pub const VXLAN_DEVICES: &str = "VXLAN_DEVICES";
    /// Watched VNIs.
    pub const VXLAN_DEVICES_BY_VNI: &str = "VXLAN_DEVICES_BY_VNI";
    /// Inner (pod / VTEP) addresses to the peer that owns them.
    pub const INNER_ADDRS: &str = "INNER_ADDRS";
    /// Pod subnets (LPM trie) to the peer behind them.
    pub const POD_SUBNETS: &str = "POD_SUBNETS";
    /// Kernel drops by (peer, reason, location), per CPU.
    pub const DROPS: &str = "DROPS";
    /// The drop program's direct-mapped counters of the keys that came
    /// first (`DropSlot`), per CPU; read beside `DROPS`.
    pub const DROP_SLOTS: &str = "DROP_SLOTS";
    /// Open TCP handshakes (SYN seen, SYN-ACK not yet).
    pub const HANDSHAKES: &str = "HANDSHAKES";
    /// Ring buffer of completed handshakes' latencies.
    pub const HANDSHAKE_EVENTS: &str = "HANDSHAKE_EVENTS";
    /// Network namespaces whose drops count.
    pub const NETNS_SCOPE: &str = "NETNS_SCOPE";
    /// VXLAN on a port no watched device uses, per peer (`probes/nic.rs`).
    pub const PORT_MISMATCH: &str = "PORT_MISMATCH";
    /// Drops of too-big packets, per peer, with their size (`probes/drops.rs`).
    pub const TOO_BIG: &str = "TOO_BIG";

    /// Every map vxtrace's programs define.
    ///
    /// The object holds one more, [`AYA_LOGS`], which `aya-log-ebpf` defines.
    pub const ALL: &[&str] = &[
        PEERS,
        PEER_SLOTS,
        GLOBAL,
        MAC_PEERS,
        MAC_MEMO,
        VXLAN_DEVICES,
        VXLAN_DEVICES_BY_VNI,
        INNER_ADDRS,
        POD_SUBNETS,
        DROPS,
        DROP_SLOTS,
        HANDSHAKES,
        HANDSHAKE_EVENTS,
        NETNS_SCOPE,
        PORT_MISMATCH,
        TOO_BIG,
    ];

    /// The log ring of `aya-log-ebpf` (its name, not ours): also in the
    /// object, read by `aya-log` in the loader.
    pub const AYA_LOGS: &str = "AYA_LOGS";
}

/// Globals the loader writes before load (`EbpfLoader::override_global`).
pub mod globals {
    /// The load-time configuration (`Config`).
    pub const CONFIG: &str = "CONFIG";

    /// Every global the loader overrides.
    pub const ALL: &[&str] = &[CONFIG];
}

#[cfg(test)]
mod tests {
    use super::{globals, maps, programs};

    fn assert_unique(names: &[&str]) {
        for (i, a) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(a), "{a} is listed more than once");
        }
    }

    #[test]
    fn names_are_unique() {
        assert_unique(programs::ALL);
        assert_unique(maps::ALL);
        assert_unique(globals::ALL);
        assert!(!maps::ALL.contains(&maps::AYA_LOGS));
    }

    #[test]
    fn programs_share_a_prefix() {
        // The benchmark picks vxtrace's programs out of `bpftool prog` by
        // this prefix (tests/src/bin/vxtrace-bench.rs).
        for name in programs::ALL {
            assert!(name.starts_with("vxtrace_"), "{name}");
        }
    }

    #[test]
    fn names_are_identifiers() {
        // They are Rust identifiers in the kernel crate.
        for name in programs::ALL.iter().chain(maps::ALL).chain(globals::ALL) {
            let mut chars = name.chars();
            let first = chars.next().expect("empty name");
            assert!(first.is_ascii_alphabetic() || first == '_', "{name}");
            assert!(
                chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
        }
    }
}
