#!/usr/bin/env python3
"""Forwarding performance through the lab firewall: ward with 1 rule, ward with 10k rules
(folded into maps, the allowing rule last), and the same 10k rules as a naive linear nft chain.

Builds the lab `ward lab --lan wbench-lan --fw wbench-fw --wan wbench-wan up`, starts servers
in the WAN namespace and clients in the LAN namespace (bench/traffic.py), and measures
  - TCP throughput: one connection sending for SECS seconds (MB/s, 1 MB = 10^6 bytes);
  - new TCP connections per second: connect, 1-byte reply, close, in a loop, CLIENTS processes.
Each measurement is repeated ROUNDS times (policies interleaved per round); medians reported.
The lab is torn down at the end, also on failure or Ctrl-C.

    sudo python3 bench/throughput.py [--secs 3] [--rounds 3] [--clients 2]
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
from common import WARD, in_ns, median, run  # noqa: E402

LAN, FW, WAN = "wbench-lan", "wbench-fw", "wbench-wan"
LAN_HOST, WAN_HOST = "192.168.50.10", "198.51.100.20"
SINK_PORT, ACCEPT_PORT = 5201, 5202
# The namespace names are options of `ward lab` itself: `ward lab --lan A --fw B --wan C up`.
LAB = [WARD, "lab", "--lan", LAN, "--fw", FW, "--wan", WAN]
TRAFFIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traffic.py")

# The one rule that allows the benchmark traffic. Same shape (source . proto . port range) as
# the generated rules, so in the 10k policy it lands in the same verdict map, as its last element.
ALLOW_ID = "bench-allow"
ALLOW_RULE = (f'  - {{id: {ALLOW_ID}, direction: egress, source: {LAN_HOST}, protocol: tcp, '
              f'destination_port: "{SINK_PORT}-{ACCEPT_PORT}", action: accept}}\n')
ALLOW_NFT = (f"ip saddr {LAN_HOST} meta l4proto tcp th dport {SINK_PORT}-{ACCEPT_PORT} "
             f"counter accept")


def naive_present():
    return "table inet naive" in run(in_ns(FW, "nft", "list", "tables")).stdout


def install_ward(policy_file):
    if naive_present():
        run(in_ns(FW, "nft", "delete", "table", "inet", "naive"))
    out = run([WARD, "apply", policy_file, "--netns", FW]).stdout.strip()
    st = json.loads(run([WARD, "status", "--json", "--netns", FW]).stdout)
    if not st.get("table_installed"):
        raise RuntimeError(f"ward apply exited 0 but table not installed: {st}")
    return out.splitlines()[-1] if out else ""


def install_naive(nft_file):
    run([WARD, "remove", "--netns", FW])
    if naive_present():
        run(in_ns(FW, "nft", "delete", "table", "inet", "naive"))
    run(in_ns(FW, "nft", "-f", nft_file))
    if '"table_installed": true' in run([WARD, "status", "--json", "--netns", FW]).stdout:
        raise RuntimeError("ward table still installed during the naive measurement")


def allow_packets(kind):
    """Packets counted by the allowing rule since it was installed."""
    if kind == "ward":
        st = json.loads(run([WARD, "status", "--json", "--netns", FW]).stdout)
        return st.get("counters", {}).get(ALLOW_ID, {}).get("packets", 0)
    text = run(in_ns(FW, "nft", "list", "chain", "inet", "naive", "forward")).stdout
    m = re.search(rf"saddr {LAN_HOST} tcp dport {SINK_PORT}-{ACCEPT_PORT} counter packets (\d+)",
                  text)
    return int(m.group(1)) if m else 0


def tcp_throughput(secs):
    p = run(in_ns(LAN, sys.executable, TRAFFIC, "send", WAN_HOST, str(SINK_PORT), str(secs)),
            timeout=secs + 30)
    r = json.loads(p.stdout)
    return r["bytes"] / r["secs"] / 1e6


def conn_rate(secs, clients):
    procs = [subprocess.Popen(in_ns(LAN, sys.executable, TRAFFIC, "connect", WAN_HOST,
                                    str(ACCEPT_PORT), str(secs)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(clients)]
    rate, total = 0.0, 0
    try:
        for p in procs:
            out, err = p.communicate(timeout=secs + 30)
            if p.returncode != 0:
                raise RuntimeError(f"connect client failed (rc={p.returncode}): {err[-1500:]}")
            r = json.loads(out)
            rate += r["conns"] / r["secs"]
            total += r["conns"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return rate, total


def start_server(*args):
    p = subprocess.Popen(in_ns(WAN, sys.executable, TRAFFIC, *args),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if p.stdout.readline().strip() != "ready":
        p.kill()
        p.wait()
        raise RuntimeError(f"server {args} did not start")
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=float, default=3.0, help="seconds per measurement")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions (median)")
    ap.add_argument("--clients", type=int, default=2, help="client processes for conn/s")
    args = ap.parse_args()

    common.require_ward()
    common.install_cleanup()
    t_start = time.perf_counter()
    common.require_free_lab(LAB)

    tmp = tempfile.mkdtemp(prefix="wbench-tp-")
    empty_yaml = os.path.join(tmp, "empty.yaml")
    ten_k_yaml = os.path.join(tmp, "10k.yaml")
    naive_nft = os.path.join(tmp, "naive-10k.nft")
    filler = common.gen_rules(9999)
    with open(empty_yaml, "w") as f:
        f.write(common.HEADER + ALLOW_RULE)
    with open(ten_k_yaml, "w") as f:
        f.write(common.ward_policy(filler) + ALLOW_RULE)
    with open(naive_nft, "w") as f:
        f.write(common.naive_ruleset(filler, last=[ALLOW_NFT]))

    policies = [  # (label, kind, install)
        ("ward empty (1 rule)", "ward", lambda: install_ward(empty_yaml)),
        ("ward 10k (9,999 + allow last)", "ward", lambda: install_ward(ten_k_yaml)),
        ("naive linear nft 10k", "naive", lambda: install_naive(naive_nft)),
    ]
    mbps = {p[0]: [] for p in policies}
    cps = {p[0]: [] for p in policies}
    notes = {}
    servers = []
    lab_up = False
    try:
        lab_up = True
        run(LAB + ["up"])
        servers.append(start_server("sink", str(SINK_PORT)))
        for _ in range(args.clients):
            servers.append(start_server("acceptor", str(ACCEPT_PORT)))

        # Warm-up (not reported): caches, ARP/neighbour entries, conntrack.
        install_ward(empty_yaml)
        tcp_throughput(1.0)
        conn_rate(1.0, args.clients)

        for rnd in range(args.rounds):
            for label, kind, install in policies:
                note = install()
                if note:
                    notes[label] = note
                t = tcp_throughput(args.secs)
                c, n = conn_rate(args.secs, args.clients)
                seen = allow_packets(kind)
                # Every new flow's first packet must have been decided by the allowing rule.
                if seen < n:
                    raise RuntimeError(f"{label}: allowing rule counted {seen} packets for "
                                       f"{n} connections; traffic did not take that rule")
                mbps[label].append(t)
                cps[label].append(c)
                print(f"  round {rnd + 1} {label}: {t:.0f} MB/s, {c:.0f} conn/s "
                      f"(allow rule: {seen} pkts)", file=sys.stderr, flush=True)
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if lab_up:
            subprocess.run(LAB + ["down"],
                           capture_output=True, check=False)
            for ns in (LAN, FW, WAN):  # belt and braces
                if os.path.exists(f"/run/netns/{ns}"):
                    subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    base_t = median(mbps[policies[0][0]])
    base_c = median(cps[policies[0][0]])
    hdr = (f"{'policy':<31} | {'MB/s':>8} | {'ratio vs empty':>14} | "
           f"{'conn/s':>8} | {'ratio vs empty':>14}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for label, _, _ in policies:
        t, c = median(mbps[label]), median(cps[label])
        print(f"{label:<31} | {t:>8.0f} | {t / base_t:>14.2f} | {c:>8.0f} | "
              f"{c / base_c:>14.2f}")
    print(f"(median of {args.rounds} rounds; {args.secs:g} s per measurement; 1 TCP connection "
          f"for MB/s, {args.clients} client processes for conn/s)")
    for label, note in notes.items():
        print(f"  {label}: {note.split(': ', 1)[-1] if ': ' in note else note}")

    label10k = policies[1][0]
    rt = median(mbps[label10k]) / base_t
    rc = median(cps[label10k]) / base_c
    print()
    print("targets:")
    print(f"  [{'PASS' if rt >= 0.9 else 'FAIL'}] ward 10k throughput >= 0.9x empty: {rt:.2f}x")
    print(f"  [{'PASS' if rc >= 0.9 else 'FAIL'}] ward 10k conn/s >= 0.9x empty: {rc:.2f}x")
    print()
    print("raw runs:")
    for label, _, _ in policies:
        print(f"  {label}: MB/s {[round(x) for x in mbps[label]]}, "
              f"conn/s {[round(x) for x in cps[label]]}")
    print(f"\ntotal run time: {time.perf_counter() - t_start:.1f}s")
    return 0 if rt >= 0.9 and rc >= 0.9 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
