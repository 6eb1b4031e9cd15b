//! Where the DNS proxy listens and which resolvers it asks, from the policy plus two facts
//! about the running system that the caller looks up (interface addresses, resolv.conf).

use crate::compile::DnsProxy;
use policy::{Policy, Topology};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether the policy needs ward's DNS proxy: it has name rules, or its `dns` section asks
/// for a listen address or interception explicitly.
pub fn uses_dns_proxy(policy: &Policy) -> bool {
    policy.rules.iter().any(|r| !r.destination_fqdn.is_empty())
        || !policy.dns.listen.is_empty()
        || policy.dns.intercept == Some(true)
}

/// The proxy's addresses for this policy, or `None` when it runs no proxy.
///
/// - listen: `dns.listen`; else, with `interfaces`, the first address of the first LAN
///   interface that has one (`lan_addrs(name)`, IPv4 first), port 53; else, with SNAT only
///   (every non-WAN interface is LAN side), the wildcard addresses, admitted from the LAN
///   side only; else (a host firewall, serving its own processes) the loopback addresses.
/// - upstreams: `upstream_dns`; else the `nameserver`s of resolv.conf (`system_resolvers`),
///   minus the proxy's own listen addresses.
/// - intercept: `dns.intercept`, by default on whenever there is a LAN side.
pub fn plan(
    policy: &Policy,
    lan_addrs: impl Fn(&str) -> Vec<IpAddr>,
    system_resolvers: impl FnOnce() -> Vec<IpAddr>,
) -> Result<Option<DnsProxy>, String> {
    if !uses_dns_proxy(policy) {
        return Ok(None);
    }
    let topo = policy.topology();
    let listen = if !policy.dns.listen.is_empty() {
        policy.dns.listen.clone()
    } else if let Topology::Gateway { lan, .. } = &topo {
        let first = lan.iter().find_map(|name| {
            let mut addrs = lan_addrs(name);
            addrs.sort_by_key(|a| a.is_ipv6());
            addrs.into_iter().next()
        });
        match first {
            Some(ip) => vec![SocketAddr::new(ip, 53)],
            None => {
                return Err(format!(
                    "the DNS proxy needs an address to listen on: no LAN interface ({}) has one; set dns.listen",
                    lan.join(", ")
                ))
            }
        }
    } else if let Topology::SnatWan { .. } = topo {
        vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 53),
        ]
    } else {
        vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 53),
        ]
    };
    let upstreams: Vec<SocketAddr> = if !policy.defaults.upstream_dns.is_empty() {
        policy.defaults.upstream_dns.clone()
    } else {
        system_resolvers()
            .into_iter()
            .map(|ip| SocketAddr::new(ip, 53))
            .filter(|u| !listen.contains(u))
            .collect()
    };
    if upstreams.is_empty() {
        return Err(
            "the DNS proxy has no upstream resolver: set defaults.upstream_dns (resolv.conf names none besides ward itself)"
                .into(),
        );
    }
    let intercept = policy
        .dns
        .intercept
        .unwrap_or(!matches!(topo, Topology::Host));
    Ok(Some(DnsProxy {
        listen,
        upstreams,
        intercept,
    }))
}

/// The `nameserver` lines of a resolv.conf text.
pub fn resolv_conf_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        // A scoped IPv6 resolver ("fe80::1%eth0") cannot be a plain socket address; skip it.
        .filter_map(|a| a.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pol(yaml: &str) -> Policy {
        policy::parse_str(yaml, "t.yaml").expect("valid").policy
    }

    const GW: &str = "interfaces: {lan: [lan0, lan1], wan: [wan0]}\n";
    const NAME_RULE: &str =
        "rules:\n  - {id: gh, direction: egress, destination_fqdn: github.com, action: accept}\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn no_name_rules_no_proxy() {
        let p = pol(&format!(
            "{GW}rules:\n  - {{id: a, destination: 10.0.0.1, action: accept}}\n"
        ));
        assert_eq!(plan(&p, |_| vec![], Vec::new), Ok(None));
    }

    #[test]
    fn gateway_defaults_first_lan_address_and_intercept() {
        let p = pol(&format!("{GW}{NAME_RULE}"));
        let d = plan(
            &p,
            |n| match n {
                "lan0" => vec![],
                "lan1" => vec![ip("fd00::1"), ip("10.1.0.1")],
                _ => vec![ip("203.0.113.1")],
            },
            || vec![ip("127.0.0.53"), ip("9.9.9.9")],
        )
        .expect("plan")
        .expect("proxy");
        assert_eq!(d.listen, vec!["10.1.0.1:53".parse().expect("sa")]);
        assert_eq!(
            d.upstreams,
            vec![
                "127.0.0.53:53".parse().expect("sa"),
                "9.9.9.9:53".parse().expect("sa")
            ]
        );
        assert!(d.intercept);
    }

    #[test]
    fn explicit_settings_win() {
        let p = pol(&format!(
            "{GW}defaults: {{upstream_dns: [\"1.1.1.1:5353\"]}}\ndns: {{listen: [\"10.9.9.9:5300\"], intercept: false}}\n{NAME_RULE}"
        ));
        let d = plan(&p, |_| panic!("not asked"), || panic!("not asked"))
            .expect("plan")
            .expect("proxy");
        assert_eq!(d.listen, vec!["10.9.9.9:5300".parse().expect("sa")]);
        assert_eq!(d.upstreams, vec!["1.1.1.1:5353".parse().expect("sa")]);
        assert!(!d.intercept);
    }

    #[test]
    fn host_mode_listens_on_loopback_without_intercept() {
        let p = pol(NAME_RULE.replace("direction: egress, ", "").as_str());
        let d = plan(&p, |_| vec![], || vec![ip("192.0.2.53")])
            .expect("plan")
            .expect("proxy");
        assert!(d.listen.iter().all(|l| l.ip().is_loopback()));
        assert!(!d.intercept);
    }

    #[test]
    fn snat_only_listens_on_wildcards_and_intercepts() {
        let p = pol(&format!(
            "nat:\n  snat:\n    - {{out_interface: wan0, source: 10.0.0.0/8, masquerade: true}}\n{NAME_RULE}"
        ));
        let d = plan(&p, |_| vec![], || vec![ip("192.0.2.53")])
            .expect("plan")
            .expect("proxy");
        assert!(d.listen.iter().all(|l| l.ip().is_unspecified()));
        assert!(d.intercept);
    }

    #[test]
    fn clear_errors_without_address_or_upstream() {
        let p = pol(&format!("{GW}{NAME_RULE}"));
        let e = plan(&p, |_| vec![], || vec![ip("9.9.9.9")]).expect_err("no lan address");
        assert!(e.contains("set dns.listen"), "{e}");
        let e = plan(&p, |_| vec![ip("10.1.0.1")], Vec::new).expect_err("no upstream");
        assert!(e.contains("upstream_dns"), "{e}");
    }

    #[test]
    fn resolv_conf_parsing() {
        let text = "# c\nsearch lan\nnameserver 10.0.0.1\nnameserver  fd00::53 \nnameserver fe80::1%eth0\nnameserver\noptions edns0\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec![ip("10.0.0.1"), ip("fd00::53")]
        );
    }
}
