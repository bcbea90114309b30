"""`python -m agentlatd.tools.bench.scoped PID ARGS...`: `agentlatd ARGS...` whose daemon
moves only PID and its descendants off an exclusive home CPU.

The shipped daemon has no such switch: its victims are every movable task of the host.
A benchmark on a shared machine must not move other people's work, so its daemon is
built here with Daemon(exclusive_scope_pid=PID), as tests/support/launch.py injects its
instruments: a constructor parameter that only a wrapper passes.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from agentlatd import cli, daemon


def install(scope_pid: int) -> None:
    """Every Daemon made from now on in this process gets exclusive_scope_pid=scope_pid
    unless its maker names one (daemon.main passes None: none named)."""
    init = daemon.Daemon.__init__

    @functools.wraps(init)
    def scoped(self: daemon.Daemon, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("exclusive_scope_pid") is None:
            kwargs["exclusive_scope_pid"] = scope_pid
        init(self, *args, **kwargs)

    daemon.Daemon.__init__ = scoped  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    if not argv or not argv[0].isdigit() or int(argv[0]) <= 0:
        print("usage: python -m agentlatd.tools.bench.scoped PID ARGS...", file=sys.stderr)
        return 2
    install(int(argv[0]))
    return cli.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
