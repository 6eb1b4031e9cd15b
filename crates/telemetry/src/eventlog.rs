//! `ward run --log`: a reader thread turns the kernel's NFLOG group into ECS events, a writer
//! thread appends them to the file (or stdout), one JSON object per line. `ward engine --log`
//! has the writer only, and hands over the engine's logged packets itself.
//!
//! Enforcement never waits on this: the kernel hands logged packets to NFLOG and goes on; the
//! reader never waits on the writer either, since a full queue drops its oldest events.
//! What was written, dropped or skipped is counted in [`Counters`].

use crate::ecs::{DomainLookup, Event, RuleBook, Seen};
use crate::queue::Queue;
use nft::conntrack::{Entry, Lookup, Tuple};
use nft::nflog::{self, NflogError, Packet, Subscription};
use policy::Policy;
use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Events waiting for the writer; beyond this the oldest are dropped.
pub const QUEUE_CAPACITY: usize = 8192;
/// Interface names are cached this long (an index may be renamed or reused).
const NAMES_TTL: Duration = Duration::from_secs(10);

/// What the event log has done so far; plain atomics for the metrics to read.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events written to the output.
    pub written: AtomicU64,
    /// Events dropped, oldest first, because the writer fell behind.
    pub dropped: AtomicU64,
    /// NFLOG messages or packets that could not be parsed, and events whose time RFC 3339
    /// cannot write.
    pub malformed: AtomicU64,
    /// Logged packets that are not ward's (another prefix) or name a rule the policy no
    /// longer logs.
    pub skipped: AtomicU64,
    /// Times the kernel dropped NFLOG messages because the socket's buffer was full (how many
    /// messages, it does not say).
    pub overruns: AtomicU64,
    /// Events lost to write errors on the output.
    pub write_errors: AtomicU64,
    /// Conntrack lookups that failed (other than finding no entry); those events have no NAT
    /// fields.
    pub conntrack_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nflog(#[from] NflogError),
    #[error("conntrack: {0}")]
    Conntrack(#[from] nft::NftError),
    #[error("cannot open the event log {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the event log's threads: {0}")]
    Thread(std::io::Error),
}

/// The running event log; dropping it stops both threads after the writer has written
/// what the reader queued.
pub struct EventLog {
    book: Arc<RwLock<Arc<RuleBook>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    queue: Arc<Queue<Event>>,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl EventLog {
    /// Subscribes to NFLOG `group` in the calling thread's network namespace (the threads
    /// inherit it) and starts writing events for `policy`'s logged rules and default drops to
    /// `output` (`-`: stdout, anything else is a file appended to); without a policy, packets
    /// are skipped until [`reload`](EventLog::reload) gives one. Fails, with nothing left
    /// running, if the group is taken or the file cannot be opened.
    pub fn start(
        output: &Path,
        policy: Option<&Policy>,
        group: u16,
        domains: impl DomainLookup + 'static,
    ) -> Result<EventLog, Error> {
        let mut log = EventLog::writer(output, policy)?;
        let reader = Reader {
            sub: Subscription::open(group)?,
            lookup: Lookup::open()?,
            book: log.book.clone(),
            queue: log.queue.clone(),
            counters: log.counters.clone(),
            domains: Box::new(domains),
            names: Names::default(),
        };
        let stop = log.stop.clone();
        log.reader = Some(
            std::thread::Builder::new()
                .name("ward-ecs-reader".into())
                .spawn(move || reader.run(&stop))
                .map_err(Error::Thread)?,
        );
        Ok(log)
    }

    /// The writer alone, for a data plane that hands over the packets it logged itself
    /// (`ward engine`'s): see [`record`](EventLog::record).
    pub fn writer(output: &Path, policy: Option<&Policy>) -> Result<EventLog, Error> {
        let out: Box<dyn Write + Send> = if output == Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(output)
                .map_err(|source| Error::Output {
                    path: output.to_path_buf(),
                    source,
                })?;
            Box::new(BufWriter::new(f))
        };
        let book = policy.map_or_else(RuleBook::empty, RuleBook::new);
        let mut log = EventLog {
            book: Arc::new(RwLock::new(Arc::new(book))),
            counters: Arc::new(Counters::default()),
            stop: Arc::new(AtomicBool::new(false)),
            queue: Arc::new(Queue::new(QUEUE_CAPACITY)),
            reader: None,
            writer: None,
        };
        let (queue, counters) = (log.queue.clone(), log.counters.clone());
        log.writer = Some(
            std::thread::Builder::new()
                .name("ward-ecs-writer".into())
                .spawn(move || write(out, &queue, &counters))
                .map_err(Error::Thread)?,
        );
        Ok(log)
    }

    /// One packet the caller's data plane logged: decided by the policy's rule `rule`, or by
    /// `chain`'s default deny when `rule` is `default-deny` (see [`RuleBook::rule`]). Never
    /// waits for the writer.
    pub fn record(&self, rule: &str, chain: &str, seen: Seen) {
        let book = self.book.read().unwrap_or_else(|e| e.into_inner()).clone();
        match book.rule(rule, chain) {
            Ok(d) => {
                if self.queue.push(Event::new(&book, &d, seen)) {
                    bump(&self.counters.dropped);
                }
            }
            Err(_) => bump(&self.counters.skipped),
        }
    }

    /// Events from now on describe `policy`'s rules (after a reload).
    pub fn reload(&self, policy: &Policy) {
        let book = Arc::new(RuleBook::new(policy));
        *self.book.write().unwrap_or_else(|e| e.into_inner()) = book;
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.queue.close();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// The writer thread: batches of events, one JSON line each, flushed per batch.
fn write(mut out: Box<dyn Write + Send>, queue: &Queue<Event>, counters: &Counters) {
    let mut batch = VecDeque::new();
    let mut line = Vec::with_capacity(1024);
    while queue.take_all(&mut batch) {
        let mut n = 0;
        line.clear();
        for e in batch.drain(..) {
            let start = line.len();
            // Only a time RFC 3339 cannot write fails; it came in with the packet.
            match serde_json::to_writer(&mut line, &e) {
                Ok(()) => {
                    line.push(b'\n');
                    n += 1;
                }
                Err(_) => {
                    line.truncate(start);
                    bump(&counters.malformed);
                }
            }
        }
        let counter = match out.write_all(&line).and_then(|()| out.flush()) {
            Ok(()) => &counters.written,
            Err(e) => {
                tracing::warn!("event log: {e}");
                &counters.write_errors
            }
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Interface names by index, looked up in the reader's namespace and kept a while.
#[derive(Default)]
struct Names {
    names: HashMap<u32, Option<String>>,
    since: Option<Instant>,
}

impl Names {
    fn get(&mut self, index: Option<u32>) -> Option<String> {
        let index = index?;
        if self.since.is_none_or(|t| t.elapsed() > NAMES_TTL) {
            self.names.clear();
            self.since = Some(Instant::now());
        }
        self.names
            .entry(index)
            .or_insert_with(|| nflog::interface_name(index))
            .clone()
    }
}

struct Reader {
    sub: Subscription,
    lookup: Lookup,
    book: Arc<RwLock<Arc<RuleBook>>>,
    queue: Arc<Queue<Event>>,
    counters: Arc<Counters>,
    domains: Box<dyn DomainLookup>,
    names: Names,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        let mut warned = false;
        while !stop.load(Ordering::Relaxed) {
            let datagram = match self.sub.recv() {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(NflogError::Overrun) => {
                    bump(&self.counters.overruns);
                    continue;
                }
                Err(e) => {
                    tracing::warn!("event log: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let book = self.book.read().unwrap_or_else(|e| e.into_inner()).clone();
            for p in nflog::packets(datagram) {
                let event = match p {
                    Ok(p) => {
                        let mut ctx = Context {
                            lookup: &self.lookup,
                            names: &mut self.names,
                            domains: &*self.domains,
                            counters: &self.counters,
                            warned: &mut warned,
                        };
                        ctx.event(&book, &p)
                    }
                    Err(_) => {
                        bump(&self.counters.malformed);
                        None
                    }
                };
                if let Some(e) = event {
                    if self.queue.push(e) {
                        bump(&self.counters.dropped);
                    }
                }
            }
        }
    }
}

/// What the reader brings to each packet besides the datagram it borrows from.
struct Context<'a> {
    lookup: &'a Lookup,
    names: &'a mut Names,
    domains: &'a dyn DomainLookup,
    counters: &'a Counters,
    /// A failing conntrack lookup is reported once, and counted every time.
    warned: &'a mut bool,
}

impl Context<'_> {
    /// The event for one logged packet; `None` (counted) when it makes none.
    fn event(&mut self, book: &RuleBook, p: &Packet) -> Option<Event> {
        let Ok(decision) = book.decide(p.prefix) else {
            bump(&self.counters.skipped);
            return None;
        };
        let Ok(flow) = p.headers() else {
            bump(&self.counters.malformed);
            return None;
        };
        // The entry NFLOG attached (if the kernel can) was taken before source NAT: for an
        // accepted flow, the confirmed one shows it. A dropped flow has no other.
        let attached = p.conntrack;
        let entry = if decision.accept && !attached.is_some_and(|e| e.confirmed()) {
            self.confirmed(&flow).or(attached)
        } else {
            attached
        };
        let in_if = self.names.get(p.in_ifindex);
        let out_if = self.names.get(p.out_ifindex);
        let seen = Seen {
            at: p.timestamp.unwrap_or_else(SystemTime::now),
            flow,
            in_if: in_if.as_deref(),
            out_if: out_if.as_deref(),
            translated: entry.and_then(|e| e.snat().or_else(|| e.dnat())),
            domain: self.domains.domain(flow.dst),
        };
        Some(Event::new(book, &decision, seen))
    }

    /// The conntrack entry of an accepted flow. The logged packet's tuple is the entry's
    /// original direction unless destination NAT rewrote it; then its reverse is the reply
    /// direction. The packet may still be on its way to being confirmed when its message
    /// arrives: one more try a moment later.
    fn confirmed(&mut self, flow: &Tuple) -> Option<Entry> {
        for attempt in 0..2 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            for t in [*flow, flow.reversed()] {
                match self.lookup.get(&t) {
                    Ok(Some(e)) => return Some(e),
                    Ok(None) => {}
                    Err(e) => {
                        if !std::mem::replace(self.warned, true) {
                            tracing::warn!("event log: {e}; events go without NAT fields");
                        }
                        bump(&self.counters.conntrack_errors);
                        return None;
                    }
                }
            }
        }
        None
    }
}
