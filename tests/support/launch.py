"""The agentlatd CLI with test instruments installed: what `python -m agentlatd` runs, plus

    python tests/support/launch.py [--heat-file PATH] [--crash-after-writes N]
                                   [--exclusive-scope-pid PID] -- ARGS...

  --heat-file PATH         every Daemon gets a heat source that reads {"<cpu>": heat, ...}
                           from PATH at each tuner tick (a missing, partly written or
                           malformed file: no override, the measured heat stands); tests
                           drive "home CPU turns hot" on a 2-CPU host with it
  --crash-after-writes N   every Engine gets a write hook that SIGKILLs this process at
                           write point N: right after its Nth successful kernel write,
                           or, N=0, once the first batch's journal is saved and before
                           any write (agentlatd/apply/engine.py, "Write points")
  --exclusive-scope-pid PID
                           every Daemon moves only PID and its descendants off an
                           exclusive home CPU, never the host's own tasks: the tests
                           that turn a home CPU exclusive run their daemon so

The shipped daemon has no switch for any: they are constructor parameters
(Daemon(heat_source=..., exclusive_scope_pid=...), Engine(write_hook=...)) that only
this launcher (and the benchmark's, agentlatd/tools/bench/scoped.py) passes, by
defaulting them on every instance created in this process. install() does the same
in a process that calls agentlatd.cli.main itself (the VM tier's forked runs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

# `python -m agentlatd` from the checkout imports the checkout's package; a script's
# sys.path[0] is its own directory, so the checkout goes first here for the same result
REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from agentlatd import cli, daemon  # noqa: E402
from agentlatd.apply import engine  # noqa: E402


def heat_from_file(path: str) -> Callable[[], Mapping[int, float]]:
    def read() -> Mapping[int, float]:
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            return {int(k): float(v) for k, v in raw.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    return read


def kill_at_write(n: int) -> Callable[[int], None]:
    def hook(writes: int) -> None:
        if writes == n:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _default_kwarg(cls: type, name: str, value: object) -> None:
    """Every `cls(...)` made from now on in this process gets `name=value` unless it
    passes its own (None is none: daemon.main passes exclusive_scope_pid=None)."""
    init = cls.__init__  # type: ignore[misc]

    @functools.wraps(init)
    def with_default(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get(name) is None:
            kwargs[name] = value
        init(self, *args, **kwargs)

    cls.__init__ = with_default  # type: ignore[misc]


def install(*, heat_file: str | None = None, crash_after_writes: int | None = None,
            exclusive_scope_pid: int | None = None) -> None:
    if exclusive_scope_pid is not None:
        _default_kwarg(daemon.Daemon, "exclusive_scope_pid", exclusive_scope_pid)
    if heat_file is not None:
        _default_kwarg(daemon.Daemon, "heat_source", heat_from_file(heat_file))
    if crash_after_writes is not None:
        _default_kwarg(engine.Engine, "write_hook", kill_at_write(crash_after_writes))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launch.py", description="the agentlatd CLI with test instruments")
    p.add_argument("--heat-file", metavar="PATH")
    p.add_argument("--crash-after-writes", type=int, metavar="N")
    p.add_argument("--exclusive-scope-pid", type=int, metavar="PID")
    p.add_argument("args", nargs=argparse.REMAINDER, help="agentlatd's own arguments, after --")
    ns = p.parse_args(argv)
    rest = list(ns.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if ns.crash_after_writes is not None and ns.crash_after_writes < 0:
        p.error("--crash-after-writes: N >= 0")
    if ns.exclusive_scope_pid is not None and ns.exclusive_scope_pid <= 0:
        p.error("--exclusive-scope-pid: a positive pid")
    install(heat_file=ns.heat_file, crash_after_writes=ns.crash_after_writes,
            exclusive_scope_pid=ns.exclusive_scope_pid)
    return cli.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
