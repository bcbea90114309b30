"""kill -9 in the middle of `agentlatd apply` on a real kernel, then recover: all restored.

The write hook tests/support/launch.py installs (crash_after_writes=N, through
Engine(write_hook=...), agentlatd/apply/engine.py) makes the apply SIGKILL itself right
after its Nth successful kernel write (N=0: after the journal is saved, before the first
write). The write sequence is learnt from one complete apply of the lab policy (IRQ affinity
first, then RPS, XPS, threaded NAPI, coalescing); the run is then killed at a few points
across it: exactly the first N writes must be in the kernel, and the next start (`agentlatd
rollback`, or a new `agentlatd apply`, which restores the interrupted run before anything
else) must leave every value as snapshotted before.
"""

from __future__ import annotations

import pathlib
import signal
from typing import Any

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
KILLED = -signal.SIGKILL
Write = tuple[str, str, str]  # (knob, target, desired)


def test_kill_9_during_apply_then_restart_restores_everything(
        agentlatd: g.Agentlatd, agentlatd_lab: Any, tmp_path: pathlib.Path) -> None:
    lab = agentlatd_lab
    config = str(lab.policy("crash.toml"))
    before = g.knob_snapshot(lab.ifnames)

    # the write sequence: one complete apply, then its rollback
    state = tmp_path / "full"
    full = agentlatd.fork("apply", "--config", config, "--state-dir", str(state), "--json")
    rep = full.json()
    assert isinstance(rep, dict), full
    # the first batch's writes: apply's follow-up batch (task.affinity of the NAPI
    # kthreads that threaded=1 creates) comes after every kill point below
    writes: list[Write] = [(r["knob"], r["target"], r["desired"]) for r in rep["results"]
                           if r["status"] in ("changed", "clamped")
                           and r["knob"] != "task.affinity"]
    assert any(r["knob"] == "task.affinity" for r in rep["results"])
    assert agentlatd.fork("rollback", "--state-dir", str(state)).rc == 0
    assert g.snapshot_diff(before, g.knob_snapshot(lab.ifnames)) == []
    kinds = [w[0] for w in writes]
    print(f"{len(writes)} writes: " + ", ".join(f"{k} x{kinds.count(k)}" for k in dict.fromkeys(kinds)))
    assert {"irq.affinity", "net.rps_cpus", "net.threaded", "net.coalesce"} <= set(kinds)

    # kill points: before the first write, after the first IRQ, after the last IRQ, after
    # the first threaded-NAPI write, after the first coalescing write
    last_irq = max(i for i, k in enumerate(kinds, 1) if k == "irq.affinity")
    points = sorted({0, 1, last_irq, kinds.index("net.threaded") + 1,
                     kinds.index("net.coalesce") + 1})
    for i, n in enumerate(points):
        st = tmp_path / f"crash{n}"
        args = ("apply", "--config", config, "--state-dir", str(st))
        # at one point a fresh `agentlatd apply` interpreter is killed, at the others a
        # forked one (the same code from argument parsing on, 4x faster under TCG)
        ran = (agentlatd.run(*args, crash_after_writes=n) if n == 1
               else agentlatd.fork(*args, crash_after_writes=n))
        assert ran.rc == KILLED, ran
        from agentlatd.apply import journal_read  # the snapshot and its log as one
        journal = journal_read.read_json(str(st / "journal.json"))
        assert journal is not None, n
        assert journal["complete"] is False, n
        # the originals of every knob of the batch were durable before the first write
        assert {(w[0], w[1]) for w in writes} <= {(e["knob"], e["target"])
                                                  for e in journal["entries"]}, n
        in_effect = [g.knob_in_effect(*w) for w in writes]
        assert in_effect == [k < n for k in range(len(writes))], (n, [
            w for w, e, k in zip(writes, in_effect, range(len(writes)), strict=True)
            if e != (k < n)])

        if i % 2 == 0:  # the next start is a rollback
            rb = agentlatd.fork("rollback", "--state-dir", str(st))
            assert rb.rc == 0, rb
        else:  # the next start is an apply: it restores the interrupted run first
            again = agentlatd.fork(*args, "--json")
            rep2 = again.json()
            assert isinstance(rep2, dict), again
            rec = rep2["recovery"]
            assert rec["action"] == "restored", rec
            assert rec["rollback"]["summary"].get("restored", 0) == n, rec["rollback"]["summary"]
            # the writes the killed run never made, the new run made (those it did make:
            # test_apply_after_a_crash_applies_the_whole_plan)
            assert all(g.knob_in_effect(*w) for w in writes[n:]), n
            assert agentlatd.fork("rollback", "--state-dir", str(st)).rc == 0
        diff = g.snapshot_diff(before, g.knob_snapshot(lab.ifnames))
        assert diff == [], (n, diff)
        assert not (st / "journal.json").exists()
        print(f"killed after write {n}: {sum(in_effect)} in effect, restored by "
              f"{'rollback' if i % 2 == 0 else 'a new apply + rollback'}")


# regression (planning before recovering the crashed run's journal): the knobs
# the killed run had written look right, are not planned, and recovery then
# undoes them
def test_apply_after_a_crash_applies_the_whole_plan(
        agentlatd: g.Agentlatd, agentlatd_lab: Any, tmp_path: pathlib.Path) -> None:
    lab = agentlatd_lab
    args = ("apply", "--config", str(lab.policy("crash2.toml")), "--state-dir", str(tmp_path))
    before = g.knob_snapshot(lab.ifnames)
    n = 3  # the first three writes are IRQ affinities (the plan steers IRQs first)
    nics = lab.nics
    pats = [r"nvme0q0", rf"{nics.virtio_dev}-.*", rf"{nics.e1000e}(-.*)?", rf"{nics.igb}(-.*)?"]
    steerable = [r.irq for p in pats for r in g.irqs_named(p).values()]
    try:
        assert agentlatd.fork(*args, crash_after_writes=n).rc == KILLED
        rep = agentlatd.fork(*args, "--json").json()
        assert isinstance(rep, dict) and rep["recovery"]["action"] == "restored", rep
        off = {irq: g.read_cpulist(irq) for irq in steerable
               if not g.parse_cpulist(g.read_cpulist(irq)) <= g.COMPLETION}
    finally:
        assert agentlatd.fork("rollback", "--state-dir", str(tmp_path)).rc == 0
        assert g.snapshot_diff(before, g.knob_snapshot(lab.ifnames)) == []
    assert not off, f"IRQs left off the completion CPUs after the restart: {off}"
