//! The Prometheus metrics `ward run` and `ward engine` serve on `--metrics` (names and labels
//! of SPEC §7), gathered at each scrape from the data plane and the DNS proxy.
//!
//! The data plane is the kernel (ward's table read at each scrape, the namespace's conntrack
//! sysctls) or ward's engine (the counters its packet loop last published, see
//! [`EngineCounters`]); either is read into one [`Reading`], from which the same code encodes
//! the same families.

use dns::Stats;
use nft::live::{Count, Installed};
use policy::{Action, Policy};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::JoinHandle;

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the metrics come from. The daemon keeps it up to date across reloads.
#[derive(Debug)]
pub struct Sources {
    plane: Plane,
    dns: Arc<Stats>,
    /// The ECS event log's counters, when `--log` is on.
    log: Option<Arc<crate::Counters>>,
    policy: Mutex<PolicyView>,
}

/// What the metrics need of the running policy.
#[derive(Clone, Debug, Default)]
struct PolicyView {
    sha256: String,
    /// Rule ids in policy order, with whether the rule drops.
    rules: Vec<(String, bool)>,
}

/// The data plane whose counters are served.
#[derive(Debug)]
enum Plane {
    /// The kernel: ward's nftables table of this name.
    Kernel { table: String },
    /// ward's engine, through what its packet loop publishes.
    Engine(Arc<EngineCounters>),
}

impl Sources {
    /// The kernel data plane's metrics (`ward run`): ward's table `table`, read in the
    /// scraping thread's namespace.
    pub fn new(table: &str, dns: Arc<Stats>, log: Option<Arc<crate::Counters>>) -> Sources {
        Sources::with(
            Plane::Kernel {
                table: table.to_string(),
            },
            dns,
            log,
        )
    }

    /// The engine's metrics (`ward engine`): what its loop publishes to `counters`.
    pub fn engine(
        counters: Arc<EngineCounters>,
        dns: Arc<Stats>,
        log: Option<Arc<crate::Counters>>,
    ) -> Sources {
        Sources::with(Plane::Engine(counters), dns, log)
    }

    fn with(plane: Plane, dns: Arc<Stats>, log: Option<Arc<crate::Counters>>) -> Sources {
        Sources {
            plane,
            dns,
            log,
            policy: Mutex::default(),
        }
    }

    /// The policy now enforced (after an apply or a reload).
    pub fn set_policy(&self, p: &Policy, sha256: &str) {
        let view = PolicyView {
            sha256: sha256.to_string(),
            rules: p
                .rules
                .iter()
                .map(|r| (r.id.clone(), r.action == Action::Deny))
                .collect(),
        };
        if let Ok(mut v) = self.policy.lock() {
            *v = view;
        }
    }
}

/// The engine's counters, as its packet loop last published them for scrapes to read.
#[derive(Debug, Default)]
pub struct EngineCounters(Mutex<Option<EngineSnapshot>>);

/// What the engine has counted, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineSnapshot {
    /// Packets and bytes each rule decided, by rule id (the engine's defaults included).
    pub rules: Vec<(String, Count)>,
    /// Packets dropped, by SPEC §7 reason, in the order they are served.
    pub drops: Vec<(&'static str, u64)>,
    /// Connections source- and destination-translated.
    pub snat: u64,
    pub dnat: u64,
    /// Connections the engine's table holds, and the most it can.
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
}

impl EngineCounters {
    /// Lets `fill` bring the snapshot up to date in place (what it allocated before is there
    /// to be reused). Never waits: while a scrape is copying the snapshot, nothing is done and
    /// false is returned, for the next publish to catch up.
    pub fn publish(&self, fill: impl FnOnce(&mut EngineSnapshot)) -> bool {
        match self.0.try_lock() {
            Ok(mut s) => {
                fill(s.get_or_insert_with(EngineSnapshot::default));
                true
            }
            Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => false,
        }
    }

    /// The last snapshot published, if any was.
    pub fn latest(&self) -> Option<EngineSnapshot> {
        self.0.lock().ok().and_then(|s| s.clone())
    }
}

/// Every metric as OpenMetrics text. The kernel is read in the calling thread's namespace.
pub fn render(sources: &Arc<Sources>) -> String {
    encode_text(Scrape(sources.clone()))
}

fn encode_text(collector: impl Collector) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::new();
    // Writing into a String cannot fail; a collector's error would be ours.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

/// Serves `GET /metrics` on `addr` from a thread of its own (inheriting the caller's network
/// namespace) until the returned server is dropped.
pub fn serve(addr: SocketAddr, sources: Arc<Sources>) -> io::Result<MetricsServer> {
    let server = Arc::new(tiny_http::Server::http(addr).map_err(io::Error::other)?);
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| io::Error::other("metrics server bound to a non-IP address"))?;
    let s = server.clone();
    let thread = std::thread::Builder::new()
        .name("ward-metrics".into())
        .spawn(move || {
            for req in s.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("");
                let resp = if *req.method() != tiny_http::Method::Get {
                    tiny_http::Response::from_string("only GET\n").with_status_code(405)
                } else if path == "/metrics" {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        CONTENT_TYPE.as_bytes(),
                    )
                    .expect("a valid header");
                    tiny_http::Response::from_string(render(&sources)).with_header(header)
                } else {
                    tiny_http::Response::from_string("see /metrics\n").with_status_code(404)
                };
                if let Err(e) = req.respond(resp) {
                    tracing::debug!(error = %e, "metrics response");
                }
            }
        })?;
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr: local,
    })
}

/// The running metrics endpoint; dropping it stops it.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The bound address (with the port chosen, where the caller asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One scrape: the data plane read once, everything encoded from that reading.
#[derive(Debug)]
struct Scrape(Arc<Sources>);

impl Collector for Scrape {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let src = &self.0;
        let view = src.policy.lock().map(|v| v.clone()).unwrap_or_default();
        let reading = match &src.plane {
            Plane::Kernel { table } => Reading::kernel(
                read_kernel(table),
                read_sysctl("nf_conntrack_count"),
                read_sysctl("nf_conntrack_max"),
                &view,
            ),
            Plane::Engine(counters) => Reading::engine(counters.latest()),
        };
        encode(enc, src, &view, &reading)
    }
}

/// The data plane as one scrape found it.
#[derive(Debug)]
struct Reading {
    /// Whose counters these are, for the help texts: `kernel` or `engine`.
    plane: &'static str,
    /// The connection table, for the help texts.
    table: &'static str,
    /// Absent when the plane could not be read: no rule, drop or NAT families then.
    counters: Option<Counters>,
    conntrack_entries: Option<u64>,
    conntrack_capacity: Option<u64>,
}

/// Per-rule counts, drops and NAT translations, read together.
#[derive(Debug)]
struct Counters {
    /// By rule id; the policy's rules are served in policy order, those absent as 0.
    rules: BTreeMap<String, Count>,
    /// Served in this order; the DNS proxy's refusals are added to `rate_limit_dns`.
    drops: Vec<(&'static str, u64)>,
    snat: u64,
    dnat: u64,
}

impl Reading {
    /// ward's table as read (`None`: not readable) and the conntrack sysctls.
    fn kernel(
        table: Option<Installed>,
        entries: Option<u64>,
        capacity: Option<u64>,
        view: &PolicyView,
    ) -> Reading {
        let counters = table.map(|k| {
            let packets = |id: &str| k.counters.get(id).map_or(0, |c| c.packets);
            let explicit = view
                .rules
                .iter()
                .filter(|(_, drops)| *drops)
                .map(|(id, _)| packets(id))
                .sum();
            let nat = |prefix: &str| -> u64 {
                k.counters
                    .iter()
                    .filter(|(id, _)| id.starts_with(prefix))
                    .map(|(_, c)| c.packets)
                    .sum()
            };
            Counters {
                drops: vec![
                    (
                        "no_matching_allow_rule",
                        packets(nft::compile::DEFAULT_DENY),
                    ),
                    ("explicit_deny", explicit),
                    ("malformed_packet", packets(nft::compile::INVALID)),
                    // The kernel counts no such drop: the proxy's refusals are all there is.
                    ("rate_limit_dns", 0),
                ],
                snat: nat(nft::compile::SNAT_PREFIX),
                dnat: nat(nft::compile::DNAT_PREFIX),
                rules: k.counters,
            }
        });
        Reading {
            plane: "kernel",
            table: "the namespace's conntrack table",
            counters,
            conntrack_entries: entries,
            conntrack_capacity: capacity,
        }
    }

    /// The engine's last snapshot (`None`: none published yet).
    fn engine(snapshot: Option<EngineSnapshot>) -> Reading {
        let (counters, entries, capacity) = match snapshot {
            Some(s) => (
                Some(Counters {
                    rules: s.rules.into_iter().collect(),
                    drops: s.drops,
                    snat: s.snat,
                    dnat: s.dnat,
                }),
                Some(s.conntrack_entries),
                Some(s.conntrack_capacity),
            ),
            None => (None, None, None),
        };
        Reading {
            plane: "engine",
            table: "the engine's connection table",
            counters,
            conntrack_entries: entries,
            conntrack_capacity: capacity,
        }
    }
}

/// Every family, from one reading of the data plane and the other sources as they are now.
fn encode(
    mut enc: DescriptorEncoder,
    src: &Sources,
    view: &PolicyView,
    reading: &Reading,
) -> Result<(), std::fmt::Error> {
    family(
        &mut enc,
        "ward_build_info",
        "ward's version and the sha256 of the policy it enforces",
        MetricType::Gauge,
        [(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("rules_sha", view.sha256.clone()),
            ],
            Value::Gauge(1),
        )],
    )?;

    let plane = reading.plane;
    if let Some(c) = &reading.counters {
        let (mut accepts, mut drops, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for (id, drops_it) in &view.rules {
            let count = c.rules.get(id).copied().unwrap_or_default();
            let labels = vec![("rule_id", id.clone())];
            if *drops_it {
                drops.push((labels.clone(), Value::Counter(count.packets)));
            } else {
                accepts.push((labels.clone(), Value::Counter(count.packets)));
            }
            bytes.push((labels, Value::Counter(count.bytes)));
        }
        family(
            &mut enc,
            "ward_rule_accepts",
            &format!("Packets accepted by each accept rule ({plane} counters)"),
            MetricType::Counter,
            accepts,
        )?;
        family(
            &mut enc,
            "ward_rule_drops",
            &format!("Packets dropped by each deny rule ({plane} counters)"),
            MetricType::Counter,
            drops,
        )?;
        family(
            &mut enc,
            "ward_rule_bytes",
            &format!("Bytes of the packets each rule decided ({plane} counters)"),
            MetricType::Counter,
            bytes,
        )?;
        let rate_limited = src.dns.rate_limited.load(Relaxed);
        family(
            &mut enc,
            "ward_drops",
            "Packets and DNS queries dropped, by reason",
            MetricType::Counter,
            c.drops.iter().map(|&(reason, n)| {
                let n = if reason == "rate_limit_dns" {
                    n + rate_limited
                } else {
                    n
                };
                (vec![("drop_reason", reason.to_string())], Value::Counter(n))
            }),
        )?;
        family(
            &mut enc,
            "ward_nat_translations",
            "Connections translated by the policy's NAT rules",
            MetricType::Counter,
            [
                (vec![("kind", "snat".to_string())], Value::Counter(c.snat)),
                (vec![("kind", "dnat".to_string())], Value::Counter(c.dnat)),
            ],
        )?;
    }

    for (name, help, n) in [
        (
            "ward_conntrack_entries",
            format!("Connections {} holds", reading.table),
            reading.conntrack_entries,
        ),
        (
            "ward_conntrack_capacity",
            format!("The most connections {} holds", reading.table),
            reading.conntrack_capacity,
        ),
    ] {
        if let Some(n) = n {
            family(
                &mut enc,
                name,
                &help,
                MetricType::Gauge,
                [(vec![], Value::Gauge(n))],
            )?;
        }
    }

    let d = &src.dns;
    let outcome = |o: &str, n: &std::sync::atomic::AtomicU64| {
        (
            vec![("outcome", o.to_string())],
            Value::Counter(n.load(Relaxed)),
        )
    };
    family(
        &mut enc,
        "ward_dns_queries",
        "DNS queries answered by the proxy, by outcome",
        MetricType::Counter,
        [
            outcome("success", &d.success),
            outcome("nxdomain", &d.nxdomain),
            outcome("servfail", &d.servfail),
            outcome("rate_limited", &d.rate_limited),
            outcome("blocked", &d.blocked),
            outcome("truncated_upgraded_to_tcp", &d.truncated_upgraded_to_tcp),
        ],
    )?;
    let (sum, count, mut buckets) = d.lookup.snapshot();
    // prometheus-client writes f64::MAX as `+Inf` (and sums the buckets up itself).
    for b in &mut buckets {
        if b.0.is_infinite() {
            b.0 = f64::MAX;
        }
    }
    let mut m = enc.encode_descriptor(
        "ward_dns_lookup_duration_seconds",
        "From a client's query reaching the proxy to its answer leaving",
        None,
        MetricType::Histogram,
    )?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
    family(
        &mut enc,
        "ward_fqdn_set_size",
        "Addresses learned from DNS answers and held in the name sets",
        MetricType::Gauge,
        [(vec![], Value::Gauge(d.learned.load(Relaxed)))],
    )?;
    family(
        &mut enc,
        "ward_fqdn_set_evictions",
        "Learned addresses let go, by reason",
        MetricType::Counter,
        [
            (
                vec![("reason", "ttl_expired".to_string())],
                Value::Counter(d.evicted_ttl_expired.load(Relaxed)),
            ),
            (
                vec![("reason", "capacity_pressure".to_string())],
                Value::Counter(d.evicted_capacity_pressure.load(Relaxed)),
            ),
        ],
    )?;
    if let Some(log) = &src.log {
        let n = |o: &str, c: &std::sync::atomic::AtomicU64| {
            (
                vec![("outcome", o.to_string())],
                Value::Counter(c.load(Relaxed)),
            )
        };
        family(
            &mut enc,
            "ward_log_events",
            "Logged packets, by what became of their ECS event",
            MetricType::Counter,
            [
                n("written", &log.written),
                n("dropped_overload", &log.dropped),
                n("malformed", &log.malformed),
                n("skipped", &log.skipped),
                n("write_error", &log.write_errors),
            ],
        )?;
    }
    Ok(())
}

enum Value {
    Counter(u64),
    Gauge(u64),
}

/// One metric family: its descriptor, then one sample per label set.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, Value)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            // The family's one sample, written without a label set.
            return v.encode(m);
        }
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Value {
    fn encode(self, m: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self {
            Value::Counter(n) => ConstCounter::new(n).encode(m),
            Value::Gauge(n) => ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(m),
        }
    }
}

/// ward's table, or `None` (logged) if it cannot be read: the other metrics are still served.
fn read_kernel(table: &str) -> Option<Installed> {
    let read = nft::Session::open().and_then(|s| nft::live::read(&s, table));
    match read {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot read the table");
            None
        }
    }
}

/// A conntrack sysctl of the calling thread's network namespace (absent until conntrack is
/// loaded).
fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/net/netfilter/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const POLICY: &str = "rules:
  - {id: ping-out, direction: egress, protocol: icmp, action: accept}
  - {id: no-telnet, direction: egress, protocol: tcp, destination_port: 23, action: deny}
  - {id: web-by-name, direction: egress, destination_fqdn: ok.test, protocol: tcp, destination_port: 80, action: accept}
";

    /// A scrape of a reading made beforehand.
    #[derive(Debug)]
    struct Fixed(Arc<Sources>, Reading);

    impl Collector for Fixed {
        fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let view = self.0.policy.lock().expect("view").clone();
            encode(enc, &self.0, &view, &self.1)
        }
    }

    fn dns() -> Arc<Stats> {
        let d = Arc::new(Stats::default());
        for (c, n) in [
            (&d.success, 5),
            (&d.nxdomain, 1),
            (&d.servfail, 2),
            (&d.rate_limited, 4),
            (&d.truncated_upgraded_to_tcp, 1),
            (&d.learned, 3),
            (&d.evicted_ttl_expired, 1),
            (&d.evicted_capacity_pressure, 2),
        ] {
            c.store(n, Relaxed);
        }
        for d_ in [
            Duration::from_micros(300),
            Duration::from_millis(30),
            Duration::from_secs(3),
        ] {
            d.lookup.observe(d_);
        }
        d
    }

    fn with_policy(s: Sources) -> Arc<Sources> {
        let p = policy::parse_str(POLICY, "test.yaml")
            .expect("policy")
            .policy;
        s.set_policy(&p, "abc123");
        Arc::new(s)
    }

    fn golden(text: &str) -> String {
        text.replace("{version}", env!("CARGO_PKG_VERSION"))
    }

    fn count(packets: u64, bytes: u64) -> Count {
        Count { packets, bytes }
    }

    /// What the kernel plane serves, to the byte (as before the engine's plane was added).
    #[test]
    fn the_kernel_plane_is_encoded_as_it_always_was() {
        let mut table = Installed::default();
        for (id, packets, bytes) in [
            ("ping-out", 7, 588),
            ("no-telnet", 1, 60),
            ("default-deny", 3, 180),
            ("ward:ct-invalid", 2, 80),
            ("ward:snat-0", 7, 0),
            ("ward:snat-1", 1, 0),
            ("ward:dnat-0", 2, 0),
        ] {
            table.counters.insert(id.to_string(), count(packets, bytes));
        }
        let log = Arc::new(crate::Counters::default());
        log.written.store(9, Relaxed);
        log.dropped.store(1, Relaxed);
        let src = with_policy(Sources::new("ward", dns(), Some(log)));
        let view = src.policy.lock().expect("view").clone();
        let reading = Reading::kernel(Some(table), Some(12), Some(262_144), &view);
        assert_eq!(
            encode_text(Fixed(src, reading)),
            golden(include_str!("../testdata/kernel.openmetrics"))
        );

        // Neither the table nor conntrack readable: the rest is still served.
        let src = with_policy(Sources::new("ward", dns(), None));
        let view = src.policy.lock().expect("view").clone();
        let reading = Reading::kernel(None, None, None, &view);
        assert_eq!(
            encode_text(Fixed(src, reading)),
            golden(include_str!("../testdata/kernel-unread.openmetrics"))
        );
    }

    /// A policy rule may be called `snat-office`: only the `ward:` counters of the NAT rules
    /// ward adds are translations, and the rule keeps its own counters.
    #[test]
    fn a_rule_named_like_a_nat_entry_is_a_rule() {
        let src = Sources::new("ward", dns(), None);
        let p = policy::parse_str(
            "rules:\n  - {id: snat-office, direction: egress, protocol: tcp, action: accept}\n  - {id: dnat-web, direction: ingress, protocol: tcp, action: deny}\n",
            "t.yaml",
        )
        .expect("policy")
        .policy;
        src.set_policy(&p, "abc");
        let mut table = Installed::default();
        for (id, packets) in [("snat-office", 5), ("dnat-web", 4), ("ward:snat-0", 2)] {
            table.counters.insert(id.to_string(), count(packets, 0));
        }
        let view = src.policy.lock().expect("view").clone();
        let reading = Reading::kernel(Some(table), None, None, &view);
        let text = encode_text(Fixed(Arc::new(src), reading));
        for line in [
            "ward_rule_accepts_total{rule_id=\"snat-office\"} 5",
            "ward_rule_drops_total{rule_id=\"dnat-web\"} 4",
            "ward_nat_translations_total{kind=\"snat\"} 2",
            "ward_nat_translations_total{kind=\"dnat\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
    }

    /// The engine's snapshot fills the same families: the policy's rules in its order, its
    /// drop reasons (the proxy's refusals added to `rate_limit_dns`), NAT and its table.
    #[test]
    fn the_engine_plane_serves_its_published_counters() {
        let counters = Arc::new(EngineCounters::default());
        let src = with_policy(Sources::engine(counters.clone(), dns(), None));
        let unpublished = render(&src);
        assert!(!unpublished.contains("ward_rule_accepts"), "{unpublished}");
        assert!(!unpublished.contains("ward_conntrack"), "{unpublished}");
        assert!(unpublished.contains("ward_dns_queries_total{outcome=\"success\"} 5"));

        assert!(counters.publish(|s| {
            s.rules = vec![
                ("ping-out".into(), count(7, 588)),
                ("no-telnet".into(), count(1, 60)),
                ("default-deny".into(), count(3, 180)),
            ];
            s.drops = vec![
                ("no_matching_allow_rule", 3),
                ("explicit_deny", 1),
                ("rate_limit_dns", 1),
                ("conntrack_full", 6),
            ];
            s.snat = 7;
            s.dnat = 2;
            s.conntrack_entries = 9;
            s.conntrack_capacity = 65_536;
        }));
        let text = render(&src);
        for line in [
            "# HELP ward_rule_accepts Packets accepted by each accept rule (engine counters)",
            "ward_rule_accepts_total{rule_id=\"ping-out\"} 7",
            "ward_rule_accepts_total{rule_id=\"web-by-name\"} 0",
            "ward_rule_drops_total{rule_id=\"no-telnet\"} 1",
            "ward_rule_bytes_total{rule_id=\"ping-out\"} 588",
            "ward_drops_total{drop_reason=\"no_matching_allow_rule\"} 3",
            "ward_drops_total{drop_reason=\"explicit_deny\"} 1",
            "ward_drops_total{drop_reason=\"rate_limit_dns\"} 5",
            "ward_drops_total{drop_reason=\"conntrack_full\"} 6",
            "ward_nat_translations_total{kind=\"snat\"} 7",
            "ward_nat_translations_total{kind=\"dnat\"} 2",
            "# HELP ward_conntrack_entries Connections the engine's connection table holds",
            "ward_conntrack_entries 9",
            "ward_conntrack_capacity 65536",
            "ward_fqdn_set_size 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        // The engine's own defaults are drop reasons, not rules.
        assert!(!text.contains("rule_id=\"default-deny\""), "{text}");
        assert!(!text.contains("ward_log_events"), "{text}");
    }

    /// A publish while a scrape holds the snapshot is skipped rather than waited for.
    #[test]
    fn publishing_never_waits_for_a_scrape() {
        let counters = EngineCounters::default();
        assert!(counters.publish(|s| s.snat = 1));
        let held = counters.0.lock().expect("lock");
        assert!(!counters.publish(|s| s.snat = 2));
        drop(held);
        assert!(counters.publish(|s| s.snat += 2));
        assert_eq!(counters.latest().map(|s| s.snat), Some(3));
    }
}
