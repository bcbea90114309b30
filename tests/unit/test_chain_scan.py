"""ChainScanner on a recorded proc/ tree: the reads and the holder search, offline.

The tree is laid out as the kernel shows it (Documentation/filesystems/proc.rst):
proc/PID/ns/net and proc/PID/fd/N are symlinks whose targets are the kernel's
"net:[INODE]", "socket:[INODE]", "pipe:[INODE]"; proc/PID/net/udp is the
table of PID's namespace (header as this host prints it); proc/PID/stat
carries the starttime (field 22); proc/PID/task/TID/children the children.
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from agentlatd.agents.chain import ChainAgent, ChainScanner
from agentlatd.policy import ChainRule
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import Root

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="addresses as printed on x86")

UDP_HEAD = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
            "timeout inode ref pointer drops\n")


def udp(local: str, remote: str, inode: int) -> str:
    return (f"  1: {local} {remote} 07 00000000:00000000 00:00000000 00000000     0        0 "
            f"{inode} 2 0000000058fec522 0\n")


def trie(addr: str) -> str:
    return f"Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- {addr}\n        /32 host LOCAL\n"


def proc(base: pathlib.Path, pid: int, *, ns: int, comm: str, fds: dict[int, str],
         udp_lines: str = "", addr: str = "", children: str = "", starttime: int = 5000) -> None:
    d = base / "proc" / str(pid)
    (d / "ns").mkdir(parents=True)
    os.symlink(f"net:[{ns}]", d / "ns" / "net")
    (d / "fd").mkdir()
    for n, target in fds.items():
        os.symlink(target, d / "fd" / str(n))
    (d / "net").mkdir()
    (d / "net" / "udp").write_text(UDP_HEAD + udp_lines)
    (d / "net" / "fib_trie").write_text(trie(addr) if addr else "")
    (d / "stat").write_text(f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 "
                            f"1 0 {starttime} 0 0\n")
    (d / "comm").write_text(comm + "\n")
    (d / "status").write_text("Uid:\t0\t0\t0\t0\n")
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "task" / str(pid) / "children").write_text(children)


@pytest.fixture()
def tree(tmp_path: pathlib.Path) -> pathlib.Path:
    # the agent, ns 1: a UDP socket connected 10.9.0.1:40000 -> 10.9.0.2:7777, a pipe
    proc(tmp_path, 100, ns=1, comm="agent", fds={3: "socket:[500]", 4: "pipe:[900]",
                                                  5: "/dev/null"},
         udp_lines=udp("0100090A:9C40", "0200090A:1E61", 500), addr="10.9.0.1", children="101 ")
    # its stdio child, holding the other end of the pipe
    proc(tmp_path, 101, ns=1, comm="mcp", fds={0: "pipe:[900]"})
    # the tool server in ns 2 (owns 10.9.0.2), bound to 0.0.0.0:7777
    proc(tmp_path, 200, ns=2, comm="tool", fds={3: "socket:[600]"},
         udp_lines=udp("00000000:1E61", "00000000:0000", 600), addr="10.9.0.2")
    # a stranger in ns 3 listening on 0.0.0.0:7777 too, but not owning 10.9.0.2
    proc(tmp_path, 300, ns=3, comm="vecdb-1", fds={3: "socket:[700]"},
         udp_lines=udp("00000000:1E61", "00000000:0000", 700), addr="10.9.0.3")
    return tmp_path


AGENT = ChainAgent(ProcId(100, 5000), agent_id="planner")


def test_the_tool_server_in_its_namespace_and_the_pipe_child_are_found(tree: pathlib.Path) -> None:
    sc = ChainScanner()
    sc.update(Root(str(tree)), [AGENT], now=10.0)
    links = {lk.proc.pid: lk.via for lk in sc.found[AGENT.proc]}
    assert links == {200: "udp 10.9.0.2:7777 (net ns 2)", 101: "pipe:[900] (child process)"}
    assert sc.cost.namespaces == 3 and not sc.cost.truncated
    assert sc.holders[(2, 600)] == ProcId(200, 5000)


def test_scans_are_bounded_by_rescan_and_forget_agents_that_left(tree: pathlib.Path) -> None:
    sc = ChainScanner()
    root = Root(str(tree))
    sc.update(root, [AGENT], now=10.0)
    first = sc.cost
    sc.update(root, [AGENT], now=11.0)  # not due yet: nothing read
    assert sc.cost is first
    sc.update(root, [], now=12.0)
    assert sc.found == {}


def test_a_recycled_agent_pid_is_not_scanned(tree: pathlib.Path) -> None:
    sc = ChainScanner()
    sc.update(Root(str(tree)), [ChainAgent(ProcId(100, 4999))], now=10.0)
    assert sc.found == {}


def test_policy_rules_add_members_to_matching_agents_only(tree: pathlib.Path) -> None:
    sc = ChainScanner()
    rules = (ChainRule(agent="plan*", comm="vecdb-*"), ChainRule(agent="other", comm="tool"))
    sc.update(Root(str(tree)), [AGENT], now=10.0, rules=rules)
    links = {lk.proc.pid: lk.via for lk in sc.found[AGENT.proc]}
    assert links[300] == "policy [[chain]] rule 0"
    assert links[200].startswith("udp ")  # found by its socket; rule 1 is another agent's


def test_a_process_that_moved_namespace_is_filed_under_its_new_one(tree: pathlib.Path) -> None:
    # the namespace of each process is kept between batches (sample/procscan.py);
    # setns/unshare change it under the same pid and proc inode. The tool server
    # (the only process, so the reader, of ns 2) moves to ns 4 after it was kept:
    # the next batch must read its table as ns 4's, not file it under ns 2
    sc = ChainScanner()
    root = Root(str(tree))
    for now in (10.0, 12.5, 15.0):  # past the first reads: the namespaces are kept now
        sc.update(root, [AGENT], now=now)
    assert {lk.proc.pid: lk.via for lk in sc.found[AGENT.proc]}[200] == \
        "udp 10.9.0.2:7777 (net ns 2)"
    assert sc.ns_cache.reads < 4  # kept: not every process read each batch
    link = tree / "proc/200/ns/net"
    link.unlink()
    os.symlink("net:[4]", link)
    sc.update(root, [AGENT], now=17.5)
    assert {lk.proc.pid: lk.via for lk in sc.found[AGENT.proc]}[200] == \
        "udp 10.9.0.2:7777 (net ns 4)"
    assert sc.holders[(4, 600)] == ProcId(200, 5000)
