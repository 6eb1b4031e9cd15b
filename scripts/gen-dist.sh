#!/usr/bin/env bash
# Regenerates dist/'s man pages and shell completions from the command line as built.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p ward --bin ward
ward="${CARGO_TARGET_DIR:-target}/debug/ward"
rm -f dist/man/*.1
"$ward" generate man dist/man
"$ward" generate completions bash >dist/completions/ward.bash
"$ward" generate completions zsh >dist/completions/_ward
"$ward" generate completions fish >dist/completions/ward.fish
