"""The e2b SDK (2.53.1) against a live `agentbox serve`, as agent code uses it.

Run by crates/cli/tests/e2b_suite.rs with pytest, twice: unpatched (E2B_API_URL, E2B_SANDBOX_URL, an
`e2b_` key; the SDK routes to the data plane with sandbox headers) and through `agent-sandbox-e2b`'s
`patch_e2b()` (path routing `{domain}/sandboxes/{id}/{port}`). Environment: AGENTBOX_POOL,
AGENTBOX_E2B_MODE (`unpatched` | `patched`), E2B_API_URL, E2B_API_KEY, E2B_SANDBOX_URL / E2B_DOMAIN.
"""
import io
import os
import time

import pytest

if os.environ.get("AGENTBOX_E2B_MODE") == "patched":
    from agent_sandbox_e2b import patch_e2b

    patch_e2b(https=False, domain=os.environ["E2B_DOMAIN"], api_url=os.environ["E2B_API_URL"])

from e2b import CommandExitException, Sandbox  # noqa: E402

POOL = os.environ.get("AGENTBOX_POOL", "default")


@pytest.fixture(scope="module")
def sbx():
    s = Sandbox.create(POOL, timeout=300, metadata={"suite": os.environ.get("AGENTBOX_E2B_MODE", "")})
    yield s
    s.kill()


def test_run_stdout_stderr_exit_code(sbx):
    r = sbx.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)


def test_envs_and_cwd(sbx):
    r = sbx.commands.run("echo $GREETING; pwd", envs={"GREETING": "hello"}, cwd="/tmp")
    assert r.stdout == "hello\n/tmp\n"


def test_failing_command_raises(sbx):
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo nope >&2; exit 7")
    assert e.value.exit_code == 7
    assert e.value.stderr == "nope\n"


def test_background_connect_and_kill(sbx):
    h = sbx.commands.run("for i in 1 2 3; do echo tick $i; sleep 0.2; done; sleep 600", background=True)
    time.sleep(1.0)
    again = sbx.commands.connect(h.pid)
    assert again.pid == h.pid
    running = [p.pid for p in sbx.commands.list()]
    assert h.pid in running
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        h.wait()
    assert h.pid not in [p.pid for p in sbx.commands.list()]


def test_files_text_and_20mb_binary(sbx):
    sbx.files.write("/tmp/suite/hello.txt", "hi there\n")
    assert sbx.files.read("/tmp/suite/hello.txt") == "hi there\n"
    blob = os.urandom(20 * 1024 * 1024)
    sbx.files.write("/tmp/suite/blob.bin", blob)
    assert sbx.files.read("/tmp/suite/blob.bin", format="bytes") == blob
    r = sbx.commands.run("stat -c %s /tmp/suite/blob.bin")
    assert r.stdout.strip() == str(len(blob))


def test_gzip_and_octet_stream_uploads_and_refused_metadata(sbx):
    text = "compressible " * 10000
    sbx.files.write("/tmp/suite/gz.txt", text, gzip=True)
    assert sbx.files.read("/tmp/suite/gz.txt") == text
    sbx.files.write("/tmp/suite/octet.bin", io.BytesIO(b"\x00\x01streamed"))
    assert sbx.files.read("/tmp/suite/octet.bin", format="bytes") == b"\x00\x01streamed"
    with pytest.raises(Exception) as e:
        sbx.files.write("/tmp/suite/meta.txt", "x", metadata={"owner": "me"})
    assert "metadata" in str(e.value)
    assert not sbx.files.exists("/tmp/suite/meta.txt")


def test_list_make_dir_remove_exists(sbx):
    assert sbx.files.make_dir("/tmp/suite/dir/sub") is True
    assert sbx.files.make_dir("/tmp/suite/dir/sub") is False
    sbx.files.write("/tmp/suite/dir/a.txt", "a")
    names = sorted(e.name for e in sbx.files.list("/tmp/suite/dir"))
    assert names == ["a.txt", "sub"]
    assert sbx.files.exists("/tmp/suite/dir/a.txt")
    sbx.files.remove("/tmp/suite/dir/a.txt")
    assert not sbx.files.exists("/tmp/suite/dir/a.txt")


def test_watch_dir_reports_writes_in_subdirectories(sbx):
    from e2b import FilesystemEventType

    sbx.files.make_dir("/tmp/suite/watched/sub")
    handle = sbx.files.watch_dir("/tmp/suite/watched", recursive=True)
    try:
        sbx.files.write("/tmp/suite/watched/sub/new.txt", "watch me")
        sbx.commands.run("rm /tmp/suite/watched/sub/new.txt")
        events = []
        deadline = time.time() + 10
        while time.time() < deadline:
            events += handle.get_new_events()
            if any(e.name == "sub/new.txt" and e.type == FilesystemEventType.REMOVE for e in events):
                break
            time.sleep(0.1)
        kinds = {e.type for e in events if e.name == "sub/new.txt"}
        assert {FilesystemEventType.CREATE, FilesystemEventType.WRITE, FilesystemEventType.REMOVE} <= kinds, events
    finally:
        handle.stop()


def test_get_metrics_after_burning_cpu(sbx):
    # A first read leaves a CPU reading, so the second averages over the burn (see engine/usage.rs).
    before = sbx.get_metrics()
    assert len(before) == 1
    sbx.commands.run("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
    metrics = sbx.get_metrics()
    assert len(metrics) == 1, metrics
    m = metrics[0]
    assert m.cpu_count >= 1
    assert 0 < m.cpu_used_pct <= 100, m
    assert 0 < m.mem_used <= m.mem_total, m
    assert m.mem_cache >= 0, m
    assert m.disk_total > 0 and 0 <= m.disk_used <= m.disk_total, m
    assert abs(m.timestamp.timestamp() - time.time()) < 60, m
    # A window that ended long ago holds no sample (no history is kept).
    from datetime import datetime, timezone

    old = sbx.get_metrics(start=datetime.fromtimestamp(100, timezone.utc), end=datetime.fromtimestamp(200, timezone.utc))
    assert old == []


def test_set_timeout_and_list(sbx):
    sbx.set_timeout(600)
    listed = [s.sandbox_id for s in Sandbox.list().next_items()]
    assert sbx.sandbox_id in listed


def test_kill_ends_the_sandbox():
    s = Sandbox.create(POOL, timeout=60)
    assert s.commands.run("true").exit_code == 0
    assert s.kill() is True
    assert s.sandbox_id not in [x.sandbox_id for x in Sandbox.list().next_items()]
