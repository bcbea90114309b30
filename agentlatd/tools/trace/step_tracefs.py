"""The step tracer without bpftrace: the same events as agentlatd/tools/trace/step_events.py,
from a private tracefs instance (Documentation/trace/ftrace.rst "Instances").

Where bpftrace is missing or fails, `trace --slow-steps` (and bench/causes.py
--backend tracefs) run this. A child process (`python -m
agentlatd.tools.trace.step_tracefs SECONDS TID,...`, in a private mount namespace
that mounts tracefs where it is not mounted: agentlatd/tools/trace/tracefs.py) makes
an instance of its own, so the host's global buffer and other tracers are left
alone, enables

  irq/irq_handler_{entry,exit}, irq/softirq_{entry,exit},
  timer/hrtimer_expire_{entry,exit}, block/block_rq_{issue,complete}
                                        every CPU (what ran on the agent's CPU,
                                        the context of a wakeup from any CPU, which
                                        device completed)
  sched/sched_switch                    filtered in the kernel: CPU in the traced
                                        threads' allowed CPUs at the start (who ran
                                        instead); every switch of every CPU overran
                                        a 4 MiB per-CPU buffer on a busy 2-CPU host
  sched/sched_waking, sched/sched_migrate_task     filtered in the kernel: pid == tid
  syscalls/sys_{enter,exit}_<gate>, raw_syscalls/sys_exit
                                        filtered in the kernel: common_pid == tid

and follows the completion chain as step_events.py's program does: the task that
woke a traced thread (a tool server sending its reply), and that task's waker
(attribute.HOPS deep, the same rule: Hops), becomes a hop. A filter cannot grow by
itself, so the child reads its own stream for the traced threads' sched_waking
lines and rewrites the filters above with the hops' pids, and the switch filter
with their CPUs, between two reads of trace_pipe; it prints "H <tid> <level>"
before the hop's first event, and parse traces it from there as it traces the
agent's threads. A hop is seen from the read after its first wakeup of a traced
thread (POLL_S): a tool server's thread, the same one every step, from its first
steps on. At most MAX_HOPS hops (a filter's pids), the first ones seen.

streams the instance's trace_pipe (a consuming read: the per-CPU buffer never
fills in a long window, unlike reading `trace` at the end) to its stdout, and
prints "B <CLOCK_MONOTONIC ns>" once tracing is on and "Lost N events" (the
per-CPU overrun counts) at the end: the lines events.run's caller waits on
and counts. The parent parses the text into events.Trace (parse), the input of
agentlatd/steps/attribute.py, so both backends feed the same attribution.

Differences from bpftrace, all visible in the output:
- timestamps have microsecond resolution (the "mono" trace clock, printed as
  sec.usec: ftrace's text output divides every in-ns clock by 1000);
- a timer sleep's expiry is not known (`until` stays 0: a tracepoint's text
  prints the timespec pointer, not the user memory it points at); tracefs has
  no bpf_prog_active, so the hrtimer's wakeup itself is not lost either;
- sched_switch from the idle task is never recorded on some CPUs of the
  Firecracker guests this runs on (agentlatd/tools/trace/tracefs.py's module doc):
  a woken agent thread whose switch in is missing gets one made up at its
  first own event (a syscall exit), from the idle task; `synth_switches`
  counts them.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from agentlatd.steps.attribute import HOPS, TASK_REPORT_MAX, Event, Migrate, Span, Switch, Wakeup
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace.bpftrace import Unavailable, tracefs_dir
from agentlatd.tools.trace.step_events import GATES, Trace
from agentlatd.tools.trace.tracefs import CLOCKS, Instance

BUFFER_KB = 4096  # per CPU, between two reads of trace_pipe (every POLL_S)
POLL_S = 0.05
MAX_HOPS = 32  # pids in a hop filter: a tool server's threads and their wakers
EVERY_CPU = ("irq/irq_handler_entry", "irq/irq_handler_exit", "irq/softirq_entry",
             "irq/softirq_exit", "timer/hrtimer_expire_entry", "timer/hrtimer_expire_exit",
             "block/block_rq_issue", "block/block_rq_complete")

# "  probe-123     [001] d.h1.  1234.567890: sched_waking: comm=probe pid=5 prio=110 target_cpu=001"
# (kernel/trace/trace_output.c: comm-pid, [cpu], the irq-info flags, sec.usec, event, fields)
# A syscalls event prints no "event:" but "sys_read(fd: 3, ...)" and "sys_read -> 0x1000"
# (kernel/trace/trace_syscalls.c print_syscall_enter/print_syscall_exit): sep tells them apart.
LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                  r"(?:\S+\s+)?(?P<sec>\d+)\.(?P<usec>\d{6}):\s+(?P<event>\w+)(?P<sep>:\s?|\(| -> )"
                  r"(?P<rest>.*)$")
# include/trace/events/sched.h TP_printk; comms may hold spaces, so anchored on the next key
SWITCH = re.compile(r"prev_comm=(?P<pc>.*) prev_pid=(?P<pp>\d+) prev_prio=-?\d+ prev_state=(?P<ps>\S+)"
                    r" ==> next_comm=(?P<nc>.*) next_pid=(?P<np>\d+)")
WAKING = re.compile(r"comm=(?P<c>.*) pid=(?P<p>\d+) prio=-?\d+ target_cpu=(?P<t>\d+)")
MIGRATE = re.compile(r"pid=(?P<p>\d+) prio=-?\d+ orig_cpu=(?P<o>\d+) dest_cpu=(?P<d>\d+)")
# include/trace/events/block.h: block_rq_issue "7,0 R 4096 () 123 + 8 ...",
# block_rq_complete "7,0 R () 123 + 8 ..."
BLOCK_RQ = re.compile(r"^(?P<maj>\d+),(?P<min>\d+) \S+ (?:\d+ )?\(.*?\) (?P<sector>\d+) \+")
FIELD = re.compile(r"(\w+)=(\S+)")


def switch_state(text: str) -> int:
    """sched_switch's printed prev_state -> the value bpftrace reads: "R" is 0 (TASK_RUNNING),
    "R+" is TASK_REPORT_MAX (preempted), anything else a sleep (attribute.runnable)."""
    if text == "R":
        return 0
    if text == "R+":
        return TASK_REPORT_MAX
    return 1


@dataclass(slots=True)
class _State:
    """What the parser carries across lines (as the bpftrace program's maps)."""

    tids: set[int]
    gate_names: dict[str, str]
    irq: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (t0, irq)
    si: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (t0, vec)
    hrt: set[int] = field(default_factory=set)
    rq: dict[tuple[int, int], int] = field(default_factory=dict)  # (dev, sector) -> issue t
    blk_h: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (dev, ns) in a hardirq
    blk_s: dict[int, tuple[int, int]] = field(default_factory=dict)  # cpu -> (dev, ns) in a softirq
    blk_task: dict[int, tuple[int, int]] = field(default_factory=dict)  # tid -> (dev, ns)
    gate: dict[int, tuple[int, str]] = field(default_factory=dict)
    on_cpu: dict[int, int] = field(default_factory=dict)  # traced tid -> cpu, while running
    woken: set[int] = field(default_factory=set)  # traced tids woken, not yet seen running


def parse(lines: Iterable[str], tids: Collection[int], gates: Iterable[str] = GATES) -> Trace:
    """The child's output (trace_pipe lines, "B", "Lost") -> Trace, as events.parse does
    for bpftrace's. Malformed lines are counted, not fatal."""
    tr = Trace()
    st = _State(set(tids), {f"sys_{g}": g for g in gates})
    for line in lines:
        if line.startswith("B "):
            try:
                tr.start_ns = int(line.split()[1])
            except (IndexError, ValueError):
                tr.unparsed += 1
            continue
        if line.startswith("Lost "):
            f = line.split()
            if len(f) > 1 and f[1].isdigit():
                tr.lost += int(f[1])
            continue
        if line.startswith("A "):
            f = line.split()
            tr.attached = int(f[1]) if len(f) > 1 and f[1].isdigit() else 0
            continue
        if line.startswith("H "):
            # a hop of the chain, traced from here on as the agent's threads are
            f = line.split()
            if len(f) > 1 and f[1].isdigit():
                st.tids.add(int(f[1]))
            else:
                tr.unparsed += 1
            continue
        if not line.strip() or line.startswith("#"):
            continue
        m = LINE.match(line.rstrip("\n"))
        if m is None:
            tr.unparsed += 1
            continue
        try:
            _line(st, tr, m)
        except (ValueError, KeyError):
            tr.unparsed += 1
    return tr


def _emit(tr: Trace, ev: Event) -> None:
    tr.events.append(ev)
    tr.end_ns = max(tr.end_ns, ev.t1 if isinstance(ev, Span) else ev.t)


def _line(st: _State, tr: Trace, m: re.Match[str]) -> None:
    ev, rest, sep = m.group("event"), m.group("rest"), m.group("sep")
    cpu = int(m.group("cpu"))
    t = int(m.group("sec")) * 1_000_000_000 + int(m.group("usec")) * 1000
    common = int(m.group("pid"))  # the task on the CPU when the event fired
    if common in st.tids and common not in st.on_cpu and ev != "sched_switch" and common in st.woken:
        # its own event while not seen switched in: the idle task's switch went unrecorded
        _emit(tr, Switch(t, cpu, 0, 0, common, f"swapper/{cpu}", m.group("comm")))
        st.on_cpu[common] = cpu
        st.woken.discard(common)
        tr.synth_switches += 1
    if ev == "sched_switch":
        s = SWITCH.search(rest)
        if s is None:
            raise ValueError(rest)
        prev, nxt = int(s.group("pp")), int(s.group("np"))
        st.blk_task.pop(prev, None)
        st.on_cpu.pop(prev, None)
        if nxt in st.tids:
            st.on_cpu[nxt] = cpu
            st.woken.discard(nxt)
        _emit(tr, Switch(t, cpu, prev, switch_state(s.group("ps")), nxt, s.group("pc"), s.group("nc")))
    elif ev == "irq_handler_entry":
        f = dict(FIELD.findall(rest))
        st.irq[cpu] = (t, int(f["irq"]))
    elif ev == "irq_handler_exit":
        got = st.irq.pop(cpu, None)
        st.blk_h.pop(cpu, None)
        if got is not None:
            _emit(tr, Span("irq", got[0], t, cpu=cpu, id=got[1]))
    elif ev == "softirq_entry":
        f = dict(FIELD.findall(rest))
        st.si[cpu] = (t, int(f["vec"]))
    elif ev == "softirq_exit":
        got = st.si.pop(cpu, None)
        st.blk_s.pop(cpu, None)
        if got is not None:
            _emit(tr, Span("softirq", got[0], t, cpu=cpu, id=got[1]))
    elif ev == "hrtimer_expire_entry":
        st.hrt.add(cpu)
    elif ev == "hrtimer_expire_exit":
        st.hrt.discard(cpu)
    elif ev in ("block_rq_issue", "block_rq_complete"):
        b = BLOCK_RQ.match(rest)
        if b is None:
            raise ValueError(rest)
        dev = int(b.group("maj")) << 20 | int(b.group("min"))
        key = (dev, int(b.group("sector")))
        if ev == "block_rq_issue":
            st.rq[key] = t
            return
        t0 = st.rq.pop(key, 0)
        got_blk = (dev, t - t0 if t0 else 0)
        # inside a hardirq/softirq: kept until it ends; in task context (a loop
        # device's worker): until that task switches out (events.py says why)
        if cpu in st.irq:
            st.blk_h[cpu] = got_blk
        elif cpu in st.si:
            st.blk_s[cpu] = got_blk
        else:
            st.blk_task[common] = got_blk
    elif ev == "sched_waking":
        w = WAKING.search(rest)
        if w is None:
            raise ValueError(rest)
        pid = int(w.group("p"))
        if pid not in st.tids:
            return
        if cpu in st.hrt:
            ctx, cid, blk = "hrtimer", -1, (0, 0)
        elif cpu in st.irq:
            ctx, cid, blk = "hardirq", st.irq[cpu][1], st.blk_h.get(cpu, (0, 0))
        elif cpu in st.si:
            ctx, cid, blk = "softirq", st.si[cpu][1], st.blk_s.get(cpu, (0, 0))
        else:
            ctx, cid, blk = "task", -1, st.blk_task.get(common, (0, 0))
        if pid not in st.on_cpu:
            st.woken.add(pid)
        _emit(tr, Wakeup(t, cpu, pid, int(w.group("t")), common, m.group("comm"), ctx, cid, blk[0], blk[1]))
    elif ev == "sched_migrate_task":
        mg = MIGRATE.search(rest)
        if mg is None:
            raise ValueError(rest)
        if int(mg.group("p")) in st.tids:
            _emit(tr, Migrate(t, int(mg.group("p")), int(mg.group("o")), int(mg.group("d"))))
    elif sep == "(":
        if common in st.tids and ev in st.gate_names:
            st.gate[common] = (t, st.gate_names[ev])
    elif sep == " -> ":
        g = st.gate.pop(common, None)
        if g is not None and ev == f"sys_{g[1]}":
            _emit(tr, Span("syscall", g[0], t, tid=common, name=g[1]))


# -- the child: set up the instance, stream trace_pipe ----------------------------

def allowed_cpus(tids: Collection[int]) -> set[int]:
    """The CPUs the threads may run on (sched_getaffinity), those of threads gone skipped."""
    out: set[int] = set()
    for t in tids:
        try:
            out |= os.sched_getaffinity(t)
        except OSError:
            continue
    return out


def cpu_filter(cpus: Collection[int], ncpu: int) -> str:
    """An event filter keeping `cpus` ("" for every CPU: none to filter)."""
    if not cpus or len(cpus) >= ncpu:
        return ""
    return " || ".join(f"CPU == {c}" for c in sorted(cpus))


def _pid_filters(tids: Collection[int]) -> tuple[str, str]:
    """(pid == t || ..., common_pid == t || ...) for the traced threads and hops."""
    pids = sorted(tids)
    return (" || ".join(f"pid == {t}" for t in pids), " || ".join(f"common_pid == {t}" for t in pids))


PID_EVENTS = ("sched/sched_waking", "sched/sched_migrate_task")


def _enable(inst: Instance, tids: Collection[int], gates: Iterable[str]) -> int:
    """Enable the events in `inst`; how many were enabled. Unavailable without the
    sched and irq events (nothing to attribute with)."""
    n = 0
    if not inst.enable("sched/sched_switch", cpu_filter(allowed_cpus(tids), os.cpu_count() or 1)):
        raise Unavailable("tracefs has no sched/sched_switch event (or refused its CPU filter).")
    n += 1
    for ev in EVERY_CPU:
        if inst.enable(ev):
            n += 1
        elif ev.startswith(("sched/", "irq/")):
            raise Unavailable(f"tracefs has no {ev} event.")
    by_pid, by_common = _pid_filters(tids)
    for ev in PID_EVENTS:
        if not inst.enable(ev, by_pid):
            raise Unavailable(f"tracefs has no {ev} event (or refused its pid filter).")
        n += 1
    for ev in _common_events(inst, gates):
        n += inst.enable(ev, by_common)
    # every system call's exit, for the agent's threads only (a missed switch in:
    # the module doc); a hop may be a busy sender, whose every exit would flood
    n += inst.enable("raw_syscalls/sys_exit", by_common)
    return n


def _common_events(inst: Instance, gates: Iterable[str]) -> list[str]:
    """The gate syscall events (filtered by common_pid) this kernel has (an
    architecture without a gate's event skips it)."""
    out = []
    for g in gates:
        if inst.root.exists(f"{inst.rel}/events/syscalls/sys_enter_{g}/enable"):
            out += [f"syscalls/sys_enter_{g}", f"syscalls/sys_exit_{g}"]
    return out


def _refilter(inst: Instance, tids: Collection[int], gates: Iterable[str]) -> None:
    """Rewrite the enabled events' filters for `tids` (the agent's threads and the
    hops): the kernel swaps a filter in while the event stays on. A filter the
    kernel refuses keeps the old one (the hop is then not traced, not an error)."""
    by_pid, by_common = _pid_filters(tids)
    for ev in PID_EVENTS:
        inst.write(f"events/{ev}/filter", by_pid)
    for ev in _common_events(inst, gates):
        inst.write(f"events/{ev}/filter", by_common)
    # "0" clears a filter (Documentation/trace/events.rst 5.2)
    inst.write("events/sched/sched_switch/filter",
               cpu_filter(allowed_cpus(tids), os.cpu_count() or 1) or "0")


# the flags column (kernel/trace/trace_output.c trace_print_lat_fmt: irqs-off,
# need-resched, hardirq/softirq, ...) of a sched_waking line, the waker and the woken
WAKING_LINE = re.compile(r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+"
                         r"(?P<flags>\S+)\s+\d+\.\d{6}:\s+sched_waking:\s+comm=.* pid=(?P<p>\d+) prio=")


@dataclass(slots=True)
class Hops:
    """The completion chain's hops, found in the child's own stream: step_events.py's
    rule (its sched_waking probe) on the printed lines. A waker in task context, or
    in a softirq it ran (a reply sent over a veth is delivered in the sender's
    context), of an agent thread is hop 1; a hop's waker is the next, up to HOPS,
    past the first from a softirq only ksoftirqd (a softirq at an interrupt's exit
    runs in whichever task it interrupted). Not from a hardirq (a timer, a device)."""

    agents: frozenset[int]
    level: dict[int, int] = field(default_factory=dict)

    def feed(self, text: str) -> list[tuple[int, int]]:
        """The hops first seen in `text` (whole lines): (tid, level), in order; at most
        MAX_HOPS in all."""
        if "sched_waking" not in text:
            return []
        new: list[tuple[int, int]] = []
        at = text.find("sched_waking")
        while at >= 0:
            # only the sched_waking lines: a chunk is mostly switches and softirqs
            end = text.find("\n", at)
            end = len(text) if end < 0 else end
            line = text[text.rfind("\n", 0, at) + 1:end]
            at = text.find("sched_waking", end)
            m = WAKING_LINE.match(line)
            if m is None:
                continue
            woken, waker = int(m.group("p")), int(m.group("pid"))
            if woken in self.agents:
                lvl = 0
            elif woken in self.level:
                lvl = self.level[woken]
            else:
                continue
            flags = m.group("flags")
            ctx = flags[2] if len(flags) >= 3 else "."
            if (lvl >= HOPS or waker == 0 or waker in self.agents or waker in self.level
                    or ctx in "hHzZ" or len(self.level) >= MAX_HOPS):
                continue
            if ctx == "s" and lvl > 0 and not m.group("comm").startswith("ksoftirqd/"):
                continue
            self.level[waker] = lvl + 1
            new.append((waker, lvl + 1))
        return new


def stream(root: Root, base: str, tids: Collection[int], duration_s: float,
           write: Callable[[str], None], gates: Iterable[str] = GATES,
           stop: threading.Event | None = None) -> None:
    """Trace `duration_s` (or until `stop` is set) in a private instance under `base`,
    handing trace_pipe's text to `write` as it comes (with the "B", "A" and "Lost"
    lines)."""
    with Instance(root, base) as inst:
        inst.write("tracing_on", "0")
        inst.write("buffer_size_kb", str(BUFFER_KB))
        for clock in CLOCKS:
            if inst.write("trace_clock", clock):
                break
        gates = tuple(gates)
        n = _enable(inst, tids, gates)
        hops = Hops(frozenset(tids))
        cut = ""  # a line cut between two reads
        fd = os.open(root.path(f"{inst.rel}/trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        try:
            inst.write("tracing_on", "1")
            write(f"A {n}\nB {time.monotonic_ns()}\n")
            end = time.monotonic() + duration_s
            while True:
                done = time.monotonic() >= end or (stop is not None and stop.is_set())
                if done:
                    inst.write("tracing_on", "0")
                new: list[tuple[int, int]] = []
                # a read turn ends when the pipe is empty, or after POLL_S while tracing
                # (events may come faster than this reads): the window's end and the
                # hops are looked at between turns; once off, the drain ends
                turn_end = time.monotonic() + POLL_S
                empty = False
                while done or time.monotonic() < turn_end:
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        empty = True
                        break
                    except OSError as e:
                        if e.errno == errno.EINTR:
                            continue
                        raise
                    if not chunk:
                        empty = True
                        break
                    # whole lines only, so that an "H" line starts a line of its own
                    text = cut + chunk.decode("utf-8", "replace")
                    end_line = text.rfind("\n") + 1
                    text, cut = text[:end_line], text[end_line:]
                    write(text)
                    new += hops.feed(text)
                if done:
                    write(cut and cut + "\n")
                    break
                if new:
                    # announced before the refilter: every event of the hop comes after
                    write("".join(f"H {t} {lvl}\n" for t, lvl in new))
                    _refilter(inst, {*tids, *hops.level}, gates)
                if empty:
                    time.sleep(POLL_S)
        finally:
            os.close(fd)
        write(f"Lost {inst.overruns()} events\n")


def _command(root: Root, duration_s: float, tids: Collection[int]) -> list[str]:
    me = [sys.executable, "-m", "agentlatd.tools.trace.step_tracefs", f"{duration_s:.3f}",
          ",".join(str(t) for t in sorted(tids))]
    if tracefs_dir(root) is not None:
        return me
    if shutil.which("unshare") is None:
        raise Unavailable("tracefs is not mounted and unshare(1) is missing to mount it privately.")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tracefs nodev "$1" && shift && exec "$@"', "sh", root.path("sys/kernel/tracing"), *me]


def run(root: Root, tids: Collection[int], duration_s: float, workdir: str,
        tick: Callable[[], None] | None = None, tick_s: float = 0.25,
        stop: threading.Event | None = None) -> Trace:
    """events.run's twin: trace through tracefs for `duration_s` or until `stop` is set
    (SIGINT: the child stops tracing, drains and exits as at its end), calling `tick`
    every `tick_s` meanwhile; the child's text goes to workdir/events.txt. Raises
    Unavailable."""
    if os.geteuid() != 0:
        raise Unavailable("tracing needs root (tracefs); run with sudo.")
    if not root.is_host:
        raise Unavailable("tracefs tracing needs the live host's root (/).")
    argv = _command(root, duration_s, tids)
    out_path = os.path.join(workdir, "events.txt")
    err_path = os.path.join(workdir, "stderr.txt")
    with open(out_path, "w") as out, open(err_path, "w") as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err)
        deadline = time.monotonic() + duration_s + 60
        try:
            stopped = False
            while p.poll() is None:
                if stop is not None and stop.is_set() and not stopped:
                    p.send_signal(signal.SIGINT)
                    stopped = True
                if time.monotonic() > deadline:
                    p.kill()
                    raise Unavailable(f"the tracefs tracer did not finish within {duration_s + 60:.0f} s.")
                if tick is not None:
                    tick()
                time.sleep(tick_s)
        finally:
            if p.poll() is None:
                p.terminate()
            p.wait()
    if tick is not None:
        tick()
    with open(out_path, errors="replace") as f:
        tr = parse(f, tids)
    if p.returncode != 0 or tr.start_ns == 0:
        with open(err_path) as f:
            msg = " ".join(f.read().split())[-400:]
        raise Unavailable(f"tracefs tracing failed ({p.returncode}): {msg or 'no output'}")
    return tr


def _main(argv: list[str]) -> int:
    """`python -m agentlatd.tools.trace.step_tracefs SECONDS TID,...` (where tracefs is mounted)."""
    root = Root("/")
    base = tracefs_dir(root)
    if base is None:
        print("tracefs is not mounted", file=sys.stderr)
        return 1
    try:
        duration = float(argv[0])
        tids = [int(t) for t in argv[1].split(",") if t]
    except (IndexError, ValueError):
        print("usage: python -m agentlatd.tools.trace.step_tracefs SECONDS TID[,TID...]", file=sys.stderr)
        return 2
    if not tids:
        print("no threads to trace", file=sys.stderr)
        return 2

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    stop = threading.Event()
    # SIGINT from the parent (run's `stop`): end the window now, drained as at its end
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stream(root, base, tids, duration, write, stop=stop)
    except Unavailable as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
