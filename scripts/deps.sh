#!/usr/bin/env bash
# Installs what ward and its tests need on a fresh Debian machine (as root): libnftables
# (ward loads it at run time) and the nft command (the benchmarks' baseline).
set -euo pipefail
if ldconfig -p | grep -q 'libnftables.so.1' && command -v nft >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq nftables libnftables1 >/dev/null
