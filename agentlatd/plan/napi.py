"""sys/class/net/<dev>/{threaded, napi_defer_hard_irqs, gro_flush_timeout}.

Kernel doc: Documentation/ABI/testing/sysfs-class-net (threaded,
napi_defer_hard_irqs, gro_flush_timeout) and Documentation/networking/napi.rst
(threaded NAPI, IRQ deferral). Per-NAPI settings over the netdev genetlink
family (napi-set, 6.13+) are the engine's concern: it feature-detects them and
falls back to these per-device files.

Knobs, target "<dev>":
  "net.threaded"             "1" when tuning.threaded_napi (NET_RX work runs in
                             napi/<dev>-<id> kthreads, which the engine pins to
                             completion CPUs, instead of softirq context of
                             whatever CPU the IRQ hit)
  "net.napi_defer_hard_irqs" when tuning.napi_defer_hard_irqs is set
  "net.gro_flush_timeout"    when tuning.gro_flush_timeout is set (ns)
Devices: physical NICs; virtual NICs only when [devices] include names them.
sysfs does not tell whether a virtual device has NAPI instances (a veth has
them with GRO or XDP on, a bridge, ifb or lo never): `threaded` reads 0 on all
of them, and only a write answers EOPNOTSUPP on an empty napi_list
(modify_napi_threaded, net/core/net-sysfs.c), which the engine reports. So a
host-wide plan leaves docker0 and friends alone, and a device someone named
gets the knobs. A file the model could not read (None) is skipped.

Knob "task.affinity" (agentlatd/agents/knobs.py), target
"<pid>:<starttime>:<pid>": with tuning.threaded_napi and completion CPUs to
steer to, every napi/<dev>-<id> kthread of a NIC in scope (Device.napi_threads)
goes to the completion CPUs of the NIC's node, where its IRQ fires: the kernel
starts them on every housekeeping CPU (kthreadd's mask), so without this the
NET_RX work that threaded NAPI takes out of softirq context runs on home CPUs
(found by the VM tier: test_napi_kthreads_are_pinned_to_completion_cpus). The
engine journals each thread's mask and restores it; a recycled pid is refused
(the starttime in the target). The kthreads exist only once threaded = 1 is
written: the daemon plans them at its next tick, the one-shot apply in a
second pass (plan.build.followup).
"""

from __future__ import annotations

from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import DeviceTarget, TaskTarget
from agentlatd.model.machine import Device
from agentlatd.plan.changes import Change
from agentlatd.plan.common import node_phrase
from agentlatd.plan.partition import Partition
from agentlatd.policy import TuningPolicy

TASK_AFFINITY = KnobName.TASK_AFFINITY


def plan_napi(devices: tuple[Device, ...], tuning: TuningPolicy, *,
              named: bool = False) -> list[Change]:
    """named: the devices in scope were named by devices.include."""
    out: list[Change] = []
    for d in devices:
        if d.kind != "net" or (d.virtual and not named):
            continue
        dev = DeviceTarget(d.name)
        if tuning.threaded_napi and d.threaded is not None and d.threaded != 1:
            out.append(Change(
                KnobName.NET_THREADED, dev, str(d.threaded), "1",
                f"threaded NAPI for {d.name} (tuning.threaded_napi): its NET_RX work "
                "runs in kthreads pinned to completion CPUs"))
        want = tuning.napi_defer_hard_irqs
        if want is not None and d.napi_defer_hard_irqs is not None \
                and d.napi_defer_hard_irqs != want:
            out.append(Change(
                KnobName.NET_NAPI_DEFER_HARD_IRQS, dev, str(d.napi_defer_hard_irqs), str(want),
                f"{d.name} defers IRQ re-arming for {want} empty polls "
                "(tuning.napi_defer_hard_irqs)"))
        gro = tuning.gro_flush_timeout
        if gro is not None and d.gro_flush_timeout is not None and d.gro_flush_timeout != gro:
            out.append(Change(
                KnobName.NET_GRO_FLUSH_TIMEOUT, dev, str(d.gro_flush_timeout), str(gro),
                f"{d.name} flushes GRO after {gro} ns (tuning.gro_flush_timeout)"))
    return out


def plan_napi_threads(devices: tuple[Device, ...], part: Partition, tuning: TuningPolicy, *,
                      named: bool = False) -> list[Change]:
    """task.affinity of each NAPI kthread of a NIC in scope: its node's completion CPUs."""
    out: list[Change] = []
    if not tuning.threaded_napi or not part.steering:
        return out
    for d in devices:
        if d.kind != "net" or (d.virtual and not named):
            continue
        cpus = part.completion_for(d.numa_node)
        where = node_phrase(d.numa_node, cpus, d.numa_node in part.by_node)
        for t in d.napi_threads:
            if t.cpus == cpus:
                continue
            napi = f"NAPI {t.napi_id}" if t.napi_id is not None else "NAPI"
            out.append(Change(
                TASK_AFFINITY, TaskTarget(t.pid, t.starttime, t.pid),
                t.cpus.to_list() if t.cpus is not None else "", cpus.to_list(),
                f"{d.name} {napi} kthread (pid {t.pid}) polls on the {where}, where its "
                "IRQ fires, never on a home CPU (tuning.threaded_napi)"))
    return out
