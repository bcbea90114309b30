"""sys/kernel/tracing (Documentation/trace/ftrace.rst, events.rst): the fallback without bpftrace.

A private trace instance (instances/agentlatd-XXXX, ftrace.rst "Instances")
with its own buffer and its own enabled events, so the host's tracing and any
other tracer are left as they are; it is removed at the end. Events:
irq/irq_handler_{entry,exit}, irq/softirq_{entry,exit} (all CPUs), and for the
traced threads sched/sched_waking, sched/sched_switch and the syscalls events
of epoll_wait/epoll_pwait/io_uring_enter/recvfrom (filtered in the kernel by
pid), plus raw_syscalls/sys_exit of the traced threads (see below). Tracing
runs for the duration with the buffer in overwrite mode, then stops, and the
`trace` file is parsed: timestamps have microsecond resolution (the "mono"
clock, as bpftrace's nsecs, printed as sec.usec; "local" is per CPU and not
meant to be compared across CPUs, and a wakeup is often stamped on one CPU
and run on another), so sub-10 us stages are coarser here than with
bpftrace. Lost events (ring overruns) are counted from per_cpu/cpuN/stats
and reported.

Wakeup-to-run ends at the woken thread's sched_switch in, but the ring buffer
can miss that very event while bpftrace sees it: on the 6.18 Firecracker/PVM
guests this was written on, nothing the idle task of CPU 1 emits in task
context is ever recorded (sched_switch from swapper/1, power/cpu_idle; its
hardirq and softirq events are), unfiltered, in the top-level buffer too and
with any trace_clock, and per_cpu/cpu1/stats counts no drop; bpftrace on the
same tracepoint counts them all. So a thread that sleeps on that CPU is woken
(recorded, in the timer's hardirq), switched in from idle (not recorded) and
looked never to run: 0 to ~900 of ~900 wakeups, by where the scheduler put
it. A wakeup whose switch in is missing therefore ends at the first event the
thread itself emits after it (common_pid == tid: it is on a CPU then), which
is why raw_syscalls/sys_exit is traced: a thread woken in a syscall exits it
microseconds after it is switched in. One that shows itself first by its own
switch out (woken in a page fault, or preempted and pulled onto an idle CPU)
cannot be timed and is counted in wake_untimed instead of being guessed.

The results are the same maps bpftrace.py produces (irq, softirq,
softirq_ns, ksoftirqd_ns, wake, gate), so report.py does not care which ran,
plus wake_untimed[tid, cpu] (above), which it ignores.

Where tracefs is not mounted, `python -m agentlatd.tools.trace.tracefs` runs in a
private mount namespace that mounts it (see bpftrace.py) and prints the maps
as JSON.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Collection, Iterable

from agentlatd.errors import KernelError
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace.bpftrace import Maps, Unavailable, tracefs_dir
from agentlatd.tools.trace.hist import bucket_lower

BUFFER_KB = 8192  # per CPU
# the first the instance accepts; "mono" is bpftrace's nsecs, "global" is at least in step across CPUs
CLOCKS = ("mono", "global")
IRQ_EVENTS = ("irq/irq_handler_entry", "irq/irq_handler_exit", "irq/softirq_entry", "irq/softirq_exit")
GATE_SYSCALLS = {"epoll_wait": 1, "epoll_pwait": 1, "epoll_pwait2": 1, "io_uring_enter": 2, "recvfrom": 3}

# "  <idle>-0       [001] d.h1.  1234.567890: irq_handler_entry: irq=36 name=virtio1-req.0"
# (kernel/trace/trace_output.c: comm-pid [cpu] irqs-off/need-resched/hardirq/preempt-depth
# flags (absent with the irq-info option off), timestamp, event name, fields)
# The syscalls events print no "event:": "sys_epoll_wait(epfd: 3, ...)" on entry and
# "sys_epoll_wait -> 0x1" on exit (kernel/trace/trace_syscalls.c print_syscall_enter,
# print_syscall_exit); `sep` tells them apart, and they are named sys_enter_/sys_exit_
# as their events are.
LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                  r"(?:\S+\s+)?(?P<sec>\d+)\.(?P<usec>\d{6}):\s+(?P<event>\w+)(?P<sep>:\s?|\(| -> )"
                  r"(?P<rest>.*)$")
FIELD = re.compile(r"(\w+)=(\S+)")


def _ts(sec: str, usec: str) -> int:
    return int(sec) * 1_000_000_000 + int(usec) * 1000


def _fields(rest: str) -> dict[str, str]:
    return dict(FIELD.findall(rest))


def _add(maps: Maps, name: str, key: tuple[int, ...]) -> None:
    m = maps.maps.setdefault(name, {})
    m[key] = m.get(key, 0) + 1


def _sum(maps: Maps, name: str, key: tuple[int, ...], v: int) -> None:
    m = maps.maps.setdefault(name, {})
    m[key] = m.get(key, 0) + v


def parse_trace(lines: Iterable[str], tids: Collection[int] = ()) -> Maps:
    """The `trace` file's text lines -> the same maps bpftrace.py builds."""
    maps = Maps()
    traced = set(tids)
    per = bool(traced)
    irq_t: dict[int, int] = {}
    si_t: dict[int, int] = {}
    wk: dict[int, int] = {}
    g_t: dict[int, tuple[int, int]] = {}

    def ran(tid: int, cpu: int, t: int) -> None:
        """`tid` is on `cpu` at `t`: the end of a pending wakeup whose switch in was not recorded."""
        t0 = wk.pop(tid, None)
        if t0 is not None:
            _add(maps, "wake", (tid if per else 0, cpu, bucket_lower(t - t0)))

    for line in lines:
        if not line or line[0] == "#":
            continue
        mt = LINE.match(line)
        if mt is None:
            continue
        ev = mt.group("event")
        if not mt.group("sep").startswith(":") and ev.startswith("sys_"):
            ev = ("sys_enter_" if mt.group("sep") == "(" else "sys_exit_") + ev[len("sys_"):]
        cpu = int(mt.group("cpu"))
        t = _ts(mt.group("sec"), mt.group("usec"))
        rest = mt.group("rest")
        common = int(mt.group("pid"))  # the task on the CPU when the event fired
        if ev == "sched_switch":
            f = _fields(rest.replace(" ==> ", " "))
            prev = int(f.get("prev_pid", "0") or 0)
            nxt = int(f.get("next_pid", "0") or 0)
            if prev and prev in wk:
                # woken, never seen switched in, now leaving: it ran, but from when is unknown
                del wk[prev]
                _add(maps, "wake_untimed", (prev if per else 0, cpu))
            if prev and f.get("prev_state", "").startswith("R") and (not per or prev in traced):
                wk[prev] = t  # preempted: runnable from now on
            ran(nxt, cpu, t)
            continue
        if common and common in wk:
            ran(common, cpu, t)  # its own event: it is running, so its switch in went unrecorded
        if ev == "irq_handler_entry":
            irq_t[cpu] = t
        elif ev == "irq_handler_exit":
            t0 = irq_t.pop(cpu, None)
            f = _fields(rest)
            if t0 is not None and f.get("irq", "").isdigit():
                _add(maps, "irq", (int(f["irq"]), cpu, bucket_lower(t - t0)))
        elif ev == "softirq_entry":
            si_t[cpu] = t
        elif ev == "softirq_exit":
            t0 = si_t.pop(cpu, None)
            f = _fields(rest)
            if t0 is not None and f.get("vec", "").isdigit():
                vec, d = int(f["vec"]), t - t0
                _add(maps, "softirq", (vec, cpu, bucket_lower(d)))
                _sum(maps, "softirq_ns", (vec, cpu), d)
                if mt.group("comm").startswith("ksoftirqd"):
                    _sum(maps, "ksoftirqd_ns", (vec, cpu), d)
        elif ev == "sched_waking":
            f = _fields(rest)
            pid = int(f.get("pid", "0") or 0)  # the woken task; common_pid is the waker
            if pid and pid != common and (not per or pid in traced):
                wk[pid] = t
        elif ev.startswith("sys_enter_"):
            kind = GATE_SYSCALLS.get(ev[len("sys_enter_"):])
            if kind and (not per or common in traced):
                g_t[common] = (t, kind)
        elif ev.startswith("sys_exit_"):
            got = g_t.pop(common, None)
            if got is not None:
                _add(maps, "gate", (got[1], common if per else 0, bucket_lower(t - got[0])))
    return maps


class Instance:
    """A private ftrace instance under a mounted tracefs (kernel path `base`)."""

    def __init__(self, root: Root, base: str) -> None:
        self.root = root
        self.rel = f"{base}/instances/agentlatd-{secrets.token_hex(4)}"

    def __enter__(self) -> Instance:
        try:
            os.mkdir(self.root.path(self.rel))
        except OSError as e:
            raise Unavailable(f"cannot create a trace instance ({self.rel}): {e.strerror}") from e
        return self

    def __exit__(self, *exc: object) -> None:
        self.write("tracing_on", "0")
        # rmdir of an instance disables its events and frees its buffers
        for _ in range(20):
            try:
                os.rmdir(self.root.path(self.rel))
                return
            except OSError:
                time.sleep(0.05)

    def write(self, rel: str, value: str) -> bool:
        try:
            self.root.write_value(f"{self.rel}/{rel}", value)
            return True
        except KernelError:
            return False

    def enable(self, event: str, filt: str = "") -> bool:
        if not self.root.exists(f"{self.rel}/events/{event}/enable"):
            return False
        if filt and not self.write(f"events/{event}/filter", filt):
            return False
        return self.write(f"events/{event}/enable", "1")

    def overruns(self) -> int:
        n = 0
        for d in self.root.glob(f"{self.rel}/per_cpu/cpu*"):
            for line in self.root.read_optional(f"{d}/stats").splitlines():
                k, _, v = line.partition(":")
                if k.strip() == "overrun" and v.strip().isdigit():
                    n += int(v.strip())
        return n

    def read_trace(self) -> str:
        return self.root.read_text(f"{self.rel}/trace")


def trace_here(root: Root, base: str, tids: Collection[int], duration_s: float) -> Maps:
    """Trace with a mounted tracefs at kernel path `base`."""
    with Instance(root, base) as inst:
        inst.write("tracing_on", "0")
        inst.write("buffer_size_kb", str(BUFFER_KB))
        for clock in CLOCKS:
            if inst.write("trace_clock", clock):
                break
        for ev in IRQ_EVENTS:
            if not inst.enable(ev):
                raise Unavailable(f"tracefs has no {ev} event (CONFIG_TRACING without irq events?).")
        if tids:
            pids = sorted(tids)
            wake = " || ".join(f"pid == {t}" for t in pids)
            switch = " || ".join(f"prev_pid == {t} || next_pid == {t}" for t in pids)
            common = " || ".join(f"common_pid == {t}" for t in pids)
            inst.enable("sched/sched_waking", wake)
            inst.enable("sched/sched_switch", switch)
            for sc in GATE_SYSCALLS:
                inst.enable(f"syscalls/sys_enter_{sc}", common)
                inst.enable(f"syscalls/sys_exit_{sc}", common)
            # the woken thread's own first event where its switch in is not recorded (module doc)
            inst.enable("raw_syscalls/sys_exit", common)
        else:
            inst.enable("sched/sched_waking")
            inst.enable("sched/sched_switch")
        inst.write("tracing_on", "1")
        time.sleep(duration_s)
        inst.write("tracing_on", "0")
        maps = parse_trace(inst.read_trace().splitlines(), tids)
        maps.lost = inst.overruns()
        maps.attached = len(IRQ_EVENTS)
        return maps


def run(root: Root, tids: Collection[int], duration_s: float) -> Maps:
    """Trace through tracefs, mounting it in a private mount namespace when it is not mounted."""
    if os.geteuid() != 0:
        raise Unavailable("tracing needs root (tracefs); run with sudo.")
    base = tracefs_dir(root)
    if base is not None:
        return trace_here(root, base, tids, duration_s)
    if shutil.which("unshare") is None:
        raise Unavailable("tracefs is not mounted and unshare(1) is missing to mount it privately.")
    mnt = root.path("sys/kernel/tracing")
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tracefs nodev "$1" && shift && exec "$@"', "sh", mnt,
            sys.executable, "-m", "agentlatd.tools.trace.tracefs", str(duration_s),
            ",".join(str(t) for t in sorted(tids))]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60)
    if p.returncode != 0:
        raise Unavailable(f"tracefs tracing failed: {p.stderr.strip()[-300:] or p.returncode}")
    return maps_from_json(p.stdout)


def maps_to_json(m: Maps) -> str:
    return json.dumps({"lost": m.lost, "attached": m.attached,
                       "maps": {k: [[*key, v] for key, v in d.items()] for k, d in m.maps.items()}})


def maps_from_json(text: str) -> Maps:
    obj = json.loads(text)
    m = Maps(lost=int(obj.get("lost", 0)), attached=int(obj.get("attached", 0)))
    for k, rows in obj.get("maps", {}).items():
        m.maps[k] = {tuple(int(x) for x in r[:-1]): int(r[-1]) for r in rows}
    return m


def _main(argv: list[str]) -> int:
    """`python -m agentlatd.tools.trace.tracefs SECONDS [TID,...]` (inside its private mount namespace)."""
    root = Root("/")
    base = tracefs_dir(root)
    if base is None:
        print("tracefs is not mounted", file=sys.stderr)
        return 1
    tids = [int(t) for t in argv[1].split(",") if t] if len(argv) > 1 else []
    try:
        m = trace_here(root, base, tids, float(argv[0]))
    except Unavailable as e:
        print(str(e), file=sys.stderr)
        return 1
    print(maps_to_json(m))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
