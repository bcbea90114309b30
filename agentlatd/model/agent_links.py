"""Agent links: the NICs an agent's own replies arrive on, and where to process them (pure).

Why (measured in docs/evaluation.md): with RPS of every NIC on the completion
CPUs, an agent's tool reply is queued on a completion CPU's backlog behind
whatever bulk traffic that CPU is absorbing (enqueue_to_backlog is one FIFO
per CPU, net/core/dev.c) and then wakes the agent across CPUs. Measured on
the bench under a 150 kpps flood (docs/evaluation.md): the request/reply
stage's p50/p999 51/155 us with the agent's link steered to the completion
CPU, 26/69 us with it processed on the agent's own CPU (quiet: 25/95; hand
tuning: 26/60). The kernel's per-flow answer is RFS, but it needs the
host-wide net.core.rps_sock_flow_entries, which exists only in the initial
namespace and which a daemon confined to a container or a shared host may
not write. So at link granularity: a NIC whose received traffic is that of
registered pinned agents, and small (rx_pps <= tuning.agent_link_max_pps),
gets rps_cpus = those agents' home CPUs -- each agent completes its own
replies where it waits, as block completions do with rq_affinity = 2 -- and
the bulk NICs stay on the completion CPUs. A link over the rate carries bulk
traffic too: it stays on the completion CPUs, and the plan says how to
separate the flows (RFS, an ntuple rule).

Hysteresis (a link must not flap between the two): a link becomes local at
rx_pps <= max_pps and stops being local only after `ticks` consecutive
ticks over it. A link whose rate is not known yet (its first tick) keeps its
previous state, and a new link waits for a rate.

The home CPUs' heat must not count the softirqs of their own agents'
replies, or an agent would be moved off a CPU for doing its own work:
own_softirq_rate() is what the local links bring to each home CPU (the
link's rx_pps spread over its CPUs, as RPS's flow hash spreads it), and
discount_heat() takes at most that much NET_RX off the CPU's softirq term.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agentlatd.cpuset import CpuSet
from agentlatd.policy import HeatPolicy


@dataclass(frozen=True, slots=True)
class AgentHome:
    """A registered pinned agent as the tuner sees it (published by the main thread)."""

    pid: int
    agent_id: str
    home_cpu: int
    devices: tuple[str, ...] = ()  # named by the agent at registration


@dataclass(frozen=True, slots=True)
class AgentLink:
    device: str
    home_cpus: CpuSet  # the home CPUs of the pinned agents receiving on it
    agents: tuple[str, ...]  # their agent ids, sorted
    rx_pps: float | None  # packets/s received on the device; None = not known yet


@dataclass(frozen=True, slots=True)
class LinkState:
    local: bool
    over: int = 0  # consecutive ticks over max_pps


@dataclass(frozen=True, slots=True)
class AgentLinks:
    """The classification the planner uses: `local` links get RPS on their
    agents' home CPUs; `busy` ones carry agent traffic but too much of it."""

    local: Mapping[str, AgentLink] = field(default_factory=dict)
    busy: Mapping[str, AgentLink] = field(default_factory=dict)


NONE = AgentLinks()
Candidates = dict[str, tuple[CpuSet, tuple[str, ...]]]  # device -> (home CPUs, agent ids)


def candidates(homes: Iterable[AgentHome], found: Mapping[int, Iterable[str]]) -> Candidates:
    """device -> (home CPUs, agent ids) from each agent's devices: the ones its
    sockets receive on (`found`, by pid) and the ones it named."""
    cpus: dict[str, set[int]] = {}
    ids: dict[str, set[str]] = {}
    for h in homes:
        for dev in {*found.get(h.pid, ()), *h.devices}:
            cpus.setdefault(dev, set()).add(h.home_cpu)
            ids.setdefault(dev, set()).add(h.agent_id)
    return {d: (CpuSet(cpus[d]), tuple(sorted(ids[d]))) for d in sorted(cpus)}


def classify(cands: Candidates, rx_pps: Mapping[str, float | None], prev: Mapping[str, LinkState],
             max_pps: float, ticks: int) -> tuple[AgentLinks, dict[str, LinkState]]:
    """The links and the next hysteresis state (module docstring)."""
    local: dict[str, AgentLink] = {}
    busy: dict[str, AgentLink] = {}
    state: dict[str, LinkState] = {}
    for dev, (cpus, agents) in cands.items():
        rate = rx_pps.get(dev)
        was = prev.get(dev, LinkState(local=False))
        if rate is None:
            st = was
        elif rate <= max_pps:
            st = LinkState(local=True)
        else:
            over = was.over + 1
            st = LinkState(local=was.local and over < ticks, over=over)
        state[dev] = st
        link = AgentLink(dev, cpus, agents, rate)
        if st.local:
            local[dev] = link
        elif rate is not None:
            busy[dev] = link
    return AgentLinks(local, busy), state


def own_softirq_rate(links: AgentLinks) -> dict[int, float]:
    """cpu -> NET_RX/s the local links bring to it (at most one softirq per packet)."""
    out: dict[int, float] = {}
    for link in links.local.values():
        if not link.rx_pps or not link.home_cpus:
            continue
        share = link.rx_pps / len(link.home_cpus)
        for c in link.home_cpus:
            out[c] = out.get(c, 0.0) + share
    return out


def discount_heat(heat: Mapping[int, float], net_rx: Mapping[int, float], own: Mapping[int, float],
                  pol: HeatPolicy) -> dict[int, float]:
    """`heat` without the softirq term of each CPU's own agents' replies (never below 0)."""
    out = dict(heat)
    for cpu, pps in own.items():
        if cpu not in out:
            continue
        taken = min(net_rx.get(cpu, 0.0), pps)
        out[cpu] = max(0.0, out[cpu] - pol.softirq_weight * taken / pol.softirq_scale)
    return out
