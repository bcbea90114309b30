"""The scan worker itself: agents/scans.LocalScans answering agents/scanwire.py requests
on stdin/stdout. agents/scanworker.py starts it as

    python -I -c "<import this module, call main()>" ROOT DAEMON_PID

and before its first answer it
- asks the kernel for SIGKILL when the daemon's thread that started it ends
  (PR_SET_PDEATHSIG), and exits at once if the daemon is gone already: it never
  outlives the daemon, even stuck in a scan;
- keeps CAP_SYS_PTRACE alone (the reads of other users' /proc/PID/fd, ns, exe:
  ptrace_may_access), of the three the daemon kept (caps.py), under no_new_privs
  (caps.narrow): what parses user-controlled /proc text holds no right to write
  anything, and no execve could give it one;
- leaves a real-time policy it inherited for SCHED_BATCH: a scan must never delay the
  daemon's loop or an agent (the daemon may run SCHED_FIFO);
- ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C or hang-up of the daemon's terminal,
  and `systemctl stop` (which signals every process of the unit), are the daemon's
  to handle; it closes this worker's stdin as it stops (and a daemon that dies
  takes the worker with it, above). Killed by the unit's SIGTERM, the worker
  looked broken to the daemon's last tick: a warning at every clean stop. The
  daemon starts it with them blocked, so one that comes while this interpreter
  starts waits for the line that ignores it.
It answers until stdin closes. A scan that raises is answered {"error": ...} and the
worker serves on; anything else ends it, and the daemon starts another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import BinaryIO

from agentlatd import caps
from agentlatd.agents import scanwire
from agentlatd.agents.chain import ChainAgent
from agentlatd.agents.scans import LocalScans
from agentlatd.agents.scanworker import QUIET_SIGNALS
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

log = logging.getLogger("agentlatd.scanworker")

KEEP = frozenset({caps.CAP_SYS_PTRACE})


def serve(scans: LocalScans, inp: BinaryIO, out: BinaryIO) -> None:
    """Answer each request line of `inp` on `out` (binary files) until EOF."""
    agents: dict[ProcId, ChainAgent] = {}
    for line in inp:
        try:
            req = scanwire.decode_request(line)
            if req["op"] == "irqbalance":
                reply = scanwire.irqbalance_reply(scans.irqbalance())
            else:
                add, drop = scanwire.request_agents(req)
                for p in drop:
                    agents.pop(p, None)
                for a in add:
                    agents[a.proc] = a
                now = time.monotonic()
                scans.chain(list(agents.values()), scanwire.request_rules(req), now)
                found = scans.found
                reply = scanwire.chain_reply(
                    {p: found[p] for p, t in scans.scanner.scanned.items()
                     if t == now and p in found}, scans.cost)
        except Exception as e:  # a scan's bug or a kernel error: said, and served on
            log.exception("scan failed")
            reply = scanwire.error_reply(f"{type(e).__name__}: {e}")
        out.write(reply)
        out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    base, parent = args[0], int(args[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="agentlatd scan worker: %(levelname)s %(message)s")
    # blocked by the daemon until here (scanworker.QUIET_SIGNALS): ignoring them
    # drops one that came while this interpreter started, then they are let through
    for sig in QUIET_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, QUIET_SIGNALS)
    caps.prctl(caps.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the daemon died before the line above
        return 0
    caps.narrow(KEEP)
    if os.sched_getscheduler(0) not in (os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    scans = LocalScans(Root(base), daemon_pid=parent)
    out = sys.stdout.buffer
    out.write(scanwire.ready(os.getpid()))
    out.flush()
    serve(scans, sys.stdin.buffer, out)
    return 0


if __name__ == "__main__":  # pragma: no cover - started with -c (agents/scanworker.py)
    sys.exit(main())
