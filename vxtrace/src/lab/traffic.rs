//! Traffic between a lab's pods: ICMP and ICMPv6 echoes on raw sockets,
//! UDP datagrams to a receiver, from inside the pods' namespaces.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::Lab;
use crate::netns;

impl Lab {
    /// ICMP echoes from pod `from` to pod `to`, one at a time; returns the
    /// number of replies.
    pub fn ping(&self, from: u8, to: u8, count: u32, gap: Duration) -> Result<u32> {
        ping_from(&self.pod_ns(from), self.pod_ip(to), count, gap)
    }

    /// ICMPv6 echoes from pod `from` to pod `to`'s IPv6 address
    /// (dual-stack), one at a time; returns the number of replies.
    pub fn ping6(&self, from: u8, to: u8, count: u32, gap: Duration) -> Result<u32> {
        ping6_from(&self.pod_ns(from), self.pod_ip6(to), count, gap)
    }

    /// UDP datagrams from pod `from` to a receiver in pod `to`; returns how
    /// many arrived. The receiver exists so no ICMP errors come back.
    pub fn udp(&self, from: u8, to: u8, count: u32, size: usize) -> Result<u32> {
        udp_between(
            &self.pod_ns(from),
            &self.pod_ns(to),
            self.pod_ip(to),
            count,
            size,
        )
    }
}

/// The global IPv4 and IPv6 address of a pod's `eth0`.
pub(super) fn pod_addrs(ns: &str) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>)> {
    let out = Command::new("ip")
        .args([
            "-n", ns, "-o", "addr", "show", "dev", "eth0", "scope", "global",
        ])
        .output()
        .context("running ip addr")?;
    if !out.status.success() {
        bail!(
            "no pod namespace {ns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (mut v4, mut v6) = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w == "inet" || w == "inet6" {
                let addr = words.next().and_then(|a| a.split('/').next());
                match addr.and_then(|a| a.parse::<IpAddr>().ok()) {
                    Some(IpAddr::V4(a)) => v4 = v4.or(Some(a)),
                    Some(IpAddr::V6(a)) => v6 = v6.or(Some(a)),
                    None => {}
                }
            }
        }
    }
    Ok((v4, v6))
}

/// UDP datagrams from namespace `from_ns` to a receiver on `dst` in
/// `to_ns`; returns how many arrived.
pub(super) fn udp_between(
    from_ns: &str,
    to_ns: &str,
    dst: Ipv4Addr,
    count: u32,
    size: usize,
) -> Result<u32> {
    let dst = SocketAddr::new(IpAddr::V4(dst), 5555);
    let receiver = netns::run_in(to_ns, || {
        let s = UdpSocket::bind("0.0.0.0:5555").context("binding the UDP receiver")?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(s)
    })?;
    let counter = std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        let mut got = 0u32;
        let mut idle_since = Instant::now();
        while got < count && idle_since.elapsed() < Duration::from_secs(2) {
            if receiver.recv(&mut buf).is_ok() {
                got += 1;
                idle_since = Instant::now();
            }
        }
        got
    });
    netns::run_in(from_ns, || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        let payload = vec![0x5a; size];
        for _ in 0..count {
            s.send_to(&payload, dst).context("sending UDP")?;
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(())
    })?;
    Ok(counter.join().unwrap_or(0))
}

/// ICMP echoes to `dst` from network namespace `ns`, one at a time;
/// returns the number of replies.
pub fn ping_from(ns: &str, dst: Ipv4Addr, count: u32, gap: Duration) -> Result<u32> {
    netns::run_in(ns, || ping(IpAddr::V4(dst), count, gap))
}

/// ICMPv6 echoes to `dst` from network namespace `ns`, one at a time;
/// returns the number of replies.
pub fn ping6_from(ns: &str, dst: Ipv6Addr, count: u32, gap: Duration) -> Result<u32> {
    netns::run_in(ns, || ping(IpAddr::V6(dst), count, gap))
}

fn icmp_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What an echo exchange of one address family uses: the raw socket's
/// family and protocol, the request and reply types, and a tag that keeps
/// IPv4 and IPv6 runs of one process apart.
struct Echo {
    domain: libc::c_int,
    protocol: libc::c_int,
    what: &'static str,
    request: u8,
    reply: u8,
    tag: u16,
}

impl Echo {
    fn of(dst: IpAddr) -> Self {
        match dst {
            IpAddr::V4(_) => Self {
                domain: libc::AF_INET,
                protocol: libc::IPPROTO_ICMP,
                what: "ICMP",
                request: 8,
                reply: 0,
                tag: 0x5678,
            },
            IpAddr::V6(_) => Self {
                domain: libc::AF_INET6,
                protocol: libc::IPPROTO_ICMPV6,
                what: "ICMPv6",
                request: 128,
                reply: 129,
                tag: 0x6789,
            },
        }
    }

    /// Echo request `seq` with 56 bytes of data; IPv4 needs our checksum
    /// (ICMPv6's the kernel fills in).
    fn request(&self, dst: IpAddr, ident: u16, seq: u16) -> [u8; 64] {
        let mut pkt = [0u8; 64];
        pkt[0] = self.request;
        pkt[4..6].copy_from_slice(&ident.to_be_bytes());
        pkt[6..8].copy_from_slice(&seq.to_be_bytes());
        for (k, b) in pkt[8..].iter_mut().enumerate() {
            *b = k as u8;
        }
        if dst.is_ipv4() {
            let ck = icmp_checksum(&pkt);
            pkt[2..4].copy_from_slice(&ck.to_be_bytes());
        }
        pkt
    }

    /// Waits up to 1 s for the reply to `seq` on `fd`. IPv4 raw sockets
    /// hand back the IP header; ICMPv6 ones do not.
    fn await_reply(&self, fd: libc::c_int, dst: IpAddr, ident: u16, seq: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            // SAFETY: the buffer is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            let header = if dst.is_ipv4() {
                ((buf[0] & 0x0f) as usize) * 4
            } else {
                0
            };
            if n < header + 8 {
                continue;
            }
            let icmp = &buf[header..n];
            if icmp[0] == self.reply
                && u16::from_be_bytes([icmp[4], icmp[5]]) == ident
                && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
            {
                return true;
            }
        }
        false
    }
}

/// `dst` as a socket address, and its length.
fn socket_addr(dst: IpAddr) -> (libc::sockaddr_storage, usize) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage, large enough for
    // either family's address, which is written through its own type.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger and more aligned than
            // sockaddr_in; nothing else borrows `addr` meanwhile.
            let sin = unsafe { &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut addr as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (addr, len)
}

/// Sends `count` echo requests (56 bytes of data, like `ping`) to `dst`
/// from the current namespace on a raw ICMP or ICMPv6 socket, each waiting
/// up to 1 s for its reply. Returns the replies received.
fn ping(dst: IpAddr, count: u32, gap: Duration) -> Result<u32> {
    let echo = Echo::of(dst);
    // SAFETY: plain socket syscalls on a descriptor we own.
    let fd = unsafe { libc::socket(echo.domain, libc::SOCK_RAW, echo.protocol) };
    if fd < 0 {
        bail!(
            "opening a raw {} socket: {}",
            echo.what,
            std::io::Error::last_os_error()
        );
    }
    let ident = (std::process::id() as u16) ^ echo.tag;
    let (addr, addr_len) = socket_addr(dst);
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    // SAFETY: a valid descriptor and a timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let mut replies = 0;
    for seq in 0..count {
        let seq = seq as u16;
        let pkt = echo.request(dst, ident, seq);
        // SAFETY: the buffer and address outlive the call; sizes match.
        let sent = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr() as *const libc::c_void,
                pkt.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                addr_len as u32,
            )
        };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: our descriptor, closed once.
            unsafe { libc::close(fd) };
            bail!("sending {} echo to {dst}: {e}", echo.what);
        }
        if echo.await_reply(fd, dst, ident, seq) {
            replies += 1;
        }
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    Ok(replies)
}
