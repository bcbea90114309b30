"""The names of the knobs agentlatd ships: one table for plan, apply, agents and metrics.

Each name's kernel file is in agentlatd/apply/knobs.py's docstring (and
agentlatd/agents/knobs.py's for task.* and cpu.*).
"""

from __future__ import annotations

import enum


class KnobName(enum.StrEnum):
    """The registry name of every knob agentlatd ships (agentlatd.apply.knobs
    registers each under this name; its docstring names the kernel file).

    Here in kernel/, not beside the registry in apply/: the plan stage names
    knobs and must not import the apply stage, and task targets are parsed by
    modules the client library imports. Change.knob and the journal keep a
    plain str (a member compares and hashes as its value,
    and the journal's JSON is unchanged): a knob registered by another module
    has a name outside this enum.
    """

    IRQ_AFFINITY = "irq.affinity"
    NET_RPS_CPUS = "net.rps_cpus"
    NET_RPS_FLOW_CNT = "net.rps_flow_cnt"
    NET_XPS_CPUS = "net.xps_cpus"
    NET_THREADED = "net.threaded"
    NET_NAPI_DEFER_HARD_IRQS = "net.napi_defer_hard_irqs"
    NET_GRO_FLUSH_TIMEOUT = "net.gro_flush_timeout"
    NET_COALESCE = "net.coalesce"
    NAPI_CONFIG = "napi.config"
    BLOCK_RQ_AFFINITY = "block.rq_affinity"
    SYSCTL = "sysctl"
    TASK_AFFINITY = "task.affinity"
    TASK_NICE = "task.nice"
    TASK_IOPRIO = "task.ioprio"
    CPU_PM_QOS_RESUME_LATENCY_US = "cpu.pm_qos_resume_latency_us"
    IRQBALANCE_BANNED_CPUS = "irqbalance.banned_cpus"
    IRQBALANCE_BANNED_IRQS = "irqbalance.banned_irqs"
    IRQBALANCE_ENV_BANNED_CPUS = "irqbalance.env_banned_cpus"
