"""agentlatd/tools/trace/step_tracefs.py against the real kernel: the tracefs tracer
finds the agent's completion chain in its own stream and traces the hop from then
on, as the bpftrace program does. An agent process asks a tool process over a Unix
datagram socketpair and sleeps in recv until the reply; the tool (a separate
process: its pid is known to the test, never to the tracer) must become hop 1,
with its own wakeups, and the agent's steps must be split along it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

import pytest

from agentlatd.steps import attribute as at
from agentlatd.steps.attribute import Wakeup
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace import step_tracefs

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="tracing needs root")]

# bounded loops: the tool answers until its socket closes, the agent asks for 4 s at most
TOOL = ("import socket, sys, time\n"
        "s = socket.socket(fileno=int(sys.argv[1]))\n"
        "while True:\n"
        "    m = s.recv(64)\n"
        "    if not m: break\n"
        "    time.sleep(0.0005)\n"
        "    s.send(m)\n")
AGENT = ("import socket, sys, time\n"
         "s = socket.socket(fileno=int(sys.argv[1]))\n"
         "sys.stdin.readline()\n"
         "end = time.monotonic() + 4\n"
         "while time.monotonic() < end:\n"
         "    s.send(b'q'); s.recv(64); time.sleep(0.001)\n")


def test_tracefs_traces_the_tool_as_a_hop_of_the_agents_chain() -> None:
    a, t = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tool = subprocess.Popen([sys.executable, "-c", TOOL, str(t.fileno())], pass_fds=(t.fileno(),))
    agent = subprocess.Popen([sys.executable, "-c", AGENT, str(a.fileno())], pass_fds=(a.fileno(),),
                             stdin=subprocess.PIPE, text=True)
    a.close()
    t.close()
    try:
        assert agent.stdin is not None
        agent.stdin.write("go\n")
        agent.stdin.flush()
        with tempfile.TemporaryDirectory() as wd:
            try:
                tr = step_tracefs.run(Root("/"), [agent.pid], 2.0, wd)
            except step_tracefs.Unavailable as e:
                pytest.skip(str(e))
            with open(os.path.join(wd, "events.txt")) as f:
                hops = [line.split() for line in f if line.startswith("H ")]
    finally:
        agent.kill()
        agent.wait()
        tool.kill()
        tool.wait()
    assert [tool.pid, 1] in [[int(h[1]), int(h[2])] for h in hops], hops
    assert tr.lost == 0
    # the tool's own wakeups (by the agent's request) are traced once it is a hop
    tool_woken = [e for e in tr.events if isinstance(e, Wakeup) and e.tid == tool.pid]
    assert len(tool_woken) >= 50 and any(e.waker_tid == agent.pid for e in tool_woken)
    # an agent sleep woken by the tool's reply, late in the window: split along the
    # tool (its 0.5 ms sleep is the tool's time), not left as a bare blocked wait
    ix = at.index(tr.events)
    replies = [e for e in tr.events if isinstance(e, Wakeup) and e.tid == agent.pid
               and e.waker_tid == tool.pid]
    assert len(replies) >= 50
    w = replies[-2]
    step = at.Step(agent.pid, w.t - 400_000, w.t + 1, 1)
    who = " ".join(p.who for p in at.attribute(ix, step).parts)
    assert f"pid {tool.pid}" in who, at.attribute(ix, step)
