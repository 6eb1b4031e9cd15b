//! Measures what the learned-address cache costs: learns 1,000,000 distinct addresses and
//! prints the process's resident memory (from /proc/self/statm) before and after.
//!
//! `cargo run --release -p dns --example cache_memory [-- one-per-name]`: by default the
//! addresses come 250 to a name (a CDN-like shape); `one-per-name` gives every address its own
//! name, the worst case for the per-name bookkeeping.

use dns::{Answer, Cache, Matcher, Record, RuleIdx};
use policy::{DnsSettings, FqdnPattern};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::ExitCode;

const TOTAL: u32 = 1_000_000;

fn main() -> ExitCode {
    let per_name: u32 = match std::env::args().nth(1).as_deref() {
        None => 250,
        Some("one-per-name") => 1,
        Some(other) => {
            eprintln!("unknown argument {other:?}; the only one is 'one-per-name'");
            return ExitCode::FAILURE;
        }
    };
    let patterns = [FqdnPattern::Subtree("example.com".into())];
    let matcher = Matcher::new([(RuleIdx(0), &patterns[..])]);
    let mut cache = Cache::new(&DnsSettings {
        max_ips_per_name: per_name,
        capacity: TOTAL,
        ..DnsSettings::default()
    });

    let before = match rss_bytes() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read /proc/self/statm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut adds = 0usize;
    for n in 0..TOTAL / per_name {
        let name = format!("n{n}.example.com");
        let records = (n * per_name..(n + 1) * per_name)
            .map(|i| Record::Addr {
                owner: name.clone(),
                addr: addr(i),
                ttl: 3600,
            })
            .collect();
        let answer = Answer {
            qname: name,
            records,
        };
        adds += cache.learn(u64::from(n), &answer, &matcher).len();
    }
    let after = match rss_bytes() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cannot read /proc/self/statm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let grown = after.saturating_sub(before);
    println!(
        "{} addresses ({per_name} per name, half IPv4, half IPv6), {adds} updates",
        cache.len()
    );
    println!("RSS before: {:>8.1} MiB", mib(before));
    println!("RSS after:  {:>8.1} MiB", mib(after));
    println!(
        "cache:      {:>8.1} MiB, {} bytes per address",
        mib(grown),
        grown / u64::from(TOTAL)
    );
    ExitCode::SUCCESS
}

/// Distinct addresses, alternating between families.
fn addr(i: u32) -> IpAddr {
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i))
    } else {
        IpAddr::V6(Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)))
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Resident set size: statm's second field, in pages.
fn rss_bytes() -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse::<u64>().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected contents {statm:?}")))?;
    Ok(pages * page_size())
}

/// The kernel's page size, from `getconf` (no libc binding needed); 4 KiB if that fails.
fn page_size() -> u64 {
    std::process::Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}
