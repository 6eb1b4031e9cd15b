#!/usr/bin/env python3
"""DNS proxy performance: `ward run`'s queries/second and added latency against dnsmasq
(--nftset, no cache) and against the upstream itself, plus the learned-address set update
latency and the memory of 1M learned addresses.

Builds the lab (`ward lab --lan wbench-lan --fw wbench-fw --wan wbench-wan up`), runs an
authoritative upstream in the WAN namespace and a load generator in the LAN namespace
(`crates/testlab/examples/dns_load.rs`), and alternates, round by round, between
  - ward run in the firewall (every answer committed into the rule's kernel set before release),
  - dnsmasq in the firewall (--cache-size=0, --nftset into a kernel set, same upstream),
  - the upstream queried straight from the LAN host (through the firewall's forwarding).
Phase 1 measures each one's peak qps; phase 2 measures latency at half of ward's peak, the same
rate for all three. The latency target is only judged when the baseline itself is clean at that
rate (nothing lost, p99 <= 1 ms); otherwise it is reported [INVALID] and the three paths are
measured again at the highest lower rate at which the baseline is clean. Everything runs in
namespaces `wbench-*`, removed at the end, also on failure or Ctrl-C. Needs root, nftables,
iproute2, cargo; installs dnsmasq-base if missing.

    sudo python3 bench/dns.py [--secs 3] [--lat-secs 5] [--rounds 3] [--names 10000]
                              [--window 64] [--upstream fast|hickory] [--no-pin] [--no-build]
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import ROOT, Child, in_ns, log, median, run, stop_all  # noqa: E402

LAN, FW, WAN = "wbench-lan", "wbench-fw", "wbench-wan"
PROXY = "192.168.50.1:53"       # dns.listen's default in the lab: the firewall's LAN address
UPSTREAM = "198.51.100.20"      # the WAN host
# dnsmasq's learned addresses go to a set in a table of its own; ward's table stays installed
# (its input/output plumbing admits LAN → 192.168.50.1:53 and the firewall → upstream:53, which
# is exactly dnsmasq's traffic too), so both proxies are filtered by the same ruleset.
DM_TABLE, DM_SET = "wbench", "dns4"
WARM_SECS = 2.0                 # before each proxy measurement: every name answered once
WARM_WINDOW = 16
# The baseline (the upstream queried directly) must be this clean at a rate for the proxies'
# "added" latency at that rate to mean anything: at a rate the load generator and the upstream
# cannot sustain on their core, the baseline's own queueing swamps what a proxy adds.
BASELINE_P99_MAX_US = 1000
TARGET_ADDED_P99_US = 1000
FALLBACK_STEP = 0.8             # an unclean baseline at R: try R * 0.8, R * 0.64, ...
STALL_US = 1000                 # a CPU taken away this long is a stall (see machine_stalls)

TARGET_DIR = common.TARGET_DIR
REL = os.path.join(TARGET_DIR, "release")
WARD = os.path.join(REL, "ward")
DNS_LOAD = os.path.join(REL, "examples", "dns_load")
SET_UPDATE = os.path.join(REL, "examples", "set_update_latency")
CACHE_MEMORY = os.path.join(REL, "examples", "cache_memory")
LAB = [WARD, "lab", "--lan", LAN, "--fw", FW, "--wan", WAN]

# Every rule a gateway needs for the benchmark: the names under bench.test. learned through the
# proxy (every answer is committed), and the LAN host allowed to query the upstream directly
# for the baseline. intercept is off, or the direct queries would be redirected to the proxy.
POLICY = f"""\
defaults:
  default_action: deny
  input_action: deny
  output_action: deny
  upstream_dns: {UPSTREAM}
  dns_qps_per_client: 1000000
interfaces:
  lan: [lan0]
  wan: [wan0]
dns:
  intercept: false
rules:
  - {{id: direct-dns, direction: egress, source: 192.168.50.10, destination: {UPSTREAM}, protocol: udp, destination_port: 53, action: accept}}
  - {{id: bench, direction: egress, destination_fqdn: "*.bench.test", protocol: tcp, destination_port: 443, action: accept}}
"""

PATHS = [  # (key, label)
    ("direct", "upstream direct (baseline)"),
    ("ward", "ward run"),
    ("dnsmasq", "dnsmasq --nftset, no cache"),
]



class Pinning:
    """CPU placement: the proxy under test on one core, the upstream and the load generator
    on the other (or nothing pinned)."""

    def __init__(self, enabled):
        self.enabled = enabled and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")

    def proxy(self):
        return ["taskset", "-c", "1"] if self.enabled else []

    def rest(self):
        return ["taskset", "-c", "0"] if self.enabled else []

    def describe(self):
        if not self.enabled:
            return "not pinned"
        return "proxy on CPU 1; upstream and load generator on CPU 0"


# --------------------------------------------------------------------------- building blocks

def build():
    common.cargo_build("-p", "ward", "-p", "testlab", "-p", "nft", "-p", "dns", "--bin", "ward",
                       "--example", "dns_load", "--example", "set_update_latency",
                       "--example", "cache_memory")


def ensure_dnsmasq():
    common.apt_install("dnsmasq", "dnsmasq-base")
    out = run(["dnsmasq", "--version"]).stdout
    if " nftset" not in out:
        raise RuntimeError(f"this dnsmasq has no nftset support:\n{out}")
    return out.splitlines()[0]


def set_update_latency(rounds):
    out = run([SET_UPDATE, str(rounds)], timeout=600).stdout
    res = {}
    for m in re.finditer(r"(\d+) address(?:es)? per commit: p50\s+(\d+) us\s+p99\s+(\d+) us", out):
        res[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    if 1 not in res:
        raise RuntimeError(f"unexpected set_update_latency output:\n{out}")
    return res, out.strip()


def cache_memory(shape):
    out = run([CACHE_MEMORY] + ([shape] if shape else []), timeout=600).stdout
    after = re.search(r"RSS after:\s+([\d.]+) MiB", out)
    cache = re.search(r"cache:\s+([\d.]+) MiB, (\d+) bytes per address", out)
    count = re.search(r"^(\d+) addresses", out, re.M)
    if not (after and cache and count):
        raise RuntimeError(f"unexpected cache_memory output:\n{out}")
    return {"rss_mib": float(after.group(1)), "cache_mib": float(cache.group(1)),
            "bytes_per_addr": int(cache.group(2)), "addresses": int(count.group(1))}


def cpu_busy(secs=1.0):
    """Fraction of all CPUs' time spent busy over `secs` (what other processes use now)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v) - idle, sum(v)
    b0, t0 = sample()
    time.sleep(secs)
    b1, t1 = sample()
    return (b1 - b0) / max(t1 - t0, 1)


def machine_stalls(secs=2.0):
    """How this machine treats its CPUs when one, then two are kept busy, with no proxy and no
    network (`dns_load stalls`, one busy thread per CPU): {CPUs busy: [(stalls >= STALL_US,
    their ms, the longest ms) per CPU]}. On some virtual machines the host takes CPUs away for
    milliseconds only while more than one is busy; every path's latency at a rate that keeps
    both CPUs busy then carries those stalls, and only ward's rounds keep both busy."""
    out = {}
    for cpus in ((0,), (0, 1)):
        procs = [subprocess.Popen([DNS_LOAD, "stalls", "--cpu", str(c), "--duration", str(secs)],
                                  stdout=subprocess.PIPE, text=True) for c in cpus]
        per = []
        for p in procs:
            out_text, _ = p.communicate(timeout=secs + 30)
            if p.returncode != 0:
                raise RuntimeError("dns_load stalls failed")
            big = [us for us in json.loads(out_text)["stalls"] if us >= STALL_US]
            per.append((len(big), sum(big) / 1000, max(big, default=0) / 1000))
        out[cpus] = per
    return out


def fmt_stalls(machine):
    return "; ".join(
        f"CPU{'s' if len(cpus) > 1 else ''} {'+'.join(map(str, cpus))} busy: "
        + ", ".join(f"CPU {c} {n} stalls ({ms:.0f} ms, longest {mx:.1f} ms)"
                    for c, (n, ms, mx) in zip(cpus, per))
        for cpus, per in machine.items())


def rcvbuf_errors(ns):
    """UDP datagrams the namespace dropped because a socket's receive buffer was full."""
    text = run(in_ns(ns, "cat", "/proc/net/snmp")).stdout
    rows = [ln.split()[1:] for ln in text.splitlines() if ln.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1])).get("RcvbufErrors", 0))


def set_elements(table, set_name):
    p = run(in_ns(FW, "nft", "-j", "list", "set", "inet", table, set_name))
    for obj in json.loads(p.stdout).get("nftables", []):
        if "set" in obj:
            return len(obj["set"].get("elem", []))
    return 0


class Bench:
    def __init__(self, args, pin, policy_file):
        self.args = args
        self.pin = pin
        self.policy_file = policy_file
        self.ward_counters = {}
        self.ward_rss = []
        self.ward_sets = []
        self.answered_total = 0
        self.rcvbuf = {}    # proxy -> UDP datagrams dropped on full socket buffers in the fw

    def load(self, server, secs, rate=None, window=None):
        argv = in_ns(LAN, *self.pin.rest(), DNS_LOAD, "load", "--server", server,
                     "--names", str(self.args.names), "--duration", str(secs))
        argv += ["--rate", str(rate)] if rate else ["--window", str(window)]
        p = run(argv, timeout=secs + 60)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        if r["answered"] == 0:
            raise RuntimeError(f"no answers from {server}: {r}")
        self.answered_total += r["answered"]
        return r

    # ward run ------------------------------------------------------------------------------
    def start_ward(self):
        c = Child([*self.pin.proxy(), WARD, "run", self.policy_file, "--netns", FW], "ward run")
        c.wait_for("ready")
        return c

    def stop_ward(self, c):
        rss = c.peak_rss_mib()
        learned = set_elements("ward", "fqdn4-bench")
        lines = c.stop()
        if c.p.returncode != 0:
            raise RuntimeError(f"ward run exited with {c.p.returncode}:\n" + "\n".join(lines[-20:]))
        counters = [ln for ln in lines if ln.startswith("DNS: ")]
        if not counters:
            raise RuntimeError("ward run printed no DNS counters:\n" + "\n".join(lines[-20:]))
        for kv in counters[-1][5:].split():
            k, _, v = kv.partition("=")
            if k != "learned":
                self.ward_counters[k] = self.ward_counters.get(k, 0) + int(v)
        if rss is not None:
            self.ward_rss.append(rss)
        self.ward_sets.append(learned)

    # dnsmasq -------------------------------------------------------------------------------
    def start_dnsmasq(self):
        argv = in_ns(FW, *self.pin.proxy(), "dnsmasq", "--keep-in-foreground",
                     "--conf-file=/dev/null", "--no-hosts", "--no-resolv", "--pid-file",
                     f"--server={UPSTREAM}", f"--listen-address={PROXY.split(':')[0]}",
                     "--bind-interfaces", "--cache-size=0", "--dns-forward-max=4096",
                     f"--nftset=/bench.test/4#inet#{DM_TABLE}#{DM_SET}", "--log-facility=-")
        c = Child(argv, "dnsmasq")
        c.wait_for("using nameserver")
        return c

    def stop_dnsmasq(self, c):
        lines = c.stop()
        bad = [ln for ln in lines if re.search(r"fail|error|Maximum number", ln, re.I)]
        if bad:
            log("  dnsmasq said: " + " | ".join(bad[:5]))

    # one proxy measurement -----------------------------------------------------------------
    def through(self, kind, *measures):
        """Starts the proxy, warms it up, runs each measurement against it, stops it."""
        start, stop = ((self.start_ward, self.stop_ward) if kind == "ward"
                       else (self.start_dnsmasq, self.stop_dnsmasq))
        c = start()
        try:
            self.load(PROXY, WARM_SECS, window=WARM_WINDOW)
            before = rcvbuf_errors(FW)
            rs = [m(PROXY) for m in measures]
            self.rcvbuf[kind] = self.rcvbuf.get(kind, 0) + rcvbuf_errors(FW) - before
        finally:
            stop(c)
        return rs


def fmt_us(x):
    return f"{x:,.0f}"


def lost(r):
    return r["timeouts"] + r["errors"]


def baseline_problem(runs):
    """Why the direct path's runs at one rate make "added" latency meaningless, or None."""
    why = []
    n_lost = sum(lost(r) for r in runs)
    if n_lost:
        why.append(f"{n_lost:,} of {sum(r['sent'] for r in runs):,} queries lost")
    p99 = median([r["p99_us"] for r in runs])
    if p99 > BASELINE_P99_MAX_US:
        why.append(f"p99 {p99:,.0f} us > {BASELINE_P99_MAX_US:,} us")
    if not why:
        return None
    return ("baseline (upstream direct) not clean at this rate: " + ", ".join(why)
            + "; the load generator and the upstream on their core cannot sustain it")


def latency_target(rate, lats, label):
    """(status, label, detail) of the added-p99 target at `rate` from the runs at that rate."""
    text = f"ward added p99 <= {TARGET_ADDED_P99_US} us at {rate:,} qps{label}"
    problem = baseline_problem(lats["direct"])
    if problem:
        return "INVALID", text, problem
    base = median([r["p99_us"] for r in lats["direct"]])
    ward = median([r["p99_us"] for r in lats["ward"]])
    ward_lost = sum(lost(r) for r in lats["ward"])
    if ward < base:
        return ("INVALID", text, f"ward's p99 {ward:,.0f} us is below the baseline's "
                f"{base:,.0f} us: a relayed query cannot be faster, the runs were disturbed")
    ok = ward - base <= TARGET_ADDED_P99_US and ward_lost == 0
    return ("PASS" if ok else "FAIL", text,
            f"{ward - base:,.0f} us ({ward:,.0f} - {base:,.0f}), ward lost {ward_lost:,}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=float, default=3.0, help="seconds per peak measurement")
    ap.add_argument("--lat-secs", type=float, default=5.0,
                    help="seconds per fixed-rate latency measurement")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions (median)")
    ap.add_argument("--names", type=int, default=10000,
                    help="distinct names queried in turn (each its own address)")
    ap.add_argument("--window", type=int, default=64,
                    help="queries outstanding in the peak measurement")
    ap.add_argument("--floor-rate", type=int, default=1000,
                    help="also measure latency at this low rate, for the relay's floor on this "
                         "machine (0: skip)")
    ap.add_argument("--upstream", choices=("fast", "hickory"), default="fast",
                    help="the upstream's engine (dns_load serve --engine): precomputed replies "
                         "(fast) or testlab's hickory-server, same replies at several times the "
                         "CPU per query")
    ap.add_argument("--no-fallback", action="store_true",
                    help="when the baseline is not clean at half of ward's peak, do not look for "
                         "a lower rate at which it is")
    ap.add_argument("--set-rounds", type=int, default=2000,
                    help="commits measured by set_update_latency")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as built")
    args = ap.parse_args()

    if os.geteuid() != 0:
        sys.exit("must run as root (network namespaces, nftables)")
    common.install_cleanup()
    t_start = time.perf_counter()
    common.require_free_lab(LAB)
    if not args.no_build:
        build()
    busy_start = cpu_busy()
    for path in (WARD, DNS_LOAD, SET_UPDATE, CACHE_MEMORY):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} not found: build it (or drop --no-build)")
    dm_version = ensure_dnsmasq()
    pin = Pinning(not args.no_pin)

    log(f"set update latency ({args.set_rounds} commits of 1 and of 3 addresses)")
    su, su_text = set_update_latency(args.set_rounds)
    log("  " + su_text.replace("\n", "\n  "))
    log("host stalls: CPU 0 kept busy, then CPUs 0 and 1, 2 s each, no network")
    machine = machine_stalls()
    log("  " + fmt_stalls(machine))
    log("cache memory: 1M learned addresses, 250 per name and one per name")
    mem = {"250 per name": cache_memory(None), "one per name": cache_memory("one-per-name")}
    for shape, m in mem.items():
        log(f"  {shape}: RSS {m['rss_mib']:.1f} MiB ({m['bytes_per_addr']} bytes per address)")

    tmp = tempfile.mkdtemp(prefix="wbench-dns-")
    policy_file = os.path.join(tmp, "policy.yaml")
    with open(policy_file, "w") as f:
        f.write(POLICY)
    b = Bench(args, pin, policy_file)
    peaks = {k: [] for k, _ in PATHS}
    lats = {k: [] for k, _ in PATHS}
    lows = {k: [] for k, _ in PATHS}
    clean = {k: [] for k, _ in PATHS}   # runs at clean_rate, if the baseline at rate was not clean
    clean_rate = None
    tried = []                          # (rate, problem) of the direct runs looking for it
    upstream_queries = None
    dm_learned = 0
    lab_up = False
    rate = 0
    try:
        lab_up = True
        run(LAB + ["--policy", policy_file, "up"])
        run(in_ns(FW, "nft", "add", "table", "inet", DM_TABLE))
        run(in_ns(FW, "nft", "add", "set", "inet", DM_TABLE, DM_SET,
                  "{ type ipv4_addr; flags timeout; }"))
        upstream = Child([*pin.rest(), DNS_LOAD, "serve", "--netns", WAN, "--engine",
                          args.upstream, "--names", str(args.names)], "upstream",
                         stdin=subprocess.PIPE)
        upstream.wait_for("ready")
        up = f"{UPSTREAM}:53"
        b.load(up, 1.0, window=WARM_WINDOW)   # warm-up: ARP, conntrack, caches

        log(f"phase 1: peak qps, {args.window} queries outstanding, {args.secs:g} s, "
            f"{args.rounds} rounds ({pin.describe()})")
        for rnd in range(args.rounds):
            peak = lambda server: b.load(server, args.secs, window=args.window)  # noqa: E731
            res = {"ward": b.through("ward", peak)[0],
                   "dnsmasq": b.through("dnsmasq", peak)[0], "direct": peak(up)}
            for k, r in res.items():
                peaks[k].append(r)
            log(f"  round {rnd + 1}: " + ", ".join(
                f"{k} {r['qps']:,.0f} qps" for k, r in res.items()))

        rate = int(median([r["qps"] for r in peaks["ward"]]) / 2)
        floor = f" and at {args.floor_rate:,} qps" if args.floor_rate else ""
        log(f"phase 2: latency at {rate:,} qps (half of ward's median peak){floor}, "
            f"{args.lat_secs:g} s each, {args.rounds} rounds")
        fixed_at = lambda r: lambda server: b.load(server, args.lat_secs, rate=r)  # noqa: E731
        fixed = fixed_at(rate)
        low = lambda server: b.load(server, args.lat_secs, rate=args.floor_rate)  # noqa: E731
        ms = (fixed, low) if args.floor_rate else (fixed,)
        for rnd in range(args.rounds):
            res = {"ward": b.through("ward", *ms), "dnsmasq": b.through("dnsmasq", *ms),
                   "direct": [m(up) for m in ms]}
            for k, rs in res.items():
                lats[k].append(rs[0])
                if args.floor_rate:
                    lows[k].append(rs[1])
            log(f"  round {rnd + 1}: " + ", ".join(
                f"{k} p50 {rs[0]['p50_us']} p99 {rs[0]['p99_us']} us, lost {lost(rs[0])}"
                for k, rs in res.items()))

        problem = baseline_problem(lats["direct"])
        if problem and not args.no_fallback:
            log(f"  {problem}")
            r = rate
            while True:
                r = int(r * FALLBACK_STEP / 100) * 100
                if r < max(args.floor_rate, 100):
                    break
                tried.append((r, baseline_problem([fixed_at(r)(up)])))
                log(f"  direct at {r:,} qps: {tried[-1][1] or 'clean'}")
                if tried[-1][1] is None:
                    clean_rate = r
                    break
        if clean_rate:
            log(f"phase 2b: latency at {clean_rate:,} qps (the baseline is clean there), "
                f"{args.lat_secs:g} s, {args.rounds} rounds")
            at = fixed_at(clean_rate)
            for rnd in range(args.rounds):
                res = {"ward": b.through("ward", at)[0], "dnsmasq": b.through("dnsmasq", at)[0],
                       "direct": at(up)}
                for k, r in res.items():
                    clean[k].append(r)
                log(f"  round {rnd + 1}: " + ", ".join(
                    f"{k} p50 {r['p50_us']} p99 {r['p99_us']} us, lost {lost(r)}"
                    for k, r in res.items()))
        dm_learned = set_elements(DM_TABLE, DM_SET)

        upstream.p.stdin.close()   # the server prints its query count and exits
        try:
            upstream.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        lines = upstream.stop()
        counts = [ln for ln in lines if ln.startswith("{")]
        upstream_queries = json.loads(counts[-1])["queries"] if counts else None
    finally:
        stop_all()
        if lab_up:
            subprocess.run(LAB + ["down"], capture_output=True, check=False)
            for ns in (LAN, FW, WAN):  # belt and braces
                if os.path.exists(f"/run/netns/{ns}"):
                    subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    busy_end = cpu_busy()

    # ------------------------------------------------------------------------------- report
    med = lambda rs, key: median([r[key] for r in rs])  # noqa: E731
    base_qps = med(peaks["direct"], "qps")
    # "added" at a rate is only printed where the baseline is clean at that rate.
    invalid = baseline_problem(lats["direct"])

    hdr = (f"{'path':<27} | {'peak qps':>9} | {'vs upstream':>11} | {'p50 us':>7} | "
           f"{'p99 us':>7} | {'added p50 us':>12} | {'added p99 us':>12} | {'lost':>5}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for key, label in PATHS:
        qps = med(peaks[key], "qps")
        p50, p99 = med(lats[key], "p50_us"), med(lats[key], "p99_us")
        n_lost = sum(lost(r) for r in lats[key])
        if key == "direct":
            added50 = added99 = "-"
        elif invalid:
            added50 = added99 = "invalid"
        else:
            added50 = fmt_us(p50 - med(lats["direct"], "p50_us"))
            added99 = fmt_us(p99 - med(lats["direct"], "p99_us"))
        print(f"{label:<27} | {qps:>9,.0f} | {qps / base_qps:>10.2f}x | {fmt_us(p50):>7} | "
              f"{fmt_us(p99):>7} | {added50:>12} | {added99:>12} | {n_lost:>5}")
    sent_at_rate = sum(r["sent"] for r in lats["ward"])
    print(f"(median of {args.rounds} rounds; peak: {args.window} queries outstanding for "
          f"{args.secs:g} s; p50/p99: open loop at {rate:,} qps = half of ward's peak, "
          f"{args.lat_secs:g} s, same rate on every path; lost = unanswered within 1 s or wrong, "
          f"all rounds, of {sent_at_rate:,} sent per path; {args.names:,} names; "
          f"{args.upstream} upstream; {pin.describe()})")
    if invalid:
        print(f"added latency at {rate:,} qps: invalid, {invalid}")
    if tried:
        print("baseline at lower rates: " + "; ".join(
            f"{r:,} qps {why or 'clean'}" for r, why in tried))
    if clean_rate:
        cl99, cl50 = med(clean["direct"], "p99_us"), med(clean["direct"], "p50_us")
        cl_bad = baseline_problem(clean["direct"])
        print(f"at {clean_rate:,} qps (the highest rate tried at which the baseline is clean): "
              + "; ".join(
                  f"{label.split(' ')[0]} p50 {fmt_us(med(clean[k], 'p50_us'))} / p99 "
                  f"{fmt_us(med(clean[k], 'p99_us'))} us, lost {sum(lost(r) for r in clean[k])}"
                  + ("" if k == "direct" or cl_bad else
                     f" (added p50 {fmt_us(med(clean[k], 'p50_us') - cl50)} / p99 "
                     f"{fmt_us(med(clean[k], 'p99_us') - cl99)})")
                  for k, label in PATHS))
    if args.floor_rate:
        lo99 = med(lows["direct"], "p99_us")
        lo_bad = baseline_problem(lows["direct"])
        print(f"at {args.floor_rate:,} qps (what any relay adds on this machine): " + "; ".join(
            f"{label.split(' ')[0]} p50 {fmt_us(med(lows[k], 'p50_us'))} / p99 "
            f"{fmt_us(med(lows[k], 'p99_us'))} us"
            + ("" if k == "direct" or lo_bad else
               f" (added p99 {fmt_us(med(lows[k], 'p99_us') - lo99)})")
            for k, label in PATHS) + (f" ({lo_bad})" if lo_bad else ""))
    print(f"CPU stalls >= {STALL_US} us in 2 s, no proxy or network: {fmt_stalls(machine)}")
    for n, (p50, p99) in sorted(su.items()):
        print(f"set update, {n} address{'es' if n > 1 else ''} per commit "
              f"(nft SetWriter::commit, netlink + kernel): p50 {p50} us, p99 {p99} us")
    for shape, m in mem.items():
        print(f"1M learned addresses, {shape}: process RSS {m['rss_mib']:.1f} MiB "
              f"({m['rss_mib'] * 1.048576:.0f} MB; cache {m['bytes_per_addr']} bytes/address)")
    print()
    print("checks:")
    c = b.ward_counters
    print("  ward counters (all runs): " + " ".join(f"{k}={v}" for k, v in c.items()))
    print(f"  ward's set fqdn4-bench at each stop: {sorted(set(b.ward_sets))} elements "
          f"(of {args.names:,} names); ward run peak RSS: "
          f"{max(b.ward_rss) if b.ward_rss else float('nan'):.1f} MiB")
    print(f"  dnsmasq's set {DM_TABLE}/{DM_SET}: {dm_learned:,} elements; {dm_version}")
    print("  UDP datagrams dropped on a full socket receive buffer in the firewall during the "
          "measurements: " + ", ".join(f"{k} {v:,}" for k, v in b.rcvbuf.items()))
    if upstream_queries is not None:
        print(f"  upstream received {upstream_queries:,} queries for {b.answered_total:,} "
              f"answers counted by the load generator (>= means nothing was answered from a "
              f"cache)")
    print(f"  CPU busy with other work: {busy_start:.0%} before the run, {busy_end:.0%} after"
          + ("  (machine not quiet: numbers are disturbed)"
             if max(busy_start, busy_end) > 0.05 else ""))

    ward_qps, dm_qps = med(peaks["ward"], "qps"), med(peaks["dnsmasq"], "qps")
    su50 = su[1][0]
    worst_mb = max(m["rss_mib"] for m in mem.values()) * 1.048576
    checks_ok = (c.get("servfail", 0) == 0 and c.get("commit_failures", 0) == 0
                 and c.get("rate_limited", 0) == 0 and all(n == args.names for n in b.ward_sets)
                 and dm_learned == args.names
                 and (upstream_queries is None or upstream_queries >= b.answered_total))
    passed = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    results = [
        (passed(ward_qps >= dm_qps), "ward qps >= dnsmasq qps",
         f"{ward_qps:,.0f} vs {dm_qps:,.0f} = {ward_qps / dm_qps:.2f}x"),
        latency_target(rate, lats, " (half of ward's peak)"),
    ]
    if clean_rate:
        results.append(latency_target(clean_rate, clean, " (the baseline is clean there)"))
    results += [
        (passed(su50 <= 200), "set update median <= 200 us", f"{su50} us (1 address per commit)"),
        (passed(worst_mb <= 256), "1M learned addresses <= 256 MB",
         f"{worst_mb:.0f} MB (the larger of the two shapes)"),
    ]
    print()
    print("targets:")
    for status, label, detail in results:
        print(f"  [{status}] {label}: {detail}")
    if not checks_ok:
        print("  [FAIL] sanity checks above (counters, set sizes, upstream count)")
    print()
    print("raw runs (per round: p50, p99, max us, lost, the load generator's largest lag behind "
          "its send schedule us):")
    def tup(r):
        return r["p50_us"], r["p99_us"], r["max_us"], lost(r), r["max_send_lag_us"]
    for key, label in PATHS:
        print(f"  {label}: peak qps {[round(r['qps']) for r in peaks[key]]}, "
              f"at {rate:,} qps {[tup(r) for r in lats[key]]}"
              + (f", at {clean_rate:,} qps {[tup(r) for r in clean[key]]}" if clean_rate else "")
              + (f", at {args.floor_rate:,} qps {[tup(r) for r in lows[key]]}"
                 if args.floor_rate else ""))
    print(f"\ntotal run time: {time.perf_counter() - t_start:.1f}s")
    # [INVALID] is not a pass: the target was not verified.
    return 0 if all(st == "PASS" for st, _, _ in results) and checks_ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
