"""Typed knob targets: what a Change, a KnobResult and a journal entry are applied to.

A target travels as one string (Change.target, the journal's "target", `apply
--json`): "45" is IRQ 45 for irq.affinity and CPU 45 for
cpu.pm_qos_resume_latency_us, so a string is read back only together with its
knob. format_target() is the one way a key becomes that string and
parse_target(knob, text) the one way back; parse_target(k, format_target(t)) == t
for every key of k's kind (tests/unit/test_targets.py).

Syntax, per kind (the journal's on-disk form, kept as it always was):
  IrqTarget      "45"                irq.affinity: proc/irq/45
  CpuTarget      "3"                 cpu.*: sys/devices/system/cpu/cpu3
  DeviceTarget   "eth0"              net.threaded, net.napi_defer_hard_irqs,
                                     net.gro_flush_timeout, net.coalesce
  QueueTarget    "eth0/rx-3"         net.rps_cpus, net.rps_flow_cnt ("rx"),
                                     net.xps_cpus ("tx")
  NapiTarget     "eth0/irq45"        napi.config: the NAPI serviced by IRQ 45,
                 "eth0/queue2"       the IRQ-less NAPI of queue 2,
                 "eth0/napi0"        the first NAPI in napi-get order
  BlockTarget    "nvme0n1"           block.rq_affinity: sys/block/nvme0n1
  SysctlTarget   "net.core.netdev_budget"   sysctl: proc/sys/net/core/netdev_budget
  TaskTarget     "1234:98765:1240"   task.*: thread 1240 of process 1234 started
                                     at 98765 clock ticks (a recycled pid never matches)
  DaemonTarget   "irqbalance"        irqbalance.banned_cpus, irqbalance.banned_irqs: a
                                     running daemon
  FileTarget     "/etc/default/irqbalance"   irqbalance.env_banned_cpus: a daemon's
                                     environment file (an absolute path)

A network device name is what net/core/dev.c dev_valid_name() accepts: 1..15
bytes (IFNAMSIZ - 1), not "." or "..", no '/', ':' or whitespace; every other
byte is allowed ("br-lan", "veth@1", "wlp0s20f3", "eth0.100", "ünï"). The
separators "/" here and ":" in task targets can therefore never occur inside a
name, which is what makes the string form unambiguous.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from agentlatd.kernel.knobnames import KnobName

PID_MAX = 1 << 22  # include/linux/threads.h PID_MAX_LIMIT on 64-bit
IFNAMSIZ = 16  # include/uapi/linux/if.h, with the terminating NUL

_NUM = r"(0|[1-9][0-9]{0,8})"
_BLOCK = re.compile(r"[A-Za-z0-9_.!-]{1,32}")  # sys/block names ('!' stands for '/')
_SYSCTL = re.compile(r"[a-z][a-z0-9_]*(?:\.[A-Za-z0-9_-]+)+")
_DAEMON = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_QUEUE = re.compile(rf"(rx|tx)-{_NUM}")
_NAPI = re.compile(rf"(irq|queue|napi){_NUM}")
# as agents/tasks.py always wrote them: starttime is a 64-bit count of clock ticks
_TASK = re.compile(r"([1-9][0-9]{0,9}):([0-9]{1,20}):([1-9][0-9]{0,9})")
_INT = re.compile(_NUM)
_INT_MAX = 999_999_999  # the largest number _NUM matches
_STARTTIME_END = 10 ** 20  # _TASK's starttime: at most 20 digits


_NETDEV_RULE = "1 to 15 bytes, no '/', ':' or whitespace, not '.' or '..'"


def check_netdev_name(name: str) -> str:
    """`name` when the kernel could have named a network device so; ValueError otherwise."""
    if (not name or len(name.encode("utf-8", "surrogateescape")) >= IFNAMSIZ
            or name in (".", "..") or any(ch in "/:" or ch.isspace() for ch in name)):
        raise ValueError(f"bad network device name {name!r} ({_NETDEV_RULE})")
    return name


@dataclass(frozen=True, slots=True)
class IrqTarget:
    irq: int


@dataclass(frozen=True, slots=True)
class CpuTarget:
    cpu: int


@dataclass(frozen=True, slots=True)
class DeviceTarget:
    dev: str


@dataclass(frozen=True, slots=True)
class QueueTarget:
    dev: str
    direction: Literal["rx", "tx"]
    queue: int

    @property
    def queue_name(self) -> str:
        """The sysfs directory of the queue ("rx-3")."""
        return f"{self.direction}-{self.queue}"

    @classmethod
    def of_sysfs(cls, dev: str, queue_name: str) -> QueueTarget:
        """The queue sys/class/net/DEV/queues/QUEUE_NAME ("rx-3"); ValueError otherwise."""
        m = _QUEUE.fullmatch(queue_name)
        if m is None:
            raise ValueError(f"bad queue directory {queue_name!r} of {dev!r} (expected rx-N or tx-N)")
        return cls(dev, "rx" if m[1] == "rx" else "tx", int(m[2]))


@dataclass(frozen=True, slots=True)
class NapiTarget:
    dev: str
    by: Literal["irq", "queue", "napi"]
    n: int


@dataclass(frozen=True, slots=True)
class BlockTarget:
    name: str


@dataclass(frozen=True, slots=True)
class SysctlTarget:
    name: str  # dotted, as sysctl(8) writes it


@dataclass(frozen=True, slots=True)
class TaskTarget:
    pid: int
    starttime: int
    tid: int


@dataclass(frozen=True, slots=True)
class DaemonTarget:
    name: str


@dataclass(frozen=True, slots=True)
class FileTarget:
    path: str  # absolute, normalised: no "//", "/./", "/../", NUL or newline


TargetKey = (IrqTarget | CpuTarget | DeviceTarget | QueueTarget | NapiTarget | BlockTarget
             | SysctlTarget | TaskTarget | DaemonTarget | FileTarget)

# The kind of target each shipped knob takes.
KIND: dict[str, type[TargetKey]] = {
    KnobName.IRQ_AFFINITY: IrqTarget,
    KnobName.NET_RPS_CPUS: QueueTarget,
    KnobName.NET_RPS_FLOW_CNT: QueueTarget,
    KnobName.NET_XPS_CPUS: QueueTarget,
    KnobName.NET_THREADED: DeviceTarget,
    KnobName.NET_NAPI_DEFER_HARD_IRQS: DeviceTarget,
    KnobName.NET_GRO_FLUSH_TIMEOUT: DeviceTarget,
    KnobName.NET_COALESCE: DeviceTarget,
    KnobName.NAPI_CONFIG: NapiTarget,
    KnobName.BLOCK_RQ_AFFINITY: BlockTarget,
    KnobName.SYSCTL: SysctlTarget,
    KnobName.TASK_AFFINITY: TaskTarget,
    KnobName.TASK_NICE: TaskTarget,
    KnobName.TASK_IOPRIO: TaskTarget,
    KnobName.CPU_PM_QOS_RESUME_LATENCY_US: CpuTarget,
    KnobName.IRQBALANCE_BANNED_CPUS: DaemonTarget,
    KnobName.IRQBALANCE_BANNED_IRQS: DaemonTarget,
    KnobName.IRQBALANCE_ENV_BANNED_CPUS: FileTarget,
}
# the direction of queue each queue knob takes
_QUEUE_DIRECTION: dict[str, str] = {KnobName.NET_RPS_CPUS: "rx", KnobName.NET_RPS_FLOW_CNT: "rx",
                    KnobName.NET_XPS_CPUS: "tx"}


def task_target_text(pid: int, starttime: int, tid: int) -> str | None:
    """A thread's target text ("PID:STARTTIME:TID") when the three numbers are in
    range (then it reads back as the same key); None otherwise: format_target
    says why. Without a TaskTarget built first: a restore asks it for every
    thread of the process, for each of its entries."""
    if (type(pid) is int and type(starttime) is int and type(tid) is int
            and 0 < pid < PID_MAX and 0 < tid < PID_MAX and 0 <= starttime < _STARTTIME_END):
        return f"{pid}:{starttime}:{tid}"
    return None


def format_target(key: TargetKey) -> str:
    """The string form of `key` (Change.target, the journal's "target").

    Raises ValueError for a key parse_target() could not read back (a device
    name with '/', a negative IRQ): such a key names nothing the kernel has.
    """
    # Numbers only (every Change of an agent's threads): in range, their text reads
    # back as the same key, without the parse-back (~15 us) below
    match key:
        case IrqTarget(irq=n) | CpuTarget(cpu=n) if type(n) is int and 0 <= n <= _INT_MAX:
            return str(n)
        case TaskTarget(pid=pid, starttime=st, tid=tid) if (
                (text := task_target_text(pid, st, tid)) is not None):
            return text
        case _:
            pass
    match key:
        case IrqTarget(irq=n) | CpuTarget(cpu=n):
            text = str(n)
        case DeviceTarget(dev=dev):
            text = check_netdev_name(dev)
        case QueueTarget(dev=dev, direction=d, queue=n):
            text = f"{check_netdev_name(dev)}/{d}-{n}"
        case NapiTarget(dev=dev, by=by, n=n):
            text = f"{check_netdev_name(dev)}/{by}{n}"
        case BlockTarget(name=name) | SysctlTarget(name=name) | DaemonTarget(name=name):
            text = name
        case FileTarget(path=path):
            text = path
        case TaskTarget(pid=pid, starttime=st, tid=tid):
            text = f"{pid}:{st}:{tid}"
        case _:  # a caller that passed a string: the types say it cannot, say so clearly
            raise TypeError(f"{key!r} is not a target key (kernel/targets.py TargetKey)")
    if _parse(type(key), text, None) != key:
        raise ValueError(f"{key!r} has no target string that reads back as itself")
    return text


def parse_target(knob: str, text: str) -> TargetKey:
    """The key `text` names for `knob`; ValueError when it is not in that knob's syntax
    or `knob` is not one agentlatd ships (KeyError)."""
    try:
        kind = KIND[knob]
    except KeyError:
        raise KeyError(f"no target syntax known for knob {str(knob)!r}") from None
    return _parse(kind, text, knob)


def _parse(kind: type[TargetKey], text: str, knob: str | None) -> TargetKey:
    def bad(expected: str) -> ValueError:
        return ValueError(f"bad target {text!r}{f' for {knob}' if knob else ''} "
                          f"(expected {expected})")

    if kind is IrqTarget or kind is CpuTarget:
        if _INT.fullmatch(text) is None:
            raise bad("an IRQ number" if kind is IrqTarget else "a CPU number")
        return IrqTarget(int(text)) if kind is IrqTarget else CpuTarget(int(text))
    if kind is DeviceTarget:
        return DeviceTarget(_netdev(text, bad))
    if kind is QueueTarget or kind is NapiTarget:
        dev, sep, rest = text.rpartition("/")
        if kind is QueueTarget:
            want = _QUEUE_DIRECTION.get(knob or "")
            m = _QUEUE.fullmatch(rest)
            if not sep or m is None or (want is not None and m[1] != want):
                raise bad(f"DEV/{want or 'rx|tx'}-N")
            return QueueTarget(_netdev(dev, bad), "rx" if m[1] == "rx" else "tx", int(m[2]))
        m = _NAPI.fullmatch(rest)
        if not sep or m is None:
            raise bad("DEV/irqN, DEV/queueN or DEV/napiK")
        by: Literal["irq", "queue", "napi"] = ("irq" if m[1] == "irq" else
                                               "queue" if m[1] == "queue" else "napi")
        return NapiTarget(_netdev(dev, bad), by, int(m[2]))
    if kind is BlockTarget:
        if _BLOCK.fullmatch(text) is None:
            raise bad("a sys/block name")
        return BlockTarget(text)
    if kind is SysctlTarget:
        if _SYSCTL.fullmatch(text) is None:
            raise bad("a dotted sysctl name, a.b.c")
        return SysctlTarget(text)
    if kind is TaskTarget:
        m = _TASK.fullmatch(text)
        if m is None:
            raise bad("PID:STARTTIME:TID")
        pid, st, tid = int(m[1]), int(m[2]), int(m[3])
        if pid >= PID_MAX or tid >= PID_MAX:
            raise bad(f"PID:STARTTIME:TID, pids below {PID_MAX}")
        return TaskTarget(pid, st, tid)
    if kind is FileTarget:
        if (not text.startswith("/") or len(text) > 4095 or "\0" in text or "\n" in text
                or posixpath.normpath(text) != text or text.startswith("//")):
            raise bad("an absolute, normalised file path")
        return FileTarget(text)
    if _DAEMON.fullmatch(text) is None:
        raise bad("a daemon's name")
    return DaemonTarget(text)


def _netdev(name: str, bad: Callable[[str], ValueError]) -> str:
    try:
        return check_netdev_name(name)
    except ValueError as e:
        raise bad(f"a network device name of {_NETDEV_RULE}") from e
