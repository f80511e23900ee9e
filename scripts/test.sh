#!/usr/bin/env bash
# The whole test suite: unit, in-process API, store, image (incl. a real pull from a local registry),
# backend conformance (libcontainer and runc, real containers) and end-to-end tests of the real binary.
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
cargo nextest run --workspace --locked --no-fail-fast --test-threads 4 "$@"
