"""Agent links against the real kernel: a real `agentlatd run` in a network namespace,
real veths, real UDP traffic, real rps_cpus writes (model/agent_links.py, plan/rps.py).

    ns A (daemon, agents)                      peers
      al<r>  198.18.S.1/30  <-- veth -->  198.18.S.2  ns T: UDP echo server
      fl<r>  198.19.S.2/30  <-- veth -->  198.19.S.1  ns F: UDP flood sender

The daemon sees only al<r>, fl<r> and lo (`ip netns exec` remounts sysfs; its
proc/net/* are A's): [devices] include names the two veths, completion CPU 0,
home CPU 1, every knob but RPS off, interactive homes "shared" (no task of the
host is moved). Checked:

  1. an interactive agent whose connected UDP socket talks to the echo server
     at ~100 packets/s makes al<r> a "local" agent link: status says so with the
     agent's home CPU, and every rx queue of al<r> has rps_cpus = that CPU,
     while fl<r> stays on the completion CPU;
  2. unregistering the agent puts al<r> back on the completion CPU;
  3. an agent whose socket receives a flood on fl<r> above
     tuning.agent_link_max_pps is a "busy" link, never "local", and fl<r> stays
     on the completion CPU;
  4. SIGTERM restores every rps_cpus to what the test wrote before the start;
  5. a server socket bound to fl<r>'s own address, unconnected, makes fl<r> a
     local link: sockets.py's bound-address rule (the host's own address must
     not be read as lo there).

Needs root, iproute2 and CPUs 0 and 1. Every namespace (and with it every veth
and its RPS setting) is deleted in teardown, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from agentshelpers import (
    Daemon,
    daemon,
    env_for_children,
    statuses_over_ticks,
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

COMPLETION = CpuSet({0})
HOME = CpuSet({1})
MAX_PPS = 200  # tuning.agent_link_max_pps: the flood is over it, the echo agent under it
ECHO_PPS = 50  # the echo agent's requests/s: ~50 replies/s received on al<r>
FLOOD_PPS = 1500  # the flood received on fl<r>
RX_QUEUES = 2  # rx queues of each veth in A: every one must be steered
BEFORE = "3"  # rps_cpus the test writes before the daemon starts (CPUs 0-1), restored on exit
PROC_LIMIT_S = 45  # every helper process exits on its own after this long


@dataclass
class Net:
    suffix: str
    subnet: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def ns_a(self) -> str:
        return f"alk-a-{self.suffix}"

    @property
    def ns_t(self) -> str:
        return f"alk-t-{self.suffix}"

    @property
    def ns_f(self) -> str:
        return f"alk-f-{self.suffix}"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.ns_a, self.ns_t, self.ns_f)

    @property
    def al(self) -> str:  # agent link, in A
        return f"al{self.suffix}"

    @property
    def al_peer(self) -> str:  # in T
        return f"at{self.suffix}"

    @property
    def fl(self) -> str:  # flood link, in A
        return f"fl{self.suffix}"

    @property
    def fl_peer(self) -> str:  # in F
        return f"fs{self.suffix}"

    @property
    def a_ip(self) -> str:
        return f"198.18.{self.subnet}.1"

    @property
    def t_ip(self) -> str:
        return f"198.18.{self.subnet}.2"

    @property
    def sink_ip(self) -> str:  # A's address on fl<r>
        return f"198.19.{self.subnet}.2"

    @property
    def f_ip(self) -> str:
        return f"198.19.{self.subnet}.1"


def _ip(*args: str) -> None:
    p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, f"ip {' '.join(args)}: {p.stderr.strip()}"


def _ns_read(ns: str, path: str) -> str:
    p = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 0, f"cat {path} in {ns}: {p.stderr.strip()}"
    return p.stdout.strip()


def _rx_queues(ns: str, dev: str) -> list[str]:
    p = subprocess.run(["ip", "netns", "exec", ns, "ls", f"/sys/class/net/{dev}/queues"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return sorted(q for q in p.stdout.split() if q.startswith("rx-"))


def _rps_raw(ns: str, dev: str) -> dict[str, str]:
    """rx queue -> rps_cpus text, as seen inside `ns`."""
    return {q: _ns_read(ns, f"/sys/class/net/{dev}/queues/{q}/rps_cpus")
            for q in _rx_queues(ns, dev)}


def _rps(ns: str, dev: str) -> dict[str, CpuSet]:
    return {q: CpuSet.parse_mask(v) for q, v in _rps_raw(ns, dev).items()}


def _all_on(ns: str, dev: str, cpus: CpuSet) -> dict[str, CpuSet] | None:
    """The rps_cpus of every rx queue of `dev` when all of them are `cpus`, else None."""
    got = _rps(ns, dev)
    return got if got and all(v == cpus for v in got.values()) else None


def _spawn(net: Net, ns: str, script: str, *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=env_for_children())
    net.procs.append(p)
    return p


def _line(p: subprocess.Popen[bytes], timeout: float = 10.0) -> str:
    """The next line the helper prints (it must print within `timeout`)."""
    assert p.stdout is not None
    r, _, _ = select.select([p.stdout], [], [], timeout)
    assert r, f"helper {p.pid} said nothing within {timeout} s"
    line = p.stdout.readline().decode().strip()
    if not line:
        err = p.stderr.read().decode() if p.stderr is not None else ""
        raise AssertionError(f"helper {p.pid} exited ({p.wait(5)}): {err}")
    return line


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(OSError):
            p.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=10)
    for f in (p.stdout, p.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


# The UDP echo server in T: answers every datagram; exits after LIMIT s.
ECHO = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.2)
print("listening", flush=True)
end = time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(2048)
    except TimeoutError:
        continue
    s.sendto(data, peer)
"""

# An agent's socket in A: bound to BIND_IP:BIND_PORT, connected to PEER_IP:PEER_PORT
# (its replies and only its peer's datagrams arrive on it; PEER_IP "-" = not
# connected, a server socket receiving from anyone). With PPS > 0 it sends
# PPS requests/s and reads the echoes; with PPS = 0 it only drains what arrives.
# Prints "up" once its first datagram has arrived (traffic really flows), then
# runs until killed or LIMIT s.
AGENT = r"""
import socket, sys, time
bind_ip, bind_port, peer_ip, peer_port, pps, limit = sys.argv[1:7]
pps, limit = float(pps), float(limit)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((bind_ip, int(bind_port)))
if peer_ip != "-":
    s.connect((peer_ip, int(peer_port)))
s.settimeout(0.01)
start = time.monotonic()
end = start + limit
nxt = start
up = False
while time.monotonic() < end:
    now = time.monotonic()
    if pps > 0 and now >= nxt:
        s.send(b"agentlatd-agent-link-test")
        nxt = max(nxt + 1.0 / pps, now - 1.0)
    try:
        s.recv(2048)
    except (TimeoutError, ConnectionRefusedError):
        continue
    if not up:
        up = True
        print("up", flush=True)
"""

# The flood in F: from F_IP:F_PORT to SINK_IP:SINK_PORT, PPS datagrams/s in bursts
# every 10 ms; prints "flooding" at the start; exits after LIMIT s.
FLOOD = r"""
import socket, sys, time
src_ip, src_port, dst_ip, dst_port, pps, limit = sys.argv[1:7]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src_ip, int(src_port)))
dst = (dst_ip, int(dst_port))
burst = max(1, int(float(pps) / 100))
print("flooding", flush=True)
start = time.monotonic()
end = start + float(limit)
tick = start
while time.monotonic() < end:
    for _ in range(burst):
        try:
            s.sendto(b"f" * 64, dst)
        except OSError:
            pass
    tick += 0.01
    time.sleep(max(0.0, tick - time.monotonic()))
"""


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net(suffix=secrets.token_hex(3), subnet=secrets.randbelow(250) + 2)
    try:
        for ns in n.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        q = ["numrxqueues", str(RX_QUEUES), "numtxqueues", str(RX_QUEUES)]
        _ip("-n", n.ns_a, "link", "add", n.al, *q, "type", "veth", "peer", "name", n.al_peer, *q,
            "netns", n.ns_t)
        _ip("-n", n.ns_a, "link", "add", n.fl, *q, "type", "veth", "peer", "name", n.fl_peer, *q,
            "netns", n.ns_f)
        for ns, dev, addr in ((n.ns_a, n.al, n.a_ip), (n.ns_t, n.al_peer, n.t_ip),
                              (n.ns_a, n.fl, n.sink_ip), (n.ns_f, n.fl_peer, n.f_ip)):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        yield n
    finally:
        for p in n.procs:
            _stop(p)
        for ns in n.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        left = [ns for ns in n.namespaces if os.path.exists(f"/run/netns/{ns}")]
        assert not left, f"namespaces left behind: {left}"


def _policy(net: Net) -> str:
    return f"""
[daemon]
interval = 0.2
log_level = "debug"
socket_group = "nogroup"
irqbalance = "ignore"

[cpus]
completion = "{COMPLETION.to_list()}"
home = "{HOME.to_list()}"

[devices]
include = [{json.dumps(net.al)}, {json.dumps(net.fl)}]
exclude = ["lo"]

[classes.interactive]
exclusive = "shared"

[tuning]
irq_affinity = false
rps = true
rps_flow_cnt = 0
xps = false
coalesce = false
threaded_napi = false
agent_links = "home"
agent_link_max_pps = {MAX_PPS}
"""


def _tail(dm: Daemon, n: int = 40) -> str:
    """The last lines of the daemon's log, without the per-connection chatter of our polling."""
    return "\n".join([x for x in dm.log.splitlines() if "agentlatd.api:" not in x][-n:])


@contextlib.contextmanager
def _daemon(net: Net, d: pathlib.Path) -> Iterator[Daemon]:
    """agentlatd run inside ns A (it sees only al<r>, fl<r> and lo), ready: its first
    tick applied."""
    with daemon(d, _policy(net), prefix=("ip", "netns", "exec", net.ns_a),
                scope_pid=os.getpid()) as dm:
        def ready() -> bool:
            if dm.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {dm.proc.returncode}:\n{dm.log}")
            try:
                return bool(dm.status().get("ready"))
            except OSError:
                return False

        wait_until(ready, 20.0, 0.1, "daemon ready (first tick applied)")
        yield dm


def _link(st: dict[str, Any], dev: str) -> dict[str, Any] | None:
    for lk in st.get("agent_links", []):
        if lk.get("device") == dev:
            out: dict[str, Any] = lk
            return out
    return None


def _observe(dm: Daemon, fn: Callable[[dict[str, Any]], Any], timeout: float, what: str) -> Any:
    """wait_until over the daemon's status, with the status and log tail in the failure."""
    seen: list[dict[str, Any]] = []

    def step() -> Any:
        st = dm.status()
        seen[:] = [st]
        return fn(st)

    try:
        return wait_until(step, timeout, 0.1, what)
    except AssertionError as e:
        st = seen[0] if seen else {}
        raise AssertionError(f"{e}\nagent_links: {st.get('agent_links')}\nagents: {st.get('agents')} "
                             f"tuner_error: {st.get('tuner_error')!r}\ndaemon log:\n{_tail(dm)}") from None


def test_agent_link_local_then_completion_busy_stays_and_sigterm_restores(net: Net) -> None:
    ns = net.ns_a
    # what the daemon must restore on exit (not the kernel default, so a restore is visible)
    for dev in (net.al, net.fl):
        for q in _rx_queues(ns, dev):
            subprocess.run(["ip", "netns", "exec", ns, "sh", "-c",
                            f"echo {BEFORE} > /sys/class/net/{dev}/queues/{q}/rps_cpus"],
                           check=True, capture_output=True, timeout=30)
    before = {dev: _rps_raw(ns, dev) for dev in (net.al, net.fl)}
    assert all(len(v) == RX_QUEUES for v in before.values()), before
    assert all(CpuSet.parse_mask(m) == CpuSet({0, 1}) for v in before.values() for m in v.values()), before

    echo = _spawn(net, net.ns_t, ECHO, net.t_ip, "7001", str(PROC_LIMIT_S))
    assert _line(echo) == "listening"

    with workdir() as d, _daemon(net, d) as dm:
        st = dm.status()
        assert CpuSet.parse_list(st["completion_cpus"]) == COMPLETION, st
        assert CpuSet.parse_list(st["home_cpus"]) == HOME, st
        # no agent: both NICs on the completion CPU, no agent link
        assert _all_on(ns, net.al, COMPLETION), _rps_raw(ns, net.al)
        assert _all_on(ns, net.fl, COMPLETION), _rps_raw(ns, net.fl)
        assert st["agent_links"] == [], st["agent_links"]

        # -- 1. a pinned agent talking to its tool over al<r>: a local agent link
        agent = _spawn(net, ns, AGENT, net.a_ip, "7002", net.t_ip, "7001", str(ECHO_PPS),
                       str(PROC_LIMIT_S))
        assert _line(agent) == "up"  # its echoes arrive
        reg = dm.result("register", agent_id="al-agent", pid=agent.pid,
                         latency_class="interactive")
        assert reg["state"] == "placed", reg
        home = reg["home_cpu"]
        assert home in HOME, reg

        def local(st: dict[str, Any]) -> dict[str, Any] | None:
            lk = _link(st, net.al)
            return lk if lk is not None and lk["mode"] == "local" else None

        lk = _observe(dm, local, 10.0, f"{net.al} a local agent link")
        assert CpuSet.parse_list(lk["home_cpus"]) == CpuSet({home}), lk
        assert lk["agents"] == ["al-agent"], lk
        # its rate is the echo traffic, measured (not zero, not the flood)
        assert lk["rx_pps"] is not None and 0 < lk["rx_pps"] <= MAX_PPS, lk
        assert _link(dm.status(), net.fl) is None, dm.status()["agent_links"]
        al_rps = wait_until(lambda: _all_on(ns, net.al, CpuSet({home})), 5.0, 0.1,
                            f"{net.al} rps_cpus = home CPU {home}")
        assert set(al_rps) == set(before[net.al]), al_rps
        assert _all_on(ns, net.fl, COMPLETION), _rps_raw(ns, net.fl)
        # it stays local while the agent keeps talking (no flapping back), checked on
        # every status until five more ticks have run: a fixed sleep could end before
        # the daemon ticked at all on a loaded machine, and pass without looking
        for st in statuses_over_ticks(dm.status, 5):
            assert local(st), st["agent_links"]
            assert _all_on(ns, net.al, CpuSet({home})), _rps_raw(ns, net.al)

        # -- 2. unregistered: back on the completion CPU
        ans = dm.result("unregister", agent_id="al-agent", pid=agent.pid)
        assert ans["restored"], ans
        wait_until(lambda: _all_on(ns, net.al, COMPLETION), 5.0, 0.1,
                   f"{net.al} rps_cpus back on the completion CPU")
        _observe(dm, lambda st: _link(st, net.al) is None, 5.0, f"{net.al} no agent link any more")
        _stop(agent)

        # -- 3. an agent whose socket receives a flood over max_pps: busy, never local
        flood = _spawn(net, net.ns_f, FLOOD, net.f_ip, "7101", net.sink_ip, "7102",
                       str(FLOOD_PPS), str(PROC_LIMIT_S))
        assert _line(flood) == "flooding"
        sink = _spawn(net, ns, AGENT, net.sink_ip, "7102", net.f_ip, "7101", "0", str(PROC_LIMIT_S))
        assert _line(sink) == "up"  # the flood arrives on its socket
        reg = dm.result("register", agent_id="fl-agent", pid=sink.pid, latency_class="interactive")
        assert reg["state"] == "placed", reg
        home = reg["home_cpu"]

        seen: list[dict[str, Any]] = []

        def busy(st: dict[str, Any]) -> dict[str, Any] | None:
            lk = _link(st, net.fl)
            if lk is not None:
                seen.append(lk)
            return lk if lk is not None and lk["mode"] == "busy" else None

        lk = _observe(dm, busy, 10.0, f"{net.fl} a busy agent link")
        assert CpuSet.parse_list(lk["home_cpus"]) == CpuSet({home}), lk
        assert lk["agents"] == ["fl-agent"], lk
        assert lk["rx_pps"] > MAX_PPS, lk
        # a few more ticks: still busy, and fl<r> was never steered to the home CPU
        # (counted in ticks, not seconds: a slow daemon must still have had its chance)
        for st in statuses_over_ticks(dm.status, 7):
            busy(st)
            assert _all_on(ns, net.fl, COMPLETION), _rps_raw(ns, net.fl)
        assert seen and all(x["mode"] == "busy" for x in seen), seen
        assert _all_on(ns, net.al, COMPLETION), _rps_raw(ns, net.al)
        assert flood.poll() is None and sink.poll() is None

        # -- 4. SIGTERM: every rps_cpus back to what the test wrote
        dm.proc.send_signal(signal.SIGTERM)
        rc = dm.proc.wait(timeout=20)
        log = dm.log
        assert rc == 0, log
        assert "rolled back" in log, log
    after = {dev: _rps_raw(ns, dev) for dev in (net.al, net.fl)}
    assert after == before, (after, before)


def test_server_socket_bound_to_the_nic_address_makes_a_local_link(net: Net) -> None:
    """An agent serving on its NIC's own address (unconnected UDP bound to it, as a
    tool server or a TCP listener is) receives on that NIC: sockets.py's rule "else
    the route to its own bound address". Under max_pps it must be a local link."""
    ns = net.ns_a
    with workdir() as d, _daemon(net, d) as dm:
        server = _spawn(net, ns, AGENT, net.sink_ip, "7202", "-", "0", "0", str(PROC_LIMIT_S))
        trickle = _spawn(net, net.ns_f, FLOOD, net.f_ip, "7201", net.sink_ip, "7202",
                         str(ECHO_PPS), str(PROC_LIMIT_S))
        assert _line(trickle) == "flooding"
        assert _line(server) == "up"
        reg = dm.result("register", agent_id="server", pid=server.pid, latency_class="interactive")
        assert reg["state"] == "placed", reg
        home = reg["home_cpu"]

        def local(st: dict[str, Any]) -> dict[str, Any] | None:
            lk = _link(st, net.fl)
            return lk if lk is not None and lk["mode"] == "local" else None

        lk = _observe(dm, local, 6.0, f"{net.fl} a local agent link of the bound server socket")
        assert CpuSet.parse_list(lk["home_cpus"]) == CpuSet({home}), lk
        wait_until(lambda: _all_on(ns, net.fl, CpuSet({home})), 5.0, 0.1,
                   f"{net.fl} rps_cpus = home CPU {home}")
