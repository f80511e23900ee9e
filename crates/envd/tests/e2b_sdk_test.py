"""Drives agentbox-envd with the real E2B Python SDK (debug mode: no control API).

Usage: python e2b_sdk_test.py http://127.0.0.1:PORT HOME_DIR
Exits non-zero on the first failed check.
"""
import os
import sys
import time

from e2b import Sandbox, CommandExitException

url, home = sys.argv[1], sys.argv[2]
sbx = Sandbox.connect("local", debug=True, sandbox_url=url)

r = sbx.commands.run("echo hi")
assert r.stdout == "hi\n" and r.exit_code == 0, r

try:
    sbx.commands.run("echo oops >&2; exit 3")
    raise AssertionError("a failing command must raise")
except CommandExitException as e:
    assert e.exit_code == 3 and e.stderr == "oops\n", e

r = sbx.commands.run("echo $FOO", envs={"FOO": "bar"})
assert r.stdout == "bar\n", r
r = sbx.commands.run("echo $INIT_VAR")
assert r.stdout == "from-init\n", r  # set through POST /init by the Rust test

os.makedirs(os.path.join(home, "work"), exist_ok=True)
r = sbx.commands.run("pwd", cwd="work")
assert r.stdout == os.path.join(home, "work") + "\n", r

h = sbx.commands.run("for i in 1 2 3; do echo line$i; sleep 0.3; done", background=True)
again = sbx.commands.connect(h.pid)
res = again.wait()
assert "line3" in res.stdout, res

cat = sbx.commands.run("cat", background=True, stdin=True)
sbx.commands.send_stdin(cat.pid, "ping\n")
time.sleep(0.3)
assert cat.pid in [p.pid for p in sbx.commands.list()]
sbx.commands.close_stdin(cat.pid)
out = cat.wait()
assert out.stdout == "ping\n", out

sleeper = sbx.commands.run("sleep 60", background=True)
assert sbx.commands.kill(sleeper.pid) is True
try:
    sleeper.wait()
    raise AssertionError("a killed command must not succeed")
except CommandExitException:
    pass
assert sbx.commands.kill(sleeper.pid) is False  # gone: NOT_FOUND maps to False

sbx.files.write("notes/a.txt", "hello")
assert sbx.files.read("notes/a.txt") == "hello"
blob = os.urandom(20 * 1024 * 1024)
sbx.files.write("big.bin", blob)
assert bytes(sbx.files.read("big.bin", format="bytes")) == blob
assert sbx.files.exists("notes/a.txt") and not sbx.files.exists("nope")
assert sbx.files.make_dir("d1/d2") is True
assert sbx.files.make_dir("d1/d2") is False
names = {e.name for e in sbx.files.list(".", depth=2)}
assert {"notes", "a.txt", "big.bin", "d1", "d2"} <= names, names
info = sbx.files.get_info("big.bin")
assert info.size == len(blob), info
sbx.files.rename("notes/a.txt", "moved/b.txt")
assert sbx.files.read("moved/b.txt") == "hello"
sbx.files.remove("d1")
assert not sbx.files.exists("d1")

# gzip both ways (debug mode reports a new envd, so the SDK uses the octet-stream upload).
sbx.files.write("gz/z.txt", "zipped " * 1000, gzip=True)
assert sbx.files.read("gz/z.txt", gzip=True) == "zipped " * 1000

# Polled watcher (CreateWatcher / GetWatcherEvents / RemoveWatcher), recursive, with entries.
from e2b import FilesystemEventType  # noqa: E402

os.makedirs(os.path.join(home, "watched", "sub"), exist_ok=True)
w = sbx.files.watch_dir("watched", recursive=True, include_entry=True)
sbx.files.write("watched/sub/new.txt", "data")
events = []
for _ in range(100):
    events += w.get_new_events()
    if any(e.name == "sub/new.txt" and e.type == FilesystemEventType.WRITE for e in events):
        break
    time.sleep(0.05)
created = [e for e in events if e.name == "sub/new.txt" and e.type == FilesystemEventType.CREATE]
assert created and created[0].entry is not None and created[0].entry.size >= 0, events
w.stop()

# Streaming watcher (WatchDir) through the async SDK.
import asyncio  # noqa: E402

from e2b import AsyncSandbox  # noqa: E402


async def stream_watch():
    asbx = await AsyncSandbox.connect("local", debug=True, sandbox_url=url)
    seen = []
    h = await asbx.files.watch_dir("watched", lambda e: seen.append(e), recursive=True)
    await asbx.files.write("watched/sub/streamed.txt", "x")
    for _ in range(100):
        if any(e.name == "sub/streamed.txt" for e in seen):
            break
        await asyncio.sleep(0.05)
    await h.stop()
    assert any(e.name == "sub/streamed.txt" and e.type == FilesystemEventType.CREATE for e in seen), seen


asyncio.run(stream_watch())
print("E2B SDK OK", flush=True)
# Every check above passed. Skip interpreter finalization: a daemon thread the SDK's async watcher
# leaves behind once crashed it ("PyGILState_Release ... finalizing"), failing a run that had passed.
import os  # noqa: E402

os._exit(0)
