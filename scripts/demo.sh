#!/usr/bin/env bash
# The demo: a local nats-server in auth mode, the registry and three agents
# that join with one-time tokens; prints the fleet and a few discovery
# answers, then kills one agent abruptly and follows the alerts. Ctrl-C stops
# everything. It also serves the fleet page (`nodectl dashboard`) and prints
# its URL: open it to watch the same fleet live, the killed agent included.
#
# Auth: the first run makes development credentials in .dev-auth/ (an
# operator, the fleet account, users for the registry and an admin; keys
# 0600, ignored by git); every agent joins with a token from
# `nodectl token create` and gets its own credentials. DEMO_AUTH=0 runs
# without auth (nats-config/dev.conf).
#
# DEMO_SECONDS=N stops it by itself after N seconds of following alerts.
# On a terminal the demo waits for Enter before killing the agent (time to
# open the page); otherwise it waits DEMO_KILL_AFTER seconds (default 0).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

NATS_BIN="$("$root/scripts/nats-server.sh")"
echo "==> building the fleet page (scripts/dashboard.sh: npm ci, esbuild)"
"$root/scripts/dashboard.sh"
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ws_port=9222
port_busy "$ws_port" && ws_port="$(free_port)"
dash_port=9207
port_busy "$dash_port" && dash_port="$(free_port)"
metrics_port=9464
port_busy "$metrics_port" && metrics_port="$(free_port)"
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

auth_dir="$root/.dev-auth"
if [ "${DEMO_AUTH:-1}" = 1 ]; then
  if [ ! -f "$auth_dir/operator.nk" ]; then
    echo "==> first run: development credentials in $auth_dir"
    "$bin/nodectl" auth --dir "$auth_dir" init >/dev/null
  fi
  server_conf=nats-config/dev-auth.conf
  registry_auth=(--creds "$auth_dir/creds/registry.creds")
  export NODE_REGISTRY_JOIN_SIGNING_KEY="$auth_dir/fleet-signing.nk"
  NODE_REGISTRY_JOIN_ACCOUNT="$(cat "$auth_dir/fleet.pub")"
  export NODE_REGISTRY_JOIN_ACCOUNT
  ctl_args=(--creds "$auth_dir/creds/admin.creds")
else
  server_conf=nats-config/dev.conf
  registry_auth=()
  ctl_args=()
fi
ctl() { "$bin/nodectl" "${ctl_args[@]}" "$@"; }

# The chosen config, with its WebSocket listener on $ws_port (includes are
# relative to the including file).
rel_conf="$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$root/$server_conf" "$work")"
printf 'include "%s"\nwebsocket {\n  listen: "127.0.0.1:%s"\n  no_tls: true\n}\n' "$rel_conf" "$ws_port" >"$work/nats.conf"
echo "==> nats-server $("$NATS_BIN" --version | grep -oE '[0-9.]+$') on $NATS_URL (WebSocket ws://127.0.0.1:$ws_port), config $server_conf (logs in $work)"
"$NATS_BIN" -c "$work/nats.conf" -p "$port" -sd "$work/jetstream" >"$work/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do port_busy "$port" && break; sleep 0.1; done

echo "==> node-registry (degraded after 10s of silence or 3s after a closed connection, offline after 30s, for the demo; metrics on 127.0.0.1:$metrics_port)"
NODE_REGISTRY_DISCONNECT_GRACE=3s "$bin/node-registry" "${registry_auth[@]}" --degraded-after 10s --offline-after 30s \
  --metrics-addr "127.0.0.1:$metrics_port" >"$work/registry.log" 2>&1 &
registry_pid=$!
pids+=("$registry_pid")

# The fleet page: files on loopback; the browser talks to NATS over
# WebSocket, as a reader in auth mode.
# (A reader credential of its own, made once: one from an older
# .dev-auth may predate the reader's permission to watch.)
dash_auth=()
if [ "${DEMO_AUTH:-1}" = 1 ]; then
  dash_creds="$auth_dir/creds/dashboard.creds"
  [ -f "$dash_creds" ] || "$bin/nodectl" auth --dir "$auth_dir" issue --role reader --name dashboard --out "$dash_creds" >/dev/null
  dash_auth=(--creds "$dash_creds")
fi
"$bin/nodectl" "${dash_auth[@]}" dashboard --listen "127.0.0.1:$dash_port" \
  --ws-url "ws://127.0.0.1:$ws_port" >"$work/dashboard.log" 2>&1 &
pids+=($!)
dashboard_url="http://127.0.0.1:$dash_port/"
echo "==> dashboard: $dashboard_url   (open it in a browser: the fleet, live)"

# With auth, each agent joins with a one-time token that grants its role
# and labels; without, they are given on the command line.
start_agent() {
  local name="$1" role="$2" labels="$3"
  if [ "${DEMO_AUTH:-1}" = 1 ]; then
    local token=""
    for _ in $(seq 50); do
      token="$(ctl token --dir "$auth_dir" create --role "$role" --labels "$labels" --ttl 10m 2>/dev/null)" && break
      sleep 0.2
    done
    [ -n "$token" ] || { echo "demo: could not create a join token (see $work/registry.log)" >&2; exit 1; }
    echo "    $name: node-agent join --token ${token:0:24}…"
    "$bin/node-agent" --state-dir "$work/$name" --node-name "$name" --heartbeat-interval 2s \
      join --token "$token" >"$work/$name.log" 2>&1 &
  else
    "$bin/node-agent" --state-dir "$work/$name" --node-name "$name" --heartbeat-interval 2s \
      --role "$role" --labels "$labels" >"$work/$name.log" 2>&1 &
  fi
  pids+=($!)
}
echo "==> three agents: gpu-box (gpu, eu), workstation (eu), laptop (us, spot)"
start_agent gpu-box inference gpu,region=eu,tier=inference
start_agent workstation worker region=eu,tier=dev
start_agent laptop worker region=us,spot
laptop_pid="${pids[-1]}"

# Wait until all three are online and have sent a heartbeat (metrics).
for _ in $(seq 150); do
  n="$(ctl discover -o json 2>/dev/null | python3 -c '
import json, sys
print(sum(1 for n in json.load(sys.stdin)["nodes"] if n.get("metrics")))' 2>/dev/null || echo 0)"
  [ "$n" = 3 ] && break
  sleep 0.2
done

echo
echo "\$ nodectl nodes"
ctl nodes
echo
echo "\$ nodectl discover --capability gpu --label region=eu"
ctl discover --capability gpu --label region=eu
echo
echo "\$ nodectl discover 'region in (eu,us),!spot' --prefer region=us"
ctl discover 'region in (eu,us),!spot' --prefer region=us
echo
echo "\$ nodectl discover --label region=eu --sort node_id -o json | (first node, abridged)"
ctl discover --label region=eu --sort node_id -o json | python3 -c '
import json, sys
reply = json.load(sys.stdin)
node = reply["nodes"][0]
keep = {k: node[k] for k in ("node_id", "node_name", "role", "labels", "status", "last_heartbeat") if k in node}
print(json.dumps({"total": reply["total"], "nodes[0]": keep}, indent=2))'
echo
echo "==> dashboard: $dashboard_url"
echo "==> Prometheus metrics: http://127.0.0.1:$metrics_port/metrics   (deploy/prometheus/prometheus.yml scrapes it; docs/OPERATIONS.md)"
echo "\$ nodectl health"
ctl health || true
if [ -t 0 ] && [ -z "${DEMO_SECONDS:-}" ]; then
  read -r -p "    open it, then press Enter to kill the laptop agent and watch it go degraded, then offline " _
else
  sleep "${DEMO_KILL_AFTER:-0}"
fi
echo "==> killing the laptop agent with SIGKILL: watch it go degraded (3s after the server reports its connection closed), then offline (30s of silence)"
{ kill -9 "$laptop_pid"; wait "$laptop_pid"; } 2>/dev/null || true
echo "\$ nodectl alerts --since 1m --follow      (Ctrl-C to stop the demo)"
if [ -n "${DEMO_SECONDS:-}" ]; then
  timeout "$DEMO_SECONDS" "$bin/nodectl" "${ctl_args[@]}" alerts --since 1m --follow || true
else
  ctl alerts --since 1m --follow || true
fi
