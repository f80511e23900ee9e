#!/usr/bin/env bash
# Reproduce BENCHMARKS.md: build the release binary, start a server on a scratch data dir, run
# `agentbox bench` against it (which also measures the cold `runc run` baseline in the same run),
# then delete the benchmark pools and stop the server. Needs root. Extra args go to `agentbox bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: sudo scripts/bench.sh" >&2; exit 2; }
scripts/install-deps.sh
cargo build --release --locked -p agentbox -p agentbox-envd
bin=$PWD/target/release/agentbox
data=$(mktemp -d /tmp/agentbox-bench.XXXXXX)
port=18099
"$bin" serve --listen 127.0.0.1:$port --data-dir "$data" --subnet 10.252.0.0/16 --bridge agbxbnch \
  --no-default-pool >"$data/serve.out" 2>"$data/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/ping" >/dev/null 2>&1 && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
"$bin" bench --endpoint "http://127.0.0.1:$port" --out "$data/bench.json" "$@"
echo "raw results: $data/bench.json"
