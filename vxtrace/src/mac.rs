//! MAC addresses as vxtrace writes and judges them: a leaf module that
//! discovery, the schema and the checks all use.

/// `0e:76:78:00:00:01`: lower-case hex bytes joined by colons.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// True for the all-zeros MAC of a default (flood) FDB entry, and for
/// multicast/broadcast MACs, which belong to no single peer.
pub fn is_group_mac(mac: &[u8; 6]) -> bool {
    *mac == [0; 6] || mac[0] & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_macs() {
        assert!(is_group_mac(&[0; 6]));
        assert!(is_group_mac(&[0xff; 6]));
        assert!(is_group_mac(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert!(!is_group_mac(&[0x0e, 0x76, 0x78, 0, 0, 1]));
    }
}
