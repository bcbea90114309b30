"""NIC interrupt coalescing over ethtool netlink (ETHTOOL_MSG_COALESCE_SET).

Kernel doc: Documentation/networking/ethtool-netlink.rst (COALESCE_GET/SET,
ETHTOOL_A_COALESCE_RX_USECS). The Machine does not hold coalescing values
(they come over netlink, not sysfs), so `current` is "" and the engine reads
them before writing.

Knob "net.coalesce", target "<dev>", desired "rx-usecs=N" (a compact
"key=value,key=value" string; adaptive-rx and the tx side are left as they
are). N = max(coalesce_min_usecs, min(budget_us of classes with a budget) *
coalesce_budget_share): an interrupt waits at most a tenth (by default) of the
tightest step budget. N is never 0: agentlatd never disables coalescing
(design note section 11). Only physical NICs with IRQs of their own: a veth
or bridge has no interrupt to coalesce.
"""

from __future__ import annotations

from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import DeviceTarget
from agentlatd.model.machine import Device
from agentlatd.plan.changes import Change
from agentlatd.policy import Policy

KNOB = KnobName.NET_COALESCE


def rx_usecs(pol: Policy) -> tuple[int, int] | None:
    """(rx-usecs, the budget it derives from), or None when no class has a budget."""
    budgets = [c.budget_us for c in pol.classes.values() if c.budget_us > 0]
    if not budgets:
        return None
    b = min(budgets)
    t = pol.tuning
    return max(t.coalesce_min_usecs, int(b * t.coalesce_budget_share), 1), b


def plan_coalesce(devices: tuple[Device, ...], pol: Policy) -> tuple[list[Change], list[str]]:
    out: list[Change] = []
    if not pol.tuning.coalesce:
        return out, []
    nics = [d for d in devices if d.kind == "net" and not d.virtual and d.irqs]
    if not nics:
        return out, []
    v = rx_usecs(pol)
    if v is None:
        return out, ["No latency class has a budget (budget_us > 0): NIC coalescing is "
                     "left as it is."]
    usecs, budget = v
    share = pol.tuning.coalesce_budget_share
    for d in nics:
        out.append(Change(
            KNOB, DeviceTarget(d.name), "", f"rx-usecs={usecs}",
            f"{d.name}: an rx interrupt waits at most {usecs} us, {share * 100:g}% of the "
            f"tightest class budget ({budget} us) and at least "
            f"{pol.tuning.coalesce_min_usecs} us; coalescing stays on"))
    return out, []
