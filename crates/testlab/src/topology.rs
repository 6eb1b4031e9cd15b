//! The LAN / firewall / WAN topology: three namespaces joined by two veth links, fixed addressing.
//! [`Lab::up`] builds it, [`Lab::down`] / `Drop` / [`teardown`] remove it again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::LabError;
use crate::netns::{ip, Netns};

/// Fixed addressing of every lab (also used by `examples/lab.yaml`).
///
/// ```text
///  lan ns                      fw ns                           wan ns
///  eth0 192.168.50.10/24  <->  lan0 192.168.50.1/24
///       fd00:50::10/64              fd00:50::1/64
///                              wan0 198.51.100.1/24       <->  eth0 198.51.100.20/24
///                                   198.51.100.2/24 (2nd)           fd00:51::20/64
///                                   fd00:51::1/64
/// ```
///
/// The LAN host's default routes point at the firewall; the WAN host has routes to the LAN
/// prefixes via the firewall, so plain (non-NATed) forwarding works until a policy says otherwise.
pub mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// LAN host, `eth0` in the lan namespace.
    pub const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 10);
    /// Firewall's LAN side, `lan0`.
    pub const FW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
    /// Firewall's (primary) WAN address, `wan0`.
    pub const FW_WAN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// Firewall's second WAN address (secondary on `wan0`), for port forwards / SNAT targets.
    pub const FW_WAN2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
    /// WAN host, `eth0` in the wan namespace.
    pub const WAN_HOST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);

    /// LAN host (v6).
    pub const LAN_HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10);
    /// Firewall's LAN side (v6).
    pub const FW_LAN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x1);
    /// Firewall's WAN side (v6).
    pub const FW_WAN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x51, 0, 0, 0, 0, 0, 0x1);
    /// WAN host (v6).
    pub const WAN_HOST6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x51, 0, 0, 0, 0, 0, 0x20);

    /// LAN prefix 192.168.50.0/24.
    pub const LAN_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 0);
    /// WAN prefix 198.51.100.0/24.
    pub const WAN_NET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
    /// Prefix length of both v4 links.
    pub const PREFIX_LEN: u8 = 24;
    /// LAN prefix fd00:50::/64.
    pub const LAN_NET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0);
    /// WAN prefix fd00:51::/64.
    pub const WAN_NET6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x51, 0, 0, 0, 0, 0, 0);
    /// Prefix length of both v6 links.
    pub const PREFIX_LEN6: u8 = 64;
}

/// Interface names inside the namespaces (they live in the namespaces only, never on the host).
pub mod ifname {
    /// The LAN host's interface.
    pub const LAN_HOST: &str = "eth0";
    /// The firewall's LAN-side interface.
    pub const FW_LAN: &str = "lan0";
    /// The firewall's WAN-side interface.
    pub const FW_WAN: &str = "wan0";
    /// The WAN host's interface.
    pub const WAN_HOST: &str = "eth0";
}

/// The names of a lab's three namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabSpec {
    pub lan_ns: String,
    pub fw_ns: String,
    pub wan_ns: String,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl LabSpec {
    /// Names unique to this process and call: `{prefix}-{pid}-{counter}-{lan,fw,wan}`,
    /// so labs can be built in parallel by threads and processes.
    pub fn unique(prefix: &str) -> LabSpec {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{prefix}-{}-{n}", std::process::id());
        LabSpec {
            lan_ns: format!("{base}-lan"),
            fw_ns: format!("{base}-fw"),
            wan_ns: format!("{base}-wan"),
        }
    }

    /// Fixed names chosen by the caller (`ward lab up` uses `lan`, `fw`, `wan`).
    pub fn named(lan: &str, fw: &str, wan: &str) -> LabSpec {
        LabSpec {
            lan_ns: lan.to_string(),
            fw_ns: fw.to_string(),
            wan_ns: wan.to_string(),
        }
    }

    /// The three names in the order lan, fw, wan.
    pub fn names(&self) -> [&str; 3] {
        [&self.lan_ns, &self.fw_ns, &self.wan_ns]
    }

    /// Handle to the LAN host namespace.
    pub fn lan(&self) -> Netns {
        Netns::new(&self.lan_ns)
    }
    /// Handle to the firewall namespace.
    pub fn fw(&self) -> Netns {
        Netns::new(&self.fw_ns)
    }
    /// Handle to the WAN host namespace.
    pub fn wan(&self) -> Netns {
        Netns::new(&self.wan_ns)
    }

    /// Checks the names are usable as `ip netns` names and distinct.
    pub fn validate(&self) -> Result<(), LabError> {
        for name in self.names() {
            let ok = !name.is_empty()
                && name.len() <= 200
                && name != "."
                && name != ".."
                && !name.starts_with('-')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(LabError::Spec(format!(
                    "namespace name {name:?} must be 1-200 chars of [A-Za-z0-9._-], not start with '-'"
                )));
            }
        }
        let [a, b, c] = self.names();
        if a == b || b == c || a == c {
            return Err(LabError::Spec(format!(
                "namespace names must be distinct, got lan={a:?} fw={b:?} wan={c:?}"
            )));
        }
        Ok(())
    }
}

impl Default for LabSpec {
    /// `lan`, `fw`, `wan`: the names `ward lab up` uses.
    fn default() -> LabSpec {
        LabSpec::named("lan", "fw", "wan")
    }
}

/// Who forwards in the firewall namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Firewall {
    /// The kernel: `lan0` and `wan0` hold the firewall's addresses and IP forwarding is on,
    /// as ward's kernel data plane needs.
    #[default]
    Kernel,
    /// A userspace data plane (`ward engine`) that owns the firewall's addresses: `lan0` and
    /// `wan0` are up with no address at all (IPv6 is off on them, so not even a link-local
    /// one) and forwarding is off, so the kernel neither answers for the firewall's
    /// addresses nor forwards anything. The LAN and WAN hosts are set up as for `Kernel`.
    Userspace,
}

/// A running lab. Dropping it deletes its namespaces (best effort); see also [`Lab::down`].
#[derive(Debug)]
pub struct Lab {
    pub spec: LabSpec,
    pub firewall: Firewall,
    /// Namespaces this value created and therefore deletes; emptied by `down` / `leak`.
    owned: Vec<Netns>,
}

/// How long [`Lab::up`] waits for links to come up and v6 addresses to become usable.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

impl Lab {
    /// Creates the three namespaces, the veth links, addresses, routes and sysctls, and waits
    /// until the links are up and every address is usable.
    ///
    /// Fails (without touching them) if any of the namespaces already exists. On any later
    /// failure it deletes the namespaces it created before returning the error.
    pub fn up(spec: LabSpec) -> Result<Lab, LabError> {
        Lab::up_with(spec, Firewall::Kernel)
    }

    /// [`Lab::up`] with the firewall namespace set up for `firewall`.
    pub fn up_with(spec: LabSpec, firewall: Firewall) -> Result<Lab, LabError> {
        spec.validate()?;
        let mut lab = Lab {
            spec,
            firewall,
            owned: Vec::new(),
        };
        // If anything below fails, `lab` is dropped and deletes what is in `owned`.
        for ns in [lab.lan(), lab.fw(), lab.wan()] {
            if ns.exists() {
                return Err(LabError::AlreadyExists {
                    name: ns.name().to_string(),
                });
            }
            ip(&["netns", "add", ns.name()])?;
            lab.owned.push(ns);
        }
        lab.configure()?;
        Ok(lab)
    }

    fn configure(&self) -> Result<(), LabError> {
        use addr::*;
        let (lan, fw, wan) = (self.lan(), self.fw(), self.wan());

        let kernel_routes = self.firewall == Firewall::Kernel;
        // Per-namespace sysctls first, so that devices created below inherit `default.*`.
        for (ns, router) in [(&lan, false), (&fw, kernel_routes), (&wan, false)] {
            ns.ip(&["link", "set", "lo", "up"])?;
            let fwd = if router { "1" } else { "0" };
            for (key, value) in [
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
                // Hosts must not take RAs from anything; the fw is the only router.
                ("net.ipv6.conf.default.accept_ra", "0"),
                // IPv4 conf/{all,default} is inherited from the host's namespace: make it
                // deterministic instead (reverse-path filtering is the firewall policy's job).
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                ("net.ipv4.ip_forward", fwd),
                ("net.ipv6.conf.all.forwarding", fwd),
                // ICMP errors (port unreachable, reject) are rate-limited per peer: after a
                // burst of 6, one per second. Tests expecting `Refused` would turn flaky.
                ("net.ipv4.icmp_ratelimit", "0"),
                ("net.ipv6.icmp.ratelimit", "0"),
                // Unprivileged ICMP "ping" sockets for everyone (per-namespace setting).
                ("net.ipv4.ping_group_range", "0 2147483647"),
            ] {
                ns.set_sysctl(key, value)?;
            }
        }
        if !kernel_routes {
            // Before the veths exist, so that they never get a link-local address.
            fw.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }

        // veth pairs, created directly inside the namespaces (never on the host).
        fw.ip(&[
            "link",
            "add",
            ifname::FW_LAN,
            "type",
            "veth",
            "peer",
            "name",
            ifname::LAN_HOST,
            "netns",
            lan.name(),
        ])?;
        fw.ip(&[
            "link",
            "add",
            ifname::FW_WAN,
            "type",
            "veth",
            "peer",
            "name",
            ifname::WAN_HOST,
            "netns",
            wan.name(),
        ])?;

        let links = [
            (&lan, ifname::LAN_HOST),
            (&fw, ifname::FW_LAN),
            (&fw, ifname::FW_WAN),
            (&wan, ifname::WAN_HOST),
        ];
        for (ns, dev) in links {
            ns.ip(&["link", "set", "dev", dev, "up"])?;
        }

        let addrs: [(&Netns, &str, String); 9] = [
            (&lan, ifname::LAN_HOST, format!("{LAN_HOST}/{PREFIX_LEN}")),
            (&lan, ifname::LAN_HOST, format!("{LAN_HOST6}/{PREFIX_LEN6}")),
            (&fw, ifname::FW_LAN, format!("{FW_LAN}/{PREFIX_LEN}")),
            (&fw, ifname::FW_LAN, format!("{FW_LAN6}/{PREFIX_LEN6}")),
            (&fw, ifname::FW_WAN, format!("{FW_WAN}/{PREFIX_LEN}")),
            (&fw, ifname::FW_WAN, format!("{FW_WAN2}/{PREFIX_LEN}")),
            (&fw, ifname::FW_WAN, format!("{FW_WAN6}/{PREFIX_LEN6}")),
            (&wan, ifname::WAN_HOST, format!("{WAN_HOST}/{PREFIX_LEN}")),
            (&wan, ifname::WAN_HOST, format!("{WAN_HOST6}/{PREFIX_LEN6}")),
        ];
        for (ns, dev, cidr) in &addrs {
            if !kernel_routes && ns.name() == fw.name() {
                continue;
            }
            if cidr.contains(':') {
                ns.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"])?;
            } else {
                ns.ip(&["addr", "add", cidr, "dev", dev])?;
            }
        }

        self.wait_ready(&links)?;

        let (fw_lan, fw_lan6) = (FW_LAN.to_string(), FW_LAN6.to_string());
        let (fw_wan, fw_wan6) = (FW_WAN.to_string(), FW_WAN6.to_string());
        let lan_net = format!("{LAN_NET}/{PREFIX_LEN}");
        let lan_net6 = format!("{LAN_NET6}/{PREFIX_LEN6}");
        lan.ip(&["route", "add", "default", "via", &fw_lan])?;
        lan.ip(&["-6", "route", "add", "default", "via", &fw_lan6])?;
        wan.ip(&["route", "add", &lan_net, "via", &fw_wan])?;
        wan.ip(&["-6", "route", "add", &lan_net6, "via", &fw_wan6])?;
        Ok(())
    }

    /// Waits until every link reports `state UP` (the kernel's linkwatch has activated its
    /// qdisc, so packets are no longer dropped) and no v6 address is tentative.
    fn wait_ready(&self, links: &[(&Netns, &str)]) -> Result<(), LabError> {
        let start = Instant::now();
        loop {
            let mut pending = Vec::new();
            for (ns, dev) in links {
                let link = ns.ip(&["-o", "link", "show", "dev", dev])?;
                if !link.contains("state UP") || !link.contains("LOWER_UP") {
                    pending.push(format!("{}/{dev} not up: {}", ns.name(), link.trim()));
                }
                let tentative = ns.ip(&["-o", "-6", "addr", "show", "dev", dev, "tentative"])?;
                if !tentative.trim().is_empty() {
                    pending.push(format!(
                        "{}/{dev} tentative: {}",
                        ns.name(),
                        tentative.trim()
                    ));
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(LabError::NotReady {
                    waited: READY_TIMEOUT,
                    detail: pending.join("; "),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Deletes the lab's namespaces, reporting any failure.
    pub fn down(mut self) -> Result<(), LabError> {
        let owned = std::mem::take(&mut self.owned);
        delete_all(&owned)
    }

    /// Keeps the namespaces after this value (and the process) is gone; for `ward lab up`.
    pub fn leak(mut self) -> LabSpec {
        self.owned.clear();
        self.spec.clone()
    }

    /// The LAN host namespace.
    pub fn lan(&self) -> Netns {
        self.spec.lan()
    }
    /// The firewall namespace.
    pub fn fw(&self) -> Netns {
        self.spec.fw()
    }
    /// The WAN host namespace.
    pub fn wan(&self) -> Netns {
        self.spec.wan()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let owned = std::mem::take(&mut self.owned);
        if let Err(e) = delete_all(&owned) {
            eprintln!("testlab: best-effort teardown: {e}");
        }
    }
}

/// Deletes the spec's namespaces if they exist (for `ward lab down`). Missing ones are fine.
pub fn teardown(spec: &LabSpec) -> Result<(), LabError> {
    spec.validate()?;
    delete_all(&[spec.lan(), spec.fw(), spec.wan()])
}

/// Deletes namespaces left behind by dead processes that used [`LabSpec::unique`] with this
/// `prefix` (e.g. after a SIGKILLed test run). Returns the names it deleted.
pub fn reap_stale(prefix: &str) -> Result<Vec<String>, LabError> {
    let dir = match std::fs::read_dir(crate::netns::NETNS_DIR) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LabError::Io {
                ns: String::new(),
                what: format!("listing {}", crate::netns::NETNS_DIR),
                source,
            })
        }
    };
    let mut stale = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')) else {
            continue;
        };
        let mut parts = rest.split('-');
        let (Some(pid), Some(counter), Some(role), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if counter.parse::<u64>().is_err() || !matches!(role, "lan" | "fw" | "wan") {
            continue;
        }
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            stale.push(Netns::new(name));
        }
    }
    delete_all(&stale)?;
    Ok(stale.into_iter().map(|ns| ns.name().to_string()).collect())
}

fn delete_all(namespaces: &[Netns]) -> Result<(), LabError> {
    let mut errors = Vec::new();
    for ns in namespaces {
        if !ns.exists() {
            continue;
        }
        if let Err(e) = ip(&["netns", "delete", ns.name()]) {
            // Lost a race with someone else deleting it: that is fine.
            if ns.exists() {
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown(errors))
    }
}
