#!/usr/bin/env python3
"""CPU time of one sample + model tick on a synthetic 256-CPU x 2000-IRQ host.

Builds a host tree with bench/synth.py in a temp dir (fixed seed), then for
each scenario runs N ticks of

    cur = read_counters(root, watched, prev)    sample/counters.py
    rates = compute_rates(prev, cur, heat)      model/rates.py

timing only those two calls with time.process_time() (user + system CPU of
this process), and prints the median and p99 per tick next to the naive
baseline measured in the same run: read the whole /proc/interrupts, split
every line, int() every count, and subtract per IRQ per CPU.

Scenarios:
  sysfs 10%      /sys/kernel/irq present; 10% of the IRQs fire per tick (a busy host)
  sysfs all      worst case: every IRQ fires every tick
  proc 10%/all   the same without /sys/kernel/irq: the /proc/interrupts
                 line-skip fallback (old kernels, recorded trees)
  naive 10%      the baseline: full split parse of /proc/interrupts per tick

The tree is plain files on tmpfs (/dev/shm when there is one), so the
kernel's own cost of generating /proc text on a real host is not in these
figures; they measure agentlatd's share.

Metrics (agentlatd/metrics.py), on the same host and ticks:
  metrics off    the tick alone
  metrics on     the tick plus what the daemon does per tick for metrics:
                 Metrics.observe_tick() (counter additions; nothing rendered)
  per scrape     what one scrape costs, OFF the tick: Metrics.view() (main
                 thread) and render_view() (the HTTP thread), text 0.0.4,
                 OpenMetrics, gzip; with --agents agents reporting steps
  exposition     the same View through prometheus_client's exposition
                 (generate_latest) next to the hand-written renderer

    .venv/bin/python bench/tick.py            full run (~1 minute)
    .venv/bin/python bench/tick.py --quick    a few ticks per scenario (~15 s)
    .venv/bin/python bench/tick.py --metrics-only --quick   the metrics part only
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from synth import SynthHost

from agentlatd import stepstats as stats
from agentlatd.cpuset import CpuSet
from agentlatd.metrics import Family, Metrics, View, families, process_families, render_view
from agentlatd.model.rates import compute_rates
from agentlatd.policy import HeatPolicy, default
from agentlatd.sample.counters import CounterSnapshot, read_counters
from agentlatd.sample.interrupts import parse_interrupts
from agentlatd.sample.softirqs import parse_softirqs, read_softirqs
from agentlatd.sample.stat import parse_stat, read_stat
from agentlatd.sysfs.root import Root

TARGET_MS = 5.0


def p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[max(0, math.ceil(0.99 * len(s)) - 1)]


def proc_only_root(base: str, work: str) -> Root:
    """A root that shares base's proc/ and cpu files but has no sys/kernel/irq."""
    d = os.path.join(work, "proc-only")
    os.makedirs(os.path.join(d, "sys"), exist_ok=True)
    os.symlink(os.path.join(base, "proc"), os.path.join(d, "proc"))
    os.symlink(os.path.join(base, "sys", "devices"), os.path.join(d, "sys", "devices"))
    return Root(d)


def run_ticks(
    host: SynthHost, root: Root, share: float, ticks: int, watched: frozenset[int], heat: HeatPolicy
) -> tuple[list[float], CounterSnapshot]:
    prev = read_counters(root, watched)  # warm-up: the first tick reads every watched IRQ
    times: list[float] = []
    cur = prev
    for _ in range(ticks):
        host.tick(share)
        t0 = time.process_time()
        cur = read_counters(root, watched, prev)
        rates = compute_rates(prev, cur, heat)
        t1 = time.process_time()
        times.append((t1 - t0) * 1e3)
        if rates.discontinuities:
            raise SystemExit(f"unexpected discontinuity: {rates.discontinuities}")
        prev = cur
    return times, cur


def naive_state(root: Root) -> tuple[dict[int, list[int]], int]:
    """The baseline sample: the whole /proc/interrupts, split and int()ed."""
    text = root.read_text("proc/interrupts")
    lines = text.splitlines()
    ncol = len(lines[0].split())
    irqs: dict[int, list[int]] = {}
    for line in lines[1:]:
        toks = line.split()
        if toks and toks[0][:-1].isdigit():
            irqs[int(toks[0][:-1])] = [int(x) for x in toks[1:ncol + 1]]
    parse_stat(read_stat(root))
    parse_softirqs(read_softirqs(root))
    return irqs, ncol


def run_naive(host: SynthHost, root: Root, share: float, ticks: int) -> list[float]:
    prev, ncol = naive_state(root)
    times: list[float] = []
    for _ in range(ticks):
        host.tick(share)
        t0 = time.process_time()
        cur, ncol = naive_state(root)
        per_cpu = [0] * ncol
        for irq, c in cur.items():
            p = prev.get(irq)
            if p is None:
                continue
            d = [a - b for a, b in zip(c, p, strict=False)]
            per_cpu = [x + y for x, y in zip(per_cpu, d, strict=False)]
        t1 = time.process_time()
        times.append((t1 - t0) * 1e3)
        prev = cur
    return times


def run_parse_only(root: Root, ticks: int) -> list[float]:
    times = []
    for _ in range(ticks):
        t0 = time.process_time()
        parse_interrupts(root.read_text("proc/interrupts"))
        times.append((time.process_time() - t0) * 1e3)
    return times


class BenchAgent:
    """What Metrics.view() reads of an agent (agents/registry.py Agent)."""

    def __init__(self, i: int, hist: stats.Histogram) -> None:
        self.agent_id = f"agent-{i:04d}"
        self.latency_class = ("interactive", "normal", "background")[i % 3]
        self.home_cpu: int | None = i % 64
        self.state = "placed"
        self.proc = (10_000 + i, 1)
        self.hist = hist


def bench_agents(n: int, seed: int) -> list[BenchAgent]:
    import random
    rng = random.Random(seed)
    out = []
    for i in range(n):
        h = stats.Histogram.empty()
        h.add_many(int(math.exp(rng.uniform(math.log(20e3), math.log(50e6)))) for _ in range(2000))
        out.append(BenchAgent(i, h))
    return out


def client_render(fams: list[Family], openmetrics: bool) -> bytes:
    """The same families through prometheus_client's exposition (generate_latest)."""
    from prometheus_client import CollectorRegistry, openmetrics
    from prometheus_client import exposition as ex
    from prometheus_client.metrics_core import Metric

    class Coll:
        def collect(self) -> list[Metric]:
            out = []
            for f in fams:
                m = Metric(f.name, f.help, f.type if f.type != "untyped" else "unknown")
                dflt = {"counter": "_total", "info": "_info"}.get(f.type, "")
                for suffix, labels, value in f.samples:
                    m.add_sample(f.name + (suffix or dflt), dict(labels), value)
                out.append(m)
            return out

    reg = CollectorRegistry(auto_describe=False)
    reg.register(Coll())  # type: ignore[arg-type]
    return (openmetrics.exposition.generate_latest(reg) if openmetrics  # type: ignore[attr-defined]
            else ex.generate_latest(reg))


def run_metrics(host: SynthHost, root: Root, share: float, ticks: int, watched: frozenset[int],
                heat: HeatPolicy, n_agents: int, seed: int) -> None:
    """The tick with metrics off and on, side by side, then the per-scrape cost."""
    import gzip
    pol = default()
    m = Metrics()
    cpus = host.ncpu
    comp, home = CpuSet(range(0, 4)), CpuSet(range(4, cpus))
    prev = read_counters(root, watched)
    off: list[float] = []
    on: list[float] = []
    obs: list[float] = []
    for _ in range(ticks):
        host.tick(share)
        t0 = time.process_time()
        cur = read_counters(root, watched, prev)
        rates = compute_rates(prev, cur, heat)
        t1 = time.process_time()
        # what the daemon adds per tick with metrics on; timed on the same
        # tick, so host noise between ticks does not enter the comparison
        m.observe_tick(duration_s=t1 - t0, rates=rates, completion=comp, home=home,
                       online=CpuSet(range(cpus)), hot_threshold=heat.hot, active_changes=10,
                       softirqs=cur.softirqs, stat=cur.stat)
        t2 = time.process_time()
        off.append((t1 - t0) * 1e3)
        on.append((t2 - t0) * 1e3)
        obs.append((t2 - t1) * 1e3)
        prev = cur
    print(f"  {'tick, metrics off':34s} {statistics.median(off):8.2f} {p99(off):8.2f} "
          f"{max(off):8.2f}  n={len(off)}")
    print(f"  {'tick + metrics (observe_tick)':34s} {statistics.median(on):8.2f} {p99(on):8.2f} "
          f"{max(on):8.2f}  n={len(on)}")
    print(f"  metrics on / off (median): {statistics.median(on) / statistics.median(off):.3f}x; "
          f"observe_tick alone {statistics.median(obs):.3f} ms median, {p99(obs):.3f} ms p99 "
          "-- nothing is rendered in the tick")
    agents = bench_agents(n_agents, seed)
    n = max(3, ticks // 4)
    print(f"\n  per scrape, off the tick ({n_agents} agents x 2000 steps, "
          f"metrics.max_agents={pol.metrics.max_agents}):")

    def timed(fn: Callable[[], object]) -> tuple[float, object]:
        ts, out = [], None
        for _ in range(n):
            t0 = time.process_time()
            out = fn()
            ts.append((time.process_time() - t0) * 1e3)
        return statistics.median(ts), out

    tv, v = timed(lambda: m.view(agents, pol))
    assert isinstance(v, View)
    procs = process_families()
    t_txt, txt = timed(lambda: render_view(v, False).encode())
    t_om, _ = timed(lambda: render_view(v, True).encode())
    assert isinstance(txt, bytes)
    t_gz, gz = timed(lambda: gzip.compress(txt, compresslevel=6))
    assert isinstance(gz, bytes)
    print(f"    view() (main thread)             {tv:8.2f} ms")
    nseries = sum(1 for x in txt.splitlines() if x and not x.startswith(b"#"))
    print(f"    render text 0.0.4 (HTTP thread)  {t_txt:8.2f} ms  {len(txt) / 1e3:.0f} KB, "
          f"{nseries} series")
    print(f"    render OpenMetrics               {t_om:8.2f} ms")
    print(f"    gzip level 6                     {t_gz:8.2f} ms  {len(gz) / 1e3:.0f} KB "
          f"({len(txt) / len(gz):.0f}x smaller)")
    vec = dataclasses.replace(pol, metrics=dataclasses.replace(pol.metrics,
                                                              per_cpu_softirq_vectors=True))
    big = render_view(Metrics.view(m, agents, vec), False).encode()
    print(f"    with per_cpu_softirq_vectors on: {len(big) / 1e3:.0f} KB "
          f"(+{(len(big) - len(txt)) / 1e3:.0f} KB)")
    fams = families(v) + procs
    t_hand, _ = timed(lambda: render_view(v, False).encode())
    try:
        t_cl, cl = timed(lambda: client_render(fams, False))
        t_hand_om, _ = timed(lambda: render_view(v, True).encode())
        t_cl_om, _ = timed(lambda: client_render(fams, True))
    except ImportError:
        print("    (prometheus_client not installed: exposition comparison skipped)")
        return
    assert isinstance(cl, bytes)
    print(f"  exposition of the same View: hand-written {t_hand:.2f} ms, prometheus_client "
          f"generate_latest {t_cl:.2f} ms ({t_cl / t_hand:.1f}x); OpenMetrics {t_hand_om:.2f} vs "
          f"{t_cl_om:.2f} ms ({t_cl_om / t_hand_om:.1f}x)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few ticks per scenario")
    ap.add_argument("--ticks", type=int, default=0, help="ticks per fast scenario (default 200, quick 20)")
    ap.add_argument("--cpus", type=int, default=256)
    ap.add_argument("--irqs", type=int, default=2000)
    ap.add_argument("--share", type=float, default=0.1, help="share of IRQs that fire per tick")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--agents", type=int, default=100, help="agents in the metrics scenario")
    ap.add_argument("--metrics-only", action="store_true", help="only the metrics scenarios")
    args = ap.parse_args(argv)
    fast = args.ticks or (20 if args.quick else 200)
    slow = max(3, fast // 4)
    naive_n = max(3, fast // 10)

    tmp_parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    work = tempfile.mkdtemp(prefix="agentlatd-bench-", dir=tmp_parent)
    try:
        base = os.path.join(work, "host")
        t0 = time.monotonic()
        host = SynthHost(base, ncpu=args.cpus, nirq=args.irqs, seed=args.seed)
        host.write_all()
        size = os.path.getsize(os.path.join(base, "proc", "interrupts"))
        print(f"agentlatd tick benchmark: synthetic host {args.cpus} CPUs x {args.irqs} IRQs, "
              f"seed {args.seed}")
        print(f"/proc/interrupts {size / 1e6:.1f} MB, /proc/stat intr {host.nr_irqs} entries, "
              f"built in {time.monotonic() - t0:.1f} s")
        print(f"tree: {work}")
        print("CPU per tick = time.process_time() of read_counters + compute_rates")
        print()
        sys_root = Root(base)
        proc_root = proc_only_root(base, work)
        watched = frozenset(q.irq for q in host.irqs)
        heat = HeatPolicy()
        pct = f"{args.share:.0%}"
        rows: list[tuple[str, int, list[float]]] = []

        def add(name: str, n: int, fn: Callable[[], list[float]]) -> list[float]:
            ts = fn()
            rows.append((name, n, ts))
            print(f"  {name:34s} {statistics.median(ts):8.2f} {p99(ts):8.2f} {max(ts):8.2f}  n={n}",
                  flush=True)
            return ts

        print(f"  {'scenario':34s} {'median':>8s} {'p99':>8s} {'max':>8s}  (ms)")
        if args.metrics_only:
            run_metrics(host, sys_root, args.share, fast, watched, heat, args.agents, args.seed)
            return 0
        a = add(f"tick, sysfs, {pct} IRQs fire", fast,
                lambda: run_ticks(host, sys_root, args.share, fast, watched, heat)[0])
        add("tick, sysfs, all IRQs fire", slow,
            lambda: run_ticks(host, sys_root, 1.0, slow, watched, heat)[0])
        c = add(f"tick, /proc/interrupts, {pct} fire", fast,
                lambda: run_ticks(host, proc_root, args.share, fast, watched, heat)[0])
        add("tick, /proc/interrupts, all fire", slow,
            lambda: run_ticks(host, proc_root, 1.0, slow, watched, heat)[0])
        n = add(f"naive full split parse, {pct} fire", naive_n,
                lambda: run_naive(host, sys_root, args.share, naive_n))
        add("parse_interrupts() alone (ref)", naive_n, lambda: run_parse_only(sys_root, naive_n))
        print()
        med_a, med_c, med_n = statistics.median(a), statistics.median(c), statistics.median(n)
        print(f"naive / tick (median): sysfs path {med_n / med_a:.0f}x, "
              f"/proc/interrupts path {med_n / med_c:.0f}x")
        ok = med_a <= TARGET_MS
        print(f"target <= {TARGET_MS:.0f} ms CPU per tick ({pct} fire, sysfs): "
              f"median {med_a:.2f} ms, p99 {p99(a):.2f} ms -> {'MET' if ok else 'NOT MET'}")
        print("\nmetrics (agentlatd/metrics.py), same host:")
        run_metrics(host, sys_root, args.share, fast, watched, heat, args.agents, args.seed)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
