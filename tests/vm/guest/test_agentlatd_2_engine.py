"""`agentlatd plan` / `apply` / `rollback` on a real kernel with real MSI-X IRQs.

One policy (conftest Lab.policy: the guest's three NICs, a netdevsim port and nvme0;
completion CPUs 0-1, home CPUs 2-3, threaded NAPI) is planned and applied ONCE for the
module; the tests then check, in order, what the kernel shows while it is applied (IRQ
affinity, effective affinity, interrupts under real traffic, coalescing, threaded NAPI), a
second apply, the managed NVMe queues, and finally that `agentlatd rollback` puts back every
value snapshotted before the apply. Every check reads the kernel directly (guestlib).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import guestlib as g
import pytest

pytestmark = pytest.mark.vm
CPUS = list(range(os.cpu_count() or 0))
COMPLETION, HOME = g.COMPLETION, g.HOME
SPREAD = sorted(COMPLETION)  # queue of rank i -> SPREAD[i % 2] (plan/irq_affinity.py)
ALL_COMPLETION = "0-1"
WRITTEN = ("changed", "clamped")
# the block device of nvme0 as the planner names it; on a kernel with native NVMe
# multipath (Debian's) and a controller that sets CMIC (QEMU's) it is the multipath head, a
# bio-based disk, which on 6.12 has no queue/rq_affinity (6.1 still shows the file; see
# test_apply_fails_no_knob_here)
NVME_DISK = "nvme0n1"
NO_RQ_AFFINITY = not os.path.exists(f"/sys/block/{NVME_DISK}/queue/rq_affinity")


def known_bug(r: dict[str, Any]) -> bool:
    """The one failure this apply has today (reported: rq_affinity planned for a disk
    without the file); every other failed result fails the tests."""
    return (r["status"] == "failed" and r["knob"] == "block.rq_affinity"
            and not os.path.exists(f"/sys/block/{r['target']}/queue/rq_affinity"))


def expected_affinity(nics: g.Nics) -> dict[int, str]:
    """What the policy must do to each steerable IRQ, worked out here from the kernel's IRQ
    names: queue IRQs one completion CPU each, round-robin by queue number (rx-q and tx-q
    of one queue on the same CPU); link/config IRQs and the NVMe admin queue on all
    completion CPUs. NVMe I/O queues are kernel-managed: not here, never touched."""
    want: dict[int, str] = {}
    v = nics.virtio_dev
    for q in range(4):
        for kind in ("input", "output"):
            want[g.irqs_named(rf"{v}-{kind}\.{q}")[f"{v}-{kind}.{q}"].irq] = str(SPREAD[q % 2])
    want[g.irqs_named(rf"{v}-config")[f"{v}-config"].irq] = ALL_COMPLETION
    for ifname in (nics.e1000e, nics.igb):
        for name, row in g.irqs_named(rf"{re.escape(ifname)}(-.*)?").items():
            m = re.fullmatch(rf"{re.escape(ifname)}-[rt]x-(\d+)", name)
            want[row.irq] = str(SPREAD[int(m.group(1)) % 2]) if m else ALL_COMPLETION
    want[g.irqs_named(r"nvme0q0")["nvme0q0"].irq] = ALL_COMPLETION
    return want


def nvme_io_irqs() -> list[int]:
    return sorted(r.irq for r in g.irqs_named(r"nvme0q[1-9]\d*").values())


@dataclass
class Applied:
    lab: Any  # conftest.Lab
    config: pathlib.Path
    state: pathlib.Path
    before: dict[str, str]  # g.knob_snapshot() before the apply
    before_irqs: dict[int, str]  # smp_affinity_list of every IRQ before
    want: dict[int, str]  # expected_affinity()
    plan: dict[str, Any]  # `agentlatd plan --json`
    apply: g.Ran
    report: dict[str, Any]  # `agentlatd apply --json`
    ints: dict[int, g.Irq]  # /proc/interrupts right after the apply

    def results(self, knob: str) -> dict[str, dict[str, Any]]:
        return {r["target"]: r for r in self.report["results"] if r["knob"] == knob}


@pytest.fixture(scope="module")
def applied(agentlatd: g.Agentlatd, agentlatd_lab: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Applied]:
    lab = agentlatd_lab
    config = lab.policy("engine.toml")
    state = tmp_path_factory.mktemp("engine-state")
    before = g.knob_snapshot(lab.ifnames)
    before_irqs = {n: g.read_cpulist(n) for n in g.read_interrupts()}
    want = expected_affinity(lab.nics)
    plan = agentlatd.run("plan", "--json", "--config", str(config))
    assert plan.rc == 0, plan
    ran = agentlatd.run("apply", "--config", str(config), "--state-dir", str(state), "--json")
    ints = g.read_interrupts()
    print(f"plan {plan.secs:.1f} s, apply {ran.secs:.1f} s: {ran.stdout[:200]}...")
    assert ran.rc in (0, 1), ran  # 1 = some knob failed: the tests below say which
    report = ran.json()
    assert isinstance(report, dict)
    print("apply summary:", json.dumps(report["summary"]))
    yield Applied(lab, config, state, before, before_irqs, want, plan.json(),  # type: ignore[arg-type]
                  ran, report, ints)
    if (state / "journal.json").exists():  # a test failed before the rollback test
        rb = agentlatd.fork("rollback", "--state-dir", str(state))
        assert rb.rc == 0, rb


def test_plan_splits_the_cpus_and_plans_every_steerable_irq_but_no_managed_one(
        applied: Applied) -> None:
    p = applied.plan
    assert (p["completion_cpus"], p["home_cpus"]) == ("0-1", "2-3"), p["roles"]
    assert p["irqbalance_running"] is False
    planned = {int(c["target"]): c["desired"] for c in p["changes"] if c["knob"] == "irq.affinity"}
    # exactly the steerable IRQs not already where they belong (no-ops are not planned)
    assert planned == {n: w for n, w in applied.want.items()
                       if g.parse_cpulist(applied.before_irqs[n]) != g.parse_cpulist(w)}
    assert not set(planned) & set(nvme_io_irqs())
    notes = " ".join(p["notes"])
    assert "kernel-managed IRQ(s) of nvme0" in notes, notes
    kinds = {c["knob"] for c in p["changes"]}
    assert {"irq.affinity", "net.rps_cpus", "net.xps_cpus", "net.threaded", "net.coalesce"} <= kinds


def test_apply_steers_every_nic_queue_irq_to_its_completion_cpu(applied: Applied) -> None:
    rep = applied.report
    planned = [(c["knob"], c["target"]) for c in applied.plan["changes"]]
    # then the second pass: the NAPI kthreads that net.threaded started
    # (agentlatd.plan.build.followup), which `plan` before the apply could not see
    assert [(r["knob"], r["target"]) for r in rep["results"]
            if (r["knob"], r["target"]) in planned or r["knob"] != "task.affinity"] == planned
    assert rep["recovery"] is None  # a fresh state directory
    for n, want in applied.want.items():
        assert g.parse_cpulist(g.read_cpulist(n)) == g.parse_cpulist(want), (n, want)
        assert g.parse_cpulist(want) <= COMPLETION
    for r in applied.results("irq.affinity").values():
        assert r["status"] in WRITTEN, r
        if r["status"] == "clamped":
            # no interrupt remapping: the vector moves at the IRQ's next interrupt, so the
            # engine saw the old effective CPU and said so
            assert r["after"].startswith(f"{r['desired']} (effective "), r
    untouched = set(applied.before_irqs) - set(applied.want)
    assert {n: g.read_cpulist(n) for n in untouched} == \
        {n: applied.before_irqs[n] for n in untouched}
    failed = [r for r in rep["results"] if r["status"] == "failed" and not known_bug(r)]
    assert failed == [], failed
    for r in rep["results"]:
        if r["status"] in WRITTEN and r["knob"] != "irq.affinity":
            assert g.knob_in_effect(r["knob"], r["target"], r["desired"]), r


def test_apply_fails_no_knob_here(applied: Applied) -> None:
    failed = [r for r in applied.report["results"] if r["status"] == "failed"]
    assert failed == [] and applied.apply.rc == 0, failed


def test_effective_affinity_follows_and_interrupts_land_only_on_completion_cpus(
        applied: Applied) -> None:
    nics = applied.lab.nics
    want = {n: g.parse_cpulist(w) for n, w in applied.want.items()}
    gw = {role: g.SLIRP[role][1] for role in ("e1000e", "igb")}

    def traffic() -> None:
        # many flows from every CPU (home CPUs included): XPS and the flow hash spread them
        # over all four virtio queues; pings make e1000e and igb interrupts
        assert g.udp_flows_from_cpus(CPUS, flows=8, n=3) == {c: 24 for c in CPUS}
        assert g.ping_from_cpus(CPUS, gw["e1000e"], count=2) == {c: 2 for c in CPUS}
        assert g.ping_from_cpus(CPUS, gw["igb"], count=2) == {c: 2 for c in CPUS}

    # warm-up: each IRQ's first interrupt after the write still lands on its old CPU and
    # moves the vector; effective_affinity_list follows then
    traffic()
    warm = g.read_interrupts()
    fired = [n for n in want if sum(warm[n].counts) > sum(applied.ints[n].counts)]
    moved = {n for n in want
             if g.parse_cpulist(g.read_cpulist(n, "effective_affinity_list")) <= want[n]}
    print(f"fired since apply: {sorted(fired)}; moved: {sorted(moved)}")
    assert set(fired) <= moved, sorted(set(fired) - moved)
    v = nics.virtio_dev
    must_fire = [g.irqs_named(rf"{v}-input\.{q}")[f"{v}-input.{q}"].irq for q in range(4)]
    must_fire.append(g.irqs_named(rf"{nics.e1000e}-rx-0")[f"{nics.e1000e}-rx-0"].irq)
    assert set(must_fire) <= set(fired), sorted(set(must_fire) - set(fired))
    assert any(g.irqs_named(rf"{nics.igb}-rx-\d")[f"{nics.igb}-rx-{q}"].irq in fired
               for q in range(4)), "no igb rx interrupt"

    traffic()
    d = g.irq_deltas(warm, g.read_interrupts(), sorted(want))
    on_home = 0
    for n, per_cpu in d.items():
        off = sum(x for c, x in enumerate(per_cpu) if c not in want[n])
        on_home += sum(per_cpu[c] for c in HOME)
        if sum(per_cpu):
            print(f"IRQ {n} ({warm[n].name}) -> {applied.want[n]}: per-CPU {per_cpu}")
        # an IRQ that had not fired since the write may take ONE interrupt on its old CPU
        assert off <= (0 if n in moved else 1), (n, warm[n].name, applied.want[n], per_cpu)
    assert on_home <= len(set(want) - moved)
    assert sum(sum(x) for x in d.values()) > 0


def test_coalescing_over_ethtool_netlink(applied: Applied) -> None:
    from agentlatd.errors import KernelError
    from agentlatd.kernel.errnos import ErrClass
    from agentlatd.netlink.ethtool import check_coalesce_roundtrip, get_coalesce, set_coalesce

    nics, nsim = applied.lab.nics, applied.lab.nsim
    co = applied.results("net.coalesce")
    for ifname in (nics.igb, nics.e1000e):
        assert co[ifname]["status"] == "changed", co[ifname]
        assert g.ethtool_coalesce(ifname)["rx-usecs"] == co[ifname]["desired"].split("=")[1]
    # virtio-net without VIRTIO_NET_F_NOTF_COAL takes no usecs: reported, not fatal
    assert co[nics.virtio]["status"] == "unsupported", co[nics.virtio]
    assert co[nics.virtio]["errclass"] == "unsupported", co[nics.virtio]
    with pytest.raises(KernelError) as e:
        set_coalesce(nics.virtio, rx_usecs=20)
    assert e.value.errclass is ErrClass.UNSUPPORTED

    # each field written, read back over netlink, restored (agentlatd.netlink.ethtool)
    for ifname, fields in ((nics.igb, ("rx_usecs", "tx_usecs")), (nics.e1000e, ("rx_usecs",))):
        rt = check_coalesce_roundtrip(ifname, fields=fields)
        print(ifname, [(r.field, r.original, r.wrote, r.read_back) for r in rt])
        assert [r.field for r in rt] == list(fields) and all(r.ok for r in rt), rt
    # netdevsim: every field it reports, all in ONE coalesce-set, read back, restored. It
    # keeps every field of struct ethtool_coalesce (22); the kernel_ethtool_coalesce ones
    # (CQE mode; tx-aggr-* from 6.3) it reports as 0 but drops on set
    # (drivers/net/netdevsim/ethtool.c: nsim_set_coalesce copies only the former)
    dropped = {"use_cqe_mode_tx", "use_cqe_mode_rx", "tx_aggr_max_bytes", "tx_aggr_max_frames",
               "tx_aggr_time_usecs"}
    orig = get_coalesce(nsim).values()
    assert len(set(orig) - dropped) == 22, orig
    new = {f: (not v) if isinstance(v, bool) else v + 7 for f, v in orig.items()}
    set_coalesce(nsim, **new)
    try:
        back = get_coalesce(nsim).values()
    finally:
        set_coalesce(nsim, **orig)
    print(f"{nsim}: wrote {new}, read {back}")
    assert set(back) == set(orig), (orig, back)
    assert {f: v for f, v in back.items() if f not in dropped} == \
        {f: v for f, v in new.items() if f not in dropped}
    assert {f: back[f] for f in dropped if f in back} == {f: orig[f] for f in dropped if f in orig}
    assert get_coalesce(nsim).values() == orig

    # and what netlink wrote is what ethtool(8) reads, independently
    text = g.ethtool_coalesce(nsim)
    set_coalesce(nsim, rx_usecs=77, tx_max_frames=9, use_adaptive_rx=True)
    try:
        c = g.ethtool_coalesce(nsim)
        assert (c["rx-usecs"], c["tx-frames"], c["adaptive-rx"]) == ("77", "9", "on"), c
    finally:
        set_coalesce(nsim, **orig)
    assert g.ethtool_coalesce(nsim) == text


def test_threaded_napi_is_on_with_one_kthread_per_napi(applied: Applied) -> None:
    th = applied.results("net.threaded")
    for ifname in applied.lab.ifnames:
        if ifname == applied.lab.nsim and not g.kernel_at_least(6, 12):
            continue  # netdevsim threaded NAPI fails on 6.1 (tests/vm/README.md)
        assert th[ifname]["status"] == "changed", th[ifname]
        assert g.read_file(f"/sys/class/net/{ifname}/threaded") == "1"
        kt = g.napi_kthreads(ifname)
        print(f"{ifname}: napi kthreads {kt}")
        assert kt, f"no napi/{ifname}-* kthreads"


def test_napi_kthreads_are_pinned_to_completion_cpus(applied: Applied) -> None:
    for ifname in applied.lab.ifnames:
        for pid, cpus in g.napi_kthreads(ifname).items():
            assert g.parse_cpulist(cpus) <= COMPLETION, (ifname, pid, cpus)


def test_second_apply_adopts_the_journal_and_writes_nothing(
        applied: Applied, agentlatd: g.Agentlatd) -> None:
    before = g.knob_snapshot(applied.lab.ifnames)
    ran = agentlatd.fork("apply", "--config", str(applied.config), "--state-dir",
                         str(applied.state), "--json")
    rep = ran.json()
    assert isinstance(rep, dict), ran
    assert rep["recovery"]["action"] == "adopted", rep["recovery"]
    print(f"second apply ({ran.secs:.1f} s): {rep['summary']}")
    for r in rep["results"]:
        assert r["status"] in ("unchanged", "unsupported") or known_bug(r), r
    assert not [r for r in rep["results"] if r["knob"] == "irq.affinity"]
    assert g.snapshot_diff(before, g.knob_snapshot(applied.lab.ifnames)) == []


def test_managed_nvme_irq_write_is_recorded_once_and_never_retried(
        applied: Applied, agentlatd: g.Agentlatd, tmp_path: pathlib.Path) -> None:
    # force what the planner never plans: a write to every NVMe I/O queue's affinity
    io = nvme_io_irqs()
    before = {n: g.read_cpulist(n) for n in io}
    forced = tmp_path / "forced.json"
    forced.write_text(json.dumps({"changes": [
        {"knob": "irq.affinity", "target": str(n), "desired": str((int(before[n]) + 1) % len(CPUS)),
         "reason": "vm test: a managed IRQ"} for n in io]}))
    args = ("apply", "--plan", str(forced), "--state-dir", str(applied.state), "--json")
    first = agentlatd.fork(*args).json()
    again = agentlatd.fork(*args).json()
    assert isinstance(first, dict) and isinstance(again, dict)
    errname = "EPERM" if g.kernel_at_least(6, 12) else "EIO"
    for r in first["results"]:
        print(r["target"], r["status"], r["message"])
        assert (r["status"], r["errclass"]) == ("managed", "managed"), r
        assert errname in r["message"], r
    for r in again["results"]:
        assert (r["status"], r["errclass"]) == ("managed", "managed"), r
        assert "not retried" in r["message"], r
    assert {n: g.read_cpulist(n) for n in io} == before
    from agentlatd.apply import journal_read  # the snapshot and its log as one
    journal = journal_read.read_json(str(applied.state / "journal.json"))
    assert journal is not None
    flagged = {e["target"]: e for e in journal["entries"] if e["knob"] == "irq.affinity"
               and int(e["target"]) in io}
    assert sorted(flagged) == sorted(str(n) for n in io)
    assert all("managed" in e["flags"] and e["written"] is None for e in flagged.values())


def test_rollback_restores_every_value(applied: Applied, agentlatd: g.Agentlatd) -> None:
    nics = applied.lab.nics
    printed = agentlatd.fork("rollback", "--print", "--state-dir", str(applied.state))
    assert printed.rc == 0, printed
    lines = printed.stdout.splitlines()
    for target, r in applied.results("irq.affinity").items():
        assert f"echo {r['before']} > /proc/irq/{target}/smp_affinity_list" in lines, target
    igb_rx = re.search(r"rx-usecs: (\d+)", applied.before[f"ethtool -c {nics.igb}"])
    # device lines run only while the device is the one journaled (its ifindex):
    # `if [ ... ]; then CMD; else echo ... device replaced ...; fi`
    guarded = [ln.split("; then ", 1)[1].split("; else ", 1)[0] for ln in lines
               if ln.startswith("if [ ") and "; then " in ln]
    assert igb_rx and f"ethtool -C {nics.igb} rx-usecs {igb_rx.group(1)}" in guarded, lines
    assert f"echo 0 > /sys/class/net/{nics.virtio}/threaded" in guarded, lines
    assert sum("kernel-managed, never changed" in ln for ln in lines) == len(nvme_io_irqs())

    ran = agentlatd.run("rollback", "--state-dir", str(applied.state), "--json")
    assert ran.rc == 0, ran
    rep = ran.json()
    assert isinstance(rep, dict)
    print(f"rollback ({ran.secs:.1f} s): {rep['summary']}")
    assert rep["ok"] and rep["journal_removed"], rep
    written = sum(1 for r in applied.report["results"] if r["status"] in WRITTEN)
    assert rep["summary"].get("restored", 0) == written, rep["summary"]
    assert rep["summary"].get("managed", 0) == len(nvme_io_irqs())
    assert g.snapshot_diff(applied.before, g.knob_snapshot(applied.lab.ifnames)) == []
    assert not (applied.state / "journal.json").exists()
