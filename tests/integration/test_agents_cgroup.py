"""Agents in cgroups and PID namespaces, for real: a cgroup v1 cpuset child the
test creates (only its own agent process goes in), a v1 exclusive cpuset, and
an agent in a PID namespace of its own (unshare --pid --fork).

The host's cpuset hierarchy is cgroup v1 at /sys/fs/cgroup/cpuset; the cgroup
v2 case (systemd AllowedCPUs=) runs in the VM guest."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from agentshelpers import (
    Agent,
    daemon,
    env_for_children,
    kill_quietly,
    needs_2cpus,
    needs_root,
    policy_text,
    thread_affinities,
    wait_until,
    workdir,
)

CPUSET = pathlib.Path("/sys/fs/cgroup/cpuset")
needs_v1_cpuset = pytest.mark.skipif(not (CPUSET / "cpuset.cpus").exists(),
                                     reason="no cgroup v1 cpuset hierarchy mounted")
pytestmark = [needs_root, needs_2cpus, needs_v1_cpuset]


@contextlib.contextmanager
def cpuset_child(cpus: str, *, exclusive: bool = False) -> Iterator[pathlib.Path]:
    """A child cpuset of the root, removed afterwards (its tasks must be gone by then)."""
    d = CPUSET / f"agentlatd-test-{os.getpid()}-{time.monotonic_ns()}"
    d.mkdir()
    try:
        (d / "cpuset.mems").write_text((CPUSET / "cpuset.mems").read_text().strip())
        (d / "cpuset.cpus").write_text(cpus)
        if exclusive:
            (d / "cpuset.cpu_exclusive").write_text("1")
        yield d
    finally:
        wait_until(lambda: not (d / "tasks").read_text().strip(), 10.0,
                   what=f"{d} empty before rmdir")
        d.rmdir()


def join(d: pathlib.Path) -> None:
    """preexec_fn: the child moves itself (and only itself) into cpuset `d`."""
    with open(d / "tasks", "w") as f:
        f.write(str(os.getpid()))


def test_regression_agent_in_cpuset_without_home_cpu_got_einval() -> None:
    # home CPU 1 is outside the container's cpuset {0}: before, agentlatd chose
    # CPU 1 anyway and every sched_setaffinity failed with EINVAL (state "failed")
    with workdir() as wd, cpuset_child("0") as cg, \
            daemon(wd, policy_text(completion="0", home="1")) as dm, \
            Agent(dm.socket, "boxed", preexec=lambda: join(cg)) as ag:
        r = ag.ready
        assert r["state"] == "placed", r
        assert r["home_cpu"] == 0 and r["placement"] == "fallback", r
        assert r["cpuset"] == "0"
        assert "no home CPU (1) in this agent's cpuset (0)" in r["problem"], r
        assert r["container"]["cgroup"] == "/" + cg.name
        assert set(thread_affinities(ag.pid).values()) == {"0"}
        row = next(x for x in dm.agents() if x["pid"] == ag.pid)
        assert row["placement"] == "fallback" and "quietest CPU it may use" in row["problem"]
        out = subprocess.run([sys.executable, "-m", "agentlatd", "agents", "--socket",
                              str(dm.socket)], capture_output=True, text=True,
                             env=env_for_children(), timeout=30).stdout
        assert "CPU 0 is not a home CPU" in out, out


def test_agent_in_cpuset_gets_the_home_cpu_inside_it() -> None:
    with workdir() as wd, cpuset_child("1") as cg, \
            daemon(wd, policy_text(completion="0", home="1")) as dm, \
            Agent(dm.socket, "inside", preexec=lambda: join(cg)) as ag:
        r = ag.ready
        assert (r["state"], r["home_cpu"], r["placement"]) == ("placed", 1, "home"), r
        assert set(thread_affinities(ag.pid).values()) == {"1"}


def test_regression_exclusive_cpuset_of_another_workload_became_a_home_cpu() -> None:
    # CPU 1 belongs to an exclusive cpuset (cpuset.cpu_exclusive = 1) of another
    # workload: before, it was this agent's home CPU (and, with "exclusive",
    # that workload's tasks would have been moved off it)
    with workdir() as wd, cpuset_child("1", exclusive=True) as held, \
            daemon(wd, policy_text(completion="0", home="1")) as dm, \
            Agent(dm.socket, "outsider") as ag:
        r = ag.ready
        assert r["home_cpu"] == 0 and r["placement"] == "fallback", r
        assert "held exclusively by another workload" in r["problem"], r
        st = dm.status()
        holders = st.get("held_cpus") or st.get("agents", {}).get("held_cpus")
        assert holders is not None and {"cpus": "1", "holder": f"cgroup cpu_exclusive /"
                                        f"{held.name}"} in holders, st


NS_CLIENT = r'''
import json, socket, sys
def req(**f):
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(sys.argv[1])
        c.sendall((json.dumps({"v": 1, "id": 1, **f}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            b = c.recv(65536)
            if not b:
                break
            buf += b
        return json.loads(buf)
import os
print(json.dumps({"mypid": os.getpid(),
                  "self": req(op="register", agent_id="ns-self"),
                  "one": req(op="register", agent_id="ns-one", pid=1),
                  "none": req(op="register", agent_id="ns-none", pid=4000000)}), flush=True)
sys.stdin.read()
'''


def test_regression_pid_in_request_from_a_pid_namespace_named_a_host_process() -> None:
    # the client is pid 1 of its own PID namespace. Before, its "pid": 1 named
    # the HOST's init (registered and pinned as root). A register without pid is
    # identified by SO_PEERCRED (the kernel translates), "pid": 1 is read in the
    # client's namespace, and a pid that namespace has no process for is refused
    with workdir() as wd, daemon(wd, policy_text(completion="0", home="1")) as dm:
        p = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child",
                              sys.executable, "-c", NS_CLIENT, str(dm.socket)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env_for_children())
        try:
            assert p.stdout is not None
            ans = json.loads(p.stdout.readline())
            assert ans["mypid"] == 1
            host_pid = wait_until(lambda: [int(x) for x in
                                           (pathlib.Path(f"/proc/{p.pid}/task/{p.pid}/children")
                                            .read_text().split())], 5.0, what="child")[0]
            assert ans["self"]["ok"], ans
            assert ans["self"]["result"]["pid"] == host_pid
            assert ans["one"]["ok"], ans
            assert ans["one"]["result"]["pid"] == host_pid
            assert not ans["none"]["ok"] and ans["none"]["error"]["code"] == "no_such_process"
            assert "PID namespace" in ans["none"]["error"]["message"]
            assert [a["pid"] for a in dm.agents()] == [host_pid]
        finally:
            kill_quietly(p)  # type: ignore[arg-type]
        wait_until(lambda: dm.agents() == [], 10.0, what="agent dropped when it exited")
