//! Crafted packets to the VXLAN port over the real lab underlay: what is not
//! VXLAN is counted as malformed against its sender and changes nothing else.

use std::{net::UdpSocket, time::Duration};

use vxtrace_tests::{LabGuard, Watcher, json, peer_names};

#[test]
fn crafted_bad_packets_are_malformed_only() {
    let lab = LabGuard::new("vt-bad", 2, false, 8472);
    let (a, b) = (lab.underlay_ip(1), lab.underlay_ip(2));
    let on_a = Watcher::start(&lab.node_ns(1), &[]);
    let on_b = Watcher::start(&lab.node_ns(2), &[]);

    // From node A's own namespace (its underlay address) to B's VXLAN port.
    let bad: Vec<Vec<u8>> = vec![
        vec![0x08, 0, 0],                                       // short header
        [vec![0u8; 8], vec![0x11; 60]].concat(),                // I flag clear
        vec![0xff; 64],                                         // garbage
        [vec![0x08, 0, 0, 0, 0, 0, 1, 0], vec![0; 5]].concat(), // truncated inner frame
    ];
    let per_kind = 5;
    vxtrace::netns::run_in(&lab.node_ns(1), || {
        let s = UdpSocket::bind((a, 0))?;
        for _ in 0..per_kind {
            for p in &bad {
                s.send_to(p, (b, 8472))?;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // The same bytes to a port that is not VXLAN: not counted at all.
        for p in &bad {
            s.send_to(p, (b, 9999))?;
        }
        Ok(())
    })
    .unwrap();
    // Real traffic still counts exactly.
    assert_eq!(lab.ping(1, 2, 25, Duration::ZERO).unwrap(), 25);

    let sa = on_a.stop();
    let sb = on_b.stop();
    let n = per_kind * bad.len() as u64;
    let (a, b) = (a.to_string(), b.to_string());
    let b_a = sb.peer(&a);
    assert_eq!(b_a.counters.malformed_rx, n, "{}", json(&sb));
    assert_eq!(b_a.counters.malformed, n);
    assert_eq!(b_a.counters.rx_nic.packets, 25, "{}", json(&sb));
    assert_eq!(b_a.counters.rx_decap.packets, 25, "{}", json(&sb));
    assert_eq!(b_a.counters.tx_encap.packets, 25, "{}", json(&sb));
    assert_eq!(b_a.counters.unknown_vni, 0);
    assert_eq!(peer_names(&sb), vec![a.clone()]);
    let hints = b_a.hints.join("\n");
    assert!(hints.contains("not valid VXLAN"), "{hints}");
    // The sender's side sees the same packets leave.
    let a_b = sa.peer(&b).counters;
    assert_eq!(a_b.malformed_tx, n, "{}", json(&sa));
    assert_eq!(a_b.tx_encap.packets, 25, "{}", json(&sa));
    assert_eq!(a_b.rx_decap.packets, 25, "{}", json(&sa));
}

/// A VXLAN packet whose VNI the receiver does not have.
#[test]
fn foreign_vni_is_counted_as_unknown() {
    let lab = LabGuard::new("vt-vni", 2, false, 8472);
    let (a, b) = (lab.underlay_ip(1), lab.underlay_ip(2));
    let on_b = Watcher::start(&lab.node_ns(2), &[]);
    let mut frame = vec![0x08, 0, 0, 0, 0, 0, 7, 0]; // VNI 7
    frame.extend_from_slice(&[
        0x0e, 0x76, 0x78, 0, 0, 2, 0x0e, 0x76, 0x78, 0, 0, 1, 0x08, 0x00,
    ]);
    frame.extend_from_slice(&[0u8; 28]);
    vxtrace::netns::run_in(&lab.node_ns(1), || {
        let s = UdpSocket::bind((a, 0))?;
        for _ in 0..9 {
            s.send_to(&frame, (b, 8472))?;
        }
        Ok(())
    })
    .unwrap();
    let sb = on_b.stop();
    let a = a.to_string();
    let b_a = sb.peer(&a).counters;
    assert_eq!(b_a.unknown_vni, 9, "{}", json(&sb));
    assert_eq!(b_a.rx_nic.packets, 0);
    assert_eq!(b_a.malformed, 0);
}
