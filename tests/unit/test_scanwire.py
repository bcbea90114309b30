"""agents/scanwire.py: the scan worker's messages, and the daemon's checks of its replies.

The worker is root-owned but parses what any user controls (/proc, socket tables), so
the daemon takes nothing from it that is not the exact shape and range the protocol
names: every reply below that is off is a BadReply (the worker is then killed and
replaced, tests/integration/test_scan_worker.py), never an exception of another type
and never a value let through.
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from agentlatd.agents import scanwire
from agentlatd.agents.chain import ChainAgent, Link, ScanCost
from agentlatd.policy import ChainRule
from agentlatd.sample.tasks import ProcId

A = ProcId(100, 5000)
B = ProcId(101, 5001)


def test_a_chain_request_carries_the_agents_their_addresses_and_the_rules() -> None:
    agent = ChainAgent(A, (("udp", ipaddress.ip_address("10.0.0.2"), 7777),
                           ("tcp", ipaddress.ip_address("fd00::1"), 80)), "planner")
    rule = ChainRule(agent="plan*", comm="tool", exe="", cgroup="/x")
    req = scanwire.decode_request(scanwire.chain_request([agent], [B], [rule]))
    add, drop = scanwire.request_agents(req)
    assert add == [agent] and drop == [B]
    assert scanwire.request_rules(req) == (rule,)
    assert scanwire.decode_request(scanwire.irqbalance_request()) == {"op": "irqbalance"}


def test_replies_decode_to_what_was_encoded() -> None:
    links = (Link(ProcId(200, 7), "pipe:[99] (child process)"), Link(ProcId(201, 8), "unix /s"))
    cost = ScanCost(2, 1, 150, 0.0123, False)
    scanned, got_cost = scanwire.decode_chain(scanwire.chain_reply({A: links, B: ()}, cost),
                                              {A: None, B: None})
    assert scanned == {A: links, B: ()} and got_cost == cost
    assert scanwire.decode_irqbalance(scanwire.irqbalance_reply([30, 4])) == (4, 30)
    assert scanwire.decode_ready(scanwire.ready(1234)) == 1234


def test_a_scan_error_is_a_worker_error_not_a_broken_worker() -> None:
    with pytest.raises(scanwire.WorkerError, match="KernelError: no"):
        scanwire.decode_chain(scanwire.error_reply("KernelError: no"), {A: None})
    with pytest.raises(scanwire.WorkerError):
        scanwire.decode_irqbalance(scanwire.error_reply("x"))


def _chain(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


GOOD_COST = [1, 1, 3, 0.01, False]
BAD_CHAIN = {
    "not JSON": b"{\"scanned\": [\n",
    "not UTF-8": b"{\"scanned\": \"\xff\"}\n",
    "a list": _chain([]),
    "extra key": _chain({"scanned": [], "cost": GOOD_COST, "more": 1}),
    "a key missing": _chain({"scanned": []}),
    "an agent not asked for": _chain({"scanned": [[B.pid, B.starttime, []]], "cost": GOOD_COST}),
    "an agent twice": _chain({"scanned": [[A.pid, A.starttime, []]] * 2, "cost": GOOD_COST}),
    "a bool for a pid": _chain({"scanned": [[A.pid, A.starttime, [[True, 1, "x"]]]],
                                "cost": GOOD_COST}),
    "a float for a pid": _chain({"scanned": [[A.pid, A.starttime, [[2.0, 1, "x"]]]],
                                 "cost": GOOD_COST}),
    "pid 0": _chain({"scanned": [[A.pid, A.starttime, [[0, 1, "x"]]]], "cost": GOOD_COST}),
    "a pid over PID_MAX_LIMIT": _chain({"scanned": [[A.pid, A.starttime,
                                                     [[(1 << 22) + 1, 1, "x"]]]],
                                        "cost": GOOD_COST}),
    "a negative starttime": _chain({"scanned": [[A.pid, A.starttime, [[5, -1, "x"]]]],
                                    "cost": GOOD_COST}),
    "a huge starttime": _chain({"scanned": [[A.pid, A.starttime, [[5, 1 << 64, "x"]]]],
                                "cost": GOOD_COST}),
    "via not a string": _chain({"scanned": [[A.pid, A.starttime, [[5, 1, 7]]]],
                                "cost": GOOD_COST}),
    "via too long": _chain({"scanned": [[A.pid, A.starttime, [[5, 1, "v" * 5000]]]],
                            "cost": GOOD_COST}),
    "a link of two": _chain({"scanned": [[A.pid, A.starttime, [[5, 1]]]], "cost": GOOD_COST}),
    "a row of four": _chain({"scanned": [[A.pid, A.starttime, [], 1]], "cost": GOOD_COST}),
    "links not a list": _chain({"scanned": [[A.pid, A.starttime, {}]], "cost": GOOD_COST}),
    "cost of four": _chain({"scanned": [], "cost": [1, 1, 3, 0.01]}),
    "NaN seconds": b"{\"scanned\": [], \"cost\": [1, 1, 3, NaN, false]}\n",
    "negative seconds": _chain({"scanned": [], "cost": [1, 1, 3, -1.0, False]}),
    "truncated not a bool": _chain({"scanned": [], "cost": [1, 1, 3, 0.1, 0]}),
    "error not a string": _chain({"error": 3}),
}


@pytest.mark.parametrize("why", sorted(BAD_CHAIN))
def test_an_off_protocol_chain_reply_is_a_bad_reply(why: str) -> None:
    with pytest.raises(scanwire.BadReply):
        scanwire.decode_chain(BAD_CHAIN[why], {A: None})


@pytest.mark.parametrize("line", [
    b"{\"pids\": [1, \"2\"]}\n", b"{\"pids\": 3}\n", b"{\"pids\": [-1]}\n",
    b"{\"pids\": [], \"x\": 1}\n", b"{}\n", b"null\n",
])
def test_an_off_protocol_irqbalance_reply_is_a_bad_reply(line: bytes) -> None:
    with pytest.raises(scanwire.BadReply):
        scanwire.decode_irqbalance(line)


@pytest.mark.parametrize("line", [b"{\"ready\": 0}\n", b"{\"ready\": \"7\"}\n",
                                  b"{\"pids\": []}\n", b"{\"ready\": 7, \"x\": 1}\n"])
def test_a_ready_line_off_the_protocol_is_a_bad_reply(line: bytes) -> None:
    with pytest.raises(scanwire.BadReply):
        scanwire.decode_ready(line)
