#!/usr/bin/env bash
# The whole test suite: unit, in-process API, store, image (incl. a real pull from a local registry),
# backend conformance (libcontainer and runc, real containers), end-to-end tests of the real binary,
# and schemathesis fuzzing of the live API against its OpenAPI document.
# Needs root (containers). Usage: sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh needs root (namespaces, cgroups, mounts): run it with sudo" >&2
  exit 2
fi
scripts/install-deps.sh
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
status=0
cargo nextest run --workspace --locked --no-fail-fast --test-threads 4 "$@" || status=$?
echo "== API fuzzing (schemathesis against a live server, admin and tenant)"
scripts/schemathesis.sh || status=$?
exit $status
