//! The TUN device through which the engine talks to a host stack: the kernel of a network
//! namespace that holds the engine's own addresses on this device only, so that a program
//! there (`ward engine`'s DNS proxy) has ordinary sockets on them. Packets the engine hands to
//! the host ([`Action::Deliver`](crate::core::engine::Action::Deliver)) are written to it;
//! what the host sends through it is read and given to
//! [`Engine::handle_host`](crate::core::engine::Engine::handle_host).
//!
//! That namespace must not be the one of the engine's own interfaces: its kernel would take
//! frames arriving there for its addresses as its own and answer them past the engine. The
//! caller creates the device where it wants the host stack (see [`Tun::open`]).
//!
//! Configured with the classic interface and routing ioctls: a few fixed settings, for which
//! rtnetlink's message building would be the larger part of the code.

use super::{failed, ifreq, ioctl, IoError};
use ::core::ffi::{c_char, c_short, c_ulong, c_ushort, c_void};
use ::core::{mem, ptr};
use std::ffi::CString;
use std::format;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::string::{String, ToString};

/// A TUN device: IP packets, no Ethernet header, no packet-information prefix.
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
}

impl Tun {
    /// Creates the TUN device `name` in the calling thread's network namespace and opens it,
    /// non-blocking. The device goes away when the returned value is dropped.
    pub fn open(name: &str) -> Result<Tun, IoError> {
        let path = c"/dev/net/tun";
        // SAFETY: a valid NUL-terminated path; the result is checked before use.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(failed(
                "cannot open /dev/net/tun (the host stack needs the tun module and CAP_NET_ADMIN)",
            ));
        }
        // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(name)?;
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, ptr::addr_of_mut!(req)) } < 0 {
            return Err(failed(format!("cannot create the TUN device {name}")));
        }
        Ok(Tun {
            fd,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Gives the device `addrs` (address, prefix length), brings it up and routes everything
    /// not on their subnets through it. Order matters: the kernel sends what is off every
    /// subnet from the first address, so put the engine's WAN address first.
    pub fn configure(&self, addrs: &[(Ipv4Addr, u8)]) -> Result<(), IoError> {
        // SAFETY: plain system call; the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(failed("cannot open a socket to configure the TUN device"));
        }
        // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let fd = sock.as_raw_fd();
        let name = &self.name;
        for (i, &(ip, len)) in addrs.iter().enumerate() {
            // The first address is the device's own, the others are aliases of it.
            let label = match i {
                0 => name.clone(),
                n => format!("{name}:{n}"),
            };
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            for (request, value, what) in [
                (libc::SIOCSIFADDR, ip, "set an address on"),
                (
                    libc::SIOCSIFNETMASK,
                    Ipv4Addr::from(mask),
                    "set a netmask on",
                ),
            ] {
                let mut req = ifreq(&label)?;
                req.ifr_ifru.ifru_addr = sockaddr(value);
                ioctl(fd, request, &mut req, &label, what)?;
            }
        }
        let mut req = ifreq(name)?;
        ioctl(fd, libc::SIOCGIFFLAGS, &mut req, name, "read the flags of")?;
        // SAFETY: SIOCGIFFLAGS filled the union's flags.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
        ioctl(fd, libc::SIOCSIFFLAGS, &mut req, name, "bring up")?;

        let dev = CString::new(name.as_str()).map_err(|_| IoError {
            what: format!("{name:?} is not an interface name"),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        let any = sockaddr(Ipv4Addr::UNSPECIFIED);
        let mut route = RtEntry {
            rt_pad1: 0,
            rt_dst: any,
            rt_gateway: any,
            rt_genmask: any,
            rt_flags: RTF_UP,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_ptr().cast_mut(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        // SAFETY: SIOCADDRT reads one `rtentry`, which `route` is laid out as; its device
        // name points at `dev`, alive until after the call.
        if unsafe { libc::ioctl(fd, libc::SIOCADDRT, ptr::addr_of_mut!(route)) } < 0 {
            return Err(failed(format!("cannot route through {name}")));
        }
        Ok(())
    }

    /// Reads one packet into `buf`; `None` when none is queued.
    pub fn read_packet(&self, buf: &mut [u8]) -> Result<Option<usize>, IoError> {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
        if n < 0 {
            let source = io::Error::last_os_error();
            return match source.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(None),
                _ => Err(IoError {
                    what: format!("cannot read from {}", self.name),
                    source,
                }),
            };
        }
        Ok(Some(n as usize))
    }

    /// Writes one packet; false if the kernel refused it (a full queue: it is dropped).
    pub fn write_packet(&self, packet: &[u8]) -> bool {
        // SAFETY: writes `packet`, which lives through the call.
        let n = unsafe { libc::write(self.fd(), packet.as_ptr().cast::<c_void>(), packet.len()) };
        n >= 0 && n as usize == packet.len()
    }
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `sockaddr_in` and `sockaddr` are both 16 bytes; the kernel reads the former
    // where the latter is declared, which is what the type punning in C does too.
    unsafe { mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

const RTF_UP: c_ushort = 0x0001;

/// `struct rtentry` of `<net/route.h>` (the libc crate has it for musl only).
#[repr(C)]
struct RtEntry {
    rt_pad1: c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: c_ushort,
    rt_pad2: c_short,
    rt_pad3: c_ulong,
    rt_pad4: *mut c_void,
    rt_metric: c_short,
    rt_dev: *mut c_char,
    rt_mtu: c_ulong,
    rt_window: c_ulong,
    rt_irtt: c_ushort,
}
