//! Types shared by the kernel programs (`vxtrace-ebpf`) and the loader (`vxtrace`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`, so a
//! value has the same bytes on both sides and can be a BPF map key or value
//! (`aya::Pod` with the `user` feature). [`names`] spells the programs',
//! maps' and globals' names the loader looks up.
#![no_std]

pub mod names;

/// Most UDP ports the kernel programs recognise as VXLAN at once.
pub const MAX_PORTS: usize = 8;
/// Most local VTEP addresses the kernel programs filter on at once.
pub const MAX_LOCAL_ADDRS: usize = 8;

/// Default size of the per-peer map. Peers are open-ended (a /16 of nodes, or
/// junk traffic to the port), so the map is an LRU and evictions are counted.
pub const DEFAULT_MAX_PEERS: u32 = 16_384;
/// Default size of the map from inner MAC to the peer that owns it.
pub const DEFAULT_MAX_MACS: u32 = 65_536;

/// An underlay peer: its IP address in IPv6 form (IPv4 as `::ffff:a.b.c.d`).
///
/// The all-zero address is never a real peer; it is not used as a key.
///
/// Aligned to 8 bytes: the kernel programs copy and compare keys as two
/// words; at byte alignment every copy would be sixteen byte moves.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    pub addr: [u8; 16],
}

impl PeerKey {
    /// No peer: the all-zero address, which is never a real one. The
    /// programs pass it rather than an `Option<PeerKey>`, whose absent
    /// payload the compiler may move through registers it never wrote,
    /// which the verifier refuses.
    pub const UNKNOWN: Self = Self { addr: [0; 16] };

    /// Whether this is a real peer (not [`PeerKey::UNKNOWN`]).
    #[inline(always)]
    pub fn is_known(&self) -> bool {
        // SAFETY: [u8; 16] and [u64; 2] have the same size and any bits
        // are valid for both; the key is 8-byte aligned.
        let words = unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(self.addr) };
        words[0] | words[1] != 0
    }

    /// An IPv4 address as read from a packet: its four bytes as one
    /// native-order word. Built from words, as the programs copy it.
    #[inline(always)]
    pub fn from_v4_word(word: u32) -> Self {
        // Two 8-byte words, as the programs compare and copy the key: a
        // key stored in 4-byte halves and loaded whole stalls the CPU's
        // store forwarding.
        let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
        let high = if cfg!(target_endian = "little") {
            (word as u64) << 32 | mapped as u64
        } else {
            (mapped as u64) << 32 | word as u64
        };
        // SAFETY: [u64; 2] and [u8; 16] have the same size, and any bytes
        // are a valid [u8; 16].
        let addr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([0, high]) };
        Self { addr }
    }

    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = octets[0];
        addr[13] = octets[1];
        addr[14] = octets[2];
        addr[15] = octets[3];
        Self { addr }
    }

    pub const fn from_v6(addr: [u8; 16]) -> Self {
        Self { addr }
    }

    /// An IPv6 address as read from a packet, as four native-order words.
    #[inline(always)]
    pub fn from_v6_words(words: [u32; 4]) -> Self {
        // SAFETY: as in `from_v4_word`.
        let addr = unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(words) };
        Self { addr }
    }
}

/// Key of the per-peer map: a peer and the CPU that counts into the
/// entry. One entry per (peer, CPU) rather than a per-CPU value: a per-CPU
/// map holds, and hands userspace, a copy of every value for every CPU
/// the kernel could ever bring up (64 on some hosts where 2 run), while
/// these entries exist only for the CPUs that saw the peer. Only that CPU's
/// programs write an entry, so adds need no atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerCpuKey {
    pub peer: PeerKey,
    pub cpu: u32,
    pub _pad: u32,
}

impl PeerCpuKey {
    #[inline(always)]
    pub fn new(peer: PeerKey, cpu: u32) -> Self {
        Self { peer, cpu, _pad: 0 }
    }
}

/// A packets-and-bytes pair.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    #[inline(always)]
    pub fn add(&mut self, packets: u64, bytes: u64) {
        self.packets = self.packets.wrapping_add(packets);
        self.bytes = self.bytes.wrapping_add(bytes);
    }

    #[inline(always)]
    pub fn merge(&mut self, other: &Counter) {
        self.add(other.packets, other.bytes);
    }
}

/// Everything counted per underlay peer, one copy per CPU (summed in userspace).
///
/// Laid out for the packet path: the memo every packet reads, then the
/// four traffic counters (a packet's two programs, on the underlay device
/// and on the VXLAN device, add to two of them) and the size histograms;
/// the rare counters last. A packet's counters share as few cache lines
/// as they can: with many peers, each line of a peer's value is a miss.
/// Userspace reads the fields by name, so the order is free to change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// The kernel programs' per-CPU memo of this peer's last lookups (not
    /// a counter: userspace ignores it).
    pub memo: LookupMemo,
    /// VXLAN packets from the peer, seen arriving at the underlay device.
    pub rx_nic: Counter,
    /// Frames from the peer delivered by the VXLAN device after decapsulation.
    pub rx_decap: Counter,
    /// VXLAN packets sent to the peer, seen leaving the underlay device.
    pub tx_encap: Counter,
    /// Frames the VXLAN device was handed for this peer (before encapsulation):
    /// the gap to `tx_encap` is loss on this host's transmit path.
    pub tx_dev: Counter,
    /// Outer IP packet sizes per direction, by [`SIZE_BUCKET_BOUNDS`]
    /// (packets above 1450 and 1500 bytes, the path-MTU signs, are the
    /// sums of the buckets above those bounds). The received ones first,
    /// next to the counters: an arriving packet adds to the memo's line,
    /// `rx_nic`, `rx_decap` and its size bucket.
    pub rx_size: [u64; SIZE_BUCKETS],
    pub tx_size: [u64; SIZE_BUCKETS],
    /// Packets to or from the VXLAN port that are not valid VXLAN, received.
    pub malformed_rx: u64,
    /// Same, sent.
    pub malformed_tx: u64,
    /// Valid VXLAN from the peer with a VNI no watched device uses.
    pub unknown_vni: u64,
    /// Non-first IPv4 fragments of VXLAN packets cannot be told apart from
    /// other UDP; first fragments are counted here (and as traffic).
    pub tx_fragmented: u64,
    pub rx_fragmented: u64,
    /// Decapsulated frames (seen at the underlay NIC) whose destination MAC
    /// is not this VTEP's: the peer holds a stale neighbour entry for us.
    pub inner_dst_mac_mismatch: u64,
    /// Frames whose inner source address is the peer's own VTEP address
    /// rather than a pod's, on packets the peer forwarded (a TTL below a
    /// host's initial one): the peer masquerades pod traffic. The peer's
    /// own traffic (host network, its ICMP errors) is not counted.
    pub inner_src_vtep: u64,
    /// Inner TCP over the overlay, seen on the VXLAN device: SYNs (no ACK)
    /// and SYN-ACKs sent to / received from the peer's pods.
    pub syn_sent: u64,
    pub syn_received: u64,
    pub synack_sent: u64,
    pub synack_received: u64,
    pub rst_sent: u64,
    pub rst_received: u64,
    /// A SYN for a handshake that was already open (a retransmission).
    pub syn_retrans: u64,
    /// Flooded copies sent to the peer: broadcast, multicast and unknown
    /// unicast that a layer-2 device replicates to every VTEP of its flood
    /// list (or its group / default remote). Not counted in `tx_encap`:
    /// nobody answers them, so they say nothing about loss.
    pub tx_flood: Counter,
}

/// One slot of a CPU's row of direct-mapped peer counters: the first peer
/// whose address lands in a slot on a CPU keeps it for the whole run, so
/// the packets of a node's busiest peers find their counters with an
/// inlined hash and an array index instead of a hash-map lookup. Peers
/// whose slot is taken are counted in the peer map, which also lists
/// every peer (a peer taking a slot is entered there too).
///
/// `taken` comes first and `peer` right after it: the programs write the
/// peer, then `taken`, then counts, and userspace copies a slot from its
/// first byte, so a slot it reads as taken always comes with its whole
/// peer, and counts it reads belong to that peer. Both sit in front of the
/// memo and the traffic counters, so a packet's reads and adds fall in as
/// few cache lines as they can.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSlot {
    /// Non-zero once a peer holds the slot.
    pub taken: u64,
    pub peer: PeerKey,
    pub stats: PeerStats,
}

/// log2 of the peer slots per CPU.
pub const PEER_SLOT_BITS: u32 = 6;
/// Peer slots per CPU (about 460 bytes each).
pub const PEER_SLOTS: u32 = 1 << PEER_SLOT_BITS;

/// Index of `slot` in CPU `cpu`'s row of a slot map (`PEER_SLOTS`,
/// `DROP_SLOTS`): a plain array of one row of `1 << bits` slots per CPU,
/// sized by the loader for the CPUs online when it loads. A per-CPU array
/// would hold, and hand userspace on every read, a row for every CPU the
/// kernel could bring up (64 on some hosts where 2 run). Only CPU `cpu`'s
/// programs write its row, so the adds need no atomics; a CPU beyond the
/// rows (brought up later) finds no slot and counts in the map behind.
#[inline(always)]
pub const fn slot_index(cpu: u32, slot: u32, bits: u32) -> u32 {
    (cpu << bits) | slot
}

impl PeerKey {
    /// The peer's slot among [`PEER_SLOTS`]: a multiplicative hash of the
    /// address's two words (the product's top bits depend on every bit).
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        // SAFETY: [u8; 16] and [u64; 2] have the same size, any bytes are
        // valid words, and the key is 8-byte aligned.
        let w = unsafe { &*(self as *const PeerKey as *const [u64; 2]) };
        let mixed = w[0].rotate_left(29) ^ w[1];
        (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - PEER_SLOT_BITS)) as u32
    }
}

/// What the last map lookups for a peer's packets found, kept in the
/// peer's own per-CPU value: a peer's packets mostly repeat the same VNI,
/// inner source MAC (flannel: the peer's VTEP MAC) and inner source address,
/// so most packets need no lookup beyond the peer's own. The memo is
/// dropped every [`MEMO_RECHECK`] packets, so map changes (a device
/// re-registered, a MAC learned by another peer, an LRU eviction) are seen
/// within that many packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupMemo {
    /// Inner source address last checked (`MEMO_INNER`), and whether it is
    /// the peer's own VTEP address (`MEMO_INNER_VTEP`).
    pub inner_src: PeerKey,
    /// Packets that used the memo since it was last checked.
    pub uses: u32,
    /// `MEMO_*` bits: which parts below are valid.
    pub state: u32,
    pub vni: u32,
    /// The VNI's entry in the VNI map (when `MEMO_VNI_KNOWN`).
    pub vni_check_dst_mac: u32,
    pub vni_mac: [u8; 6],
    /// Inner source MAC known to map to this peer on `vni` (`MEMO_MAC`).
    pub mac: [u8; 6],
    /// Inner destination MAC of a packet sent to this peer that the MAC
    /// map says lives behind it: a unicast copy (`MEMO_TX_MAC`).
    pub tx_dst_mac: [u8; 6],
    /// The VNI's device floods (`VniInfo::floods`, when `MEMO_VNI_KNOWN`).
    pub vni_floods: u8,
    pub _pad: u8,
    /// Not part of the memo: which insertion into the peer map created
    /// this entry (the CPU's `GlobalStats::peers_inserted` right after
    /// it; 0 in slots and in entries that only list a slot's peer).
    /// Userspace tells an entry evicted and created again between two of
    /// its reads from one that kept counting by this, not by its counts:
    /// a new entry may have counted past what the old one held. It sits
    /// here, in the padding, because every field after the memo is a
    /// counter.
    pub born: u32,
}

pub const MEMO_VNI: u32 = 1;
pub const MEMO_VNI_KNOWN: u32 = 2;
pub const MEMO_MAC: u32 = 4;
pub const MEMO_INNER: u32 = 8;
pub const MEMO_INNER_VTEP: u32 = 16;
pub const MEMO_TX_MAC: u32 = 32;
/// Packets between checks of the memo against the maps (a power of two).
pub const MEMO_RECHECK: u32 = 64;

/// Upper bounds (inclusive, bytes of outer IP packet) of the size buckets;
/// the last bucket holds everything larger.
pub const SIZE_BUCKET_BOUNDS: [u32; SIZE_BUCKETS - 1] = [
    128, 256, 512, 1024, 1280, 1400, 1450, 1500, 2000, 4000, 9000,
];
pub const SIZE_BUCKETS: usize = 12;

/// Packets of a size histogram larger than `bound`, which must be one of
/// [`SIZE_BUCKET_BOUNDS`] (1450 and 1500 are).
pub fn packets_over(sizes: &[u64; SIZE_BUCKETS], bound: u32) -> u64 {
    let first = SIZE_BUCKET_BOUNDS
        .iter()
        .position(|b| *b == bound)
        .map_or(SIZE_BUCKETS, |i| i + 1);
    sizes[first..].iter().sum()
}

/// The size bucket of an outer IP packet of `len` bytes.
#[inline(always)]
pub fn size_bucket(len: u32) -> usize {
    let mut i = 0;
    while i < SIZE_BUCKETS - 1 {
        if len <= SIZE_BUCKET_BOUNDS[i] {
            return i;
        }
        i += 1;
    }
    SIZE_BUCKETS - 1
}

/// Host-wide counters that belong to no peer, one copy per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// New keys the kernel programs inserted into the peer map; minus the
    /// entries still present, this is how many the LRU evicted.
    pub peers_inserted: u64,
    /// Insertions into the peer map that failed (map full of in-flight entries).
    pub peer_insert_failed: u64,
    /// Decapsulated frames whose source MAC maps to no known peer.
    pub rx_decap_unattributed: Counter,
    /// Frames handed to the VXLAN device whose destination MAC maps to no
    /// peer (broadcast, multicast, or no FDB entry).
    pub tx_dev_unattributed: Counter,
    /// New keys inserted into the drop map (minus entries present = evicted).
    pub drop_keys_inserted: u64,
    /// Drops seen by the drop program in scope (before attribution).
    pub drops_seen: u64,
    /// Drops outside the namespace scope (not counted).
    pub drops_out_of_scope: u64,
    /// Handshake-latency events the ring buffer had no room for.
    pub handshake_events_lost: u64,
    /// The drop program's per-CPU memo (not a counter: userspace ignores
    /// it). It lives here because every drop adds to `drops_seen` anyway:
    /// one map element for both, one lookup and fewer cache lines a drop.
    pub drop_memo: DropMemo,
}

/// Key of the map from an inner MAC address to the peer that owns it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub vni: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

impl MacKey {
    pub const fn new(vni: u32, mac: [u8; 6]) -> Self {
        Self {
            vni,
            mac,
            _pad: [0; 2],
        }
    }
}

/// One slot of the VXLAN device programs' per-CPU memo of recent
/// (device, MAC) -> peer answers: a frame on a VXLAN device needs two
/// lookups (the device, then the MAC's owner) before the peer's counters,
/// and a device's frames mostly repeat a few MACs (flannel: one per peer).
/// Slots are dropped every [`MEMO_RECHECK`] uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacMemo {
    pub ifindex: u32,
    pub uses: u32,
    pub mac: [u8; 6],
    /// 1 when the slot holds an answer.
    pub valid: u8,
    pub _pad: u8,
    pub peer: PeerKey,
}

/// Slots of the MAC memo per CPU (a power of two; indexed by the MAC's
/// last bytes).
pub const MAC_MEMO_SLOTS: u32 = 16;

impl MacMemo {
    /// The slot `mac` is remembered in.
    #[inline(always)]
    pub fn slot(mac: &[u8; 6]) -> u32 {
        (mac[5] as u32 ^ mac[4] as u32) & (MAC_MEMO_SLOTS - 1)
    }
}

/// Value of the map from inner MAC to peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacPeer {
    pub peer: PeerKey,
    /// Where the entry came from: [`MAC_SOURCE_LEARNED`] or [`MAC_SOURCE_FDB`].
    pub source: u32,
    pub _pad: u32,
}

/// The NIC program saw this MAC as the inner source of the peer's packets.
pub const MAC_SOURCE_LEARNED: u32 = 1;
/// The loader read this MAC from the VXLAN device's forwarding database.
pub const MAC_SOURCE_FDB: u32 = 2;

/// A watched VXLAN device, keyed by ifindex in the device map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VxlanDevice {
    pub vni: u32,
    /// `VxlanDevice::*` bits.
    pub flags: u32,
}

impl VxlanDevice {
    /// A metadata (`external`, collect_metadata) device: each packet's
    /// remote and VNI travel in the skb's tunnel metadata, not in an FDB,
    /// and `vni` is 0.
    pub const METADATA: u32 = 1;
}

/// A watched VNI (value of the VNI map, keyed by VNI).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VniInfo {
    pub ifindex: u32,
    /// 1 when decapsulated frames must be addressed to `mac` (a routed,
    /// flannel-style device); 0 for a device bridged to others.
    pub check_dst_mac: u32,
    /// The VXLAN device's own MAC.
    pub mac: [u8; 6],
    /// 1 when the device replicates frames to several VTEPs (a flood list,
    /// a group or a default remote, or learning): a copy whose inner
    /// destination MAC does not live behind the copy's VTEP is flooded.
    pub floods: u8,
    pub _pad: u8,
}

/// Value of the inner-address map: which peer an inner (pod / VTEP) address
/// belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InnerAddr {
    pub peer: PeerKey,
    /// [`INNER_LEARNED`] or [`INNER_VTEP`].
    pub kind: u32,
    pub _pad: u32,
}

/// Seen as the inner source of the peer's packets.
pub const INNER_LEARNED: u32 = 1;
/// The peer's VTEP address (from the VXLAN device's neighbour entries).
pub const INNER_VTEP: u32 = 2;

/// Key of the drop map: one per (peer, reason, kernel location). The zero
/// peer holds drops that belong to no peer ("other").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DropKey {
    pub peer: PeerKey,
    pub reason: u32,
    /// [`DROP_KIND_PACKET`], [`DROP_KIND_SYNACK`] or [`DROP_KIND_OUTER`].
    pub kind: u32,
    pub location: u64,
}

impl DropKey {
    /// The key's slot among [`DROP_SLOTS`]: a multiplicative hash of its
    /// four words, so the slots of a storm's few keys rarely collide.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        // SAFETY: DropKey is 32 bytes of integers without padding (16 +
        // 4 + 4 + 8), aligned to 8: it is exactly four u64 words.
        let w = unsafe { &*(self as *const DropKey as *const [u64; 4]) };
        let mixed = w[0] ^ w[1].rotate_left(21) ^ w[2].rotate_left(42) ^ w[3];
        (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - DROP_SLOT_BITS)) as u32
    }
}

/// One slot of a CPU's row of the drop program's direct-mapped counters: the
/// first key that lands in a slot on a CPU keeps it for the whole run
/// (a slot is free while its count is 0), so a storm of one kind of drop
/// adds to a slot instead of updating the hash map. Keys whose slot is
/// taken go to the drop map.
///
/// `count` comes first: the program writes the key before the count, and
/// userspace copies a slot from its first byte, so a count it reads as
/// non-zero always comes with its whole key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSlot {
    pub count: u64,
    pub key: DropKey,
}

// `DropKey::slot` reads a key as four words.
const _: () = assert!(core::mem::size_of::<DropKey>() == 32);

/// log2 of the drop slots per CPU.
pub const DROP_SLOT_BITS: u32 = 6;
/// Drop slots per CPU (40 bytes each).
pub const DROP_SLOTS: u32 = 1 << DROP_SLOT_BITS;

/// The drop program's per-CPU memo of its last answers: drops come in
/// runs (a firewall rule dropping a flow, a storm), and a run repeats the
/// device and the addresses, so most drops need no map lookup to find
/// their namespace and peer. Rechecked every [`MEMO_RECHECK`] uses, like
/// the peers' memo.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropMemo {
    /// The last device (kernel address) whose namespace was looked up,
    /// and whether its drops count; `dev_uses` counts uses since.
    pub dev: u64,
    pub dev_in_scope: u32,
    pub dev_uses: u32,
    /// The last (source, destination) attributed, its peer, and whether
    /// one was found (`DROP_MEMO_*`).
    pub src: PeerKey,
    pub dst: PeerKey,
    pub peer: PeerKey,
    pub attr_state: u32,
    pub attr_uses: u32,
}

/// `DropMemo::attr_state`: nothing memoized.
pub const DROP_MEMO_EMPTY: u32 = 0;
/// The addresses belong to `DropMemo::peer`.
pub const DROP_MEMO_PEER: u32 = 1;
/// The addresses belong to no peer.
pub const DROP_MEMO_NO_PEER: u32 = 2;

/// Any dropped packet.
pub const DROP_KIND_PACKET: u32 = 0;
/// A dropped TCP SYN-ACK (a handshake that cannot complete).
pub const DROP_KIND_SYNACK: u32 = 1;
/// An outer VXLAN packet (to or from a VXLAN port, the watched ones or
/// another well-known one): its drop is the tunnel's, not a pod's.
pub const DROP_KIND_OUTER: u32 = 2;
/// An inner packet sent to a broadcast or multicast address (Ethernet or
/// IP): a host that does not want it drops it, which loses nothing (a
/// subnet broadcast reaching a bridge without an address, say).
pub const DROP_KIND_GROUP: u32 = 3;

/// Key of the port-mismatch map: VXLAN-shaped packets on a VXLAN port no
/// watched device uses, per peer, port and direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub peer: PeerKey,
    /// The UDP destination port, host order.
    pub port: u16,
    /// [`DIR_RX`] or [`DIR_TX`].
    pub dir: u16,
    pub _pad: u32,
}

/// From the peer.
pub const DIR_RX: u16 = 0;
/// To the peer.
pub const DIR_TX: u16 = 1;

/// Packets of a peer's traffic dropped for being too big (PKT_TOO_BIG),
/// and the largest of them (bytes of the packet as dropped).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TooBig {
    pub count: u64,
    pub max_len: u64,
}

/// An open TCP handshake: client and server address and port (inner).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: PeerKey,
    pub server: PeerKey,
    pub client_port: u16,
    pub server_port: u16,
    pub _pad: u32,
}

impl FlowKey {
    /// The handshake of `client` (address, port) with `server`.
    #[inline(always)]
    pub const fn new(client: PeerKey, client_port: u16, server: PeerKey, server_port: u16) -> Self {
        Self {
            client,
            server,
            client_port,
            server_port,
            _pad: 0,
        }
    }
}

/// Value of the open-handshake map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handshake {
    /// bpf_ktime_get_ns() of the first SYN (CLOCK_MONOTONIC).
    pub first_syn_ns: u64,
    pub peer: PeerKey,
    /// [`HANDSHAKE_OUT`]: a local client's SYN to the peer; [`HANDSHAKE_IN`]:
    /// the peer's SYN to a local server.
    pub direction: u32,
    /// Set by the loader once it has counted the handshake as unanswered,
    /// so retransmitted SYNs of the same attempt are not counted again.
    pub reported: u32,
}

pub const HANDSHAKE_OUT: u32 = 0;
pub const HANDSHAKE_IN: u32 = 1;

/// A completed handshake (SYN -> SYN-ACK), sent to userspace per connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandshakeEvent {
    pub peer: PeerKey,
    pub latency_ns: u64,
    pub direction: u32,
    pub _pad: u32,
}

/// The tracepoint has no reason field (kernels before 5.17).
pub const REASON_UNKNOWN: u32 = u32::MAX;
/// Reasons the PAWS kprobes record on kernels that lack the RFC 7323 drop
/// reasons; shown under the names newer kernels use.
pub const REASON_KPROBE_PAWS: u32 = 0xfffe_0001;
pub const REASON_KPROBE_TW_PAWS: u32 = 0xfffe_0002;
/// An offset that the running kernel does not have.
pub const NO_FIELD: u32 = u32::MAX;

/// Kernel struct offsets, resolved from the running kernel's BTF at load
/// time, and the classic tracepoint's field offsets from tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 when the struct offsets below are valid (BTF was available).
    pub valid: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    /// `sk_buff.mac_header`: a dropped inner packet's Ethernet destination
    /// tells broadcast and multicast (nobody's loss) from unicast.
    pub skb_mac_header: u32,
    pub skb_protocol: u32,
    pub skb_dev: u32,
    pub skb_sk: u32,
    /// `sk_buff.len`: the size of a packet dropped as too big.
    pub skb_len: u32,
    pub dev_nd_net: u32,
    pub net_ns_inum: u32,
    pub sk_net: u32,
    /// Field offsets in the classic `skb:kfree_skb` tracepoint record.
    pub tp_skbaddr: u32,
    pub tp_location: u32,
    pub tp_reason: u32,
    /// The receiving socket (`rx_sk`, kernels >= 6.10): the namespace of
    /// a drop at socket level, where the skb has neither device nor socket.
    pub tp_rx_sk: u32,
    /// For the PAWS kprobes (kernels without PAWS drop reasons):
    /// `tcp_sock.rx_opt.ts_recent`, `.ts_recent_stamp`, and the TIME_WAIT
    /// socket's `tw_ts_recent`, `tw_ts_recent_stamp`.
    pub tcp_ts_recent: u32,
    pub tcp_ts_recent_stamp: u32,
    pub tw_ts_recent: u32,
    pub tw_ts_recent_stamp: u32,
    pub _pad: u32,
}

impl KernelOffsets {
    pub const fn none() -> Self {
        Self {
            valid: 0,
            skb_head: NO_FIELD,
            skb_network_header: NO_FIELD,
            skb_mac_header: NO_FIELD,
            skb_protocol: NO_FIELD,
            skb_dev: NO_FIELD,
            skb_sk: NO_FIELD,
            skb_len: NO_FIELD,
            dev_nd_net: NO_FIELD,
            net_ns_inum: NO_FIELD,
            sk_net: NO_FIELD,
            tp_skbaddr: NO_FIELD,
            tp_location: NO_FIELD,
            tp_reason: NO_FIELD,
            tp_rx_sk: NO_FIELD,
            tcp_ts_recent: NO_FIELD,
            tcp_ts_recent_stamp: NO_FIELD,
            tw_ts_recent: NO_FIELD,
            tw_ts_recent_stamp: NO_FIELD,
            _pad: 0,
        }
    }
}

/// Load-time configuration, written into the object before it is loaded.
///
/// The fields every packet on the underlay device reads come first, in as
/// few cache lines as they fit: at a few tens of thousands of packets a
/// second the lines are cold again by the next packet, and each one the
/// TC programs touch costs a miss. The drop program's fields come last,
/// together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// UDP destination ports that carry VXLAN, in host byte order; 0 = unused.
    pub ports: [u16; MAX_PORTS],
    /// Bit i set: `ports[i]` is a well-known VXLAN port no watched device
    /// uses; VXLAN-shaped packets to it are a port mismatch, not traffic.
    pub foreign_ports: u32,
    pub local_addr_count: u32,
    /// Bits of the first 32-bit word of the VXLAN header that may be set
    /// (network order read as big-endian): the I flag, plus GBP/RCO bits when
    /// a watched device uses those extensions. Mirrors the kernel's own check.
    pub allowed_flags: u32,
    /// Count packets whose VNI is in the device map only; otherwise any VNI
    /// is traffic. 1 = filter, 0 = no filter.
    pub filter_vni: u32,
    /// Local VTEP addresses; only packets from/to them are counted, unless
    /// `local_addr_count` is 0 (a device without `local`: any address).
    pub local_addrs: [PeerKey; MAX_LOCAL_ADDRS],
    /// This kernel's number of the PKT_TOO_BIG drop reason (0: none; 0 is
    /// no drop reason on any kernel), whose drops have their size recorded.
    pub reason_too_big: u32,
    /// 1: count drops of every network namespace; 0: only those in the
    /// namespace-scope map.
    pub netns_scope_all: u32,
    /// 1 when the raw tracepoint passes the drop reason as its third argument.
    pub raw_tp_has_reason: u32,
    /// 1 when it passes the receiving socket as its fourth.
    pub raw_tp_has_rx_sk: u32,
    /// The skb fields every drop reads lead the offsets, so with the four
    /// fields above they share a line.
    pub offsets: KernelOffsets,
}

/// The I flag: "a valid VNI is present" (RFC 7348).
pub const VXLAN_FLAG_I: u32 = 0x0800_0000;

impl Config {
    pub const fn empty() -> Self {
        Self {
            ports: [0; MAX_PORTS],
            foreign_ports: 0,
            local_addr_count: 0,
            allowed_flags: VXLAN_FLAG_I,
            filter_vni: 0,
            local_addrs: [PeerKey { addr: [0; 16] }; MAX_LOCAL_ADDRS],
            reason_too_big: 0,
            netns_scope_all: 1,
            raw_tp_has_reason: 1,
            raw_tp_has_rx_sk: 0,
            offsets: KernelOffsets::none(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::empty()
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    // SAFETY: all of these are #[repr(C)], made of integers and arrays of
    // integers, with padding spelled out as fields: every bit pattern is valid.
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for PeerCpuKey {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for PeerStats {}
    unsafe impl aya::Pod for GlobalStats {}
    unsafe impl aya::Pod for MacKey {}
    unsafe impl aya::Pod for MacPeer {}
    unsafe impl aya::Pod for MacMemo {}
    unsafe impl aya::Pod for VxlanDevice {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for VniInfo {}
    unsafe impl aya::Pod for InnerAddr {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for DropSlot {}
    unsafe impl aya::Pod for PeerSlot {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Handshake {}
    unsafe impl aya::Pod for HandshakeEvent {}
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for TooBig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// An address read from a packet as a word is the same key as one
    /// built from its octets.
    #[test]
    fn v4_keys_from_words_and_octets_agree() {
        let octets = [192, 0, 2, 17];
        assert_eq!(
            PeerKey::from_v4_word(u32::from_ne_bytes(octets)),
            PeerKey::from_v4(octets)
        );
    }

    /// Peers of one subnet land in spread slots.
    #[test]
    fn peer_slots_spread_a_subnet() {
        let mut used = [false; PEER_SLOTS as usize];
        for host in 1..=32u8 {
            used[PeerKey::from_v4([10, 0, 0, host]).slot() as usize] = true;
        }
        assert!(used.iter().filter(|u| **u).count() >= 20);
    }

    /// Keys that differ in any word land in spread slots, and a key's slot
    /// is within the slots.
    #[test]
    fn drop_slots_spread_keys() {
        let mut used = [false; DROP_SLOTS as usize];
        for reason in 0..16u32 {
            let key = DropKey {
                peer: PeerKey::from_v4([10, 0, 0, 1]),
                reason,
                kind: DROP_KIND_PACKET,
                location: 0xffff_ffff_8100_0000,
            };
            used[key.slot() as usize] = true;
        }
        // 16 keys into 64 slots: a hash that ignored the reason would use 1.
        assert!(used.iter().filter(|u| **u).count() >= 10);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PeerKey>(), 16);
        assert_eq!(size_of::<Counter>(), 16);
        assert_eq!(
            size_of::<PeerStats>(),
            5 * 16 + 14 * 8 + 2 * SIZE_BUCKETS * 8 + size_of::<LookupMemo>()
        );
        assert_eq!(size_of::<LookupMemo>(), 56);
        assert_eq!(size_of::<MacMemo>(), 32);
        assert_eq!(
            size_of::<GlobalStats>(),
            6 * 8 + 2 * 16 + size_of::<DropMemo>()
        );
        assert_eq!(size_of::<DropMemo>(), 72);
        assert_eq!(size_of::<MacKey>(), 12);
        assert_eq!(size_of::<MacPeer>(), 24);
        assert_eq!(size_of::<KernelOffsets>(), 20 * 4);
        assert_eq!(size_of::<PortKey>(), 24);
        assert_eq!(size_of::<TooBig>(), 16);
        assert_eq!(size_of::<DropKey>(), 32);
        assert_eq!(size_of::<DropSlot>(), 8 + 32);
        assert_eq!(size_of::<PeerSlot>(), size_of::<PeerStats>() + 8 + 16);
        assert_eq!(size_of::<VniInfo>(), 16);
        assert_eq!(size_of::<VxlanDevice>(), 8);
        assert_eq!(size_of::<InnerAddr>(), 24);
        assert_eq!(
            size_of::<Config>(),
            2 * MAX_PORTS + 8 + 16 * MAX_LOCAL_ADDRS + 4 * 4 + 20 * 4 + 8
        );
    }

    #[test]
    fn size_buckets() {
        assert_eq!(size_bucket(60), 0);
        assert_eq!(size_bucket(128), 0);
        assert_eq!(size_bucket(129), 1);
        assert_eq!(size_bucket(1450), 6);
        assert_eq!(size_bucket(1451), 7);
        assert_eq!(size_bucket(1500), 7);
        assert_eq!(size_bucket(65535), SIZE_BUCKETS - 1);
    }

    #[test]
    fn packets_over_a_bound() {
        let mut sizes = [0u64; SIZE_BUCKETS];
        sizes[size_bucket(1450)] = 1;
        sizes[size_bucket(1451)] = 10;
        sizes[size_bucket(1500)] += 100;
        sizes[size_bucket(1501)] = 1000;
        sizes[size_bucket(9001)] = 10000;
        assert_eq!(packets_over(&sizes, 1450), 11110);
        assert_eq!(packets_over(&sizes, 1500), 11000);
    }

    #[test]
    fn v4_is_mapped() {
        let k = PeerKey::from_v4([192, 0, 2, 1]);
        assert_eq!(&k.addr[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&k.addr[12..], &[192, 0, 2, 1]);
    }
}

/// Every field of [`PeerStats`] after `memo` is a `u64` counter (or an
/// array or pair of them), so userspace can do arithmetic on the counters
/// as one array instead of listing the fields again.
pub const PEER_COUNTER_WORDS: usize =
    (core::mem::size_of::<PeerStats>() - core::mem::size_of::<LookupMemo>()) / 8;
const _: () = assert!(core::mem::offset_of!(PeerStats, memo) == 0);
const _: () = assert!(core::mem::size_of::<LookupMemo>().is_multiple_of(8));

impl PeerStats {
    /// The counters as words (everything but the memo).
    pub fn counter_words(&self) -> &[u64; PEER_COUNTER_WORDS] {
        // SAFETY: PeerStats is #[repr(C)], 8-byte aligned, the memo comes
        // first and is a multiple of 8 bytes, and the fields after it are
        // u64s with no padding between them
        // (`layouts_have_no_implicit_padding`), so they are exactly this
        // array; the borrow keeps `self` alive and unaliased.
        unsafe {
            &*((self as *const PeerStats as *const u8).add(size_of::<LookupMemo>())
                as *const [u64; PEER_COUNTER_WORDS])
        }
    }

    pub fn counter_words_mut(&mut self) -> &mut [u64; PEER_COUNTER_WORDS] {
        // SAFETY: as in `counter_words`; the mutable borrow is exclusive,
        // and any bit pattern is a valid u64.
        unsafe {
            &mut *((self as *mut PeerStats as *mut u8).add(size_of::<LookupMemo>())
                as *mut [u64; PEER_COUNTER_WORDS])
        }
    }

    /// Adds every counter of `o` to `self`.
    pub fn merge(&mut self, o: &PeerStats) {
        for (a, b) in self.counter_words_mut().iter_mut().zip(o.counter_words()) {
            *a = a.wrapping_add(*b);
        }
    }

    /// Sets every counter to zero (the memo is left as it is).
    pub fn clear_counters(&mut self) {
        self.counter_words_mut().fill(0);
    }

    /// True when every counter is zero (the memo does not count).
    pub fn is_zero(&self) -> bool {
        self.counter_words().iter().all(|w| *w == 0)
    }
}

impl GlobalStats {
    pub fn merge(&mut self, o: &GlobalStats) {
        self.peers_inserted = self.peers_inserted.wrapping_add(o.peers_inserted);
        self.peer_insert_failed = self.peer_insert_failed.wrapping_add(o.peer_insert_failed);
        self.rx_decap_unattributed.merge(&o.rx_decap_unattributed);
        self.tx_dev_unattributed.merge(&o.tx_dev_unattributed);
        self.drop_keys_inserted = self.drop_keys_inserted.wrapping_add(o.drop_keys_inserted);
        self.drops_seen = self.drops_seen.wrapping_add(o.drops_seen);
        self.drops_out_of_scope = self.drops_out_of_scope.wrapping_add(o.drops_out_of_scope);
        self.handshake_events_lost = self
            .handshake_events_lost
            .wrapping_add(o.handshake_events_lost);
    }
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn merge_and_counter_words() {
        let mut a = PeerStats::default();
        a.tx_encap.add(3, 300);
        a.malformed_rx = 2;
        let mut b = a;
        b.merge(&a);
        assert_eq!(
            b.tx_encap,
            Counter {
                packets: 6,
                bytes: 600
            }
        );
        assert_eq!(b.malformed_rx, 4);
        // The first and last counters after the memo are in the words,
        // the memo is not.
        let mut c = PeerStats::default();
        c.rx_nic.packets = 1;
        c.tx_flood.bytes = 1;
        assert_eq!(c.counter_words()[0], 1);
        assert_eq!(c.counter_words()[PEER_COUNTER_WORDS - 1], 1);
        c.rx_nic.packets = 0;
        c.tx_flood.bytes = 0;
        c.memo.uses = 5;
        assert!(c.is_zero());
    }
}
