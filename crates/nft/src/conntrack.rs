//! Conntrack entries as ctnetlink describes them: the parser shared by NFLOG's `NFULA_CT` and
//! the answer to a GET, and the GET itself, to learn whether (and how) a flow was NATed.
//!
//! A filter hook sees a new flow before source NAT (postrouting) has chosen its address, so
//! the entry an NFLOG message carries (when the kernel can attach one) shows destination NAT
//! only; the confirmed entry, asked for once the packet has gone on, shows both.

use crate::netlink::{self, parse_attrs, Socket};
use crate::nflog::Malformed;
use crate::NftError;
use nix::errno::Errno;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

// From linux/netfilter/nfnetlink.h and nfnetlink_conntrack.h.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;
const IPS_CONFIRMED: u32 = 1 << 3;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_UDPLITE: u8 = 136;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_ICMPV6: u8 = 58;

/// What identifies a flow above IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L4 {
    /// TCP, UDP and the other protocols with ports.
    Ports { src: u16, dst: u16 },
    /// ICMP or ICMPv6; `id` is an echo's identifier, 0 for other types.
    Icmp { ty: u8, code: u8, id: u16 },
    /// Nothing conntrack keys on (another protocol, or a fragment after the first).
    Other,
}

/// One direction of a flow: addresses, protocol number, ports or ICMP identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    pub l4: L4,
}

impl Tuple {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            l4: match self.l4 {
                L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
                other => other,
            },
        }
    }

    pub fn src_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { src, .. } => Some(src),
            _ => None,
        }
    }

    pub fn dst_port(&self) -> Option<u16> {
        match self.l4 {
            L4::Ports { dst, .. } => Some(dst),
            _ => None,
        }
    }
}

/// An address and, for protocols with ports, a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: IpAddr,
    pub port: Option<u16>,
}

/// A conntrack entry: the flow as its first packet had it, and as replies will carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub original: Tuple,
    pub reply: Tuple,
    /// `IPS_*` bits, when the kernel sent them.
    pub status: Option<u32>,
}

impl Entry {
    /// In the kernel's table: the first packet has passed every hook, NAT included.
    pub fn confirmed(&self) -> bool {
        self.status.is_some_and(|s| s & IPS_CONFIRMED != 0)
    }

    /// Source NAT: the address (and port) the source was rewritten to, which replies are
    /// addressed to.
    pub fn snat(&self) -> Option<Endpoint> {
        let to = Endpoint {
            addr: self.reply.dst,
            port: self.reply.dst_port(),
        };
        (to.addr != self.original.src || to.port != self.original.src_port()).then_some(to)
    }

    /// Destination NAT: the address (and port) the client addressed, before it was rewritten
    /// to the one replies come from.
    pub fn dnat(&self) -> Option<Endpoint> {
        let from = Endpoint {
            addr: self.original.dst,
            port: self.original.dst_port(),
        };
        let to = (self.reply.src, self.reply.src_port());
        (to != (from.addr, from.port)).then_some(from)
    }
}

/// Parses the `CTA_*` attributes of an entry: the payload of NFLOG's `NFULA_CT`, or the body
/// of a ctnetlink message after its nfgenmsg.
pub fn parse(attrs: &[u8]) -> Result<Entry, Malformed> {
    let a = parse_attrs::<4>(attrs)?;
    let original = a[usize::from(CTA_TUPLE_ORIG)]
        .ok_or(Malformed("conntrack entry without its original tuple"))?;
    let reply = a[usize::from(CTA_TUPLE_REPLY)]
        .ok_or(Malformed("conntrack entry without its reply tuple"))?;
    let status = netlink::be::<4>(a[usize::from(CTA_STATUS)])?.map(u32::from_be_bytes);
    Ok(Entry {
        original: tuple(original)?,
        reply: tuple(reply)?,
        status,
    })
}

fn tuple(buf: &[u8]) -> Result<Tuple, Malformed> {
    let t = parse_attrs::<3>(buf)?;
    let ip = parse_attrs::<5>(
        t[usize::from(CTA_TUPLE_IP)].ok_or(Malformed("tuple without addresses"))?,
    )?;
    let v4 = |ty: u16| -> Result<Option<IpAddr>, Malformed> {
        Ok(netlink::be::<4>(ip[usize::from(ty)])?.map(|b| IpAddr::V4(Ipv4Addr::from(b))))
    };
    let v6 = |ty: u16| -> Result<Option<IpAddr>, Malformed> {
        Ok(netlink::be::<16>(ip[usize::from(ty)])?.map(|b| IpAddr::V6(Ipv6Addr::from(b))))
    };
    let (src, dst) = match (v4(CTA_IP_V4_SRC)?, v4(CTA_IP_V4_DST)?) {
        (Some(s), Some(d)) => (s, d),
        _ => match (v6(CTA_IP_V6_SRC)?, v6(CTA_IP_V6_DST)?) {
            (Some(s), Some(d)) => (s, d),
            _ => return Err(Malformed("tuple without a source and destination")),
        },
    };
    let p = parse_attrs::<10>(
        t[usize::from(CTA_TUPLE_PROTO)].ok_or(Malformed("tuple without a protocol"))?,
    )?;
    let protocol = match netlink::be::<1>(p[usize::from(CTA_PROTO_NUM)])? {
        Some([n]) => n,
        None => return Err(Malformed("tuple without a protocol number")),
    };
    let u16_of = |ty: u16| -> Result<Option<u16>, Malformed> {
        Ok(netlink::be::<2>(p[usize::from(ty)])?.map(u16::from_be_bytes))
    };
    let u8_of = |ty: u16| -> Result<Option<u8>, Malformed> {
        Ok(netlink::be::<1>(p[usize::from(ty)])?.map(|[b]| b))
    };
    let icmp = |id, ty, code| -> Result<L4, Malformed> {
        match (u16_of(id)?, u8_of(ty)?, u8_of(code)?) {
            (Some(id), Some(ty), Some(code)) => Ok(L4::Icmp { ty, code, id }),
            _ => Ok(L4::Other),
        }
    };
    let l4 = match protocol {
        IPPROTO_ICMP => icmp(CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)?,
        IPPROTO_ICMPV6 => icmp(
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
        )?,
        _ => match (u16_of(CTA_PROTO_SRC_PORT)?, u16_of(CTA_PROTO_DST_PORT)?) {
            (Some(src), Some(dst)) => L4::Ports { src, dst },
            _ => L4::Other,
        },
    };
    Ok(Tuple {
        src,
        dst,
        protocol,
        l4,
    })
}

/// Whether a GET can name this flow: conntrack keys these protocols by ports, and ICMP flows
/// by echo identity (other ICMP types start no flow of their own).
fn keyed(t: &Tuple) -> bool {
    const ECHO_REQUEST: u8 = 8;
    const ECHO_REQUEST_V6: u8 = 128;
    match (t.protocol, t.l4) {
        (
            IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_DCCP | IPPROTO_SCTP,
            L4::Ports { .. },
        ) => true,
        (IPPROTO_ICMP, L4::Icmp { ty, .. }) => ty == ECHO_REQUEST,
        (IPPROTO_ICMPV6, L4::Icmp { ty, .. }) => ty == ECHO_REQUEST_V6,
        _ => false,
    }
}

/// `IPCTNL_MSG_CT_GET` for the entry with `t` as one of its directions; `None` when `t`
/// mixes address families or names no flow conntrack could key on.
fn get_request(t: &Tuple, seq: u32) -> Option<Vec<u8>> {
    let family = match (t.src, t.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => NFPROTO_IPV4,
        (IpAddr::V6(_), IpAddr::V6(_)) => NFPROTO_IPV6,
        _ => return None,
    };
    if !keyed(t) {
        return None;
    }
    let mut buf = Vec::with_capacity(128);
    let at = netlink::header(
        &mut buf,
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        netlink::NLM_F_REQUEST | netlink::NLM_F_ACK,
        seq,
        family,
        0,
    );
    let orig = netlink::nest(&mut buf, CTA_TUPLE_ORIG);
    let ip = netlink::nest(&mut buf, CTA_TUPLE_IP);
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            netlink::attr(&mut buf, CTA_IP_V4_SRC, &s.octets());
            netlink::attr(&mut buf, CTA_IP_V4_DST, &d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            netlink::attr(&mut buf, CTA_IP_V6_SRC, &s.octets());
            netlink::attr(&mut buf, CTA_IP_V6_DST, &d.octets());
        }
        _ => return None,
    }
    netlink::end_nest(&mut buf, ip);
    let proto = netlink::nest(&mut buf, CTA_TUPLE_PROTO);
    netlink::attr(&mut buf, CTA_PROTO_NUM, &[t.protocol]);
    match t.l4 {
        L4::Ports { src, dst } => {
            netlink::attr(&mut buf, CTA_PROTO_SRC_PORT, &src.to_be_bytes());
            netlink::attr(&mut buf, CTA_PROTO_DST_PORT, &dst.to_be_bytes());
        }
        L4::Icmp { ty, code, id } => {
            let (a_id, a_ty, a_code) = if t.protocol == IPPROTO_ICMP {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            } else {
                (
                    CTA_PROTO_ICMPV6_ID,
                    CTA_PROTO_ICMPV6_TYPE,
                    CTA_PROTO_ICMPV6_CODE,
                )
            };
            netlink::attr(&mut buf, a_id, &id.to_be_bytes());
            netlink::attr(&mut buf, a_ty, &[ty]);
            netlink::attr(&mut buf, a_code, &[code]);
        }
        L4::Other => return None,
    }
    netlink::end_nest(&mut buf, proto);
    netlink::end_nest(&mut buf, orig);
    netlink::close(&mut buf, at);
    Some(buf)
}

/// Looks entries up in the conntrack table of the namespace it was opened in.
#[derive(Debug)]
pub struct Lookup {
    sock: Socket,
}

impl Lookup {
    pub fn open() -> Result<Lookup, NftError> {
        // The kernel answers a GET at once; the timeout only bounds a lost answer.
        Ok(Lookup {
            sock: Socket::open_with(Duration::from_secs(1))?,
        })
    }

    /// The entry that has `t` as its original or its reply direction; `None` when there is
    /// none (or `t` is not something conntrack can be asked for).
    pub fn get(&self, t: &Tuple) -> Result<Option<Entry>, NftError> {
        let seq = self.sock.next_seq();
        let Some(req) = get_request(t, seq) else {
            return Ok(None);
        };
        let mut found = None;
        let mut bad = None;
        let answer = self.sock.request(&req, seq, |m| {
            if m.ty == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
                match m.body.get(netlink::NFGENMSG_LEN..).map(parse) {
                    Some(Ok(e)) => found = Some(e),
                    Some(Err(e)) => bad = Some(e),
                    None => bad = Some(Malformed("conntrack message without its header")),
                }
            }
        });
        match answer {
            Ok(Ok(())) => match (found, bad) {
                (Some(e), _) => Ok(Some(e)),
                (None, Some(m)) => Err(NftError::Rejected(format!("conntrack answer: {m}"))),
                (None, None) => Ok(None),
            },
            Ok(Err(Errno::ENOENT)) => Ok(None),
            Ok(Err(e)) => Err(NftError::Rejected(format!(
                "conntrack lookup: {}",
                e.desc()
            ))),
            Err(e) => Err(NftError::Rejected(format!("conntrack lookup: {e}"))),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::netlink::{attr, end_nest, nest};

    /// Appends `CTA_TUPLE_*` attribute `ty` for `t`, as the kernel writes it.
    pub(crate) fn put_tuple(buf: &mut Vec<u8>, ty: u16, t: &Tuple) {
        let outer = nest(buf, ty);
        let ip = nest(buf, CTA_TUPLE_IP);
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(buf, CTA_IP_V4_SRC, &s.octets());
                attr(buf, CTA_IP_V4_DST, &d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                attr(buf, CTA_IP_V6_SRC, &s.octets());
                attr(buf, CTA_IP_V6_DST, &d.octets());
            }
            _ => panic!("mixed families"),
        }
        end_nest(buf, ip);
        let p = nest(buf, CTA_TUPLE_PROTO);
        attr(buf, CTA_PROTO_NUM, &[t.protocol]);
        if let L4::Ports { src, dst } = t.l4 {
            attr(buf, CTA_PROTO_SRC_PORT, &src.to_be_bytes());
            attr(buf, CTA_PROTO_DST_PORT, &dst.to_be_bytes());
        }
        if let L4::Icmp { ty, code, id } = t.l4 {
            attr(buf, CTA_PROTO_ICMP_ID, &id.to_be_bytes());
            attr(buf, CTA_PROTO_ICMP_TYPE, &[ty]);
            attr(buf, CTA_PROTO_ICMP_CODE, &[code]);
        }
        end_nest(buf, p);
        end_nest(buf, outer);
    }

    /// The `CTA_*` attributes of an entry.
    pub(crate) fn entry_attrs(e: &Entry) -> Vec<u8> {
        let mut buf = Vec::new();
        put_tuple(&mut buf, CTA_TUPLE_ORIG, &e.original);
        put_tuple(&mut buf, CTA_TUPLE_REPLY, &e.reply);
        if let Some(s) = e.status {
            attr(&mut buf, CTA_STATUS, &s.to_be_bytes());
        }
        buf
    }

    pub(crate) fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple {
            src: src.parse().expect("ip"),
            dst: dst.parse().expect("ip"),
            protocol: IPPROTO_TCP,
            l4: L4::Ports {
                src: sport,
                dst: dport,
            },
        }
    }

    #[test]
    fn masquerade_shows_as_snat_to_the_reply_destination() {
        let orig = tcp("192.168.50.10", 40000, "198.51.100.20", 80);
        let e = Entry {
            original: orig,
            reply: tcp("198.51.100.20", 80, "198.51.100.1", 40001),
            status: Some(IPS_CONFIRMED | 1 << 4),
        };
        let parsed = parse(&entry_attrs(&e)).expect("parse");
        assert_eq!(parsed, e);
        assert!(parsed.confirmed());
        assert_eq!(
            parsed.snat(),
            Some(Endpoint {
                addr: "198.51.100.1".parse().expect("ip"),
                port: Some(40001)
            })
        );
        assert_eq!(parsed.dnat(), None);
    }

    #[test]
    fn port_forward_shows_as_dnat_from_the_public_address() {
        let e = Entry {
            original: tcp("198.51.100.20", 5555, "198.51.100.2", 8080),
            reply: tcp("192.168.50.10", 80, "198.51.100.20", 5555),
            status: None,
        };
        let parsed = parse(&entry_attrs(&e)).expect("parse");
        assert!(!parsed.confirmed());
        assert_eq!(parsed.snat(), None);
        assert_eq!(
            parsed.dnat(),
            Some(Endpoint {
                addr: "198.51.100.2".parse().expect("ip"),
                port: Some(8080)
            })
        );
    }

    #[test]
    fn an_untranslated_flow_has_no_nat_either_way() {
        let orig = tcp("fd00:50::10", 1234, "fd00:51::20", 443);
        let e = Entry {
            original: orig,
            reply: orig.reversed(),
            status: Some(IPS_CONFIRMED),
        };
        let parsed = parse(&entry_attrs(&e)).expect("parse");
        assert_eq!(parsed, e);
        assert_eq!((parsed.snat(), parsed.dnat()), (None, None));
    }

    #[test]
    fn icmp_tuples_carry_the_echo_identity() {
        let t = Tuple {
            src: "192.168.50.10".parse().expect("ip"),
            dst: "198.51.100.20".parse().expect("ip"),
            protocol: IPPROTO_ICMP,
            l4: L4::Icmp {
                ty: 8,
                code: 0,
                id: 77,
            },
        };
        let e = Entry {
            original: t,
            reply: Tuple {
                src: t.dst,
                dst: "198.51.100.1".parse().expect("ip"),
                protocol: IPPROTO_ICMP,
                l4: L4::Icmp {
                    ty: 0,
                    code: 0,
                    id: 77,
                },
            },
            status: None,
        };
        let parsed = parse(&entry_attrs(&e)).expect("parse");
        assert_eq!(parsed, e);
        assert_eq!(parsed.snat().map(|s| s.port), Some(None));
    }

    #[test]
    fn entries_missing_parts_are_malformed() {
        let t = tcp("192.0.2.1", 1, "192.0.2.2", 2);
        let mut only_orig = Vec::new();
        put_tuple(&mut only_orig, CTA_TUPLE_ORIG, &t);
        assert!(parse(&only_orig).is_err());
        let mut cut = entry_attrs(&Entry {
            original: t,
            reply: t.reversed(),
            status: None,
        });
        cut.truncate(cut.len() - 3);
        assert!(parse(&cut).is_err());
        // A tuple whose address attribute has the wrong size.
        let mut bad = Vec::new();
        let o = nest(&mut bad, CTA_TUPLE_ORIG);
        let ip = nest(&mut bad, CTA_TUPLE_IP);
        attr(&mut bad, CTA_IP_V4_SRC, &[1, 2, 3]);
        attr(&mut bad, CTA_IP_V4_DST, &[1, 2, 3, 4]);
        end_nest(&mut bad, ip);
        end_nest(&mut bad, o);
        put_tuple(&mut bad, CTA_TUPLE_REPLY, &t);
        assert!(parse(&bad).is_err());
    }

    /// The GET names the tuple as the kernel's ctnetlink_parse_tuple reads it.
    #[test]
    fn get_request_layout() {
        let t = tcp("192.168.50.10", 40000, "198.51.100.20", 9);
        let req = get_request(&t, 42).expect("request");
        let msgs: Vec<_> = netlink::messages(&req)
            .collect::<Result<_, _>>()
            .expect("walk");
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET);
        assert_eq!(msgs[0].seq, 42);
        assert_eq!(msgs[0].body[0], NFPROTO_IPV4);
        let mut expect = Vec::new();
        put_tuple(&mut expect, CTA_TUPLE_ORIG, &t);
        assert_eq!(&msgs[0].body[netlink::NFGENMSG_LEN..], &expect[..]);
        let other = Tuple {
            l4: L4::Other,
            protocol: 47,
            ..t
        };
        assert!(
            get_request(&other, 1).is_none(),
            "GRE has no tuple to ask for"
        );
    }
}
