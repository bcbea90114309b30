"""sample/procscan.py's per-process cache, through its users' view (apply/irqbalance.py
Watch): on a recorded proc/ tree, so that a reused pid, a comm changed in place and a
process gone can be made at will. Each tick's answer is compared with running(),
which reads every process every time."""

from __future__ import annotations

import os
import pathlib

from agentlatd.apply.irqbalance import Watch, running
from agentlatd.sample.procscan import REFRESH_TICKS, SETTLE_READS, list_procs
from agentlatd.sysfs.root import Root


def put(base: pathlib.Path, pid: int, comm: str) -> None:
    d = base / "proc" / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "comm").write_text(comm + "\n")


def settled(tmp_path: pathlib.Path, n: int = 60) -> tuple[Root, Watch]:
    for pid in range(100, 100 + n):
        put(tmp_path, pid, "sshd")
    root = Root(str(tmp_path))
    w = Watch(root)
    for _ in range(SETTLE_READS):
        assert w.running() == running(root) == ()
    return root, w


def test_processes_seen_to_be_other_programs_are_not_read_every_tick(tmp_path: pathlib.Path) -> None:
    root, w = settled(tmp_path)
    for _ in range(REFRESH_TICKS):
        assert w.running() == ()
        # each process once in REFRESH_TICKS ticks, spread over them
        assert w.comms.reads <= -(-60 // REFRESH_TICKS)
    put(tmp_path, 777, "irqbalance")  # a new pid: read at once
    assert w.running() == running(root) == (777,)


def test_a_reused_pid_is_read_again(tmp_path: pathlib.Path) -> None:
    root, w = settled(tmp_path)
    old = tmp_path / "proc/130"
    # a new process at pid 130: a new proc/130 inode. Made beside the old one and
    # renamed over it, so the two inodes differ as a new task's do in procfs
    new = tmp_path / "proc/.new130"
    new.mkdir()
    (new / "comm").write_text("irqbalance\n")
    ino = old.stat().st_ino
    os.rename(old, tmp_path / "proc/.old130")
    os.rename(new, old)
    assert old.stat().st_ino != ino
    assert w.running() == running(root) == (130,)


def test_a_comm_changed_in_place_is_seen_within_the_refresh_period(tmp_path: pathlib.Path) -> None:
    # exec late in a process's life: same pid, same proc inode, a new comm
    root, w = settled(tmp_path)
    (tmp_path / "proc/141/comm").write_text("irqbalance\n")
    seen = next(i for i in range(1, REFRESH_TICKS + 1) if w.running() == (141,))
    assert seen <= REFRESH_TICKS
    assert running(root) == (141,)


def test_a_new_process_is_read_on_its_first_ticks(tmp_path: pathlib.Path) -> None:
    # fork then exec: the first read may see the parent's comm (systemd's child is
    # "(irqbalance)" until it execs); the next tick's read sees the program
    root, w = settled(tmp_path)
    put(tmp_path, 900, "(irqbalance)")
    assert w.running() == ()
    put(tmp_path, 900, "irqbalance")
    assert w.running() == running(root) == (900,)


def test_an_irqbalance_that_exits_or_execs_is_dropped_at_the_next_tick(tmp_path: pathlib.Path) -> None:
    root, w = settled(tmp_path)
    put(tmp_path, 500, "irqbalance")
    put(tmp_path, 501, "irqbalance")
    for _ in range(SETTLE_READS + 1):
        assert w.running() == (500, 501)
    (tmp_path / "proc/500/comm").write_text("bash\n")  # irqbalance ones are read each tick
    assert w.running() == running(root) == (501,)


def test_the_cache_holds_only_live_processes(tmp_path: pathlib.Path) -> None:
    root, w = settled(tmp_path)
    assert len(w.comms) == 60
    for pid in range(100, 130):
        for f in (tmp_path / "proc" / str(pid)).iterdir():
            f.unlink()
        (tmp_path / "proc" / str(pid)).rmdir()
    assert w.running() == ()
    assert len(w.comms) == 30 == len(list_procs(root))


def test_the_listing_is_handed_to_the_chain_scan_once(tmp_path: pathlib.Path) -> None:
    # the tuner's chain scan takes the irqbalance stage's listing of proc/ (one
    # listing a tick); a listing is never handed over twice, so a tick whose
    # irqbalance stage did not run lists proc/ itself rather than reuse an old one
    root, w = settled(tmp_path)
    w.running()
    assert w.take_procs() == list_procs(root)
    assert w.take_procs() is None
