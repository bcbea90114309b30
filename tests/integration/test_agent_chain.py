"""Completion chains against the real kernel: a real `agentlatd run`, real network
namespaces, real processes (agents/chain.py, model/chain.py, model/harm.py).

    ns A: agentlatd, the agent (Python, agentlatd.client) -- veth -- ns T: its UDP
          tool server; in A too a Unix-socket model server; and a child the
          agent talks to over pipes (a stdio MCP server)

Home CPU 1 is "exclusive"; the daemon's scope_pid is a launcher process this
test starts, and the tool server, a bystander and the signal-driven tool of
the guard test are its children: nothing of the host is moved. Checked:

  1. the tool server in its own process and namespace, the Unix-socket server
     and the pipe child are found as the agent's chain, pinned on its home CPU, never moved to the
     completion CPU by exclusivity (the bystander is), listed under the agent
     in `agents --json`; unregistering the agent gives them (and the
     bystander) their original affinity back;
  2. a non-admin peer (uid nobody) cannot declare a root process as a member;
  3. the do-no-harm guard: an agent whose tool it cannot discover (they talk
     by signals) gets slower when exclusivity pushes the tool to the completion
     CPU, where a busy higher-priority task then runs (injected once the
     baseline is taken); the guard sees it in the agent's step latency, undoes
     the exclusivity, says why, counts it, and the tool gets its original
     affinity back.

Needs root, iproute2 and CPUs 0 and 1. Namespaces and processes are removed in
teardown, also on failure; every helper process exits on its own within
PROC_LIMIT_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from agentshelpers import (
    all_on,
    current_affinity,
    daemon,
    env_for_children,
    kill_quietly,
    policy_text,
    thread_affinities,
    wait_until,
    workdir,
)

from agentlatd.cpuset import CpuSet

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's ip"),
    pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1"),
]

PROC_LIMIT_S = 40
PORT = 7777

# starts the processes the daemon may move (its children are the scope)
LAUNCHER = r'''
import json, subprocess, sys
kids = []
for line in sys.stdin:
    argv = json.loads(line)
    if not argv:
        break
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    kids.append(p)
    print(json.dumps({"pid": p.pid, "said": p.stdout.readline().strip()}), flush=True)
for p in kids:
    p.kill(); p.wait()
'''

# a UDP echo server with two threads (ns T)
ECHO = r'''
import socket, sys, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.5)
end = time.monotonic() + float(sys.argv[2])
threading.Thread(target=time.sleep, args=(float(sys.argv[2]),), daemon=True).start()
print("ready", flush=True)
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(256)
    except OSError:
        continue
    s.sendto(data, peer)
'''

# a Unix stream echo server (a local model server on a Unix socket)
UNIX_ECHO = r'''
import socket, sys, threading, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen(4)
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
def serve(c):
    while data := c.recv(256):
        c.sendall(data)
try:
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
except OSError:
    pass
'''

# the agent (ns A): a connected UDP socket to the tool server, a Unix socket to
# a model server, and a pipe child
AGENT = r'''
import json, os, socket, subprocess, sys, time
from agentlatd.client import Client
sock, dst, port, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
ux = None
if sys.argv[5] != "-":
    ux = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ux.connect(sys.argv[5])
child = subprocess.Popen([sys.executable, "-c",
    "import sys\nfor l in sys.stdin:\n    sys.stdout.write(l); sys.stdout.flush()"],
    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.connect((dst, port))
u.settimeout(1.0)
c = Client("chain-agent", "interactive", socket=sock, flush_interval=0.2, retry_interval=0.2)
print(json.dumps({"ready": c.registration, "child": child.pid}), flush=True)
end = time.monotonic() + limit
for line in sys.stdin:
    if line.startswith("unregister"):
        c.unregister()
        print(json.dumps({"unregistered": True}), flush=True)
        continue
    if time.monotonic() > end or line.startswith("exit"):
        break
    n = int(line.split()[1])
    for i in range(n):
        with c.step(i):
            u.send(b"x" * 64)
            u.recv(256)
            if ux is not None:
                ux.sendall(b"z" * 64)
                ux.recv(256)
            child.stdin.write("y\n"); child.stdin.flush(); child.stdout.readline()
    c.flush()
    print(json.dumps({"steps": n}), flush=True)
child.kill()
'''


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"ip {' '.join(args)}: {p.stderr.strip()}"


@contextlib.contextmanager
def two_namespaces() -> Iterator[tuple[str, str, str, str]]:
    """(ns A, ns T, A's address, T's address) joined by a veth; deleted at the end."""
    r = secrets.token_hex(3)
    a, t = f"chn-a-{r}", f"chn-t-{r}"
    sub = int(r[:2], 16) % 200 + 20
    a_ip, t_ip = f"10.253.{sub}.1", f"10.253.{sub}.2"
    try:
        _ip("netns", "add", a)
        _ip("netns", "add", t)
        _ip("link", "add", f"ca{r}", "netns", a, "type", "veth", "peer", "name", f"ct{r}",
            "netns", t)
        _ip("-n", a, "addr", "add", f"{a_ip}/30", "dev", f"ca{r}")
        _ip("-n", t, "addr", "add", f"{t_ip}/30", "dev", f"ct{r}")
        for ns, dev in ((a, f"ca{r}"), (t, f"ct{r}")):
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, t, a_ip, t_ip
    finally:
        for ns in (a, t):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


class Launcher:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env_for_children())
        self.pid = self.proc.pid

    def spawn(self, argv: list[str]) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        got = json.loads(self.proc.stdout.readline())
        pid: int = got["pid"]
        return pid

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("[]\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_quietly(self.proc)  # type: ignore[arg-type]


class Proc:
    """A child speaking JSON lines on stdout."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env_for_children())
        self.pid = self.proc.pid
        self.first = self.read()

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"process {self.pid} exited ({self.proc.poll()})"
        out: dict[str, Any] = json.loads(line)
        return out

    def cmd(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.write("exit\n")
            self.proc.stdin.flush()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _row(dm: Any, agent_id: str) -> dict[str, Any] | None:
    for r in dm.agents():
        if r["agent_id"] == agent_id:
            out: dict[str, Any] = r
            return out
    return None


def test_tool_server_in_another_namespace_and_pipe_child_are_the_agents_chain() -> None:
    orig = current_affinity()
    launcher = Launcher()
    try:
        with two_namespaces() as (ns_a, ns_t, _a_ip, t_ip), workdir() as d, \
                daemon(d, policy_text(exclusive="exclusive"), prefix=("ip", "netns", "exec", ns_a),
                       scope_pid=launcher.pid) as dm:
            server = launcher.spawn(["ip", "netns", "exec", ns_t, sys.executable, "-c", ECHO,
                                     str(PORT), str(PROC_LIMIT_S)])
            # Unix sockets are looked up (sock_diag) in agentlatd's own namespace:
            # the daemon, the agent and this server share ns A
            model = launcher.spawn(["ip", "netns", "exec", ns_a, sys.executable, "-c", UNIX_ECHO,
                                    str(d / "model.sock"), str(PROC_LIMIT_S)])
            bystander = launcher.spawn([sys.executable, "-c",
                                        f"print('x', flush=True); import time; "
                                        f"time.sleep({PROC_LIMIT_S})"])
            assert all_on(server, orig) and all_on(bystander, orig)
            agent = Proc(["ip", "netns", "exec", ns_a, sys.executable, "-c", AGENT,
                          str(dm.socket), t_ip, str(PORT), str(PROC_LIMIT_S),
                          str(d / "model.sock")])
            try:
                assert agent.first["ready"]["home_cpu"] == 1
                child = agent.first["child"]
                agent.cmd("steps 20")

                def chain_placed() -> Any:
                    row = _row(dm, "chain-agent")
                    got = {m["pid"]: m for m in (row or {}).get("chain", [])}
                    return (all(p in got and got[p]["state"] == "placed"
                                for p in (server, child, model)) and got)

                got = wait_until(chain_placed, 10.0, what="tool server and pipe child found")
                assert got[server]["via"].startswith(f"udp {t_ip}:{PORT} (net ns ")
                assert got[child]["via"].startswith("pipe:[")
                assert got[model]["via"].startswith(f"unix {d / 'model.sock'} (net ns ")
                assert got[server]["cpus"] == "1"
                wait_until(lambda: dm.status()["exclusive_cpus"] == "1", 10.0,
                           what="home CPU 1 exclusive")
                wait_until(lambda: all_on(bystander, "0"), 5.0, what="bystander moved off CPU 1")
                # the chain runs with the agent, never on the completion CPU
                assert all_on(server, "1") and all_on(child, "1") and all_on(model, "1")
                st = dm.status()
                assert st["chain_members"] == 3 and st["chain_unmovable"] == 0
                agent.cmd("steps 20")  # still answering from CPU 1

                agent.cmd("unregister")
                wait_until(lambda: all(all_on(p, orig) for p in (server, child, model, bystander)),
                           10.0, what="members and bystander restored")
                wait_until(lambda: dm.status()["chain_members"] == 0, 5.0, what="chain dropped")
            finally:
                agent.close()
    finally:
        launcher.close()


NOBODY = 65534


def test_a_non_admin_peer_cannot_declare_another_uids_process() -> None:
    victim = subprocess.Popen(["sleep", str(PROC_LIMIT_S)])
    try:
        with workdir() as d, daemon(d, policy_text()) as dm:
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                try:
                    os.close(r)
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                    import socket as s_
                    c = s_.socket(s_.AF_UNIX, s_.SOCK_STREAM)
                    c.connect(str(dm.socket))
                    out = []
                    for msg in ({"v": 1, "op": "register", "id": 1, "agent_id": "nb"},
                                {"v": 1, "op": "chain", "id": 2,
                                 "members": [{"pid": victim.pid}]},
                                {"v": 1, "op": "chain", "id": 3,
                                 "members": [{"address": "10.253.1.2:7777"}]}):
                        c.sendall((json.dumps(msg) + "\n").encode())
                        buf = b""
                        while not buf.endswith(b"\n"):
                            buf += c.recv(65536)
                        out.append(json.loads(buf))
                    os.write(w, json.dumps(out).encode())
                finally:
                    os._exit(0)
            os.close(w)
            data = b""
            while chunk := os.read(r, 65536):
                data += chunk
            os.close(r)
            os.waitpid(pid, 0)
            reg, decl, addr = json.loads(data)
            assert reg["ok"], reg
            assert not decl["ok"] and decl["error"]["code"] == "not_permitted", decl
            assert "runs as uid 0" in decl["error"]["message"]
            assert addr["ok"], addr  # an address names no process by itself
            assert all_on(victim.pid, current_affinity())
    finally:
        kill_quietly(victim)


# a tool the daemon cannot discover: it answers signals, not sockets or pipes
SIG_TOOL = r'''
import os, signal, sys, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    info = signal.sigtimedwait({signal.SIGUSR1}, 0.5)
    if info is not None:
        os.kill(info.si_pid, signal.SIGUSR2)
'''

SIG_AGENT = r'''
import json, os, signal, sys, time
from agentlatd.client import Client
sock, tool, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
c = Client("sig-agent", "interactive", socket=sock, flush_interval=0.2, retry_interval=0.2)
print(json.dumps({"ready": c.registration}), flush=True)
end = time.monotonic() + limit
i = 0
while time.monotonic() < end:
    with c.step(i):
        os.kill(tool, signal.SIGUSR1)
        signal.sigtimedwait({signal.SIGUSR2}, 1.0)
    i += 1
    time.sleep(0.0005)
'''

HOG = r'''
import os, time
os.setpriority(os.PRIO_PROCESS, 0, -10)
print("ready", flush=True)
end = time.monotonic() + float(__import__("sys").argv[1])
while time.monotonic() < end:
    pass
'''


def test_guard_undoes_an_exclusive_home_cpu_that_made_the_agent_slower() -> None:
    orig = current_affinity()
    launcher = Launcher()
    hog: subprocess.Popen[bytes] | None = None
    try:
        with workdir() as d, daemon(d, policy_text(exclusive="exclusive"),
                                    scope_pid=launcher.pid) as dm:
            tool = launcher.spawn([sys.executable, "-c", SIG_TOOL, str(PROC_LIMIT_S)])
            agent = Proc([sys.executable, "-c", SIG_AGENT, str(dm.socket), str(tool),
                          str(PROC_LIMIT_S)])
            try:
                assert agent.first["ready"]["home_cpu"] == 1
                wait_until(lambda: dm.status()["exclusive_cpus"] == "1", 10.0,
                           what="home CPU 1 exclusive after a baseline window")
                wait_until(lambda: all_on(tool, "0"), 5.0, what="the tool moved to CPU 0")
                # now a busy task of higher priority on the completion CPU, where
                # exclusivity pushed the tool: pinned there only, so exclusivity
                # leaves it alone (victim_affinity); the baseline had none
                hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", HOG, "20"],
                                       stdout=subprocess.PIPE)
                assert hog.stdout is not None and hog.stdout.readline().strip() == b"ready"

                def undone() -> Any:
                    row = _row(dm, "sig-agent") or {}
                    dec = ((row.get("guard") or {}).get("decisions") or {}).get("exclusive")
                    return dec if dec and dec["action"] != "wait" else None

                dec = wait_until(undone, 20.0, what="the guard's verdict on exclusivity")
                kill_quietly(hog)  # its work is done: hand CPU 0 back to the host
                assert dec["action"] == "undo", dec
                row = _row(dm, "sig-agent")
                assert row is not None and row["refused"] == ["exclusive"]
                st = dm.status()
                assert st["guard_undone"] == {"exclusive": 1}
                wait_until(lambda: dm.status()["exclusive_cpus"] == "", 5.0,
                           what="exclusivity undone")
                wait_until(lambda: all_on(tool, orig), 5.0, what="the tool's affinity restored")
                assert "undoing its exclusive home CPU" in dm.log
                # not retried: it stays off over further windows
                n = (row.get("guard") or {}).get("windows", 0)
                wait_until(lambda: ((_row(dm, "sig-agent") or {}).get("guard") or {})
                           .get("windows", 0) >= n + 2, 10.0, what="two more windows")
                assert dm.status()["exclusive_cpus"] == ""
            finally:
                agent.proc.kill()
                agent.proc.wait()
    finally:
        if hog is not None:
            kill_quietly(hog)
        launcher.close()


def test_exclusive_home_cpu_pushed_the_tool_server_to_the_completion_cpu() -> None:
    """The bug: an interactive agent's exclusive home CPU moved every other task,
    its own tool server (a process in another network namespace, as local MCP
    servers run) included, onto the completion CPU; each reply then waited
    there. The tool server must stay allowed on the agent's home CPU."""
    launcher = Launcher()
    try:
        with two_namespaces() as (ns_a, ns_t, _a_ip, t_ip), workdir() as d, \
                daemon(d, policy_text(exclusive="exclusive"),
                       scope_pid=launcher.pid) as dm:
            server = launcher.spawn(["ip", "netns", "exec", ns_t, sys.executable, "-c", ECHO,
                                     str(PORT), str(PROC_LIMIT_S)])
            bystander = launcher.spawn([sys.executable, "-c",
                                        f"print('x', flush=True); import time; "
                                        f"time.sleep({PROC_LIMIT_S})"])
            agent = Proc(["ip", "netns", "exec", ns_a, sys.executable, "-c", AGENT,
                          str(dm.socket), t_ip, str(PORT), str(PROC_LIMIT_S), "-"])
            try:
                wait_until(lambda: dm.status()["exclusive_cpus"] == "1", 10.0,
                           what="home CPU 1 exclusive")
                wait_until(lambda: all_on(bystander, "0"), 5.0, what="bystander moved off CPU 1")
                agent.cmd("steps 10")
                aff = thread_affinities(server)
                assert aff and all(1 in CpuSet.parse_list(v) for v in aff.values()), \
                    f"the tool server was pushed off the agent's home CPU: {aff}"
            finally:
                agent.close()
    finally:
        launcher.close()


DECL_AGENT = r'''
import json, sys
from agentlatd.client import Client
c = Client("decl-agent", "interactive", socket=sys.argv[1], flush_interval=0.2,
           retry_interval=0.2)
print(json.dumps({"ready": c.registration, "declared": c.declare_chain([int(sys.argv[2])])}),
      flush=True)
sys.stdin.readline()
'''


def test_declared_and_policy_rule_members_join_the_chain() -> None:
    orig = current_affinity()
    launcher = Launcher()
    try:
        with workdir() as d:
            tool_bin = d / "chaintool-x9"  # comm "chaintool-x9": nothing else on a host has it
            shutil.copy("/bin/sleep", tool_bin)
            rule = '\n[[chain]]\nagent = "decl-*"\ncomm = "chaintool-x9"\n'
            with daemon(d, policy_text(exclusive="exclusive") + rule,
                        scope_pid=launcher.pid) as dm:
                declared = launcher.spawn(["sh", "-c", f"echo x; exec sleep {PROC_LIMIT_S}"])
                ruled = launcher.spawn(["sh", "-c", f"echo x; exec {tool_bin} {PROC_LIMIT_S}"])
                agent = Proc([sys.executable, "-c", DECL_AGENT, str(dm.socket), str(declared)])
                try:
                    assert agent.first["declared"]["members"][0]["pid"] == declared

                    def placed() -> Any:
                        row = _row(dm, "decl-agent") or {}
                        got = {m["pid"]: m for m in row.get("chain", [])}
                        return (all(p in got and got[p]["state"] == "placed"
                                    for p in (declared, ruled)) and got)

                    got = wait_until(placed, 10.0, what="declared and ruled members placed")
                    assert got[declared]["via"] == "declared"
                    assert got[ruled]["via"] == "policy [[chain]] rule 0"
                    wait_until(lambda: dm.status()["exclusive_cpus"] == "1", 10.0,
                               what="home CPU 1 exclusive")
                    assert all_on(declared, "1") and all_on(ruled, "1")
                except BaseException:
                    agent.close()
                    raise
            try:
                # SIGTERM with the agent still registered: the members get their
                # originals back with everything else
                assert dm.proc.returncode == 0, dm.log
                assert all_on(declared, orig) and all_on(ruled, orig)
            finally:
                agent.close()
    finally:
        launcher.close()


def test_a_member_registered_as_an_agent_lost_its_pin() -> None:
    """The bug: a chain member that registered as an agent itself was released as
    a member at the next tick, and the release restored the same journal
    entries the registry had just pinned: the new agent ran unpinned."""
    orig = current_affinity()
    member = subprocess.Popen(["sleep", str(PROC_LIMIT_S)])
    try:
        with workdir() as d, daemon(d, policy_text()) as dm:
            agent = Proc([sys.executable, "-c", DECL_AGENT, str(dm.socket), str(member.pid)])
            try:
                wait_until(lambda: all_on(member.pid, "1"), 10.0, what="member pinned")
                dm.result("register", agent_id="was-a-member", pid=member.pid)
                # two ticks of the chain keeper later, still pinned, as an agent
                n = dm.status()["tick"]
                wait_until(lambda: dm.status()["tick"] >= n + 3, 10.0, what="three ticks")
                assert all_on(member.pid, "1")
                row = _row(dm, "decl-agent") or {}
                assert row.get("chain") == []
                dm.result("unregister", pid=member.pid)
                wait_until(lambda: all_on(member.pid, "1"), 5.0, what="a member again")
                agent.close()
                wait_until(lambda: all_on(member.pid, orig), 10.0, what="restored at the end")
            finally:
                agent.close()
    finally:
        kill_quietly(member)


NB_AGENT = r'''
import json, os, sys
from agentlatd.client import Client  # imported as root: nobody may not read the stdlib here
import agentlatd.api.protocol, socket, threading, warnings  # noqa
os.setgid(65534)
os.setuid(65534)
c = Client("nb-agent", "interactive", socket=sys.argv[1], flush_interval=0.2,
           retry_interval=0.2)
print(json.dumps({"ready": c.registration, "declared": c.declare_chain([int(sys.argv[2])])}),
      flush=True)
sys.stdin.readline()
'''


def test_a_non_admin_agents_chain_moves_only_its_own_uids_processes() -> None:
    """Found by a rule, a root process is reported unmovable for nobody's agent,
    with the reason; nobody's own process, declared, is placed."""
    orig = current_affinity()
    root_tool = None
    own: subprocess.Popen[bytes] | None = None
    try:
        with workdir() as d:
            tool_bin = d / "chaintool-nb7"
            shutil.copy("/bin/sleep", tool_bin)
            root_tool = subprocess.Popen([str(tool_bin), str(PROC_LIMIT_S)])
            own = subprocess.Popen(["sleep", str(PROC_LIMIT_S)],
                                   preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
            rule = '\n[[chain]]\nagent = "nb-*"\ncomm = "chaintool-nb7"\n'
            with daemon(d, policy_text() + rule) as dm:
                agent = Proc([sys.executable, "-c", NB_AGENT, str(dm.socket), str(own.pid)])
                try:
                    def seen() -> Any:
                        row = _row(dm, "nb-agent") or {}
                        got = {m["pid"]: m for m in row.get("chain", [])}
                        return (root_tool.pid in got and own.pid in got
                                and got[own.pid]["state"] == "placed"
                                and got[root_tool.pid]["state"] == "unmovable" and got)

                    got = wait_until(seen, 10.0, what="own member placed, root's unmovable")
                    assert "runs as uid 0" in got[root_tool.pid]["problem"]
                    assert all_on(own.pid, "1")
                    assert all_on(root_tool.pid, orig)
                    assert dm.status()["chain_unmovable"] == 1
                finally:
                    agent.close()
    finally:
        for p in (root_tool, own):
            if p is not None:
                kill_quietly(p)
