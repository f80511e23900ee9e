#!/usr/bin/env bash
# Build the in-sandbox agent `agentbox-envd` as a static executable (static-pie glibc), so that it
# runs in any image, also those without glibc (busybox, alpine, distroless). The agent reads users
# from /etc/passwd and listens on an IP address, so it never needs glibc's NSS at run time.
#   scripts/build-agent.sh            release build -> target/x86_64-unknown-linux-gnu/release/agentbox-envd
#   scripts/build-agent.sh --debug    debug build   -> target/x86_64-unknown-linux-gnu/debug/agentbox-envd
# `agentbox serve` (run as target/<profile>/agentbox) prefers this build over the dynamic
# target/<profile>/agentbox-envd unless that one is newer. Needs libc6-dev (glibc's static libraries).
# The explicit --target keeps RUSTFLAGS away from build scripts and proc macros (which must stay dynamic).
set -euo pipefail
cd "$(dirname "$0")/.."
triple=x86_64-unknown-linux-gnu
profile=release
args=(--release)
if [ "${1:-}" = "--debug" ]; then
  profile=debug
  args=()
fi
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || { echo "glibc's static libraries are missing: apt-get install libc6-dev" >&2; exit 2; }
unset CARGO_ENCODED_RUSTFLAGS
RUSTFLAGS="-C target-feature=+crt-static" cargo build "${args[@]}" --locked -p agentbox-envd --target "$triple"
bin="target/$triple/$profile/agentbox-envd"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "$bin is not static:" >&2
  ldd "$bin" >&2
  exit 1
fi
echo "static agent: $bin"
