"""`agentlatd exec`: run a command registered with agentlatd.

The command runs in THIS process (execvp after registering): a process is
(pid, starttime), and execve keeps both, so the registration made here is the
command's. Its threads are pinned as they start (they inherit the pinned
affinity, and the daemon's tick catches any other). Without a daemon the
command still runs, with a warning.
"""

from __future__ import annotations

import argparse
import os
import sys

from agentlatd.client import ClientError, Connection, Unavailable
from agentlatd.policy import LATENCY_CLASSES
from agentlatd.wire import Op

HELP = "run a command registered as an agent (pinned to a quiet home CPU)"
EXAMPLES = (
    "agentlatd exec -- python3 agent.py",
    "agentlatd exec --class background --agent-id indexer -- ./reindex.sh",
    "AGENTLATD_SOCKET=/tmp/al.sock agentlatd exec --agent-id planner -- ./planner",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class", dest="latency_class", default="interactive",
                   choices=LATENCY_CLASSES, help="latency class (default: interactive)")
    p.add_argument("--agent-id", metavar="ID", help="agent name (default: the command's name)")
    p.add_argument("--socket", metavar="PATH",
                   help="registration socket (default: $AGENTLATD_SOCKET, else the policy's)")
    p.add_argument("--require", action="store_true",
                   help="fail instead of running unregistered when no daemon answers")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("agentlatd exec: no command given (agentlatd exec -- CMD ...)", file=sys.stderr)
        return 2
    agent_id = args.agent_id or os.path.basename(cmd[0])[:64] or "agent"
    try:
        with Connection(args.socket) as conn:
            reg = conn.request(Op.REGISTER, agent_id=agent_id, latency_class=args.latency_class)
        where = (f"home CPU {reg['home_cpu']}" if reg.get("home_cpu") is not None
                 else f"CPUs {reg['cpus']}" if reg.get("cpus") else "its CPUs unchanged")
        if os.environ.get("AGENTLATD_EXEC_VERBOSE"):
            print(f"agentlatd exec: {agent_id} registered ({args.latency_class}, {where})",
                  file=sys.stderr)
    except Unavailable as e:
        if args.require:
            print(f"agentlatd exec: {e.strerror}", file=sys.stderr)
            return 1
        print(f"agentlatd exec: warning: {e.strerror}; running {cmd[0]} unregistered",
              file=sys.stderr)
    except ClientError as e:
        print(f"agentlatd exec: registration refused ({e.code}): {e.message}", file=sys.stderr)
        return 1
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"agentlatd exec: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover - execvp does not return
