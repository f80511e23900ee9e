"""Commands and files of the unmodified e2b SDK (2.53.1) through a live `agentbox serve`: the
control API creates the sandbox, the data plane reaches the agent the backend started in it.

Needs E2B_API_URL, E2B_API_KEY (e2b_<64 hex>) and E2B_SANDBOX_URL (the data plane) in the
environment; argv[1] is the pool to create from. Prints OK.
"""
import sys

from e2b import Sandbox, CommandExitException

pool = sys.argv[1]

sbx = Sandbox.create(pool, timeout=120, envs={"FROM_CREATE": "yes"})
try:
    r = sbx.commands.run("echo hi")
    assert r.stdout == "hi\n" and r.exit_code == 0, r

    r = sbx.commands.run("echo $FROM_CREATE; id -u; echo $HOME")
    assert r.stdout == "yes\n0\n/root\n", r

    try:
        sbx.commands.run("echo oops >&2; exit 3")
        raise AssertionError("a failing command must raise")
    except CommandExitException as e:
        assert e.exit_code == 3 and e.stderr == "oops\n", e

    sbx.files.write("/tmp/sdk.txt", "written by the sdk\n")
    assert sbx.files.read("/tmp/sdk.txt") == "written by the sdk\n"
    r = sbx.commands.run("cat /tmp/sdk.txt")
    assert r.stdout == "written by the sdk\n", r
finally:
    sbx.kill()
print("OK")
