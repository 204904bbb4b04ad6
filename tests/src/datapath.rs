//! A stand-in for another eBPF datapath (Cilium, Calico's eBPF mode) on
//! the same devices as vxtrace: a TC program that passes every packet and
//! ends the chain (TC_ACT_OK), so that nothing behind it sees the packet.
//! It is attached the two ways such agents do it: a tcx link at the head
//! of the chain (kernel >= 6.6), or a direct-action cls_bpf filter at the
//! first priority with handle 1 (clsact kernels).
//!
//! The program is two instructions, loaded with the bpf(2) syscall, and
//! attached from a thread that entered the lab node's network namespace.
//! Dropping the guard detaches it (tcx: the link's fd closes; clsact: the
//! filter is deleted).

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    process::Command,
};

/// BPF_MOV64_IMM(R0, 0) (TC_ACT_OK); BPF_EXIT.
const PASS_AND_END: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
/// BPF_MOV64_IMM(R0, 2) (XDP_PASS); BPF_EXIT.
const XDP_PASS: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// Generic (skb) mode: what a veth takes without a native driver hook.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// Attach before the program named by the relative fd/id; with none, at
/// the head of the chain.
const BPF_F_BEFORE: u32 = 1 << 3;

/// Which TC hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn tc_word(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// A pass-everything program attached to one hook; detached on drop.
pub struct StandIn {
    ns: String,
    device: String,
    hook: Hook,
    /// tcx: the link (and the program) fds; empty for a clsact filter.
    _fds: Vec<OwnedFd>,
    clsact: bool,
}

impl StandIn {
    /// Attaches through tcx at the head of `device`'s `hook` chain in `ns`.
    pub fn tcx_first(ns: &str, device: &str, hook: Hook) -> Self {
        let (ns_owned, dev) = (ns.to_string(), device.to_string());
        let fds = in_netns(ns, move || {
            let prog = load_program(BPF_PROG_TYPE_SCHED_CLS, &PASS_AND_END);
            let ifindex = ifindex(&dev);
            let mut attr = [0u8; 64];
            put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
            put_u32(&mut attr, 4, ifindex);
            put_u32(
                &mut attr,
                8,
                match hook {
                    Hook::Ingress => BPF_TCX_INGRESS,
                    Hook::Egress => BPF_TCX_EGRESS,
                },
            );
            put_u32(&mut attr, 12, BPF_F_BEFORE);
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .unwrap_or_else(|e| panic!("tcx attach of the stand-in on {dev}: {e}"));
            vec![link, prog]
        });
        Self {
            ns: ns_owned,
            device: device.to_string(),
            hook,
            _fds: fds,
            clsact: false,
        }
    }

    /// Attaches a direct-action cls_bpf filter at priority 1, handle 1, on
    /// `device`'s `hook` in `ns` (what `tc filter replace ... pref 1 handle
    /// 1 bpf da` makes).
    pub fn clsact_first(ns: &str, device: &str, hook: Hook) -> Self {
        let dev = device.to_string();
        in_netns(ns, move || {
            let prog = load_program(BPF_PROG_TYPE_SCHED_CLS, &PASS_AND_END);
            add_cls_bpf(ifindex(&dev), hook, prog.as_raw_fd() as u32);
        });
        Self {
            ns: ns.to_string(),
            device: device.to_string(),
            hook,
            _fds: Vec::new(),
            clsact: true,
        }
    }
}

/// An XDP program that passes every packet, attached in generic mode
/// through a BPF link; detached on drop.
pub struct XdpStandIn {
    _fds: Vec<OwnedFd>,
}

impl XdpStandIn {
    pub fn attach(ns: &str, device: &str) -> Self {
        let dev = device.to_string();
        let fds = in_netns(ns, move || {
            let prog = load_program(BPF_PROG_TYPE_XDP, &XDP_PASS);
            let mut attr = [0u8; 64];
            put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
            put_u32(&mut attr, 4, ifindex(&dev));
            put_u32(&mut attr, 8, BPF_XDP);
            put_u32(&mut attr, 12, XDP_FLAGS_SKB_MODE);
            let link = bpf(BPF_LINK_CREATE, &mut attr)
                .unwrap_or_else(|e| panic!("XDP attach of the stand-in on {dev}: {e}"));
            vec![link, prog]
        });
        Self { _fds: fds }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if self.clsact {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.ns, "tc", "filter", "del", "dev"])
                .args([
                    &self.device,
                    self.hook.tc_word(),
                    "pref",
                    "1",
                    "handle",
                    "1",
                    "bpf",
                ])
                .output();
        }
    }
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        // SAFETY: a valid namespace fd; setns affects this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("the namespace thread")
}

fn ifindex(device: &str) -> u32 {
    let c = CString::new(device).unwrap();
    // SAFETY: a NUL-terminated string that outlives the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(i, 0, "no device {device}");
    i
}

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// bpf(2) with `attr`; the new fd.
fn bpf(cmd: libc::c_long, attr: &mut [u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-filled bpf_attr of at least the size the
    // command reads, and lives across the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads a program of `prog_type` made of `insns` (named `standin_pass`).
fn load_program(prog_type: u32, insns: &[u64]) -> OwnedFd {
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (64 KiB by
    // default); later ones to the cgroup, where this may fail harmlessly.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit that outlives the call.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let license = CString::new("GPL").unwrap();
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + 12].copy_from_slice(b"standin_pass");
    bpf(BPF_PROG_LOAD, &mut attr).expect("loading the stand-in program")
}

/// RTM_NEWTFILTER: a cls_bpf filter, direct action, prio 1 handle 1,
/// protocol all, running `prog_fd` (adds the clsact qdisc first).
fn add_cls_bpf(ifindex: u32, hook: Hook, prog_fd: u32) {
    const RTM_NEWQDISC: u16 = 36;
    const RTM_NEWTFILTER: u16 = 44;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLM_F_EXCL: u16 = 0x200;
    const NLM_F_CREATE: u16 = 0x400;
    const TCA_KIND: u16 = 1;
    const TCA_OPTIONS: u16 = 2;
    const TCA_BPF_FD: u16 = 6;
    const TCA_BPF_NAME: u16 = 7;
    const TCA_BPF_FLAGS: u16 = 8;
    const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;
    const ETH_P_ALL: u16 = 0x0003;
    let parent: u32 = 0xffff_0000
        | match hook {
            Hook::Ingress => 0xfff2,
            Hook::Egress => 0xfff3,
        };
    // The clsact qdisc (EEXIST when it is there already is fine).
    let mut qdisc = tcmsg(ifindex, 0xffff_0000, 0xffff_fff1, 0);
    attr(&mut qdisc, TCA_KIND, b"clsact\0");
    netlink(
        RTM_NEWQDISC,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        &qdisc,
        true,
    );
    let info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
    let mut filter = tcmsg(ifindex, 1, parent, info);
    attr(&mut filter, TCA_KIND, b"bpf\0");
    let mut opts = Vec::new();
    attr(&mut opts, TCA_BPF_FD, &prog_fd.to_ne_bytes());
    attr(&mut opts, TCA_BPF_NAME, b"standin_pass\0");
    attr(
        &mut opts,
        TCA_BPF_FLAGS,
        &TCA_BPF_FLAG_ACT_DIRECT.to_ne_bytes(),
    );
    attr(&mut filter, TCA_OPTIONS, &opts);
    netlink(
        RTM_NEWTFILTER,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &filter,
        false,
    );
}

/// A struct tcmsg.
fn tcmsg(ifindex: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut m = vec![0u8; 20];
    put_u32(&mut m, 4, ifindex);
    put_u32(&mut m, 8, handle);
    put_u32(&mut m, 12, parent);
    put_u32(&mut m, 16, info);
    m
}

/// Appends one netlink attribute (aligned to 4 bytes).
fn attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Sends one rtnetlink request and checks its acknowledgement.
fn netlink(kind: u16, flags: u16, body: &[u8], exist_ok: bool) {
    // SAFETY: plain socket calls on buffers that outlive them.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
        assert!(fd >= 0, "netlink socket");
        let sock = OwnedFd::from_raw_fd(fd);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        );
        assert_eq!(sent as usize, msg.len(), "netlink send");
        let mut reply = [0u8; 4096];
        let n = libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0);
        assert!(n >= 20, "netlink reply");
        // NLMSG_ERROR: the errno follows the header.
        let errno = -i32::from_ne_bytes(reply[16..20].try_into().unwrap());
        assert!(
            errno == 0 || (exist_ok && errno == libc::EEXIST),
            "netlink request {kind} refused: {}",
            std::io::Error::from_raw_os_error(errno)
        );
    }
}
