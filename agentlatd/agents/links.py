"""The tuner's view of agent links: sample sockets and rx counters, keep the hysteresis.

Sampling (IO) for model/agent_links.py, which has the why and the rules.
Called from the tuner thread once per tick with the pinned agents the main
thread published (a tuple swapped in one reference assignment):

  sockets   each agent's socket inodes (proc/PID/fd) matched against
            agentlatd's own proc/net/* and routes (sample/sockets.py);
            re-read every RESCAN_S per agent, at most MAX_SCANS_PER_TICK
            agents a tick (oldest first): a tick must stay milliseconds
            with a thousand agents, and an agent's sockets change slowly
  rx        sys/class/net/DEV/statistics/rx_packets of the candidate links,
            every tick; packets/s from the previous tick's count
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from agentlatd.errors import KernelError
from agentlatd.model.agent_links import (
    NONE,
    AgentHome,
    AgentLinks,
    LinkState,
    candidates,
    classify,
)
from agentlatd.policy import Policy
from agentlatd.sample.sockets import NetView, devices_of, read_net_view, read_socket_inodes
from agentlatd.sysfs.root import Root

RESCAN_S = 2.0
MAX_SCANS_PER_TICK = 200


class LinkTracker:
    def __init__(self) -> None:
        self.found: dict[int, frozenset[str]] = {}  # pid -> devices its sockets receive on
        self.scanned: dict[int, float] = {}  # pid -> monotonic time of its last scan
        self.rx: dict[str, tuple[float, int]] = {}  # device -> (monotonic, rx_packets)
        self.state: dict[str, LinkState] = {}
        self.links: AgentLinks = NONE

    def update(self, root: Root, homes: Iterable[AgentHome], policy: Policy,
               now: float | None = None) -> AgentLinks:
        now = time.monotonic() if now is None else now
        hs = tuple(homes)
        if policy.tuning.agent_links != "home" or not policy.tuning.rps or not hs:
            self.found.clear()
            self.scanned.clear()
            self.rx.clear()
            self.state.clear()
            self.links = NONE
            return NONE
        pids = {h.pid for h in hs}
        for gone in set(self.found) - pids:
            self.found.pop(gone, None)
            self.scanned.pop(gone, None)
        due = sorted((self.scanned.get(p, -1.0), p) for p in pids
                     if now - self.scanned.get(p, -RESCAN_S - 1.0) >= RESCAN_S)
        if due:
            inodes = {pid: read_socket_inodes(root, pid) for _, pid in due[:MAX_SCANS_PER_TICK]}
            want = set().union(*inodes.values())
            # proc/net/* once for the batch, parsing only the sockets asked for
            view = read_net_view(root, want) if want else NetView({}, ())
            for pid, ino in inodes.items():
                self.found[pid] = frozenset(devices_of(ino, view))
                self.scanned[pid] = now
        cands = candidates(hs, self.found)
        rates: dict[str, float | None] = {}
        seen: dict[str, tuple[float, int]] = {}
        for dev in cands:
            try:
                n = int(root.read_value(f"sys/class/net/{dev}/statistics/rx_packets"))
            except (KernelError, ValueError):
                continue  # not a device of this namespace (a name an agent gave), or gone
            seen[dev] = (now, n)
            old = self.rx.get(dev)
            rates[dev] = ((n - old[1]) / (now - old[0])
                          if old is not None and now > old[0] and n >= old[1] else None)
        self.rx = seen
        cands = {d: v for d, v in cands.items() if d in seen}
        self.links, self.state = classify(cands, rates, self.state, policy.tuning.agent_link_max_pps,
                                          policy.heat.hot_ticks)
        return self.links
