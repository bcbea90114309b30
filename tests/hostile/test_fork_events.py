"""Which processes an agent forked (agents/forks.py), from the kernel's process connector
(netlink/procevents.py): real processes, a real subscription, the live /proc.

The daemon-level regressions (an agent killed right after a fork, a grandchild whose
parent exited) are in test_task_trust.py; these pin the pieces: the events, the record
they keep, and the fallback to the tick's listing when events were lost.
"""

from __future__ import annotations

import errno
import os
import pathlib
import select
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from agentshelpers import agent_side, register_as_root
from hostilehelpers import NOBODY, as_uid, needs_proc_events
from taskfamily import Family, task_values

from agentlatd.agents import forks, registry
from agentlatd.agents.registry import AgentManager
from agentlatd.apply.journal import FLAG_INHERITED
from agentlatd.netlink.procevents import NETLINK_CONNECTOR, Exit, Fork, ProcEvents
from agentlatd.sample import tasks
from agentlatd.sample.tasks import ProcId
from agentlatd.sysfs.root import HOST

pytestmark = needs_proc_events


def _drain_until(ev: ProcEvents, want: object, tries: int = 200) -> list[object]:
    """Events until `want` is among them (each wait ends when the socket is readable)."""
    seen: list[object] = []
    for _ in range(tries):
        seen += ev.drain().events
        if want in seen:
            return seen
        select.select([ev.fileno()], [], [], 0.05)
    raise AssertionError(f"{want} not among {seen[-20:]}")


def test_the_kernel_reports_a_process_fork_and_exit_in_order_and_no_thread() -> None:
    ev = ProcEvents()
    try:
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        seen = _drain_until(ev, Exit(pid))
        mine = [e for e in seen if (isinstance(e, Fork) and pid in (e.parent, e.child))
                or (isinstance(e, Exit) and e.pid == pid)]
        assert mine == [Fork(parent=os.getpid(), child=pid), Exit(pid)], seen
        tids = {t.native_id}
        assert not [e for e in seen if isinstance(e, Fork) and e.child in tids]
    finally:
        ev.close()


@dataclass(frozen=True)
class Lab:
    mgr: AgentManager
    fam: Family  # the agent, registered background and placed
    ev: ProcEvents  # attached to mgr.forks
    base: tuple[str, int, str]  # its main thread's (affinity, nice, ioprio) before


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[Lab]:
    eng, mgr = agent_side(tmp_path / "state")
    fam = Family()
    ev = ProcEvents()
    mgr.forks.attach(ev)
    try:
        base = task_values(fam.pid, fam.pid)
        register_as_root(mgr, fam.pid, latency_class="background")
        assert all(r is None for r in mgr.place_pending().values())
        yield Lab(mgr, fam, ev, base)
    finally:
        try:
            mgr.forks.close()
            eng.rollback()
            eng.close()
        finally:
            fam.kill()


def _follow_until(mgr: AgentManager, ok: Callable[[], bool]) -> None:
    """follow() until `ok()` (each wait ends when the socket is readable)."""
    for _ in range(200):
        mgr.forks.follow(mgr.agents, mgr.by_pid)
        if ok():
            return
        src = mgr.forks.source
        assert src is not None
        select.select([src.fileno()], [], [], 0.05)
    raise AssertionError("the events never showed it")


def test_an_agents_child_and_the_grandchild_of_an_exited_child_are_remembered(
        lab: Lab) -> None:
    mgr, fam = lab.mgr, lab.fam
    (a,) = mgr.agents.values()
    child, _ = fam.fork()
    grand, _ = fam.orphan()
    want = {ProcId(child, tasks.starttime_of(HOST, child) or -1),
            ProcId(grand, tasks.starttime_of(HOST, grand) or -1)}
    _follow_until(mgr, lambda: want <= a.forked)
    # the orphan's parent came and went: remembered only while it lived
    assert a.forked == want, a.forked
    assert {p: rec[0] for p, rec in mgr.forks.owner.items()} == {child: a.proc, grand: a.proc}
    assert a.creds == tasks.thread_uids(HOST, fam.pid, fam.pid)
    # the listing (the fallback) cannot see the grandchild: it is init's now
    assert grand not in tasks.descendants(HOST, fam.pid)


def test_an_exited_fork_is_forgotten_and_a_dropped_agent_leaves_no_record(
        lab: Lab) -> None:
    mgr, fam = lab.mgr, lab.fam
    (a,) = mgr.agents.values()
    child, _ = fam.fork()
    _follow_until(mgr, lambda: any(c.pid == child for c in a.forked))
    os.kill(child, 9)
    _follow_until(mgr, lambda: child not in mgr.forks.owner)
    assert a.forked == set()
    other, _ = fam.fork()
    _follow_until(mgr, lambda: other in mgr.forks.owner)
    mgr.unregister(a.proc)
    assert mgr.forks.owner == {} and a.forked == set()


def test_lost_events_make_the_next_tick_list_every_agents_forks(
        lab: Lab) -> None:
    """A full receive queue drops events: the record may miss a fork, so the next
    tick lists every agent's descendants, and only then goes back to events alone."""
    mgr, fam, ev = lab.mgr, lab.fam, lab.ev
    (a,) = mgr.agents.values()
    assert list(mgr.forks.scan_steps(mgr.agents)) == []  # events: no listing
    child, _ = fam.fork()
    assert ev.sock is not None
    ev.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    for _ in range(64):  # more events than the minimum holds, bounded
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    mgr.forks.follow(mgr.agents, mgr.by_pid)
    assert mgr.forks.rescan and mgr.forks.lost == 1
    a.forked.clear()
    mgr.forks.owner.clear()  # as if the child's fork event was among those lost
    assert len(list(mgr.forks.scan_steps(mgr.agents))) == 1  # every agent: one
    assert {c.pid for c in a.forked} == {child}
    assert mgr.forks.owner[child][0] == a.proc
    assert not mgr.forks.rescan
    assert list(mgr.forks.scan_steps(mgr.agents)) == []


def test_a_backlog_is_read_a_piece_at_a_time_and_an_exit_reads_all_of_it(
        lab: Lab) -> None:
    """The loop reads at most a piece per turn (requests are served between pieces);
    the read before an exit is handled takes everything queued."""
    mgr = lab.mgr
    for _ in range(20):  # 40 events of a process that is no agent
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    assert mgr.forks.follow(mgr.agents, mgr.by_pid, limit=4) is True
    assert mgr.forks.follow(mgr.agents, mgr.by_pid) is False


def test_a_fork_first_read_after_its_agent_died_is_restored(lab: Lab) -> None:
    """The fork's event was still queued when the agent died (read with its exit, in
    one batch): the agent's credentials were read only when its first fork was
    seen, from a process that no longer existed, and its child kept CPU 0 / nice
    10 / be7 (1 in ~5 runs of test_task_trust's fork-then-kill test)."""
    mgr, fam = lab.mgr, lab.fam
    (p,) = mgr.agents
    mgr.forks.follow(mgr.agents, mgr.by_pid)  # nothing of the agent's queued
    child, child_tid = fam.fork()
    assert task_values(child, child_tid) == ("0", 10, "be7")
    os.kill(fam.pid, 9)
    fam.p.wait(10)
    mgr.exited(p)  # reads the queue (the fork is in it) before it restores
    assert mgr.agents == {}
    assert task_values(child, child) == lab.base
    assert task_values(child, child_tid) == lab.base


def _unicast_to(port: int) -> str:
    """In an unprivileged child: send a forged fork event to netlink port `port`."""
    fake = bytes.fromhex(
        "4c00000003000000f8060000000000000100000001000000f806000000000000280000000100000000"
        "000000386c1b147a120000d81d0000d81d0000da1d0000da1d00000000000000000000")
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
    try:
        s.sendto(fake, (port, 0))
        return "sent"
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    finally:
        s.close()


def test_only_the_kernel_can_send_into_the_event_queue() -> None:
    """A datagram unicast to the daemon's netlink port (listed in /proc/net/netlink)
    by another process is dropped on reading for its sender, but fills the queue,
    and an overflow makes the next tick list every agent's forks. An unprivileged
    sender is refused by the kernel (EPERM); a privileged one was not, until the
    socket was connected to the kernel (ECONNREFUSED)."""
    ev = ProcEvents()
    try:
        assert ev.sock is not None
        port = ev.sock.getsockname()[0]
        assert as_uid(NOBODY, NOBODY, lambda: _unicast_to(port)) == "EPERM"
        assert _unicast_to(port) == "ECONNREFUSED"  # was "sent"
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        _drain_until(ev, Exit(pid))  # the kernel's events still arrive
    finally:
        ev.close()


def test_journaled_forks_stop_at_max_journaled_and_the_rest_are_restored_from_memory(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two long-lived children with room in the journal for one (registry.MAX_JOURNALED
    = 1, forks.JOURNAL_AGE_S = 0): one is journaled, the other kept in memory only,
    and the agent's exit restores both."""
    monkeypatch.setattr(registry, "MAX_JOURNALED", 1)
    monkeypatch.setattr(forks, "JOURNAL_AGE_S", 0.0)
    mgr, fam = lab.mgr, lab.fam
    (a,) = mgr.agents.values()
    kids = [fam.fork()[0], fam.fork()[0]]
    _follow_until(mgr, lambda: {c.pid for c in a.forked} == set(kids))
    mgr.journal_forks()
    assert len(mgr.forks.journaled) == 1 and not mgr.forks.unjournaled
    journaled = {int(e.target.split(":")[0]) for e in mgr.applier.engine.entries()
                 if e.has(FLAG_INHERITED)}
    assert len(journaled) == 1 and journaled <= set(kids)
    fam.p.kill()
    fam.p.wait(10)
    mgr.exited(a.proc)
    for pid in kids:
        assert task_values(pid, pid) == lab.base
    assert not [e for e in mgr.applier.engine.entries() if e.has(FLAG_INHERITED)]
