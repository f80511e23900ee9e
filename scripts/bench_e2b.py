"""Exec through the in-sandbox agent vs the native exec, and E2B time-to-first-command.

Usage (against a running `agentbox serve` in dev mode with a warm `default` pool):
  /opt/agentbox-test-venv/bin/python scripts/bench_e2b.py NATIVE_URL E2B_URL DATA_PLANE_URL [N]

Measures, on one sandbox, N round trips of `true`:
  - native: POST /v1/sandboxes/{id}/exec, which runs the command through the sandbox's agent, over
    HTTP/1.1 keep-alive from this process;
  - native, runtime exec (the baseline: the skeleton's direct exec): the same call naming the main
    container explicitly, which makes the server use the backend's exec (a runtime exec into the
    container's namespaces) instead of the agent;
  - agent, raw: one Connect `process.Process/Start` server stream through the data plane (the wire the
    SDK uses, without the SDK's own overhead);
  - agent, SDK: `sandbox.commands.run("true")` with the e2b SDK (includes the SDK's Python overhead);
and N times the E2B time-to-first-command: `Sandbox.create(pool)` + `commands.run("echo hi")`, then
kill. Prints medians/p99 in ms and a JSON line.
"""
import json
import os
import struct
import sys
import time

import httpx

native, e2b_url, plane = sys.argv[1], sys.argv[2], sys.argv[3]
n = int(sys.argv[4]) if len(sys.argv) > 4 else 200
os.environ.setdefault("E2B_API_URL", e2b_url)
os.environ.setdefault("E2B_API_KEY", "e2b_" + "0" * 64)
os.environ.setdefault("E2B_SANDBOX_URL", plane)

from e2b import Sandbox  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(name, xs):
    ms = [x * 1000 for x in xs]
    return {"name": name, "n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p90_ms": round(pct(ms, 90), 2),
            "p99_ms": round(pct(ms, 99), 2)}


sbx = Sandbox.create("default", timeout=600)
sid = sbx.sandbox_id
client = httpx.Client(timeout=30)
results = []

# Warm up every path once.
client.post(f"{native}/v1/sandboxes/{sid}/exec", json={"command": ["true"]}).raise_for_status()
sbx.commands.run("true")

t = []
for _ in range(n):
    t0 = time.perf_counter()
    r = client.post(f"{native}/v1/sandboxes/{sid}/exec", json={"command": ["true"]})
    t.append(time.perf_counter() - t0)
    assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
results.append(summary("native exec `true` (through the agent)", t))

main = sorted(client.get(f"{native}/v1/sandboxes/{sid}").json()["sandbox"]["containerImages"])[0]
client.post(f"{native}/v1/sandboxes/{sid}/exec", json={"command": ["true"], "container": main}).raise_for_status()
t = []
for _ in range(n):
    t0 = time.perf_counter()
    r = client.post(f"{native}/v1/sandboxes/{sid}/exec", json={"command": ["true"], "container": main})
    t.append(time.perf_counter() - t0)
    assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
results.append(summary("native exec `true`, runtime exec (baseline)", t))

# The Connect wire: an enveloped JSON StartRequest, read the stream to its end frame.
body = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "true"], "envs": {}}}).encode()
frame = struct.pack(">BI", 0, len(body)) + body
headers = {"content-type": "application/connect+json", "e2b-sandbox-id": sid, "e2b-sandbox-port": "49983",
           "connect-protocol-version": "1"}
t = []
for _ in range(n):
    t0 = time.perf_counter()
    r = client.post(f"{plane}/process.Process/Start", content=frame, headers=headers)
    t.append(time.perf_counter() - t0)
    assert r.status_code == 200, r.text
    frames, buf = [], r.content
    while buf:
        flags, size = struct.unpack(">BI", buf[:5])
        frames.append((flags, json.loads(buf[5:5 + size])))
        buf = buf[5 + size:]
    assert any("end" in json.dumps(f[1]) for f in frames) and frames[-1] == (2, {}), frames
results.append(summary("agent exec `true` (Connect stream via data plane)", t))

t = []
for _ in range(n):
    t0 = time.perf_counter()
    sbx.commands.run("true")
    t.append(time.perf_counter() - t0)
results.append(summary("agent exec `true` (e2b SDK commands.run)", t))
sbx.kill()

t = []
for _ in range(max(10, n // 10)):
    t0 = time.perf_counter()
    s = Sandbox.create("default", timeout=60)
    out = s.commands.run("echo hi")
    t.append(time.perf_counter() - t0)
    assert out.stdout == "hi\n"
    s.kill()
    time.sleep(0.05)
results.append(summary("E2B time-to-first-command (create + echo)", t))

for r in results:
    print(f"{r['name']:<55} n={r['n']:<4} p50 {r['p50_ms']:>7.2f} ms  p90 {r['p90_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms")
print(json.dumps(results))
