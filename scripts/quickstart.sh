#!/usr/bin/env bash
# Quick start on a fresh machine (as root): install dependencies, build, start `agentbox serve` on the
# embedded default (SQLite + local containers in /var/lib/agentbox), then claim a sandbox from the
# warm `default` pool, run commands in it and release it. The server keeps running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (e.g. sudo scripts/quickstart.sh)" >&2; exit 2; }
scripts/install-deps.sh
# agentbox-envd (the in-sandbox agent for E2B commands/files) is found next to agentbox; the static
# build (runs in images without glibc too) is preferred by `serve` when it is the newest.
cargo build --release --locked -p agentbox -p agentbox-envd
scripts/build-agent.sh
bin=target/release/agentbox
export AGENTBOX_ENDPOINT=http://127.0.0.1:8080
stop_hint="the server was already running"
if ! curl -fsS "$AGENTBOX_ENDPOINT/ping" >/dev/null 2>&1; then
  mkdir -p /var/log
  nohup "$bin" serve >/var/log/agentbox.log 2>&1 &
  pid=$!
  echo "agentbox serve started (pid $pid), log: /var/log/agentbox.log"
  stop_hint="stop it with 'kill $pid' (sandboxes keep running and are adopted at the next start)"
  for _ in $(seq 100); do curl -fsS "$AGENTBOX_ENDPOINT/ping" >/dev/null 2>&1 && break; sleep 0.1; done
fi
echo "== the default pool warms up"
"$bin" pool scale default 2 --wait
echo "== claim a sandbox"
id=$("$bin" sandbox create --pool default -o json | jq -r .sandbox.sandboxId)
"$bin" sandbox get "$id"
echo "== run commands in it"
"$bin" exec "$id" -- sh -c 'echo "hello from $(hostname)"; python3 -V; id -u'
echo "== release it (the slot goes back to the pool)"
"$bin" sandbox delete "$id"
"$bin" pool list
echo "done. The server keeps running on $AGENTBOX_ENDPOINT: $stop_hint."
