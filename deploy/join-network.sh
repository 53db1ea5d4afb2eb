#!/usr/bin/env bash
# Joins this machine to the fleet: installs node-agent, writes its
# configuration, installs and starts the systemd unit, then waits until the
# registry reports the node online and prints its id.
#
#   sudo deploy/join-network.sh --nats-url nats://registry.example:4222 \
#        --token fjt1_...          (from: nodectl token create --role inference --labels gpu,region=eu)
#
# With --token (auth mode) the agent exchanges the one-time token for its own
# credentials (0600 in its state directory) before it starts; the token's
# role and labels apply unless --role/--labels say otherwise. Without it the
# agent connects without credentials (an open development server).
#
# --prefix DIR installs below DIR instead of / (for tests and packaging),
# --systemctl CMD replaces systemctl, --dry-run prints what would be done.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: join-network.sh --nats-url URL [options]
  --nats-url URL      NATS server(s) of the fleet (required)
  --token TOKEN       one-time join token (nodectl token create); or JOIN_TOKEN
  --tls-ca FILE       CA certificate to trust for the server (TLS)
  --role ROLE         node role (default: worker)
  --labels K[=V],...  labels; a bare key means "true"
  --node-name NAME    human name (default: the hostname)
  --binary PATH       node-agent binary to install (default: next to this
                      script, then target/release, then node-agent on PATH)
  --prefix DIR        install below DIR instead of / (default: /)
  --systemctl CMD     the systemctl to use (default: systemctl)
  --timeout SECONDS   how long to wait for the node to be online (default: 60)
  --dry-run           print what would be done, change nothing
USAGE
}

nats_url="" role="" labels="" token="${JOIN_TOKEN:-}" tls_ca="" node_name="" binary="" prefix="" systemctl="systemctl"
timeout=60 dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nats-url) nats_url="${2:-}"; shift 2 ;;
    --role) role="${2:-}"; shift 2 ;;
    --token) token="${2:-}"; shift 2 ;;
    --tls-ca) tls_ca="${2:-}"; shift 2 ;;
    --labels) labels="${2:-}"; shift 2 ;;
    --node-name) node_name="${2:-}"; shift 2 ;;
    --binary) binary="${2:-}"; shift 2 ;;
    --prefix) prefix="${2:-}"; shift 2 ;;
    --systemctl) systemctl="${2:-}"; shift 2 ;;
    --timeout) timeout="${2:-}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "join-network.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "join-network.sh: $*" >&2; exit 1; }
[ -n "$nats_url" ] || { usage >&2; die "--nats-url is required"; }
# Values go into a TOML file: allow only characters that need no escaping.
safe='^[A-Za-z0-9._:/@,=*+-]*$'
[[ "$token" =~ ^[A-Za-z0-9_-]*$ ]] || die "--token: not a join token (copy it whole)"
for pair in "nats-url:$nats_url" "role:$role" "labels:$labels" "node-name:$node_name" "tls-ca:$tls_ca"; do
  value="${pair#*:}"
  [[ "$value" =~ $safe ]] || die "--${pair%%:*} ${value@Q}: only A-Z a-z 0-9 . _ : / @ , = * + - are allowed"
done
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "$binary" ]; then
  for candidate in "$here/node-agent" "$here/../target/release/node-agent" "$(command -v node-agent || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then binary="$candidate"; break; fi
  done
fi
[ -n "$binary" ] && [ -x "$binary" ] || die "no node-agent binary found; build it (cargo build --release) or pass --binary"
unit_src="$here/systemd/node-agent.service"
[ -f "$unit_src" ] || die "missing $unit_src"

prefix="${prefix%/}"
bin_dir="$prefix/usr/local/bin"
conf_dir="$prefix/etc/node-agent"
unit_dir="$prefix/etc/systemd/system"
state_dir="$prefix/var/lib/node-agent"
config="$conf_dir/config.toml"

run() {
  if [ "$dry_run" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

echo "==> installing $binary as $bin_dir/node-agent"
run install -d -m 0755 "$bin_dir" "$conf_dir" "$unit_dir"
run install -m 0755 "$binary" "$bin_dir/node-agent"

echo "==> writing $config"
config_text="# Written by join-network.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ).
# Edit, then: systemctl reload node-agent (re-reads it and registers again).
nats_url = \"$nats_url\"
state_dir = \"$state_dir\""
# Without --token the role defaults to worker; with one, the token's applies.
if [ -z "$token" ] && [ -z "$role" ]; then role="worker"; fi
if [ -n "$role" ]; then config_text="$config_text
role = \"$role\""; fi
if [ -n "$labels" ]; then config_text="$config_text
labels = \"$labels\""; fi
if [ -n "$tls_ca" ]; then config_text="$config_text
tls_ca = \"$tls_ca\""; fi
if [ -n "$node_name" ]; then config_text="$config_text
node_name = \"$node_name\""; fi
if [ "$dry_run" = 1 ]; then
  echo "would write $config:"; echo "$config_text" | sed 's/^/    /'
else
  tmp="$(mktemp "$conf_dir/.config.toml.XXXXXX")"
  printf '%s\n' "$config_text" >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$config"
fi

if [ -n "$token" ]; then
  echo "==> joining with the token: this node's own credentials go to $state_dir"
  if [ "$dry_run" = 1 ]; then
    echo "would run: $bin_dir/node-agent --config $config join --token <token> --no-run"
  else
    install -d -m 0700 "$state_dir"
    "$bin_dir/node-agent" --config "$config" join --token "$token" --no-run \
      || die "the join was refused (see above); ask for a fresh token: nodectl token create"
  fi
fi

echo "==> installing the systemd unit $unit_dir/node-agent.service"
unit_text="$(sed -e "s#/usr/local/bin/node-agent#$bin_dir/node-agent#g" \
                 -e "s#/etc/node-agent/config.toml#$config#g" "$unit_src")"
if [ "$dry_run" = 1 ]; then
  echo "would write $unit_dir/node-agent.service"
else
  printf '%s\n' "$unit_text" >"$unit_dir/node-agent.service"
  chmod 0644 "$unit_dir/node-agent.service"
fi

echo "==> enabling and starting node-agent"
run $systemctl daemon-reload
run $systemctl enable --now node-agent.service

if [ "$dry_run" = 1 ]; then
  echo "would wait up to ${timeout}s for the registry to report this node online"
  exit 0
fi

echo "==> waiting up to ${timeout}s for the registry to report this node online"
deadline=$((SECONDS + timeout))
while :; do
  if status="$("$bin_dir/node-agent" status --config "$config" 2>/dev/null)"; then
    id="$(cat "$state_dir/node_id" 2>/dev/null || true)"
    echo "joined: node $id is online"
    echo "$id"
    exit 0
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "join-network.sh: the node is not online after ${timeout}s; see: journalctl -u node-agent" >&2
    [ -n "${status:-}" ] && echo "$status" >&2
    exit 1
  fi
  sleep 1
done
