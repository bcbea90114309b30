"""make_plan: Machine (+ Rates) + Policy -> Plan. Pure and deterministic.

The plan stage of sample -> model -> plan -> apply (style.md). No IO: the
same inputs give the same Plan, byte for byte: devices, IRQs and queues are
walked in sorted order and the changes are sorted by (knob, target) with
natural number order, in the order the engine applies them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from agentlatd.cpuset import CpuSet
from agentlatd.kernel.irqbalance_proto import MAX_COMMAND, ban_irqs_command, env_value
from agentlatd.kernel.knobnames import KnobName
from agentlatd.kernel.targets import DaemonTarget, FileTarget, IrqTarget
from agentlatd.model.agent_links import NONE, AgentLinks
from agentlatd.model.machine import Device, Machine, Rates
from agentlatd.plan.block import plan_block
from agentlatd.plan.changes import INCLUDE_MATCHES_NOTHING, Change, Plan
from agentlatd.plan.coalesce import plan_coalesce
from agentlatd.plan.common import natural_key, nr_cpu_ids
from agentlatd.plan.irq_affinity import (
    NO_CPUS,
    default_affinity_advice,
    fixed_irq_load,
    fixed_irqs,
    managed_advice,
    managed_notes,
    plan_irq_affinity,
    quiet_home_order,
)
from agentlatd.plan.napi import TASK_AFFINITY, plan_napi, plan_napi_threads
from agentlatd.plan.partition import partition
from agentlatd.plan.rps import local_links, plan_rps, plan_xps, rfs_planned
from agentlatd.plan.select import select_devices
from agentlatd.plan.sysctl import plan_sysctl
from agentlatd.policy import Policy, TuningPolicy

# apply order: steer IRQs first (where completions land), then softirq
# steering, then per-device batching, then host-wide sysctls
KNOB_ORDER = (
    KnobName.IRQBALANCE_BANNED_CPUS,
    KnobName.IRQBALANCE_ENV_BANNED_CPUS,
    KnobName.IRQBALANCE_BANNED_IRQS,
    KnobName.IRQ_AFFINITY,
    KnobName.NET_RPS_CPUS,
    KnobName.NET_RPS_FLOW_CNT,
    KnobName.NET_XPS_CPUS,
    KnobName.NET_THREADED,
    KnobName.TASK_AFFINITY,
    KnobName.NET_NAPI_DEFER_HARD_IRQS,
    KnobName.NET_GRO_FLUSH_TIMEOUT,
    KnobName.NET_COALESCE,
    KnobName.BLOCK_RQ_AFFINITY,
    KnobName.SYSCTL,
)


def _handed_over(steered: tuple[int, ...], irq_changes: tuple[Change, ...],
                 theirs: tuple[int, ...], notes: list[str]) -> list[Change]:
    """The one change that bans every IRQ agentlatd places (`steered`, changed
    now or already in place) in irqbalance, beside `theirs` (its own --banirq
    list), as many as its socket command takes (kernel/irqbalance_proto.py), and
    the IRQ changes of those; the rest stay irqbalance's and a note says so."""
    banned = sorted({i for i in theirs if i > 0})
    mine: list[int] = []
    left: list[int] = []
    for irq in sorted(set(steered)):
        trial = sorted({*banned, irq})
        if len(ban_irqs_command(tuple(trial))) > MAX_COMMAND:
            left.append(irq)
            continue
        banned = trial
        mine.append(irq)
    if left:
        notes.append(f"irqbalance's socket takes at most {MAX_COMMAND + 1} bytes a command: "
                     f"IRQs {', '.join(map(str, left))} are not banned in it and left to it.")
    if not mine:
        return []
    ban = Change(KnobName.IRQBALANCE_BANNED_IRQS, DaemonTarget("irqbalance"), "",
                 " ".join(map(str, banned)),
                 f"hand IRQs {', '.join(map(str, mine))} over from irqbalance (it never moves "
                 "a banned IRQ), then steer them"
                 + (f"; beside its own --banirq {', '.join(map(str, theirs))}" if theirs else "")
                 + " (daemon.irqbalance = \"cooperate\")")
    handed = {IrqTarget(i) for i in mine}
    return [ban, *(c for c in irq_changes if c.target in handed)]


def _env_ban(path: str, ban: CpuSet, why: str, home: CpuSet, steered: tuple[int, ...] | None,
             irq_changes: tuple[Change, ...], theirs: tuple[int, ...]) -> list[Change]:
    """The one irqbalance.env_banned_cpus change (its environment file, then a
    restart: apply/irqbalance_env.py) banning `ban`, and with `steered` (None: no
    handover) the IRQs agentlatd places as --banirq beside `theirs` (the
    administrator's own in IRQBALANCE_ARGS), with the IRQ changes of those."""
    mine = sorted(set(steered or ()))
    if not home and not mine:
        return []
    text = why + f"; its socket is not usable: in {path}, then a restart"
    if mine:
        text += (f"; hand IRQs {', '.join(map(str, mine))} over from irqbalance "
                 "(--banirq in IRQBALANCE_ARGS: it never moves a banned IRQ), then steer them"
                 + (f", beside its own --banirq {', '.join(map(str, theirs))}" if theirs else ""))
    value = env_value(ban.to_list(), (*theirs, *mine) if mine else None)
    handed = {IrqTarget(i) for i in mine}
    return [Change(KnobName.IRQBALANCE_ENV_BANNED_CPUS, FileTarget(path), "",
                   value, text), *(c for c in irq_changes if c.target in handed)]


def _sort_key(c: Change) -> tuple[int, str, tuple[tuple[int, int | str], ...]]:
    try:
        k = KNOB_ORDER.index(c.knob)
    except ValueError:
        k = len(KNOB_ORDER)
    return (k, c.knob, natural_key(c.target_text))


def check_policy_cpus(machine: Machine, policy: Policy) -> None:
    """PolicyError when cpus.home or cpus.completion names a CPU this machine cannot
    have (beyond its possible CPUs, sys/devices/system/cpu/possible): a typo or a
    policy written for another host. Offline CPUs are fine (hotplug brings them
    back; the plan says it dropped them)."""
    possible = machine.topology.possible
    for key, text in (("cpus.completion", policy.cpus.completion), ("cpus.home", policy.cpus.home)):
        if text == "auto":
            continue
        bad = CpuSet.parse_list(text) - possible
        if bad:
            raise policy.error(key, f"names CPU(s) {bad} that this machine does not have "
                                    f"(possible CPUs: {possible.to_list() or 'none'}); name "
                                    'CPUs of this host or use "auto"')


def make_plan(machine: Machine, policy: Policy, *, rates: Rates | None = None,
              irqbalance_running: bool = False, agent_links: AgentLinks = NONE,
              irqbalance_banned: CpuSet | None = None, irqbalance_env: str = "",
              irqbalance_banned_irqs: tuple[int, ...] | None = None,
              vector_full: CpuSet = NO_CPUS) -> Plan:
    """The CPU partition and every change the engine would make, with reasons.

    irqbalance_running: filled by the daemon/CLI (the Machine does not know);
    with daemon.irqbalance = "refuse" IRQ affinity is then left alone; with
    "cooperate" it is left to irqbalance and the home CPUs are banned in it
    (one irqbalance.banned_cpus change: the home CPUs plus `irqbalance_banned`,
    what irqbalance banned before agentlatd, since a ban over its socket
    replaces its own IRQBALANCE_BANNED_CPULIST/isolated-CPU ban).
    irqbalance_env: the environment file to ban them in instead (one
    irqbalance.env_banned_cpus change, apply/irqbalance_env.py), filled when
    the running irqbalance has no socket agentlatd can use.
    irqbalance_banned_irqs: the IRQs irqbalance leaves alone before agentlatd
    (its --banirq list, read over its socket; None: unknown). When known, the
    IRQs of devices in scope are steered as without irqbalance and handed over:
    one irqbalance.banned_irqs change bans them in it (beside its own), so it
    never moves them; unknown, they stay irqbalance's.
    vector_full: CPUs an earlier apply found out of interrupt vectors (ENOSPC on
    an irq.affinity write; tick.py's feedback, kept until a rescan): IRQs that
    must move go to other completion CPUs, or stay put (plan/irq_affinity.py).
    agent_links: filled by the daemon from its registered agents
    (agents/links.py); the NICs that carry only their traffic (plan/rps.py).
    PolicyError when the policy names CPUs this machine cannot have
    (check_policy_cpus): nothing is planned rather than "auto" in their place.
    """
    check_policy_cpus(machine, policy)
    sel = select_devices(machine, policy.devices)
    devices = sel.devices
    tuning = policy.tuning
    handover = (irqbalance_running and policy.daemon.irqbalance == "cooperate"
                and irqbalance_banned_irqs is not None)
    steered = tuning.irq_affinity and (not irqbalance_running or handover
                                       or policy.daemon.irqbalance == "ignore")
    fixed = fixed_irqs(machine, devices, steered)
    part = partition(machine.topology, devices, policy.cpus, fixed_irq_load(machine, fixed))
    nr = nr_cpu_ids(machine.topology.possible | {c.cpu for c in machine.topology.cpus})
    notes: list[str] = list(part.notes)
    advice: list[str] = []
    changes: list[Change] = []

    by_reason: dict[str, list[str]] = {}
    for name, why in sel.skipped:
        by_reason.setdefault(why, []).append(name)
    for why, names in sorted(by_reason.items()):
        notes.append(f"Out of scope ({why}): {', '.join(names)}.")
    for g in sel.unmatched:
        notes.append(f"{INCLUDE_MATCHES_NOTHING} {g!r} matches no device on this host "
                     f"(devices: {', '.join(sorted(d.name for d in machine.devices)) or 'none'}).")

    irq = plan_irq_affinity(machine, devices, part, vector_full)
    if not tuning.irq_affinity:
        if irq.changes:
            notes.append(f"tuning.irq_affinity = false: {len(irq.changes)} IRQ(s) of devices "
                         "in scope are left where they are.")
    elif irqbalance_running and policy.daemon.irqbalance == "cooperate":
        ban = part.home | (irqbalance_banned or CpuSet())
        if part.home:
            why = (f"irqbalance places IRQs (NIC queues included) on the CPUs it does not ban: "
                   f"ban the home CPUs {part.home}"
                   + (f" beside its own ban {irqbalance_banned}" if irqbalance_banned else "")
                   + " (daemon.irqbalance = \"cooperate\")")
            if not irqbalance_env:
                changes.append(Change(KnobName.IRQBALANCE_BANNED_CPUS,
                                      DaemonTarget("irqbalance"), "",
                                      ban.to_list(), why))
        else:
            why = "irqbalance keeps its own ban (no home CPUs) (daemon.irqbalance = \"cooperate\")"
        if irqbalance_env:
            changes += _env_ban(irqbalance_env, ban, why, part.home,
                                irq.steered if handover else None, irq.changes,
                                irqbalance_banned_irqs or ())
        elif handover:
            changes += _handed_over(irq.steered, irq.changes, irqbalance_banned_irqs or (), notes)
        if handover:
            notes += irq.notes
        notes.append("irqbalance is running (daemon.irqbalance = \"cooperate\"): it keeps "
                     + ("balancing every other IRQ over the CPUs outside the home set; the IRQs "
                        "agentlatd steers are banned in it (handed over)" if handover else
                        "balancing every IRQ, NIC queue IRQs included, over the CPUs outside "
                        "the home set")
                     + f"; the home CPUs {part.home} are banned in it while agentlatd "
                     "runs. RPS, XPS and the other knobs apply as planned.")
    elif irqbalance_running and policy.daemon.irqbalance == "refuse":
        notes.append("irqbalance is running: IRQ affinity is not steered "
                     "(daemon.irqbalance = \"refuse\"); stop it or ban these IRQs in it "
                     "(IRQBALANCE_BANNED_CPULIST / --banirq) to let agentlatd steer. "
                     "RPS, XPS and the other knobs still apply.")
    else:
        changes += irq.changes
        notes += irq.notes
        if irqbalance_running:
            notes.append("irqbalance is running and rewrites IRQ affinity every 10 s "
                         "(daemon.irqbalance = \"ignore\"): expect drift reports.")
    notes += managed_notes(irq.managed, part)
    advice += managed_advice(irq.managed, part)
    advice += default_affinity_advice(machine, part)

    links = local_links(agent_links, devices, part, tuning)
    changes += plan_rps(devices, part, tuning, nr, links)
    notes += agent_link_notes(devices, links, tuning)
    changes += plan_xps(devices, part, tuning, nr)
    changes += plan_napi(devices, tuning, named=bool(policy.devices.include))
    changes += plan_napi_threads(devices, part, tuning, named=bool(policy.devices.include))
    co, co_notes = plan_coalesce(devices, policy)
    changes += co
    notes += co_notes
    changes += plan_block(machine, devices, tuning)
    rfs = part.steering and rfs_planned(devices, tuning)
    changes += plan_sysctl(tuning, rfs=rfs, steering=part.steering)
    if rfs:
        # get_rps_cpu() (net/core/dev.c) follows the flow table to the CPU the
        # reading thread last ran on before it looks at rps_cpus
        notes.append("RFS (tuning.rps_flow_cnt > 0) processes a flow's packets on the CPU "
                     "its reader runs on, ahead of rps_cpus: an agent's own flows are "
                     "processed on its home CPU. Set tuning.rps_flow_cnt = 0 to keep all "
                     "receive processing on completion CPUs.")

    return Plan(
        completion_cpus=part.completion,
        home_cpus=part.home,
        roles=part.roles,
        changes=tuple(sorted(changes, key=_sort_key)),
        advice=tuple(advice),
        notes=tuple(notes),
        quiet_home_order=quiet_home_order(machine, part.home, rates, fixed),
        agent_links=links,
    )


def agent_link_notes(devices: Iterable[Device], links: AgentLinks, tuning: TuningPolicy) -> list[str]:
    out: list[str] = []
    for d in devices:
        link = links.local.get(d.name)
        if link is not None:
            out.append(f"Agent link {d.name}: receives for pinned agent(s) {', '.join(link.agents)}; "
                       f"its receive processing runs on their home CPU(s) {link.home_cpus} "
                       "(tuning.agent_links = \"home\").")
        busy = links.busy.get(d.name)
        if busy is not None and busy.rx_pps is not None:
            out.append(f"{d.name} carries traffic of pinned agent(s) {', '.join(busy.agents)} and "
                       f"{busy.rx_pps:.0f} packets/s in all (> tuning.agent_link_max_pps = "
                       f"{tuning.agent_link_max_pps}): its receive processing stays on the "
                       "completion CPUs, where their replies queue behind the rest. RFS "
                       "(tuning.rps_flow_cnt and net.core.rps_sock_flow_entries) or an ntuple "
                       "rule steering their flows to a queue of their own separates them.")
    return out


# What a write makes the plan made before it miss, and the knobs planned again on a
# Machine scanned after it (the tick's followup stage, agentlatd/tick.py):
#  - net.threaded starts the napi/<dev>-<id> kthreads (net/core/dev.c
#    napi_kthread_create): task.affinity pins them;
#  - an irqbalance ban takes effect only once it is written (the socket's "settings
#    ban irqs", or the restart that makes irqbalance read its environment file).
#    Until then irqbalance rebalances every 10 s, so an IRQ the sample found in
#    place may have been moved since, onto a home CPU: irq.affinity is re-read.
FOLLOWUP: Mapping[str, frozenset[str]] = {
    KnobName.NET_THREADED: frozenset({TASK_AFFINITY}),
    KnobName.IRQBALANCE_BANNED_CPUS: frozenset({KnobName.IRQ_AFFINITY}),
    KnobName.IRQBALANCE_BANNED_IRQS: frozenset({KnobName.IRQ_AFFINITY}),
    KnobName.IRQBALANCE_ENV_BANNED_CPUS: frozenset({KnobName.IRQ_AFFINITY}),
}


def followup_knobs(written: Iterable[str]) -> frozenset[str]:
    """The knobs to plan again after an apply that changed the knobs `written`
    (empty: no second pass)."""
    out: frozenset[str] = frozenset()
    for k in written:
        out |= FOLLOWUP.get(k, frozenset())
    return out
