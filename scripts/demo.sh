#!/usr/bin/env bash
# Pitwall's main job on the embedded default: `pitwalld all` (SQLite store, in-process bus)
# and a demo VM booted from a locally built busybox image. Leaves the daemon running and
# prints what to type next.
#
# Environment: PITWALL_DEMO_DIR (data directory, default ./.pitwall/demo),
#              PITWALL_LISTEN (default 127.0.0.1:7070).
#
# VM networking runs inside the network namespace `pitwall-demo` (bridge, TAPs, firewall table
# and QEMU live there), so the demo changes nothing of this machine's own network but one
# private veth pair (pwdemo0, 10.231.0.1/30 ↔ 10.231.0.2/30) over which the namespace's
# terminator dials the edge. `ip netns del pitwall-demo` removes both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

bash scripts/setup.sh

DATA="${PITWALL_DEMO_DIR:-$ROOT/.pitwall/demo}"
LISTEN="${PITWALL_LISTEN:-127.0.0.1:7070}"
export PITWALL_API="http://$LISTEN"
BIN="$ROOT/target/debug"
PITWALL="$BIN/pitwall"
mkdir -p "$DATA"

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }

NETNS=pitwall-demo
if ! ip netns list | grep -qw "$NETNS"; then
    say "creating network namespace $NETNS (VM networking lives there) and veth pwdemo0"
    ip netns add "$NETNS"
    ip netns exec "$NETNS" ip link set lo up
    ip link add pwdemo0 type veth peer name edge0 netns "$NETNS"
    ip addr add 10.231.0.1/30 dev pwdemo0
    ip link set pwdemo0 up
    ip netns exec "$NETNS" ip addr add 10.231.0.2/30 dev edge0
    ip netns exec "$NETNS" ip link set edge0 up
fi
export PITWALL_NETNS="$NETNS" PITWALL_EDGE_LISTEN=10.231.0.1:0 PITWALL_EDGE_NAMES=10.231.0.1

if "$PITWALL" health >/dev/null 2>&1; then
    say "pitwalld already answers at $PITWALL_API; using it"
else
    say "starting pitwalld all (data in $DATA, API on $PITWALL_API, log in $DATA/pitwalld.log)"
    nohup "$BIN/pitwalld" all --data-dir "$DATA" --listen "$LISTEN" >>"$DATA/pitwalld.log" 2>&1 &
    echo $! >"$DATA/pitwalld.pid"
    for _ in $(seq 1 600); do
        if h=$("$PITWALL" health 2>/dev/null) && ! grep -q 'hosts: *none' <<<"$h"; then break; fi
        if ! kill -0 "$(cat "$DATA/pitwalld.pid")" 2>/dev/null; then
            say "pitwalld exited; its log:"; tail -n 30 "$DATA/pitwalld.log"; exit 1
        fi
        sleep 0.2
    done
fi

# pitwalld created the administrator on its first start, with a one-time password in
# $DATA/admin-credentials (mode 0600); log the CLI in with it (the login is stored, 0600).
say "logging in as admin (password from $DATA/admin-credentials)"
sed -n 's/^password=//p' "$DATA/admin-credentials" | "$PITWALL" login --user admin --password-stdin
"$PITWALL" whoami

say "building a busybox image (OCI layout) from Debian's busybox-static"
rm -rf "$DATA/demo-image"
"$BIN/pitwall-fixture" busybox-image "$DATA/demo-image" latest /bin/sh -c \
    'echo "Hello from $(hostname), a Pitwall microVM running $(uname -r)"; exec sleep 2147483647' >/dev/null

say "importing it as demo/hello:latest"
"$PITWALL" image import "$DATA/demo-image" --name demo/hello:latest

if "$PITWALL" vm show demo >/dev/null 2>&1; then
    say "a VM named demo exists already; replacing it"
    "$PITWALL" vm delete demo --wait
fi
say "creating VM demo and waiting for it to run (a TCG boot takes a few seconds)"
"$PITWALL" vm create demo --image demo/hello:latest --memory 256 --wait
"$PITWALL" vm list
say "its console:"
for _ in $(seq 1 50); do
    if "$PITWALL" vm console demo | grep -q "Hello from"; then break; fi
    sleep 0.2
done
"$PITWALL" vm console demo | grep -v '^\s*$' | tail -n 5

say "its services, and a command run in it through the guest agent:"
"$PITWALL" vm services demo
"$PITWALL" exec demo -- uname -a
say "pitwall ssh through the edge (no port of the host is involved):"
if ! "$PITWALL" ssh demo -- sh -c 'echo "hello over ssh from $(hostname)"'; then
    say "(pitwall ssh did not get through; see $DATA/pitwalld.log)"
fi

cat <<NEXT

Pitwall runs at $PITWALL_API with the VM "demo". Try:
  export PATH="$BIN:\$PATH" PITWALL_API=$PITWALL_API
  pitwall vm list
  pitwall vm console demo
  pitwall ssh demo                    # a shell in the VM, through the edge (no host port)
  pitwall exec demo -- ps             # a command through the guest agent
  pitwall vm services demo; pitwall vm logs demo
  pitwall vm stop demo --wait && pitwall vm start demo --wait
  pitwall vm create second --image demo/hello:latest --wait
  pitwall vm delete demo --wait
  pitwall events                      # follow lifecycle events (Ctrl-C to end)
  pitwall whoami; pitwall quota show; pitwall audit
  echo 'a long password' | pitwall user create alice --group ops --password-stdin
  pitwall quota set user:alice --max-vms 2
  curl -s $PITWALL_API/v1/openapi.json | head
Stop the daemon with: kill \$(cat $DATA/pitwalld.pid)   (VMs keep running; a new start re-attaches)
NEXT
