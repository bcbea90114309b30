"""proc/<pid>/comm: is irqbalance running, and how agentlatd coexists with it.

Documentation/filesystems/proc.rst (/proc/PID/comm); irqbalance(1).

irqbalance rewrites /proc/irq/N/smp_affinity of every IRQ it has not banned
on each rebalance pass (every 10 s by default; activate.c). Two writers of the
same file fight: agentlatd steers a NIC queue IRQ to a completion CPU, irqbalance
moves it back to the least loaded CPU -- often a home CPU -- and the agent loop
takes the interrupt it was promised it would not.

The options considered:
  1. Ban through irqbalance's own socket (irqbalance >= 1.7 listens on
     /run/irqbalance/irqbalance<pid>.sock; "settings cpus <list>" bans CPUs).
     Rejected as the default: the protocol is undocumented and has changed
     between releases, a ban set over the socket is lost when irqbalance
     restarts (so agentlatd would have to watch for restarts), and it can
     only ban CPUs, not hand single IRQs to agentlatd.
  2. Stop or mask irqbalance. Rejected: agentlatd must not stop services it
     did not start; the SRE owns that decision.
  3. Refuse to steer IRQs while irqbalance runs, say so, and print how to hand
     the IRQs over (IRQBALANCE_BANNED_CPULIST=<home CPUs> in
     /etc/default/irqbalance, or --banirq=N, or stop irqbalance). Every other
     knob (RPS/XPS, NAPI, coalescing, rq_affinity, agent pinning) still
     applies: they are not irqbalance's.

Decision, first: policy.daemon.irqbalance = "refuse" was option 3. Running
agentlatd where irqbalance is the distribution default then protected nothing
from IRQs, so "cooperate" (the default now) takes option 1 after all, with
its costs handled: the CPU ban is a journaled knob (apply/irqbalance_ban.py),
reasserted when irqbalance restarts (a new pid starts without it), restored
on stop, after a crash and by `rollback --print`. The IRQs agentlatd places
(NIC queues, NVMe admin queues of devices in scope) are handed over the same
way: "settings ban irqs" bans them in irqbalance beside its own --banirq list,
so it never writes their affinity, and agentlatd steers them to its
NUMA-local completion plan; irqbalance keeps every other IRQ on the CPUs it
does not ban. The engine steers, under "cooperate", only IRQs banned in
irqbalance by the same batch or the journal (handed_over()), so a stale plan
cannot start the fight. Without a socket (the environment-file fallback,
apply/irqbalance_env.py) the IRQs are handed over as --banirq=N in
IRQBALANCE_ARGS, with the same restart that bans the CPUs, where irqbalance's
unit passes $IRQBALANCE_ARGS; where it does not, they stay irqbalance's,
placed on the CPUs it does not ban.
"refuse" is option 3: the planner leaves irq.affinity out and adds a plan
note; the engine reports an irq.affinity Change while irqbalance runs
"skipped", never written. "ignore" steers anyway and
relies on drift detection: each tick compares smp_affinity_list with what
agentlatd wrote and, per policy.daemon.drift, yields or reasserts (reassert
against irqbalance means a rewrite every ~10 s; the report says so).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from agentlatd.kernel.irqbalance_proto import split_env_value
from agentlatd.kernel.knobnames import KnobName
from agentlatd.sample.procscan import PerProc, list_procs
from agentlatd.sysfs.root import Root


class _Change(Protocol):
    @property
    def knob(self) -> str: ...
    @property
    def desired(self) -> str: ...


class _Entry(Protocol):
    @property
    def knob(self) -> str: ...
    @property
    def written(self) -> str | None: ...

COMM = "irqbalance"


def running(root: Root) -> tuple[int, ...]:
    """Pids whose proc/<pid>/comm is "irqbalance" (sorted; empty when none)."""
    pids: list[int] = []
    for name in root.listdir("proc"):
        if not name.isdigit():
            continue
        # a process may exit between listdir and read: read_optional -> ""
        if root.read_optional(f"proc/{name}/comm") == COMM:
            pids.append(int(name))
    return tuple(sorted(pids))


class Watch:
    """running(root) for a caller asking every tick (the tuner thread's Sampler; owned
    by it): a process seen to be another program is not read again each tick but
    when its pid or proc inode changes, on its first ticks and every few ticks
    (sample/procscan.py has the rules and why); the irqbalance ones each tick.
    The same pids as running() but for a process that becomes irqbalance later in
    its life (exec): seen within procscan.REFRESH_TICKS ticks, not at the next one.
    With 7000 processes that was 7000 comm reads a tick (~90 ms of the thread)."""

    def __init__(self, root: Root) -> None:
        self.root = root
        self.comms: PerProc[str] = PerProc(self._comm, keep=lambda c: c != COMM)
        self.procs: list[tuple[int, int]] | None = None  # the last listing, until taken

    def _comm(self, pid: int) -> str | None:
        # a process may exit between listing and read: read_optional -> "" -> None
        return self.root.read_optional(f"proc/{pid}/comm") or None

    def running(self) -> tuple[int, ...]:
        """Pids whose proc/<pid>/comm is "irqbalance" (sorted; empty when none)."""
        self.procs = list_procs(self.root)
        comms = self.comms.update(self.procs)
        return tuple(pid for pid, c in comms.items() if c == COMM)  # by pid: list_procs'

    def take_procs(self) -> list[tuple[int, int]] | None:
        """The listing running() read (once; None when it has not run since): the
        tick's chain scan takes it rather than list proc/ again (~30 ms with 18000
        processes)."""
        procs, self.procs = self.procs, None
        return procs


def steers_irqs(mode: str, pids: tuple[int, ...]) -> bool:
    """Whether agentlatd writes IRQ affinity under irqbalance mode `mode`."""
    return not pids or mode == "ignore"


def handed_over(changes: Iterable[_Change], entries: Iterable[_Entry]) -> frozenset[str]:
    """IRQs (as irq.affinity targets) banned in irqbalance by agentlatd: in an
    irqbalance.banned_irqs change of this batch or the value it journaled as
    written (over the socket), or the --banirq part of an irqbalance.env_banned_cpus
    one (its environment file). Under "cooperate" only these IRQs are steered
    (apply/irqbalance_ban.py, apply/irqbalance_env.py)."""
    out: set[str] = set()
    for knob, value in [*((c.knob, c.desired) for c in changes),
                        *((e.knob, e.written) for e in entries)]:
        if not value:
            continue
        if knob == KnobName.IRQBALANCE_BANNED_IRQS:
            out.update(value.split())
        elif knob == KnobName.IRQBALANCE_ENV_BANNED_CPUS:
            parts = split_env_value(value)
            if parts is not None and parts[1] is not None:
                out.update(str(i) for i in parts[1])
    return frozenset(out)


def skip_reason(mode: str) -> str:
    """Why an irq.affinity change was not written while irqbalance runs."""
    if mode == "cooperate":
        return ("irqbalance is running and policy daemon.irqbalance = \"cooperate\": "
                "IRQ affinity left to it, with the home CPUs banned in it")
    return ("irqbalance is running and policy daemon.irqbalance = \"refuse\": IRQ affinity "
            "left to it")


def note(mode: str, pids: tuple[int, ...], home_cpus: str = "") -> str:
    """One sentence for the report and the plan notes ("" when irqbalance is not running)."""
    if not pids:
        return ""
    who = f"irqbalance is running (pid {', '.join(str(p) for p in pids)})"
    if mode == "ignore":
        return (f"{who} and policy daemon.irqbalance = \"ignore\": IRQs are steered "
                "anyway; irqbalance will move them back and drift reports it")
    if mode == "cooperate":
        return (f"{who} and policy daemon.irqbalance = \"cooperate\": the home CPUs are "
                "banned in it and it balances every other IRQ over the other CPUs; the IRQs "
                "agentlatd steers are banned in it where it can (irqbalance.banned_irqs over its "
                "socket, or --banirq in its environment file's IRQBALANCE_ARGS) so it never "
                "moves them")
    ban = f"IRQBALANCE_BANNED_CPULIST={home_cpus}" if home_cpus else "IRQBALANCE_BANNED_CPULIST"
    return (f"{who}: IRQ affinity is left to it (policy daemon.irqbalance = \"refuse\"); "
            f"other knobs still apply. To let agentlatd steer IRQs, set {ban} in "
            "/etc/default/irqbalance or stop irqbalance")
