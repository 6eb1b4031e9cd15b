#!/usr/bin/env python3
"""Apply time and peak memory of `ward apply` against a naive one-rule-per-line `nft -f`.

For N in 100, 1000, 10000, 100000 egress rules (deterministic mix, see common.gen_rules),
each measurement runs in a fresh network namespace `wbench-apply-*` that is deleted again.
Needs root and target/release/ward (cargo build --release -p ward).

    sudo python3 bench/apply.py [--sizes 100,1000,10000,100000]
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # keep bench/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import WARD, measure, median, ns_add, ns_del  # noqa: E402

SIZES = [100, 1000, 10000, 100000]
# Deleting a namespace frees its ruleset in kernel worker threads after `ip netns delete`
# returns; give that time to finish so it does not land in the next measurement.
SETTLE_S = 0.5


def reps_for(n):
    return 7 if n <= 10000 else 1


def ward_status(ns):
    out = subprocess.run([WARD, "status", "--json", "--netns", ns],
                         capture_output=True, text=True, check=False)
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {}


def run_ward(policy_file, sha256, n, tag):
    ns = ns_add(f"wbench-apply-{os.getpid()}-{tag}")
    try:
        wall, rss, rc, out = measure([WARD, "apply", policy_file, "--netns", ns])
        if rc != 0:
            raise RuntimeError(f"ward apply (N={n}) failed, rc={rc}:\n{out[-2000:]}")
        st = ward_status(ns)
        if not st.get("table_installed") or st.get("policy_sha256") != sha256 \
                or st.get("rules_installed", 0) < n:
            raise RuntimeError(f"ward apply (N={n}) exited 0 but the table is not installed "
                               f"as expected: {json.dumps(st)[:500]}")
        return wall, rss, out.strip().splitlines()[-1] if out.strip() else ""
    finally:
        ns_del(ns)
        time.sleep(SETTLE_S)


def run_naive(nft_file, n, tag):
    ns = ns_add(f"wbench-apply-{os.getpid()}-{tag}")
    try:
        wall, rss, rc, out = measure(["ip", "netns", "exec", ns, "nft", "-f", nft_file])
        if rc != 0:
            raise RuntimeError(f"nft -f naive (N={n}) failed, rc={rc}:\n{out[-2000:]}")
        chk = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                             capture_output=True, text=True, check=False)
        if "table inet naive" not in chk.stdout:
            raise RuntimeError(f"nft -f naive (N={n}) exited 0 but no table inet naive")
        return wall, rss
    finally:
        ns_del(ns)
        time.sleep(SETTLE_S)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)),
                    help="comma-separated rule counts (default: %(default)s)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    common.require_ward()
    common.install_cleanup()
    t_start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="wbench-apply-")
    results = []
    try:
        for n in sizes:
            rules = common.gen_rules(n)
            pol = os.path.join(tmp, f"policy-{n}.yaml")
            nft = os.path.join(tmp, f"naive-{n}.nft")
            text = common.ward_policy(rules)
            with open(pol, "w") as f:
                f.write(text)
            with open(nft, "w") as f:
                f.write(common.naive_ruleset(rules))
            sha = hashlib.sha256(text.encode()).hexdigest()

            w_t, w_rss, n_t, n_rss = [], [], [], []
            summary = ""
            for rep in range(reps_for(n)):
                # Interleaved, so background load hits both sides alike.
                t, rss, summary = run_ward(pol, sha, n, f"{n}-ward-{rep}")
                w_t.append(t)
                w_rss.append(rss)
                t, rss = run_naive(nft, n, f"{n}-naive-{rep}")
                n_t.append(t)
                n_rss.append(rss)
            row = {"n": n, "ward": median(w_t), "naive": median(n_t),
                   "ward_rss": max(w_rss), "naive_rss": max(n_rss),
                   "runs": reps_for(n), "summary": summary}
            results.append(row)
            print(f"  N={n}: ward {row['ward']:.3f}s, naive {row['naive']:.3f}s "
                  f"({row['runs']} run(s)) - {summary}", file=sys.stderr, flush=True)
    finally:
        common.cleanup_namespaces()
        shutil.rmtree(tmp, ignore_errors=True)

    hdr = (f"{'N':>7} | {'ward apply s':>12} | {'nft -f naive s':>14} | "
           f"{'ratio ward/naive':>16} | {'ward peak RSS MB':>16} | {'naive peak RSS MB':>17}")
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['n']:>7} | {r['ward']:>12.3f} | {r['naive']:>14.3f} | "
              f"{r['ward'] / r['naive']:>16.2f} | {r['ward_rss']:>16.1f} | "
              f"{r['naive_rss']:>17.1f}")
    print("(median of 7 runs for N <= 10000, 1 run for N = 100000; each run in a fresh netns)")

    by_n = {r["n"]: r for r in results}
    print()
    print("targets:")
    ok_all = True

    def target(label, ok, detail):
        nonlocal ok_all
        ok_all &= ok
        print(f"  [{'PASS' if ok else 'FAIL'}] {label}: {detail}")

    if 10000 in by_n:
        r = by_n[10000]
        ratio = r["ward"] / r["naive"]
        target("ward apply at 10k <= 0.5x naive", ratio <= 0.5,
               f"{r['ward']:.3f}s vs {r['naive']:.3f}s = {ratio:.2f}x")
    if 100000 in by_n:
        r = by_n[100000]
        target("100k rules applied in < 5 s", r["ward"] < 5.0, f"{r['ward']:.2f}s")
        target("ward peak RSS at 100k <= 300 MB", r["ward_rss"] <= 300.0,
               f"{r['ward_rss']:.0f} MB")
    print(f"\ntotal run time: {time.perf_counter() - t_start:.1f}s")
    return 0 if ok_all else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        common.cleanup_namespaces()
        sys.exit(130)
