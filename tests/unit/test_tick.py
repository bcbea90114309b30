"""The tick in process (agentlatd/tick.py, agentlatd/tuner.py): a copy of a recorded tree,
an injected clock, no root, no sleeps, no daemon subprocess.

The tuner's writes land in the tree copy (a recorded tree is files: the engine writes
them as it would the kernel's); a FaultRoot answers chosen writes with the errno a
kernel gives, as tests/apply/applyhelpers.py does.
"""

from __future__ import annotations

import errno
import json
import pathlib
import shutil
from collections.abc import Callable

from agentlatd import knobset
from agentlatd import policy as policy_mod
from agentlatd.apply import irqbalance_env as ie
from agentlatd.apply.engine import CHANGED, MANAGED, UNSUPPORTED, Engine
from agentlatd.apply.irqbalance_env import IrqbalanceEnvKnob
from agentlatd.capture import PREVIOUS_SAMPLE, SAMPLE_INTERVAL_KEY, write_capture
from agentlatd.commands import apply as apply_cmd
from agentlatd.cpuset import CpuSet
from agentlatd.daemon import Daemon
from agentlatd.errors import KernelError
from agentlatd.kernel.errnos import ErrClass
from agentlatd.policy import Policy
from agentlatd.sysfs.root import Root
from agentlatd.tick import (
    MACHINE_TTL,
    TickInput,
    plan_tick,
    sample_once,
)
from agentlatd.tuner import Tuner

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "machines"
SMALL = "cloud-vm-small"  # 4 vCPUs (cpu3 offline), virtio-net eth0, NVMe


def copy_tree(tmp: pathlib.Path, name: str = SMALL) -> pathlib.Path:
    out = tmp / name
    shutil.copytree(FIXTURES / name, out, symlinks=True)
    return out


class Clock:
    """A monotonic clock that moves only when asked (and 1 ms per reading)."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.on_read: Callable[[int], None] | None = None
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        if self.on_read is not None:
            self.on_read(self.reads)
        self.t += 0.001
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class FaultRoot(Root):
    """A Root over a writable tree whose chosen writes fail with an errno."""

    __slots__ = ("attempts", "faults")

    def __init__(self, tree: pathlib.Path, faults: dict[str, int]) -> None:
        super().__init__(str(tree))
        self.faults = faults
        self.attempts: dict[str, int] = {}

    def write_value(self, rel: str, value: str, context: str | None = None) -> None:
        self.attempts[rel] = self.attempts.get(rel, 0) + 1
        if rel in self.faults:
            raise KernelError("write", rel, self.faults[rel], context, value)
        super().write_value(rel, value, context)


class FullCpuRoot(FaultRoot):
    """A FaultRoot whose CPUs in `full` have no interrupt vector left: an IRQ affinity
    write naming only those CPUs fails with ENOSPC (irq_matrix_alloc, kernel/irq/matrix.c,
    finds no free vector on any CPU of the mask)."""

    __slots__ = ("full",)

    def __init__(self, tree: pathlib.Path, full: CpuSet) -> None:
        super().__init__(tree, {})
        self.full = full

    def write_value(self, rel: str, value: str, context: str | None = None) -> None:
        if rel.startswith("proc/irq/") and CpuSet.parse_list(value) <= self.full:
            self.attempts[rel] = self.attempts.get(rel, 0) + 1
            raise KernelError("write", rel, errno.ENOSPC, context, value)
        super().write_value(rel, value, context)


def tuner(root: Root, tmp: pathlib.Path, pol: Policy | None = None, *,
          tune: bool = True) -> tuple[Tuner, Clock]:
    pol = pol or policy_mod.default()
    clock = Clock()
    eng = Engine(root, str(tmp / "state"), policy=pol)
    return Tuner(root, eng, TickInput(pol, tune_devices=tune), clock=clock), clock


def stages(st: object) -> list[str]:
    return [t.stage for t in getattr(st, "timings", ())]


def keys(st: object, status: str | None = None) -> set[tuple[str, str]]:
    rep = getattr(st, "report", None)
    assert rep is not None
    return {(r.knob, r.target) for r in rep.results if status is None or r.status == status}


# -- one tick everywhere ----------------------------------------------------------------
def test_plan_root_is_the_daemons_first_tick(tmp_path: pathlib.Path) -> None:
    tree = copy_tree(tmp_path)
    pol = policy_mod.default()
    cli = plan_tick(sample_once(Root(str(tree)), pol), pol)
    t, _ = tuner(Root(str(tree)), tmp_path, pol, tune=False)
    st = t.step()
    assert cli.plan is not None and st.plan is not None
    assert st.plan == cli.plan
    assert st.error == ""


def test_stage_table_times_every_stage_and_rescans_only_when_due(tmp_path: pathlib.Path) -> None:
    t, clock = tuner(Root(str(copy_tree(tmp_path))), tmp_path, tune=False)
    first = t.step()
    assert stages(first) == ["counters", "machine", "links", "irqbalance", "plan", "chain"]
    assert all(x.ok and x.seconds > 0 for x in first.timings)
    assert first.rates is None  # one counter sample so far
    second = t.step()
    assert stages(second) == ["counters", "links", "irqbalance", "plan", "chain"]
    assert second.rates is not None and second.seq == 2
    clock.advance(MACHINE_TTL + 1)
    assert "machine" in stages(t.step())


def test_a_failing_sampler_is_a_failed_stage_not_a_stopped_tick(tmp_path: pathlib.Path) -> None:
    tree = copy_tree(tmp_path)
    (tree / "proc" / "stat").unlink()
    t, _ = tuner(Root(str(tree)), tmp_path, tune=False)
    st = t.step()
    row = next(x for x in st.timings if x.stage == "counters")
    assert not row.ok
    assert "sampling failed" in st.error
    assert st.plan is not None and st.plan.changes  # the machine still planned


# -- apply feedback feeds the next plan -------------------------------------------------
def test_unsupported_knob_is_not_planned_again_every_tick(tmp_path: pathlib.Path) -> None:
    """net.coalesce acts on the live kernel only: on a recorded tree the engine answers
    "unsupported". The next tick held it back instead of planning it again (and
    reporting the same refusal) every tick until a rescan."""
    t, clock = tuner(Root(str(copy_tree(tmp_path))), tmp_path)
    coalesce = ("net.coalesce", "eth0")
    first = t.step()
    assert coalesce in keys(first, UNSUPPORTED)
    second = t.step()
    assert coalesce not in keys(second)
    assert [h.key for h in second.held] == [coalesce]
    assert second.plan is not None and coalesce in {c.key for c in second.plan.changes}
    clock.advance(MACHINE_TTL + 1)  # a rescan: a driver or the kernel may have changed
    third = t.step()
    assert coalesce in keys(third, UNSUPPORTED)


def test_managed_irq_is_not_planned_again_every_tick(tmp_path: pathlib.Path) -> None:
    """EIO on smp_affinity: a kernel-managed IRQ. It is not planned (nor written) again."""
    path = "proc/irq/26/smp_affinity_list"
    root = FaultRoot(copy_tree(tmp_path), {path: errno.EIO})
    t, _ = tuner(root, tmp_path)
    first = t.step()
    assert ("irq.affinity", "26") in keys(first, MANAGED)
    for _ in range(3):
        st = t.step()
        assert ("irq.affinity", "26") not in keys(st)
        assert ("irq.affinity", "26") in {h.key for h in st.held}
    assert root.attempts[path] == 1


def test_transient_errors_are_tried_again_at_the_next_tick(tmp_path: pathlib.Path) -> None:
    """EBUSY (an affinity change in progress) is not held: irqbalance's activate.c
    retries it."""
    path = "proc/irq/26/smp_affinity_list"
    root = FaultRoot(copy_tree(tmp_path), {path: errno.EBUSY})
    t, _ = tuner(root, tmp_path)
    t.step()
    st = t.step()
    assert ("irq.affinity", "26") in keys(st)
    assert not st.held or ("irq.affinity", "26") not in {h.key for h in st.held}
    assert root.attempts[path] == 2


def test_enospc_steers_the_next_plan_away_from_the_full_cpu(tmp_path: pathlib.Path) -> None:
    """ENOSPC on smp_affinity: CPU 0 has no interrupt vector left. The next tick does not
    plan the same write again (irqbalance's activate.c: a negative slots_left on the CPU):
    eth0's queue IRQ 31 goes to the other completion CPU, 1, and a note says why; a
    rescan forgets it and tries CPU 0 again (vectors may have been freed)."""
    path = "proc/irq/31/smp_affinity_list"
    tree = copy_tree(tmp_path)
    root = FullCpuRoot(tree, CpuSet({0}))
    t, clock = tuner(root, tmp_path)
    first = t.step()
    assert first.report is not None
    r31 = next(r for r in first.report.results if r.target == "31")
    assert (r31.errclass, r31.desired) == (ErrClass.NO_SPACE, "0")
    second = t.step()
    assert second.plan is not None
    c31 = next(c for c in second.plan.changes if c.key == ("irq.affinity", "31"))
    assert c31.desired == "1"  # not "0" again
    assert t.sampler.feedback.vector_full == CpuSet({0})
    assert "ENOSPC" in c31.reason
    assert any("IRQ(s) 31, 32 go to the other completion CPU(s) 1" in n for n in second.plan.notes)
    assert root.attempts[path] == 2  # the second write asked for CPU 1, and took
    assert (tree / path).read_text().strip() == "1"
    t.step()
    assert root.attempts[path] == 2  # in place on CPU 1: not written again
    clock.advance(MACHINE_TTL + 1)  # a rescan forgets the full CPUs: CPU 0 is tried again
    fourth = t.step()
    assert fourth.plan is not None
    assert ("irq.affinity", "31", "0") in {(*c.key, c.desired) for c in fourth.plan.changes}
    assert root.attempts[path] == 3
    assert t.sampler.feedback.vector_full == CpuSet({0})  # still full: learnt again


def test_enospc_on_every_completion_cpu_leaves_the_irq_where_it_is(
        tmp_path: pathlib.Path) -> None:
    """The config IRQ 26 (0-3 -> 0-1) fails with ENOSPC: both completion CPUs are full,
    so the next plan leaves it where it is, says so, and writes it no more."""
    path = "proc/irq/26/smp_affinity_list"
    root = FaultRoot(copy_tree(tmp_path), {path: errno.ENOSPC})
    t, _ = tuner(root, tmp_path)
    t.step()
    for _ in range(2):
        st = t.step()
        assert st.plan is not None
        assert ("irq.affinity", "26") not in {c.key for c in st.plan.changes}
        note = next(n for n in st.plan.notes if n.startswith("eth0: every completion CPU"))
        assert "(0-1) has no interrupt vector left" in note and "IRQ(s) 26," in note
    assert root.attempts[path] == 1


# -- reload between ticks ---------------------------------------------------------------
def _completion(cpus: str) -> Policy:
    return policy_mod.loads(f'[cpus]\ncompletion = "{cpus}"\n')


def test_reload_during_a_tick_takes_effect_at_the_next_one(tmp_path: pathlib.Path) -> None:
    old, new = _completion("0"), _completion("1")
    t, clock = tuner(Root(str(copy_tree(tmp_path))), tmp_path, old)
    # the main thread swaps the input while the tick samples (its 3rd clock reading)
    clock.on_read = lambda n: t.set_input(TickInput(new)) if n == 3 else None
    during = t.step()
    clock.on_read = None
    assert during.plan is not None and during.plan.completion_cpus == CpuSet({0})
    assert t.engine.policy is old  # the apply of that tick ran under the old policy
    after = t.step()
    assert after.plan is not None and after.plan.completion_cpus == CpuSet({1})
    assert "machine" in stages(after)  # a new policy rescans the machine
    assert t.engine.policy is new


def test_daemon_reload_mid_tick_never_mixes_two_policies(tmp_path: pathlib.Path) -> None:
    tree = copy_tree(tmp_path)
    cfg = tmp_path / "agentlatd.toml"
    cfg.write_text('[cpus]\ncompletion = "0"\n')
    d = Daemon(policy_mod.load(str(cfg)), config_path=str(cfg), root=str(tree),
               state_dir=str(tmp_path / "state"), socket_path=str(tmp_path / "sock"),
               tune_devices=False)
    clock = Clock()
    d.tuner.clock = d.tuner.sampler.clock = clock

    def reload_now(n: int) -> None:
        if n == 3:
            cfg.write_text('[cpus]\ncompletion = "1"\n')
            assert d.reload()

    clock.on_read = reload_now
    during = d.tuner.step()
    clock.on_read = None
    assert during.plan is not None and during.plan.completion_cpus == CpuSet({0})
    assert d.policy.cpus.completion == "1"
    after = d.tuner.step()
    assert after.plan is not None and after.plan.completion_cpus == CpuSet({1})
    d.engine.close()


# -- captures: the daemon's tick with rates -----------------------------------------------
def test_plan_root_has_rates_when_the_capture_holds_two_samples(tmp_path: pathlib.Path) -> None:
    tree = copy_tree(tmp_path)
    pol = policy_mod.default()
    assert sample_once(Root(str(tree)), pol).rates is None  # an old one-sample capture
    prev = tree / PREVIOUS_SAMPLE / "proc"
    prev.mkdir(parents=True)
    for name in ("stat", "softirqs", "interrupts"):
        shutil.copy(tree / "proc" / name, prev / name)
    # one second later CPU 0 ran 1000 more NET_RX softirqs
    lines = (tree / "proc" / "softirqs").read_text().splitlines(keepends=True)
    for i, ln in enumerate(lines):
        if ln.split() and ln.split()[0] == "NET_RX:":
            parts = ln.split()
            parts[1] = str(int(parts[1]) + 1000)
            lines[i] = "    " + " ".join(parts) + "\n"
    (tree / "proc" / "softirqs").write_text("".join(lines))
    man = json.loads((tree / "capture.json").read_text())
    man[SAMPLE_INTERVAL_KEY] = 1.0
    (tree / "capture.json").write_text(json.dumps(man))
    snap = sample_once(Root(str(tree)), pol)
    assert snap.rates is not None
    assert snap.rates.softirq_rate["NET_RX"][0] == 1000.0


def test_capture_of_this_host_replays_the_daemons_tick_with_rates(
        tmp_path: pathlib.Path) -> None:
    """capture reads the counter files twice (an injected clock and sleep: no wait);
    plan --root on it then has rates, and a recapture keeps both samples."""
    readings = iter([100.0, 101.0])
    out = tmp_path / "host"
    man = write_capture(Root("/"), str(out), sleep=lambda _s: None,
                        clock=lambda: next(readings))
    assert man[SAMPLE_INTERVAL_KEY] == 1.0
    assert (out / PREVIOUS_SAMPLE / "proc" / "softirqs").is_file()
    pol = policy_mod.default()
    snap = sample_once(Root(str(out)), pol)
    assert snap.rates is not None and snap.rates.interval_s == 1.0
    copy = tmp_path / "copy"
    man2 = write_capture(Root(str(out)), str(copy))
    assert man2[SAMPLE_INTERVAL_KEY] == 1.0
    assert sample_once(Root(str(copy)), pol).rates == snap.rates


# -- CPU hotplug: the kernel's own re-spread is not drift ---------------------------------
def _cpuhp(tree: pathlib.Path, states: dict[int, tuple[int, int]]) -> None:
    """cpuN/hotplug/{state,target} as kernel/cpu.c prints them (236: CPUHP_ONLINE on 6.12)."""
    for cpu, (state, target) in states.items():
        d = tree / "sys" / "devices" / "system" / "cpu" / f"cpu{cpu}" / "hotplug"
        d.mkdir(parents=True, exist_ok=True)
        (d / "state").write_text(f"{state}\n")
        (d / "target").write_text(f"{target}\n")


def _cpu3_coming_online(tmp: pathlib.Path) -> tuple[pathlib.Path, Tuner, Clock, str, str]:
    """Two ticks on a tree whose CPUs' hotplug is at rest, then CPU 3 comes online: its
    /proc/stat line appears, its callbacks have not run yet (state 100, target 236).
    The tree, the tuner, its clock, and a steered IRQ with the value agentlatd wrote."""
    tree = copy_tree(tmp)
    _cpuhp(tree, {c: (236, 236) for c in range(4)})
    t, clock = tuner(Root(str(tree)), tmp)
    t.step()
    irq, want = next((e.target, e.written) for e in t.engine.entries()
                     if e.knob == "irq.affinity" and e.written)
    t.step()  # a tick with rates and no hotplug
    stat = tree / "proc" / "stat"
    lines = stat.read_text().splitlines(keepends=True)
    at = next(i for i, ln in enumerate(lines) if ln.startswith("cpu2 "))
    lines.insert(at + 1, "cpu3 1000 0 1000 50000 0 0 0 0 0 0\n")
    stat.write_text("".join(lines))
    _cpuhp(tree, {3: (100, 236)})
    clock.advance(1.0)
    return tree, t, clock, irq, want


def test_hotplug_respread_after_the_column_appears_is_not_yielded(tmp_path: pathlib.Path) -> None:
    """A CPU coming online shows in /proc/stat before its bring-up callbacks run, and
    virtio_net re-spreads its queues' IRQ affinity in one of them (virtnet_cpu_online):
    under TCG that rewrite landed ticks after the tick that saw the new column, and was
    yielded as another writer's for good (VM tier, test_hotplug_online_again_every_nic_irq_
    and_mask_on_completion_cpus). While cpuN/hotplug/state != target it is the kernel's."""
    tree, t, clock, irq, want = _cpu3_coming_online(tmp_path)
    seen = t.step()
    assert seen.drift == () and "cpuhp" in stages(seen)
    # the driver's re-spread lands two slow ticks later, while the callbacks still run
    respread = "3" if want != "3" else "0"
    (tree / "proc" / "irq" / irq / "smp_affinity_list").write_text(respread + "\n")
    (tree / "proc" / "irq" / irq / "effective_affinity_list").write_text(respread + "\n")
    clock.advance(3.0)
    t.step()
    clock.advance(3.0)
    during = t.step()
    assert during.drift == ()
    # agentlatd's value is back at once, not reported as another writer's drift
    assert (tree / "proc" / "irq" / irq / "smp_affinity_list").read_text().strip() == want
    _cpuhp(tree, {3: (236, 236)})  # bring-up done
    clock.advance(1.0)
    after = t.step()
    assert after.drift == () and "cpuhp" in stages(after)
    assert "cpuhp" not in stages(t.step())  # nothing read once the hotplug is over
    entry = next(e for e in t.engine.entries() if e.key == ("irq.affinity", irq))
    assert not entry.flags, entry
    assert (tree / "proc" / "irq" / irq / "smp_affinity_list").read_text().strip() == want


def test_hotplug_that_never_finishes_lets_drift_be_judged_again(tmp_path: pathlib.Path) -> None:
    tree, t, clock, irq, want = _cpu3_coming_online(tmp_path)
    t.step()
    clock.advance(61.0)  # past CPUHP_LIMIT_S: stuck, not running; one last tick puts back
    assert "cpuhp" in stages(t.step())
    other = "3" if want != "3" else "0"
    (tree / "proc" / "irq" / irq / "smp_affinity_list").write_text(other + "\n")
    (tree / "proc" / "irq" / irq / "effective_affinity_list").write_text(other + "\n")
    st = t.step()  # another writer now: yielded as always
    assert "cpuhp" not in stages(st)
    assert [(d.knob, d.target, d.action) for d in st.drift] == [("irq.affinity", irq, "yielded")]


# -- the followup stage: what the first writes made the plan miss ------------------------
IB_UNIT = ("[Service]\nEnvironmentFile=-/etc/default/irqbalance\n"
           "ExecStart=/usr/sbin/irqbalance --foreground $IRQBALANCE_ARGS\n")  # Debian's


def _irqbalance_without_socket(tree: pathlib.Path) -> None:
    """An irqbalance service (pid 4242) with no socket: agentlatd bans in its
    environment file (apply/irqbalance_env.py; tests/apply/test_irqbalance_env.py
    has the real Debian files)."""
    for rel, text in (("proc/4242/comm", "irqbalance\n"),
                      ("proc/4242/cgroup", "0::/system.slice/irqbalance.service\n"),
                      ("lib/systemd/system/irqbalance.service", IB_UNIT),
                      ("etc/default/irqbalance", "#IRQBALANCE_ARGS=\n")):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)


class LastPassBeforeTheBan(IrqbalanceEnvKnob):
    """The environment-file ban, written after the outgoing irqbalance's last pass:
    it moved `irq`, in place when the tick sampled, onto `cpu` before the restart
    that makes it read the ban."""

    def __init__(self, tree: pathlib.Path, irq: int, cpu: int) -> None:
        super().__init__()
        self.tree, self.irq, self.cpu = tree, irq, cpu

    def write(self, root: Root, target: str, value: str) -> None:
        super().write(root, target, value)
        # smp_affinity_list only: a tree's effective_affinity_list does not follow the
        # engine's write back as the kernel's does, and would read as a clamp
        (self.tree / "proc" / "irq" / str(self.irq) / "smp_affinity_list").write_text(
            f"{self.cpu}\n")


def _affinity(tree: pathlib.Path, irq: int) -> str:
    return (tree / "proc" / "irq" / str(irq) / "smp_affinity_list").read_text().strip()


def test_irqbalance_moving_an_irq_before_its_ban_is_steered_back_in_the_same_tick(
        tmp_path: pathlib.Path) -> None:
    """The bug pinned (service test, CI): agentlatd's first tick sampled eth0's queue IRQs
    in place, then irqbalance (not yet restarted with the --banirq list) moved three of
    them onto a home CPU. The plan had no change for them, the Machine is read again
    only every MACHINE_TTL, and the drift check knows only IRQs agentlatd wrote: they
    stayed on the home CPU after READY=1. The followup stage reads the IRQs again after
    the ban and steers them back in the same tick."""
    tree = copy_tree(tmp_path)
    _irqbalance_without_socket(tree)
    irq = 29  # virtio1-input.1: its completion CPU is 1, where it already is
    assert _affinity(tree, irq) == "1"
    pol = policy_mod.default()
    knobs = {**knobset.REGISTRY, ie.NAME: LastPassBeforeTheBan(tree, irq, 2)}
    root = Root(str(tree))
    t = Tuner(root, Engine(root, str(tmp_path / "state"), policy=pol, knobs=knobs),
              TickInput(pol), clock=Clock())
    first = t.step()
    assert first.plan is not None and first.layout.home == CpuSet({2})
    assert ("irq.affinity", str(irq)) not in {c.key for c in first.plan.changes}
    assert (ie.NAME, "/etc/default/irqbalance") in keys(first, CHANGED)
    ours = [r for r in first.report.results if (r.knob, r.target) == ("irq.affinity", str(irq))]
    assert [(r.status, r.before, r.desired) for r in ours] == [(CHANGED, "2", "1")]
    assert _affinity(tree, irq) == "1"
    assert "followup" in stages(first)
    # journaled, so a rollback puts back what was there, and the next tick (a rescan:
    # it sees the followup's write) finds nothing to do and no drift
    assert ("irq.affinity", str(irq)) in {e.key for e in t.engine.entries()}
    second = t.step()
    assert "machine" in stages(second) and second.drift == ()
    assert keys(second, CHANGED) == set()


def test_a_tick_whose_writes_call_for_no_followup_has_no_followup_stage(
        tmp_path: pathlib.Path) -> None:
    t, _ = tuner(Root(str(copy_tree(tmp_path))), tmp_path)  # no irqbalance, no threaded NAPI
    first = t.step()
    assert keys(first, CHANGED) and "followup" not in stages(first)


def test_agentlatd_apply_steers_back_an_irq_irqbalance_moved_before_its_ban(
        tmp_path: pathlib.Path) -> None:
    """The same followup in the one-shot `agentlatd apply` (commands/apply.py)."""
    tree = copy_tree(tmp_path)
    _irqbalance_without_socket(tree)
    pol = policy_mod.default()
    root = Root(str(tree))
    knobs = {**knobset.REGISTRY, ie.NAME: LastPassBeforeTheBan(tree, 29, 2)}
    with Engine(root, str(tmp_path / "state"), policy=pol, knobs=knobs) as eng:
        changes, _notes = apply_cmd.plan_now(root, pol, eng)
        report = apply_cmd._followup(root, pol, eng, eng.apply(changes))
    assert _affinity(tree, 29) == "1"
    assert [(r.status, r.before) for r in report.results
            if (r.knob, r.target) == ("irq.affinity", "29")] == [(CHANGED, "2")]


def test_a_followup_scan_that_fails_is_an_error_and_the_next_tick_steers_back(
        tmp_path: pathlib.Path) -> None:
    """The Machine cannot be read again right after the ban (here: proc/interrupts gone
    for a moment): the followup is a failed stage, not a stopped tick and not a second
    pass on the stale Machine; the next tick rescans and puts the IRQ back."""
    tree = copy_tree(tmp_path)
    _irqbalance_without_socket(tree)
    interrupts = tree / "proc" / "interrupts"
    saved = interrupts.read_bytes()

    class BanThenNoInterrupts(LastPassBeforeTheBan):
        def write(self, root: Root, target: str, value: str) -> None:
            super().write(root, target, value)
            interrupts.unlink()

    pol = policy_mod.default()
    knobs = {**knobset.REGISTRY, ie.NAME: BanThenNoInterrupts(tree, 29, 2)}
    root = Root(str(tree))
    t = Tuner(root, Engine(root, str(tmp_path / "state"), policy=pol, knobs=knobs),
              TickInput(pol), clock=Clock())
    first = t.step()
    assert "followup machine scan failed" in first.error
    assert not next(x for x in first.timings if x.stage == "followup").ok
    assert ("irq.affinity", "29") not in keys(first)
    assert _affinity(tree, 29) == "2"
    interrupts.write_bytes(saved)
    second = t.step()
    assert "machine" in stages(second)
    assert ("irq.affinity", "29") in keys(second, CHANGED)
    assert _affinity(tree, 29) == "1"
