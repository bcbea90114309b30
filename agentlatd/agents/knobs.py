"""Task-level knobs for the engine's registry (agentlatd.apply.knobs PLUGINS).

  task.affinity   target "<pid>:<starttime>:<tid>", value a cpulist
                  sched_setaffinity(2) on one thread (man 2 sched_setaffinity)
  task.nice       same target, value -20..19: setpriority(PRIO_PROCESS, tid)
  task.ioprio     same target, value none | idle | rt0..rt7 | be0..be7
                  ioprio_set(IOPRIO_WHO_PROCESS, tid) (Documentation/block/ioprio.rst)
  cpu.pm_qos_resume_latency_us
                  target "<cpu>", sys/devices/system/cpu/cpuN/power/pm_qos_resume_latency_us
                  (Documentation/ABI/testing/sysfs-devices-power): "0" = no
                  constraint, "n/a" = no idle state with any exit latency, N = at
                  most N us. Written back exactly as read.

Every task knob checks the thread's identity right before each read and write
(agentlatd.sample.tasks.check_thread): a recycled pid is never touched, and a
thread that is gone is ErrClass.GONE, which rollback reports as "nothing left
to restore". In the daemon, a registered agent's pidfd proves its process's
identity in place of the proc/PID/stat read (TaskKnob.witness,
agents/pidfdgate.py AgentPidfds, knobset.witnessed). Task knobs act on the
live kernel only (live_only): a recorded tree's pid 1234 is not this host's. A
write made for a non-admin peer (write_for with Change.owner) also checks the
credentials of that very thread (tasks.check_thread): credentials are per
thread in Linux.

Threads a changed thread starts, and processes it forks, inherit its
affinity, nice and ioprio; TaskKnob.restore() puts those back too (see there),
so every path that restores an entry restores them.

The engine journals the original before the first write and restores it in
reverse order on rollback, crash or stop; `agentlatd rollback --print` prints
taskset/renice/ionice lines a person could paste.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Set as AbstractSet

from agentlatd.apply.knobs import FileKnob, Knob, cpulist_equal, int_equal, register
from agentlatd.cpuset import CpuSet, CpuSetError
from agentlatd.errors import KernelError
from agentlatd.kernel.knobnames import KnobName
from agentlatd.sample import tasks
from agentlatd.sysfs.root import Root


def _guard(t: tasks.ThreadId) -> str:
    """Shell test that PID is still the process the journal names (not a reused pid)."""
    # field 22 counted after the last ')': comm may hold spaces and parentheses
    return (f"[ \"$(sed 's/.*) //' /proc/{t.pid}/stat 2>/dev/null | cut -d' ' -f20)\" = "
            f"{t.starttime} ] && ")


class TaskKnob(Knob):
    """A per-thread knob: identity and credentials checks, inherited-value restores."""

    context = tasks.CONTEXT
    live_only = True

    def __init__(self, witness: tasks.Witness | None = None) -> None:
        # the registry's one instance has none (rollback, `agentlatd apply`, a
        # fresh process after a crash: /proc reads); the daemon's engine gets
        # copies bound to its agents' pidfds (knobset.witnessed)
        self.witness = witness

    def witnessed(self, witness: tasks.Witness) -> TaskKnob:
        """This knob, its identity checks taking `witness`'s proof (tasks.check_thread)."""
        return type(self)(witness)

    def check_target(self, target: str) -> None:
        tasks.ThreadId.parse(target)

    def _thread(self, root: Root, target: str, op: str,
                owner: int | None = None) -> tasks.ThreadId:
        t = tasks.ThreadId.parse(target)
        tasks.check_thread(root, t, op, owner, self.witness)
        return t

    def write(self, root: Root, target: str, value: str) -> None:
        self.write_for(root, target, value, None)

    def write_for(self, root: Root, target: str, value: str, owner: int | None) -> None:
        """Check the value, then the thread (identity and, for `owner`, its
        credentials) right before the syscall."""
        self.write_check(value)  # ValueError before any syscall
        t = self._thread(root, target, "write", owner)
        self._set(t.tid, value.strip())

    def read(self, root: Root, target: str) -> str:
        return self._get(self._thread(root, target, "read").tid)

    def verify(self, root: Root, target: str, desired: str) -> tuple[bool, str]:
        """Read back by thread id without a second identity check: write()
        checked it one syscall earlier, and a pid reused in between would need
        the whole pid space (pid_max) to wrap meanwhile. What verify reads
        decides only "changed" or "clamped", never what is written."""
        actual = self._get(tasks.ThreadId.parse(target).tid)
        return self.equal(actual, desired), actual

    def _get(self, tid: int) -> str:
        raise NotImplementedError

    def _set(self, tid: int, value: str) -> None:
        raise NotImplementedError

    def restore(self, root: Root, target: str, original: str, *, written: str | None,
                journaled: AbstractSet[tuple[str, str]]) -> str:
        """Restore the thread, then the threads and processes that inherited our value.

        A thread created by a thread agentlatd changed starts with the
        creator's affinity, nice and ioprio (clone() copies cpus_mask,
        static_prio and io_context's priority: kernel/fork.c
        dup_task_struct(), sched_fork(), copy_io()). The daemon journals such
        threads at its next agent tick, with the process's original; a daemon
        killed before that tick (kill -9, watchdog abort) leaves them
        journaled nowhere, and `agentlatd rollback` (ExecStopPost) restored
        only the journaled thread: seen in the VM tier, 5 of 6 threads of an
        `agentlatd exec` agent stayed on CPU 2 after kill -9, and threads and
        children of a background agent kept nice 10 / ioprio be7. So: every
        other live thread of the SAME process (pid and starttime, re-checked
        right before each syscall by read() and write()) without an entry of
        its own, whose value is exactly what agentlatd wrote here, inherited
        it and gets the same original. A thread whose value differs chose
        its own (the agent set it) and is left alone. Done here, in the knob,
        so that rollback in a fresh process, recover-at-start, a clean stop
        and Engine.restore() (unregister) all do it from the journal alone.

        The same holds for processes the agent forks (fork() copies all
        three as clone() does): with the main thread's entry, every
        descendant process (proc/PID/task/*/children, walked down) gets the
        same rule. A child that exited, re-parented to init after the agent
        died, or set its own value is left alone.
        """
        self.write(root, target, original)
        return self.restore_spread(root, target, original, written=written, journaled=journaled)

    def restore_spread(self, root: Root, target: str, original: str, *, written: str | None,
                       journaled: AbstractSet[tuple[str, str]]) -> str:
        """The inherited threads and forked processes of restore()."""
        if written is None:
            return ""
        try:
            self.write_check(written)
        except ValueError:
            return ""
        me = tasks.ThreadId.parse(target)
        # clone() and fork() copy the creator's credentials too: a thread under
        # other uids did not inherit from this one, and a non-admin's agent
        # never reaches a thread of another uid this way (another uid's thread
        # that happens to show our value would otherwise get the original)
        creds = tasks.thread_uids(root, me.pid, me.tid)
        if creds is None:
            return ""
        fixed = self._inherited(root, me.pid, me.starttime, written, original, journaled,
                                creds, skip=me.tid)
        forked = 0
        if me.tid == me.pid:  # once per process: with its main thread's entry
            for child in tasks.descendants(root, me.pid):
                st = tasks.starttime_of(root, child)
                if st is not None and st >= me.starttime:
                    forked += self._inherited(root, child, st, written, original, journaled,
                                              creds)
        out = []
        if fixed:
            out.append(f"{fixed} unjournaled thread(s) that inherited {self.name} too")
        if forked:
            out.append(f"{forked} thread(s) of processes it forked that inherited {self.name}")
        return "; ".join(out)

    def write_check(self, value: str) -> None:
        """ValueError unless `value` is a value this knob writes (no syscall)."""
        raise NotImplementedError

    def restore_forked(self, root: Root, child: tasks.ProcId, written: str, original: str,
                       creds: tuple[int, int], held: AbstractSet[tuple[str, str]]) -> int:
        """A process an agent forked, after the agent itself is gone (the kernel
        re-parented it, so restore_spread() can no longer find it): its threads
        under `creds` (the agent's) that show exactly `written` and have no
        entry of their own in `held` (every (knob, target) journaled) get
        `original`; how many (not journaled)."""
        try:
            self.write_check(written)
        except ValueError:
            return 0
        return self._inherited(root, child.pid, child.starttime, written, original, held, creds)

    def restore_inherited(self, root: Root, target: str, original: str, *, written: str,
                          journaled: AbstractSet[tuple[str, str]]) -> int:
        """A process an agent forked, journaled with FLAG_INHERITED on its main
        thread (agents/forks.py: for a restore the daemon may not live to make,
        rollback after kill -9 or a restart): restore_forked() with the
        credentials its main thread has now (the agent's, when it was journaled;
        the agent may be long gone). TaskGone when the process is."""
        self.write_check(written)
        t = tasks.ThreadId.parse(target)
        creds = tasks.thread_uids(root, t.pid, t.pid)
        if t.tid != t.pid or creds is None or not tasks.alive(root, tasks.ProcId(t.pid,
                                                                                  t.starttime)):
            raise tasks.TaskGone("restore", target, "process exited")
        return self._inherited(root, t.pid, t.starttime, written, original, journaled, creds,
                               own=target)

    def _inherited(self, root: Root, pid: int, starttime: int, written: str, original: str,
                   held: AbstractSet[tuple[str, str]], creds: tuple[int, int],
                   skip: int | None = None, own: str = "") -> int:
        """Restore the threads of process (pid, starttime) under credentials `creds`
        that still show `written` and have no entry of this knob in `held` (every
        (knob, target) journaled: asked per thread, never walked, so a restore
        costs the process's threads, not the journal); how many. `own`: the
        target of the inherited entry being restored, which is no entry of its own."""
        fixed = 0
        for tid in tasks.list_tids(root, pid):
            t = tasks.ThreadId(pid, starttime, tid)
            if (tid == skip or (t.target != own and (self.name, t.target) in held)
                    or tasks.thread_uids(root, pid, tid) != creds):
                continue
            try:
                if not self.equal(self.read(root, t.target), written):
                    continue  # the agent chose this thread's value itself
                self.write(root, t.target, original)
            except (KernelError, ValueError):
                continue  # exited (or the pid was recycled) meanwhile: nothing to restore
            fixed += 1
        return fixed


class TaskAffinityKnob(TaskKnob):
    name = KnobName.TASK_AFFINITY
    help = "CPU affinity of one thread (cpulist)"

    def _get(self, tid: int) -> str:
        return tasks.get_affinity(tid).to_list()

    def write_check(self, value: str) -> None:
        self._cpus(value)

    def _cpus(self, value: str) -> CpuSet:
        try:
            cpus = CpuSet.parse_list(value)
        except CpuSetError as e:
            raise ValueError(f"{self.name}: bad cpulist {value!r}") from e
        if not cpus:
            raise ValueError(f"{self.name}: an empty CPU set would leave the thread nowhere to run")
        return cpus

    def _set(self, tid: int, value: str) -> None:
        tasks.set_affinity(tid, self._cpus(value))

    def equal(self, a: str, b: str) -> bool:
        return cpulist_equal(a, b)

    def shell(self, target: str, value: str) -> str:
        t = tasks.ThreadId.parse(target)
        return _guard(t) + f"taskset -p -c {shlex.quote(value.strip())} {t.tid}"


class TaskNiceKnob(TaskKnob):
    name = KnobName.TASK_NICE
    help = "nice value of one thread (-20..19)"

    def _get(self, tid: int) -> str:
        return str(tasks.get_nice(tid))

    def write_check(self, value: str) -> None:
        if not re.fullmatch(r"-?[0-9]{1,2}", value.strip()) or not -20 <= int(value) <= 19:
            raise ValueError(f"{self.name}: bad nice value {value!r} (expected -20..19)")

    def _set(self, tid: int, value: str) -> None:
        tasks.set_nice(tid, int(value))

    def equal(self, a: str, b: str) -> bool:
        return int_equal(a, b)

    def shell(self, target: str, value: str) -> str:
        t = tasks.ThreadId.parse(target)
        return _guard(t) + f"renice -n {int(value)} -p {t.tid}"


class TaskIoprioKnob(TaskKnob):
    name = KnobName.TASK_IOPRIO
    help = "I/O priority of one thread (none, idle, rtN, beN)"

    def _get(self, tid: int) -> str:
        return tasks.get_ioprio(tid)

    def write_check(self, value: str) -> None:
        tasks.parse_ioprio(value)

    def _set(self, tid: int, value: str) -> None:
        tasks.set_ioprio(tid, value)

    def equal(self, a: str, b: str) -> bool:
        try:
            return tasks.parse_ioprio(a) == tasks.parse_ioprio(b)
        except ValueError:
            return a.strip() == b.strip()

    def shell(self, target: str, value: str) -> str:
        t = tasks.ThreadId.parse(target)
        v = tasks.parse_ioprio(value)
        cls = v >> tasks.IOPRIO_CLASS_SHIFT
        level = v & 7
        opt = {0: "-c 0", 1: f"-c 1 -n {level}", 2: f"-c 2 -n {level}", 3: "-c 3"}[cls]
        return _guard(t) + f"ionice {opt} -p {t.tid}"


PM_QOS = FileKnob(
    KnobName.CPU_PM_QOS_RESUME_LATENCY_US,
    "per-CPU idle exit latency limit (us; 0 = none, n/a = no idle states)", "sysfs",
    r"(0|[1-9][0-9]{0,4})",
    lambda m: f"sys/devices/system/cpu/cpu{m[1]}/power/pm_qos_resume_latency_us",
    None, r"[0-9]{1,10}|n/a")


for _k in (TaskAffinityKnob(), TaskNiceKnob(), TaskIoprioKnob(), PM_QOS):
    register(_k, replace=True)
