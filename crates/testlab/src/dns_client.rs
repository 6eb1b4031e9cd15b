//! A DNS client for tests: one hand-built query, one reply, over UDP or TCP, with no retries
//! (so a server's query count stays exact). The free functions use the calling thread's
//! namespace, for loops inside [`Netns::run`]; [`Netns::dns`] wraps one exchange.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::error::LabError;
use crate::netns::Netns;

/// How a query travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query for `name` (absolute, e.g. `"ok.test."`) with a random id; `edns` as given (`None`:
/// a classic query, whose UDP replies stop at 512 bytes).
pub fn dns_query(name: &str, rtype: RecordType, edns: Option<Edns>) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("test name parses"),
        rtype,
    ));
    if let Some(edns) = edns {
        msg.set_edns(edns);
    }
    msg.to_vec().expect("query encodes")
}

/// An EDNS OPT advertising `max_payload` bytes.
pub fn edns(max_payload: u16) -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(max_payload);
    e
}

/// Sends `wire` to `server` from the calling thread's namespace and returns the reply.
pub fn dns_exchange(
    server: SocketAddr,
    wire: &[u8],
    transport: Transport,
    timeout: Duration,
) -> io::Result<Message> {
    let reply = match transport {
        Transport::Udp => {
            let bind: SocketAddr = match server {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let sock = UdpSocket::bind(bind)?;
            sock.set_read_timeout(Some(timeout))?;
            sock.connect(server)?;
            sock.send(wire)?;
            let mut buf = vec![0u8; 65535];
            let n = sock.recv(&mut buf)?;
            buf.truncate(n);
            buf
        }
        Transport::Tcp => {
            let mut s = TcpStream::connect_timeout(&server, timeout)?;
            s.set_read_timeout(Some(timeout))?;
            let len = u16::try_from(wire.len()).map_err(io::Error::other)?;
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(wire);
            s.write_all(&framed)?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len)?;
            let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf)?;
            buf
        }
    };
    Message::from_vec(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The A and AAAA addresses in a reply's answer section, in order.
pub fn answer_addrs(msg: &Message) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

impl Netns {
    /// One exchange with `server` from inside this namespace.
    pub fn dns(
        &self,
        server: SocketAddr,
        wire: Vec<u8>,
        transport: Transport,
        timeout: Duration,
    ) -> Result<Message, LabError> {
        let ns = self.name().to_string();
        self.run(move || dns_exchange(server, &wire, transport, timeout))?
            .map_err(|source| LabError::Io {
                ns,
                what: format!("DNS query to {server} over {transport:?}"),
                source,
            })
    }
}
