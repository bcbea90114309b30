"""`agentlatd status`: the host as agentlatd sees it. Reads only.

Topology; devices -> queues -> IRQs with current and effective affinity and
the managed flag; per-CPU heat over `--interval` seconds (two counter
snapshots, model/rates.py; `--interval 0` = no heat). `--json` for scripts:

  {"kernel", "root", "interval_s",
   "topology": {possible, present, online, isolated, nohz_full, nodes},
   "cpus":    [{cpu, core, package, node, llc, llc_cpus, smt_siblings, online,
                isolated, nohz_full, heat, irq_rate, irq_time_share}],
   "irqs":    [{irq, name, chip, device, queue, total, smp_affinity,
                effective_affinity, affinity_hint, node, managed,
                managed_reason, rate}],
   "devices": [{name, kind, driver, pci, numa_node, virtual, ifindex, irqs,
                queues: [{name, irqs, ...}], ...}],
   "discontinuities": [{kind, detail}]}

CPU sets are cpulists ("0-3,8"); unknown values are null.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Mapping
from typing import Any

from agentlatd import jsonout
from agentlatd import policy as policy_mod
from agentlatd.client import ClientError, Connection, Unavailable
from agentlatd.cpuset import CpuSet
from agentlatd.errors import AgentlatdError
from agentlatd.model.machine import Device, Irq, Machine, Rates
from agentlatd.sysfs.root import Root
from agentlatd.tick import sample_once
from agentlatd.wire import Op

HELP = "show topology, devices, queues, IRQs and per-CPU heat (reads only)"
EXAMPLES = (
    "agentlatd status",
    "agentlatd status --interval 2",
    "agentlatd status --json --interval 0",
    "agentlatd status --root tests/fixtures/machines/server-2s64t --interval 0",
    "agentlatd status --interval 0 --socket /tmp/al/agentlatd.sock --json",
)

WIDTH = 80


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default="/", metavar="DIR",
                   help="filesystem root holding proc/ and sys/ (default: this host)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between the two samples for heat (default 1; 0 = no heat)")
    p.add_argument("--config", metavar="FILE",
                   help="policy file for the [heat] weights (default: "
                        "/etc/agentlatd.toml when it exists, else the embedded one)")
    p.add_argument("--socket", metavar="PATH",
                   help="the daemon's socket, for the view of the running daemon "
                        "(default: $AGENTLATD_SOCKET, else policy daemon.socket)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


# -- the running daemon ---------------------------------------------------------------
def daemon_view(socket: str | None) -> tuple[dict[str, Any] | None, str]:
    """The running daemon's own `status` answer, or (None, why there is none)."""
    try:
        with Connection(socket, timeout=3.0) as conn:
            ans: dict[str, Any] = conn.request(Op.STATUS)
            return ans, ""
    except Unavailable as e:
        return None, str(e.strerror)
    except ClientError as e:
        return None, f"{e.code}: {e.message}"
    except OSError as e:
        return None, f"daemon did not answer: {e.strerror or e}"


def _ago(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400}d{s // 3600 % 24}h" if s >= 86400 else (
        f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s")


def render_daemon(view: dict[str, Any] | None, why: str) -> str:
    if view is None:
        return "\n".join(textwrap.wrap(f"Daemon: not running or not reachable ({why})", WIDTH,
                                        subsequent_indent="  ")) + "\n\n"
    held = view.get("journal_entries", 0)
    out = [_fit(f"Daemon: pid {view.get('pid')}, up {_ago(float(view.get('uptime_s', 0)))}, "
                f"tick {view.get('tick', 0)}, version {view.get('version', '?')}", WIDTH),
           _fit(f"  policy {view.get('policy', '?')}", WIDTH),
           _fit(f"  agents {view.get('agents', 0)}, changes held {held} (journal), "
                f"home CPUs {view.get('home_cpus') or 'none'}, "
                f"completion {view.get('completion_cpus') or 'none'}", WIDTH)]
    for d in view.get("drift", []):
        out += textwrap.wrap(f"drift: {d.get('knob')} {d.get('target')} is "
                             f"{d.get('actual')!s}, agentlatd wrote {d.get('expected')!s} "
                             f"({d.get('action')})", WIDTH, initial_indent="  ",
                             subsequent_indent="    ")
    yielded = view.get("yielded", [])
    if yielded:
        names = ", ".join(f"{y['knob']} {y['target']}" for y in yielded[:6])
        more = f" and {len(yielded) - 6} more" if len(yielded) > 6 else ""
        out += textwrap.wrap(f"yielded to another writer: {names}{more}", WIDTH,
                             initial_indent="  ", subsequent_indent="    ")
    err = view.get("tuner_error") or ""
    out += textwrap.wrap(f"last tick's errors: {err or 'none'}", WIDTH, initial_indent="  ",
                         subsequent_indent="    ")
    for n in view.get("notes", []):
        out += textwrap.wrap(f"note: {n}", WIDTH, initial_indent="  ", subsequent_indent="    ")
    forks = view.get("forks") or {}
    if forks.get("source") == "listing":
        # an agent's exit restores only the forks the tick listed (docs/hostile.md)
        out += textwrap.wrap("forked processes: listed by the agent tick, no process events "
                             f"({forks.get('unavailable') or 'unknown'})", WIDTH,
                             initial_indent="  ", subsequent_indent="    ")
    return "\n".join(out) + "\n\n"


# -- JSON -------------------------------------------------------------------------
def _cl(cpus: CpuSet | None) -> str | None:
    return None if cpus is None else cpus.to_list()


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def _queue_irqs(d: Device, irqs: Mapping[int, Irq]) -> list[dict[str, Any]]:
    """devices -> queues -> IRQs: sysfs queues first, then IRQ-only labels."""
    out: list[dict[str, Any]] = []
    mine = [irqs[n] for n in d.irqs if n in irqs]

    def served_by(name: str) -> list[int]:
        kind, _, num = name.partition("-")
        return [i.irq for i in mine if i.queue == name or (num and i.queue == f"txrx-{num}"
                                                             and kind in ("rx", "tx"))]

    for q in d.net_queues:
        out.append({"name": q.name, "irqs": served_by(q.name), "rps_cpus": _cl(q.rps_cpus),
                    "rps_flow_cnt": q.rps_flow_cnt, "xps_cpus": _cl(q.xps_cpus)})
    if d.kind == "block":
        for h, cpus in d.hw_queue_cpus.items():
            out.append({"name": f"hctx{h}", "irqs": [], "cpus": cpus.to_list()})
    seen = {q["name"] for q in out}
    for i in mine:
        label = i.queue or "other"
        covered = label in seen or (label.startswith("txrx-")
                                    and f"rx-{label[5:]}" in seen)
        if covered:
            continue
        entry = next((e for e in out if e["name"] == label and "rps_cpus" not in e), None)
        if entry is None:
            out.append({"name": label, "irqs": [i.irq]})
        else:
            entry["irqs"].append(i.irq)
    return out


def to_json(machine: Machine, rates: Rates | None, root: Root, interval: float) -> dict[str, Any]:
    t = machine.topology
    irqs = {i.irq: i for i in machine.irqs}
    heat = rates.heat if rates else {}
    irq_per_cpu = rates.irq_per_cpu if rates else {}
    share = rates.irq_time_share if rates else {}
    cpus = [{
        "cpu": c.cpu, "core": c.core, "package": c.package, "node": c.node, "llc": c.llc,
        "llc_cpus": c.llc_cpus.to_list(), "smt_siblings": c.smt_siblings.to_list(),
        "online": c.online, "isolated": c.cpu in t.isolated, "nohz_full": c.cpu in t.nohz_full,
        "heat": _round(heat.get(c.cpu)), "irq_rate": _round(irq_per_cpu.get(c.cpu)),
        "irq_time_share": _round(share.get(c.cpu)),
    } for c in t.cpus]
    irq_list = [{
        "irq": i.irq, "name": i.name, "chip": i.chip, "device": i.device, "queue": i.queue,
        "total": i.total, "smp_affinity": i.smp_affinity.to_list(),
        "effective_affinity": _cl(i.effective_affinity), "affinity_hint": _cl(i.affinity_hint),
        "node": i.node, "managed": i.managed, "managed_reason": i.managed_reason,
        "rate": _round(sum(rates.irq_rate.get(i.irq, {}).values())) if rates else None,
    } for i in machine.irqs]
    devices = [{
        "name": d.name, "kind": d.kind, "driver": d.driver, "pci": d.pci,
        "numa_node": d.numa_node, "virtual": d.virtual, "ifindex": d.ifindex,
        "irqs": list(d.irqs), "queues": _queue_irqs(d, irqs),
        "threaded": d.threaded, "napi_defer_hard_irqs": d.napi_defer_hard_irqs,
        "gro_flush_timeout": d.gro_flush_timeout, "rq_affinity": d.rq_affinity,
        "block_devices": list(d.block_devices),
    } for d in machine.devices]
    return {
        "kernel": machine.kernel_release,
        "root": root.base,
        "interval_s": _round(rates.interval_s) if rates else (interval if interval > 0 else 0),
        "topology": {
            "possible": t.possible.to_list(), "present": t.present.to_list(),
            "online": t.online.to_list(), "isolated": t.isolated.to_list(),
            "nohz_full": t.nohz_full.to_list(),
            "nodes": {str(n): cpus.to_list() for n, cpus in t.nodes.items()},
        },
        "cpus": cpus,
        "irqs": irq_list,
        "devices": devices,
        "discontinuities": [{"kind": x.kind, "detail": x.detail}
                            for x in (rates.discontinuities if rates else ())],
    }


# -- text ---------------------------------------------------------------------------
def _fit(s: str, n: int) -> str:
    return s if len(s) <= n else s[: max(0, n - 1)] + "~"


def _dash(cpus: CpuSet | None) -> str:
    if cpus is None:
        return "?"
    return cpus.to_list() or "-"


def _irq_line(i: Irq, rates: Rates | None) -> str:
    rate = ""
    if rates is not None:
        rate = f"{sum(rates.irq_rate.get(i.irq, {}).values()):.0f}"
    eff = _dash(i.effective_affinity)
    return (f"  {i.irq:>5} {_fit(i.queue or '-', 8):<8} {i.total:>12} {rate:>7} "
            f"{_fit(_dash(i.smp_affinity), 14):<14} {_fit(eff, 14):<14} "
            f"{'yes' if i.managed else 'no':<3}")


def render_text(machine: Machine, rates: Rates | None) -> str:
    t = machine.topology
    out: list[str] = []
    out.append(_fit(f"agentlatd status: kernel {machine.kernel_release or '?'}, "
                    f"{len(t.possible)} possible CPUs, {len(t.nodes)} NUMA node(s)", WIDTH))
    out.append(_fit(f"online {_dash(t.online)}  isolated {_dash(t.isolated)}  "
                    f"nohz_full {_dash(t.nohz_full)}", WIDTH))
    for n, cpus in t.nodes.items():
        out.append(_fit(f"node {n}: {_dash(cpus)}", WIDTH))
    out.append("")
    out.append(f"CPUs (heat and rates over {rates.interval_s:.2f} s)" if rates
               else "CPUs (no heat: --interval 0)")
    out.append(f"  {'cpu':>5} {'on':<3} {'core':>5} {'pkg':>4} {'node':>4} {'llc':>5} "
               f"{'smt':<12} {'irq/s':>9} {'heat':>7}")
    for c in t.cpus:
        h = rates.heat.get(c.cpu) if rates else None
        r = rates.irq_per_cpu.get(c.cpu) if rates else None
        core = "-" if c.core < 0 else str(c.core)
        pkg = "-" if c.package < 0 else str(c.package)
        out.append(f"  {c.cpu:>5} {'yes' if c.online else 'no':<3} {core:>5} {pkg:>4} "
                   f"{c.node:>4} {c.llc:>5} {_fit(c.smt_siblings.to_list(), 12):<12} "
                   f"{'-' if r is None else f'{r:.0f}':>9} {'-' if h is None else f'{h:.2f}':>7}")
    out.append("")
    out.append("Devices, their queues and IRQs")
    irqs = {i.irq: i for i in machine.irqs}
    header = (f"  {'irq':>5} {'queue':<8} {'total':>12} {'/s':>7} {'affinity':<14} "
              f"{'effective':<14} {'mgd':<3}")
    quiet: list[str] = []
    for d in machine.devices:
        desc = [d.kind, d.driver or "-"]
        if d.pci:
            desc.append(f"pci {d.pci}")
        desc.append(f"node {'-' if d.numa_node is None else d.numa_node}")
        if d.virtual:
            desc.append("virtual")
        if d.net_queues:
            nrx = sum(1 for q in d.net_queues if q.name.startswith("rx-"))
            ntx = sum(1 for q in d.net_queues if q.name.startswith("tx-"))
            desc.append(f"{nrx} rx/{ntx} tx queues")
        if d.kind == "block" and d.hw_queue_cpus:
            desc.append(f"{len(d.hw_queue_cpus)} hctx")
        if d.rq_affinity is not None:
            desc.append(f"rq_affinity {d.rq_affinity}")
        line = _fit(f"{d.name}: {', '.join(desc)}", WIDTH)
        if not d.irqs:
            quiet.append(line)
            continue
        out.append(line)
        out.append(header)
        for n in d.irqs:
            if n in irqs:
                out.append(_irq_line(irqs[n], rates))
    if quiet:
        out.append("")
        out.append("Devices without IRQs of their own")
        out.extend(quiet)
    other = [i for i in machine.irqs if i.device is None]
    if other:
        out.append("")
        out.append("Other IRQs")
        out.append(f"  {'irq':>5} {'name':<22} {'total':>12} {'affinity':<14} "
                   f"{'effective':<14} {'mgd':<3}")
        for i in other:
            out.append(f"  {i.irq:>5} {_fit(i.name or '-', 22):<22} {i.total:>12} "
                       f"{_fit(_dash(i.smp_affinity), 14):<14} "
                       f"{_fit(_dash(i.effective_affinity), 14):<14} "
                       f"{'yes' if i.managed else 'no':<3}")
    managed = [i for i in machine.irqs if i.managed]
    if managed:
        out.append("")
        out.append(_fit(f"{len(managed)} kernel-managed IRQ(s): affinity set by the kernel, "
                        "a write fails (EIO; EPERM on a 0444 file).", WIDTH))
        first = managed[0]
        out.extend(textwrap.wrap(f"e.g. {first.irq} ({first.name}): {first.managed_reason}",
                                 WIDTH, initial_indent="  ", subsequent_indent="    ",
                                 break_on_hyphens=False))
    if rates is not None and rates.discontinuities:
        out.append("")
        for x in rates.discontinuities:
            out.append(_fit(f"note: {x.kind}: {x.detail}", WIDTH))
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.interval < 0:
        raise AgentlatdError(f"--interval must be 0 or more seconds, not {args.interval}.")
    pol = policy_mod.resolve(args.config)
    root = Root(args.root)
    if not root.exists("proc/interrupts"):
        raise AgentlatdError(f"{root.base} has no proc/interrupts: --root must name a "
                             "directory holding proc/ and sys/ (a capture or a fixture).")
    # the daemon's tick's sampling: two counter samples --interval seconds apart (on a
    # capture holding two, those), no rates for --interval 0
    snap = sample_once(root, pol, interval=args.interval)
    if snap.machine is None:
        raise AgentlatdError("; ".join(snap.errors))
    machine = snap.machine
    rates = snap.rates if args.interval > 0 else None
    # the running daemon's view, over its socket (only for this host, not a --root tree)
    if root.is_host or args.socket:
        view, why = daemon_view(args.socket or os.environ.get("AGENTLATD_SOCKET")
                                or pol.daemon.socket)
    else:
        view, why = None, "--root names a recorded tree, not this host"
    if args.json:
        doc = to_json(machine, rates, root, args.interval)
        doc["daemon"] = view
        if view is None:
            doc["daemon_unavailable"] = why
        sys.stdout.write(jsonout.dumps(doc) + "\n")
    else:
        daemon = render_daemon(view, why) if root.is_host or args.socket else ""
        sys.stdout.write(daemon + render_text(machine, rates))
    return 0
