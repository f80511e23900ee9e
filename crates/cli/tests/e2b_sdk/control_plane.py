"""Control-plane calls of the unmodified e2b SDK (2.53.1) against a live `agentbox serve`.

Needs E2B_API_URL, E2B_API_KEY (e2b_<64 hex>) and E2B_DOMAIN in the environment; argv[1] is the
pool to create from. Creates without envVars, so the in-sandbox agent is not needed. Prints OK.
"""
import sys

from e2b import Sandbox, SandboxQuery
from e2b.exceptions import SandboxException

pool = sys.argv[1]

sbx = Sandbox.create(pool, timeout=120, metadata={"suite": "control-plane"})
sid = sbx.sandbox_id
assert sid, "no sandbox id"

listed = Sandbox.list().next_items()
assert sid in [s.sandbox_id for s in listed], f"{sid} not in {listed}"
only = Sandbox.list(query=SandboxQuery(metadata={"suite": "control-plane"})).next_items()
assert [s.sandbox_id for s in only] == [sid], only
none = Sandbox.list(query=SandboxQuery(metadata={"suite": "other"})).next_items()
assert none == [], none

info = Sandbox.get_info(sid)
assert info.sandbox_id == sid and info.template_id == pool, info
assert str(info.state.value if hasattr(info.state, "value") else info.state) == "running", info.state

Sandbox.set_timeout(sid, 300)

metrics = Sandbox.get_metrics(sid)
assert len(metrics) == 1, metrics
assert metrics[0].mem_used > 0 and metrics[0].mem_total >= metrics[0].mem_used, metrics
assert metrics[0].cpu_count >= 1 and 0 <= metrics[0].cpu_used_pct <= 100, metrics

assert Sandbox.kill(sid) is True
assert Sandbox.kill(sid) is False, "killing twice should report the sandbox gone"
try:
    Sandbox.get_info(sid)
    raise AssertionError("get_info after kill should fail")
except SandboxException as e:
    assert "not found" in str(e).lower(), e

print("OK")
