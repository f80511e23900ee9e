#!/usr/bin/env bash
# Install what agentbox needs to build and run its tests on a fresh Debian 12 machine (as root).
#   build:   libseccomp-dev (libcontainer links -lseccomp), pkg-config, gcc (the `pause` image is a static C binary)
#   runtime: runc (second OCI runtime), iproute2 + iptables (slot networking, NAT egress)
#   tests:   busybox-static (test images), docker-registry (local OCI registry for the pull test),
#            skopeo + umoci (image tooling used by tests), jq,
#            python3-venv (a virtualenv with schemathesis, the API fuzzer of scripts/schemathesis.sh)
set -euo pipefail
pkgs=(libseccomp-dev pkg-config gcc libc6-dev runc iproute2 iptables busybox-static docker-registry skopeo umoci jq procps curl python3 python3-venv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v cargo-nextest >/dev/null 2>&1 && ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi
# Python tools of the test suite, pinned, in their own virtualenv (Debian's pip refuses system installs).
venv="${AGENTBOX_TEST_VENV:-/opt/agentbox-test-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
  echo "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.5"
fi
# The unmodified E2B SDK, its path-routing patch and pytest, for the E2B-compatibility tests
# (crates/cli/tests/e2b_sdk.rs, e2b_suite.rs, agent_injection.rs).
if ! "$venv/bin/python" -c 'import e2b, agent_sandbox_e2b, pytest' 2>/dev/null; then
  echo "installing e2b, agent-sandbox-e2b and pytest into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "e2b==2.53.1" "agent-sandbox-e2b==0.0.13" "pytest==9.2.0"
fi
echo "dependencies ok"
