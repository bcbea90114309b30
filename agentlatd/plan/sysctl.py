"""proc/sys/net/core/{rps_sock_flow_entries, netdev_budget_usecs, netdev_budget}.

Kernel doc: Documentation/admin-guide/sysctl/net.rst; RFS:
Documentation/networking/scaling.rst. These are host-wide (init_net only):
the plan names them only when the policy asks, and the Machine does not hold
their values, so `current` is "" and the engine reads them.

Knob "sysctl", target the dotted name:
  net.core.rps_sock_flow_entries  when tuning.rps and rps_flow_cnt > 0 and some
                                  rx queue in scope gets RFS (the per-queue
                                  tables do nothing without the global one)
  net.core.netdev_budget_usecs    only when tuning.netdev_budget_usecs is set
  net.core.netdev_budget          only when tuning.netdev_budget is set
Bounds (500..8000 us, 50..600 packets) are checked by the policy loader:
latency-bounded batching, never batching off (design note section 7).
"""

from __future__ import annotations

from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import SysctlTarget
from agentlatd.plan.changes import Change
from agentlatd.policy import TuningPolicy

KNOB = KnobName.SYSCTL


def plan_sysctl(tuning: TuningPolicy, *, rfs: bool, steering: bool) -> list[Change]:
    out: list[Change] = []
    if rfs and steering and tuning.rps_sock_flow_entries > 0:
        out.append(Change(
            KNOB, SysctlTarget("net.core.rps_sock_flow_entries"), "",
            str(tuning.rps_sock_flow_entries),
            f"global RFS table of {tuning.rps_sock_flow_entries} entries "
            "(tuning.rps_sock_flow_entries): per-queue rps_flow_cnt needs it"))
    if tuning.netdev_budget_usecs is not None:
        out.append(Change(
            KNOB, SysctlTarget("net.core.netdev_budget_usecs"), "",
            str(tuning.netdev_budget_usecs),
            f"bound one NET_RX softirq run to {tuning.netdev_budget_usecs} us "
            "(tuning.netdev_budget_usecs): latency-bounded batching, not batch-free"))
    if tuning.netdev_budget is not None:
        out.append(Change(
            KNOB, SysctlTarget("net.core.netdev_budget"), "",
            str(tuning.netdev_budget),
            f"bound one NET_RX softirq run to {tuning.netdev_budget} packets "
            "(tuning.netdev_budget): latency-bounded batching, not batch-free"))
    return out
