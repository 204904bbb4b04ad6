//! TCP handshakes and PAWS rejects per peer (incident 6).

use std::{
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::Command,
    time::Duration,
};

use serde_json::Value;
use vxtrace_tests::{LabGuard, Watcher, run, sh};

fn tcp(s: &Value, peer: &str, field: &str) -> u64 {
    s["peers"][peer]["tcp"][field].as_u64().unwrap_or(0)
}

fn listen_in(ns: &str, port: u16) -> TcpListener {
    vxtrace::netns::run_in(ns, || Ok(TcpListener::bind(("0.0.0.0", port))?)).unwrap()
}

fn connect_from(ns: &str, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    vxtrace::netns::run_in(ns, || Ok(TcpStream::connect_timeout(&to, timeout))).unwrap()
}

/// The server's SYN-ACKs are dropped by a rule on its node: the client's
/// node sees unanswered SYNs, the server's node sees the SYN-ACK drops.
#[test]
fn dropped_synacks_leave_syns_unanswered() {
    let lab = LabGuard::new("vt-syn", 3, false, 8472);
    let (a, b, c) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(2).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    sh(&[
        "ip",
        "netns",
        "exec",
        &lab.node_ns(2),
        "nft",
        "add table inet vt; add chain inet vt fw { type filter hook forward priority 0 ; }; add rule inet vt fw tcp sport 7777 tcp flags & (syn|ack) == syn|ack drop",
    ]);
    let _blocked = listen_in(&lab.pod_ns(2), 7777);
    let _open = listen_in(&lab.pod_ns(2), 7778);
    let on_a = Watcher::start(&lab.node_ns(1), &["--syn-timeout", "1s"]);
    let on_b = Watcher::start(&lab.node_ns(2), &["--syn-timeout", "1s"]);

    let server = lab.pod_ip(2);
    let failed = connect_from(
        &lab.pod_ns(1),
        (server, 7777).into(),
        Duration::from_millis(2500),
    );
    assert!(failed.is_err(), "the SYN-ACK should have been dropped");
    let ok = connect_from(
        &lab.pod_ns(1),
        (server, 7778).into(),
        Duration::from_secs(2),
    );
    assert!(ok.is_ok(), "{ok:?}");
    // Let the open handshake of the failed attempt expire (1 s) and be seen.
    std::thread::sleep(Duration::from_millis(2500));
    let sa = on_a.stop();
    let sb = on_b.stop();

    assert_eq!(tcp(&sa, &b, "unanswered_syn_out"), 1, "{sa}");
    assert_eq!(tcp(&sa, &b, "unanswered_syn"), 1);
    assert!(tcp(&sa, &b, "syn_retrans") >= 1, "{sa}");
    assert_eq!(
        tcp(&sa, &b, "syn_sent"),
        2 + tcp(&sa, &b, "syn_retrans"),
        "{sa}"
    );
    assert_eq!(tcp(&sa, &b, "synack_received"), 1, "{sa}");
    assert_eq!(sa["peers"][&b]["tcp"]["handshake_us"]["count"], 1, "{sa}");
    assert!(
        sa["peers"][&b]["tcp"]["handshake_us"]["max"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        sa["peers"][&b]["hints"]
            .to_string()
            .contains("SYNs got no SYN-ACK")
    );
    assert_eq!(tcp(&sa, &c, "syn_sent"), 0);

    let dropped = tcp(&sb, &a, "synack_dropped");
    assert!(dropped >= 1, "{sb}");
    assert_eq!(
        sb["peers"][&a]["tcp"]["synack_dropped_reasons"]["NETFILTER_DROP"].as_u64(),
        Some(dropped),
        "{sb}"
    );
    assert_eq!(
        tcp(&sb, &a, "synack_sent"),
        1,
        "only the open port's SYN-ACK leaves: {sb}"
    );
    assert_eq!(tcp(&sb, &a, "unanswered_syn_in"), 1, "{sb}");
    assert!(
        sb["peers"][&a]["hints"]
            .to_string()
            .contains("SYN-ACKs of handshakes")
    );
}

/// An old TCP timestamp injected into a live connection: the server's PAWS
/// check drops it, counted on the right peer, and in the kernel's TcpExt.
#[test]
fn paws_rejects_on_an_established_connection() {
    let lab = LabGuard::new("vt-paws", 3, false, 8472);
    let (a, c) = (
        lab.underlay_ip(1).to_string(),
        lab.underlay_ip(3).to_string(),
    );
    let listener = listen_in(&lab.pod_ns(2), 7779);
    let server_ns = lab.pod_ns(2);
    let scope = format!("self,{server_ns}");
    let on_b = Watcher::start(&lab.node_ns(2), &["--netns", &scope]);
    let paws_before = on_b.attached.clone();
    let _ = paws_before;

    let mut client = connect_from(
        &lab.pod_ns(1),
        (lab.pod_ip(2), 7779).into(),
        Duration::from_secs(2),
    )
    .unwrap();
    let (mut served, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    served.write_all(b"hi").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The timestamp the client's socket sends now (TCP_TIMESTAMP).
    let mut tsval: u32 = 0;
    let mut len = 4u32;
    let rc = unsafe {
        libc::getsockopt(
            client.as_raw_fd(),
            libc::IPPROTO_TCP,
            24,
            &mut tsval as *mut u32 as *mut _,
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    let old = tsval.wrapping_sub(1_000_000);
    let cport = client.local_addr().unwrap().port();
    let script = format!(
        "from scapy.all import IP, TCP, Raw, send\n\
         p = IP(src='{src}', dst='{dst}')/TCP(sport={cport}, dport=7779, flags='PA', seq=12345, ack=1, options=[('NOP', None), ('NOP', None), ('Timestamp', ({old}, 0))])/Raw(b'x')\n\
         send(p, count=5, verbose=0)\n",
        src = lab.pod_ip(1),
        dst = lab.pod_ip(2),
    );
    let (code, _, err) = run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.pod_ns(1),
        "/usr/bin/python3",
        "-c",
        &script,
    ]));
    assert_eq!(code, 0, "scapy: {err}");
    std::thread::sleep(Duration::from_millis(300));
    let sb = on_b.stop();

    assert_eq!(tcp(&sb, &a, "paws_rejects"), 5, "{sb}");
    assert_eq!(tcp(&sb, &c, "paws_rejects"), 0);
    let estab = sb["netstat_paws"]["namespaces"][&server_ns]["PAWSEstab"]
        .as_u64()
        .unwrap_or(0);
    assert!(estab >= 5, "{}", sb["netstat_paws"]);
    assert!(
        sb["peers"][&a]["hints"].to_string().contains("PAWS"),
        "{sb}"
    );
    drop(client);
}
