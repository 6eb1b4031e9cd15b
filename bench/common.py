"""Shared helpers for ward's end-to-end benchmarks (stdlib only).

Policy generation (deterministic), namespace bookkeeping with guaranteed cleanup, and
running a child process while recording its wall time and peak RSS (os.wait4).
"""

import atexit
import ipaddress
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where cargo builds: $CARGO_TARGET_DIR if set (relative to the repository), else target/.
TARGET_DIR = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR") or "target")
WARD = os.path.join(TARGET_DIR, "release", "ward")
NS_PREFIX = "wbench-"

HEADER = """\
defaults:
  default_action: deny
  input_action: accept
  output_action: accept
interfaces:
  lan: [lan0]
  wan: [wan0]
rules:
"""


# --------------------------------------------------------------------------- rule generation

def gen_rules(n, seed=1):
    """n egress rules over sources in 10.0.0.0/8: a realistic mix of /24 networks and /32
    hosts, tcp/udp, a single destination port or a small range, ~85% accept / 15% deny.

    Returns a list of dicts {id, source, proto, lo, hi, action}. Deterministic for (n, seed).
    Sources are drawn without replacement from a pool of distinct /24 blocks; about 60% of
    the rules narrow their block to one host (/32), so no two rules' sources overlap.
    For n above the 65,536 /24s of 10/8 the blocks are reused with a different port, so
    keys still never collide (a source may then appear in several rules).
    """
    rng = random.Random(seed)
    blocks = list(range(1 << 16))           # 10.X.Y.0/24 -> X*256+Y
    rng.shuffle(blocks)
    common_ports = [22, 25, 53, 80, 110, 123, 143, 389, 443, 465, 587, 636, 993, 995,
                    1194, 1433, 3306, 3389, 5060, 5432, 5900, 6379, 8080, 8443, 9000]
    rules = []
    for i in range(n):
        b = blocks[i % len(blocks)]
        rnd = i // len(blocks)              # 0 for the first 65,536 rules
        base = (10 << 24) | (b << 8)
        if rng.random() < 0.6:
            source = str(ipaddress.IPv4Address(base | rng.randint(1, 254)))
        else:
            source = str(ipaddress.IPv4Network((base, 24)))
        proto = "tcp" if rng.random() < 0.7 else "udp"
        r = rng.random()
        if rnd == 0 and r < 0.5:
            lo = hi = rng.choice(common_ports)
        elif r < 0.8:
            lo = hi = rng.randint(1024, 19999) + 20000 * rnd
        else:
            lo = rng.randint(1024, 19900) + 20000 * rnd
            hi = lo + rng.choice([1, 3, 9, 15, 99])
        action = "accept" if rng.random() < 0.85 else "deny"
        rules.append({"id": f"r{i}", "source": source, "proto": proto,
                      "lo": lo, "hi": hi, "action": action})
    return rules


def _yaml_port(r):
    return str(r["lo"]) if r["lo"] == r["hi"] else f'"{r["lo"]}-{r["hi"]}"'


def ward_policy(rules):
    """The ward policy text (gateway header + one egress rule per entry)."""
    out = [HEADER]
    for r in rules:
        out.append(
            f'  - {{id: {r["id"]}, direction: egress, source: {r["source"]}, '
            f'protocol: {r["proto"]}, destination_port: {_yaml_port(r)}, '
            f'action: {r["action"]}}}\n')
    return "".join(out)


def naive_ruleset(rules, last=()):
    """The naive equivalent: table inet naive, one forward chain, one nft rule per rule
    (after `ct state established,related accept`, as ward does), then the `last` lines."""
    out = ["table inet naive {\n",
           "  chain forward {\n",
           "    type filter hook forward priority 0; policy drop;\n",
           "    ct state established,related accept\n"]
    for r in rules:
        port = str(r["lo"]) if r["lo"] == r["hi"] else f'{r["lo"]}-{r["hi"]}'
        verdict = "accept" if r["action"] == "accept" else "drop"
        out.append(f'    ip saddr {r["source"]} meta l4proto {r["proto"]} '
                   f'th dport {port} counter {verdict}\n')
    out.extend(f"    {line}\n" for line in last)
    out.append("  }\n}\n")
    return "".join(out)


# --------------------------------------------------------------------------- namespaces

_created = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def cargo_build(*args):
    """`cargo build --release --locked ARGS` into TARGET_DIR; raises with the end of its stderr."""
    argv = ["cargo", "build", "--release", "--locked", *args]
    log(f"building: {' '.join(argv)} (target dir {TARGET_DIR})")
    env = dict(os.environ, CARGO_TARGET_DIR=TARGET_DIR)
    p = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"cargo build failed:\n{p.stderr[-3000:]}")


def apt_install(command, package):
    """Installs Debian's `package` unless `command` is on PATH (apt-get update first if needed)."""
    if shutil.which(command):
        return
    log(f"{command} not found: apt-get install -y {package}")
    r = subprocess.run(["apt-get", "install", "-y", package],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        run(["apt-get", "update"])
        run(["apt-get", "install", "-y", package])


def run(argv, check=True, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (rc={p.returncode}):\n"
                           f"{p.stdout[-1500:]}{p.stderr[-1500:]}")
    return p


def in_ns(ns, *argv):
    return ["ip", "netns", "exec", ns, *argv]


def ns_add(name):
    assert name.startswith(NS_PREFIX), name
    subprocess.run(["ip", "netns", "add", name], check=True)
    _created.append(name)
    return name


def ns_del(name):
    if os.path.exists(f"/run/netns/{name}"):
        subprocess.run(["ip", "netns", "delete", name], check=False)
    if name in _created:
        _created.remove(name)


def cleanup_namespaces():
    for name in list(_created):
        ns_del(name)


def _on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so `finally` blocks run.
    raise KeyboardInterrupt(f"signal {signum}")


def require_free_lab(lab):
    """Exit if a namespace of the lab `lab` (the `ward lab --lan L --fw F --wan W` command
    prefix) is already there, naming the command that removes it."""
    names = [lab[lab.index(flag) + 1] for flag in ("--lan", "--fw", "--wan")]
    for ns in names:
        if os.path.exists(f"/run/netns/{ns}"):
            sys.exit(f"namespace {ns} already exists (a previous run?); remove it with "
                     f"`{' '.join(lab)} down`")


def install_cleanup():
    atexit.register(cleanup_namespaces)
    # ward's snapshots and audit log go to a directory of the run's own, not /var/lib/ward.
    if "WARD_STATE_DIR" not in os.environ:
        import shutil
        import tempfile
        state = tempfile.mkdtemp(prefix="wbench-state-")
        os.environ["WARD_STATE_DIR"] = state
        atexit.register(shutil.rmtree, state, True)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)


# --------------------------------------------------------------------------- children

_procs = []   # every long-running Child started, stopped by pid in stop_all()


class Child:
    """A long-running child whose output lines a thread collects; stopped by its pid."""

    def __init__(self, argv, label, stdin=subprocess.DEVNULL):
        self.label = label
        self.p = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        _procs.append(self)
        self.lines = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, word, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
                if left <= 0:
                    raise RuntimeError(f"{self.label} not ready after {timeout:.0f}s:\n"
                                       + "\n".join(self.seen[-20:]))
            if line is None:
                self.p.wait()
                raise RuntimeError(f"{self.label} exited (rc={self.p.returncode}) before "
                                   f"'{word}':\n" + "\n".join(self.seen[-20:]))
            if line:
                self.seen.append(line)
                if word in line:
                    return

    def alive(self):
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Signals the child (by its pid) and waits; returns everything it printed."""
        if self.alive():
            try:
                self.p.send_signal(sig)
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        if self in _procs:
            _procs.remove(self)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
        return self.seen

    def peak_rss_mib(self):
        try:
            with open(f"/proc/{self.p.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            pass
        return None

    def cpu_ticks(self):
        """(user, system) clock ticks the child has used so far."""
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])


def stop_all():
    """Stops every Child still running (closing its stdin first)."""
    for c in list(_procs):
        if c.p.stdin:
            try:
                c.p.stdin.close()
            except OSError:
                pass
        c.stop(timeout=5)


# --------------------------------------------------------------------------- measuring

# A tiny launcher, started fresh for every measurement: it forks, execs the command, times it
# and reaps it with os.wait4, whose rusage is that one child's (ru_maxrss in KiB).
#
# Why not fork from this script directly: at exec() the kernel folds the RSS of the process
# image being replaced into the new program's ru_maxrss, and subprocess uses vfork, so every
# child would report at least this script's own RSS (hundreds of MB once a 100k-rule policy
# has been generated). Forking from a small `python3 -S` (about 5 MiB of private memory) keeps
# that floor low; readings below ~6 MB are dominated by it.
_LAUNCHER = r"""
import json, os, sys, time
result_path, argv = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(result_path, "w") as f:
    json.dump({"wall": wall, "maxrss_kib": ru.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(argv, timeout=600):
    """Runs argv once in a fresh launcher; returns (wall s, peak RSS MiB, rc, output text)."""
    import tempfile
    with tempfile.TemporaryFile() as out, \
            tempfile.NamedTemporaryFile("r", prefix="wbench-res-") as res:
        p = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, res.name, *argv],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)   # the launcher and the command, by group id
            p.wait()
            raise RuntimeError(f"timed out after {timeout}s: {' '.join(argv)}")
        except BaseException:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
        out.seek(0)
        text = out.read().decode(errors="replace")
        data = res.read()
    if not data:
        raise RuntimeError(f"launcher failed (rc={p.returncode}): {text[-1000:]}")
    r = json.loads(data)
    return r["wall"], r["maxrss_kib"] / 1024.0, r["rc"], text


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def require_ward():
    if not os.access(WARD, os.X_OK):
        sys.exit(f"{WARD} not found: run `cargo build --release -p ward` first")
    if os.geteuid() != 0:
        sys.exit("must run as root (network namespaces, nftables)")
