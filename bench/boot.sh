#!/usr/bin/env bash
# Boot benchmark (see bench/boot.rs). Builds in release, prints JSON on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
cargo build --release --quiet --workspace --bins
t="${CARGO_TARGET_DIR:-$PWD/target}"
PITWALL_BIN_DIR="$t/release" exec "$t/release/bench-boot" "${1:-5}"
