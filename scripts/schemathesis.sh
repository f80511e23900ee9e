#!/usr/bin/env bash
# Fuzz the native API against its own OpenAPI document with schemathesis: a live `agentbox serve`
# (real containers, admin key configured), once as the admin and once as a tenant. Fails on any 5xx,
# any status code or content type the document does not declare, and any response body that does not
# match its schema. Needs root and the virtualenv made by scripts/install-deps.sh.
# Not fuzzed here (each has its own tests): the image upload (a tar body schemathesis cannot
# generate), the WebSocket terminal, and key deletion (schemathesis finds key ids in list responses
# and would delete the very keys the run authenticates with).
#   SCHEMATHESIS_SEED (default fixed, for reproducible CI), SCHEMATHESIS_EXAMPLES (per operation, default 25)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AGENTBOX_TEST_VENV:-/opt/agentbox-test-venv}"
st="$venv/bin/schemathesis"
[ -x "$st" ] || { echo "schemathesis missing: run scripts/install-deps.sh" >&2; exit 2; }
seed="${SCHEMATHESIS_SEED:-20261128}"
examples="${SCHEMATHESIS_EXAMPLES:-25}"
subnet=10.251.0.0/16
bridge=agbxst
cargo build -q -p agentbox --locked
data="$(mktemp -d /tmp/agentbox-schemathesis.XXXXXX)"
out="$data/serve.out"
admin="st-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
./target/debug/agentbox serve --listen 127.0.0.1:0 --data-dir "$data/data" --subnet "$subnet" --bridge "$bridge" \
  --admin-key "$admin" --default-pool-size 1 >"$out" 2>"$data/serve.err" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  cargo run -q -p agentbox-backend-local --example destroy_all -- "$data/data/local" "$bridge" "$subnet" >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 120); do
  url="$(sed -n 's/^agentbox listening on \(http:[^ ]*\)$/\1/p' "$out")"
  [ -n "$url" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$data/serve.err" >&2; exit 1; }
  sleep 0.5
done
[ -n "$url" ] || { echo "server did not start" >&2; cat "$data/serve.err" >&2; exit 1; }
echo "server $url (pid $pid)"
tenant="$(curl -sf -H "AGENTBOX-API-KEY: $admin" -H 'content-type: application/json' \
  -d '{"team":"fuzz","user":"tenant"}' "$url/v1/admin/api-keys" | jq -r .apiKey)"
[ -n "$tenant" ] && [ "$tenant" != null ] || { echo "could not create the tenant key" >&2; exit 1; }

run() {
  local who="$1" key="$2"
  echo "== schemathesis as $who (seed $seed, $examples examples per operation)"
  # One worker: with two, hypothesis's lambda pretty-printer (ast.parse in several threads) hit
  # CPython 3.11's "AST constructor recursion depth mismatch" SystemError once — a harness crash
  # reported as a Runtime Error although every generated case had passed.
  "$st" run "$url/openapi.json" -H "AGENTBOX-API-KEY: $key" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing --max-examples "$examples" --seed "$seed" --workers 1 \
    --request-timeout 30 --no-color --output-truncate true \
    --exclude-path /v1/admin/images \
    --exclude-path /v1/sandboxes/{id}/terminal \
    --exclude-path-regex '/api-keys/\{keyId\}$' \
    --suppress-health-check all --warnings off
}
status=0
run tenant "$tenant" || status=1
run admin "$admin" || status=1
if ! kill -0 "$pid" 2>/dev/null; then
  echo "the server died during the run" >&2
  tail -50 "$data/serve.err" >&2
  status=1
fi
if grep -q 'panicked' "$data/serve.err"; then
  echo "the server log has a panic:" >&2
  grep -A5 'panicked' "$data/serve.err" >&2
  status=1
fi
exit $status
