#!/usr/bin/env bash
# The demo: a local nats-server, the registry and three agents with different
# labels; prints the fleet and a few discovery answers, then kills one agent
# abruptly and follows the alerts. Ctrl-C stops everything.
#
# DEMO_SECONDS=N stops it by itself after N seconds of following alerts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NATS_BIN="$("$root/scripts/nats-server.sh")"
echo "==> building (cargo build --bins)"
cargo build --workspace --bins --quiet
bin="$root/target/debug"

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port="${DEMO_NATS_PORT:-4222}"
if port_busy "$port"; then
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  echo "==> port 4222 is taken; using $port"
fi
export NATS_URL="nats://127.0.0.1:$port"
work="$(mktemp -d "${TMPDIR:-/tmp}/fleet-demo.XXXXXX")"
pids=()

cleanup() {
  trap - EXIT INT TERM
  echo
  echo "==> stopping agents (they deregister), registry and nats-server"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
  echo "==> done"
}
trap cleanup EXIT INT TERM

echo "==> nats-server $("$NATS_BIN" --version | grep -oE '[0-9.]+$') on $NATS_URL (logs in $work)"
"$NATS_BIN" -c nats-config/dev.conf -p "$port" -sd "$work/jetstream" >"$work/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do port_busy "$port" && break; sleep 0.1; done

echo "==> node-registry (degraded after 10s, offline after 30s, for the demo)"
"$bin/node-registry" --degraded-after 10s --offline-after 30s >"$work/registry.log" 2>&1 &
registry_pid=$!
pids+=("$registry_pid")

start_agent() {
  local name="$1"; shift
  "$bin/node-agent" --state-dir "$work/$name" --node-name "$name" --heartbeat-interval 2s "$@" \
    >"$work/$name.log" 2>&1 &
  pids+=($!)
}
echo "==> three agents: gpu-box (gpu, eu), workstation (eu), laptop (us, spot)"
start_agent gpu-box --role inference --labels gpu,region=eu,tier=inference
start_agent workstation --role worker --labels region=eu,tier=dev
start_agent laptop --role worker --labels region=us,spot
laptop_pid="${pids[-1]}"

# Wait until all three are online and have sent a heartbeat (metrics).
for _ in $(seq 150); do
  n="$("$bin/nodectl" discover -o json 2>/dev/null | python3 -c '
import json, sys
print(sum(1 for n in json.load(sys.stdin)["nodes"] if n.get("metrics")))' 2>/dev/null || echo 0)"
  [ "$n" = 3 ] && break
  sleep 0.2
done

echo
echo "\$ nodectl nodes"
"$bin/nodectl" nodes
echo
echo "\$ nodectl discover --capability gpu --label region=eu"
"$bin/nodectl" discover --capability gpu --label region=eu
echo
echo "\$ nodectl discover 'region in (eu,us),!spot' --prefer region=us"
"$bin/nodectl" discover 'region in (eu,us),!spot' --prefer region=us
echo
echo "\$ nodectl discover --label region=eu --sort node_id -o json | (first node, abridged)"
"$bin/nodectl" discover --label region=eu --sort node_id -o json | python3 -c '
import json, sys
reply = json.load(sys.stdin)
node = reply["nodes"][0]
keep = {k: node[k] for k in ("node_id", "node_name", "role", "labels", "status", "last_heartbeat") if k in node}
print(json.dumps({"total": reply["total"], "nodes[0]": keep}, indent=2))'
echo
echo "==> killing the laptop agent with SIGKILL: watch it go degraded (10s), then offline (30s)"
{ kill -9 "$laptop_pid"; wait "$laptop_pid"; } 2>/dev/null || true
echo "\$ nodectl alerts --since 1m --follow      (Ctrl-C to stop the demo)"
if [ -n "${DEMO_SECONDS:-}" ]; then
  timeout "$DEMO_SECONDS" "$bin/nodectl" alerts --since 1m --follow || true
else
  "$bin/nodectl" alerts --since 1m --follow || true
fi
