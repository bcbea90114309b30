"""Plan: the pure output of the plan stage. Each change names a knob from the
knob registry (agentlatd.apply.knobs), its target, and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import TargetKey, format_target, parse_target
from agentlatd.model.agent_links import NONE, AgentLinks
from agentlatd.model.roles import Role

# The start of the plan note for a devices.include glob that names no device (the daemon
# logs it as a warning: a typo there silently leaves a NIC untuned).
INCLUDE_MATCHES_NOTHING = "WARNING: devices.include pattern"


# Knobs whose kernel syntax is a hex CPU mask (rps_cpus, xps_cpus: bitmap_parse()).
# People and JSON readers get the CPU list, as `status` prints it; the mask stays only
# where it is the literal value written (the journal, `rollback --print` commands,
# a plan's "desired", which `apply --plan` writes).
CPUMASK_KNOBS = frozenset({KnobName.NET_RPS_CPUS, KnobName.NET_XPS_CPUS})


def human_value(knob: str, value: str) -> str:
    """`value` as people read it: a mask knob's value as a CPU list ("0,32"; "" = no CPU).

    Anything that does not parse as a mask (a "?" for unknown, a clamped note) is kept.
    """
    if knob not in CPUMASK_KNOBS or not value.strip():
        return value
    try:
        return CpuSet.parse_mask(value).to_list()
    except CpuSetError:
        return value


@dataclass(frozen=True, slots=True)
class Change:
    """One write the engine would make.

    knob:    registry name: a KnobName for every knob agentlatd ships
             (KnobName.NET_RPS_CPUS == "net.rps_cpus"), a plain str for a knob
             another module registers
    target:  what the knob is applied to, a typed key (kernel/targets.py):
             IrqTarget(45), QueueTarget("eth0", "rx", 3), TaskTarget(pid, starttime, tid)
    current: the value read at plan time, as the kernel prints it ("" if unknown)
    desired: the value to write, as the kernel accepts it
    reason:  one sentence for a person
    owner:   the uid the write is made for when that uid's rights bound it (a
             non-admin peer's agent: a task knob writes only threads whose real
             and effective uid are this one, checked right before the syscall);
             None for the daemon's own decisions and admins' requests
    inherited_original:
             for a thread born after agentlatd changed its creator (clone() and
             fork() copy affinity, nice and ioprio): the original to journal
             when the target shows `desired` already and has no entry. That
             value is then agentlatd's own, inherited, not the original. The
             engine journals this one, then writes `desired` (the same value,
             with the owner's credentials checked), so the thread is never
             off its CPUs in between. None: the value read is the original.

    target_text is the target's string form (format_target: "45", "eth0/rx-3"),
    made once here: the journal, the knobs' read/write/verify, the results and
    the plan's JSON take it. A key with no string form (a device name with '/')
    names nothing the kernel has: ValueError here, before any write.
    """

    knob: str
    target: TargetKey
    current: str
    desired: str
    reason: str
    owner: int | None = None
    inherited_original: str | None = None
    target_text: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_text", format_target(self.target))

    @classmethod
    def parse(cls, knob: str, target: str, current: str, desired: str, reason: str,
              owner: int | None = None) -> Change:
        """A change whose target is in its string form (a plan file): ValueError when
        `target` is not in `knob`'s syntax, KeyError when agentlatd ships no such knob."""
        return cls(knob, parse_target(knob, target), current, desired, reason, owner)

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the knob instance (the journal is keyed by it)."""
        return (self.knob, self.target_text)


@dataclass(frozen=True, slots=True)
class CpuRole:
    cpu: int
    role: Role
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    completion_cpus: CpuSet
    home_cpus: CpuSet
    roles: tuple[CpuRole, ...]
    changes: tuple[Change, ...]
    advice: tuple[str, ...] = ()  # boot-time advice printed, never applied
    notes: tuple[str, ...] = ()  # e.g. "irqbalance is running: IRQ steering skipped"
    # home CPUs, quietest first by the load of kernel-managed IRQs (which
    # agentlatd cannot move) landing on them: agent placement takes them in
    # this order
    quiet_home_order: tuple[int, ...] = ()
    # the agent links in effect (devices in scope only): local ones have RPS on
    # their agents' home CPUs (plan/rps.py, model/agent_links.py)
    agent_links: AgentLinks = NONE
