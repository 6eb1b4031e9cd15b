//! What the connection table costs per flow: makes a `Conntrack` for 1,048,576 flows, fills
//! it, and prints the process's resident memory (VmRSS of /proc/self/status) at each step,
//! next to the table's own figure (`BYTES_PER_FLOW`, from the sizes of its parts).
//!
//! `cargo run --release -p engine --example conntrack_memory [-- CAPACITY]`
//!
//! Steps: the table is made (its index is written at once, as an empty slot is not all-zero
//! bytes; the entry slab and the free list are reserved and touched only when used), filled
//! with CAPACITY TCP flows, then every flow is expired and swept (which puts every position on
//! the free list) and the table is filled again, so that the last figure is the table with all
//! of its memory touched, as it is after a while in service. The flows' reply tuples are their
//! originals reversed (the NAT-ed shape costs the same: tuples have a fixed size).

use engine::core::conntrack::{Conntrack, State, Timeouts, Tuple, BYTES_PER_FLOW};
use engine::core::packet::proto;
use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::Instant;

const DEFAULT_CAPACITY: usize = 1 << 20;

fn main() -> ExitCode {
    let capacity = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => DEFAULT_CAPACITY,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: conntrack_memory [CAPACITY]");
            return ExitCode::FAILURE;
        }
    };
    match run(capacity) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cannot read /proc/self/status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(capacity: usize) -> std::io::Result<()> {
    let timeouts = Timeouts::default();
    let established_ms = u64::from(timeouts.tcp_established) * 1000;
    let before = rss_bytes()?;
    let mut ct = Conntrack::new(
        capacity,
        timeouts,
        [0x0123_4567_89ab_cdef, 0x0fed_cba9_8765_4321],
    );
    let made = rss_bytes()?;

    let t = Instant::now();
    let opened = fill(&mut ct, capacity, 0);
    let fill_ns = t.elapsed().as_nanos() as f64 / opened.max(1) as f64;
    let full = rss_bytes()?;

    // Every flow expired: one sweep over the whole table frees them all.
    let later = established_ms + 1;
    let swept = ct.sweep(later, capacity);
    let reopened = fill(&mut ct, capacity, later);
    let churned = rss_bytes()?;

    let per = |bytes: u64| bytes as f64 / capacity as f64;
    println!(
        "conntrack capacity {capacity}: {opened} flows opened, {swept} expired and swept, {reopened} opened again ({} held)",
        ct.len()
    );
    println!("bytes per flow (size_of): {BYTES_PER_FLOW}");
    println!("RSS before the table: {:>8.1} MiB", mib(before));
    println!(
        "RSS table made:       {:>8.1} MiB, +{:.1} bytes per flow",
        mib(made),
        per(made.saturating_sub(before))
    );
    println!(
        "RSS table full:       {:>8.1} MiB, +{:.1} bytes per flow",
        mib(full),
        per(full.saturating_sub(before))
    );
    println!(
        "RSS after churn:      {:>8.1} MiB, +{:.1} bytes per flow",
        mib(churned),
        per(churned.saturating_sub(before))
    );
    println!("open: {fill_ns:.0} ns per flow (first fill)");
    Ok(())
}

/// Opens up to `n` distinct TCP flows at `now`; returns how many the table took.
fn fill(ct: &mut Conntrack, n: usize, now: u64) -> usize {
    let server = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));
    let mut opened = 0;
    for i in 0..n {
        // 64 source ports per client address: 16,384 clients for the default capacity.
        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i / 64) as u32));
        let orig = Tuple {
            src: client,
            dst: server,
            sport: 1024 + (i % 64) as u16,
            dport: 443,
            proto: proto::TCP,
        };
        if ct
            .open(orig, orig.reversed(), State::TcpEstablished, Some(0), now)
            .is_ok()
        {
            opened += 1;
        }
    }
    opened
}

fn rss_bytes() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other("no VmRSS line"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
