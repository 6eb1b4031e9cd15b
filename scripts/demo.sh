#!/usr/bin/env bash
# The namespace lab demo: LAN host, firewall and WAN host in namespaces, examples/lab.yaml
# applied in the firewall, probes printed as a table, everything removed afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo run --release --locked -p ward -- lab demo "$@"
