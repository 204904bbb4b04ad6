//! TCP flows that conntrack holds in SYN_SENT / SYN_RECV: handshakes the
//! kernel's own connection tracking saw start and never finish. Read with a
//! ctnetlink dump (NETLINK_NETFILTER) of this network namespace.

use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoInfo, ProtoInfoTCP, ProtoTuple, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// conntrack's TCP states (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
pub const TCP_CONNTRACK_SYN_SENT: u8 = 1;
pub const TCP_CONNTRACK_SYN_RECV: u8 = 2;
pub const TCP_CONNTRACK_SYN_SENT2: u8 = 9;

/// One TCP flow: its original direction and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub state: u8,
}

impl Flow {
    pub fn syn_sent(&self) -> bool {
        matches!(self.state, TCP_CONNTRACK_SYN_SENT | TCP_CONNTRACK_SYN_SENT2)
    }

    pub fn syn_recv(&self) -> bool {
        self.state == TCP_CONNTRACK_SYN_RECV
    }
}

fn flow_from(attrs: &[ConntrackAttribute]) -> Option<Flow> {
    let mut flow = Flow {
        src: IpAddr::from([0u8; 4]),
        dst: IpAddr::from([0u8; 4]),
        sport: 0,
        dport: 0,
        state: 0,
    };
    let mut tcp = false;
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(tuples) => {
                for t in tuples {
                    match t {
                        Tuple::Ip(ips) => {
                            for ip in ips {
                                match ip {
                                    IPTuple::SourceAddress(s) => flow.src = *s,
                                    IPTuple::DestinationAddress(d) => flow.dst = *d,
                                    _ => {}
                                }
                            }
                        }
                        Tuple::Proto(ps) => {
                            for p in ps {
                                match p {
                                    ProtoTuple::SourcePort(s) => flow.sport = *s,
                                    ProtoTuple::DestinationPort(d) => flow.dport = *d,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            ConntrackAttribute::CtaProtoInfo(infos) => {
                for i in infos {
                    if let ProtoInfo::TCP(t) = i {
                        tcp = true;
                        for x in t {
                            if let ProtoInfoTCP::State(s) = x {
                                flow.state = *s;
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    tcp.then_some(flow)
}

/// Every TCP flow conntrack tracks in this namespace (IPv4 and IPv6).
pub fn tcp_flows() -> Result<Vec<Flow>> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("opening a ctnetlink socket")?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut flows = Vec::new();
    for family in [NetfilterProtoFamily::IPv4, NetfilterProtoFamily::IPv6] {
        let mut msg = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(family, 0, 0),
            ConntrackMessage::Get(vec![]),
        ));
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = 1;
        msg.finalize();
        let mut buf = vec![0u8; msg.header.length as usize];
        msg.serialize(&mut buf);
        socket
            .send(&buf, 0)
            .context("sending the conntrack dump request")?;
        'dump: loop {
            let (data, _) = socket
                .recv_from_full()
                .context("reading the conntrack dump")?;
            let mut off = 0;
            while off < data.len() {
                let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&data[off..])
                    .context("parsing a conntrack message")?;
                let len = reply.header.length as usize;
                match reply.payload {
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            bail!(
                                "conntrack dump refused: {}",
                                std::io::Error::from_raw_os_error(-code.get())
                            );
                        }
                        break 'dump;
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        if let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) =
                            m.inner
                            && let Some(f) = flow_from(&attrs)
                        {
                            flows.push(f);
                        }
                    }
                    _ => {}
                }
                if len == 0 {
                    break 'dump;
                }
                off += (len + 3) & !3;
            }
        }
    }
    Ok(flows)
}
