"""proc/irq/N/smp_affinity_list: device IRQs to completion CPUs.

Kernel doc: Documentation/core-api/irq/irq-affinity.rst; managed affinity:
kernel/irq/affinity.c (irq_create_affinity_masks) and kernel/irq/manage.c
(irq_set_affinity on an IRQD_AFFINITY_MANAGED line fails with EIO from
write_irq_affinity in kernel/irq/proc.c).

Plan (knob "irq.affinity", target "<irq>", desired cpulist):
  - NIC queue IRQs -> the completion CPUs of the NIC's NUMA node, one queue
    per completion CPU: queue of rank i -> completion CPU i mod n. rx-3 and
    tx-3 with IRQs of their own share a CPU (one NAPI pair);
  - other NIC IRQs (config, async, link) and the NVMe admin queue -> all
    completion CPUs of the node;
  - kernel-managed IRQs (Irq.managed; NVMe I/O queues, some NIC drivers) are
    never planned: a write fails with EIO (EPERM since 6.12). Boot-time advice and a home-CPU
    order (quietest first) work around them instead;
  - completion CPUs whose interrupt vector space is full (`vector_full`: a
    write to them failed with ENOSPC, irq_matrix_alloc in kernel/irq/matrix.c)
    take no IRQ that must move: it goes to the device's other completion CPUs,
    or stays where it is when every one is full (irqbalance's activate.c sets
    slots_left negative on such a CPU and placement.c skips it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentlatd.cpuset import CpuSet
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import IrqTarget
from agentlatd.model.machine import Device, Irq, Machine, Rates
from agentlatd.plan.changes import Change
from agentlatd.plan.common import node_phrase, ordinals, queue_number
from agentlatd.plan.partition import Partition

KNOB = KnobName.IRQ_AFFINITY
NO_CPUS = CpuSet()  # no CPU is out of interrupt vectors (the default: no ENOSPC seen)


@dataclass(frozen=True, slots=True)
class IrqPlan:
    changes: tuple[Change, ...]
    managed: tuple[Irq, ...]  # kernel-managed IRQs of devices in scope, by number
    # every IRQ agentlatd places, changed or already where it wants it (the set
    # handed over from irqbalance must not shrink once the IRQs are in place)
    steered: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()  # IRQs moved off, or left on, vector-full CPUs


def _is_admin(d: Device, irq: Irq) -> bool:
    if irq.queue == "admin":
        return True
    # nvme0q0 is the admin queue (drivers/nvme/host/pci.c: queue 0 = admin)
    return d.kind == "nvme" and irq.queue is not None and queue_number(irq.queue) == 0


def _device_irqs(machine: Machine, d: Device) -> list[Irq]:
    by_num = {i.irq: i for i in machine.irqs}
    return [by_num[n] for n in sorted(set(d.irqs)) if n in by_num]


def plan_irq_affinity(machine: Machine, devices: tuple[Device, ...],
                      part: Partition, vector_full: CpuSet = NO_CPUS) -> IrqPlan:
    """Changes for the IRQs of NICs and NVMe controllers in `devices`.

    vector_full: CPUs the kernel found out of interrupt vectors at an earlier
    apply (ENOSPC). An IRQ already in place keeps its vector and stays; one that
    must move is never aimed at them."""
    changes: list[Change] = []
    managed: list[Irq] = []
    steered: list[int] = []
    notes: list[str] = []
    text: dict[CpuSet, str] = {}  # cpulists repeat ("0-255"): print each once

    def as_list(cpus: CpuSet) -> str:
        if cpus not in text:
            text[cpus] = cpus.to_list()
        return text[cpus]

    for d in devices:
        if d.kind not in ("net", "nvme"):
            continue
        irqs = _device_irqs(machine, d)
        managed += [i for i in irqs if i.managed]
        free = [i for i in irqs if not i.managed]
        if not part.steering:
            continue
        cpus = part.completion_for(d.numa_node)
        order = part.spread_order(cpus)
        open_cpus = cpus - vector_full
        open_order = part.spread_order(open_cpus)
        where = node_phrase(d.numa_node, cpus, d.numa_node in part.by_node)
        queued = [i for i in free if not _is_admin(d, i) and queue_number(i.queue) is not None]
        rank = ordinals(queue_number(i.queue) or 0 for i in queued)
        queued_nums = {i.irq for i in queued}
        moved: list[int] = []
        stuck: list[int] = []
        for irq in free:
            if irq.irq in queued_nums:
                r = rank[queue_number(irq.queue) or 0]
                want = CpuSet({order[r % len(order)]})
                reason = (f"{d.name} queue IRQs spread round-robin, one per completion "
                          f"CPU ({where}), none on a home CPU")
            else:
                r = -1
                want = cpus
                what = "admin queue" if _is_admin(d, irq) else (irq.queue or "non-queue")
                reason = (f"{d.name} {what} IRQ ({irq.name}) to the {where}, "
                          "off the home CPUs")
            steered.append(irq.irq)
            if irq.smp_affinity == want:
                continue
            # a mask with one CPU that has room is fine: the kernel allocates the
            # vector there (irq_matrix_alloc picks among the mask's CPUs)
            if want <= vector_full:
                if open_order:
                    want = CpuSet({open_order[r % len(open_order)]}) if r >= 0 else open_cpus
                else:
                    stuck.append(irq.irq)
                    continue
                reason += f"; CPU(s) {vector_full & cpus} have no interrupt vector left (ENOSPC)"
                moved.append(irq.irq)
            changes.append(Change(KNOB, IrqTarget(irq.irq), as_list(irq.smp_affinity),
                                  as_list(want), reason))
        full = vector_full & cpus
        if moved:
            notes.append(f"{d.name}: completion CPU(s) {full} have no interrupt vector left "
                         f"(ENOSPC at an earlier apply): IRQ(s) {', '.join(map(str, moved))} go "
                         f"to the other completion CPU(s) {open_cpus} until the next rescan.")
        if stuck:
            notes.append(f"{d.name}: every completion CPU ({full}) has no interrupt vector left "
                         f"(ENOSPC at an earlier apply): IRQ(s) {', '.join(map(str, stuck))} stay "
                         "where they are until the next rescan.")
    return IrqPlan(tuple(changes), tuple(sorted(managed, key=lambda i: i.irq)),
                   tuple(sorted(steered)), tuple(notes))


def _lands_on(irq: Irq) -> CpuSet:
    return irq.effective_affinity if irq.effective_affinity else irq.smp_affinity


FIXED_NOTABLE = 0.01  # share of all device interrupts before fixed IRQs count (fixed_irq_load)


def fixed_irqs(machine: Machine, devices: tuple[Device, ...], steered: bool) -> frozenset[int]:
    """IRQs agentlatd leaves where they are and that land on a CPU of their own
    whatever is submitted where:
      - those of devices out of scope and of no known device (ACPI, a serial
        port), and, when IRQ steering is off (tuning.irq_affinity = false,
        irqbalance refused), those of the devices in scope too;
      - kernel-managed IRQs whose mask is wider than the core they land on:
        fewer queues than cores (a one-queue virtio-blk disk: mask 0-1,
        effective 1), so the completions of every CPU of the mask hit one CPU.
    Not: a managed IRQ aimed at its own core (a per-CPU or per-core NVMe
    queue fires for I/O its CPUs submitted: the submitter's own load, which no
    choice of CPUs avoids; quiet_home_order ranks home CPUs by it), and an IRQ that
    lands on every online CPU (a per-CPU timer such as arm64's arch_timer)."""
    mine: set[int] = set()
    if steered:
        for d in devices:
            if d.kind in ("net", "nvme"):
                mine.update(d.irqs)
    online = machine.topology.online
    core: dict[int, CpuSet] = {c.cpu: c.smt_siblings | {c.cpu} for c in machine.topology.cpus}
    out: set[int] = set()
    for i in machine.irqs:
        on = _lands_on(i)
        if not on or online <= on:
            continue
        if i.managed:
            cores = CpuSet(x for c in on for x in core.get(c, CpuSet({c})))
            if i.smp_affinity - cores:
                out.add(i.irq)
        elif i.irq not in mine:
            out.add(i.irq)
    return frozenset(out)


def fixed_irq_load(machine: Machine, fixed: frozenset[int]) -> dict[int, float]:
    """cpu -> interrupts since boot of the `fixed` IRQs, each IRQ's total counted
    on the CPU(s) it lands on now (effective affinity): where that load keeps
    landing, weighted by how busy the IRQ has been. Counts since boot, not
    rates, so that the partition built on it does not change tick to tick.
    Empty when no CPU's share reaches FIXED_NOTABLE of all the device
    interrupts since boot: a SATA boot disk's 17k interrupts beside 10^9 NVMe
    and NIC ones must not decide which cores absorb completions."""
    out: dict[int, float] = {}
    for irq in machine.irqs:
        if irq.irq not in fixed or not irq.total:
            continue
        on = _lands_on(irq)
        for c in on:
            out[c] = out.get(c, 0.0) + irq.total / len(on)
    everything = sum(i.total for i in machine.irqs)
    if not out or max(out.values()) < FIXED_NOTABLE * everything:
        return {}
    return out


def quiet_home_order(machine: Machine, home: CpuSet,
                     rates: Rates | None = None, fixed: frozenset[int] = frozenset()) -> tuple[int, ...]:
    """Home CPUs, quietest first, by the load of IRQs agentlatd cannot or does not move.

    agentlatd cannot move managed IRQs (NVMe I/O queues are spread one per CPU
    or CPU group) and leaves the `fixed` ones (fixed_irqs) in place, so agents
    go first to home CPUs those IRQs keep quiet. Load: interrupts/s from
    `rates` when given, else the counts since boot (/proc/interrupts columns);
    ties: fewer such IRQs aimed at the CPU, then the lower CPU number.
    """
    load: dict[int, float] = dict.fromkeys(home, 0.0)
    count: dict[int, int] = dict.fromkeys(home, 0)
    for irq in machine.irqs:
        if not (irq.managed or irq.irq in fixed):
            continue
        per: Mapping[int, float] | Mapping[int, int] = (
            rates.irq_rate.get(irq.irq, {}) if rates is not None else irq.per_cpu)
        for c, v in per.items():
            if c in load:
                load[c] += float(v)
        for c in _lands_on(irq):
            if c in count:
                count[c] += 1
    return tuple(sorted(home, key=lambda c: (load[c], count[c], c)))


def managed_notes(managed: tuple[Irq, ...], part: Partition) -> list[str]:
    if not managed:
        return []
    devs = sorted({i.device or "?" for i in managed})
    on: set[int] = set()
    for i in managed:
        on.update(_lands_on(i))
    hit = CpuSet(on) & part.home
    s = (f"{len(managed)} kernel-managed IRQ(s) of {', '.join(devs)} stay where the kernel "
         "put them (a write fails with EIO, or EPERM since 6.12)")
    if len(hit) == 1:
        s += f"; home CPU {hit} takes some of them, so agents go to the quietest first."
    elif hit:
        s += f"; home CPUs {hit} take some of them, so agents go to the quietest first."
    else:
        s += "; none of them lands on a home CPU."
    return [s]


def managed_advice(managed: tuple[Irq, ...], part: Partition) -> list[str]:
    """Boot-time parameter for managed IRQs (printed, never applied).

    isolcpus=managed_irq (kernel-parameters.txt) is best effort: the kernel
    only steers a managed IRQ off the isolated CPUs when the queue's CPU mask
    also holds a housekeeping CPU (irq_do_set_affinity, kernel/irq/manage.c).
    A queue whose CPUs are all home CPUs stays where it is, so say how many
    would actually move.
    """
    if not managed or not part.steering or not part.home:
        return []
    devs = ", ".join(sorted({i.device or "?" for i in managed}))
    movable = [i for i in managed if i.smp_affinity & part.home and i.smp_affinity - part.home]
    if movable:
        return [f"Boot with isolcpus=managed_irq,{part.home}: the kernel then serves "
                f"{len(movable)} of the {len(managed)} managed IRQs of {devs} from a CPU "
                "that is not a home CPU (best effort; kernel-parameters.txt, isolcpus)."]
    return [f"isolcpus=managed_irq,{part.home} would not move the managed IRQs of {devs}: "
            "each queue's CPU mask lies within the home CPUs (one queue per CPU or core), "
            "so agents are placed on the quietest home CPUs instead."]


def default_affinity_advice(machine: Machine, part: Partition) -> list[str]:
    """irqaffinity= (kernel-parameters.txt): where unmanaged IRQs start at setup."""
    if not part.steering or not part.home or not machine.irqs:
        return []
    return [f"Boot with irqaffinity={part.completion} so that IRQs set up later (and those "
            "of devices agentlatd does not steer) start on the completion CPUs instead of "
            "every CPU."]
