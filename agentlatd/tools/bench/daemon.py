"""Configuration D: `agentlatd run` as a child process, agents registered through the client.

The daemon runs inside the bench's agent namespace (`ip netns exec`), so its
sys/class/net holds only the bench's veths and lo: the host's eth0 is not even
visible to it, and the host-wide net.core sysctls do not exist there (they are
init_net only: net/core/sysctl_net_core.c registers net_core_table for
init_net). Its policy is the default policy with one key set:
[devices] include = the bench's two veths in that namespace (E also sets
tuning.agent_links = "completion"); the state
directory and the socket are a temporary directory of the bench
(--state-dir, --socket).

Registration: the C agent and the Python agent's tool server are registered
by pid over the socket (agentlatd.client.Connection, as `agentlatd exec`
does); the Python agent registers itself with agentlatd.client.Client and
times its steps with client.step() (the Python client path).

Exclusive home CPUs: the interactive class moves other tasks off the agent's
home CPU. scope "bench" (default) runs it through agentlatd/tools/bench/scoped.py
with the bench's pid, so only the bench's own processes (the noise) are moved, as B moves
them by hand; scope "host" is the daemon's default, every movable task of
the host, which on a shared machine also moves other people's work.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from agentlatd.client import ClientError, Connection
from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError
from agentlatd.sysfs.root import Root
from agentlatd.tools.bench import netns
from agentlatd.wire import Op

LATENCY_CLASS = "interactive"
START_TIMEOUT = 15.0
SETTLE_TIMEOUT = 8.0  # pinning is immediate; an agent link takes two tuner ticks (a rate)


class DaemonUnavailable(AgentlatdError):
    """agentlatd could not be started or would not register an agent."""


def policy_text(net: netns.BenchNet, agent_links: str = "home", chains: bool = True) -> str:
    """The default policy, narrowed to the bench's own veths; E also sets
    tuning.agent_links, NS/NC tuning.chains (configs.py)."""
    text = (
        "# agentlatd bench, configurations D/E: the default policy except these keys\n"
        "[devices]\n"
        f"include = [{', '.join(json.dumps(d) for d in net.agent_devices)}]\n"
    )
    tuning = []
    if agent_links != "home":
        tuning.append(f"agent_links = {json.dumps(agent_links)}")
    if not chains:
        tuning.append("chains = false")
    if tuning:
        text += "[tuning]\n" + "".join(t + "\n" for t in tuning)
    return text


class BenchDaemon:
    def __init__(self, net: netns.BenchNet, workdir: str, *, log: Any, scope: str = "bench",
                 agent_links: str = "home", chains: bool = True) -> None:
        self.net = net
        self.scope = scope
        self.agent_links = agent_links
        self.chains = chains
        self.state_dir = os.path.join(workdir, f"state-{time.monotonic_ns()}")
        self.socket = os.path.join(self.state_dir, "agentlatd.sock")
        self.policy = os.path.join(workdir, "bench-policy.toml")
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.logfile = os.path.join(workdir, "agentlatd-run.log")
        self._client: Connection | None = None

    def start(self) -> dict[str, Any]:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        with open(self.policy, "w") as f:
            f.write(policy_text(self.net, self.agent_links, self.chains))
        cli = (["-m", "agentlatd.tools.bench.scoped", str(os.getpid())] if self.scope == "bench"
               else ["-m", "agentlatd"])
        argv = [*netns.ns_exec(self.net.ns_agent), sys.executable, *cli, "run",
                "--config", self.policy, "--state-dir", self.state_dir, "--socket", self.socket]
        logf = open(self.logfile, "a")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
        finally:
            logf.close()
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise DaemonUnavailable(f"agentlatd run exited with {self.proc.returncode}: {self._tail()}")
            if os.path.exists(self.socket):
                try:
                    if self._client is None:
                        self._client = self._connect()
                    st = self.status()
                    # ready: the first tuner tick has applied the plan
                    if isinstance(st, dict) and st.get("ready"):
                        return {"pid": self.proc.pid, "argv": argv, "status": st,
                                "policy": policy_text(self.net, self.agent_links, self.chains)}
                except (OSError, AgentlatdError, ValueError):
                    if self._client is not None:
                        self._client.close()
                    self._client = None
            time.sleep(0.05)
        raise DaemonUnavailable(f"agentlatd run did not open {self.socket} in {START_TIMEOUT:.0f} s: "
                                f"{self._tail()}")

    def _connect(self) -> Connection:
        return Connection(self.socket, timeout=10.0)

    def register(self, pid: int, agent_id: str) -> Any:
        """Register process `pid` (all its threads) over the socket; the answer and its round trip."""
        if self._client is None:
            raise DaemonUnavailable("agentlatd is not running")
        t0 = time.perf_counter_ns()
        try:
            res = self._client.request(Op.REGISTER, agent_id=agent_id, pid=pid,
                                       latency_class=LATENCY_CLASS)
        except (ClientError, OSError) as e:
            raise DaemonUnavailable(f"agentlatd refused to register {agent_id}: {e}") from e
        return {"result": _jsonable(res), "client_ns": time.perf_counter_ns() - t0}

    def settle(self, pids: list[int], root: Root) -> dict[str, Any]:
        """Wait until every registered thread is pinned to one CPU and, with agent
        links on, agentlatd has found the agent's veth to be one (or
        SETTLE_TIMEOUT); returns what was seen and when."""
        t0 = time.monotonic()
        rps_rel = netns.rps_path(self.net.dev_flood_rx)
        agent_rel = netns.rps_path(self.net.dev_agent)
        seen: dict[str, Any] = {}
        while True:
            pinned = True
            for pid in pids:
                for t in root.listdir(f"proc/{pid}/task"):
                    try:
                        if len(os.sched_getaffinity(int(t))) != 1:
                            pinned = False
                    except (ProcessLookupError, ValueError):
                        pass
            link = True
            st = self.status()
            if self.agent_links == "home":
                links = st.get("agent_links", []) if isinstance(st, dict) else []
                link = any(lk.get("device") == self.net.dev_agent and lk.get("mode") == "local"
                           for lk in links if isinstance(lk, dict))
            # the interactive class's home CPU turns exclusive after the agent's
            # first chain scan and one latency window (agents/chain.py)
            excl = bool(st.get("exclusive_cpus")) if isinstance(st, dict) else True
            rps = netns.sysfs_read(self.net.ns_agent, [rps_rel, agent_rel])
            seen = {"pinned": pinned, "agent_link": link, "exclusive": excl,
                    "flood_rps_cpus": rps[rps_rel], "agent_rps_cpus": rps[agent_rel],
                    "flood_rps_list": CpuSet.parse_mask(rps[rps_rel]).to_list() if rps[rps_rel] else "",
                    "agent_rps_list": CpuSet.parse_mask(rps[agent_rel]).to_list() if rps[agent_rel] else ""}
            if (pinned and link and excl) or time.monotonic() - t0 > SETTLE_TIMEOUT:
                break
            time.sleep(0.1)
        seen["after_s"] = round(time.monotonic() - t0, 3)
        return seen

    def agents(self) -> Any:
        """`agents --json` (with each agent's chain and guard)."""
        if self._client is None:
            return None
        try:
            return _jsonable(self._client.request(Op.AGENTS))
        except (OSError, ClientError, ValueError) as e:
            return {"error": str(e)}

    def status(self) -> Any:
        if self._client is None:
            return None
        try:
            return _jsonable(self._client.request(Op.STATUS))
        except (OSError, ClientError, ValueError) as e:
            return {"error": str(e)}

    def stop(self) -> list[str]:
        """SIGTERM (the daemon rolls back what it changed), wait, then SIGKILL."""
        notes: list[str] = []
        if self._client is not None:
            with contextlib.suppress(OSError):
                self._client.close()
            self._client = None
        if self.proc is None:
            return notes
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                notes.append("agentlatd run did not stop on SIGTERM in 15 s and was killed")
        if self.proc.returncode not in (0, -signal.SIGTERM):
            notes.append(f"agentlatd run exited with {self.proc.returncode}: {self._tail()}")
        self.proc = None
        return notes

    def warnings(self) -> list[str]:
        """The daemon's WARNING/ERROR log lines so far (what it could not do), without timestamps."""
        out: list[str] = []
        try:
            with open(self.logfile) as f:
                for line in f:
                    if " WARNING " in line or " ERROR " in line:
                        msg = line.split(" WARNING ", 1)[-1].split(" ERROR ", 1)[-1].strip()
                        if msg not in out:
                            out.append(msg[:300])
        except OSError:
            pass
        return out[-20:]

    def _tail(self) -> str:
        try:
            with open(self.logfile) as f:
                return " | ".join(f.read().strip().splitlines()[-4:])
        except OSError:
            return ""


def _jsonable(v: Any) -> Any:
    """A client result as JSON-able data (dataclasses and mappings as dicts)."""
    try:
        json.dumps(v)
        return v
    except TypeError:
        pass
    if hasattr(v, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [_jsonable(x) for x in v]
    return str(v)
