#!/usr/bin/env bash
# Two agentbox clusters on one machine (as root), and a gateway in front of both:
#   - cluster `eu`:  API 127.0.0.1:8180, E2B API :8190, data plane :8192 (subnet 10.214.0.0/16)
#   - cluster `home`, the gateway: API 127.0.0.1:8280, E2B API :8290, data plane :8292
#     (subnet 10.215.0.0/16), with a clusters config that lists `eu`.
# Claims a sandbox on `eu` through `home`, runs a command in it, lists both clusters, places a claim
# with `*::default`, then deletes the pools (their slots go) and stops both servers.
# Needs the release build (scripts/quickstart.sh builds it): target/release/agentbox.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (e.g. sudo scripts/two-clusters.sh)" >&2; exit 2; }
bin=${AGENTBOX_BIN:-target/release/agentbox}
[ -x "$bin" ] || cargo build --release --locked -p agentbox -p agentbox-envd
work=$(mktemp -d /tmp/agentbox-two-clusters.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  # The servers leave their bridge and NAT rule for the next start; this demo removes them.
  for b in agbxeu:10.214 agbxhome:10.215; do
    ip link del "${b%%:*}" 2>/dev/null || true
    iptables -t nat -D POSTROUTING -s "${b##*:}.0.0/16" ! -o "${b%%:*}" -j MASQUERADE 2>/dev/null || true
  done
}
trap cleanup EXIT

"$bin" serve --cluster-id eu --data-dir "$work/eu" --default-pool-size 2 \
  --listen 127.0.0.1:8180 --e2b-listen 127.0.0.1:8190 --proxy-listen 127.0.0.1:8192 \
  --subnet 10.214.0.0/16 --bridge agbxeu >"$work/eu.log" 2>&1 &
pids+=($!)
cat >"$work/clusters.yaml" <<'YAML'
clusters:
  - id: home
    name: Gateway
  - id: eu
    name: Europe
    nativeUrl: http://127.0.0.1:8180
    e2bUrl: http://127.0.0.1:8190
    proxyUrl: http://127.0.0.1:8192
YAML
"$bin" serve --cluster-id home --clusters-config "$work/clusters.yaml" --data-dir "$work/home" \
  --default-pool-size 1 --listen 127.0.0.1:8280 --e2b-listen 127.0.0.1:8290 --proxy-listen 127.0.0.1:8292 \
  --subnet 10.215.0.0/16 --bridge agbxhome >"$work/home.log" 2>&1 &
pids+=($!)
for port in 8180 8280; do
  for _ in $(seq 300); do curl -fsS "127.0.0.1:$port/ping" >/dev/null 2>&1 && break; sleep 0.1; done
done
export AGENTBOX_ENDPOINT=http://127.0.0.1:8280   # every command below talks to the gateway
"$bin" pool scale default 1 --wait >/dev/null
AGENTBOX_ENDPOINT=http://127.0.0.1:8180 "$bin" pool scale default 2 --wait >/dev/null

echo "== the clusters the gateway knows"
"$bin" clusters
echo "== claim a sandbox on eu through the gateway"
id=$("$bin" sandbox create --pool eu::default -o json | jq -r .sandbox.sandboxId)
echo "sandbox id: $id"
"$bin" exec "$id" -- sh -c 'echo "hello from $(hostname) on cluster eu"'
echo "== the same sandbox through the gateway's data plane (the agent's health check)"
curl -s -o /dev/null -w 'data plane: GET /sandboxes/<id>/49983/health -> HTTP %{http_code}\n' "http://127.0.0.1:8292/sandboxes/$id/49983/health"
echo "== pools and sandboxes of all clusters"
"$bin" pool list --cluster '*'
"$bin" sandbox list --cluster '*' --status Running
echo "== placement: *::default goes to the cluster with the most idle slots"
placed=$("$bin" sandbox create --pool '*::default' -o json | jq -r .sandbox.sandboxId)
echo "placed: $placed"
"$bin" sandbox delete "$placed"
"$bin" sandbox delete "$id"
echo "== clean up: delete the pools (their slots go), then stop both servers"
"$bin" pool delete default >/dev/null
AGENTBOX_ENDPOINT=http://127.0.0.1:8180 "$bin" pool delete default >/dev/null
for port in 8180 8280; do
  for _ in $(seq 300); do
    n=$(curl -fsS "127.0.0.1:$port/v1/sandboxpools" | jq '.items | length')
    [ "$n" = 0 ] && break
    sleep 0.1
  done
done
echo "done (logs in $work)"
