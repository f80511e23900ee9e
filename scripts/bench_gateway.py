"""What the multi-cluster gateway adds to a request: the same calls direct to a cluster and through
a gateway that forwards them there (both `agentbox serve` processes on this host, dev mode).

Usage:
  /opt/agentbox-test-venv/bin/python scripts/bench_gateway.py REMOTE_NATIVE GATEWAY_NATIVE \
      REMOTE_PROXY GATEWAY_PROXY CLUSTER [N]

REMOTE_* are the remote cluster's own native API and data plane, GATEWAY_* the gateway's; CLUSTER is the
remote's id in the gateway's catalog. One sandbox of the remote's `default` pool is created through
the gateway (so its id is `CLUSTER.uuid`); then, N times each, interleaved so both paths see the same
machine load:
  - GET /v1/sandboxes/{id}            direct (bare uuid) vs through the gateway (global id);
  - POST /v1/sandboxes/{id}/exec true direct vs through the gateway;
  - GET {proxy}/sandboxes/{id}/49983/health (the agent through the data plane) direct vs gateway;
and N/10 claims (`poolName: CLUSTER::default`, and `*::default` placement, through the gateway vs
`default` direct; each released
and the pool back to all idle, untimed, before the next).
Prints p50/p99 in ms, the gateway/direct ratio of the medians, and one JSON line.
"""
import json
import sys
import time

import httpx

remote, gateway, remote_proxy, gateway_proxy, cluster = sys.argv[1:6]
n = int(sys.argv[6]) if len(sys.argv) > 6 else 300


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def ok(r, want=200):
    if r.status_code != want:
        raise SystemExit(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}")
    return r


c = httpx.Client(timeout=60)
created = ok(c.post(f"{gateway}/v1/sandboxes", json={"poolName": f"{cluster}::default"}), 201).json()
gid = created["sandbox"]["sandboxId"]
assert gid.startswith(cluster + "."), gid
bare = gid.split(".", 1)[1]

pairs = {
    "get": (lambda: ok(c.get(f"{remote}/v1/sandboxes/{bare}")), lambda: ok(c.get(f"{gateway}/v1/sandboxes/{gid}"))),
    "exec": (
        lambda: ok(c.post(f"{remote}/v1/sandboxes/{bare}/exec", json={"command": ["true"]})),
        lambda: ok(c.post(f"{gateway}/v1/sandboxes/{gid}/exec", json={"command": ["true"]})),
    ),
    "data_plane": (
        lambda: ok(c.get(f"{remote_proxy}/sandboxes/{bare}/49983/health"), 204),
        lambda: ok(c.get(f"{gateway_proxy}/sandboxes/{gid}/49983/health"), 204),
    ),
}
results = {}
for name, (direct, via) in pairs.items():
    for _ in range(10):  # warm both connection pools
        direct()
        via()
    d, g = [], []
    for _ in range(n):
        d.append(timed(direct))
        g.append(timed(via))
    results[name] = (d, g)
ok(c.delete(f"{gateway}/v1/sandboxes/{gid}"), 202)


def claim(url, pool):
    """Time one claim (POST /v1/sandboxes until 201); then release it and, untimed, wait until
    the remote's pool has all its slots idle again so every claim starts from the same state."""
    t0 = time.perf_counter()
    r = ok(c.post(f"{url}/v1/sandboxes", json={"poolName": pool}), 201)
    ms = (time.perf_counter() - t0) * 1000
    ok(c.delete(f"{url}/v1/sandboxes/{r.json()['sandbox']['sandboxId']}"), 202)
    for _ in range(1000):
        st = c.get(f"{remote}/v1/sandboxpools/default").json()["pool"]["status"]
        if st.get("idle", 0) >= st.get("replicas", idle_target) and st.get("stopping", 0) == 0:
            break
        time.sleep(0.01)
    return ms


idle_target = c.get(f"{remote}/v1/sandboxpools/default").json()["pool"]["spec"].get("replicas", 1)
d, g, p = [], [], []
for _ in range(max(5, n // 10)):
    d.append(claim(remote, "default"))
    g.append(claim(gateway, f"{cluster}::default"))
    p.append(claim(gateway, "*::default"))
results["claim"] = (d, g)
results["claim_placed"] = (d, p)

out = {}
for name, (d, g) in results.items():
    dm, gm = pct(d, 50), pct(g, 50)
    out[name] = {"direct_p50": round(dm, 3), "direct_p99": round(pct(d, 99), 3), "gateway_p50": round(gm, 3),
                 "gateway_p99": round(pct(g, 99), 3), "ratio": round(gm / dm, 2), "n": len(d)}
    print(f"{name:14s} direct p50 {dm:7.2f} ms p99 {pct(d, 99):7.2f} | gateway p50 {gm:7.2f} ms p99 {pct(g, 99):7.2f}"
          f" | x{gm / dm:.2f}")
print(json.dumps(out))
