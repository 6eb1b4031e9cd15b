//! The Prometheus metrics `ward run` serves on `--metrics` (names and labels of SPEC §7),
//! gathered at each scrape from the kernel (rule counters, conntrack) and the DNS proxy.

use dns::Stats;
use nft::live::{Count, Installed};
use policy::{Action, Policy};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where the metrics come from. The daemon keeps it up to date across reloads.
#[derive(Debug)]
pub struct Sources {
    table: String,
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

impl Sources {
    pub fn new(table: &str, dns: Arc<Stats>, log: Option<Arc<crate::Counters>>) -> Sources {
        Sources {
            table: table.to_string(),
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

/// Every metric as OpenMetrics text. The kernel is read in the calling thread's namespace.
pub fn render(sources: &Arc<Sources>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(sources.clone())));
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

/// One scrape: the kernel read once, everything encoded from that reading.
#[derive(Debug)]
struct Scrape(Arc<Sources>);

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let src = &self.0;
        let view = src.policy.lock().map(|v| v.clone()).unwrap_or_default();
        let kernel = read_kernel(&src.table);
        let rule_count = |id: &str| -> Count {
            kernel
                .as_ref()
                .and_then(|k| k.counters.get(id))
                .copied()
                .unwrap_or_default()
        };

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

        if let Some(k) = &kernel {
            let (mut accepts, mut drops, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
            let mut explicit = 0;
            for (id, drops_it) in &view.rules {
                let c = rule_count(id);
                let labels = vec![("rule_id", id.clone())];
                if *drops_it {
                    explicit += c.packets;
                    drops.push((labels.clone(), Value::Counter(c.packets)));
                } else {
                    accepts.push((labels.clone(), Value::Counter(c.packets)));
                }
                bytes.push((labels, Value::Counter(c.bytes)));
            }
            family(
                &mut enc,
                "ward_rule_accepts",
                "Packets accepted by each accept rule (kernel counters)",
                MetricType::Counter,
                accepts,
            )?;
            family(
                &mut enc,
                "ward_rule_drops",
                "Packets dropped by each deny rule (kernel counters)",
                MetricType::Counter,
                drops,
            )?;
            family(
                &mut enc,
                "ward_rule_bytes",
                "Bytes of the packets each rule decided (kernel counters)",
                MetricType::Counter,
                bytes,
            )?;
            let reason =
                |r: &str, n: u64| (vec![("drop_reason", r.to_string())], Value::Counter(n));
            family(
                &mut enc,
                "ward_drops",
                "Packets and DNS queries dropped, by reason",
                MetricType::Counter,
                [
                    reason(
                        "no_matching_allow_rule",
                        rule_count(nft::compile::DEFAULT_DENY).packets,
                    ),
                    reason("explicit_deny", explicit),
                    reason(
                        "malformed_packet",
                        rule_count(nft::compile::INVALID).packets,
                    ),
                    reason("rate_limit_dns", src.dns.rate_limited.load(Relaxed)),
                ],
            )?;
            let nat = |prefix: &str| -> u64 {
                k.counters
                    .iter()
                    .filter(|(id, _)| id.starts_with(prefix))
                    .map(|(_, c)| c.packets)
                    .sum()
            };
            family(
                &mut enc,
                "ward_nat_translations",
                "Connections translated by the policy's NAT rules",
                MetricType::Counter,
                [
                    (
                        vec![("kind", "snat".to_string())],
                        Value::Counter(nat("snat-")),
                    ),
                    (
                        vec![("kind", "dnat".to_string())],
                        Value::Counter(nat("dnat-")),
                    ),
                ],
            )?;
        }

        for (name, help, file) in [
            (
                "ward_conntrack_entries",
                "Connections the namespace's conntrack table holds",
                "nf_conntrack_count",
            ),
            (
                "ward_conntrack_capacity",
                "The most connections the namespace's conntrack table holds",
                "nf_conntrack_max",
            ),
        ] {
            if let Some(n) = read_sysctl(file) {
                family(
                    &mut enc,
                    name,
                    help,
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
