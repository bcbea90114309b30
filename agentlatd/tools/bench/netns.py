"""The bench's own network: three namespaces and two veth pairs (ip-netns(8), veth(4)).

    ns "agent"  bA  198.18.S.1/30  <-- veth -->  bT  198.18.S.2/30  ns "tool"
                fR  198.19.S.2/30  <-- veth -->  fS  198.19.S.1/30  ns "flood"

The agent's sockets live in the agent namespace, the tool server's in the
tool namespace; the flood goes from the flood namespace to a sink in the agent
namespace, so its NET_RX work is done for fR's rx queue (veth_xmit ->
netif_rx -> enqueue_to_backlog on the CPU get_rps_cpu() picks from
fR/queues/rx-0/rps_cpus, else on the sender's CPU). Nothing is created in the
host's own namespace: the host's devices and routes are never touched, and a
daemon started inside the agent namespace (`ip netns exec`) sees only bA, fR
and lo in its sys/class/net (ip netns exec remounts sysfs for the namespace).

198.18.0.0/15 is the benchmarking range (RFC 2544); S is random per bench,
as are the names' suffixes, so concurrent benches and tests never collide.
Teardown deletes the namespaces, which deletes the veths and every RPS
setting made on them.

Sysfs files of a device inside a namespace are reached with
`ip netns exec NS python -m agentlatd.tools.bench.netns read|write ...`, which
goes through Root like every other kernel access.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass

from agentlatd.errors import AgentlatdError
from agentlatd.sysfs.root import Root

NETNS_DIR = "/run/netns"  # iproute2's bind-mount directory (ip-netns(8))


class NetnsError(AgentlatdError):
    """The bench could not build or use its network namespaces."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    except FileNotFoundError as e:
        raise NetnsError("the bench needs iproute2's `ip` (apt-get install iproute2).") from e
    if check and p.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {p.stderr.strip() or p.returncode}")
    return p


@dataclass(frozen=True, slots=True)
class BenchNet:
    """Names and addresses of one bench's namespaces and veths."""

    suffix: str
    subnet: int  # S in 198.18.S.0/30 and 198.19.S.0/30

    @property
    def ns_agent(self) -> str:
        return f"alb-a-{self.suffix}"

    @property
    def ns_tool(self) -> str:
        return f"alb-t-{self.suffix}"

    @property
    def ns_flood(self) -> str:
        return f"alb-f-{self.suffix}"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.ns_agent, self.ns_tool, self.ns_flood)

    # device names: at most 15 characters (IFNAMSIZ - 1)
    @property
    def dev_agent(self) -> str:
        return f"bA{self.suffix}"

    @property
    def dev_tool(self) -> str:
        return f"bT{self.suffix}"

    @property
    def dev_flood_rx(self) -> str:
        return f"fR{self.suffix}"

    @property
    def dev_flood_tx(self) -> str:
        return f"fS{self.suffix}"

    @property
    def agent_ip(self) -> str:
        return f"198.18.{self.subnet}.1"

    @property
    def tool_ip(self) -> str:
        return f"198.18.{self.subnet}.2"

    @property
    def sink_ip(self) -> str:
        return f"198.19.{self.subnet}.2"

    @property
    def flood_ip(self) -> str:
        return f"198.19.{self.subnet}.1"

    def ns_path(self, ns: str) -> str:
        return os.path.join(NETNS_DIR, ns)

    @property
    def agent_devices(self) -> tuple[str, str]:
        """The devices in the agent namespace (what agentlatd may steer in D)."""
        return (self.dev_agent, self.dev_flood_rx)


def new_net() -> BenchNet:
    return BenchNet(suffix=secrets.token_hex(3), subnet=secrets.randbelow(250) + 2)


def setup(net: BenchNet) -> None:
    """Create the namespaces and veths; on any failure remove what was made."""
    try:
        for ns in net.namespaces:
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", net.ns_agent, "link", "add", net.dev_agent, "type", "veth",
            "peer", "name", net.dev_tool, "netns", net.ns_tool)
        _ip("-n", net.ns_agent, "link", "add", net.dev_flood_rx, "type", "veth",
            "peer", "name", net.dev_flood_tx, "netns", net.ns_flood)
        for ns, dev, ip in ((net.ns_agent, net.dev_agent, net.agent_ip),
                            (net.ns_tool, net.dev_tool, net.tool_ip),
                            (net.ns_agent, net.dev_flood_rx, net.sink_ip),
                            (net.ns_flood, net.dev_flood_tx, net.flood_ip)):
            _ip("-n", ns, "addr", "add", f"{ip}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
    except BaseException:
        teardown(net)
        raise


def teardown(net: BenchNet) -> list[str]:
    """Delete the namespaces (and with them the veths). Returns what failed."""
    failed: list[str] = []
    for ns in net.namespaces:
        if os.path.exists(net.ns_path(ns)):
            p = _ip("netns", "del", ns, check=False)
            if p.returncode != 0:
                failed.append(f"{ns}: {p.stderr.strip()}")
    return failed


def exists(net: BenchNet) -> bool:
    return any(os.path.exists(net.ns_path(ns)) for ns in net.namespaces)


def ns_exec(ns: str) -> list[str]:
    """Command prefix that runs a program inside namespace `ns` with its own sysfs."""
    return ["ip", "netns", "exec", ns]


def sysfs_write(ns: str, pairs: list[tuple[str, str]]) -> None:
    """Write kernel files (relative paths) as seen from inside `ns`."""
    args = [x for kv in pairs for x in kv]
    p = subprocess.run([*ns_exec(ns), sys.executable, "-m", "agentlatd.tools.bench.netns", "write", *args],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise NetnsError(f"writing {', '.join(k for k, _ in pairs)} in {ns} failed: "
                         f"{p.stderr.strip().splitlines()[-1:] or p.returncode}")


def sysfs_read(ns: str, rels: list[str]) -> dict[str, str]:
    """Read kernel files (relative paths) as seen from inside `ns` ("" when unreadable)."""
    p = subprocess.run([*ns_exec(ns), sys.executable, "-m", "agentlatd.tools.bench.netns", "read", *rels],
                       capture_output=True, text=True, timeout=30)
    vals = p.stdout.split("\n")
    return {rel: (vals[i] if i < len(vals) else "") for i, rel in enumerate(rels)}


def rps_path(dev: str, queue: str = "rx-0") -> str:
    return f"sys/class/net/{dev}/queues/{queue}/rps_cpus"


def _main(argv: list[str]) -> int:
    """`python -m agentlatd.tools.bench.netns read REL... | write REL VALUE...`, run inside a namespace."""
    root = Root("/")
    if len(argv) >= 1 and argv[0] == "read":
        for rel in argv[1:]:
            print(root.read_optional(rel))
        return 0
    if len(argv) >= 3 and argv[0] == "write" and len(argv) % 2 == 1:
        for i in range(1, len(argv), 2):
            # only per-device files of this namespace's own devices: proc/irq
            # and the host's sysctls are global and never the bench's to write
            if not argv[i].startswith("sys/class/net/") or argv[i].startswith("sys/class/net/lo/"):
                print(f"refusing to write {argv[i]}: not a device of this namespace", file=sys.stderr)
                return 2
            root.write_value(argv[i], argv[i + 1])
        return 0
    print("usage: python -m agentlatd.tools.bench.netns read REL... | write REL VALUE...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
