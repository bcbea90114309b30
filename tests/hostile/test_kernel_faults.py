"""Kernel and host faults: errnos at every knob, objects that vanish
between sample and apply, CPU hotplug between ticks, devices removed mid-run,
processes that exit between listing their threads and pinning them.

The IO boundary is where faults are injected: a Root subclass over a writable
copy of a fixture tree (FaultRoot from tests/apply), the task syscalls of
agentlatd.sample.tasks for task knobs, and the ethtool netlink client module
for coalescing. Device removal and process exit are real: veth pairs in a
network namespace the test creates, and child processes the test spawns.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from typing import Any

import pytest
from applyhelpers import (
    FaultRoot,
    cli,
    copy_fixture,
    diff_keys,
    netns_with_veths,
    plan_file,
    small_tree,
    snapshot,
    snapshot_diff,
    tree_bytes,
    veth_changes,
)

from agentlatd.apply import journal_read, knobs
from agentlatd.apply.engine import (
    CHANGED,
    FAILED,
    GONE,
    MANAGED,
    RESTORED,
    Engine,
)
from agentlatd.cpuset import CpuSet
from agentlatd.errors import KernelError
from agentlatd.plan.changes import Change
from agentlatd.policy import loads
from agentlatd.sample import tasks
from agentlatd.sysfs.root import Root

ERRNOS = {"EIO": errno.EIO, "EBUSY": errno.EBUSY, "ENOSPC": errno.ENOSPC,
          "EINVAL": errno.EINVAL, "EPERM": errno.EPERM}

# (knob, target, desired, kernel file) for every file knob, on tests/apply's small tree
# (plus a pm_qos file): one change per knob
FILE_KNOBS: list[tuple[str, str, str, str]] = [
    ("irq.affinity", "41", "1", "proc/irq/41/smp_affinity_list"),
    ("net.rps_cpus", "eth9/rx-0", "3", "sys/class/net/eth9/queues/rx-0/rps_cpus"),
    ("net.rps_flow_cnt", "eth9/rx-1", "256", "sys/class/net/eth9/queues/rx-1/rps_flow_cnt"),
    ("net.xps_cpus", "eth9/tx-0", "2", "sys/class/net/eth9/queues/tx-0/xps_cpus"),
    ("net.threaded", "eth9", "1", "sys/class/net/eth9/threaded"),
    ("net.napi_defer_hard_irqs", "eth9", "2", "sys/class/net/eth9/napi_defer_hard_irqs"),
    ("net.gro_flush_timeout", "eth9", "20000", "sys/class/net/eth9/gro_flush_timeout"),
    ("napi.config", "eth9/irq40", "gro-flush-timeout=30000", "sys/class/net/eth9/gro_flush_timeout"),
    ("block.rq_affinity", "nvme0n1", "2", "sys/block/nvme0n1/queue/rq_affinity"),
    ("sysctl", "net.core.netdev_budget_usecs", "4000", "proc/sys/net/core/netdev_budget_usecs"),
    ("cpu.pm_qos_resume_latency_us", "1", "20",
     "sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us"),
]


def _tree(base: pathlib.Path) -> pathlib.Path:
    tree = small_tree(base)
    p = tree / "sys/devices/system/cpu/cpu1/power/pm_qos_resume_latency_us"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("0\n")
    return tree


def _expected(knob: str, fault: str) -> tuple[str, str]:
    """(status, errclass) the engine must report for `fault` at `knob` (kernel/errnos.py)."""
    if knob == "irq.affinity" and fault in ("EIO", "EPERM"):
        return MANAGED, "managed"  # kernel/irq/proc.c: managed IRQ (EIO 6.1, EPERM 0444 6.12)
    return FAILED, {"EIO": "io", "EPERM": "denied", "ENOSPC": "no_space", "EBUSY": "transient",
                    "EINVAL": "invalid"}[fault]


def _batch(under_test: tuple[str, str, str, str]) -> list[Change]:
    """The knob under test plus every knob that writes another file."""
    out = [Change.parse(under_test[0], under_test[1], "", under_test[2], "under test")]
    out += [Change.parse(k, t, "", v, "bystander") for k, t, v, p in FILE_KNOBS if p != under_test[3]]
    return out


@pytest.mark.parametrize("fault", sorted(ERRNOS))
@pytest.mark.parametrize("case", FILE_KNOBS, ids=[c[0] for c in FILE_KNOBS])
def test_errno_at_each_file_knob(tmp_path: pathlib.Path, case: tuple[str, str, str, str],
                                 fault: str) -> None:
    knob, target, _, path = case
    tree = _tree(tmp_path / "tree")
    before = tree_bytes(tree)
    root = FaultRoot(tree, {path: ERRNOS[fault]})
    status, errclass = _expected(knob, fault)
    with Engine(root, str(tmp_path / "state")) as eng:
        rep = eng.apply(_batch(case))
        r = rep.results[0]
        assert (r.status, r.errclass) == (status, errclass), r
        assert fault in r.message and path in r.message, r.message  # a sentence naming both
        # one failing knob never stops the others
        assert [x.status for x in rep.results[1:]] == [CHANGED] * (len(rep.results) - 1), [
            (x.knob, x.status, x.message) for x in rep.results[1:]]
        assert (tree / path).read_bytes() == before[path]  # the kernel kept its value
        # journaled only when it is a managed IRQ (recorded, never written again)
        journaled = {(e.knob, e.target) for e in eng.entries()}
        assert ((knob, target) in journaled) is (status == MANAGED)
        again = eng.apply(_batch(case))
        assert again.results[0].status == status
        # managed: never again; refused for good (invalid value, denied, unsupported): not
        # before the next machine rescan (Engine.forget_refusals); transient ones: at once
        held = errclass in ("invalid", "denied", "unsupported") and not knobs.REGISTRY[knob].live_only
        assert root.writes(path) == (1 if status == MANAGED or held else 2)
        if held:
            eng.forget_refusals()
            eng.apply(_batch(case))
            assert root.writes(path) == 2
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed, rb.to_json()
    assert diff_keys(before, tree_bytes(tree)) == []


@pytest.mark.parametrize("fault", ["EIO", "EBUSY", "EPERM", "ENOSPC"])
def test_errno_during_rollback_keeps_the_entry_until_it_is_restored(
        tmp_path: pathlib.Path, fault: str) -> None:
    tree = _tree(tmp_path / "tree")
    before = tree_bytes(tree)
    state = tmp_path / "state"
    root = FaultRoot(tree)
    changes = [Change.parse(k, t, "", v, "t") for k, t, v, p in FILE_KNOBS if k != "napi.config"]
    with Engine(root, str(state)) as eng:
        assert not eng.apply(changes).failed
        bad = "sys/class/net/eth9/queues/rx-0/rps_cpus"
        root.faults[bad] = ERRNOS[fault]
        rb = eng.rollback()
        assert not rb.ok and not rb.journal_removed
        failed = [r for r in rb.results if r.status == FAILED]
        assert [(r.knob, r.target) for r in failed] == [("net.rps_cpus", "eth9/rx-0")]
        assert fault in failed[0].message
        assert rb.count(RESTORED) == len(changes) - 1
        assert "could not be restored" in rb.notes[0]
    kept = journal_read.read_json(str(state / "journal.json"))
    assert kept is not None
    assert [(e["knob"], e["target"]) for e in kept["entries"]] == [("net.rps_cpus", "eth9/rx-0")]
    # the fault clears: a later run restores the last one and removes the journal
    with Engine(Root(str(tree)), str(state)) as eng:
        assert eng.recover().action == "adopted"
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed
    assert diff_keys(before, tree_bytes(tree)) == []


class ReadFaultRoot(FaultRoot):
    """A FaultRoot whose reads of chosen paths fail too."""

    __slots__ = ("read_faults",)

    def __init__(self, tree: pathlib.Path, read_faults: dict[str, int]) -> None:
        super().__init__(tree)
        self.read_faults = read_faults

    def read_bytes(self, rel: str, context: str | None = None) -> bytes:
        if rel in self.read_faults:
            raise KernelError("read", rel, self.read_faults[rel], context)
        return super().read_bytes(rel, context)


@pytest.mark.parametrize("fault", ["EIO", "EBUSY", "EPERM"])
def test_errno_on_the_read_before_a_write_writes_nothing(tmp_path: pathlib.Path,
                                                         fault: str) -> None:
    tree = _tree(tmp_path / "tree")
    before = tree_bytes(tree)
    path = "sys/class/net/eth9/queues/tx-0/xps_cpus"
    root = ReadFaultRoot(tree, {path: ERRNOS[fault]})
    with Engine(root, str(tmp_path / "state")) as eng:
        rep = eng.apply([Change.parse("net.xps_cpus", "eth9/tx-0", "", "2", "t"),
                         Change.parse("net.threaded", "eth9", "", "1", "t")])
        assert rep.results[0].status == FAILED and fault in rep.results[0].message
        assert rep.results[1].status == CHANGED
        assert root.writes(path) == 0
        assert [e.knob for e in eng.entries()] == ["net.threaded"]
        assert eng.rollback().ok
    assert diff_keys(before, tree_bytes(tree)) == []


# -- task knobs: errnos at the syscalls (agentlatd.sample.tasks is their IO boundary) ----


def _start_sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _kill(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (nice below the current value)")
@pytest.mark.parametrize("fault", [*sorted(ERRNOS), "ESRCH"])
@pytest.mark.parametrize("knob", ["task.affinity", "task.nice", "task.ioprio"])
def test_errno_at_each_task_knob(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                 knob: str, fault: str) -> None:
    err = ERRNOS.get(fault, errno.ESRCH)
    child = _start_sleeper()
    try:
        st = tasks.starttime_of(Root("/"), child.pid)
        assert st is not None
        target = f"{child.pid}:{st}:{child.pid}"
        orig = {"aff": os.sched_getaffinity(child.pid),
                "nice": os.getpriority(os.PRIO_PROCESS, child.pid),
                "io": tasks.get_ioprio(child.pid)}
        real_aff, real_nice, real_sys = os.sched_setaffinity, os.setpriority, tasks._syscall
        set_nr = tasks._ioprio_nr()[0]

        def aff(pid: int, cpus: Any) -> None:
            if knob == "task.affinity" and pid == child.pid:
                raise OSError(err, os.strerror(err))
            real_aff(pid, cpus)

        def nice(which: int, who: int, prio: int) -> None:
            if knob == "task.nice" and who == child.pid:
                raise OSError(err, os.strerror(err))
            real_nice(which, who, prio)

        def sysc(nr: int, *args: int) -> int:
            if knob == "task.ioprio" and nr == set_nr and args[1] == child.pid:
                raise OSError(err, os.strerror(err))
            return real_sys(nr, *args)

        monkeypatch.setattr(tasks.os, "sched_setaffinity", aff)
        monkeypatch.setattr(tasks.os, "setpriority", nice)
        monkeypatch.setattr(tasks, "_syscall", sysc)
        changes = [Change.parse("task.affinity", target, "", "0", "t"),
                   Change.parse("task.nice", target, "", "7", "t"),
                   Change.parse("task.ioprio", target, "", "be7", "t")]
        with Engine(Root("/"), str(tmp_path / "state")) as eng:
            rep = eng.apply(changes)
            by = {r.knob: r for r in rep.results}
            want = {"EIO": "io", "EPERM": "denied", "ENOSPC": "no_space", "EBUSY": "transient",
                    "EINVAL": "invalid", "ESRCH": "gone"}[fault]
            assert (by[knob].status, by[knob].errclass) == (FAILED, want), by[knob]
            assert fault in by[knob].message
            assert all(r.status == CHANGED for k, r in by.items() if k != knob), by
            assert knob not in {e.knob for e in eng.entries()}
            monkeypatch.undo()
            rb = eng.rollback()
        assert rb.ok, rb.to_json()
        assert os.sched_getaffinity(child.pid) == orig["aff"]
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == orig["nice"]
        assert tasks.get_ioprio(child.pid) == orig["io"]
    finally:
        _kill(child)


# -- coalescing: errnos from the ethtool netlink client ------------------------


@pytest.mark.parametrize("fault", [*sorted(ERRNOS), "EOPNOTSUPP"])
def test_errno_at_the_coalesce_knob(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                    fault: str) -> None:
    from agentlatd.netlink import ethtool
    err = ERRNOS.get(fault, errno.EOPNOTSUPP)
    state = {"v": "rx-usecs=50,adaptive-rx=on"}
    calls: list[dict[str, Any]] = []

    def set_coalesce(ifname: str, **fields: Any) -> None:
        calls.append(fields)
        if len(calls) == 1:  # the apply fails; the restore after it succeeds
            raise KernelError("netlink", f"ethtool coalesce {ifname}", err, "netlink")
        state["v"] = "rx-usecs=20,adaptive-rx=off"

    # a stand-in for agentlatd.netlink.ethtool: this test never reaches a real NIC
    stub = types.SimpleNamespace(get_coalesce=lambda ifname: state["v"],
                                 set_coalesce=set_coalesce, parse_coalesce=ethtool.parse_coalesce)
    monkeypatch.setattr(knobs, "_netlink_module", lambda name: stub)
    with Engine(Root("/"), str(tmp_path / "state")) as eng:
        rep = eng.apply([Change.parse("net.coalesce", "hostile-nic0", "",
                                "rx-usecs=20,adaptive-rx=off", "t")])
        r = rep.results[0]
        want = {"EIO": "io", "EPERM": "denied", "ENOSPC": "no_space", "EBUSY": "transient",
                "EINVAL": "invalid", "EOPNOTSUPP": "unsupported"}[fault]
        # EOPNOTSUPP and ENOTSUP are one errno on Linux (95); errorcode names it ENOTSUP
        assert r.errclass == want and fault.replace("EOPNOTSUPP", "ENOTSUP") in r.message, r
        assert r.status == ("unsupported" if fault == "EOPNOTSUPP" else FAILED)
        assert eng.entries() == ()
        assert state["v"] == "rx-usecs=50,adaptive-rx=on"
        # next tick: it goes through, is journaled, and rolls back to the original
        assert eng.apply([Change.parse("net.coalesce", "hostile-nic0", "",
                                 "rx-usecs=20,adaptive-rx=off", "t")]).results[0].status == CHANGED
        assert [e.original for e in eng.entries()] == ["rx-usecs=50,adaptive-rx=on"]
        assert state["v"] == "rx-usecs=20,adaptive-rx=off"


# -- an IRQ that vanishes between sample and apply (and between apply and rollback) -----


def _plan_for(tree: pathlib.Path, rates: Any = None, policy_text: str = "") -> Any:
    from agentlatd.plan.build import make_plan
    from agentlatd.tick import scan_machine
    pol = loads('[daemon]\nirqbalance = "ignore"\n' + policy_text)
    return make_plan(scan_machine(Root(str(tree))), pol, rates=rates)


def test_irq_vanishing_between_sample_and_apply(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("arm64-gicv3", tmp_path)
    plan = _plan_for(tree)
    irq_changes = [c for c in plan.changes if c.knob == "irq.affinity"]
    assert len(irq_changes) >= 2
    gone = irq_changes[0].target_text
    shutil.rmtree(tree / "proc/irq" / gone)  # the device's driver freed it meanwhile
    before = tree_bytes(tree)
    # a plain Root: effective_affinity_list is the kernel's file, not ours to restore
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        rep = eng.apply(plan.changes)
        by = {(r.knob, r.target): r for r in rep.results}
        r = by[("irq.affinity", gone)]
        assert (r.status, r.errclass) == (FAILED, "gone") and "ENOENT" in r.message, r
        assert "rescans" in r.message
        assert all(by[("irq.affinity", c.target_text)].status in (CHANGED, "clamped")
                   for c in irq_changes[1:])
        assert ("irq.affinity", gone) not in {(e.knob, e.target) for e in eng.entries()}
        assert not (tree / "proc/irq" / gone).exists()  # nothing recreated it
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed
    assert diff_keys(before, tree_bytes(tree)) == []


def test_irq_vanishing_between_apply_and_rollback(tmp_path: pathlib.Path) -> None:
    tree = copy_fixture("arm64-gicv3", tmp_path)
    before = tree_bytes(tree)
    plan = _plan_for(tree)
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        eng.apply(plan.changes)
        gone = next(e.target for e in eng.entries() if e.knob == "irq.affinity")
        shutil.rmtree(tree / "proc/irq" / gone)
        drift = eng.check_drift()
        assert [(d.target, d.action) for d in drift] == [(gone, "unreadable")]
        rb = eng.rollback()
    assert rb.ok and rb.journal_removed, rb.to_json()
    st = {r.target: r.status for r in rb.results if r.knob == "irq.affinity"}
    assert st[gone] == GONE
    assert [k for k in diff_keys(before, tree_bytes(tree))
            if not k.startswith(f"proc/irq/{gone}/")] == []


# -- a CPU going offline between ticks ---------------------------------------


def _drop_list(path: pathlib.Path, cpu: int) -> None:
    try:
        s = CpuSet.parse_list(path.read_text().strip())
    except Exception:
        return
    if cpu in s:
        path.write_text(CpuSet(s - {cpu}).to_list() + "\n")


def _drop_column(text: str, idx: int, ncol: int) -> str:
    """Remove count column `idx` of `ncol` from /proc/interrupts or /proc/softirqs text."""
    lines = text.splitlines(keepends=True)
    out = []
    head = lines[0].split()
    del head[idx]
    out.append(" " * 11 + "".join(f"{h:<11}" for h in head).rstrip() + "\n")
    for ln in lines[1:]:
        m = re.match(r"(\s*\S+:)((?:\s+\d+){" + str(ncol) + r"})(.*)$", ln.rstrip("\n"))
        if m is None:
            out.append(ln)
            continue
        counts = m.group(2).split()
        del counts[idx]
        out.append(m.group(1) + "".join(f" {c:>10}" for c in counts) + m.group(3) + "\n")
    return "".join(out)


def take_offline(tree: pathlib.Path, cpu: int, *, softirqs_too: bool = False) -> None:
    """What x86/arm64 show after `echo 0 > cpuN/online` (the cloud-vm-small README)."""
    cpud = tree / "sys/devices/system/cpu"
    online = CpuSet.parse_list((cpud / "online").read_text().strip())
    cols = sorted(online)
    idx = cols.index(cpu)
    (cpud / f"cpu{cpu}/online").write_text("0\n")
    _drop_list(cpud / "online", cpu)
    for sub in ("topology", "cache"):
        shutil.rmtree(cpud / f"cpu{cpu}" / sub, ignore_errors=True)
    for p in list(cpud.glob("cpu*/topology/*_list")) + list(cpud.glob("cpu*/cache/*/shared_cpu_list")):
        _drop_list(p, cpu)
    for p in (tree / "sys/devices/system/node").glob("node*/cpulist"):
        _drop_list(p, cpu)
    intr = tree / "proc/interrupts"
    intr.write_text(_drop_column(intr.read_text(), idx, len(cols)))
    stat = tree / "proc/stat"
    stat.write_text("".join(ln for ln in stat.read_text().splitlines(keepends=True)
                            if not ln.startswith(f"cpu{cpu} ")))
    if softirqs_too:  # the variant; the kernel keeps every possible CPU's column
        sirq = tree / "proc/softirqs"
        ncol = len(sirq.read_text().splitlines()[0].split())
        sirq.write_text(_drop_column(sirq.read_text(), idx, ncol))


def _cpus_named(c: Change) -> CpuSet:
    if c.knob == "irq.affinity":
        return CpuSet.parse_list(c.desired)
    if c.knob in ("net.rps_cpus", "net.xps_cpus"):
        return CpuSet.parse_mask(c.desired)
    return CpuSet()


@pytest.mark.parametrize("role", ["home", "completion"])
@pytest.mark.parametrize("softirqs_too", [False, True], ids=["kernel-like", "softirqs-column-too"])
@pytest.mark.parametrize("fixture", ["arm64-gicv3", "server-2s64t"])
def test_cpu_offline_between_ticks(tmp_path: pathlib.Path, fixture: str, role: str,
                                   softirqs_too: bool) -> None:
    from agentlatd.model.rates import compute_rates
    from agentlatd.sample.counters import read_counters
    tree = copy_fixture(fixture, tmp_path)
    root = Root(str(tree))
    pol = loads('[daemon]\nirqbalance = "ignore"\n')
    plan1 = _plan_for(tree)
    cands = sorted(plan1.home_cpus if role == "home" else plan1.completion_cpus)
    cands = [c for c in cands if (tree / f"sys/devices/system/cpu/cpu{c}/online").exists()]
    if not cands:
        pytest.skip(f"no hotpluggable {role} CPU in {fixture}")
    cpu = cands[-1]
    snap1 = read_counters(root)
    time.sleep(0.01)
    take_offline(tree, cpu, softirqs_too=softirqs_too)
    snap2 = read_counters(root, None, snap1)
    rates = compute_rates(snap1, snap2, pol.heat)
    hot = [d for d in rates.discontinuities if d.kind == "cpu_hotplug"]
    assert hot and any(f"CPU {cpu} gone" in d.detail for d in hot), rates.discontinuities
    # never a negative rate, and nothing for the CPU that left
    for m in (rates.irq_per_cpu, rates.heat, rates.irq_time_share):
        assert all(v >= 0 for v in m.values()), m
    # per_cpu_count keeps every possible CPU: the offline one may show rate 0, never more
    assert rates.irq_per_cpu.get(cpu, 0.0) == 0.0 and cpu not in rates.irq_time_share
    plan2 = _plan_for(tree, rates)
    assert cpu not in plan2.home_cpus | plan2.completion_cpus
    assert plan2.home_cpus and plan2.completion_cpus
    assert cpu not in {r.cpu for r in plan2.roles if r.role in ("home", "completion")}
    bad = [c for c in plan2.changes if cpu in _cpus_named(c)]
    assert bad == [], bad
    # and the tree with the CPU gone still applies and rolls back cleanly
    before = tree_bytes(tree)
    with Engine(Root(str(tree)), str(tmp_path / "state")) as eng:
        rep = eng.apply(plan2.changes)
        assert not rep.failed, [r for r in rep.results if r.status == FAILED]
        assert eng.rollback().ok
    assert diff_keys(before, tree_bytes(tree)) == []


# -- a device removed mid-run (real veths in a namespace of the test's own) ---------


def _del_link(ns: str, dev: str) -> None:
    subprocess.run(["ip", "-n", ns, "link", "del", dev], check=True, capture_output=True, timeout=30)


@pytest.mark.netns
def test_device_removed_between_plan_and_apply(tmp_path: pathlib.Path) -> None:
    with netns_with_veths(2) as v:
        a0, b0, a1, b1 = v.devs
        plan = plan_file(tmp_path / "plan.json", veth_changes(a0, b0, frozenset())
                         + veth_changes(a1, b1, frozenset()))
        keep = snapshot(v.netns, [a1, b1])
        _del_link(v.netns, a0)  # takes its peer b0 with it
        state = str(tmp_path / "state")
        p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"], netns=v.netns)
        assert p.returncode == 1, p.stdout + p.stderr  # failures reported, not a crash
        out = json.loads(p.stdout)
        for r in out["results"]:
            dev = r["target"].split("/")[0]
            if dev in (a0, b0):
                assert r["status"] == "failed" and r["errclass"] == "gone", r
                assert "ENOENT" in r["message"] or "ENODEV" in r["message"], r
            elif r["knob"] != "net.coalesce":
                assert r["status"] in ("changed", "unchanged", "clamped"), r
        p = cli(["rollback", "--state-dir", state, "--json"], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        assert snapshot_diff(keep, snapshot(v.netns, [a1, b1])) == []


@pytest.mark.netns
def test_device_removed_between_apply_and_rollback(tmp_path: pathlib.Path) -> None:
    with netns_with_veths(2) as v:
        a0, b0, a1, b1 = v.devs
        plan = plan_file(tmp_path / "plan.json", veth_changes(a0, b0, frozenset())
                         + veth_changes(a1, b1, frozenset()))
        keep = snapshot(v.netns, [a1, b1])
        state = str(tmp_path / "state")
        p = cli(["apply", "--plan", str(plan), "--state-dir", state, "--json"], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        _del_link(v.netns, a0)
        p = cli(["rollback", "--state-dir", state, "--json"], netns=v.netns)
        assert p.returncode == 0, p.stdout + p.stderr
        out = json.loads(p.stdout)
        assert out["ok"] and out["journal_removed"]
        st = {(r["knob"], r["target"]): r["status"] for r in out["results"]}
        assert all(s == "gone" for (_, t), s in st.items() if t.split("/")[0] in (a0, b0)), st
        assert any(s == "restored" for (_, t), s in st.items() if t.split("/")[0] in (a1, b1)), st
        assert snapshot_diff(keep, snapshot(v.netns, [a1, b1])) == []
        assert not (tmp_path / "state" / "journal.json").exists()


def _daemon_policy(include: str) -> str:
    from agentshelpers import policy_text
    text = policy_text(interval=0.2)
    # steer RPS/XPS of the test's veths only (never IRQs, never sysctls, never host tasks)
    text = text.replace('include = ["agentlatd-test-none-*"]', f'include = ["{include}"]')
    return text.replace("rps = false", "rps = true").replace("xps = false", "xps = true")


@pytest.mark.netns
def test_device_removed_under_a_running_daemon(tmp_path: pathlib.Path) -> None:
    from agentshelpers import env_for_children, request, wait_ticks, wait_until
    with netns_with_veths(2) as v:
        a0, b0, a1, b1 = v.devs
        tag = a0[3:]
        keep = snapshot(v.netns, [a1, b1])
        d = tmp_path
        (d / "agentlatd.toml").write_text(_daemon_policy(f"v?[01]{tag}"))
        sock = d / "agentlatd.sock"
        logf = open(d / "daemon.log", "wb")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            ["ip", "netns", "exec", v.netns, sys.executable, "-m", "agentlatd", "run",
             "--config", str(d / "agentlatd.toml"), "--state-dir", str(d / "state"),
             "--socket", str(sock)], stdout=logf, stderr=subprocess.STDOUT,
            env=env_for_children(), cwd=str(d))

        def log() -> str:
            return (d / "daemon.log").read_text(errors="replace")
        try:
            def up() -> bool:
                assert proc.poll() is None, log()
                try:
                    return bool(request(sock, "ping", timeout=1.0)["ok"])
                except OSError:
                    return False
            wait_until(up, 30, what="daemon up")

            def journaled() -> int:
                return int(request(sock, "status")["result"]["journal_entries"])
            wait_until(lambda: journaled() >= 4, 15, what="RPS/XPS of the veths applied")
            _del_link(v.netns, a0)
            # several ticks of each loop with the device gone, counted (after a bare sleep
            # a slow daemon may not have ticked yet, and "still alive" would prove nothing)
            wait_ticks(lambda: request(sock, "status")["result"], 7)
            assert proc.poll() is None, log()
            st = request(sock, "status")["result"]
            assert request(sock, "ping")["ok"]
            # the tuner keeps ticking (its counter moves) and registrations still work
            child = _start_sleeper()
            try:
                ans = request(sock, "register", agent_id="after-removal", pid=child.pid)
                assert ans["ok"], ans
            finally:
                _kill(child)
            wait_until(lambda: request(sock, "status")["result"]["tick"] > st["tick"] + 2, 10,
                       what="the tuner still ticking")
            # within a few ticks the removed device is out of the plan (no knob of it fails)
            def settled() -> bool:
                s = request(sock, "status")["result"]
                return not s["changes"].get("failed")
            wait_until(settled, 10, what=f"the plan forgets {a0}/{b0} "
                                          f"(last status: {request(sock, 'status')['result']})")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=30)
            logf.close()
        assert rc == 0, log()
        assert snapshot_diff(keep, snapshot(v.netns, [a1, b1])) == [], log()
        assert not (d / "state" / "journal.json").exists(), log()


# -- a process that exits between listing its threads and pinning them --------------


THREADS = r"""
import sys, threading, time
ev = [threading.Event() for _ in range(3)]
ts = [threading.Thread(target=e.wait, daemon=True) for e in ev]
for t in ts:
    t.start()
print(" ".join(str(t.native_id) for t in ts), flush=True)
for line in sys.stdin:
    if line.strip() == "end0":
        ev[0].set(); ts[0].join()
        print("ok", flush=True)
"""


def test_process_exiting_between_listing_threads_and_pinning(tmp_path: pathlib.Path) -> None:
    root = Root("/")
    child = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        st = tasks.starttime_of(root, child.pid)
        tids = tasks.list_tids(root, child.pid)
        assert len(tids) == 4
        changes = [Change.parse("task.affinity", f"{child.pid}:{st}:{t}", "", "0", "t") for t in tids]
        _kill(child)  # exits after the listing, before the first write
        with Engine(root, str(tmp_path / "state")) as eng:
            rep = eng.apply(changes)
            assert {(r.status, r.errclass) for r in rep.results} == {(FAILED, "gone")}, rep
            assert all("exited" in r.message for r in rep.results)
            assert eng.entries() == ()  # nothing journaled for a process that is gone
            assert eng.rollback().ok
        assert not (tmp_path / "state" / "journal.json").exists()
    finally:
        _kill(child)


def test_thread_exiting_between_listing_and_pinning(tmp_path: pathlib.Path) -> None:
    root = Root("/")
    child = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdin is not None
        first = int(child.stdout.readline().split()[0])
        st = tasks.starttime_of(root, child.pid)
        tids = tasks.list_tids(root, child.pid)
        orig = {t: os.sched_getaffinity(t) for t in tids}
        changes = [Change.parse("task.affinity", f"{child.pid}:{st}:{t}", "", "0", "t") for t in tids]
        child.stdin.write(b"end0\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == b"ok"  # that thread has exited
        with Engine(root, str(tmp_path / "state")) as eng:
            rep = eng.apply(changes)
            by = {int(r.target.rsplit(":", 1)[1]): r for r in rep.results}
            assert (by[first].status, by[first].errclass) == (FAILED, "gone")
            assert "thread exited" in by[first].message
            assert all(r.status == CHANGED for t, r in by.items() if t != first)
            assert all(os.sched_getaffinity(t) == {0} for t in tids if t != first)
            rb = eng.rollback()
        assert rb.ok
        assert all(os.sched_getaffinity(t) == orig[t] for t in tids if t != first)
    finally:
        _kill(child)


def test_process_exiting_while_a_daemon_pins_it_leaves_nothing(tmp_path: pathlib.Path) -> None:
    """Register-and-exit races against the daemon's placement: no leaked registration,
    no journal entry left, every answer is ok or no_such_process."""
    from agentshelpers import daemon, policy_text, wait_until, workdir
    codes: dict[str, int] = {}
    with workdir() as d, daemon(d, policy_text()) as dm:
        for i in range(30):
            child = subprocess.Popen([sys.executable, "-c",
                                      "import threading,time\n"
                                      "[threading.Thread(target=time.sleep, args=(5,),daemon=True)"
                                      ".start() for _ in range(8)]\ntime.sleep(5)"])
            time.sleep(0.02 * (i % 5))
            killer = threading.Timer(0.001 * (i % 7), child.kill)
            killer.start()
            ans = dm.request("register", agent_id=f"racer{i}", pid=child.pid)
            killer.join()
            _kill(child)
            code = "ok" if ans["ok"] else ans["error"]["code"]
            codes[code] = codes.get(code, 0) + 1
        assert set(codes) <= {"ok", "no_such_process"}, codes
        wait_until(lambda: dm.agents() == [], 10, what="every racer dropped")
        wait_until(lambda: dm.status()["journal_entries"] == 0, 10, what="no journal entry left")
        assert dm.proc.poll() is None
