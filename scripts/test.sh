#!/usr/bin/env bash
# The test suite: unit, property and golden tests, and the integration tests that build
# LAN / firewall / WAN topologies in network namespaces. Needs root (namespaces, nftables).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "the tests create network namespaces and nftables tables: run them as root" >&2
  exit 1
fi
bash scripts/deps.sh
cargo test --workspace --locked "$@"
