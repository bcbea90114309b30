"""Per-event tracing for step attribution: a bpftrace program that prints the events
agentlatd/steps/attribute.py joins, and its parser.

Tracepoints only (as agentlatd/tools/trace/bpftrace.py, bpftrace 0.17 syntax). What
it prints, one line per event (times are nsecs = CLOCK_MONOTONIC, the step
ring's clock):

  S t cpu prev_tid prev_state next_tid prev_comm<TAB>next_comm
        sched_switch on a CPU an agent thread ran on or was woken to
        (who ran instead needs every switch there, not only the agent's)
  W t cpu tid target_cpu waker_tid ctx ctx_id blk_dev blk_ns waker_comm
        sched_waking of an agent thread or a hop of its completion chain (the
        task that woke it from task or softirq context, and that task's waker:
        attribute.HOPS deep); ctx 0 task, 1 hardirq (ctx_id = IRQ),
        2 softirq (ctx_id = vector), 3 inside an hrtimer callback; blk_dev
        and blk_ns when a block request completed in that same hardirq or
        softirq, or (ctx 0) earlier in the waking task's current run, as a
        loop device's worker does (dev_t, issue->complete)
  M t tid orig_cpu dest_cpu                        sched_migrate_task
  I t0 t1 cpu irq                                  a hardirq handler
  Q t0 t1 cpu vec                                  a softirq run
  G t0 t1 tid kind until                           a gate syscall (GATES); until: a
                                                   timer sleep's expiry (TIMER_EXPIRY)

IRQ and softirq spans and switches are printed only for the CPUs the agents
and their hops were seen on (@agcpu), wakeups, migrations and syscalls only for
the agent threads and their hops: the cost is bounded by the agent's own CPUs' event rate, and the
per-CPU perf buffer (PERF_RB_PAGES) with bpftrace's "Lost N events" count
says when it was not enough.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from agentlatd.steps.attribute import HOPS, TASK_REPORT_MAX, Event, Migrate, Span, Switch, Wakeup
from agentlatd.sysfs.root import Root
from agentlatd.tools.trace.bpftrace import Unavailable, check, tracefs_dir

# gate syscalls: the ones the issue names, plus the timer waits (a step's own sleep)
GATES = ("epoll_wait", "epoll_pwait", "epoll_pwait2", "io_uring_enter", "recvfrom", "recvmsg",
         "read", "pread64", "futex", "clock_nanosleep", "nanosleep", "poll", "ppoll", "select",
         "pselect6", "preadv", "preadv2", "readv")
# When a timer sleep's timer expires: its struct __kernel_timespec (tv_sec, tv_nsec:
# two u64, include/uapi/linux/time_types.h) read from user memory. clock_nanosleep
# with TIMER_ABSTIME (flags bit 0) on CLOCK_MONOTONIC (1) gives the expiry itself
# (CPython's time.sleep does this); relative sleeps are entry + the interval.
# Why: the kernel skips a BPF program that fires while another runs on the CPU
# (trace_call_bpf's bpf_prog_active), so the hrtimer's sched_waking is missed
# whenever the timer interrupt lands inside one: on a CPU flooded with softirqs,
# most of the time.
_TS = "$p = (uint64 *)uptr(args->rqtp); $x = *$p * 1000000000 + *($p + 1);"
TIMER_EXPIRY = {
    "clock_nanosleep": f" {_TS} if (args->flags & 1) {{ if (args->which_clock == 1) {{ @g_x[tid] = $x; }} }}"
                       " else { @g_x[tid] = nsecs + $x; }",
    "nanosleep": f" {_TS} @g_x[tid] = nsecs + $x;",
}
PERF_RB_PAGES = 1024  # per CPU (4 MiB): a NET_RX flood's softirq spans fit a 250 ms read
# The whole buffer, over all CPUs, where there are few (32 MiB: 16 MiB a CPU on two):
# on a 2-CPU host under 36 busy loops bpftrace's reader gets a third of a CPU and
# lost 12k-250k events per 9 s run with 4 MiB a CPU
PERF_RB_TOTAL_PAGES = 8192


def perf_rb_pages(ncpu: int) -> int:
    """Pages per CPU for bpftrace's perf buffers: PERF_RB_PAGES, more on small hosts
    (a power of two, as perf requires)."""
    pages = PERF_RB_PAGES
    while pages * 2 * max(1, ncpu) <= PERF_RB_TOTAL_PAGES:
        pages *= 2
    return pages


def program(tids: Collection[int], duration_s: float, gates: Iterable[str] = GATES) -> str:
    ms = max(1, int(duration_s * 1000))
    begin = " ".join(f"@agent[{t}] = 1;" for t in sorted(tids))
    lines = [
        f"BEGIN {{ {begin} printf(\"B %llu\\n\", nsecs); }}",
        "tracepoint:irq:irq_handler_entry { @irq_t[cpu] = nsecs; @irq_n[cpu] = args->irq; }",
        "tracepoint:irq:irq_handler_exit /@irq_t[cpu]/ {",
        "  if (@agcpu[cpu] || @hcpu[cpu]) {",
        '    printf("I %llu %llu %d %d\\n", @irq_t[cpu], nsecs, cpu, args->irq); }',
        "  delete(@irq_t[cpu]); delete(@blk_h[cpu]); delete(@blk_hl[cpu]); }",
        "tracepoint:irq:softirq_entry { @si_t[cpu] = nsecs; @si_v[cpu] = args->vec; }",
        "tracepoint:irq:softirq_exit /@si_t[cpu]/ {",
        "  if (@agcpu[cpu] || @hcpu[cpu]) {",
        '    printf("Q %llu %llu %d %d\\n", @si_t[cpu], nsecs, cpu, args->vec); }',
        "  delete(@si_t[cpu]); delete(@blk_s[cpu]); delete(@blk_sl[cpu]); }",
        "tracepoint:timer:hrtimer_expire_entry { @hrt[cpu] = 1; }",
        "tracepoint:timer:hrtimer_expire_exit { delete(@hrt[cpu]); }",
        "tracepoint:block:block_rq_issue { @rq[args->dev, args->sector] = nsecs; }",
        # only inside a hardirq/softirq, kept until it ends (trace/bpftrace.py says why)
        "tracepoint:block:block_rq_complete {",
        "  $i = @rq[args->dev, args->sector]; delete(@rq[args->dev, args->sector]);",
        "  if (@irq_t[cpu]) { @blk_h[cpu] = args->dev; if ($i) { @blk_hl[cpu] = nsecs - $i; } }",
        "  else { if (@si_t[cpu]) { @blk_s[cpu] = args->dev;"
        " if ($i) { @blk_sl[cpu] = nsecs - $i; } }",
        # in task context (a loop device's worker, dm/md threads): kept for that task
        # only until it switches out, so only a wakeup the completing task makes in
        # the same run (the waiter's end_io) is told it was a block completion
        "  else { @blk_t[tid] = args->dev; if ($i) { @blk_tl[tid] = nsecs - $i; } } } }",
        # an agent thread's waker (in task or softirq context: a tool server sending its
        # reply) becomes a hop of its completion chain, and a hop's waker the next one
        # (HOPS deep; past the first, from softirq context only ksoftirqd: a softirq at
        # an interrupt's exit runs in whichever task it interrupted): their wakeups,
        # migrations and gates are traced as the agent's are, and the switches and
        # IRQ/softirq spans of a hop's CPU (@hcpu) from its wakeup until it sleeps
        # again, so attribute.py can say what delayed the reply (_chain there)
        "tracepoint:sched:sched_waking /@agent[args->pid] || @hop[args->pid]/ {",
        "  $lvl = @hop[args->pid];",
        f"  if ($lvl < {HOPS} && tid != 0 && !@agent[tid] && !@hop[tid] && !@hrt[cpu] && !@irq_t[cpu]",
        '      && ($lvl == 0 || !@si_t[cpu] || strncmp(comm, "ksoftirqd/", 10) == 0)) {',
        "    @hop[tid] = $lvl + 1; }",
        "  if (@agent[args->pid]) { @agcpu[args->target_cpu] = 1; } else { @hcpu[args->target_cpu] = 1; }",
        "  if (@hrt[cpu]) {",
        '    printf("W %llu %d %d %d %d 3 -1 0 0 %s\\n", nsecs, cpu, args->pid, args->target_cpu,'
        " tid, comm); }",
        "  else { if (@irq_t[cpu]) {",
        '    printf("W %llu %d %d %d %d 1 %d %d %llu %s\\n", nsecs, cpu, args->pid, args->target_cpu,'
        " tid, @irq_n[cpu], @blk_h[cpu], @blk_hl[cpu], comm); }",
        "  else { if (@si_t[cpu]) {",
        '    printf("W %llu %d %d %d %d 2 %d %d %llu %s\\n", nsecs, cpu, args->pid, args->target_cpu,'
        " tid, @si_v[cpu], @blk_s[cpu], @blk_sl[cpu], comm); }",
        "  else {",
        '    printf("W %llu %d %d %d %d 0 -1 %d %llu %s\\n", nsecs, cpu, args->pid, args->target_cpu,'
        " tid, @blk_t[tid], @blk_tl[tid], comm); } } } }",
        "tracepoint:sched:sched_migrate_task /@agent[args->pid] || @hop[args->pid]/ {",
        "  if (@agent[args->pid]) { @agcpu[args->dest_cpu] = 1; } else { @hcpu[args->dest_cpu] = 1; }",
        '  printf("M %llu %d %d %d\\n", nsecs, args->pid, args->orig_cpu, args->dest_cpu); }',
        "tracepoint:sched:sched_switch {",
        "  delete(@blk_t[args->prev_pid]); delete(@blk_tl[args->prev_pid]);",
        "  if (@agent[args->next_pid]) { @agcpu[cpu] = 1; }",
        "  if (@hop[args->next_pid]) { @hcpu[cpu] = 1; }",
        '  if (@agcpu[cpu] || @hcpu[cpu]) {',
        '    printf("S %llu %d %d %lld %d %s\\t%s\\n", nsecs, cpu, args->prev_pid,'
        " args->prev_state, args->next_pid, args->prev_comm, args->next_comm); }",
        # the hop asleep again: its CPU's events are of no step until its next wakeup
        f"  if (@hop[args->prev_pid] && args->prev_state != 0 && args->prev_state != {TASK_REPORT_MAX}) {{",
        "    delete(@hcpu[cpu]); } }",
    ]
    for k, g in enumerate(gates, 1):
        # the timer sleeps also print when their timer expires (nsecs, CLOCK_MONOTONIC):
        # where the wakeup itself is not seen (below), the sleep is split there
        until = TIMER_EXPIRY.get(g, "")
        lines.append(f"tracepoint:syscalls:sys_enter_{g} /@agent[tid] || @hop[tid]/ "
                     f"{{ @g_t[tid] = nsecs; @g_k[tid] = {k};{until} }}")
    exits = ", ".join(f"tracepoint:syscalls:sys_exit_{g}" for g in gates)
    lines += [
        f"{exits} /@g_t[tid]/ {{",
        '  printf("G %llu %llu %d %d %llu\\n", @g_t[tid], nsecs, tid, @g_k[tid], @g_x[tid]);'
        " delete(@g_t[tid]); delete(@g_k[tid]); delete(@g_x[tid]); }",
        f"interval:ms:{ms} {{ exit(); }}",
        "END { clear(@agent); clear(@hop); clear(@hcpu); clear(@agcpu); clear(@irq_t); clear(@irq_n);"
        " clear(@si_t); clear(@si_v);"
        " clear(@hrt); clear(@rq); clear(@blk_h); clear(@blk_hl); clear(@blk_s); clear(@blk_sl);"
        " clear(@g_t); clear(@g_k); clear(@g_x); clear(@blk_t); clear(@blk_tl); }",
    ]
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Trace:
    events: list[Event] = field(default_factory=list)
    lost: int = 0
    start_ns: int = 0  # the tracer's BEGIN (nsecs)
    end_ns: int = 0  # the last event seen
    attached: int = 0
    unparsed: int = 0
    synth_switches: int = 0  # tracefs: switches in made up where the idle task's went unrecorded


CTX = {0: "task", 1: "hardirq", 2: "softirq", 3: "hrtimer"}
LOST = re.compile(r"Lost (\d+) events")
ATTACHED = re.compile(r"Attaching (\d+) probes")


def parse(lines: Iterable[str], gates: tuple[str, ...] = GATES) -> Trace:
    """The program's output lines -> Trace. Malformed lines are counted, not fatal."""
    tr = Trace()
    ev = tr.events
    for line in lines:
        if not line or line[1:2] != " ":
            m = LOST.search(line)
            if m:
                tr.lost += int(m.group(1))
            m = ATTACHED.search(line)
            if m:
                tr.attached = int(m.group(1))
            continue
        k = line[0]
        try:
            if k == "S":
                head, _, comms = line.partition("\t")
                f = head.split(" ", 6)
                prev_comm = f[6] if len(f) > 6 else ""
                ev.append(Switch(int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]),
                                 prev_comm, comms.rstrip("\n")))
            elif k == "W":
                f = line.rstrip("\n").split(" ", 10)
                ev.append(Wakeup(int(f[1]), int(f[2]), int(f[3]), int(f[4]), int(f[5]),
                                 f[10] if len(f) > 10 else "", CTX.get(int(f[6]), "task"),
                                 int(f[7]), int(f[8]), int(f[9])))
            elif k == "M":
                f = line.split()
                ev.append(Migrate(int(f[1]), int(f[2]), int(f[3]), int(f[4])))
            elif k in "IQ":
                f = line.split()
                ev.append(Span("irq" if k == "I" else "softirq", int(f[1]), int(f[2]), cpu=int(f[3]),
                               id=int(f[4])))
            elif k == "G":
                f = line.split()
                kind = int(f[4])
                ev.append(Span("syscall", int(f[1]), int(f[2]), tid=int(f[3]),
                               name=gates[kind - 1] if 0 < kind <= len(gates) else str(kind),
                               until=int(f[5]) if len(f) > 5 else 0))
            elif k == "B":
                tr.start_ns = int(line.split()[1])
                continue
            else:
                tr.unparsed += 1
                continue
        except (ValueError, IndexError):
            tr.unparsed += 1
            continue
        e = ev[-1]
        t = e.t1 if isinstance(e, Span) else e.t
        tr.end_ns = max(tr.end_ns, t)
    return tr


def _command(root: Root, script: str) -> list[str]:
    """argv running bpftrace (text output) on `script`, mounting tracefs privately when needed."""
    bt = shutil.which("bpftrace") or "bpftrace"
    if tracefs_dir(root) is not None:
        return [bt, script]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tracefs nodev "$1" && exec "$2" "$3"', "sh",
            root.path("sys/kernel/tracing"), bt, script]


def run(root: Root, tids: Collection[int], duration_s: float, workdir: str,
        tick: Callable[[], None] | None = None, tick_s: float = 0.25,
        stop: threading.Event | None = None) -> Trace:
    """Run the program for `duration_s`, or until `stop` is set (SIGINT: bpftrace runs
    its END and exits); call `tick` every `tick_s` meanwhile (the step rings are read
    then, before they wrap). Raises Unavailable."""
    reason = check(root)
    if reason:
        raise Unavailable(reason)
    if shutil.which("bpftrace") is None:
        raise Unavailable("bpftrace is not installed (apt-get install bpftrace).")
    script = os.path.join(workdir, "agentlatd-steps.bt")
    with open(script, "w") as f:
        f.write(program(tids, duration_s))
    out_path = os.path.join(workdir, "events.txt")
    env = dict(os.environ, BPFTRACE_PERF_RB_PAGES=str(perf_rb_pages(os.cpu_count() or 1)))
    argv = _command(root, script)
    with open(out_path, "w") as out, open(os.path.join(workdir, "stderr.txt"), "w") as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + duration_s + 60
        try:
            stopped = False
            while p.poll() is None:
                if time.monotonic() > deadline:
                    p.kill()
                    raise Unavailable(f"bpftrace did not finish within {duration_s + 60:.0f} s.")
                if stop is not None and stop.is_set() and not stopped:
                    p.send_signal(signal.SIGINT)
                    stopped = True
                if tick is not None:
                    tick()
                time.sleep(tick_s)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
    if tick is not None:
        tick()
    with open(out_path) as f:
        tr = parse(f)
    with open(os.path.join(workdir, "stderr.txt")) as f:
        errtext = f.read()
    tr.lost += sum(int(m) for m in LOST.findall(errtext))
    if p.returncode != 0 or tr.start_ns == 0:
        msg = " ".join(line for line in errtext.splitlines()
                       if "RLIMIT_MEMLOCK" not in line and line.strip())[-400:]
        raise Unavailable(f"bpftrace failed ({p.returncode}): {msg or 'no output'}")
    return tr
