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
"""

from __future__ import annotations

from agentlatd.model.machine import Device
from agentlatd.plan.changes import Change
from agentlatd.policy import TuningPolicy


def plan_napi(devices: tuple[Device, ...], tuning: TuningPolicy, *,
              named: bool = False) -> list[Change]:
    """named: the devices in scope were named by devices.include."""
    out: list[Change] = []
    for d in devices:
        if d.kind != "net" or (d.virtual and not named):
            continue
        if tuning.threaded_napi and d.threaded is not None and d.threaded != 1:
            out.append(Change(
                "net.threaded", d.name, str(d.threaded), "1",
                f"threaded NAPI for {d.name} (tuning.threaded_napi): its NET_RX work "
                "runs in kthreads pinned to completion CPUs"))
        want = tuning.napi_defer_hard_irqs
        if want is not None and d.napi_defer_hard_irqs is not None \
                and d.napi_defer_hard_irqs != want:
            out.append(Change(
                "net.napi_defer_hard_irqs", d.name, str(d.napi_defer_hard_irqs), str(want),
                f"{d.name} defers IRQ re-arming for {want} empty polls "
                "(tuning.napi_defer_hard_irqs)"))
        gro = tuning.gro_flush_timeout
        if gro is not None and d.gro_flush_timeout is not None and d.gro_flush_timeout != gro:
            out.append(Change(
                "net.gro_flush_timeout", d.name, str(d.gro_flush_timeout), str(gro),
                f"{d.name} flushes GRO after {gro} ns (tuning.gro_flush_timeout)"))
    return out
