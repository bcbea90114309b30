"""sys/block/<dev>/queue/rq_affinity.

Kernel doc: Documentation/block/queue-sysfs.rst (rq_affinity: 1 = complete
on a CPU of the submitter's group (default), 2 = force completion on the
submitting CPU). With 2, a small read an agent submits from its home CPU
completes there and its wakeup is local; background submitters, moved to
completion CPUs, complete there too.

Knob "block.rq_affinity", target "<blockdev>": only when tuning.rq_affinity is
set, for the block devices (namespaces) of NVMe controllers in scope that
have the file: the model read a value (rq_affinity not None). With native
NVMe multipath the controller's namespaces are its request-based path disks
(nvmeXcYnZ, planned) and the multipath head (nvmeXnY under
devices/virtual/nvme-subsystem, bio-based: nothing completes through its
queue, and on 6.12 it has no queue/rq_affinity, so a planned write failed
ENOENT at every apply: found by the VM tier, test_apply_fails_no_knob_here).
A disk the model did not read, read without the file, or a virtual one (the
head) is not planned.
"""

from __future__ import annotations

from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import BlockTarget
from agentlatd.model.machine import Device, Machine
from agentlatd.plan.changes import Change
from agentlatd.policy import TuningPolicy

KNOB = KnobName.BLOCK_RQ_AFFINITY

_MEANING = {0: "the completing CPU is not steered", 1: "completions go to the submitter's "
            "CPU group", 2: "each request completes on the CPU that submitted it"}


def plan_block(machine: Machine, devices: tuple[Device, ...],
               tuning: TuningPolicy) -> list[Change]:
    out: list[Change] = []
    want = tuning.rq_affinity
    if want is None:
        return out
    blocks = {d.name: d for d in machine.devices if d.kind == "block"}
    for ctrl in devices:
        if ctrl.kind != "nvme":
            continue
        for name in sorted(set(ctrl.block_devices)):
            b = blocks.get(name)
            if b is None or b.virtual:
                continue  # not read, or the bio-based multipath head
            cur = b.rq_affinity
            if cur is None or cur == want:
                continue
            out.append(Change(
                KNOB, BlockTarget(name), str(cur), str(want),
                f"{name} (on {ctrl.name}): rq_affinity {want}, {_MEANING[want]}"))
    return out
