//! `engine::io`: the [`Engine`] driven by two AF_PACKET sockets, one bound to each interface.
//! Frames are read and sent in batches (`recvmmsg`, `sendmmsg`), and sent from the buffers
//! they were read into: a forwarded frame is never copied.
//!
//! What the kernel hands a packet socket is not always a wire frame, and the loop makes up for
//! it before the engine sees one:
//! - a frame from a local sender or a veth peer may carry a **partial checksum** left for
//!   offload; `PACKET_AUXDATA` says so (`TP_STATUS_CSUMNOTREADY`) and the engine is told
//!   ([`L4Checksum::Partial`]), which completes it before NAT updates it incrementally; a frame
//!   whose checksum the NIC verified (`TP_STATUS_CSUM_VALID`) is handed over as such
//!   ([`L4Checksum::Verified`]), and the engine verifies the rest, as the kernel's conntrack
//!   does;
//! - frames the engine itself sent come back as outgoing ones: `PACKET_IGNORE_OUTGOING` asks
//!   the kernel not to, and the packet type is checked as well for kernels before 4.20;
//! - a VLAN tag the NIC stripped (`TP_STATUS_VLAN_VALID`) would make a tagged frame look
//!   untagged: such frames are not handed on, as the engine does not forward VLANs;
//! - GRO (and LRO) would merge segments into frames larger than the other side's MTU, so
//!   [`Socket::open`] turns them off on the interface; what is still too long for the buffer
//!   or for the egress MTU (a veth peer's TSO segments) is counted and not sent.
//!
//! Raw `libc` calls rather than a crate: pnet's datalink channel reads one frame per system
//! call and does not ask for the auxiliary data that marks partial checksums, and nix's
//! `recvmmsg` wrapper owns its header arrays in a way that leaves the ancillary data to be
//! parsed by hand anyway. What is needed here is a dozen well-known system calls.
//!
//! Time for the engine is milliseconds since the loop started, from the monotonic clock; the
//! connection table is swept every [`SWEEP_EVERY_MS`]. [`stop_on_signals`] makes SIGTERM and
//! SIGINT end [`Driver::run`] at its next wake-up (within [`POLL_MS`]). With
//! [`Driver::run_learning`], addresses the DNS side learned and reloaded policies
//! ([`crate::learn`]) are applied between waits. A hook set with [`Driver::on_tick`] is shown
//! the engine at every sweep and after every reload (to publish its counters elsewhere and take
//! its logged packets, the packet path untouched).
//!
//! A host stack can be attached ([`Driver::attach_host`], a [`Tun`]): packets the engine
//! delivers are written to it, packets read from it go to [`Engine::handle_host`].
//!
//! A packet whose next hop's MAC is unknown (forwarded or from the host) is held, up to
//! [`PARKED`] of them for [`PARK_MS`], and handed to the engine again once it learns a MAC,
//! as the kernel queues packets for a neighbour it is asking for: a connection's first SYN
//! or the DNS proxy's single query datagram is not lost to the first ARP exchange. The engine
//! core stays stateless about it: a parked frame is untouched (resolution comes before any
//! rewrite), and its flow is open, so handing it over again takes the established path.

use crate::core::arp::{Side, FRAME_LEN};
use crate::core::engine::{Action, Engine, L4Checksum, RxInfo};
use crate::learn::Inbox;
pub use tun::Tun;

mod tun;
use ::core::ffi::{c_char, c_int, c_void};
use ::core::marker::PhantomData;
use ::core::sync::atomic::{AtomicBool, Ordering};
use ::core::{fmt, mem, ptr};
use smoltcp::wire::EthernetAddress;
use std::boxed::Box;
use std::format;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::string::{String, ToString};
use std::time::Instant;
use std::vec;
use std::vec::Vec;

/// Frames read (and at most twice as many sent) per system call.
pub const BATCH: usize = 64;
/// Longest wait for a frame, so that the stop flag and the sweep are looked at in time.
pub const POLL_MS: c_int = 100;
/// How often expired flows are swept, and how many entries each sweep looks at: the default
/// table of 65,536 is gone through in under 2 s.
pub const SWEEP_EVERY_MS: u64 = 100;
pub const SWEEP_BUDGET: usize = 4096;
/// Batches read from one socket before the other gets its turn.
const ROUNDS: usize = 8;
const ETHERNET_HEADER: usize = 14;
/// Room for an 802.1Q tag a NIC may leave in the frame.
const VLAN_TAG: usize = 4;
const ARPHRD_ETHER: u16 = 1;

/// A system call that failed, and what it was for.
#[derive(Debug)]
pub struct IoError {
    pub what: String,
    pub source: io::Error,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.source)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn failed(what: impl fmt::Display) -> IoError {
    IoError {
        what: what.to_string(),
        source: io::Error::last_os_error(),
    }
}

/// One interface as the engine needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub mac: EthernetAddress,
    pub mtu: usize,
}

/// An AF_PACKET socket bound to one interface, receiving every frame that arrives there.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    link: Link,
}

impl Socket {
    /// Opens the socket and binds it to `name`, which must be an Ethernet interface that is
    /// up. Turns GRO and LRO off on it (see the module doc).
    pub fn open(name: &str) -> Result<Socket, IoError> {
        // Protocol 0: nothing is queued until `bind` names the protocol and the interface,
        // so no frame from another interface slips in first.
        // SAFETY: plain system call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(failed("cannot open an AF_PACKET socket (ward engine needs root, or CAP_NET_RAW and CAP_NET_ADMIN)"));
        }
        // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let link = link(fd.as_raw_fd(), name)?;
        let socket = Socket { fd, link };
        socket.set(
            libc::SOL_PACKET,
            libc::PACKET_AUXDATA,
            1,
            "ask for PACKET_AUXDATA",
        )?;
        // Kernels before 4.20 refuse the option; the packet type check covers them.
        let _ = socket.set(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1, "");
        // A bigger receive queue absorbs bursts while a batch is being handled. FORCE goes
        // past `rmem_max` for root; the plain option is what is left without that right.
        const RCVBUF: c_int = 4 << 20;
        if socket
            .set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF, "")
            .is_err()
        {
            let _ = socket.set(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF, "");
        }
        offloads_off(socket.fd.as_raw_fd(), name)?;
        // SAFETY: all-zero is a valid `sockaddr_ll`; the fields that matter are set below.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = socket.link.index as c_int;
        // SAFETY: `addr` is a valid `sockaddr_ll` of the length given.
        let r = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                ptr::addr_of!(addr).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(failed(format!("cannot bind a packet socket to {name}")));
        }
        Ok(socket)
    }

    pub fn link(&self) -> &Link {
        &self.link
    }

    fn set(&self, level: c_int, option: c_int, value: c_int, what: &str) -> Result<(), IoError> {
        // SAFETY: `value` is a c_int and the length says so.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                option,
                ptr::addr_of!(value).cast(),
                mem::size_of::<c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(failed(format!("{what} on {}", self.link.name)));
        }
        Ok(())
    }

    /// Reads up to [`BATCH`] frames into `batch` without waiting; 0 when none is queued.
    pub fn recv(&self, batch: &mut RxBatch) -> Result<usize, IoError> {
        batch.prepare();
        // SAFETY: every header points into `batch`'s own buffers, which live as long as it and
        // whose lengths the headers carry; the kernel writes only within them.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                batch.hdrs.as_mut_ptr(),
                batch.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
            )
        };
        if n < 0 {
            let source = io::Error::last_os_error();
            return match source.raw_os_error() {
                // Nothing queued, a signal, or the link went down for a while: nothing read.
                Some(libc::EAGAIN | libc::EINTR | libc::ENETDOWN) => Ok(0),
                _ => Err(IoError {
                    what: format!("cannot read frames from {}", self.link.name),
                    source,
                }),
            };
        }
        batch.received = n as usize;
        Ok(batch.received)
    }

    /// Sends every frame of `batch` out of the interface, in as few system calls as the kernel
    /// allows. A frame it refuses (queue full, link down) is skipped and counted, as a NIC
    /// drops what its queue cannot hold.
    pub fn send(&self, batch: &mut TxBatch<'_>) -> Sent {
        let mut sent = Sent::default();
        let store = &mut *batch.store;
        let n = store.iovs.len();
        store.hdrs.clear();
        for iov in store.iovs.iter_mut() {
            // SAFETY: all-zero is a valid `mmsghdr`: no name, no control data.
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            store.hdrs.push(h);
        }
        let mut at = 0;
        while at < n {
            let Some(rest) = store.hdrs.get_mut(at..) else {
                break;
            };
            // SAFETY: the headers point at the iovecs of `store`, which point at frames that
            // `batch`'s lifetime keeps alive; no header names an address (the socket is bound).
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    rest.as_mut_ptr(),
                    rest.len() as libc::c_uint,
                    0,
                )
            };
            if r > 0 {
                sent.frames += r as usize;
                at += r as usize;
            } else if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                // The first frame left failed: drop it and go on with the rest.
                sent.failed += 1;
                at += 1;
            }
        }
        sent
    }
}

/// What [`Socket::send`] managed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sent {
    pub frames: usize,
    pub failed: usize,
}

/// The interface's index, MAC and MTU, read with `fd` (any socket); fails if it is not an
/// Ethernet interface or is down.
fn link(fd: RawFd, name: &str) -> Result<Link, IoError> {
    let mut req = ifreq(name)?;
    ioctl(fd, libc::SIOCGIFINDEX, &mut req, name, "find")?;
    // SAFETY: SIOCGIFINDEX filled the union's index.
    let index = unsafe { req.ifr_ifru.ifru_ifindex } as u32;
    ioctl(fd, libc::SIOCGIFHWADDR, &mut req, name, "read the MAC of")?;
    // SAFETY: SIOCGIFHWADDR filled the union's hardware address.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != ARPHRD_ETHER {
        return Err(IoError {
            what: format!("{name} is not an Ethernet interface"),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *m = *b as u8;
    }
    ioctl(fd, libc::SIOCGIFMTU, &mut req, name, "read the MTU of")?;
    // SAFETY: SIOCGIFMTU filled the union's MTU.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    ioctl(fd, libc::SIOCGIFFLAGS, &mut req, name, "read the flags of")?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if c_int::from(flags) & libc::IFF_UP == 0 {
        return Err(IoError {
            what: format!("{name} is down (bring it up with `ip link set {name} up`)"),
            source: io::Error::from_raw_os_error(libc::ENETDOWN),
        });
    }
    Ok(Link {
        name: name.to_string(),
        index,
        mac: EthernetAddress(mac),
        mtu: usize::try_from(mtu).unwrap_or(1500),
    })
}

fn ifreq(name: &str) -> Result<libc::ifreq, IoError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(IoError {
            what: format!("{name:?} is not an interface name"),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    // SAFETY: all-zero is a valid `ifreq`, and leaves the name NUL-terminated.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    for (to, from) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as c_char;
    }
    Ok(req)
}

fn ioctl(
    fd: RawFd,
    request: libc::Ioctl,
    req: &mut libc::ifreq,
    name: &str,
    what: &str,
) -> Result<(), IoError> {
    // SAFETY: every request used here reads or writes one `ifreq`, which `req` is.
    if unsafe { libc::ioctl(fd, request, ptr::from_mut(req)) } < 0 {
        return Err(failed(format!("cannot {what} interface {name}")));
    }
    Ok(())
}

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETHTOOL_SGRO: u32 = 0x2c;
const ETH_FLAG_LRO: u32 = 1 << 15;

/// Turns GRO and LRO off on `name`; a driver that has no such offload has nothing to turn off.
fn offloads_off(fd: RawFd, name: &str) -> Result<(), IoError> {
    let ethtool = |cmd: u32, data: u32| -> Result<u32, IoError> {
        let mut req = ifreq(name)?;
        let mut value = EthtoolValue { cmd, data };
        req.ifr_ifru.ifru_data = ptr::addr_of_mut!(value).cast();
        // SAFETY: SIOCETHTOOL with these commands reads and writes one `ethtool_value`, which
        // `ifru_data` points at and which outlives the call.
        if unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, ptr::addr_of_mut!(req)) } < 0 {
            let source = io::Error::last_os_error();
            return match source.raw_os_error() {
                Some(libc::EOPNOTSUPP | libc::EINVAL) => Ok(0),
                _ => Err(IoError {
                    what: format!("cannot turn receive offloads off on {name}"),
                    source,
                }),
            };
        }
        Ok(value.data)
    };
    ethtool(ETHTOOL_SGRO, 0)?;
    let flags = ethtool(ETHTOOL_GFLAGS, 0)?;
    if flags & ETH_FLAG_LRO != 0 {
        ethtool(ETHTOOL_SFLAGS, flags & !ETH_FLAG_LRO)?;
    }
    Ok(())
}

/// What the kernel said about one received frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Its L4 checksum holds only the pseudo-header sum (`TP_STATUS_CSUMNOTREADY`).
    pub partial_checksum: bool,
    /// Its L4 checksum was verified, by the NIC or the kernel (`TP_STATUS_CSUM_VALID`).
    pub checksum_valid: bool,
    /// A VLAN tag was stripped from it.
    pub vlan: bool,
    /// Sent from this host, not received.
    pub outgoing: bool,
    /// Longer than the buffer: cut short.
    pub truncated: bool,
}

/// Control buffer for one frame's ancillary data: room for `tpacket_auxdata` (20 bytes after a
/// 16-byte header), aligned as `cmsghdr` must be.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 64]);

/// Buffers and headers for one `recvmmsg` call, allocated once. The headers point into the
/// boxed buffers, whose heap addresses stay put when the batch moves.
pub struct RxBatch {
    slot: usize,
    bufs: Box<[u8]>,
    iovs: Box<[libc::iovec]>,
    names: Box<[libc::sockaddr_ll]>,
    controls: Box<[Control]>,
    hdrs: Box<[libc::mmsghdr]>,
    received: usize,
}

impl RxBatch {
    /// [`BATCH`] buffers of `slot` bytes: at least the largest frame expected, or frames are
    /// cut short (and not forwarded).
    pub fn new(slot: usize) -> RxBatch {
        let slot = slot.max(ETHERNET_HEADER);
        let mut b = RxBatch {
            slot,
            bufs: vec![0u8; slot * BATCH].into_boxed_slice(),
            iovs: zeroed_slice(),
            names: zeroed_slice(),
            controls: vec![Control([0; 64]); BATCH].into_boxed_slice(),
            hdrs: zeroed_slice(),
            received: 0,
        };
        for (i, buf) in b.bufs.chunks_mut(slot).enumerate() {
            b.iovs[i] = libc::iovec {
                iov_base: buf.as_mut_ptr().cast::<c_void>(),
                iov_len: buf.len(),
            };
        }
        for i in 0..BATCH {
            let h = &mut b.hdrs[i].msg_hdr;
            h.msg_iov = ptr::addr_of_mut!(b.iovs[i]);
            h.msg_iovlen = 1;
            h.msg_name = ptr::addr_of_mut!(b.names[i]).cast();
            h.msg_control = ptr::addr_of_mut!(b.controls[i]).cast();
        }
        b
    }

    /// Resets what `recvmmsg` overwrites.
    fn prepare(&mut self) {
        for h in self.hdrs.iter_mut() {
            h.msg_len = 0;
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = mem::size_of::<Control>();
            h.msg_hdr.msg_flags = 0;
        }
        self.received = 0;
    }

    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// The frames of the last [`Socket::recv`], each as long as it was received (at most the
    /// slot), with what the kernel said about it.
    pub fn frames(&mut self) -> impl Iterator<Item = (&mut [u8], Meta)> + '_ {
        let (slot, received) = (self.slot, self.received);
        let (hdrs, names) = (&self.hdrs, &self.names);
        self.bufs
            .chunks_mut(slot)
            .zip(hdrs.iter().zip(names.iter()))
            .take(received)
            .map(move |(buf, (hdr, name))| {
                let len = (hdr.msg_len as usize).min(buf.len());
                let mut meta = Meta {
                    outgoing: name.sll_pkttype == libc::PACKET_OUTGOING,
                    truncated: hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                    ..Meta::default()
                };
                // SAFETY: the header's control pointer and length describe this frame's
                // control buffer as the kernel filled it.
                if let Some(aux) = unsafe { auxdata(&hdr.msg_hdr) } {
                    meta.partial_checksum = aux.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
                    meta.checksum_valid = aux.tp_status & libc::TP_STATUS_CSUM_VALID != 0;
                    meta.vlan = aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0;
                    meta.truncated |= aux.tp_len > aux.tp_snaplen;
                }
                (buf.get_mut(..len).unwrap_or_default(), meta)
            })
    }
}

/// [`BATCH`] all-zero values of a C struct for which that is a valid value.
fn zeroed_slice<T: CStruct>() -> Box<[T]> {
    // SAFETY: `CStruct` is implemented only for types that are valid all-zero.
    (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect()
}

/// C structs for which all-zero bytes are a valid value (null pointers, zero lengths).
trait CStruct {}
impl CStruct for libc::iovec {}
impl CStruct for libc::sockaddr_ll {}
impl CStruct for libc::mmsghdr {}

/// The `PACKET_AUXDATA` message among a received frame's ancillary data.
///
/// # Safety
/// `msg`'s control pointer and length must describe a control buffer the kernel filled.
unsafe fn auxdata(msg: &libc::msghdr) -> Option<libc::tpacket_auxdata> {
    let want = mem::size_of::<libc::tpacket_auxdata>();
    // SAFETY: the CMSG_* walk stays within the buffer the caller vouches for.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_PACKET
                && h.cmsg_type == libc::PACKET_AUXDATA
                && h.cmsg_len >= libc::CMSG_LEN(want as u32) as usize
            {
                return Some(ptr::read_unaligned(
                    libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>(),
                ));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Room for the send headers of one side, allocated once and lent to a [`TxBatch`].
pub struct TxStore {
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl TxStore {
    /// For up to `capacity` frames per batch.
    pub fn new(capacity: usize) -> TxStore {
        TxStore {
            iovs: Vec::with_capacity(capacity),
            hdrs: Vec::with_capacity(capacity),
        }
    }

    /// An empty batch of frames that live at least as long as it.
    pub fn batch<'a>(&'a mut self) -> TxBatch<'a> {
        self.iovs.clear();
        self.hdrs.clear();
        TxBatch {
            store: self,
            frames: PhantomData,
        }
    }
}

/// Frames to send in one go. It borrows them, so none can be freed or changed before it is
/// sent or dropped.
pub struct TxBatch<'a> {
    store: &'a mut TxStore,
    frames: PhantomData<&'a [u8]>,
}

impl<'a> TxBatch<'a> {
    /// Adds a frame; false (and not added) when the store is full.
    pub fn push(&mut self, frame: &'a [u8]) -> bool {
        if self.store.iovs.len() == self.store.iovs.capacity() {
            return false;
        }
        self.store.iovs.push(libc::iovec {
            // The kernel only reads a frame it sends; iovec's pointer is `*mut` for reading
            // and writing alike.
            iov_base: frame.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: frame.len(),
        });
        true
    }

    pub fn len(&self) -> usize {
        self.store.iovs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.iovs.is_empty()
    }
}

/// What the loop saw, besides what the engine counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub received: u64,
    pub sent: u64,
    /// Frames the kernel refused to send.
    pub send_failed: u64,
    /// Frames handed to the engine with a partial checksum, for it to complete.
    pub checksums_completed: u64,
    /// Frames handed to the engine with a checksum the NIC verified.
    pub checksums_verified: u64,
    /// Frames longer than the buffer or than the egress MTU (segments merged by offloads).
    pub oversize: u64,
    /// Frames whose VLAN tag the NIC stripped.
    pub vlan: u64,
    /// Frames that turned out to be this host's own (kernels before 4.20).
    pub outgoing: u64,
    /// Packets written to the host stack, and read from it.
    pub to_host: u64,
    pub from_host: u64,
    /// Packets for the host that could not be written: no host stack attached, or its
    /// queue full.
    pub host_failed: u64,
    /// Host packets held back while their next hop's MAC was asked for, and those of them
    /// given up on (still unresolved after [`PARK_MS`], or no room to hold them).
    pub parked: u64,
    pub park_expired: u64,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} sent={} send_failed={} checksums_completed={} checksums_verified={} \
             oversize={} vlan={} outgoing={} to_host={} from_host={} host_failed={} parked={} \
             park_expired={}",
            self.received,
            self.sent,
            self.send_failed,
            self.checksums_completed,
            self.checksums_verified,
            self.oversize,
            self.vlan,
            self.outgoing,
            self.to_host,
            self.from_host,
            self.host_failed,
            self.parked,
            self.park_expired
        )
    }
}

/// The loop: two sockets, their buffers, and the engine's clock.
pub struct Driver {
    sockets: [Socket; 2],
    rx: RxBatch,
    /// One ARP frame per received frame, for the engine's replies and requests.
    arps: Box<[[u8; FRAME_LEN]]>,
    /// By side: a forward and an ARP request per received frame at most.
    tx: [TxStore; 2],
    host: Option<Host>,
    parking: Parking,
    stats: Stats,
    start: Instant,
    tick: Option<Tick>,
}

/// What [`Driver::on_tick`] calls.
pub type Tick = Box<dyn FnMut(&mut Engine, &Stats) + Send>;

/// Host packets held at most, waiting for their next hop's MAC.
pub const PARKED: usize = 16;
/// How long a host packet waits for its next hop's MAC (as long as the kernel's ARP retries
/// last: three requests a second apart).
pub const PARK_MS: u64 = 3_000;

/// The host stack's side of the loop: its TUN device and buffers, allocated once.
struct Host {
    tun: Tun,
    slot: usize,
    /// [`BATCH`] packets read from the host, each behind room for an Ethernet header.
    rx: Box<[u8]>,
    arps: Box<[[u8; FRAME_LEN]]>,
}

/// Where a parked frame came from, and so how it is handed to the engine again.
#[derive(Clone, Copy)]
enum Origin {
    Side(Side),
    Host,
}

/// A parked frame: its length, when it was parked, where from.
#[derive(Clone, Copy)]
struct Held {
    len: usize,
    since: u64,
    from: Origin,
}

/// Frames waiting for their next hop's MAC, in [`PARKED`] slots allocated once.
struct Parking {
    slot: usize,
    frames: Box<[u8]>,
    held: [Option<Held>; PARKED],
    /// [`Engine::neighbours_learned`] when parked frames were last tried.
    learned: u64,
}

impl Parking {
    fn new(slot: usize) -> Parking {
        Parking {
            slot,
            frames: vec![0u8; slot * PARKED].into_boxed_slice(),
            held: [None; PARKED],
            learned: 0,
        }
    }

    /// Copies `frame` into a free slot, if there is one.
    fn park(&mut self, frame: &[u8], from: Origin, now: u64, stats: &mut Stats) {
        let free = self
            .held
            .iter_mut()
            .zip(self.frames.chunks_mut(self.slot))
            .find(|(h, _)| h.is_none());
        match free {
            Some((h, room)) if frame.len() <= room.len() => {
                room[..frame.len()].copy_from_slice(frame);
                *h = Some(Held {
                    len: frame.len(),
                    since: now,
                    from,
                });
                stats.parked += 1;
            }
            _ => stats.park_expired += 1,
        }
    }
}

/// Writes the Ethernet header in front of a packet read from the host: the MACs are the
/// engine's to fill, the ethertype says IPv4 or IPv6 (anything else fails to parse, as it
/// should).
fn host_header(frame: &mut [u8]) {
    let ethertype: u16 = match frame.get(ETHERNET_HEADER).map(|b| b >> 4) {
        Some(4) => 0x0800,
        Some(6) => 0x86dd,
        _ => 0,
    };
    if let Some(h) = frame.get_mut(..ETHERNET_HEADER) {
        h.fill(0);
        h[12..].copy_from_slice(&ethertype.to_be_bytes());
    }
}

fn index(side: Side) -> usize {
    match side {
        Side::Lan => 0,
        Side::Wan => 1,
    }
}

impl Driver {
    pub fn new(lan: Socket, wan: Socket) -> Driver {
        let mtu = lan.link.mtu.max(wan.link.mtu);
        // A standard frame always fits, whatever an interface reports.
        let slot = (mtu + ETHERNET_HEADER + VLAN_TAG).max(2048);
        Driver {
            sockets: [lan, wan],
            rx: RxBatch::new(slot),
            arps: vec![[0u8; FRAME_LEN]; BATCH].into_boxed_slice(),
            tx: [TxStore::new(2 * BATCH), TxStore::new(2 * BATCH)],
            host: None,
            parking: Parking::new(slot),
            stats: Stats::default(),
            start: Instant::now(),
            tick: None,
        }
    }

    /// Has `tick` called with the engine and the loop's counters after every sweep (every
    /// [`SWEEP_EVERY_MS`] or so while the loop runs) and every reload, in the loop's thread.
    pub fn on_tick(&mut self, tick: Tick) {
        self.tick = Some(tick);
    }

    /// Connects the host stack behind `tun`: packets the engine delivers are written to it,
    /// what the host sends is read from it (see [`Engine::handle_host`]).
    pub fn attach_host(&mut self, tun: Tun) {
        let slot = self.rx.slot;
        self.host = Some(Host {
            tun,
            slot,
            rx: vec![0u8; slot * BATCH].into_boxed_slice(),
            arps: vec![[0u8; FRAME_LEN]; BATCH].into_boxed_slice(),
        });
    }

    pub fn link(&self, side: Side) -> &Link {
        &self.sockets[index(side)].link
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Milliseconds since the driver was made: the engine's clock.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Forwards frames until `stop` is set (see [`stop_on_signals`]); fails only when a socket
    /// does, which leaves the engine's state as it was for the caller to report.
    pub fn run(&mut self, engine: &mut Engine, stop: &AtomicBool) -> Result<(), IoError> {
        self.serve(engine, stop, None)
    }

    /// [`run`](Driver::run), applying what `inbox` receives (learned addresses and reloads,
    /// see [`learn`](crate::learn)) before each wait for frames: at once when the loop is idle
    /// (the inbox's descriptor is polled with the sockets), else after the batches in hand.
    pub fn run_learning(
        &mut self,
        engine: &mut Engine,
        stop: &AtomicBool,
        inbox: &mut Inbox,
    ) -> Result<(), IoError> {
        self.serve(engine, stop, Some(inbox))
    }

    fn serve(
        &mut self,
        engine: &mut Engine,
        stop: &AtomicBool,
        mut inbox: Option<&mut Inbox>,
    ) -> Result<(), IoError> {
        let mut last_sweep = self.now();
        while !stop.load(Ordering::Relaxed) {
            let now = self.now();
            let mut reloaded = false;
            if let Some(inbox) = inbox.as_deref_mut() {
                let before = inbox.reloads();
                inbox.apply(engine, now);
                reloaded = inbox.reloads() != before;
            }
            if reloaded {
                // What the hook publishes follows the new rules before the reload returns.
                if let Some(tick) = self.tick.as_mut() {
                    tick(engine, &self.stats);
                }
            }
            if now.saturating_sub(last_sweep) >= SWEEP_EVERY_MS {
                engine.sweep(now, SWEEP_BUDGET);
                last_sweep = now;
                if let Some(tick) = self.tick.as_mut() {
                    tick(engine, &self.stats);
                }
            }
            let [lan, wan] = self.sockets.each_ref().map(|s| s.fd.as_raw_fd());
            // A negative descriptor is one `poll` skips: no inbox, nothing to wake for.
            let wake = inbox.as_deref().map_or(-1, Inbox::fd);
            let tun = self.host.as_ref().map_or(-1, |h| h.tun.fd());
            let mut fds = [lan, wan, wake, tun].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `fds` is an array of four valid pollfds.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, POLL_MS) };
            if r < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(failed("cannot wait for frames"));
            }
            for (fd, side) in fds.iter().zip([Side::Lan, Side::Wan]) {
                // POLLERR too: reading takes the pending error (a link going down) off.
                if fd.revents & (libc::POLLIN | libc::POLLERR) != 0 {
                    for _ in 0..ROUNDS {
                        if self.batch(engine, side)? < BATCH {
                            break;
                        }
                    }
                }
            }
            if fds[3].revents & (libc::POLLIN | libc::POLLERR) != 0 {
                for _ in 0..ROUNDS {
                    if self.host_batch(engine)? < BATCH {
                        break;
                    }
                }
            }
            self.unpark(engine);
        }
        Ok(())
    }

    /// Reads up to [`BATCH`] packets from the host stack, hands each to the engine, and sends
    /// what it says; returns how many were read. A packet whose next hop is not resolved yet
    /// is parked.
    fn host_batch(&mut self, engine: &mut Engine) -> Result<usize, IoError> {
        let Some(host) = self.host.as_mut() else {
            return Ok(0);
        };
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mtus = mtus(&self.sockets);
        let stats = &mut self.stats;
        let [lan_tx, wan_tx] = &mut self.tx;
        let mut out = [lan_tx.batch(), wan_tx.batch()];
        let (tun, slot) = (&host.tun, host.slot);
        let mut read = 0;
        for (frame, arp) in host.rx.chunks_mut(slot).zip(host.arps.iter_mut()) {
            let Some(n) = frame
                .get_mut(ETHERNET_HEADER..)
                .map(|room| tun.read_packet(room))
                .transpose()?
                .flatten()
            else {
                break;
            };
            read += 1;
            stats.from_host += 1;
            let frame = &mut frame[..ETHERNET_HEADER + n];
            host_header(frame);
            let action = engine.handle_host(frame, now, arp);
            if unresolved(&action, frame) {
                self.parking.park(frame, Origin::Host, now, stats);
            }
            dispatch(
                action,
                freeze(frame),
                freeze(arp),
                &mut out,
                mtus,
                Some(tun),
                stats,
            );
        }
        send_out(&self.sockets, &mut out, stats);
        Ok(read)
    }

    /// Hands parked frames to the engine again once it has learned a MAC since they were
    /// last tried; gives up on those parked longer than [`PARK_MS`].
    fn unpark(&mut self, engine: &mut Engine) {
        let parking = &mut self.parking;
        if parking.held.iter().all(Option::is_none) {
            return;
        }
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let stats = &mut self.stats;
        for held in parking.held.iter_mut() {
            if held.is_some_and(|h| now.saturating_sub(h.since) >= PARK_MS) {
                *held = None;
                stats.park_expired += 1;
            }
        }
        let learned = engine.neighbours_learned();
        if learned == parking.learned {
            return;
        }
        parking.learned = learned;
        let mtus = mtus(&self.sockets);
        let [lan_tx, wan_tx] = &mut self.tx;
        let mut out = [lan_tx.batch(), wan_tx.batch()];
        for ((frame, held), arp) in parking
            .frames
            .chunks_mut(parking.slot)
            .zip(parking.held.iter_mut())
            .zip(self.arps.iter_mut())
        {
            let Some(h) = *held else {
                continue;
            };
            let Some(frame) = frame.get_mut(..h.len) else {
                *held = None;
                continue;
            };
            let action = match h.from {
                Origin::Side(side) => engine.handle(side, frame, now, arp),
                Origin::Host => engine.handle_host(frame, now, arp),
            };
            if !unresolved(&action, frame) {
                *held = None;
            }
            let tun = self.host.as_ref().map(|h| &h.tun);
            dispatch(
                action,
                freeze(frame),
                freeze(arp),
                &mut out,
                mtus,
                tun,
                stats,
            );
        }
        send_out(&self.sockets, &mut out, stats);
    }

    /// Reads one batch from `side`, hands each frame to the engine, and sends what it says.
    /// Returns how many frames were read.
    fn batch(&mut self, engine: &mut Engine, side: Side) -> Result<usize, IoError> {
        let n = self.sockets[index(side)].recv(&mut self.rx)?;
        if n == 0 {
            return Ok(0);
        }
        let now = self.now();
        let mtus = mtus(&self.sockets);
        let stats = &mut self.stats;
        let [lan_tx, wan_tx] = &mut self.tx;
        let mut out = [lan_tx.batch(), wan_tx.batch()];
        for ((frame, meta), arp) in self.rx.frames().zip(self.arps.iter_mut()) {
            stats.received += 1;
            if meta.outgoing {
                stats.outgoing += 1;
                continue;
            }
            if meta.truncated {
                stats.oversize += 1;
                continue;
            }
            if meta.vlan {
                stats.vlan += 1;
                continue;
            }
            let checksum = if meta.partial_checksum {
                stats.checksums_completed += 1;
                L4Checksum::Partial
            } else if meta.checksum_valid {
                stats.checksums_verified += 1;
                L4Checksum::Verified
            } else {
                L4Checksum::Unverified
            };
            let action = engine.handle_rx(side, frame, RxInfo { checksum }, now, arp);
            // Replayed with `handle`: a partial checksum was completed in place by then, and a
            // checksum the NIC vouched for is valid, so verifying it again only costs time.
            if unresolved(&action, frame) {
                self.parking.park(frame, Origin::Side(side), now, stats);
            }
            let tun = self.host.as_ref().map(|h| &h.tun);
            dispatch(
                action,
                freeze(frame),
                freeze(arp),
                &mut out,
                mtus,
                tun,
                stats,
            );
        }
        send_out(&self.sockets, &mut out, stats);
        Ok(n)
    }
}

/// Whether the engine held `frame` back for want of its next hop's MAC: it asked for it now
/// (a [`Action::Reply`] to a frame that is not itself ARP is that request), or a moment ago.
fn unresolved(action: &Action, frame: &[u8]) -> bool {
    const ARP: [u8; 2] = [0x08, 0x06];
    match action {
        Action::Reply(_) => frame.get(12..14) != Some(&ARP[..]),
        Action::Discard(crate::core::engine::Discard::Unresolved) => true,
        _ => false,
    }
}

/// Sends what each side's batch holds.
fn send_out(sockets: &[Socket; 2], out: &mut [TxBatch<'_>; 2], stats: &mut Stats) {
    for (socket, batch) in sockets.iter().zip(out.iter_mut()) {
        if !batch.is_empty() {
            let sent = socket.send(batch);
            stats.sent += sent.frames as u64;
            stats.send_failed += sent.failed as u64;
        }
    }
}

/// The longest frame each side sends: its MTU and the Ethernet header.
fn mtus(sockets: &[Socket; 2]) -> [usize; 2] {
    sockets.each_ref().map(|s| s.link.mtu + ETHERNET_HEADER)
}

/// Carries out what the engine said of `frame`: queues it (and the ARP request it needs) on
/// the side it leaves by, unless it is longer than that side allows (`mtus`, with the Ethernet
/// header), queues an ARP frame, or writes the packet to the host stack behind `tun`.
fn dispatch<'a>(
    action: Action,
    frame: &'a [u8],
    arp: &'a [u8],
    out: &mut [TxBatch<'a>; 2],
    mtus: [usize; 2],
    tun: Option<&Tun>,
    stats: &mut Stats,
) {
    match action {
        Action::Forward { out: to, ask } => {
            let o = index(to);
            if frame.len() > mtus[o] {
                stats.oversize += 1;
            } else {
                out[o].push(frame);
            }
            if ask {
                out[o].push(arp);
            }
        }
        Action::Reply(to) => {
            out[index(to)].push(arp);
        }
        Action::Deliver { l3, end } => {
            let written = match (tun, frame.get(l3..end)) {
                (Some(tun), Some(packet)) => tun.write_packet(packet),
                _ => false,
            };
            if written {
                stats.to_host += 1;
            } else {
                stats.host_failed += 1;
            }
        }
        Action::Drop(_) | Action::Discard(_) => {}
    }
}

/// A shared borrow for as long as the mutable one was.
fn freeze<T: ?Sized>(r: &mut T) -> &T {
    r
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_: c_int) {
    // An atomic store is async-signal-safe; the loop sees it within POLL_MS.
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGTERM and SIGINT set the returned flag, for [`Driver::run`]. Without
/// `SA_RESTART`, so a wait in progress ends at once.
pub fn stop_on_signals() -> Result<&'static AtomicBool, IoError> {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: all-zero is a valid `sigaction`; the handler only stores to an atomic.
        let r = unsafe {
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = on_stop_signal as extern "C" fn(c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, ptr::null_mut())
        };
        if r < 0 {
            return Err(failed(format!("cannot catch signal {sig}")));
        }
    }
    Ok(&STOP)
}
