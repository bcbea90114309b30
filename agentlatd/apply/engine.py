"""The tuning engine: apply a plan's Changes through Knobs, journal, verify, roll back.

style.md habits 5-7. For each Change the engine reads the current value, skips
a no-op, journals the original before the first write (crash-safe, see
journal.py), writes, reads back (the kernel may clamp or ignore: reported
"clamped"), and handles a failure by its ErrClass, never by raw errno. One
failing knob never stops the others. Rollback restores every original in
reverse order and removes the journal only when every entry is back.

A journal found at start (recover()):
  - complete = false: a run died in the middle of a batch of writes (kill -9,
    OOM, power). It is RESTORED before anything else: the batch's written
    values are unknown (a crash can land between a write and the journal
    update), and a half-applied plan (IRQs moved, RPS not) is a state nobody
    chose. Restoring returns the host to the last state a person saw; the new
    run then applies its plan from there. The agent side's batches (a
    registration's pins) do not mark it: every agent-side entry is restored at
    start whatever the flag says (lifecycle.recover_agents), so a crash inside
    a registration does not undo the device plan (BatchWriter.run's bracket).
  - complete = true: the previous run finished its batch and left its changes
    in place on purpose (`agentlatd apply` is one-shot and exits; a daemon
    killed between ticks). It is ADOPTED: its originals stay the originals
    (re-reading now would journal agentlatd's own values as "original") and
    the next apply continues from it; `agentlatd rollback` undoes both.
  - from another boot (boot_id differs): the kernel state it describes is
    gone; it is renamed journal.json.stale-boot and not replayed.
  - for another root or network namespace: refused with a JournalError (a
    sysfs path in another namespace is another device).
  - damaged: kept aside as journal.json.corrupt, every entry that still parses
    is restored, and the report says what was wrong.

Drift (check_drift): a journaled knob whose value is no longer what agentlatd
wrote was changed by another writer. policy.daemon.drift = "yield" reports it
and stops managing it (flag "yielded"; rollback still restores the original,
as etc/agentlatd.toml documents); "reassert" writes agentlatd's value back.

Kernel-managed IRQs (EIO on smp_affinity_list on 6.1, EPERM on 6.12 where the
file is 0444: both ErrClass.MANAGED, seen in the VM tier) are flagged in the
journal and never written again while the journal lives (the daemon's
lifetime, or until `agentlatd rollback`).

Use (the daemon keeps one Engine, and its lock, for its lifetime):
    with Engine(root, policy.daemon.state_dir, policy=policy) as eng:
        eng.recover()                      # first, before any other write
        report = eng.apply(plan.changes)   # each tick; no-ops cost one read each
        drifted = eng.check_drift()        # each tick
        ...
        eng.rollback()                     # on stop

The Engine composes one collaborator per responsibility and keeps the lock,
the policy and the public API:
    statelock.py  StateLock      the state directory's flock
    recovery.py   JournalKeeper  the journal in use: adopt/restore/set aside at start, rollback
    batch.py      BatchWriter    the apply phase (journal original, write, read back, verify)
    restore.py    Restorer       restoring originals (all, or chosen keys), forgetting entries
    drift.py      DriftWatch     drift: yield or reassert, unyield
    refusals.py   Refusals       knobs the kernel refused for good, held back until a rescan
    knobio.py     KnobIO         knob lookup, device identities, the write counter and hook
    reports.py    the result and report types (re-exported here)

Write points: Engine(write_hook=f) calls f(0) once a batch's journal is
saved while no kernel write has been made yet, and f(n) right after the nth
successful kernel write (apply, reassert or restore writes, counted per
Engine). Nothing in agentlatd passes one and nothing reads it from the
environment: fault-injection tests do (tests/support/launch.py kills the
process at a chosen point, tests/apply/test_crash.py at every one of them).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Literal

from agentlatd.apply import journal, journal_read, journal_salvage
from agentlatd.apply.batch import BatchWriter
from agentlatd.apply.drift import DriftWatch
from agentlatd.apply.identity import DeviceId
from agentlatd.apply.journal import (
    FLAG_INHERITED,
    FLAG_MANAGED,
    Entry,
    JournalDamaged,
    JournalUntrusted,
)
from agentlatd.apply.knobio import KnobIO
from agentlatd.apply.knobs import REGISTRY, Knob, netns_scoped
from agentlatd.apply.recovery import JournalKeeper
from agentlatd.apply.refusals import Refusals
from agentlatd.apply.reports import (
    CHANGED,
    CLAMPED,
    DONE,
    FAILED,
    GONE,
    MANAGED,
    PLANNED,
    REPLACED,
    RESTORED,
    SKIPPED,
    UNCHANGED,
    UNSUPPORTED,
    WRITTEN,
    ApplyReport,
    Drift,
    DriftAction,
    KnobResult,
    RecoverReport,
    Recovery,
    RollbackReport,
    Status,
)
from agentlatd.apply.restore import Restorer
from agentlatd.apply.statelock import StateLock
from agentlatd.errors import JournalError, KernelError
from agentlatd.kernel.knobnames import KnobName
from agentlatd.plan.changes import CPUMASK_KNOBS, Change, human_value
from agentlatd.policy import Policy
from agentlatd.sample import namespaces
from agentlatd.sysfs.root import HOST, Root

__all__ = [
    "CHANGED", "CLAMPED", "DONE", "FAILED", "GONE", "MANAGED", "PLANNED", "REPLACED",
    "RESTORED", "SKIPPED", "UNCHANGED", "UNSUPPORTED", "WRITTEN", "ApplyReport", "Drift",
    "DriftAction", "Engine", "KnobResult", "RecoverReport", "Recovery", "RollbackReport",
    "Status", "rollback_commands",
]

# knobs whose restore spreads to threads and processes that inherited the value
_TASK_KNOBS = frozenset({KnobName.TASK_AFFINITY, KnobName.TASK_NICE, KnobName.TASK_IOPRIO})


class Engine:
    """Applies and rolls back knob changes on one Root, journaling under state_dir.

    Holds an exclusive lock on <state_dir>/lock from its first operation until
    close() (a daemon holds it for its lifetime; a second agentlatd on the same
    state directory is refused, never interleaved). Use as a context manager.
    """

    def __init__(self, root: Root, state_dir: str, *, policy: Policy | None = None,
                 knobs: Mapping[str, Knob] | None = None,
                 write_hook: Callable[[int], None] | None = None) -> None:
        self.root = root
        self.state_dir = os.path.abspath(state_dir)
        self.policy = policy if policy is not None else Policy()
        # REGISTRY: every knob registered in this process; an entry point that may meet
        # any journal entry imports agentlatd.knobset first
        io = self._io = KnobIO(root, REGISTRY if knobs is None else knobs, write_hook)
        self._statelock = StateLock(self.state_dir)
        self._restorer = Restorer(io)
        self._keeper = JournalKeeper(io, self._statelock, self._restorer,
                                     journal.journal_path(self.state_dir))
        self._refusals = Refusals(io)
        self._batch = BatchWriter(io, self._refusals)
        self._drift = DriftWatch(io)
        # one engine serves the daemon's tuner thread and its agent side (the main
        # loop): every call that reads or writes the journal is made holding this
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, blocking: bool = True, timeout: float | None = None) -> Iterator[bool]:
        """with engine.hold(blocking=False) as got: ...  -- got False: another thread has it
        (with `timeout`: still had it after that many seconds)."""
        got = self.lock.acquire(True, timeout) if timeout is not None else self.lock.acquire(
            blocking)
        try:
            yield got
        finally:
            if got:
                self.lock.release()

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._statelock.close()

    @property
    def journal_path(self) -> str:
        return journal.journal_path(self.state_dir)

    def acquire(self) -> None:
        """Lock the state directory and check its journal, writing nothing, before a
        daemon's first write (recovery.py acquire() says what is refused)."""
        self._keeper.acquire()

    def recover(self) -> RecoverReport:
        """Deal with a journal left by an earlier run (see the module docstring)."""
        return self._keeper.recover()

    def managed(self) -> frozenset[tuple[str, str]]:
        """Knob instances the kernel manages (never written again)."""
        return frozenset(e.key for e in self._keeper.current().entries if e.has(FLAG_MANAGED))

    def knob(self, name: str) -> Knob | None:
        """The knob this engine reads and writes `name` with (its `knobs` mapping's)."""
        return self._io.knob(name)

    def refused(self) -> dict[tuple[str, str], KnobResult]:
        """The knobs held back until the next forget_refusals(), with why."""
        return self._refusals.held()

    def forget_refusals(self) -> None:
        """Try refused knobs again (a machine rescan: a driver, link or kernel changed)."""
        self._refusals.forget()

    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._keeper.current().entries)

    def entries_of(self, pid: int, starttime: int) -> tuple[Entry, ...]:
        """The task entries of process (pid, starttime), oldest first: O(its entries),
        not O(journal) (journal.py Journal.of_process)."""
        return tuple(self._keeper.current().of_process(pid, starttime))

    def journaled(self) -> AbstractSet[tuple[str, str]]:
        """Every (knob, target) journaled, to ask `in` (a live view, not a copy)."""
        return self._keeper.current().keys()

    # -- apply -----------------------------------------------------------
    def apply(self, changes: Iterable[Change], *, dry_run: bool = False,
              bracket: bool = True) -> ApplyReport:
        """Apply `changes` in order; every one gets a KnobResult (apply/batch.py;
        `bracket` is BatchWriter.run's)."""
        changes = list(changes)
        recovery: RecoverReport | None = None
        if not dry_run:
            first = not self._keeper.recovered
            recovery = self.recover()
            if not first or recovery.action is Recovery.NONE:
                recovery = None
        current = self._keeper.journal
        results, notes = self._batch.run(changes, None if dry_run else current, current,
                                         self.policy, dry_run=dry_run, bracket=bracket)
        return ApplyReport(results, self.journal_path, recovery, notes, dry_run)

    # -- single entries --------------------------------------------------
    def restore(self, keys: Iterable[tuple[str, str]]) -> tuple[KnobResult, ...]:
        """Restore the journaled originals of these (knob, target) instances only,
        for changes that end before the run does (restore.py restore_keys says how)."""
        return self._restorer.restore_keys(self._keeper.current(), keys)

    def forget(self, keys: Iterable[tuple[str, str]]) -> int:
        """Drop these (knob, target) entries without writing anything; the number dropped.

        For objects that are gone (a thread that exited has nothing to restore,
        and its tid may be reused by an unrelated thread that must not get the
        original). Keys not journaled are ignored; one crash-safe save.
        """
        return self._restorer.forget_keys(self._keeper.current(), keys)

    def inherit(self, items: Iterable[tuple[str, str, str, str]]) -> int:
        """Journal (knob, target, original, written) of objects that inherited
        agentlatd's value without a write of its own (FLAG_INHERITED: the processes
        an agent forked, agents/forks.py), so that rollback finds them when the
        daemon is gone. Targets journaled already are kept as they are. One
        crash-safe save; the number added. JournalError: none is kept."""
        j = self._keeper.current()
        added: list[Entry] = []
        for knob, target, original, written in items:
            if j.find(knob, target) is None:
                e = j.add(knob, target, original)
                e.written = written
                e.set_flag(FLAG_INHERITED)
                added.append(e)
        if added:
            try:
                j.save()
            except JournalError:
                j.remove_entries(added)  # nothing of them may reach the file later
                raise
        return len(added)

    # -- rollback --------------------------------------------------------
    def rollback(self) -> RollbackReport:
        """Restore every journaled original, in reverse order."""
        return self._keeper.rollback()

    # -- drift -----------------------------------------------------------
    def unyield(self, keys: Iterable[tuple[str, str]]) -> int:
        """Manage these (knob, target) entries again: a yield that was not another
        writer's doing (the kernel's or a driver's own rewrite on CPU hotplug,
        daemon.py). The next apply re-plans them. Returns how many."""
        return self._drift.unyield(self._keeper.current(), keys)

    def check_drift(self, mode: Literal["reassert", "yield"] | None = None) -> list[Drift]:
        """Knobs another writer changed after agentlatd set them; yield or reassert per
        policy (`mode`: this once, whatever the policy says)."""
        return self._drift.check(self._keeper.current(), mode or self.policy.daemon.drift)


# ---------------------------------------------------------------------------


def _same_netns(cmd: str) -> str:
    return cmd


def _netns_wrapper(root: Root, journal_netns: str) -> Callable[[str], str] | None:
    """How to run a restore line in the journal's network namespace.

    sysfs under /sys/class/net shows the devices of the namespace that mounted it, so a
    line for a veth inside namespace NS must run as `ip netns exec NS sh -c '...'` (which
    also remounts /sys there). The journal keeps the namespace's identity
    ("net:[inode]"); its name is the /run/netns entry with that inode. None: a foreign
    namespace with no name.
    """
    if not journal_netns or not root.is_host:
        return _same_netns
    if root.readlink("proc/self/ns/net") == journal_netns:
        return _same_netns
    inode = journal_netns.removeprefix("net:[").removesuffix("]")
    with contextlib.suppress(KernelError):
        for name in root.listdir("run/netns"):
            with contextlib.suppress(OSError):
                if str(os.stat(root.path(f"run/netns/{name}")).st_ino) == inode:
                    ns = shlex.quote(name)
                    return lambda cmd: f"ip netns exec {ns} sh -c {shlex.quote(cmd)}"
    return None


def _guarded(cmd: str, dev: DeviceId | None) -> list[str]:
    """`cmd`, run only while the device named `dev.name` is still `dev`.

    The guard compares the ifindex (a re-created device gets a new one) and,
    where journaled, the parent's bus path; the header line names the network
    namespace the commands must run in.
    """
    if dev is None:
        return [cmd]
    code, sep, comment = cmd.partition("  # ")
    out = [f"# {comment}"] if sep else []
    q = shlex.quote
    test = f'[ "$(cat {q(HOST.path(f"sys/class/net/{dev.name}/ifindex"))} 2>/dev/null)" = ' \
           f'{dev.ifindex} ]'
    if dev.bus:
        test += (f' && [ "$(basename "$(readlink '
                 f'{q(HOST.path(f"sys/class/net/{dev.name}/device"))})")" = {q(dev.bus)} ]')
    if not code.strip():
        return out
    msg = q(f"agentlatd: {dev.name} is not the device journaled ({dev.describe()}): "
            "device replaced, original not restored")
    out.append(f"if {test}; then {code}; else echo {msg} >&2; fi")
    return out


def rollback_commands(root: Root, state_dir: str) -> list[str]:
    """Shell commands that would restore the journal's originals; reads only.

    For `agentlatd rollback --print`: takes no lock and moves nothing (a damaged
    journal is read leniently and the damage is said in a comment line).
    """
    path = journal.journal_path(os.path.abspath(state_dir))
    out: list[str] = []
    try:
        j = journal_read.load(path)
    except JournalUntrusted as exc:
        # printed, never run: a person reads it before deciding (its own message
        # says how to remove it)
        out.append(f"# WARNING: {exc.problem}; agentlatd refuses to replay this journal. "
                   "Read every line below before running any of it.")
        try:
            j = journal_read.load(path, check=False)
        except JournalUntrusted:  # a symlink: never followed, not even to print
            return out
    except JournalDamaged as exc:
        sal = journal_salvage.salvage(path, default_root=root.base, move=False)
        j = sal.journal
        out.append(f"# WARNING: {exc}; {len(j.entries)} entries still parse, "
                   f"{sal.lines_lost} damaged line(s) lost")
    if j is None:
        return ["# no rollback journal at " + path + ": nothing to restore"]
    out.append(f"# agentlatd rollback of {path} (root {j.root}"
               + (f", network namespace {j.netns}" if j.netns else "") + ")")
    if os.path.abspath(j.root) != root.base:
        out.append(f"# NOTE: the journal applies to root {j.root}, not {root.base}")
    gone_netns = False
    if j.netns and root.is_host:
        gone_netns = namespaces.journal_netns_gone(root, j.netns, j.netns_cookie,
                                                   root.readlink("proc/self/ns/net"))
        if gone_netns:
            out.append(f"# NOTE: network namespace {j.netns} no longer exists: its device "
                       "entries have nothing left to act on and are left out "
                       "(`agentlatd rollback` drops them)")
    wrap = _same_netns if gone_netns else _netns_wrapper(root, j.netns)
    if wrap is None:
        out.append(f"# NOTE: the journal was written in network namespace {j.netns}, which has "
                   "no name under /run/netns: run these lines inside it (nsenter --net=...)")
        wrap = _same_netns
    for e in reversed(j.entries):
        if gone_netns and netns_scoped(e.knob, e.target):
            continue
        if e.has(FLAG_MANAGED) and e.written is None:
            out.append(f"# {e.knob} {e.target}: kernel-managed, never changed")
            continue
        knob = REGISTRY.get(e.knob)
        if knob is None:
            out.append(f"# {e.knob} {e.target}: no such knob in this build; original {e.original!r}")
            continue
        try:
            cmd = knob.shell(e.target, e.original)
            if e.knob in CPUMASK_KNOBS:  # the mask is what the kernel takes; say the CPUs
                cmd += f"  # CPUs {human_value(e.knob, e.original) or 'none'}"
        except ValueError as err:
            out.append(f"# {e.knob} {e.target}: {err}")
            continue
        if e.has(FLAG_INHERITED):
            out.append(f"# {e.knob} {e.target}: a process an agent forked, which inherited "
                       f"{e.written!r}: run the next line only if it still shows that "
                       "(`agentlatd rollback` checks)")
        out += [ln if ln.startswith("#") else wrap(ln) for ln in _guarded(cmd, e.device)]
    if any(e.knob in _TASK_KNOBS and e.written is not None for e in j.entries):
        # restore() also puts back threads and forked processes that inherited a
        # pin, nice or ioprio (agents/knobs.py); which ones is only known when it runs
        out.append("# NOTE: `agentlatd rollback` also restores the threads and forked child "
                   "processes that inherited an agent's pin, nice or ioprio and have no entry "
                   "of their own; the lines above do not")
    return out

