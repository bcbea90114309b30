"""Benchmark: what one registration's journal work costs, by journal size.

    .venv/bin/python bench/journal.py                      # this checkout
    .venv/bin/python bench/journal.py --compare OLD.py     # and another journal.py

A registration journals its threads' originals before pinning them: the
engine adds its entries, saves (complete = false), writes the kernel, then
commits. This times exactly that sequence (2 new entries, save, commit) on a
journal already holding --entries entries (3 per agent: 1000 agents ~ 3000),
in a state directory on /dev/shm (tmpfs, as /run is), --rounds times; the
figures are per registration, wall clock in this process.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import shutil
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def load(path: pathlib.Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"journal_{abs(hash(path))}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def run(mod: ModuleType, entries: int, rounds: int) -> dict[str, Any]:
    d = pathlib.Path(tempfile.mkdtemp(dir="/dev/shm" if pathlib.Path("/dev/shm").is_dir()
                                      else None))
    try:
        j = mod.Journal(path=str(d / "journal.json"), root="/")
        for n in range(entries):
            j.add("task.affinity", f"{n}:{n * 7}:{n}", "0-3").written = "1"
        j.save()
        j.commit()
        times = []
        for r in range(rounds):
            t0 = time.perf_counter()
            es = [j.add("task.affinity", f"{10**7 + r}:{r}:{r * 2 + k}", "0-3") for k in range(2)]
            for e in es:
                e.written = "1"
            j.complete = False
            j.save()
            j.commit()
            times.append((time.perf_counter() - t0) * 1e6)
            j.remove_entries(es)  # the agent leaves again: the journal keeps its size
            j.save()
        size = sum(p.stat().st_size for p in d.iterdir() if p.name.startswith("journal"))
        return {"entries": entries, "p50_us": round(pct(times, 0.5), 1),
                "p99_us": round(pct(times, 0.99), 1), "bytes_on_disk_at_end": size}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, action="append", default=[])
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--compare", type=pathlib.Path, help="another journal.py, run first")
    args = ap.parse_args()
    mods = ([("compare " + str(args.compare), load(args.compare))] if args.compare else [])
    mods.append(("this checkout", load(REPO / "agentlatd/apply/journal.py")))
    for n in args.entries or [0, 3000]:
        for name, mod in mods:
            print(f"{name:40} {run(mod, n, args.rounds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
