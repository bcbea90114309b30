"""agentlatd's CLI imported once, each command run in a fresh fork of that process:

    [ip netns exec NS] python tests/support/forkcli.py

reads one JSON request a line on stdin, {"args": [...], "env": {...}, "cwd": DIR,
"out": FILE, "err": FILE, "timeout": S, "crash_after_writes": N or null}, forks, and the
child runs agentlatd.cli.main(args) with its stdout and stderr in those files (and, for
crash_after_writes, tests/support/launch.py's write hook: SIGKILL at that write point);
the answer line is {"rc": exit status, or -signal as subprocess gives it}.

Why: the crash tests (tests/apply/test_crash.py) run the CLI dozens of times, killed at
every write point and started again, and a fresh interpreter spends ~0.35 s of each run
importing agentlatd before its first write. This process imports it and runs nothing
itself, so every child starts as a fresh `python -m agentlatd` would once its imports
are done: a real process, killed for real, whose successor knows only what the journal
on disk says. Started under `ip netns exec`, it and every child see that namespace's
/sys, as `ip netns exec NS python -m agentlatd` would. The VM tier runs its crash
checks the same way (tests/vm/guest/guestlib.py, Cli.fork).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import sys
import time
import traceback
from typing import Any

SUPPORT = pathlib.Path(__file__).resolve().parent
REPO = SUPPORT.parents[1]
for _p in (str(SUPPORT), str(REPO)):  # the checkout's package, as `python -m agentlatd` in it
    if _p not in sys.path:
        sys.path.insert(0, _p)

import launch  # noqa: E402  (tests/support/launch.py: the crash hook)

from agentlatd import cli  # noqa: E402

cli.build_parser()  # every command module, as a run of any command imports them


def _child(req: dict[str, Any]) -> None:
    """Run one command; never returns."""
    rc = 70
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, req["out"]), (2, req["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(os.devnull)  # noqa: SIM115  (the child ends with os._exit)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        if req.get("crash_after_writes") is not None:
            launch.install(crash_after_writes=int(req["crash_after_writes"]))
        rc = cli.main(list(req["args"]))
    except SystemExit as e:  # argparse, as `python -m agentlatd` would exit
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # as the interpreter would: the traceback, exit status 1
        traceback.print_exc()
        rc = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(rc & 0xFF)


def _wait(pid: int, timeout: float) -> int | None:
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        if time.monotonic() > end:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def main() -> int:
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        rc = _wait(pid, float(req["timeout"]))
        print(json.dumps({"rc": rc}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
