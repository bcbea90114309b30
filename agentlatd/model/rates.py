"""Rates between two counter snapshots, and the per-CPU heat score (pure).

Input: two CounterSnapshots (sample/counters.py) of the same root, older
first. Output: model.machine.Rates, every rate per second of
interval = cur.t - prev.t (time.monotonic()):

  irq_per_cpu[cpu]        device interrupts/s on `cpu`: the sum over the
                          watched numbered IRQs (never the arch rows LOC, RES,
                          IPIn...), for every CPU of the per-IRQ columns
  irq_rate[irq][cpu]      interrupts/s of one watched IRQ on one CPU. Sparse:
                          a CPU whose count did not move is absent (read it
                          with .get(cpu, 0.0)); an IRQ that did not fire maps
                          to an empty mapping
  softirq_rate[vec][cpu]  /proc/softirqs vector `vec` ("NET_RX") per second,
                          dense over the columns of /proc/softirqs
  irq_time_share[cpu]     (d irq + d softirq) / d total of the CPU's /proc/stat
                          times: the share of the CPU's time in hardirq and
                          softirq context, 0..1 (0 on kernels without
                          CONFIG_IRQ_TIME_ACCOUNTING, which charge it elsewhere)
  steal_share[cpu]        d steal / d total: time the hypervisor ran someone else

where d total = d(user + nice + system + idle + iowait + irq + softirq +
steal) (guest time is already inside user and nice). The shares are ratios of
ticks, so USER_HZ and the interval cancel out.

Heat, exactly as etc/agentlatd.toml [heat] documents it (policy.HeatPolicy):

  heat[cpu] = irq_weight     * irq_per_cpu[cpu] / irq_scale
            + softirq_weight * (NET_RX + NET_TX + BLOCK + IRQ_POLL + TASKLET)/s on cpu / softirq_scale
            + time_weight    * irq_time_share[cpu]

0 is idle; with the shipped weights 1 is ~10k device interrupts/s, or ~10k
completion softirqs/s, or 10% of the CPU in interrupt context. IRQ_POLL is
read as BLOCK_IOPOLL on kernels before 4.5 (the vector's old name); a vector
the kernel does not have at all counts 0. heat has a CPU only when all three
terms are known for it (an online CPU with per-IRQ columns and softirq
columns); a CPU missing any term has no heat rather than a low one.

Discontinuities (model.machine.Discontinuity), never negative rates:
  clock            interval <= 0 (or NaN): no rate at all; a CPU whose
                   /proc/stat times did not advance (no tick elapsed) has no
                   share
  counter_reset    a count went down (an IRQ freed and its number reused, a
                   counter wrapped) or is not a number: that IRQ, (vector,
                   CPU) or CPU's shares are omitted. idle and iowait are the
                   exception: proc.rst calls iowait unreliable and nohz idle
                   accounting has stepped back by a tick, so a decrease there
                   counts as 0 and is not a reset
  cpu_hotplug      the CPU columns differ (per-IRQ, softirq or /proc/stat
                   CPUs): the CPUs in only one snapshot are omitted, the
                   others are aligned by CPU number and still computed
  irq_set_changed  a watched IRQ is in only one snapshot: omitted
No open/os/socket here: same snapshots in, same Rates out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from operator import mul, sub
from types import MappingProxyType

from agentlatd.model.machine import Discontinuity, Rates
from agentlatd.policy import HeatPolicy
from agentlatd.sample.counters import CounterSnapshot, IrqCounts, diff_counts
from agentlatd.sample.softirqs import Softirqs
from agentlatd.sample.stat import Stat

# Softirq vectors that are device completion work (the [heat] section).
HEAT_SOFTIRQS = ("NET_RX", "NET_TX", "BLOCK", "IRQ_POLL", "TASKLET")
# IRQ_POLL was BLOCK_IOPOLL before 4.5 (lib/irq_poll.c replaced blk-iopoll)
SOFTIRQ_ALIASES = {"BLOCK_IOPOLL": "IRQ_POLL"}

_NONE: Mapping[int, float] = MappingProxyType({})
_SHOW = 8  # how many items a discontinuity's detail names


def compute_rates(prev: CounterSnapshot, cur: CounterSnapshot, policy_heat: HeatPolicy) -> Rates:
    """Rates from `prev` to `cur` (older first) and the heat score; see the module docstring."""
    dt = cur.t - prev.t
    if not dt > 0 or math.isinf(dt):
        return Rates(
            interval_s=dt, irq_per_cpu={}, irq_rate={}, softirq_rate={}, irq_time_share={},
            steal_share={}, heat={},
            discontinuities=(Discontinuity("clock", f"interval {dt!r} s is not positive: no rates"),),
        )
    inv = 1.0 / dt
    disc: list[Discontinuity] = []
    irq_per_cpu, irq_rate = irq_rates(prev, cur, inv, disc)
    softirq_rate = softirq_rates(prev.softirqs, cur.softirqs, inv, disc)
    time_share, steal_share = time_shares(prev.stat, cur.stat, disc)
    heat = heat_scores(irq_per_cpu, softirq_rate, time_share, prev.softirqs, cur.softirqs, policy_heat)
    return Rates(
        interval_s=dt,
        irq_per_cpu=irq_per_cpu,
        irq_rate=irq_rate,
        softirq_rate=softirq_rate,
        irq_time_share=time_share,
        steal_share=steal_share,
        heat=heat,
        discontinuities=tuple(disc),
    )


def _names(items: Iterable[int | str]) -> str:
    xs = sorted(items, key=lambda x: (isinstance(x, str), x))
    head = ",".join(str(x) for x in xs[:_SHOW])
    return head + (f" (+{len(xs) - _SHOW} more)" if len(xs) > _SHOW else "")


def _hotplug(what: str, prev_cpus: Iterable[int], cur_cpus: Iterable[int], disc: list[Discontinuity]) -> None:
    p, c = set(prev_cpus), set(cur_cpus)
    parts = []
    if p - c:
        parts.append(f"CPU {_names(p - c)} gone")
    if c - p:
        parts.append(f"CPU {_names(c - p)} new")
    disc.append(Discontinuity("cpu_hotplug", f"{what} columns changed: {'; '.join(parts)}"))


# -- per-IRQ ---------------------------------------------------------------
def _realign(
    prev_cpus: Sequence[int],
    cur_cpus: Sequence[int],
    prev: Mapping[int, IrqCounts],
    cur: Mapping[int, IrqCounts],
) -> tuple[tuple[int, ...], dict[int, IrqCounts], dict[int, IrqCounts]]:
    """Both snapshots' per-IRQ counts restricted to the CPUs they share, in CPU order."""
    common = tuple(sorted(set(prev_cpus) & set(cur_cpus)))
    pi = {c: i for i, c in enumerate(prev_cpus)}
    ci = {c: i for i, c in enumerate(cur_cpus)}

    def pick(counts: Mapping[int, IrqCounts], index: Mapping[int, int], ncol: int) -> dict[int, IrqCounts]:
        idx = [index[c] for c in common]
        out = {}
        for k, v in counts.items():
            toks = v.tokens()
            if len(toks) == ncol:
                out[k] = IrqCounts(b",".join([toks[i] for i in idx]))
        return out

    return common, pick(prev, pi, len(prev_cpus)), pick(cur, ci, len(cur_cpus))


def irq_rates(
    prev: CounterSnapshot, cur: CounterSnapshot, inv: float, disc: list[Discontinuity],
) -> tuple[dict[int, float], dict[int, Mapping[int, float]]]:
    """(irq_per_cpu, irq_rate) over the watched IRQs of both snapshots."""
    cpus = cur.irq_cpus
    prev_irqs: Mapping[int, IrqCounts] = prev.irqs
    cur_irqs: Mapping[int, IrqCounts] = cur.irqs
    # the reader's promise: IRQs outside `fresh` are prev's own objects (did not fire)
    fresh = cur.fresh if cur.fresh is not None and cur.base_t == prev.t else None
    if prev.irq_cpus != cpus:
        _hotplug("per-IRQ", prev.irq_cpus, cpus, disc)
        cpus, prev_irqs, cur_irqs = _realign(prev.irq_cpus, cpus, prev_irqs, cur_irqs)
        fresh = None
    n = len(cpus)
    gone = prev_irqs.keys() - cur_irqs.keys()
    new = cur_irqs.keys() - prev_irqs.keys()
    if gone or new:
        parts = []
        if gone:
            parts.append(f"IRQ {_names(gone)} gone")
        if new:
            parts.append(f"IRQ {_names(new)} new")
        disc.append(Discontinuity("irq_set_changed", "; ".join(parts) + ": no rate for them this tick"))
        both: Iterable[int] = [k for k in cur_irqs if k in prev_irqs]
    else:
        both = cur_irqs.keys()
    # every IRQ in both starts at "did not fire"; the ones that did are overwritten
    rates: dict[int, Mapping[int, float]] = dict.fromkeys(both, _NONE)
    todo: Iterable[int] = rates.keys() if fresh is None else [k for k in fresh if k in rates]
    acc = [0] * n
    resets: list[int] = []
    for irq in todo:
        c = cur_irqs[irq]
        p = prev_irqs[irq]
        if p is c:  # the reader reused it: the IRQ's total did not move
            continue
        r = diff_counts(c, p)
        if r is None:
            resets.append(irq)
            continue
        pos, deltas = r
        if not pos:
            continue
        if min(deltas) < 0 or pos[-1] >= n:
            resets.append(irq)
            continue
        if len(pos) == 1:  # the usual case: it fired on its effective CPU only
            i = pos[0]
            d = deltas[0]
            rates[irq] = {cpus[i]: d * inv}
            acc[i] += d
            continue
        rates[irq] = {cpus[i]: d * inv for i, d in zip(pos, deltas, strict=True)}
        for i, d in zip(pos, deltas, strict=True):
            acc[i] += d
    if resets:
        for irq in resets:
            del rates[irq]
        disc.append(Discontinuity(
            "counter_reset", f"IRQ {_names(resets)}: a per-CPU count went down or is not a number"))
    per_cpu = dict(zip(cpus, map(mul, acc, repeat(inv)), strict=True))
    return per_cpu, rates


# -- softirqs --------------------------------------------------------------
def softirq_rates(
    prev: Softirqs, cur: Softirqs, inv: float, disc: list[Discontinuity]
) -> dict[str, dict[int, float]]:
    """vector -> cpu -> /s."""
    out: dict[str, dict[int, float]] = {}
    same_cols = prev.cpus == cur.cpus
    if not same_cols:
        _hotplug("/proc/softirqs", prev.cpus, cur.cpus, disc)
    resets: list[str] = []
    missing = [v for v in prev.counts if v not in cur.counts]
    for vec, c in cur.counts.items():
        p = prev.counts.get(vec)
        if p is None:
            missing.append(vec)
            continue
        if same_cols and len(p) == len(c) == len(cur.cpus):
            d = list(map(sub, c, p))
            if not d or min(d) >= 0:
                out[vec] = dict(zip(cur.cpus, map(mul, d, repeat(inv)), strict=True))
                continue
            cpus: Sequence[int] = cur.cpus
        else:
            pm = dict(zip(prev.cpus, p, strict=False))
            cm = dict(zip(cur.cpus, c, strict=False))
            cpus = [cpu for cpu in cur.cpus if cpu in pm and cpu in cm]
            d = [cm[cpu] - pm[cpu] for cpu in cpus]
        row = {cpu: x * inv for cpu, x in zip(cpus, d, strict=True) if x >= 0}
        if len(row) != len(cpus):
            resets.append(vec)
        out[vec] = row
    if resets:
        disc.append(Discontinuity(
            "counter_reset", f"softirq {_names(resets)}: a per-CPU count went down; those CPUs omitted"))
    if missing:
        disc.append(Discontinuity(
            "counter_reset", f"softirq {_names(set(missing))} is in only one snapshot: omitted"))
    return out


# -- /proc/stat time shares ------------------------------------------------
def time_shares(
    prev: Stat, cur: Stat, disc: list[Discontinuity]
) -> tuple[dict[int, float], dict[int, float]]:
    """(irq_time_share, steal_share) per CPU present in both snapshots."""
    irq_share: dict[int, float] = {}
    steal_share: dict[int, float] = {}
    resets: list[int] = []
    still: list[int] = []
    pcpus = prev.cpus
    for cpu, c in cur.cpus.items():
        p = pcpus.get(cpu)
        if p is None:
            continue
        du = c.user - p.user
        dn = c.nice - p.nice
        ds = c.system - p.system
        di = max(0, c.idle - p.idle)  # idle/iowait may step back: see the module docstring
        dw = max(0, c.iowait - p.iowait) if c.iowait is not None and p.iowait is not None else 0
        dh = c.irq - p.irq if c.irq is not None and p.irq is not None else None
        dsi = c.softirq - p.softirq if c.softirq is not None and p.softirq is not None else None
        dst = c.steal - p.steal if c.steal is not None and p.steal is not None else None
        if min(du, dn, ds, dh or 0, dsi or 0, dst or 0) < 0:
            resets.append(cpu)
            continue
        total = du + dn + ds + di + dw + (dh or 0) + (dsi or 0) + (dst or 0)
        if total <= 0:
            still.append(cpu)
            continue
        if dh is not None and dsi is not None:
            irq_share[cpu] = (dh + dsi) / total
        if dst is not None:
            steal_share[cpu] = dst / total
    if pcpus.keys() != cur.cpus.keys():
        _hotplug("/proc/stat", pcpus.keys(), cur.cpus.keys(), disc)
    if resets:
        disc.append(Discontinuity("counter_reset", f"/proc/stat CPU {_names(resets)}: a time went down"))
    if still:
        disc.append(Discontinuity("clock", f"/proc/stat CPU {_names(still)}: no USER_HZ tick elapsed"))
    return irq_share, steal_share


# -- heat ------------------------------------------------------------------
def heat_scores(
    irq_per_cpu: Mapping[int, float],
    softirq_rate: Mapping[str, Mapping[int, float]],
    time_share: Mapping[int, float],
    prev: Softirqs,
    cur: Softirqs,
    hp: HeatPolicy,
) -> dict[int, float]:
    """The [heat] score per CPU for which all three terms are known."""
    vecs = [v for v in (*HEAT_SOFTIRQS, *SOFTIRQ_ALIASES) if v in cur.counts or v in prev.counts]
    maps = [softirq_rate.get(v) for v in vecs]
    if any(m is None for m in maps):
        return {}  # a heat vector in only one snapshot: no CPU has its softirq term
    rows = [m for m in maps if m is not None]
    k0 = tuple(rows[0]) if rows else ()
    if rows and all(tuple(m) == k0 for m in rows):  # same CPUs in the same order: zip them
        sums: Mapping[int, float] = dict(
            zip(k0, map(sum, zip(*(m.values() for m in rows), strict=True)), strict=True))
    elif rows:
        keys = set(rows[0].keys()).intersection(*(m.keys() for m in rows[1:]))
        sums = {k: sum(m[k] for m in rows) for k in keys}
    else:
        sums = {cpu: 0.0 for cpu in time_share}  # a kernel with none of the vectors
    a = hp.irq_weight / hp.irq_scale
    b = hp.softirq_weight / hp.softirq_scale
    w = hp.time_weight
    return {
        cpu: a * irq_per_cpu[cpu] + b * sums[cpu] + w * share
        for cpu, share in time_share.items()
        if cpu in irq_per_cpu and cpu in sums
    }
