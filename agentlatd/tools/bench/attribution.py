"""Why the bench's slow steps were slow: each run's C agent steps, from its step ring
(docs/protocol.md, written by probe.c), attributed by `trace --slow-steps`'s
tracer and pure attribution (agentlatd/steps/) while the agent runs.

The tracer costs the agent +30-40 % at p50 and several x at p99
(bench/causes.py --cost), so it runs in one extra run per configuration after
the measured rounds (harness.run), whose latencies are kept out of the
comparisons; it runs from before that run's first C agent step to after its
last, and the slow steps are those at or above that run's own p99. What comes
back is `trace --slow-steps --json`'s summary: the share of slow-step time by
cause and the top culprits, which
agentlatd/tools/bench/report.py sums per configuration ("why A is slow, and
what D removed"). A tracer that cannot run is a note in the run, never a
failed run: the latency figures do not depend on it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from typing import Any

from agentlatd.steps.ring import RingReader, StepRecord
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace import slow_steps as slow
from agentlatd.tools.trace.bpftrace import Unavailable

SLACK_S = 60.0  # what the tracer adds to a run at most: attach (<= 60 s: StepTracer.start), parse
RING = 1 << 16  # records: read every 0.25 s, 65536 hold 4 s of 16 us steps
BACKENDS = (*slow.BACKENDS, "off")


def wait_begin(path: str, timeout: float, alive: threading.Thread) -> bool:
    """Until the tracer printed its "B" line (its probes are attached) in `path`;
    False when it did not (or the tracer thread ended first)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and alive.is_alive():
        with contextlib.suppress(FileNotFoundError), open(path) as f:
            if any(line.startswith("B ") for line in f):
                return True
        time.sleep(0.05)
    return False


class StepTracer:
    """One run's attribution: start() before the agent's go, finish() after its end."""

    def __init__(self, root: Root, pid: int, seconds: float, backend: str, workdir: str) -> None:
        self.root, self.pid, self.seconds, self.backend = root, pid, seconds, backend
        self.wd = tempfile.mkdtemp(prefix="attribution-", dir=workdir)
        self.records: list[StepRecord] = []
        self.reader: RingReader | None = None
        self.result: dict[str, Any] = {}
        self.thread: threading.Thread | None = None
        self.error = ""

    def start(self) -> bool:
        deadline = time.monotonic() + 5
        while self.reader is None and time.monotonic() < deadline:
            self.reader = RingReader.open(self.root, self.pid)
            if self.reader is None:
                time.sleep(0.02)
        if self.reader is None:
            self.error = f"no step ring found in the C agent (pid {self.pid})"
            return False
        reader = self.reader

        def tick() -> None:
            self.records.extend(reader.read())

        def trace() -> None:
            try:
                self.result["trace"] = slow.traced(self.root, [self.pid], self.seconds, self.wd, tick,
                                                   self.backend)
            except Unavailable as e:
                self.result["error"] = str(e)

        self.thread = threading.Thread(target=trace, name="bench-step-tracer", daemon=True)
        self.thread.start()
        if not wait_begin(os.path.join(self.wd, "events.txt"), 60, self.thread):
            self.thread.join(self.seconds + 90)
            self.error = self.result.get("error", "the tracer did not attach within 60 s")
            return False
        return True

    def finish(self) -> dict[str, Any]:
        """The run's slow-step summary (or {"error": why})."""
        try:
            if self.thread is None or self.reader is None:
                return {"error": self.error or "not started"}
            self.thread.join(self.seconds + 90)
            if self.thread.is_alive():
                return {"error": "the tracer did not finish"}
            if "error" in self.result:
                return {"error": self.result["error"]}
            tr, method, why = self.result["trace"]
            doc = slow.analyse(tr, {self.pid: self.records}, {self.pid: [self.pid]}, None, None)
            out: dict[str, Any] = {
                "method": method, "threshold_ns": doc["threshold_ns"].get(str(self.pid), 0),
                "steps_seen": doc["steps_seen"], "slow_steps": doc["slow_steps"],
                "lost_events": doc["lost_events"], "ring_missed": self.reader.missed,
                "summary": doc["summary"]}
            if why:
                out["fallback_reason"] = why
            return out
        finally:
            if self.reader is not None:
                self.reader.close()
            with contextlib.suppress(OSError):
                for f in os.listdir(self.wd):
                    os.unlink(os.path.join(self.wd, f))
                os.rmdir(self.wd)
