#!/usr/bin/env bash
# The whole test suite, exactly what CI runs (.ci/run calls this): set-up, formatting,
# clippy with warnings as errors, every test of the workspace (unit, integration, and
# end-to-end tests that boot real QEMU guests).
set -euo pipefail
cd "$(dirname "$0")/.."

# A first build (CI's clean clone) gains nothing from incremental-compilation state, which
# costs gigabytes of disk.
if [ -n "${CI:-}" ] || [ ! -d target/debug ]; then
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

bash scripts/setup.sh

# The tests use what setup.sh provisioned and built.
export PITWALL_CACHE_DIR="${PITWALL_CACHE_DIR:-/var/cache/pitwall}"
export PITWALL_POWERUNIT="$PWD/target/x86_64-unknown-linux-gnu/release/powerunit"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
cargo test --workspace --no-fail-fast 2>&1
