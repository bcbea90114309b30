"""The bench's configurations (design note section 12).

  Q  quiet: no noise; default placement.
  A  baseline: noise on; default placement; the flood's NET_RX softirq lands
     on the agent CPU (rps_cpus of the flood's receiving veth names it), as it
     does by default when the IRQ or the sender shares the agent's CPU.
  B  manual tuning: the agent (both its threads) pinned on the agent CPU; the
     flood sender, the sink, the hogs and the writer pinned on the completion
     CPU, and the flood's RPS pointed there (note experiment B, by hand).
  D  agentlatd: noise and RPS as in A; `agentlatd run` with its default policy,
     [devices] include = the bench's own veths only, and the agents
     registered through agentlatd.client. The default policy steers the
     flood's veth to the completion CPU and, finding the agents' sockets on
     the agent's veth (an agent link, model/agent_links.py), keeps that one's
     receive processing on the agents' home CPU.
  E  agentlatd as in D with tuning.agent_links = "completion": every veth,
     the agent's own included, steered to the completion CPU (agentlatd before
     agent links): each reply is queued on the completion CPU's backlog behind
     the flood. Not in the default set (--configs Q,A,B,D,E).
The note's experiment C (observability only) is `agentlatd trace`.

The same four with the C agent's tool server NOT a thread of the agent
process (the agent's own tool-server thread shares its pinning; a real tool
server does not):
  QS AS BS DS  the tool server is its own process (`probe serve`) in its own
               network namespace, across the veth, as local MCP servers,
               vector databases and embedding servers run. BS pins the agent
               AND the tool server on the agent CPU (hand tuning); DS
               registers only the agents: agentlatd must find the tool server
               as the agent's chain (agents/chain.py) -- before chains it
               pushed it to the completion CPU with exclusivity.
  QC AC BC DC  the tool server is a child process the agent talks to over
               pipes (a stdio MCP server); the request/reply stage is the
               pipe round trip.
In DS/DC the Python agent's tool server is not registered either (in D it is).
  NS NC        DS/DC with tuning.chains = false: agentlatd before chains (the
               tool server is not found; exclusivity moves it). Not in the
               default set.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Config:
    key: str
    title: str
    noise: bool
    flood_rps_on_agent_cpu: bool  # False: on the completion CPU
    pin: bool  # pin the agent to the agent CPU and the noise to the completion CPU
    daemon: bool  # agentlatd runs and the agents register
    description: str
    agent_links: str = "home"  # D/E: the policy's tuning.agent_links
    tool: str = "thread"  # the C agent's tool server: "thread" | "process" | "pipe"
    chains: bool = True  # D..: the policy's tuning.chains


CONFIGS: dict[str, Config] = {
    "Q": Config("Q", "quiet", noise=False, flood_rps_on_agent_cpu=False, pin=False, daemon=False,
                description="no noise, default placement"),
    "A": Config("A", "baseline", noise=True, flood_rps_on_agent_cpu=True, pin=False, daemon=False,
                description="noise; default placement; flood NET_RX on the agent CPU"),
    "B": Config("B", "manual tuning", noise=True, flood_rps_on_agent_cpu=False, pin=True, daemon=False,
                description="agent pinned on the agent CPU; noise and flood RPS on the completion CPU"),
    "D": Config("D", "agentlatd", noise=True, flood_rps_on_agent_cpu=True, pin=False, daemon=True,
                description="noise as in A; agentlatd run (default policy, bench veths only); "
                            "agents registered through the client"),
    "E": Config("E", "agentlatd, no agent links", noise=True, flood_rps_on_agent_cpu=True,
                pin=False, daemon=True, agent_links="completion",
                description="as D with tuning.agent_links = \"completion\": the agent's own veth "
                            "is steered to the completion CPU too"),
}

_TOOLS = {"S": ("process", "tool server its own process in its own namespace"),
          "C": ("pipe", "tool server a child process over pipes")}
for _suffix, (_tool, _what) in _TOOLS.items():
    for _k in ("Q", "A", "B", "D"):
        _c = CONFIGS[_k]
        CONFIGS[_k + _suffix] = Config(
            _k + _suffix, f"{_c.title}, {_what}", noise=_c.noise,
            flood_rps_on_agent_cpu=_c.flood_rps_on_agent_cpu, pin=_c.pin, daemon=_c.daemon,
            description=f"{_c.description}; {_what}", agent_links=_c.agent_links, tool=_tool)

    # agentlatd as it was before chains: the tool server is not found, and the
    # agent's exclusive home CPU pushes it to the completion CPU (the bug)
    CONFIGS["N" + _suffix] = Config(
        "N" + _suffix, f"agentlatd without chains, {_what}", noise=True,
        flood_rps_on_agent_cpu=True, pin=False, daemon=True,
        description=f"as D{_suffix} with tuning.chains = false; {_what}", tool=_tool, chains=False)

ORDER = ("Q", "A", "B", "D")  # the default set
ALL = ("Q", "A", "B", "D", "E", "QS", "AS", "BS", "DS", "NS", "QC", "AC", "BC", "DC", "NC")


def schedule(keys: tuple[str, ...], runs: int) -> list[tuple[str, int]]:
    """Interleaved order: Q A B D, A B D Q, ... (rotated each round, so no
    configuration always follows the same one), `runs` rounds."""
    out: list[tuple[str, int]] = []
    n = len(keys)
    for r in range(runs):
        for i in range(n):
            out.append((keys[(i + r) % n], r))
    return out
