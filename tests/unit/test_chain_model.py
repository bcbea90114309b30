"""Chain discovery's parsers and matching rules, and the do-no-harm verdicts (pure).

Socket lines are in the kernel's format (net/ipv4/udp.c udp4_format_sock,
net/ipv4/tcp_ipv4.c get_tcp4_sock: "%08X:%04X" address:port, the address the
raw __be32 in host byte order -- "0200090A" is 10.9.0.2 on x86), headers as
this host's /proc/net/udp and /proc/net/tcp print them.
"""

from __future__ import annotations

import ipaddress
import sys

import pytest

from agentlatd.model import harm
from agentlatd.model.chain import bound_to, match_peers, member_cpus, pipe_peers
from agentlatd.sample.chain import (
    NsTable,
    parse_fd_link,
    parse_if_inet6,
    parse_ns_link,
)
from agentlatd.sample.sockets import parse_sockets
from agentlatd.stepstats import Histogram, bucket_of
from agentlatd.wire import parse_endpoint

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="lines recorded on x86")

UDP_HEAD = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
            "timeout inode ref pointer drops\n")
TCP_HEAD = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
            "timeout inode\n")


def udp(local: str, remote: str, inode: int, st: str = "07") -> str:
    return (f"  1: {local} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 "
            f"{inode} 2 0000000058fec522 0\n")


def tcp(local: str, remote: str, inode: int, st: str) -> str:
    return (f"   0: {local} {remote} {st} 00000000:00000000 00:00000000 00000000     0        0 "
            f"{inode} 1 0000000000000000 20 4 30 10 -1\n")


AGENT_NS, TOOL_NS, OTHER_NS = 4026532001, 4026532002, 4026532003
AGENT = "0100090A:9C40"  # 10.9.0.1:40000
TOOL = "0200090A:1E61"  # 10.9.0.2:7777
ANY_7777 = "00000000:1E61"  # 0.0.0.0:7777
NONE = "00000000:0000"


def table(ns: int, udp_lines: str = "", tcp_lines: str = "", local: str = "") -> NsTable:
    socks = parse_sockets(UDP_HEAD + udp_lines, "udp") + parse_sockets(TCP_HEAD + tcp_lines, "tcp")
    nets = (ipaddress.IPv4Network(local),) if local else ()
    return NsTable(ns, 1, tuple(socks), nets)


def test_a_connected_udp_agent_finds_its_tool_server_in_another_namespace() -> None:
    tabs = [table(AGENT_NS, udp(AGENT, TOOL, 100), local="10.9.0.1/32"),
            table(TOOL_NS, udp(ANY_7777, NONE, 200) + udp("0200090A:0035", NONE, 201),
                  local="10.9.0.2/32"),
            # a namespace that also listens on 0.0.0.0:7777 but does not own 10.9.0.2
            table(OTHER_NS, udp(ANY_7777, NONE, 300), local="10.9.0.3/32")]
    peers = match_peers({100}, tabs)
    assert [(p.ns, p.inode) for p in peers] == [(TOOL_NS, 200)]
    assert peers[0].via == "udp 10.9.0.2:7777"


def test_an_unconnected_agent_socket_has_no_peer_in_any_table() -> None:
    tabs = [table(AGENT_NS, udp("0100090A:9C40", NONE, 100)),
            table(TOOL_NS, udp(ANY_7777, NONE, 200), local="10.9.0.2/32")]
    assert match_peers({100}, tabs) == []


def test_loopback_peers_are_looked_for_in_the_agents_own_namespace_only() -> None:
    lo_agent, lo_tool = "0100007F:9C40", "0100007F:1E61"
    tabs = [table(AGENT_NS, udp(lo_agent, lo_tool, 100) + udp(lo_tool, NONE, 101)),
            table(TOOL_NS, udp(lo_tool, NONE, 200))]
    assert [(p.ns, p.inode) for p in match_peers({100}, tabs)] == [(AGENT_NS, 101)]


def test_tcp_established_peer_and_listener_match_a_stranger_does_not() -> None:
    tabs = [table(AGENT_NS, tcp_lines=tcp(AGENT, TOOL, 100, "01")),
            table(TOOL_NS, tcp_lines=tcp(TOOL, AGENT, 200, "01") + tcp(ANY_7777, NONE, 201, "0A")
                  + tcp(TOOL, "0300090A:9C40", 202, "01"), local="10.9.0.2/32")]
    assert sorted(p.inode for p in match_peers({100}, tabs)) == [200, 201]


def test_the_agents_own_sockets_are_never_its_peers() -> None:
    tabs = [table(AGENT_NS, udp(AGENT, TOOL, 100) + udp(TOOL, AGENT, 101), local="10.9.0.1/32")]
    assert match_peers({100, 101}, tabs) == []


def test_a_declared_address_finds_the_socket_bound_to_it() -> None:
    tabs = [table(TOOL_NS, udp(ANY_7777, NONE, 200), local="10.9.0.2/32"),
            table(OTHER_NS, udp(ANY_7777, NONE, 300), local="10.9.0.3/32")]
    addr, port = parse_endpoint("10.9.0.2:7777")
    assert [p.inode for p in bound_to("udp", addr, port, tabs)] == [200]


def test_parsers_of_links_and_addresses() -> None:
    assert parse_ns_link("net:[4026531833]") == 4026531833
    assert parse_ns_link("mnt:[4026531833]") is None and parse_ns_link("net:[x]") is None
    assert parse_fd_link("pipe:[132285]") == ("pipe", 132285)
    assert parse_fd_link("socket:[99]") == ("socket", 99)
    assert parse_fd_link("/dev/null") is None and parse_fd_link("anon_inode:[eventfd]") is None
    # this host's /proc/net/if_inet6
    text = ("fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
            "00000000000000000000000000000001 01 80 10 80       lo\n"
            "fd000000000000000000000000000002 04 40 00 82     eth0\n")
    assert ipaddress.IPv6Address("fd00::2") in parse_if_inet6(text)
    assert len(parse_if_inet6(text + "garbage\n")) == 3
    assert parse_endpoint("[fd00::2]:80") == (ipaddress.IPv6Address("fd00::2"), 80)
    for bad in ("10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "host:80"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


def test_pipe_peers_and_member_cpus() -> None:
    assert pipe_peers({10, 11}, {500: {11, 12}, 501: {13}}) == {500: 11}
    assert member_cpus([3, None, 1, 3]).to_list() == "1,3"
    assert not member_cpus([None])


# -- the do-no-harm verdicts ----------------------------------------------------

def w(us: int, n: int = 100, source: str = harm.STEPS) -> harm.Window:
    return harm.Window(source, us * 1000, n)


def test_clearly_worse_after_the_decision_is_undone() -> None:
    v = harm.judge([w(20), w(22)], [w(400), w(900)])
    assert v.action == harm.UNDO and v.before_ns == 21_000 and v.after_ns == 400_000


def test_one_bad_window_is_noise_not_harm() -> None:
    assert harm.judge([w(20)], [w(900), w(25)]).action == harm.KEEP


def test_worse_by_ratio_but_only_microseconds_is_kept() -> None:
    assert harm.judge([w(10)], [w(40), w(50)]).action == harm.KEEP


def test_waits_for_enough_windows_with_data() -> None:
    assert harm.judge([w(20)], [w(900)]).action == harm.WAIT
    assert harm.judge([w(20)], [w(900), w(900, n=3)]).action == harm.WAIT
    idle = [harm.Window(harm.STEPS, None, 0)] * 10
    assert harm.judge([w(20)], idle).action == harm.KEEP


def test_no_before_window_means_nothing_to_compare_with() -> None:
    v = harm.judge([], [w(900), w(900)])
    assert v.action == harm.KEEP and "no steps window before" in v.reason


def test_run_delay_needs_a_larger_change() -> None:
    rd = harm.RUN_DELAY
    assert harm.judge([w(50, source=rd)], [w(200, source=rd)] * 2).action == harm.KEEP
    assert harm.judge([w(50, source=rd)], [w(400, source=rd)] * 2).action == harm.UNDO


def test_windows_from_histogram_deltas_and_schedstat() -> None:
    h = Histogram.empty()
    h.add_many([10_000] * 50)
    prev = dict(h.counts)
    h.add_many([10_000] * 99 + [5_000_000])
    win = harm.steps_window(prev, h)
    assert win.samples == 100 and win.value_ns is not None and 9_000 < win.value_ns < 11_000
    h.add_many([5_000_000] * 10)
    assert harm.steps_window(prev, h).value_ns == pytest.approx(5_000_000, rel=0.02)
    assert bucket_of(10_000) in prev
    rd = harm.run_delay_window({1: (1000, 10), 2: (0, 0)}, {1: (51000, 20), 2: (9000, 1), 3: (5, 5)})
    assert rd.source == harm.RUN_DELAY and rd.value_ns == 9000 and rd.samples == 11


def test_chain_rules_in_the_policy() -> None:
    from agentlatd import policy
    from agentlatd.errors import PolicyError

    p = policy.loads('[[chain]]\nagent = "planner*"\ncomm = "vecdb-*"\n')
    assert p.chain == (policy.ChainRule(agent="planner*", comm="vecdb-*"),)
    with pytest.raises(PolicyError):
        policy.loads('chain = "vecdb"\n')
    with pytest.raises(PolicyError):
        policy.loads('[[chain]]\nagent = "x"\nbogus = 1\n')


def test_agents_text_lists_the_chain_and_undone_decisions_in_80_columns() -> None:
    from agentlatd.commands.agents import render

    row = {"agent_id": "planner", "pid": 42, "latency_class": "interactive", "home_cpu": 1,
           "cpus": "1", "threads": 3, "threads_pinned": 3, "steps": 10,
           "chain": [{"pid": 77, "comm": "probe", "cpus": "1", "state": "placed",
                      "via": "udp 198.18.1.2:7777 (net ns 4026532373)", "problem": ""},
                     {"pid": 78, "comm": "vecdb", "cpus": None, "state": "unmovable",
                      "via": "declared", "problem": "runs as uid 1001"}],
           "refused": ["exclusive"],
           "guard": {"decisions": {"exclusive": {"action": "undo", "reason": "p99 worse"}}}}
    text = render([row])
    assert "chain: pid 77 (probe) CPU 1 placed, udp 198.18.1.2:7777" in text
    assert "chain: pid 78 (vecdb) CPU - unmovable, declared: runs as uid 1001" in text
    assert "undone, not retried: exclusive: p99 worse" in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_the_chain_op_decodes_members_and_refuses_bad_ones() -> None:
    from agentlatd.api import protocol

    env = protocol.decode(b'{"v":1,"op":"chain","id":3,"members":[{"pid":5151,"starttime":9},'
                          b'{"address":"[fd00::2]:80","proto":"tcp"}]}')
    assert isinstance(env.req, protocol.Chain)
    assert env.req.members == (protocol.ChainMember(pid=5151, starttime=9),
                               protocol.ChainMember(proto="tcp", address="[fd00::2]:80"))
    for bad in (b'{"op":"chain"}', b'{"op":"chain","members":{}}',
                b'{"op":"chain","members":[{"pid":0}]}',
                b'{"op":"chain","members":[{"pid":true}]}',
                b'{"op":"chain","members":[{"pid":1,"address":"1.2.3.4:5"}]}',
                b'{"op":"chain","members":[{"address":"1.2.3.4:5","proto":"sctp"}]}',
                b'{"op":"chain","members":[{"address":"1.2.3.4"}]}',
                b'{"op":"chain","members":[{"pid":1,"extra":1}]}',
                b'{"op":"chain","members":[' + b",".join([b'{"pid":1}'] * 65) + b"]}"):
        with pytest.raises(protocol.ProtocolError) as e:
            protocol.decode(bad)
        assert e.value.code == protocol.BAD_REQUEST, bad


def test_a_member_may_spill_to_a_quiet_smt_sibling_of_its_agents_home() -> None:
    from agentlatd.cpuset import CpuSet
    from agentlatd.model.layout import CpuLayout

    core = CpuSet({2, 3})
    layout = CpuLayout(home=CpuSet({2, 3, 4}), completion=CpuSet({0, 1}),
                       siblings={2: core, 3: core, 4: CpuSet({4, 5}), 5: CpuSet({4, 5})})
    assert member_cpus([2], layout).to_list() == "2-3"
    assert member_cpus([2], layout, load={3: 1}).to_list() == "2"  # 3 is another agent's home
    assert member_cpus([2], layout, hot={3}).to_list() == "2"
    assert member_cpus([4], layout).to_list() == "4"  # 5 is not a home CPU
    assert member_cpus([None], layout) == CpuSet()
