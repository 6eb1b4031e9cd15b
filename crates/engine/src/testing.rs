//! Fixtures for tests and benchmarks of the engine, here and in ward: a two-sided engine at
//! fixed addresses, frames from its LAN host, and the engine on a packet loop of its own.
//! Not part of the data plane; nothing in it is used outside tests and benches.

use crate::core::arp::{Own, Side, FRAME_LEN};
use crate::core::engine::{Action, Config, Engine, Interface, Rules};
use crate::learn::Inbox;
use core::net::Ipv4Addr;
use smoltcp::wire::{EthernetAddress, Ipv4Packet, TcpPacket, UdpPacket};
use std::sync::mpsc;
use std::thread;
use std::vec::Vec;

pub const LAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
pub const WAN_MAC: EthernetAddress = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
pub const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];
pub const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
pub const WAN_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The LAN host.
pub const HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);

/// `yaml`, which must be valid.
pub fn policy(yaml: &str) -> policy::Policy {
    match policy::parse_str(yaml, "test.yaml") {
        Ok(c) => c.policy,
        Err(e) => panic!("{e}"),
    }
}

/// lan0 at [`LAN_IP`]/24 and wan0 at [`WAN_IP`]/24 with [`GATEWAY`], fixed hash keys.
pub fn config(conntrack_capacity: usize, neighbour_capacity: usize) -> Config {
    let own = |mac, ip| Own {
        mac,
        ip,
        prefix_len: 24,
    };
    Config {
        lan: Interface {
            name: "lan0".into(),
            own: own(LAN_MAC, LAN_IP),
        },
        wan: Interface {
            name: "wan0".into(),
            own: own(WAN_MAC, WAN_IP),
        },
        gateway: Some(GATEWAY),
        conntrack_capacity,
        neighbour_capacity,
        conntrack_key: [1, 2],
        neighbour_key: [3, 4],
    }
}

/// The engine for `policy` in [`config`], which knows the gateway's MAC (the gateway asked
/// for the engine's address), so that an accepted packet is forwarded rather than held.
pub fn engine(policy: &policy::Policy, conntrack_capacity: usize, neighbours: usize) -> Engine {
    let config = config(conntrack_capacity, neighbours);
    let mut e = match Engine::new(Rules::compile(policy, [5, 6]), config) {
        Ok(e) => e,
        Err(err) => panic!("{err}"),
    };
    let mut out = [0u8; FRAME_LEN];
    let mut ask = arp_request(GW_MAC, GATEWAY, WAN_IP);
    assert_eq!(
        e.handle(Side::Wan, &mut ask, 0, &mut out),
        Action::Reply(Side::Wan)
    );
    e
}

/// `mac` at `ip` asks who has `target`.
pub fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = std::vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A TCP SYN from the LAN host's port `sport` to `dst`:`dport`.
pub fn host_syn(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = host_ip(dst, 6, 40);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    TcpPacket::new_unchecked(&mut f[34..]).fill_checksum(&HOST.into(), &dst.into());
    f
}

/// A UDP datagram ("ping") from the LAN host's port `sport` to `dst`:`dport`.
pub fn host_datagram(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = host_ip(dst, 17, 32);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 12, 0, 0, b'p', b'i', b'n', b'g']);
    UdpPacket::new_unchecked(&mut f[34..]).fill_checksum(&HOST.into(), &dst.into());
    f
}

/// Ethernet and IPv4 headers of a packet from the LAN host, `total` bytes of IP.
fn host_ip(dst: Ipv4Addr, proto: u8, total: u16) -> Vec<u8> {
    let mut f = LAN_MAC.0.to_vec();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    f.extend_from_slice(&HOST.octets());
    f.extend_from_slice(&dst.octets());
    Ipv4Packet::new_unchecked(&mut f[14..34]).fill_checksum();
    f
}

enum Msg {
    /// The engine's clock moves to this time.
    Clock(u64),
    /// A frame arriving on the LAN side.
    Frame(Vec<u8>),
}

/// A stand-in for the driver's loop (as `ward engine` runs it) on a thread of its own: it owns
/// the engine and its clock, applies the inbox whenever its descriptor wakes it, and takes
/// messages in order, so a batch committed after a clock change is applied at the new time.
pub struct Loop {
    msgs: Option<mpsc::Sender<Msg>>,
    actions: mpsc::Receiver<Option<Action>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Loop {
    pub fn start(mut engine: Engine, mut inbox: Inbox) -> Loop {
        let (msgs, rx) = mpsc::channel::<Msg>();
        let (tx, actions) = mpsc::channel();
        let thread = thread::spawn(move || {
            let mut now = 0;
            loop {
                let mut fd = libc::pollfd {
                    fd: inbox.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut fd, 1, 5) };
                inbox.apply(&mut engine, now);
                loop {
                    let reply = match rx.try_recv() {
                        Ok(Msg::Clock(t)) => {
                            now = t;
                            None
                        }
                        Ok(Msg::Frame(mut frame)) => {
                            let mut out = [0u8; FRAME_LEN];
                            Some(engine.handle(Side::Lan, &mut frame, now, &mut out))
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => return,
                    };
                    if tx.send(reply).is_err() {
                        return;
                    }
                }
            }
        });
        Loop {
            msgs: Some(msgs),
            actions,
            thread: Some(thread),
        }
    }

    fn send(&self, msg: Msg) -> Option<Action> {
        if let Some(m) = &self.msgs {
            m.send(msg).expect("loop running");
        }
        self.actions.recv().expect("the loop answers")
    }

    /// Sets the engine's clock; returns once the loop has it.
    pub fn clock(&self, now: u64) {
        assert_eq!(self.send(Msg::Clock(now)), None);
    }

    /// What the engine does with `frame`, arriving on the LAN side at engine time `now`.
    pub fn handle(&self, now: u64, frame: Vec<u8>) -> Action {
        self.clock(now);
        self.send(Msg::Frame(frame)).expect("an action")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.msgs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
