#!/usr/bin/env bash
# Pitwall set-up, idempotent: Debian packages, build, guest kernel.
# Both README commands (scripts/demo.sh, scripts/test.sh) call it first.
#
# Environment: PITWALL_CACHE_DIR (guest kernel cache, default /var/cache/pitwall).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(qemu-system-x86 e2fsprogs erofs-utils nftables iproute2 openssh-client openssh-server busybox-static kmod tar ca-certificates docker-registry skopeo apache2-utils openssl)
CACHE_DIR="${PITWALL_CACHE_DIR:-/var/cache/pitwall}"

log() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    # One retry: a mirror hiccup or a stale list should not fail a fresh machine.
    local attempt
    for attempt in 1 2; do
        if as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"; then
            return 0
        fi
        log "apt-get failed (attempt $attempt); retrying in 10 s"
        sleep 10
    done
    log "could not install: $*"
    return 1
}

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    # The packages are tools for Pitwall and its tests: none of their services (sshd,
    # docker-registry, ...) may start on this machine because of the install. Tests start what
    # they need themselves, on loopback. policy-rc.d tells Debian's maintainer scripts so; one
    # that exists already is left alone.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        policy=/usr/sbin/policy-rc.d
    fi
    status=0
    apt_install "${missing[@]}" || status=$?
    [ -n "$policy" ] && as_root rm -f "$policy"
    [ "$status" -eq 0 ] || exit "$status"
fi

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install a Rust toolchain (rustup) first"
    exit 1
fi

log "building Pitwall (debug profile)"
cargo build --workspace --bins --quiet

log "building powerunit as a static binary"
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release -p powerunit --target x86_64-unknown-linux-gnu

log "provisioning the guest kernel into $CACHE_DIR"
as_root mkdir -p "$CACHE_DIR"
# The kernel is fetched with apt-get download, which needs package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    as_root apt-get update -qq || { sleep 10; as_root apt-get update -qq; }
fi
target/debug/pitwalld kernel provision --cache-dir "$CACHE_DIR"

# The real OIDC provider of crates/pitwall-control/tests/oidc_provider.rs (npm oidc-provider).
# Node.js comes from Debian when the machine has none.
OIDC_FIXTURE=tests/fixtures/oidc
if [ ! -d "$OIDC_FIXTURE/node_modules" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        log "installing Debian's nodejs and npm (for the OIDC test provider)"
        apt_install nodejs npm || true
    fi
    if command -v npm >/dev/null 2>&1; then
        log "installing the OIDC test provider (npm) in $OIDC_FIXTURE"
        (cd "$OIDC_FIXTURE" && npm ci --no-audit --no-fund --loglevel=error)
    else
        log "npm not found: skipping $OIDC_FIXTURE (install Node.js 20+ with npm, then rerun, or the OIDC tests fail)"
    fi
fi
log "done"
