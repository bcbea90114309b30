"""bpftrace as a child process: the design note's section 9 probes, aggregated in-kernel.

Tracepoints only (include/trace/events/{irq,sched,block}.h and the syscalls
events of kernel/trace/trace_syscalls.c): no kprobes, no kernel headers, so
bcc does not work here, bpftrace does. Checked with bpftrace 0.17 (Debian
12): `args->field` syntax (0.18+ accepts `args.field`; 0.17 does not),
`-f json` output, if/else, strncmp, multi-key count() maps.

Every duration is bucketed in the program (agentlatd.tools.trace.hist.BUCKETS,
two significant digits) and counted in a map keyed (what, cpu, bucket); the
maps are printed once at exit as JSON: a few kilobytes, whatever the event
rate, and no per-event output to keep up with. Maps:

  @irq[irq, cpu, b]          hardirq handler time (irq_handler_entry -> exit)
  @softirq[vec, cpu, b]      one softirq vector's run (softirq_entry -> exit)
  @softirq_ns[vec, cpu]      total softirq time; @ksoftirqd_ns the part run by ksoftirqd/N
  @wake[tid, cpu, b]         wakeup-to-run: sched_waking (or, preempted,
                             sched_switch with prev_state 0 or TASK_REPORT_MAX:
                             PREEMPTED below) -> sched_switch in;
                             cpu = where it then ran. sched_waking, not the note's
                             sched_wakeup: it fires in the waker's context, so the
                             remote-wakeup IPI is inside the measured time
  @gate[kind, tid, b]        time blocked in epoll_wait/epoll_pwait/epoll_pwait2 (1),
                             io_uring_enter (2), recvfrom (3: a blocking socket agent)
  @blk[tid, cpu, b]          block_rq_complete inside a hardirq or softirq on a
                             CPU -> a wakeup of a traced thread from that same
                             context -> it runs (completions in task context are
                             not followed: nothing marks where they end)
tid is 0 in every map when no thread is named: one aggregate over the host.

tracefs: bpftrace reads tracepoint formats from sys/kernel/tracing. Where it
is not mounted (this machine) the child runs in a private mount namespace
(unshare --mount --propagation private) that mounts it there first: the
host's own mount table is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from agentlatd.sysfs.root import Root
from agentlatd.tools.trace.hist import BUCKETS, TOP

GATE_KINDS = {1: "epoll", 2: "io_uring", 3: "recv"}
# sched_switch's prev_state for a task switched out still runnable. A preempted task
# reports TASK_REPORT_MAX (0x100; include/linux/sched.h, set by
# __trace_sched_switch_state() in include/trace/events/sched.h since 4.14, printed "R+");
# 0 (TASK_RUNNING, "R") is a task that yielded or was switched out running without
# preemption. Both start a wait on the runqueue.
TASK_REPORT_MAX = 0x100
PREEMPTED = f"(args->prev_state == 0 || args->prev_state == {TASK_REPORT_MAX:#x})"
MAP_KEYS_MAX = 65536  # BPFTRACE_MAP_KEYS_MAX; 0.17's default 4096 is too few for @wake


def _bucket_stmt(var: str, out: str) -> str:
    """bpftrace statements setting `out` to the bucket lower bound of `var` (hist.bucket_lower)."""
    s = f"{out} = {TOP};"
    for bound, step in reversed(BUCKETS):
        s = f"if ({var} < {bound}) {{ {out} = {var} / {step} * {step}; }} else {{ {s} }}"
    return s


def program(tids: Collection[int] = (), duration_s: float = 5.0) -> str:
    """The bpftrace program text for `duration_s` seconds; `tids` empty = the whole host."""
    b = _bucket_stmt("$d", "$b")
    per = bool(tids)
    sel = "@agent[{}]" if per else "1"
    key = "{}" if per else "0"
    begin = " ".join(f"@agent[{t}] = 1;" for t in sorted(tids))
    ms = max(1, int(duration_s * 1000))

    def f(tmpl: str, arg: str) -> str:
        return tmpl.format(arg)

    syscalls_enter = ", ".join(f"tracepoint:syscalls:sys_enter_{s}" for s in ("epoll_wait", "epoll_pwait",
                                                                            "epoll_pwait2"))
    syscalls_exit = ", ".join(f"tracepoint:syscalls:sys_exit_{s}" for s in ("epoll_wait", "epoll_pwait",
                                                                          "epoll_pwait2"))
    lines = [
        f"BEGIN {{ {begin} }}" if begin else "BEGIN { }",
        # 9.1 IRQ handler duration
        "tracepoint:irq:irq_handler_entry { @irq_t[cpu] = nsecs; }",
        "tracepoint:irq:irq_handler_exit /@irq_t[cpu]/ {",
        f"  $d = nsecs - @irq_t[cpu]; {b}",
        "  @irq[args->irq, cpu, $b] = count(); delete(@irq_t[cpu]); delete(@blk_h[cpu]); }",
        # 9.2 softirq runtime, ksoftirqd's share
        "tracepoint:irq:softirq_entry { @si_t[cpu] = nsecs; }",
        "tracepoint:irq:softirq_exit /@si_t[cpu]/ {",
        f"  $d = nsecs - @si_t[cpu]; {b}",
        "  @softirq[args->vec, cpu, $b] = count(); @softirq_ns[args->vec, cpu] = sum($d);",
        '  if (strncmp(comm, "ksoftirqd", 9) == 0) { @ksoftirqd_ns[args->vec, cpu] = sum($d); }',
        "  delete(@si_t[cpu]); delete(@blk_s[cpu]); }",
        # blk-mq completion, remembered until the hardirq or softirq it ran in ends.
        # Completions in task context (a loop device's worker, a flush on a
        # write-through device ended in blk_insert_flush, polled queues) are not
        # remembered: no exit event follows them, and the next wakeup on that CPU
        # was blamed on them, tens of ms later. A wakeup counts only from the same
        # level: the APIC timer has no irq_handler events, so an hrtimer that fires
        # inside a BLOCK softirq is told apart by hrtimer_expire_entry/exit.
        "tracepoint:block:block_rq_complete {",
        "  if (@irq_t[cpu]) { @blk_h[cpu] = nsecs; } else { if (@si_t[cpu]) { @blk_s[cpu] = nsecs; } } }",
        "tracepoint:timer:hrtimer_expire_entry { @hrt[cpu] = 1; }",
        "tracepoint:timer:hrtimer_expire_exit { delete(@hrt[cpu]); }",
        # 9.3 wakeup-to-run
        f"tracepoint:sched:sched_waking /{f(sel, 'args->pid')} && args->pid != 0/ {{",
        "  @wk[args->pid] = nsecs;",
        # a later wakeup not from a completion replaces one that was (a waking of a
        # thread still on its CPU has no switch in to end it)
        "  delete(@bw[args->pid]);",
        "  if (!@hrt[cpu]) { if (@irq_t[cpu]) { if (@blk_h[cpu]) { @bw[args->pid] = @blk_h[cpu]; } }",
        "    else { if (@blk_s[cpu]) { @bw[args->pid] = @blk_s[cpu]; } } } }",
        "tracepoint:sched:sched_switch {",
        f"  if ({PREEMPTED} && args->prev_pid != 0 && {f(sel, 'args->prev_pid')}) {{",
        "    @wk[args->prev_pid] = nsecs; }",
        "  $t = @wk[args->next_pid];",
        f"  if ($t) {{ $d = nsecs - $t; {b}",
        f"    @wake[{f(key, 'args->next_pid')}, cpu, $b] = count(); delete(@wk[args->next_pid]); }}",
        "  $c = @bw[args->next_pid];",
        f"  if ($c) {{ $d = nsecs - $c; {b}",
        f"    @blk[{f(key, 'args->next_pid')}, cpu, $b] = count(); delete(@bw[args->next_pid]); }} }}",
        # 9.4 / 9.5 gate latency
        f"{syscalls_enter} /{f(sel, 'tid')}/ {{ @g_t[tid] = nsecs; @g_k[tid] = 1; }}",
        f"tracepoint:syscalls:sys_enter_io_uring_enter /{f(sel, 'tid')}/ "
        "{ @g_t[tid] = nsecs; @g_k[tid] = 2; }",
        f"tracepoint:syscalls:sys_enter_recvfrom /{f(sel, 'tid')}/ {{ @g_t[tid] = nsecs; @g_k[tid] = 3; }}",
        f"{syscalls_exit}, tracepoint:syscalls:sys_exit_io_uring_enter, "
        "tracepoint:syscalls:sys_exit_recvfrom",
        "/@g_t[tid]/ {",
        f"  $d = nsecs - @g_t[tid]; {b}",
        f"  @gate[@g_k[tid], {f(key, 'tid')}, $b] = count(); delete(@g_t[tid]); delete(@g_k[tid]); }}",
        f"interval:ms:{ms} {{ exit(); }}",
        # the scratch maps are not results: clear them so they are not printed
        "END { clear(@irq_t); clear(@si_t); clear(@blk_h); clear(@blk_s); clear(@hrt); "
        "clear(@wk); clear(@bw); clear(@g_t); clear(@g_k);" + (" clear(@agent); }" if per else " }"),
    ]
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Maps:
    """The program's maps: name -> {key tuple: value}."""

    maps: dict[str, dict[tuple[int, ...], int]] = field(default_factory=dict)
    lost: int = 0
    attached: int = 0

    def get(self, name: str) -> dict[tuple[int, ...], int]:
        return self.maps.get(name, {})


def parse_output(text: str) -> Maps:
    """bpftrace `-f json` output (one JSON object per line) -> Maps. Unknown lines are skipped."""
    out = Maps()
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        kind = obj.get("type")
        data = obj.get("data")
        if kind == "attached_probes" and isinstance(data, dict):
            out.attached = int(data.get("probes", 0))
        elif kind == "lost_events" and isinstance(data, dict):
            out.lost += int(data.get("events", 0))
        elif kind == "map" and isinstance(data, dict):
            for name, entries in data.items():
                if not isinstance(entries, dict):
                    continue
                m = out.maps.setdefault(name.lstrip("@"), {})
                for k, v in entries.items():
                    try:
                        key = tuple(int(x) for x in str(k).split(","))
                        m[key] = m.get(key, 0) + int(v)
                    except ValueError:
                        continue
    return out


class Unavailable(Exception):
    """bpftrace cannot run here; str() says why in a sentence."""


def tracefs_dir(root: Root) -> str | None:
    """The kernel path of a mounted tracefs with events ("sys/kernel/tracing" or the debugfs one)."""
    for rel in ("sys/kernel/tracing", "sys/kernel/debug/tracing"):
        if root.isdir(f"{rel}/events/irq"):
            return rel
    return None


def command(root: Root, script: str) -> list[str]:
    """argv running bpftrace on `script` (a file), mounting tracefs privately when needed."""
    bt = shutil.which("bpftrace")
    if bt is None:
        raise Unavailable("bpftrace is not installed (apt-get install bpftrace).")
    if tracefs_dir(root) is not None:
        return [bt, "-f", "json", script]
    if shutil.which("unshare") is None:
        raise Unavailable("tracefs is not mounted and unshare(1) is missing to mount it privately.")
    mnt = root.path("sys/kernel/tracing")
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount -t tracefs nodev "$1" && exec "$2" -f json "$3"', "sh", mnt, bt, script]


def check(root: Root) -> str:
    """"" when bpftrace can run here, else why not (a sentence)."""
    if os.geteuid() != 0:
        return "tracing needs root (BPF programs and tracefs); run with sudo."
    try:
        command(root, "-")
    except Unavailable as e:
        return str(e)
    return ""


def run(root: Root, tids: Collection[int], duration_s: float, workdir: str) -> Maps:
    """Run the program for `duration_s` seconds; its maps. Raises Unavailable."""
    reason = check(root)
    if reason:
        raise Unavailable(reason)
    script = os.path.join(workdir, "agentlatd-trace.bt")
    with open(script, "w") as f:
        f.write(program(tids, duration_s))
    env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX=str(MAP_KEYS_MAX))
    argv = command(root, script)
    try:
        p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration_s + 60)
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"bpftrace did not finish within {duration_s + 60:.0f} s.") from e
    maps = parse_output(p.stdout)
    if p.returncode != 0 or maps.attached == 0:
        err = " ".join(line for line in p.stderr.splitlines()
                       if "RLIMIT_MEMLOCK" not in line and line.strip())[-400:]
        raise Unavailable(f"bpftrace failed ({p.returncode}): {err or 'no probes attached'}")
    return maps


def iter_hist(m: dict[tuple[int, ...], int], nkeys: int) -> Iterator[tuple[tuple[int, ...], int, int]]:
    """(key[:nkeys], bucket, count) from a map keyed (k1, ..., bucket)."""
    for key, c in m.items():
        if len(key) == nkeys + 1:
            yield key[:nkeys], key[nkeys], c
