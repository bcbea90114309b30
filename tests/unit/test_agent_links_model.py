"""model/agent_links.py (candidates, hysteresis, heat discount) and agents/links.py LinkTracker.

The tracker runs on a fixture tree under tmp_path (Root(tmp_path)) laid out as
the kernel shows it: proc/PID/fd/N -> "socket:[INODE]", proc/net/udp,
proc/net/route, sys/class/net/DEV/statistics/rx_packets; the counters are
rewritten between ticks and `now` is explicit, so every rate is known exactly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import shutil
import sys

import pytest

from agentlatd import policy
from agentlatd.agents.links import MAX_SCANS_PER_TICK, RESCAN_S, LinkTracker
from agentlatd.cpuset import CpuSet
from agentlatd.model.agent_links import (
    NONE,
    AgentHome,
    AgentLink,
    AgentLinks,
    Candidates,
    LinkState,
    candidates,
    classify,
    discount_heat,
    own_softirq_rate,
)
from agentlatd.policy import HeatPolicy, Policy
from agentlatd.sysfs.root import Root

S = CpuSet.parse_list


# -- candidates ---------------------------------------------------------------

def test_candidates_union_of_found_and_named_devices() -> None:
    homes = [
        AgentHome(11, "b-agent", 1),
        AgentHome(10, "a-agent", 3, devices=("named0", "veth1")),
        AgentHome(12, "c-agent", 5),  # no sockets found, names nothing
    ]
    found = {10: ["veth1"], 11: ["veth1", "eth0"], 99: ["not-an-agent0"]}
    c = candidates(homes, found)
    assert list(c) == ["eth0", "named0", "veth1"]  # sorted devices
    assert c["veth1"] == (S("1,3"), ("a-agent", "b-agent"))  # ids sorted, not in home order
    assert c["named0"] == (S("3"), ("a-agent",))
    assert c["eth0"] == (S("1"), ("b-agent",))
    assert "not-an-agent0" not in c  # a pid that is no registered agent


def test_candidates_two_agents_on_one_cpu_and_empty() -> None:
    homes = [AgentHome(1, "x", 2), AgentHome(2, "y", 2)]
    assert candidates(homes, {1: {"v0"}, 2: {"v0"}}) == {"v0": (S("2"), ("x", "y"))}
    assert candidates([], {1: {"v0"}}) == {}
    assert candidates(homes, {}) == {}


# -- classify: hysteresis -----------------------------------------------------------

CANDS: Candidates = {"v0": (S("2,3"), ("a",))}
MAX = 100.0


def _run(rates: list[float | None], ticks: int = 3) -> list[tuple[bool, bool, LinkState]]:
    """(local, busy, state) of device v0 after each tick."""
    prev: dict[str, LinkState] = {}
    out = []
    for r in rates:
        links, prev = classify(CANDS, {"v0": r}, prev, MAX, ticks)
        out.append(("v0" in links.local, "v0" in links.busy, prev["v0"]))
    return out


def test_hysteresis_table() -> None:
    rates: list[float | None] = [50, 150, 150, 150, 50, None, 150, None, 150, 150, 100]
    got = [(loc, busy) for loc, busy, _ in _run(rates)]
    assert got == [
        (True, False),   # enters at <= max
        (True, False),   # over 1 of 3: stays local
        (True, False),   # over 2 of 3: stays local
        (False, True),   # over 3 of 3: leaves, reported busy
        (True, False),   # back under: local at once
        (True, False),   # unknown rate: keeps local
        (True, False),   # over 1
        (True, False),   # unknown rate: keeps local and the count
        (True, False),   # over 2 (the unknown tick did not reset it)
        (False, True),   # over 3: leaves
        (True, False),   # exactly max_pps is local
    ]


def test_states_count_consecutive_ticks_over() -> None:
    states = [st for _, _, st in _run([50, 150, 150, 50, 150])]
    assert states == [LinkState(True, 0), LinkState(True, 1), LinkState(True, 2), LinkState(True, 0),
                      LinkState(True, 1)]


def test_one_tick_hysteresis_leaves_on_the_first_tick_over() -> None:
    assert [(loc, busy) for loc, busy, _ in _run([50, 150], ticks=1)] == [(True, False), (False, True)]


def test_new_link_waits_for_a_rate() -> None:
    (loc, busy, st), = _run([None])
    assert (loc, busy, st) == (False, False, LinkState(False, 0))
    # and a busy link whose rate is unknown for a tick is neither local nor reported
    assert [(lo, b) for lo, b, _ in _run([500, None, 50])] == [(False, True), (False, False), (True, False)]


def test_new_link_over_the_rate_is_busy_at_once() -> None:
    links, state = classify(CANDS, {"v0": 5000.0}, {}, MAX, 3)
    assert links.local == {}
    assert links.busy == {"v0": AgentLink("v0", S("2,3"), ("a",), 5000.0)}
    assert state == {"v0": LinkState(False, 1)}


def test_links_carry_candidates_and_rate() -> None:
    cands: Candidates = {"v0": (S("2,3"), ("a", "b")), "v1": (S("7"), ("c",)), "v2": (S("1"), ("d",))}
    links, state = classify(cands, {"v0": 12.5, "v1": 1e6, "v2": None}, {}, MAX, 3)
    assert links.local == {"v0": AgentLink("v0", S("2,3"), ("a", "b"), 12.5)}
    assert links.busy == {"v1": AgentLink("v1", S("7"), ("c",), 1e6)}
    assert set(state) == {"v0", "v1", "v2"}


def test_a_device_no_longer_a_candidate_is_dropped_and_prev_not_mutated() -> None:
    prev = {"old0": LinkState(True, 2), "v0": LinkState(True, 1)}
    snapshot = dict(prev)
    links, state = classify(CANDS, {"v0": 500.0}, prev, MAX, 3)
    assert prev == snapshot
    assert set(state) == {"v0"} and "old0" not in links.local
    assert state["v0"] == LinkState(True, 2)  # over 2 of 3


def test_missing_rate_key_counts_as_unknown() -> None:
    links, state = classify(CANDS, {}, {"v0": LinkState(True, 1)}, MAX, 3)
    assert "v0" in links.local and links.local["v0"].rx_pps is None
    assert state == {"v0": LinkState(True, 1)}


# -- own softirq rate and the heat discount -------------------------------------------

def _link(dev: str, cpus: str, pps: float | None) -> AgentLink:
    return AgentLink(dev, S(cpus), ("a",), pps)


def test_own_softirq_rate_spreads_each_link_over_its_home_cpus() -> None:
    links = AgentLinks(
        local={"v0": _link("v0", "1,2", 1000.0), "v1": _link("v1", "2", 300.0),
               "v2": _link("v2", "4", None), "v3": _link("v3", "5", 0.0),
               "v4": _link("v4", "1-4", 400.0)},
        busy={"v9": _link("v9", "1", 1e6)},  # not processed on the home CPUs
    )
    got = own_softirq_rate(links)
    assert got == pytest.approx({1: 600.0, 2: 900.0, 3: 100.0, 4: 100.0})
    assert 5 not in got  # a zero rate brings nothing
    assert own_softirq_rate(NONE) == {}


def test_discount_heat_at_most_net_rx_and_never_below_zero() -> None:
    pol = HeatPolicy()  # softirq_weight 1, softirq_scale 10000
    heat = {0: 1.0, 1: 0.3, 2: 0.7, 4: 0.9}
    before = dict(heat)
    net_rx = {0: 5000.0, 1: 100000.0, 2: 9e9}
    own = {0: 8000.0, 1: 50000.0, 3: 999.0, 4: 777.0}
    got = discount_heat(heat, net_rx, own, pol)
    assert heat == before  # not mutated
    assert got[0] == pytest.approx(1.0 - 5000.0 / 10000)  # only the NET_RX it saw: 5000 < 8000
    assert got[1] == 0.0  # 0.3 - 5.0 -> clamped
    assert got[2] == 0.7  # no local link there: untouched
    assert got[4] == 0.9  # no NET_RX counted there: nothing to take
    assert 3 not in got  # a CPU not in heat is not added
    assert set(got) == set(heat)


def test_discount_heat_uses_the_policy_weight_and_scale() -> None:
    pol = dataclasses.replace(HeatPolicy(), softirq_weight=2.0, softirq_scale=1000.0)
    got = discount_heat({3: 5.0}, {3: 1000.0}, {3: 400.0}, pol)
    assert got[3] == pytest.approx(5.0 - 2.0 * 400.0 / 1000.0)


# -- LinkTracker on a fixture tree -----------------------------------------------

UDP_HEADER = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
              "timeout inode ref pointer drops")
ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def _hex4(a: str) -> str:
    """An IPv4 address as proc/net/{udp,route} print it (%08X of the network-order u32)."""
    return f"{int.from_bytes(ipaddress.IPv4Address(a).packed, sys.byteorder):08X}"


def _udp_line(inode: int, local: str, remote: str) -> str:
    return (f"  100: {_hex4(local)}:1388 {_hex4(remote)}:1F40 01 00000000:00000000 00:00000000 "
            f"00000000  1000        0 {inode} 2 0000000000000000 0")


def _route(dev: str, net: str, flags: int = 1) -> str:
    n = ipaddress.IPv4Network(net)
    return (f"{dev}\t{_hex4(str(n.network_address))}\t00000000\t{flags:04X}\t0\t0\t0\t"
            f"{_hex4(str(n.netmask))}\t0\t0\t0")


class Tree:
    """A proc/sys fixture tree the tests rewrite between ticks."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.root = Root(str(base))

    def write(self, rel: str, text: str) -> None:
        p = self.base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)

    def fd(self, pid: int, n: int, target: str) -> None:
        p = self.base / f"proc/{pid}/fd/{n}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)

    def udp(self, *lines: str) -> None:
        self.write("proc/net/udp", "\n".join([UDP_HEADER, *lines]) + "\n")

    def routes(self, *lines: str) -> None:
        self.write("proc/net/route", "\n".join([ROUTE_HEADER, *lines]) + "\n")

    def rx(self, dev: str, packets: int) -> None:
        self.write(f"sys/class/net/{dev}/statistics/rx_packets", f"{packets}\n")


PID = 4242


@pytest.fixture
def tree(tmp_path: pathlib.Path) -> Tree:
    t = Tree(tmp_path)
    t.fd(PID, 0, "/dev/null")
    t.fd(PID, 3, "socket:[123]")
    t.fd(PID, 4, "pipe:[99]")
    t.udp(_udp_line(123, "10.20.0.2", "10.20.0.1"),  # the agent's tool reply socket
          _udp_line(555, "192.0.2.5", "192.0.2.1"))  # someone else's, on eth0
    t.routes(_route("eth0", "0.0.0.0/0", flags=3), _route("eth0", "192.0.2.0/24"),
             _route("vethX", "10.20.0.0/24"))
    t.rx("vethX", 1000)
    t.rx("eth0", 10**9)
    return t


def pol(text: str = "") -> Policy:
    return policy.loads(text, "test.toml") if text else policy.default()


HOMES = (AgentHome(PID, "agent-a", 3),)


def test_first_tick_has_no_rate_second_tick_is_local(tree: Tree) -> None:
    tr = LinkTracker()
    first = tr.update(tree.root, HOMES, pol(), now=100.0)
    assert first.local == {} and first.busy == {}  # no rate yet
    assert tr.found == {PID: frozenset({"vethX"})}
    tree.rx("vethX", 1500)
    second = tr.update(tree.root, HOMES, pol(), now=101.0)
    assert second.local == {"vethX": AgentLink("vethX", S("3"), ("agent-a",), 500.0)}
    assert second.busy == {}
    assert tr.links is second
    tree.rx("vethX", 1600)
    third = tr.update(tree.root, HOMES, pol(), now=101.5)
    assert third.local["vethX"].rx_pps == pytest.approx(200.0)


def test_over_max_for_hot_ticks_ticks_becomes_busy(tree: Tree) -> None:
    p = pol("[tuning]\nagent_link_max_pps = 1000\n[heat]\nhot_ticks = 3\n")
    tr = LinkTracker()
    n = 1000
    tr.update(tree.root, HOMES, p, now=10.0)
    n += 100
    tree.rx("vethX", n)
    assert "vethX" in tr.update(tree.root, HOMES, p, now=11.0).local
    seen = []
    for k in range(3):
        n += 5000
        tree.rx("vethX", n)
        links = tr.update(tree.root, HOMES, p, now=12.0 + k)
        seen.append(("vethX" in links.local, "vethX" in links.busy))
    assert seen == [(True, False), (True, False), (False, True)]
    assert links.busy["vethX"].rx_pps == pytest.approx(5000.0)
    n += 10
    tree.rx("vethX", n)
    assert "vethX" in tr.update(tree.root, HOMES, p, now=15.0).local  # quiet again


def test_counter_reset_keeps_the_state(tree: Tree) -> None:
    tr = LinkTracker()
    tr.update(tree.root, HOMES, pol(), now=1.0)
    tree.rx("vethX", 1100)
    assert "vethX" in tr.update(tree.root, HOMES, pol(), now=2.0).local
    tree.rx("vethX", 5)  # the device was recreated: counter went back
    links = tr.update(tree.root, HOMES, pol(), now=3.0)
    assert links.local["vethX"].rx_pps is None
    tree.rx("vethX", 25)
    assert tr.update(tree.root, HOMES, pol(), now=4.0).local["vethX"].rx_pps == pytest.approx(20.0)


def test_same_now_twice_gives_no_rate(tree: Tree) -> None:
    tr = LinkTracker()
    tr.update(tree.root, HOMES, pol(), now=5.0)
    tree.rx("vethX", 2000)
    links = tr.update(tree.root, HOMES, pol(), now=5.0)
    assert links.local == {} and links.busy == {}


@pytest.mark.parametrize("text", ['[tuning]\nagent_links = "completion"\n', "[tuning]\nrps = false\n"])
def test_completion_policy_or_no_rps_gives_none_and_forgets(tree: Tree, text: str) -> None:
    tr = LinkTracker()
    tr.update(tree.root, HOMES, pol(), now=1.0)
    tree.rx("vethX", 1100)
    assert tr.update(tree.root, HOMES, pol(), now=2.0).local
    assert tr.update(tree.root, HOMES, pol(text), now=3.0) == NONE
    assert tr.links == NONE
    assert (tr.found, tr.scanned, tr.rx, tr.state) == ({}, {}, {}, {})
    # back on "home": starts over, so the first tick has no rate again
    assert tr.update(tree.root, HOMES, pol(), now=4.0).local == {}


def test_no_agents_gives_none(tree: Tree) -> None:
    assert LinkTracker().update(tree.root, (), pol(), now=1.0) == NONE


def test_agents_that_leave_are_forgotten(tree: Tree) -> None:
    tree.fd(777, 5, "socket:[123]")
    homes = (*HOMES, AgentHome(777, "agent-b", 6))
    tr = LinkTracker()
    tr.update(tree.root, homes, pol(), now=1.0)
    tree.rx("vethX", 1100)
    links = tr.update(tree.root, homes, pol(), now=2.0)
    assert links.local["vethX"].home_cpus == S("3,6")
    assert set(tr.found) == {PID, 777}
    tree.rx("vethX", 1200)
    links = tr.update(tree.root, HOMES, pol(), now=3.0)  # agent-b unregistered
    assert set(tr.found) == {PID} and set(tr.scanned) == {PID}
    assert links.local["vethX"].home_cpus == S("3") and links.local["vethX"].agents == ("agent-a",)
    links = tr.update(tree.root, (), pol(), now=4.0)
    assert links == NONE


def test_a_process_that_exits_loses_its_links_at_the_next_scan(tree: Tree) -> None:
    tr = LinkTracker()
    tr.update(tree.root, HOMES, pol(), now=1.0)
    tree.rx("vethX", 1100)
    assert tr.update(tree.root, HOMES, pol(), now=2.0).local
    shutil.rmtree(tree.base / f"proc/{PID}")
    tree.rx("vethX", 1200)
    # not rescanned before RESCAN_S: the link stands
    assert tr.update(tree.root, HOMES, pol(), now=1.0 + RESCAN_S - 0.5).local
    links = tr.update(tree.root, HOMES, pol(), now=1.0 + RESCAN_S)
    assert links.local == {} and links.busy == {}
    assert tr.found == {PID: frozenset()}


def test_sockets_are_rescanned_every_rescan_s(tree: Tree) -> None:
    tr = LinkTracker()
    tree.rx("vethY", 0)
    tr.update(tree.root, HOMES, pol(), now=50.0)
    # the agent's socket now talks over vethY
    tree.routes(_route("eth0", "0.0.0.0/0", flags=3), _route("vethY", "10.20.0.0/24"))
    tr.update(tree.root, HOMES, pol(), now=50.0 + RESCAN_S / 2)
    assert tr.found[PID] == frozenset({"vethX"})
    tr.update(tree.root, HOMES, pol(), now=50.0 + RESCAN_S)
    assert tr.found[PID] == frozenset({"vethY"})


def test_named_devices_count_only_when_this_namespace_has_them(tree: Tree) -> None:
    tree.rx("vethN", 0)
    homes = (AgentHome(PID, "agent-a", 3, devices=("vethN", "ghost0")),)
    tr = LinkTracker()
    tr.update(tree.root, homes, pol(), now=1.0)
    tree.rx("vethN", 10)
    tree.rx("vethX", 1010)
    links = tr.update(tree.root, homes, pol(), now=2.0)
    assert set(links.local) == {"vethN", "vethX"}
    assert "ghost0" not in tr.state and "ghost0" not in tr.rx
    assert "eth0" not in links.local and "eth0" not in links.busy  # not the agent's socket


def test_a_pid_with_no_sockets_does_not_read_proc_net(tmp_path: pathlib.Path) -> None:
    t = Tree(tmp_path)
    t.fd(5, 0, "/dev/null")
    t.rx("vethN", 0)
    tr = LinkTracker()
    # no proc/net at all: nothing to read, the named device still counts
    tr.update(t.root, (AgentHome(5, "a", 1, devices=("vethN",)),), pol(), now=1.0)
    t.rx("vethN", 7)
    links = tr.update(t.root, (AgentHome(5, "a", 1, devices=("vethN",)),), pol(), now=2.0)
    assert links.local["vethN"].rx_pps == pytest.approx(7.0)
    assert tr.found == {5: frozenset()}


def test_scans_are_bounded_per_tick_oldest_first(tree: Tree) -> None:
    extra = MAX_SCANS_PER_TICK + 5
    pids = [20000 + k for k in range(extra)]
    for p in pids:
        tree.fd(p, 3, "socket:[123]")
    homes = tuple(AgentHome(p, f"a{p}", 1 + p % 4) for p in pids)
    tr = LinkTracker()
    tr.update(tree.root, homes, pol(), now=1.0)
    assert len(tr.scanned) == MAX_SCANS_PER_TICK
    assert set(tr.scanned) == set(pids[:MAX_SCANS_PER_TICK])  # never scanned = oldest; then by pid
    tr.update(tree.root, homes, pol(), now=1.1)
    assert set(tr.scanned) == set(pids)
    assert tr.scanned[pids[-1]] == 1.1 and tr.scanned[pids[0]] == 1.0
    assert all(tr.found[p] == frozenset({"vethX"}) for p in pids)
