"""The bench's report: summary tables (text), report.json, report.html with plots.

Every run is reported, not only medians: default placement is bimodal from
run to run, so a median alone hides half of the story. The
summary gives, per configuration, the median and the [min-max] over runs of
each run's p50/p99/p999; the per-run p999s in full; NET_RX softirqs per
CPU per run (where completions ran); the noise's throughput.

Plots (matplotlib, Agg backend, embedded as PNG in the HTML): step latency
CDF per configuration on a log latency axis, the tail (1 - CDF) on log-log
axes, and per-CPU NET_RX softirq bars.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import statistics
from typing import Any

from agentlatd.tools.bench.configs import CONFIGS

TARGET_P999_RATIO = 1.2
TARGET_CHAIN_RATIO = 1.2  # DS/DC step p999 within this of BS/BC's, and never above AS/AC's
TARGET_NOISE_SHARE = 0.10


def _ok_runs(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return [r for r in doc.get("runs", []) if r.get("config") == key and "error" not in r]


def _spread(vals: list[float]) -> tuple[float, float, float]:
    if not vals:
        return (0.0, 0.0, 0.0)
    return (statistics.median(vals), min(vals), max(vals))


def _us(ns: float) -> str:
    us = ns / 1e3
    return f"{us:.0f}" if us >= 10 else f"{us:.1f}"


def _fmt_spread(vals: list[float]) -> str:
    m, lo, hi = _spread(vals)
    return f"{_us(m)} [{_us(lo)}-{_us(hi)}]"


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Per-configuration numbers over runs, and the targets. Added to the doc as "summary"."""
    out: dict[str, Any] = {}
    keys = list(doc.get("configs", {}))
    for k in keys:
        runs = _ok_runs(doc, k)
        entry: dict[str, Any] = {"runs": len(runs)}
        for which in ("c", "python"):
            stages: dict[str, Any] = {}
            for stage in ("step", "net", "disk", "timer"):
                per = {q: [r[which]["stages"][stage][q] for r in runs if r[which]["stages"][stage]["count"]]
                       for q in ("p50", "p99", "p999")}
                stages[stage] = {q: {"median": _spread(v)[0], "min": _spread(v)[1], "max": _spread(v)[2],
                                     "per_run": v} for q, v in per.items()}
            entry[which] = stages
        cpus = sorted({c for r in runs for c in r["softirqs"]["NET_RX"]}, key=int)
        entry["net_rx_per_cpu"] = {c: [r["softirqs"]["NET_RX"].get(c, 0) for r in runs] for c in cpus}
        entry["block_per_cpu"] = {c: [r["softirqs"]["BLOCK"].get(c, 0) for r in runs] for c in cpus}
        # share of each CPU's time in softirq context (proc/stat): NET_RX counts
        # are softirq runs, not packets (one remote-RPS run drains many packets)
        shares = [r.get("cpu_share", {}) for r in runs]
        entry["softirq_time_share"] = {c: [sh.get("softirq", {}).get(c, 0.0) for sh in shares] for c in cpus}
        entry["busy_share"] = {c: [sh.get("busy", {}).get(c, 0.0) for sh in shares] for c in cpus}
        noise = [r["noise"] for r in runs if r.get("noise")]
        entry["flood_pps"] = [n["flood_pps"] for n in noise]
        entry["writeback_mbps"] = [n["writeback_mbps"] for n in noise]
        entry["hog_loops_per_s"] = [n["hog_loops_per_s"] for n in noise]
        entry["slow_causes"] = slow_causes([r for r in doc.get("attribution_runs", [])
                                            if r.get("config") == k and "error" not in r])
        out[k] = entry

    targets: dict[str, Any] = {}
    if "Q" in out and "D" in out and out["D"]["runs"] and out["Q"]["runs"]:
        q999 = out["Q"]["c"]["step"]["p999"]["median"]
        d999 = out["D"]["c"]["step"]["p999"]["median"]
        ratio = d999 / q999 if q999 else 0.0
        targets["p999_D_over_Q"] = {"D": d999, "Q": q999, "ratio": round(ratio, 3),
                                    "target": TARGET_P999_RATIO,
                                    "met": bool(q999) and ratio <= TARGET_P999_RATIO,
                                    "basis": "median over runs of each run's step p999 (C agent)"}
    if "A" in out and "D" in out and out["A"]["flood_pps"] and out["D"]["flood_pps"]:
        a = statistics.median(out["A"]["flood_pps"])
        d = statistics.median(out["D"]["flood_pps"])
        share = (a - d) / a if a else 0.0
        targets["noise_D_vs_A"] = {"A_pps": a, "D_pps": d, "loss": round(share, 3),
                                   "target": TARGET_NOISE_SHARE, "met": abs(share) <= TARGET_NOISE_SHARE,
                                   "basis": "median flood packets/s received by the sink"}
    for sfx in ("S", "C"):
        d, b, a = (out.get(k + sfx) for k in ("D", "B", "A"))
        if d and b and a and d["runs"] and b["runs"] and a["runs"]:
            d999, b999, a999 = (e["c"]["step"]["p999"]["median"] for e in (d, b, a))
            ratio = d999 / b999 if b999 else 0.0
            targets[f"p999_D{sfx}_vs_B{sfx}_A{sfx}"] = {
                "D": d999, "B": b999, "A": a999, "ratio_B": round(ratio, 3),
                "target": TARGET_CHAIN_RATIO,
                "met": bool(b999) and ratio <= TARGET_CHAIN_RATIO and d999 <= a999,
                "basis": "median over runs of each run's step p999 (C agent)"}
    return {"configs": out, "targets": targets}


# the causes of agentlatd/steps/attribute.py, in its order, as the headline's columns
CAUSE_SHORT = {"running": "run", "runnable": "rnbl", "irq": "irq", "softirq": "sirq",
               "blocked:block": "b:blk", "blocked:net": "b:net", "blocked:timer": "b:tmr",
               "blocked:task": "b:task", "blocked:irq": "b:irq", "blocked:other": "b:oth", "unknown": "unkn"}
CHANGE_PAIRS = (("A", "D"), ("AS", "DS"), ("AC", "DC"), ("B", "D"))
_PID = re.compile(r"^pid \d+ ")


def slow_causes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The C agent's slow steps (each run's >= p99, agentlatd/tools/bench/attribution.py)
    over the configuration's attribution runs (apart from the measured rounds): time
    by cause, summed, and the top culprits, named by command (a pid differs from run
    to run)."""
    by: dict[str, int] = {}
    culprits: dict[tuple[str, str], int] = {}
    total = steps = traced = 0
    methods: set[str] = set()
    errors: list[str] = []
    for r in runs:
        ss = r.get("slow_steps")
        if not ss:
            continue
        if "error" in ss:
            errors.append(ss["error"])
            continue
        traced += 1
        methods.add(ss.get("method", ""))
        summ = ss["summary"]
        total += summ["total_ns"]
        steps += summ["steps"]
        for c, v in summ["by_cause"].items():
            by[c] = by.get(c, 0) + v["ns"]
        for c in summ["culprits"]:
            key = (c["cause"], _PID.sub("", c["who"]))
            culprits[key] = culprits.get(key, 0) + c["ns"]
    return {"runs": traced, "slow_steps": steps, "total_ns": total, "methods": sorted(methods),
            "errors": errors,
            "by_cause": {c: {"ns": ns, "share": round(ns / total, 4) if total else 0.0,
                             "ms_per_run": round(ns / traced / 1e6, 3) if traced else 0.0}
                         for c, ns in sorted(by.items(), key=lambda kv: -kv[1])},
            "culprits": [{"cause": c, "who": w, "ns": ns, "share": round(ns / total, 4) if total else 0.0}
                         for (c, w), ns in sorted(culprits.items(), key=lambda kv: -kv[1])[:3]]}


def slow_cause_lines(summ: dict[str, Any]) -> list[str]:
    """The headline's section: per configuration the share of slow-step time by cause,
    its top culprits, and what changed from A to D (and the chain pairs)."""
    rows = {k: e["slow_causes"] for k, e in summ.items() if e.get("slow_causes", {}).get("runs")}
    if not rows:
        errs = sorted({m for e in summ.values() for m in e.get("slow_causes", {}).get("errors", [])})
        return ["", "Slow steps by cause: not traced" + (f" ({errs[0]})" if errs else "")]
    cols = [c for c in CAUSE_SHORT if any(r["by_cause"].get(c, {}).get("share", 0) >= 0.005
                                         for r in rows.values())]
    methods = sorted({m for r in rows.values() for m in r["methods"]})
    lines = ["", f"C agent slow steps (>= p99) by cause, 1 traced run each ({', '.join(methods)})",
             f"{'cfg':<4}{'slow':>5}{'ms/run':>7} " + "".join(f"{CAUSE_SHORT[c]:>6}" for c in cols)]
    for k, r in rows.items():
        ms = r["total_ns"] / r["runs"] / 1e6
        lines.append(f"{k:<4}{r['slow_steps']:>5}{ms:>7.1f} "
                     + "".join(f"{r['by_cause'].get(c, {}).get('share', 0) * 100:>5.0f}%" for c in cols))
        top = "; ".join(f"{c['cause']} {c['who']} {c['share'] * 100:.0f}%" for c in r["culprits"][:2])
        if top:
            lines += _wrap(f"     top: {top}", "       ")
    for a, d in CHANGE_PAIRS:
        if a in rows and d in rows:
            lines += _wrap(f"{a} -> {d}: {_change(rows[a], rows[d])}", "   ")
    return lines


def _change(a: dict[str, Any], d: dict[str, Any]) -> str:
    """Slow-step ms per run, and the causes that fell (or rose) the most."""
    def per_run(r: dict[str, Any], c: str) -> float:
        return float(r["by_cause"].get(c, {}).get("ms_per_run", 0.0))

    ta, td = a["total_ns"] / a["runs"] / 1e6, d["total_ns"] / d["runs"] / 1e6
    moved = sorted(CAUSE_SHORT, key=lambda c: -abs(per_run(a, c) - per_run(d, c)))[:2]
    parts = [f"{c} {per_run(a, c):.1f} -> {per_run(d, c):.1f}" for c in moved
             if abs(per_run(a, c) - per_run(d, c)) >= 0.05]
    return f"slow steps {ta:.1f} -> {td:.1f} ms/run" + (f"; {', '.join(parts)}" if parts else "")


def headline(doc: dict[str, Any]) -> str:
    """The closing note's table, 80 columns."""
    summ = doc["summary"]["configs"]
    lines: list[str] = []
    host = doc.get("host", {})
    lines.append(f"agentlatd bench: {len(doc.get('runs', []))} runs, {doc.get('duration_s', 0):.0f} s, "
                 f"agent CPU {host.get('agent_cpu')}, completion CPU {host.get('completion_cpu')}")
    for which, title in (("c", "C agent"), ("python", "Python agent")):
        for stage in ("step", "net"):
            lines.append("")
            lines.append(f"{title}, {stage} latency (us): median [min-max] over runs")
            lines.append(f"{'cfg':<4}{'runs':>4}  {'p50':<16}{'p99':<20}{'p999':<20}")
            for k, e in summ.items():
                st = e[which][stage]
                lines.append(f"{k:<4}{e['runs']:>4}  {_fmt_spread(st['p50']['per_run']):<16}"
                             f"{_fmt_spread(st['p99']['per_run']):<20}{_fmt_spread(st['p999']['per_run']):<20}")
    lines.append("")
    lines.append("C agent step p999 of every run (us), in run order")
    for k, e in summ.items():
        vals = " ".join(_us(v) for v in e["c"]["step"]["p999"]["per_run"])
        lines += _wrap(f"{k}: {vals}", "   ")
    lines.append("")
    lines.append("NET_RX softirqs per run on each CPU (median [min-max]); flood kpps")
    for k, e in summ.items():
        cpus = "  ".join(f"cpu{c} {_count_spread(v)}" for c, v in e["net_rx_per_cpu"].items())
        fl = e["flood_pps"]
        flood = (f"{statistics.median(fl) / 1e3:.0f} [{min(fl) / 1e3:.0f}-{max(fl) / 1e3:.0f}]"
                 if fl else "-")
        lines += _wrap(f"{k}: {cpus}  flood {flood}", "   ")
    lines.append("")
    lines.append("Share of CPU time in softirq / busy, per CPU (median over runs)")
    for k, e in summ.items():
        parts = []
        for c in e["softirq_time_share"]:
            so = e["softirq_time_share"][c]
            bu = e["busy_share"][c]
            parts.append(f"cpu{c} {_pct(so)} / {_pct(bu)}")
        lines += _wrap(f"{k}: " + "   ".join(parts), "   ")
    lines += slow_cause_lines(summ)
    t = doc["summary"]["targets"]
    if t:
        lines.append("")
    if "p999_D_over_Q" in t:
        x = t["p999_D_over_Q"]
        lines.append(f"target p999(D) <= {x['target']} x p999(Q): {_us(x['D'])} vs {_us(x['Q'])} us, "
                     f"ratio {x['ratio']:.2f}: {'met' if x['met'] else 'NOT met'}")
    if "noise_D_vs_A" in t:
        x = t["noise_D_vs_A"]
        lines.append(f"target noise(D) within 10% of A: {x['D_pps'] / 1e3:.0f}k vs {x['A_pps'] / 1e3:.0f}k "
                     f"pps ({-x['loss'] * 100:+.1f}%): {'met' if x['met'] else 'NOT met'}")
    for sfx in ("S", "C"):
        x = t.get(f"p999_D{sfx}_vs_B{sfx}_A{sfx}")
        if x:
            lines.append(f"target p999(D{sfx}) <= {x['target']} x p999(B{sfx}) and <= p999(A{sfx}): "
                         f"{_us(x['D'])} vs {_us(x['B'])} / {_us(x['A'])} us: "
                         f"{'met' if x['met'] else 'NOT met'}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _pct(v: list[float]) -> str:
    return f"{statistics.median(v) * 100:.0f}%" if v else "-"


def _count_spread(v: list[int]) -> str:
    if not v:
        return "-"
    m = statistics.median(v)
    return f"{_k(m)} [{_k(min(v))}-{_k(max(v))}]"


def _k(n: float) -> str:
    return f"{n / 1e3:.0f}k" if n >= 10_000 else f"{n:.0f}"


def _wrap(text: str, indent: str, width: int = 80) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]


# ---------------------------------------------------------------------------
# plots


def _plots(doc: dict[str, Any]) -> dict[str, str]:
    """name -> base64 PNG; {} when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    out: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        out[name] = base64.b64encode(buf.getvalue()).decode()

    for which, title in (("c", "C agent"), ("python", "Python agent")):
        cdfs = doc.get("cdf", {}).get(which, {})
        if not cdfs:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for k, stages in cdfs.items():
            pts = stages.get("step", [])
            if not pts:
                continue
            xs = [p[0] / 1e3 for p in pts]
            ys = [p[1] for p in pts]
            axes[0].plot(xs, ys, label=f"{k} {CONFIGS[k].title}" if k in CONFIGS else k)
            axes[1].plot(xs, [max(1e-6, 1 - y) for y in ys], label=k)
            npts = stages.get("net", [])
            axes[2].plot([p[0] / 1e3 for p in npts], [max(1e-6, 1 - p[1]) for p in npts], label=k)
        axes[0].set_xscale("log")
        axes[0].set_xlabel("step latency (us, log)")
        axes[0].set_ylabel("CDF")
        axes[0].set_title(f"{title}: step latency CDF")
        axes[0].legend()
        for ax, what in ((axes[1], "step"), (axes[2], "net request/reply")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{what} latency (us, log)")
            ax.set_ylabel("1 - CDF (log)")
            ax.set_title(f"{title}: {what} tail")
            ax.axhline(1e-2, color="grey", lw=0.5, ls=":")
            ax.axhline(1e-3, color="grey", lw=0.5, ls=":")
            ax.legend()
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
        save(fig, f"cdf_{which}")

    summ = doc.get("summary", {}).get("configs", {})
    if summ:
        import textwrap

        fig, axes = plt.subplots(1, 2, figsize=(14, 4.2))
        keys = list(summ)
        labels = ["\n".join(textwrap.wrap(f"{k} {CONFIGS[k].title}" if k in CONFIGS else k, 14))
                  for k in keys]
        cpus = sorted({c for e in summ.values() for c in e["net_rx_per_cpu"]}, key=int)
        width = 0.8 / max(1, len(cpus))
        for ax, field, ylabel, title in (
                (axes[0], "net_rx_per_cpu", "NET_RX softirq runs per run",
                 "Where NET_RX ran (/proc/softirqs delta)"),
                (axes[1], "softirq_time_share", "share of CPU time in softirq",
                 "Softirq time per CPU (/proc/stat)")):
            for j, c in enumerate(cpus):
                meds, lo, hi = [], [], []
                for k in keys:
                    v = summ[k][field].get(c, [])
                    m = statistics.median(v) if v else 0
                    meds.append(m)
                    lo.append(m - (min(v) if v else 0))
                    hi.append((max(v) if v else 0) - m)
                xs = [i + j * width for i in range(len(keys))]
                ax.bar(xs, meds, width, yerr=[lo, hi], capsize=3, label=f"CPU{c}")
            ax.set_xticks([i + width * (len(cpus) - 1) / 2 for i in range(len(keys))])
            ax.set_xticklabels(labels, fontsize=8)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{title}, median, min-max")
            ax.legend()
        save(fig, "softirq_bars")
    return out


# ---------------------------------------------------------------------------
# files


def write(doc: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Write report.json and report.html into out_dir; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    doc["summary"] = summarize(doc)
    doc["headline"] = headline(doc)
    jpath = os.path.join(out_dir, "report.json")
    with open(jpath + ".tmp", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(jpath + ".tmp", jpath)
    hpath = os.path.join(out_dir, "report.html")
    with open(hpath + ".tmp", "w") as f:
        f.write(render_html(doc))
    os.replace(hpath + ".tmp", hpath)
    return jpath, hpath


def render_html(doc: dict[str, Any]) -> str:
    plots = _plots(doc)
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>agentlatd bench</title>",
        "<style>body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em}"
        "pre{background:#f6f6f6;padding:.8em;overflow-x:auto}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:2px 6px;"
        "text-align:right}th{background:#eee}</style></head><body>",
        "<h1>agentlatd bench</h1>",
        f"<p>Started {e(str(doc.get('started', '')))}, {e(str(doc.get('duration_s', '')))} s, "
        f"kernel {e(str(doc.get('host', {}).get('kernel', '')))}, "
        f"load average before {e(str(doc.get('host', {}).get('loadavg_before', '')))}</p>",
        "<h2>Configurations</h2><ul>",
    ]
    for k, c in doc.get("configs", {}).items():
        parts.append(f"<li><b>{e(k)}</b> {e(c['title'])}: {e(c['description'])}</li>")
    parts.append("</ul><h2>Summary</h2><pre>" + e(doc.get("headline", "")) + "</pre>")
    for name, title in (("cdf_c", "C agent"), ("cdf_python", "Python agent"), ("softirq_bars", "NET_RX")):
        if name in plots:
            parts.append(f"<h2>{e(title)}</h2>"
                         f"<img alt='{e(name)}' src='data:image/png;base64,{plots[name]}'>")
    if not plots:
        parts.append("<p>matplotlib is not installed: no plots (pip install 'agentlatd[bench]').</p>")
    parts.append("<h2>Every run</h2><table><tr><th>#</th><th>cfg</th><th>round</th>"
                 "<th>steps</th><th>step p50</th><th>p99</th><th>p999</th><th>max</th>"
                 "<th>net p99</th><th>net p999</th><th>disk p999</th><th>py step p99</th>"
                 "<th>py p999</th><th>NET_RX per CPU</th><th>flood pps</th><th>agent last CPU</th></tr>")
    for r in doc.get("runs", []):
        if "error" in r:
            parts.append(f"<tr><td>{r.get('index')}</td><td>{e(r['config'])}</td><td>{r.get('round')}</td>"
                         f"<td colspan=13 style='text-align:left'>{e(r['error'])}</td></tr>")
            continue
        st = r["c"]["stages"]
        py = r["python"]["stages"]["step"]
        nrx = ", ".join(f"{c}:{v}" for c, v in r["softirqs"]["NET_RX"].items())
        fl = (r.get("noise") or {}).get("flood_pps", "")
        cells = [r.get("index"), r["config"], r["round"], st["step"]["count"], _us(st["step"]["p50"]),
                 _us(st["step"]["p99"]), _us(st["step"]["p999"]), _us(st["step"]["max"]),
                 _us(st["net"]["p99"]), _us(st["net"]["p999"]), _us(st["disk"]["p999"]),
                 _us(py["p99"]), _us(py["p999"]), nrx, fl,
                 ",".join(str(v) for v in r.get("agent_last_cpu", {}).values())]
        parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table><p>Latencies in us. Raw data: report.json.</p>")
    if doc.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in doc["notes"]) + "</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)
